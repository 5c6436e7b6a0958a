"""Evolve then select: the self-play extension of alignment-potential selection.

Procedure (docs/methods.md section 3): take the selected prompts, rewrite each into a harder
variant with an Evol-Instruct-style instruction (add constraints, deepen, concretise, require
more reasoning, broaden), drop failed and runaway rewrites, sample several responses to each
evolved prompt and score them with a reward model or judge (`prefkit.synth.west_of_n`: best
against worst score), select again with the same metric, and merge the kept pairs with the base set.

The rewrite instructions are prefkit's own wording. Generation goes through any
`prefkit.synth` backend (an OpenAI-compatible server or a local transformers model) inside a
durable request run, so an interrupted evolve resumes without redoing finished requests.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from prefkit.data import records as R
from prefkit.errors import ConfigError
from prefkit.report import StageReport
from prefkit.select.options import SelectOptions
from prefkit.select.selection import select
from prefkit.synth import Request, Run, SamplingParams, west_of_n
from prefkit.synth.parsing import extract_tag

# Our own Evol-Instruct-style operations: name -> what the rewrite must do.
OPERATIONS = {
    "add-constraints": (
        "Add one or two concrete requirements that a good answer must now satisfy, such as a format, "
        "a limit on length or scope, or a condition to respect. Keep every original requirement."
    ),
    "deepen": (
        "Ask for more depth: have the instruction probe the underlying question more thoroughly, or "
        "widen the range of related points the answer must cover."
    ),
    "concretise": (
        "Replace general notions with specific ones: a particular situation, named quantities or "
        "entities, or a concrete case the answer has to deal with."
    ),
    "reasoning": (
        "Make it require several explicit reasoning steps: if it can be answered in one simple step, "
        "ask for the intermediate steps, a justification, or a check of the result."
    ),
    "broaden": (
        "Write a new instruction in the same domain and of similar length and difficulty, but about a "
        "less common topic. It does not need to keep the original task."
    ),
}

_TEMPLATE = """You help build training data for an AI assistant by rewriting user instructions into harder ones.

Rewrite the instruction between the <instruction> tags as follows:
{operation}

Rules:
- The result must be a single self-contained instruction a person could send to an assistant, answerable as written.
- Make it at most about {max_words} words long.
- Do not answer it, and do not say that it was rewritten.

<instruction>
{instruction}
</instruction>

