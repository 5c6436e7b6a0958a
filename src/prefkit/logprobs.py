"""Per-sequence log-probabilities of responses, without full-vocabulary logits for a whole batch.

Shapes and conventions (N rows, T positions, H hidden size, V vocabulary):

- ``input_ids`` (N, T) long, ``attention_mask`` (N, T), ``response_mask`` (N, T): 1 on the tokens
  whose log-probs count (the response), as produced by :class:`prefkit.tokenize.PairCollator`.
- Token t (t >= 1) is scored by the model's prediction at position t-1: log softmax(f[t-1])[x_t].
  A sequence's log-prob is the SUM over its response tokens; its length is the number of response
  tokens scored (``response_mask[:, 1:].sum(1)``).
- One forward engine: a plan (prefkit.packed: padded rows, or one prefix-shared packed row per
  pair) says what the model runs; `prefkit.packed.scored_hidden` runs it and keeps only the scored
  positions' final hidden states; `prefkit.lm_head.chunk_logps` projects them through the LM head
  (LoRA adapters and softcap included) in chunks of at most ``chunk_size`` tokens, in float32, so
  a (N, T, V) fp32 logits tensor never exists. Under autograd each chunk's logits are recomputed in
  the backward pass, so training memory is bounded the same way.

Public API:

- :func:`sequence_logps` (model or logits) -> :class:`SequenceLogps` (sums, lengths, means)
- :func:`pair_forward` (model, plan) -> :class:`PairForward`, the trainer's forward (with the
  reference's log-probs and a LogitStatistic when given)
- :func:`concatenated_forward` (model, batch) -> :class:`PairForward` through the padded plan
- :func:`score_logps` (model, tokenizer, dataset) -> dataset with logps columns (selection and
  evaluation reuse it)
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from tqdm.auto import tqdm

from prefkit.data import records as R
from prefkit.errors import ConfigError
from prefkit.lm_head import DEFAULT_CHUNK_SIZE, HiddenHead, LogitStatistic
from prefkit.packed import ForwardPlan, plan_for, plan_logps, plan_rows, scored_hidden
from prefkit.report import StageReport, progress_enabled
from prefkit.tokenize import (
    DROP_REASON,
    TRUNCATED,
    PairCollator,
    check_options,
    count_encoded,
    encode_with_reasons,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HiddenHead",
    "SequenceLogps",
    "PairForward",
    "sequence_logps",
    "token_logps_from_logits",
    "pair_forward",
    "concatenated_forward",
    "score_logps",
]


class SequenceLogps(NamedTuple):
    """``logps`` (N,) sum of response-token log-probs; ``lengths`` (N,) long, tokens scored."""

    logps: torch.Tensor
    lengths: torch.Tensor

    @property
    def mean(self) -> torch.Tensor:
        """Length-normalised log-probs (N,): logps / max(lengths, 1)."""
        return self.logps / self.lengths.clamp(min=1).to(self.logps.dtype)


class PairForward(NamedTuple):
    """One forward's per-pair results, each (B,): the policy's chosen and rejected log-prob sums and
    lengths; the reference's sums when a reference was given (else None); and a LogitStatistic's
    per-row sums, each (2B,) chosen rows first (() without one)."""

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    statistics: tuple[torch.Tensor, ...] = ()


def pair_forward(model, plan: ForwardPlan, *, ref_head: HiddenHead | None = None,
                 statistic: LogitStatistic | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE) -> PairForward:
    """The policy's chosen and rejected log-probs for a pair batch's plan in one pass of `model`.

    `ref_head`: the reference's scored hidden rows for the same plan (``scored_hidden(reference,
    plan)`` under no_grad); the reference's log-probs and `statistic`'s sums then come from the same
    chunks as the policy's (no gradient flows through them)."""
    out = plan_logps(scored_hidden(model, plan), plan, chunk_size=chunk_size, ref_head=ref_head, statistic=statistic)
    b = plan.n_pairs
    ref = out.ref_logps
    return PairForward(out.logps[:b], out.logps[b:], out.lengths[:b], out.lengths[b:],
                       None if ref is None else ref[:b], None if ref is None else ref[b:], out.statistics)


