"""Prompts in, canonical pairs out: the row plumbing shared by every synthesis method."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefkit.data import read
from prefkit.data import records as R
from prefkit.data.adapters import detect, make_pair_id, prompt_hash
from prefkit.data.io import build_dataset
from prefkit.data.sources import open_source
from prefkit.errors import DataError


@dataclass
class PromptRow:
    prompt: Any  # str or list of {role, content}
    prompt_id: str
    source_row: int
    source: str | None

    @property
    def messages(self) -> list[dict]:
        """The prompt as chat messages (a string is one user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [{"role": m["role"], "content": m["content"]} for m in self.prompt]


def _check_prompt(value, label: str, row: int):
    if isinstance(value, str):
        if not value.strip():
            raise DataError("is empty; expected the prompt text", file=label, row=row, field=R.PROMPT)
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for j, m in enumerate(value):
            if m.get("role") not in R.ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"message {j} needs a role in {R.ROLES} and string content",
                                file=label, row=row, field=R.PROMPT)
        if value[-1]["role"] == "assistant":
            raise DataError("ends with an assistant turn; expected the turns before the answer",
                            file=label, row=row, field=R.PROMPT)
        return value
    raise DataError(f"expected a string or a list of {{role, content}} messages, got {type(value).__name__}",
                    file=label, row=row, field=R.PROMPT)


def read_prompts(source, *, split=None, subset=None, revision=None, format: str = "auto",
                 on_invalid: str = "error", report=None) -> list[PromptRow]:
    """Prompts from a prompts file (a `prompt` column, strings or message lists; an `instruction`
    column also works), from any preference dataset `prefkit.data.read` understands (its prompts),
    from a `datasets.Dataset`, or from a Python list of prompts / row dicts."""

    if isinstance(source, list):
        rows = [(i, r if isinstance(r, dict) else {R.PROMPT: r}) for i, r in enumerate(source)]
        label = "<prompts>"
    else:

        src = open_source(source, split=split, subset=subset, revision=revision)
        label = src.label
        rows = list(src.rows())
        dict_rows = [r for _, r in rows[:100] if isinstance(r, dict)]
        known = True
        if format == "auto":
            try:
                detect(dict_rows, label)
            except DataError:
                known = False
        if known:  # a preference dataset: take its canonical prompts

            ds = read(source, split=split, subset=subset, revision=revision, format=format,
                      on_invalid=on_invalid, report=report)
            rows = [(i, r) for i, r in enumerate(ds)]
    out: list[PromptRow] = []
    for i, raw in rows:
        try:
            if isinstance(raw, Exception):
                raise raw
            value = raw.get(R.PROMPT, raw.get("instruction"))
            if value is None:
                raise DataError("is missing; expected a prompt column (a string or a message list)",
                                file=label, row=i, field=R.PROMPT)
            prompt = _check_prompt(value, label, i)
            pid = raw.get(R.PROMPT_ID) or prompt_hash(prompt)
            src_row = raw.get(R.SOURCE_ROW)
            out.append(PromptRow(prompt, str(pid), int(src_row) if src_row is not None else i,
                                 raw.get(R.SOURCE)))
        except DataError as err:
            if on_invalid == "error":
                raise
            if report is not None:
                report.drop(err.reason, 1, example=str(err))
    if out:
        forms = {isinstance(r.prompt, str) for r in out}
        if len(forms) > 1:
            raise DataError("mixes strings and message lists; expected one prompt format per dataset",
                            file=label, field=R.PROMPT)
    return out


def prompt_rows(prompts, report=None) -> list[PromptRow]:
    """The PromptRows of a synthesis method's `prompts`: already read rows as they are, anything
    else (a path, a hub id, a `datasets.Dataset`, a list of prompts) through `read_prompts`."""
    if isinstance(prompts, list) and prompts and isinstance(prompts[0], PromptRow):
        return prompts
    return read_prompts(prompts, report=report)


def answer(prompt_row: PromptRow, text: str):
    """A response in the prompt's format: a string, or one assistant message."""
    if isinstance(prompt_row.prompt, str):
        return text
    return [{"role": "assistant", "content": text}]


def pair_row(p: PromptRow, method: str, chosen: str, rejected: str, *, score_chosen=None,
             score_rejected=None, **meta) -> dict:
    """A canonical PAIRS row plus method metadata columns."""

    row = {
        R.PROMPT: p.prompt,
        R.CHOSEN: answer(p, chosen),
        R.REJECTED: answer(p, rejected),
        R.SCORE_CHOSEN: score_chosen,
        R.SCORE_REJECTED: score_rejected,
        R.PROMPT_ID: p.prompt_id,
        R.PAIR_ID: make_pair_id(p.prompt_id, p.source_row, method),
        R.SOURCE_ROW: p.source_row,
        R.SOURCE: p.source,
        "method": method,
    }
    row.update(meta)
    return row


def pairs_dataset(rows: list[dict]):
    """Canonical Arrow types for the pair columns (prefkit.data's builder)."""

    return build_dataset(rows, "pairs")
