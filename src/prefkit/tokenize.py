"""Preference pairs to token ids, with an exact prompt/response boundary and explicit truncation.

Encoding one pair (the same choices as TRL 1.16's DPOTrainer, so the two agree token for token):

- Conversational rows (prompt = list of messages, chosen/rejected = the assistant turn(s)):
  prompt ids = the chat template rendered for ``prompt`` with ``add_generation_prompt=True``;
  full ids   = the template rendered for ``prompt + chosen`` (and ``prompt + rejected``).
  The response is what follows the prompt inside the full rendering. Some templates render the
  prompt alone differently from the prompt inside a longer conversation (or tokens merge across
  the boundary); then the prompt is cut to the longest prefix the three renderings share
  (chosen and rejected keep the same prompt) and the pair is counted under the report note
  ``prompt_boundary_mismatch``. Responses therefore include the template's end-of-turn tokens
  (e.g. ``<|im_end|>\\n`` for ChatML), which is what the model must learn to emit.
- Standard rows (plain strings): prompt ids = ``tokenizer(prompt)``; the EOS token text is appended
  to chosen/rejected when it is not already there; full ids = ``tokenizer(prompt + response)``;
  the same common-prefix rule fixes the boundary.

Truncation, in this order (prefkit's own, explicit; TRL 1.16 has no max_prompt_length):

1. a prompt longer than ``max_prompt_length`` keeps its last (``prompt_truncation="keep_end"``,
   default: the question and the generation header survive) or first (``"keep_start"``) tokens;
2. a response that does not fit in ``max_length - len(prompt)`` keeps its first tokens.

Dropped (never a crash; each counted in the StageReport by reason): a missing/invalid prompt,
chosen or rejected; an empty response text; an empty prompt (no token to condition the first
response token on); a prompt that alone reaches ``max_length``; a chat-template error (e.g.
a system message for a template without a system role). ``on_invalid="error"`` raises a
DataError naming the row and field instead. Truncations are counted in ``report.notes``
(``truncated_prompts``, ``truncated_chosen``, ``truncated_rejected``).

The batch format (:class:`PairCollator`) is the one :mod:`prefkit.logprobs` consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from prefkit.data.records import CHOSEN, PROMPT, REF_LOGPS_CHOSEN, REF_LOGPS_REJECTED, REJECTED, is_conversational
from prefkit.errors import ConfigError, DataError
from prefkit.report import StageReport

__all__ = ["encode_pair", "encode_pairs", "PairCollator", "ENCODED_COLUMNS", "DEFAULT_META_COLUMNS"]

#: Columns :func:`encode_pairs` adds (lists of token ids, and the row's index in the input).
ENCODED_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "pair_index")

#: Per-pair columns the collator moves into ``batch["meta"]`` when present.
DEFAULT_META_COLUMNS = (
    "pair_index", "weight", "beta", "goal_score", "score_chosen", "score_rejected",
    REF_LOGPS_CHOSEN, REF_LOGPS_REJECTED,
)

DROP_REASON = "_prefkit_drop_reason"
TRUNCATED = "_prefkit_truncated"


class SkipPair(Exception):
    """A pair that cannot be encoded: `reason` is the report key, `field` the offending column."""

    def __init__(self, reason: str, field: str | None = None, detail: str = ""):
        super().__init__(reason)
        self.reason, self.field, self.detail = reason, field, detail


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _response_text(value) -> str:
    if isinstance(value, str):
        return value
    return "".join(str(m.get("content") or "") for m in value)


def _render(tokenizer, messages, *, add_generation_prompt: bool, chat_template_kwargs: dict) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=add_generation_prompt, **chat_template_kwargs)
    return list(out["input_ids"])


def encode_pair(prompt, chosen, rejected, tokenizer, *, max_length: int | None = 1024,
                max_prompt_length: int | None = 512, prompt_truncation: str = "keep_end",
                chat_template_kwargs: dict | None = None) -> dict[str, Any]:
    """Encode one pair. Returns ``{"prompt_ids", "chosen_ids", "rejected_ids", "truncated"}`` where
    ``truncated`` is a list of what was cut ("prompt", "chosen", "rejected") and ``boundary_mismatch``
    tells whether the prompt had to be cut to the shared prefix. Raises ``SkipPair`` for a pair to drop."""
    kwargs = dict(chat_template_kwargs or {})
    for name, value in ((PROMPT, prompt), (CHOSEN, chosen), (REJECTED, rejected)):
        if value is None or not isinstance(value, (str, list)):
            raise SkipPair(f"missing or invalid {name}", name)
    conversational = is_conversational(prompt)
    if conversational != is_conversational(chosen) or conversational != is_conversational(rejected):
        raise SkipPair("prompt and responses mix string and message formats", CHOSEN)
    for name, value in ((CHOSEN, chosen), (REJECTED, rejected)):
        if not _response_text(value).strip():
            raise SkipPair(f"empty {name} response", name)

    if conversational:
        try:
            prompt_ids = _render(tokenizer, prompt, add_generation_prompt=True, chat_template_kwargs=kwargs)
            full_c = _render(tokenizer, prompt + chosen, add_generation_prompt=False, chat_template_kwargs=kwargs)
            full_r = _render(tokenizer, prompt + rejected, add_generation_prompt=False, chat_template_kwargs=kwargs)
        except Exception as exc:  # jinja raise_exception, bad roles...
            raise SkipPair("chat template error", PROMPT, f"{type(exc).__name__}: {exc}") from None
    else:
        eos = tokenizer.eos_token or ""
        chosen = chosen if chosen.endswith(eos) else chosen + eos
        rejected = rejected if rejected.endswith(eos) else rejected + eos
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        full_c = list(tokenizer(prompt + chosen)["input_ids"])
        full_r = list(tokenizer(prompt + rejected)["input_ids"])

    plen = min(_common_prefix(prompt_ids, full_c), _common_prefix(prompt_ids, full_r))
    mismatch = plen < len(prompt_ids)
    prompt_ids, chosen_ids, rejected_ids = prompt_ids[:plen], full_c[plen:], full_r[plen:]
    if not prompt_ids:
        raise SkipPair("empty prompt (no token to condition the response on)", PROMPT)
    if not chosen_ids:
        raise SkipPair("empty chosen response", CHOSEN)
    if not rejected_ids:
        raise SkipPair("empty rejected response", REJECTED)

    truncated = []
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        if prompt_truncation == "keep_end":
            prompt_ids = prompt_ids[len(prompt_ids) - max_prompt_length:]
        else:
            prompt_ids = prompt_ids[:max_prompt_length]
        truncated.append("prompt")
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room <= 0:
            raise SkipPair("prompt alone reaches max_length", PROMPT)
        if len(chosen_ids) > room:
            chosen_ids = chosen_ids[:room]
            truncated.append("chosen")
        if len(rejected_ids) > room:
            rejected_ids = rejected_ids[:room]
            truncated.append("rejected")
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
            "truncated": truncated, "boundary_mismatch": mismatch}


def check_options(max_length, max_prompt_length, prompt_truncation, on_invalid):
    if prompt_truncation not in ("keep_end", "keep_start"):
        raise ConfigError(f"prompt_truncation must be 'keep_end' or 'keep_start', got {prompt_truncation!r}")
    if on_invalid not in ("drop", "error"):
        raise ConfigError(f"on_invalid must be 'drop' or 'error', got {on_invalid!r}")
    if max_length is not None and max_length < 2:
        raise ConfigError(f"max_length must be at least 2, got {max_length}")
    if max_prompt_length is not None and max_length is not None and max_prompt_length >= max_length:
        raise ConfigError(f"max_prompt_length ({max_prompt_length}) must be below max_length ({max_length})")


def encode_with_reasons(dataset, tokenizer, *, max_length, max_prompt_length, prompt_truncation,
                         chat_template_kwargs, on_invalid, num_proc, desc):
    """Map every row to its encoding plus a drop reason ('' when kept); nothing removed yet."""
    for col in (PROMPT, CHOSEN, REJECTED):
        if col not in dataset.column_names:
            raise DataError(f"dataset has no '{col}' column (columns: {', '.join(dataset.column_names)})",
                            field=col)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token to pad with")

    def fn(row, idx):
        out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "pair_index": idx, DROP_REASON: "", TRUNCATED: []}
        try:
            enc = encode_pair(row[PROMPT], row[CHOSEN], row[REJECTED], tokenizer, max_length=max_length,
                              max_prompt_length=max_prompt_length, prompt_truncation=prompt_truncation,
                              chat_template_kwargs=chat_template_kwargs)
        except SkipPair as skip:
            if on_invalid == "error":
                raise DataError(f"{skip.reason}{': ' + skip.detail if skip.detail else ''}",
                                row=idx, field=skip.field, reason=skip.reason) from None
            out[DROP_REASON] = skip.reason
            return out
        out.update(prompt_ids=enc["prompt_ids"], chosen_ids=enc["chosen_ids"], rejected_ids=enc["rejected_ids"])
        out[TRUNCATED] = enc["truncated"] + (["boundary"] if enc["boundary_mismatch"] else [])
        return out

    drop_cols = [c for c in ENCODED_COLUMNS if c in dataset.column_names]
    if drop_cols:  # re-encoding an encoded dataset: the new ids replace the old ones
        dataset = dataset.remove_columns(drop_cols)
    return dataset.map(fn, with_indices=True, num_proc=num_proc, desc=desc)


def count_encoded(encoded, report: StageReport) -> None:
    reasons = encoded[DROP_REASON]
    for i, reason in enumerate(reasons):
        if reason:
            report.drop(reason, 1, example=f"row {i}")
    trunc = encoded[TRUNCATED]
    for key, note in (("prompt", "truncated_prompts"), ("chosen", "truncated_chosen"),
                      ("rejected", "truncated_rejected"), ("boundary", "prompt_boundary_mismatch")):
        report.notes[note] = report.notes.get(note, 0) + sum(key in t for t in trunc)


def encode_pairs(dataset, tokenizer, *, max_length: int | None = 1024, max_prompt_length: int | None = 512,
                 prompt_truncation: str = "keep_end", chat_template_kwargs: dict | None = None,
                 on_invalid: str = "drop", report: StageReport | None = None, num_proc: int | None = None):
    """Tokenize a PAIRS dataset for DPO-family training.

    Returns a ``datasets.Dataset`` with every input column kept plus ``prompt_ids``, ``chosen_ids``,
    ``rejected_ids`` (lists of int; chosen/rejected hold the RESPONSE ids only) and ``pair_index``
    (the row's index in `dataset`). Pairs that cannot be encoded are dropped and counted in
    `report` (see the module docstring); ``max_length`` bounds len(prompt) + len(response) of each
    sequence; ``None`` disables a limit.
    """
    check_options(max_length, max_prompt_length, prompt_truncation, on_invalid)
    report = report if report is not None else StageReport("tokenize")
    report.rows_in += len(dataset)
    encoded = encode_with_reasons(dataset, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                                   prompt_truncation=prompt_truncation, chat_template_kwargs=chat_template_kwargs,
                                   on_invalid=on_invalid, num_proc=num_proc, desc="Tokenizing pairs")
    count_encoded(encoded, report)
    if any(encoded[DROP_REASON]):
        encoded = encoded.filter(lambda r: not r, input_columns=[DROP_REASON], num_proc=num_proc)
    encoded = encoded.remove_columns([DROP_REASON, TRUNCATED])
    report.rows_out += len(encoded)
    return encoded


def _to_meta_value(values: list):
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    if all(isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.long)
    if all(v is None or isinstance(v, (int, float)) for v in values):
        return torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float32)
    return list(values)


@dataclass
class PairCollator:
    """Pad encoded pairs into one batch for a single concatenated forward of chosen then rejected.

    Input: a list of B rows with ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (from
    :func:`encode_pairs`) and any per-pair columns. Output (N = 2B, T = longest sequence, rounded up
    to ``pad_to_multiple_of``), right padded:

    - ``input_ids`` (N, T) long: rows 0..B-1 = prompt + chosen of pair i, rows B..2B-1 = prompt +
      rejected of pair i; padding = ``pad_token_id``
    - ``attention_mask`` (N, T) long: 1 on real tokens
    - ``response_mask`` (N, T) long: 1 on response tokens (the ones scored), 0 on prompt and padding
    - ``meta`` dict: per-pair columns named in ``meta_columns`` that the rows have, each a (B,)
      tensor (bool/long/float32; None becomes NaN) or a list for non-numeric values.

    No truncation happens here: :func:`encode_pairs` already applied (and counted) it.
    """

    pad_token_id: int
    meta_columns: Sequence[str] = field(default_factory=lambda: DEFAULT_META_COLUMNS)
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

        seqs, resp = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for r in rows:
                p, y = list(r["prompt_ids"]), list(r[key])
                seqs.append(p + y)
                resp.append([0] * len(p) + [1] * len(y))
        t = max(len(s) for s in seqs)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            t = ((t + m - 1) // m) * m
        n = len(seqs)
        input_ids = torch.full((n, t), int(self.pad_token_id), dtype=torch.long)
        attention_mask = torch.zeros((n, t), dtype=torch.long)
        response_mask = torch.zeros((n, t), dtype=torch.long)
        for i, (s, m) in enumerate(zip(seqs, resp)):
            input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, : len(s)] = 1
            response_mask[i, : len(m)] = torch.tensor(m, dtype=torch.long)
        meta = {c: _to_meta_value([r[c] for r in rows]) for c in self.meta_columns if c in rows[0]}
        return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask,
                "meta": meta}

    @classmethod
    def for_tokenizer(cls, tokenizer, **kwargs) -> "PairCollator":
        """A collator padding with the tokenizer's pad token (its eos token when it has none)."""
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ConfigError("the tokenizer has neither a pad nor an eos token to pad with")
        return cls(pad_token_id=pad, **kwargs)