def token_logps_from_logits(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor,
                            chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, ForwardPlan]:
    """(M,) scored-token log-probs from a full logits tensor (N, T, V), with the padded plan that
    orders them (its ``rows`` sum them per sequence), chunk by chunk in float32."""
    plan = plan_rows(input_ids, response_mask)
    z = logits.reshape(-1, logits.shape[-1])[plan.groups[0].flat_index]
    pieces = []
    for start in range(0, z.shape[0], chunk_size):
        c, lab = z[start:start + chunk_size].float(), plan.labels[start:start + chunk_size]
        pieces.append(c.gather(-1, lab[:, None]).squeeze(-1) - torch.logsumexp(c, -1))
    return (torch.cat(pieces) if pieces else z.new_zeros(0, dtype=torch.float32)), plan


def sequence_logps(model_or_logits, input_ids: torch.Tensor, response_mask: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, *,
                   chunk_size: int = DEFAULT_CHUNK_SIZE) -> SequenceLogps:
    """Per-sequence sums of response-token log-probs.

    `model_or_logits` is a causal LM (HF, possibly wrapped in DDP/PEFT; run through the padded
    plan) or a logits tensor (N, T, V). Returns :class:`SequenceLogps` with ``logps`` (N,) float32
    and ``lengths`` (N,) long. Differentiable w.r.t. the model when grad is enabled. Chunks of at
    most `chunk_size` scored tokens (see module docstring).
    """
    if isinstance(model_or_logits, torch.Tensor):
        tok, plan = token_logps_from_logits(model_or_logits, input_ids, response_mask, chunk_size)
        return SequenceLogps(torch.zeros(plan.n, dtype=tok.dtype, device=tok.device).index_add(0, plan.rows, tok),
                             plan.lengths)
    plan = plan_rows(input_ids, response_mask, attention_mask)
    out = plan_logps(scored_hidden(model_or_logits, plan), plan, chunk_size=chunk_size)
    return SequenceLogps(out.logps, out.lengths)


