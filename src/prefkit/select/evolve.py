"""Evolve then select: the self-play extension of alignment-potential selection.

Procedure (shared/methods.md section 3): take the selected prompts, rewrite each into a harder
variant with an Evol-Instruct-style instruction (add constraints, deepen, concretise, require
more reasoning, broaden), drop failed and runaway rewrites, sample several responses to each
evolved prompt, score them with a judge or reward model, pair max against min score, select
again with the same metric, and merge the kept pairs with the base set.

The rewrite instructions are prefkit's own wording. Everything model-facing goes through two
callables, so any synth backend (an OpenAI-compatible server, a local transformers model) or a
test double that is a real local model can drive it:

  rewrite(messages_batch) -> list[str | None]   chat completions; None = failed request
  respond(prompts, n) -> list[list[str]]         n sampled responses per prompt
  score(prompts, responses) -> list[list[float]] one score per response

`synth_callables(...)` builds these from SYNTH's backends (`prefkit.synth`).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from prefkit.data import records as R
from prefkit.errors import ConfigError
from prefkit.report import StageReport

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

_TAG = re.compile(r"<prompt>\s*(.*?)\s*</prompt>", re.DOTALL | re.IGNORECASE)
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
    """The rewrite inside <prompt>...</prompt> (the last such block), or None when missing or empty."""
    if not text:
        return None
    found = _TAG.findall(text)
    if not found:
        return None
    out = found[-1].strip()
    return out or None


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def check_rewrite(original: str, evolved: str | None, min_ratio: float = 0.5, max_ratio: float = 3.0) -> str | None:
    """None if the rewrite is usable, else the reason it is dropped.

    The length ratio is measured in characters, evolved / original: a rewrite far longer than
    its source ('runaway') usually rambles or answers itself; a far shorter one lost the task.
    """
    if evolved is None:
        return "rewrite missing its <prompt> tags"
    if _norm(evolved) == _norm(original):
        return "rewrite unchanged"
    low = evolved.lower()
    if any(leak in low for leak in _LEAKS):
        return "rewrite leaks the instruction template"
    ratio = len(evolved) / max(1, len(original))
    if ratio > max_ratio:
        return f"runaway rewrite (length ratio > {max_ratio:g})"
    if ratio < min_ratio:
        return f"rewrite too short (length ratio < {min_ratio:g})"
    return None


def _evolved_id(parent_id, operation: str, text: str) -> str:
    h = hashlib.sha1(f"{parent_id}|{operation}|{text}".encode("utf-8")).hexdigest()[:12]
    return f"evol-{h}"


def evolve_prompts(dataset, rewrite, *, operations=tuple(OPERATIONS), seed: int = 42, min_ratio: float = 0.5,
                   max_ratio: float = 3.0, batch_size: int = 64, report: StageReport | None = None):
    """Rewrite each distinct prompt of `dataset` once, with an operation drawn (seeded) from
    `operations`. Returns a Dataset of evolved prompts: prompt, prompt_id, evolved_from,
    evolve_operation, source. Failed requests and rejected rewrites are counted in `report`."""
    from datasets import Dataset

    ops = list(operations)
    for op in ops:
        if op not in OPERATIONS:
            raise ConfigError(f"unknown evolve operation {op!r}; choose from {', '.join(OPERATIONS)}")
    if not (0 < min_ratio < max_ratio):
        raise ConfigError(f"need 0 < min_ratio < max_ratio, got {min_ratio} and {max_ratio}")
    report = report if report is not None else StageReport("select evolve")
    rng = np.random.default_rng(seed)
    seen, parents = set(), []
    for i, row in enumerate(dataset):
        text = prompt_text(row[R.PROMPT])
        if _norm(text) in seen:
            continue
        seen.add(_norm(text))
        pid = row.get(R.PROMPT_ID) or f"row-{i}"
        parents.append((row[R.PROMPT], text, pid, ops[int(rng.integers(len(ops)))]))
    out = []
    for start in range(0, len(parents), batch_size):
        chunk = parents[start:start + batch_size]
        replies = rewrite([evolve_messages(text, op, max_ratio) for _, text, _, op in chunk])
        if len(replies) != len(chunk):
            raise ConfigError(f"rewrite backend returned {len(replies)} replies for {len(chunk)} requests")
        for (prompt, text, pid, op), reply in zip(chunk, replies):
            if reply is None:
                report.drop("rewrite request failed", 1, example=pid)
                continue
            evolved = parse_evolved(reply)
            reason = check_rewrite(text, evolved, min_ratio, max_ratio)
            if reason is not None:
                report.drop(reason, 1, example=f"{pid}: {reply[:80]!r}")
                continue
            out.append({R.PROMPT: with_text(prompt, evolved), R.PROMPT_ID: _evolved_id(pid, op, evolved),
                        "evolved_from": pid, "evolve_operation": op, R.SOURCE: f"evolve:{op}"})
    report.notes["prompts evolved"] = len(out)
    report.notes["prompts sent to evolve"] = len(parents)
    return Dataset.from_list(out) if out else Dataset.from_dict(
        {R.PROMPT: [], R.PROMPT_ID: [], "evolved_from": [], "evolve_operation": [], R.SOURCE: []})


def to_multi(evolved, responses: list[list[str]], scores: list[list[float | None]]):
    """Evolved prompts plus their sampled responses and scores -> MULTI rows (prompt, responses)."""
    from datasets import Dataset

    rows = []
    for i, (row, texts, sc) in enumerate(zip(evolved, responses, scores)):
        if len(texts) != len(sc):
            raise ConfigError(f"prompt {i}: {len(texts)} responses but {len(sc)} scores")
        rows.append({**row, R.RESPONSES: [{"text": t, "score": None if s is None else float(s)}
                                          for t, s in zip(texts, sc)], R.SOURCE_ROW: i})
    return Dataset.from_list(rows)


def merge(base, new, report: StageReport | None = None):
    """Append `new` pairs to `base`: columns are aligned (missing ones filled with None, types
    from `base`), and new pairs whose prompt already appears in `base` are dropped and counted."""
    from datasets import concatenate_datasets

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
    merged: object          # base + evolved-and-selected pairs
    evolved_selected: object
    evolved_prompts: object
    report: StageReport


def evolve_then_select(selected, *, rewrite, respond, score_responses, n_responses: int = 4,
                       metric: str = "alignment-potential", fraction: float = 0.4, top_k: int | None = None,
                       weight: float = 1.0, model=None, tokenizer=None, reference=None, beta: float = 0.1,
                       operations=tuple(OPERATIONS), seed: int = 42, min_ratio: float = 0.5,
                       max_ratio: float = 3.0, report: StageReport | None = None, **score_options) -> EvolveResult:
    """Evolve the prompts of `selected`, regenerate and rescore responses, select again, merge.

    `rewrite`, `respond`, `score_responses`: see the module docstring (or `synth_callables`).
    The second selection uses the same metric, fraction (of the evolved pairs) and weight.
    """
    from prefkit.select.selection import select

    if n_responses < 2:
        raise ConfigError("n_responses must be at least 2 (pairs are max vs min score)")
    report = report if report is not None else StageReport("select evolve")
    report.rows_in = len(selected)
    evolved = evolve_prompts(selected, rewrite, operations=operations, seed=seed, min_ratio=min_ratio,
                             max_ratio=max_ratio, report=report)
    prompts = list(evolved[R.PROMPT])
    responses = respond(prompts, n_responses) if prompts else []
    scores = score_responses(prompts, responses) if prompts else []
    multi = to_multi(evolved, responses, scores)
    if len(multi):
        kept = select(multi, metric, fraction=fraction, top_k=top_k, weight=weight, model=model,
                      tokenizer=tokenizer, reference=reference, beta=beta, report=report, **score_options)
    else:
        kept = multi
    merged = merge(selected, kept, report) if len(kept) else selected
    report.rows_out = len(merged)
    report.notes["evolved pairs kept"] = len(kept)
    return EvolveResult(merged=merged, evolved_selected=kept, evolved_prompts=evolved, report=report)