Reply with the new instruction only, between <prompt> and </prompt>."""

_LEAKS = ("<instruction>", "</instruction>", "<prompt>", "</prompt>", "rewritten instruction",
          "rewrite the instruction")


def prompt_text(prompt) -> str:
    """The instruction text: the string, or the last user turn of a message list."""
    if R.is_conversational(prompt):
        for msg in reversed(prompt):
            if msg.get("role") == "user":
                return msg.get("content") or ""
        return ""
    return prompt or ""


def with_text(prompt, text: str):
    """`prompt` with its instruction text replaced (same shape: string or message list)."""
    if R.is_conversational(prompt):
        out = [dict(m) for m in prompt]
        for msg in reversed(out):
            if msg.get("role") == "user":
                msg["content"] = text
                return out
        return out + [{"role": "user", "content": text}]
    return text


def evolve_messages(instruction: str, operation: str, max_ratio: float = 3.0) -> list[dict]:
    """The chat request that asks a generator for one evolved instruction."""
    if operation not in OPERATIONS:
        raise ConfigError(f"unknown evolve operation {operation!r}; choose from {', '.join(OPERATIONS)}")
    max_words = max(20, int(len(instruction.split()) * max_ratio))
    return [{"role": "user", "content": _TEMPLATE.format(operation=OPERATIONS[operation], max_words=max_words,
                                                         instruction=instruction)}]


def parse_evolved(text: str | None) -> str | None:
    """The rewrite inside the last complete <prompt>...</prompt>, or None when missing or empty."""

    found = extract_tag(text, "prompt")
    return found.text if found.issue is None else None


#: originals shorter than this many characters count as this long for the runaway bound
RATIO_FLOOR = 32


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def check_rewrite(original: str, evolved: str | None, min_ratio: float = 0.5, max_ratio: float = 3.0) -> str | None:
    """None if the rewrite is usable, else the reason it is dropped.

    The length ratio is measured in characters, evolved / original: a rewrite far longer than
    its source ('runaway') usually rambles or answers itself; a far shorter one lost the task.
    Originals shorter than `RATIO_FLOOR` characters count as that long for the upper bound, so a
    one-line prompt may still gain a sentence of constraints.
    """
    if evolved is None:
        return "rewrite missing its <prompt> tags"
    if _norm(evolved) == _norm(original):
        return "rewrite unchanged"
    low = evolved.lower()
    if any(leak in low for leak in _LEAKS):
        return "rewrite leaks the instruction template"
    if len(evolved) / max(len(original), RATIO_FLOOR) > max_ratio:
        return f"runaway rewrite (length ratio > {max_ratio:g})"
    if len(evolved) / max(1, len(original)) < min_ratio:
        return f"rewrite too short (length ratio < {min_ratio:g})"
    return None


def _evolved_id(parent_id, operation: str, text: str) -> str:
    h = hashlib.sha1(f"{parent_id}|{operation}|{text}".encode("utf-8")).hexdigest()[:12]
    return f"evol-{h}"


def evolve_prompts(dataset, backend, *, operations=tuple(OPERATIONS), seed: int = 42, min_ratio: float = 0.5,
                   max_ratio: float = 3.0, params=None, run_dir=None, retry_failed: bool = False,
                   progress: bool = True, report: StageReport | None = None):
    """Rewrite each distinct prompt of `dataset` once through `backend` (a `prefkit.synth`
    Backend), with an operation drawn (seeded) from `operations`. Returns a Dataset of evolved
    prompts: prompt, prompt_id, evolved_from, evolve_operation, source ('evolve:<operation>').
    Failed requests and rejected rewrites are counted in `report` by reason. `run_dir` keeps
    finished requests (re-running resumes); default: a temporary directory."""

    from datasets import Dataset  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    ops = list(operations)
    if not ops:
        raise ConfigError("no evolve operations given")
    for op in ops:
        if op not in OPERATIONS:
            raise ConfigError(f"unknown evolve operation {op!r}; choose from {', '.join(OPERATIONS)}")
    if not (0 < min_ratio < max_ratio):
        raise ConfigError(f"need 0 < min_ratio < max_ratio, got {min_ratio} and {max_ratio}")
    report = report if report is not None else StageReport("select evolve")
    params = params or SamplingParams(temperature=0.7, max_tokens=1024)
    rng = np.random.default_rng(seed)
    seen, parents = set(), []
    for i, row in enumerate(dataset):
        text = prompt_text(row[R.PROMPT])
        if _norm(text) in seen:
            continue
        seen.add(_norm(text))
        pid = row.get(R.PROMPT_ID) or row.get(R.PAIR_ID) or f"row-{i}"
        parents.append((row[R.PROMPT], text, pid, ops[int(rng.integers(len(ops)))]))
    run_dir = run_dir or tempfile.mkdtemp(prefix="prefkit-evolve-")
    with Run(run_dir, retry_failed=retry_failed, progress=progress) as run:
        requests = [Request(evolve_messages(text, op, max_ratio), params, 0, "evolve") for _, text, _, op in parents]
        records = run.generate(backend, requests, desc="evolve prompts") if requests else []
        report.notes["evolve run"] = run.stats.to_dict()
    out = []
    for (prompt, text, pid, op), rec in zip(parents, records):
        if not rec.get("ok"):
            report.drop(f"rewrite request failed: {rec.get('reason')}", 1, example=pid)
            continue
        reply = rec.get("text")
        evolved = parse_evolved(reply)
        reason = check_rewrite(text, evolved, min_ratio, max_ratio)
        if reason is not None:
            report.drop(reason, 1, example=f"{pid}: {str(reply)[:80]!r}")
            continue
        out.append({R.PROMPT: with_text(prompt, evolved), R.PROMPT_ID: _evolved_id(pid, op, evolved),
                    "evolved_from": str(pid), "evolve_operation": op, R.SOURCE: f"evolve:{op}"})
    report.notes["prompts sent to evolve"] = len(parents)
    report.notes["prompts evolved"] = len(out)
    if out:
        return Dataset.from_list(out)
    return Dataset.from_dict({R.PROMPT: [], R.PROMPT_ID: [], "evolved_from": [], "evolve_operation": [], R.SOURCE: []})


def merge(base, new, report: StageReport | None = None):
    """Append `new` pairs to `base`: columns are aligned (missing ones filled with None, types
    from `base`), and new pairs whose prompt already appears in `base` are dropped and counted."""
    from datasets import concatenate_datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    base_prompts = {_norm(prompt_text(p)) for p in base[R.PROMPT]}
    keep = [i for i, p in enumerate(new[R.PROMPT]) if _norm(prompt_text(p)) not in base_prompts]
    if report is not None:
        report.drop("evolved prompt duplicates a base prompt", len(new) - len(keep))
    new = new.select(keep)
    for name in base.column_names:
        if name not in new.column_names:
            new = new.add_column(name, [None] * len(new), feature=base.features[name])
    for name in new.column_names:
        if name not in base.column_names:
            base = base.add_column(name, [None] * len(base), feature=new.features[name])
    new = new.select_columns(base.column_names)
    if len(new):
        new = new.cast(base.features)
    else:
        return base
    return concatenate_datasets([base, new])


@dataclass
class EvolveResult:
    merged: object            # base + evolved-and-selected pairs
    evolved_selected: object  # the evolved pairs the second selection kept
    evolved_pairs: object     # every evolved pair (best vs worst response)
    evolved_prompts: object
    report: StageReport


@dataclass(frozen=True)
class EvolveOptions:
    """The evolve half of `evolve_then_select` (the selection half is a `SelectOptions`).

    n_responses: responses sampled per evolved prompt. operations / seed / min_ratio / max_ratio:
    as for `evolve_prompts`. rewrite_params / generation / judge_params: SamplingParams of the
    prompt rewrites, the responses and the judge. run_dir: keeps every finished request
    (subdirectories evolve/ and responses/). retry_failed: retry requests that failed before.
    progress: progress bars (of the second selection too)."""

    n_responses: int = 4
    operations: tuple = tuple(OPERATIONS)
    seed: int = 42
    min_ratio: float = 0.5
    max_ratio: float = 3.0
    rewrite_params: Any = None
    generation: Any = None
    judge_params: Any = None
    run_dir: Any = None
    retry_failed: bool = False
    progress: bool = True


def evolve_then_select(selected, backend, options: EvolveOptions | None = None,
                       select_options: SelectOptions | None = None, *, reward_model=None, judge=None, model=None,
                       tokenizer=None, reference=None, report: StageReport | None = None,
                       **overrides) -> EvolveResult:
    """Evolve the prompts of `selected`, regenerate and rescore responses, select again, merge.

    backend        a `prefkit.synth` Backend: rewrites the prompts and samples `n_responses` per
                   evolved prompt.
    reward_model   reward-model directory (or `RewardModelScorer`) scoring the responses; or
    judge          a Backend used as an UltraFeedback-style judge instead.
    options        `EvolveOptions`; select_options: `SelectOptions` of the second selection. Fields of
                   either may also be given as keywords (`n_responses=3, fraction=0.5`), which override.
    The new responses are paired best against worst score (`prefkit.synth.west_of_n`), then
    selected with the selection options (fraction of the evolved pairs) under the policy `model`,
    and appended to `selected` (columns aligned; `evolved_from` names each parent prompt).
    """

    evolve_fields = {f.name for f in fields(EvolveOptions)}
    o = replace(options or EvolveOptions(), **{k: v for k, v in overrides.items() if k in evolve_fields})
    sel = SelectOptions.of(select_options, **{k: v for k, v in overrides.items() if k not in evolve_fields})
    sel = replace(sel, progress=o.progress)
    n_responses, run_dir, retry_failed, progress = o.n_responses, o.run_dir, o.retry_failed, o.progress
    if n_responses < 2:
        raise ConfigError("n_responses must be at least 2 (pairs are best against worst score)")
    if (reward_model is None) == (judge is None):
        raise ConfigError("evolve needs exactly one scorer for the new responses: a reward model or a judge")
    report = report if report is not None else StageReport("select evolve")
    report.rows_in = len(selected)
    sub = (lambda name: str(Path(run_dir) / name)) if run_dir is not None else (lambda name: None)
    evolved = evolve_prompts(selected, backend, operations=o.operations, seed=o.seed, min_ratio=o.min_ratio,
                             max_ratio=o.max_ratio, params=o.rewrite_params, run_dir=sub("evolve"),
                             retry_failed=retry_failed, progress=progress, report=report)
    if len(evolved) == 0:
        report.rows_out = len(selected)
        return EvolveResult(selected, evolved, evolved, evolved, report)
    rows = [{R.PROMPT: r[R.PROMPT], R.PROMPT_ID: r[R.PROMPT_ID], R.SOURCE_ROW: i, R.SOURCE: r[R.SOURCE]}
            for i, r in enumerate(evolved)]
    won = StageReport("west-of-n")
    pairs = west_of_n(rows, backend, n=n_responses, reward_model=reward_model, judge=judge, run_dir=sub("responses"),
                      generation=o.generation or SamplingParams(temperature=1.0), judge_params=o.judge_params,
                      retry_failed=retry_failed, progress=progress, report=won)
    for reason, n in won.dropped.items():
        report.drop(f"evolved prompt: {reason}", n)
    parent = {r[R.PROMPT_ID]: (r["evolved_from"], r["evolve_operation"]) for r in evolved}
    pairs = pairs.add_column("evolved_from", [parent[p][0] for p in pairs[R.PROMPT_ID]])
    pairs = pairs.add_column("evolve_operation", [parent[p][1] for p in pairs[R.PROMPT_ID]])
    report.notes["evolved pairs (best vs worst)"] = len(pairs)
    if len(pairs):
        second = StageReport("select (evolved)")
        kept = select(pairs, options=sel, model=model, tokenizer=tokenizer, reference=reference, report=second)
        for reason, n in second.dropped.items():
            report.drop(f"evolved pair: {reason}", n)
    else:
        kept = pairs
    merged = merge(selected, kept, report) if len(kept) else selected
    report.rows_out = len(merged)
    report.notes["evolved pairs kept"] = len(kept)
    return EvolveResult(merged=merged, evolved_selected=kept, evolved_pairs=pairs, evolved_prompts=evolved,
                        report=report)
