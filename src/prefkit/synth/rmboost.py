"""RMBoost (Shen et al., arXiv 2407.16008): fix the preference label first, then write the
second response to satisfy it.

Per prompt x: generate y1; draw l in {better, worse} (exactly balanced over the dataset, seeded);
ask the LLM to rewrite y1 into y2 that is better/worse than y1 along a few aspects of the
dataset's guideline (chosen by the LLM, or sampled by us); parse y2 from <response> tags;
pair (chosen y2, rejected y1) if l = better, else (chosen y1, rejected y2).

Rewrites that cannot be used are counted, never silently dropped: missing or empty tags, output
cut off by the token limit, and near-copies of y1 (similarity >= `near_copy_threshold`).
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefkit.errors import ConfigError
from prefkit.report import StageReport
from prefkit.synth import prompts as P
from prefkit.synth.backends import Backend, SamplingParams
from prefkit.synth.inputs import pair_row, pairs_dataset, prompt_rows
from prefkit.synth.methods import GUIDELINE_HELP, SynthOptions, options_of, register_synth_method, sampling_params
from prefkit.synth.parsing import extract_tag, parse_aspect_list, similarity
from prefkit.synth.runs import Request, Run


def balanced_labels(n: int, seed: int = 42) -> list[str]:
    """n labels, half 'better' and half 'worse' (one extra 'better' when n is odd), shuffled."""
    labels = ["better"] * ((n + 1) // 2) + ["worse"] * (n // 2)
    random.Random(seed).shuffle(labels)
    return labels


def sample_aspects(guideline: dict[str, str], k: int, seed: int, row: int) -> list[str]:
    names = list(guideline)
    if not 1 <= k <= len(names):
        raise ConfigError(f"--num-aspects must be between 1 and {len(names)} for this guideline, not {k}")
    rng = random.Random(f"{seed}:{row}")
    return sorted(rng.sample(names, k), key=names.index)


@dataclass(frozen=True)
class RMBoostOptions(SynthOptions):
    """RMBoost's options (and `SynthOptions`'): see `rmboost`."""

    guideline: Any = field(default="ultrafeedback", metadata={"help": GUIDELINE_HELP})
    seed: int = field(default=42, metadata={"help": "seed of the labels and of the aspect draws (default 42)"})
    aspects: str = field(default="llm", metadata={
        "help": "who picks the aspects to change: the LLM (default) or us, at random", "choices": ("llm", "sample")})
    num_aspects: int = field(default=2, metadata={"help": "aspects drawn per row with --aspects sample"})
    max_aspects: int = field(default=3, metadata={"help": "most aspects the LLM may pick"})
    near_copy_threshold: float = field(default=0.95, metadata={
        "help": "a rewrite this similar to y1 (0-1) counts as failed (default 0.95)"})
    rewrite: SamplingParams | None = field(default=None, metadata={
        "help": "sampling of the rewrite (default: temperature 0.7, max(2 x the generation's max_tokens, 1024) "
                "tokens)", "sampling": {"temperature": 0.7, "max_tokens": 1024}})


@register_synth_method("rmboost", options=RMBoostOptions,
                       help="RMBoost: fix the label, then rewrite y1 into a better/worse y2 (Shen et al. 2024)")
def rmboost(prompts, backend: Backend, options: RMBoostOptions | None = None, *, report: StageReport | None = None,
            **overrides):
    """RMBoost pairs for `prompts` (a path, a `datasets.Dataset`, or a list of prompts).

    backend: generates y1 and the rewrite. options (`RMBoostOptions`; its fields may be given as
    keywords): guideline: 'ultrafeedback', 'qa', 'summarization', a YAML/JSON file, or a
    {name: description} mapping. aspects: 'llm' (the LLM picks one to `max_aspects`) or 'sample'
    (we draw `num_aspects` per row, seeded). run_dir: where finished requests are kept
    (re-running resumes). Returns canonical PAIRS plus rmboost_label, rmboost_aspects,
    rmboost_raw, rmboost_similarity and rmboost_parse_issue columns.
    """
    o = options_of(RMBoostOptions, options, overrides)
    aspects, num_aspects, max_aspects, seed = o.aspects, o.num_aspects, o.max_aspects, o.seed
    near_copy_threshold, run_dir = o.near_copy_threshold, o.run_dir
    if aspects not in ("llm", "sample"):
        raise ConfigError(f"aspects must be 'llm' or 'sample', not {aspects!r}")
    guide = P.load_guideline(o.guideline)
    rep = report if report is not None else StageReport("synth rmboost")
    rows = prompt_rows(prompts, rep)
    rep.rows_in += len(rows)
    generation = sampling_params(o, "generation")
    rewrite = o.rewrite or SamplingParams(temperature=0.7, max_tokens=max(generation.max_tokens * 2, 1024))
    labels = balanced_labels(len(rows), seed)
    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="prefkit-rmboost-")
        rep.notes["run_dir"] = str(run_dir)

    out_rows: list[dict] = []
    failed_rewrites = 0
    attempted = 0
    with Run(run_dir, retry_failed=o.retry_failed, progress=o.progress) as run:
        y1 = run.generate(backend, [Request(r.messages, generation, 0, "y1") for r in rows], desc="rmboost y1")
        todo = []
        for r, lab, rec in zip(rows, labels, y1):
            if not rec["ok"]:
                rep.drop(f"y1 request failed: {rec['reason']}", 1, example=f"row {r.source_row}: {rec.get('detail')}")
                continue
            picked = sample_aspects(guide, num_aspects, seed, r.source_row) if aspects == "sample" else None
            msgs = P.rmboost_rewrite(r.messages, rec["text"], lab, guide, picked, max_aspects)
            todo.append((r, lab, rec["text"], picked, Request(msgs, rewrite, 0, "rewrite")))
        y2 = run.generate(backend, [t[-1] for t in todo], desc="rmboost rewrite")
        for (r, lab, y1_text, picked, _), rec in zip(todo, y2):
            if not rec["ok"]:
                rep.drop(f"rewrite request failed: {rec['reason']}", 1,
                         example=f"row {r.source_row}: {rec.get('detail')}")
                continue
            attempted += 1
            raw = rec["text"]
            tagged = extract_tag(raw, "response")
            problem = None
            if tagged.text is None:
                problem = f"rewrite unusable: {tagged.issue}"
            elif tagged.issue == "unclosed tag" and rec.get("finish_reason") == "length":
                problem = "rewrite unusable: cut off by the token limit"
            sim = similarity(tagged.text, y1_text) if tagged.text is not None else None
            if problem is None and sim >= near_copy_threshold:
                problem = f"rewrite unusable: near-copy of y1 (similarity >= {near_copy_threshold:g})"
            if problem is not None:
                failed_rewrites += 1
                rep.drop(problem, 1, example=f"row {r.source_row}: {raw[:200]!r}")
                continue
            named, unknown = parse_aspect_list(extract_tag(raw, "aspects").text, list(guide))
            used = picked if picked is not None else named
            y2_text = tagged.text
            chosen, rejected = (y2_text, y1_text) if lab == "better" else (y1_text, y2_text)
            out_rows.append(pair_row(
                r, "rmboost", chosen, rejected,
                rmboost_label=lab, rmboost_aspects=list(used), rmboost_named_aspects=named,
                rmboost_raw=raw, rmboost_similarity=round(sim, 4), rmboost_parse_issue=tagged.issue,
                generator=backend.model,
            ))
        stats = run.stats
    rep.rows_out += len(out_rows)
    label_counts = Counter(r["rmboost_label"] for r in out_rows)
    aspect_counts = Counter(a for r in out_rows for a in r["rmboost_aspects"])
    rep.notes.update({
        "rewrites_returned": attempted,
        "failed_rewrites": failed_rewrites,
        "failed_rewrite_rate": round(failed_rewrites / attempted, 4) if attempted else 0.0,
        "labels": dict(label_counts),
        "aspects_used": dict(aspect_counts),
        "rows_without_named_aspects": sum(1 for r in out_rows if aspects == "llm" and not r["rmboost_named_aspects"]),
        "run": stats.to_dict(),
    })
    return pairs_dataset(out_rows)
