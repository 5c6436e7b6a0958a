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

from prefkit.errors import ConfigError
from prefkit.report import StageReport
from prefkit.synth import prompts as P
from prefkit.synth.backends import Backend, SamplingParams
from prefkit.synth.inputs import pair_row, pairs_dataset, prompt_rows
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


def rmboost(prompts, backend: Backend, *, run_dir=None, guideline="ultrafeedback", aspects: str = "llm",
            num_aspects: int = 2, max_aspects: int = 3, seed: int = 42,
            generation: SamplingParams | None = None, rewrite: SamplingParams | None = None,
            near_copy_threshold: float = 0.95, retry_failed: bool = False, progress: bool = True,
            report: StageReport | None = None):
    """RMBoost pairs for `prompts` (a path, a `datasets.Dataset`, or a list of prompts).

    backend: generates y1 and the rewrite. guideline: 'ultrafeedback', 'qa', 'summarization',
    a YAML/JSON file, or a {name: description} mapping. aspects: 'llm' (the LLM picks one to
    `max_aspects`) or 'sample' (we draw `num_aspects` per row, seeded). run_dir: where finished
    requests are kept (re-running resumes). Returns canonical PAIRS plus rmboost_label,
    rmboost_aspects, rmboost_raw, rmboost_similarity and rmboost_parse_issue columns.
    """
    if aspects not in ("llm", "sample"):
        raise ConfigError(f"aspects must be 'llm' or 'sample', not {aspects!r}")
    guide = P.load_guideline(guideline)
    rep = report if report is not None else StageReport("synth rmboost")
    rows = prompt_rows(prompts, rep)
    rep.rows_in += len(rows)
    generation = generation or SamplingParams(temperature=0.7)
    rewrite = rewrite or SamplingParams(temperature=0.7, max_tokens=max(generation.max_tokens * 2, 1024))
    labels = balanced_labels(len(rows), seed)
    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix="prefkit-rmboost-")
        rep.notes["run_dir"] = str(run_dir)

    out_rows: list[dict] = []
    failed_rewrites = 0
    attempted = 0
    with Run(run_dir, retry_failed=retry_failed, progress=progress) as run:
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