def concatenated_forward(model, batch: dict[str, Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> PairForward:
    """Chosen and rejected log-probs of a :class:`~prefkit.tokenize.PairCollator` batch in ONE
    padded forward (``input_ids``, ``attention_mask``, ``response_mask`` of shape (2B, T), chosen
    rows first). Returns :class:`PairForward` of (B,) tensors."""
    plan = plan_rows(batch["input_ids"], batch["response_mask"], batch.get("attention_mask"))
    return pair_forward(model, plan, chunk_size=chunk_size)


# ----------------------------------------------------------------------------------------------
# scoring API


@contextmanager
def _eval_mode(model):
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def score_logps(model, tokenizer, dataset, *, batch_size: int = 8, max_length: int | None = 1024,
                max_prompt_length: int | None = 512, reference=None, progress: bool = True,
                sort_by_length: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE, report=None,
                prompt_truncation: str = "keep_end", chat_template_kwargs: dict | None = None,
                forward: str = "packed", pad_tolerance: float = 0.0):
    """Score every pair of a PAIRS dataset under `model` (and `reference` when given).

    Returns `dataset` with the same rows, in the same order, plus float columns ``logps_chosen``,
    ``logps_rejected`` (sum of response-token log-probs) and int columns ``len_chosen``,
    ``len_rejected`` (response tokens scored); with `reference`, also ``ref_logps_chosen`` and
    ``ref_logps_rejected``. Rows are tokenized with :func:`prefkit.tokenize.encode_pair` (same
    truncation options; responses longer than the limit are scored truncated and counted); a row
    that cannot be scored (empty response, prompt over max_length, ...) gets None in these columns
    and is counted in `report` by reason. A dataset that already has ``prompt_ids``/``chosen_ids``/
    ``rejected_ids`` is scored as encoded. Batches of `batch_size` pairs, longest first when
    `sort_by_length`, under ``torch.no_grad`` with a tqdm progress bar (pairs/s, ETA).
    ``forward="packed"`` (default) runs one prefix-shared, unpadded sequence per pair
    (:mod:`prefkit.packed`; `pad_tolerance` as there), falling back to ``"padded"`` (chosen and
    rejected rows padded, :func:`concatenated_forward`) for a model whose attention cannot take it.
    """
    if forward not in ("packed", "padded"):
        raise ConfigError(f"forward must be 'packed' or 'padded', got {forward!r}")
    report = report if report is not None else StageReport("score_logps")
    report.rows_in += len(dataset)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
        encoded = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
        reasons = [""] * len(encoded)
    else:
        check_options(max_length, max_prompt_length, prompt_truncation, "drop")
        enc = encode_with_reasons(dataset, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                                   prompt_truncation=prompt_truncation, chat_template_kwargs=chat_template_kwargs,
                                   on_invalid="drop", num_proc=None, desc="Tokenizing pairs for scoring")
        count_encoded(enc, report)
        reasons = enc[DROP_REASON]
        encoded = enc.select_columns(["prompt_ids", "chosen_ids", "rejected_ids", DROP_REASON, TRUNCATED])
    keep = [i for i, r in enumerate(reasons) if not r]
    prompt_ids, chosen_ids, rejected_ids = encoded["prompt_ids"], encoded["chosen_ids"], encoded["rejected_ids"]
    cost = {i: len(prompt_ids[i]) + max(len(chosen_ids[i]), len(rejected_ids[i])) for i in keep}
    order = sorted(keep, key=lambda i: -cost[i]) if sort_by_length else keep

    n = len(dataset)
    cols: dict[str, list] = {R.LOGPS_CHOSEN: [None] * n, R.LOGPS_REJECTED: [None] * n,
                             R.LEN_CHOSEN: [None] * n, R.LEN_REJECTED: [None] * n}
    if reference is not None:
        cols[R.REF_LOGPS_CHOSEN], cols[R.REF_LOGPS_REJECTED] = [None] * n, [None] * n
    collate = PairCollator.for_tokenizer(tokenizer, meta_columns=())
    models = [(R.LOGPS_CHOSEN, R.LOGPS_REJECTED, model, True)]  # (columns, model, with lengths)
    if reference is not None:
        models.append((R.REF_LOGPS_CHOSEN, R.REF_LOGPS_REJECTED, reference, False))
    bar = tqdm(total=len(order), desc="Scoring pairs", unit="pair", disable=not progress_enabled(progress))
    with torch.no_grad(), _eval_mode(model), (_eval_mode(reference) if reference is not None else nullcontext()):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([{"prompt_ids": prompt_ids[i], "chosen_ids": chosen_ids[i],
                              "rejected_ids": rejected_ids[i]} for i in idx])
            for col_c, col_r, m, with_lengths in models:
                dev = _device_of(m)
                b = {k: v.to(dev) for k, v in batch.items() if isinstance(v, torch.Tensor)}
                plan, _ = plan_for(m, b, forward_mode=forward, pad_tolerance=pad_tolerance)
                out = pair_forward(m, plan, chunk_size=chunk_size)
                for j, i in enumerate(idx):
                    cols[col_c][i] = float(out.chosen_logps[j])
                    cols[col_r][i] = float(out.rejected_logps[j])
                    if with_lengths:
                        cols[R.LEN_CHOSEN][i] = int(out.chosen_lengths[j])
                        cols[R.LEN_REJECTED][i] = int(out.rejected_lengths[j])
            bar.update(len(idx))
    bar.close()
    report.rows_out += len(keep)
    report.notes["scored_pairs"] = report.notes.get("scored_pairs", 0) + len(keep)
    for name in cols:
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
    for name, values in cols.items():
        dataset = dataset.add_column(name, values)
    return dataset

