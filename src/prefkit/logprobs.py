"""Per-sequence log-probabilities of responses, without full-vocabulary logits for a whole batch.

Shapes and conventions (N rows, T positions, H hidden size, V vocabulary):

- ``input_ids`` (N, T) long, ``attention_mask`` (N, T), ``response_mask`` (N, T): 1 on the tokens
  whose log-probs count (the response), as produced by :class:`prefkit.tokenize.PairCollator`.
- Token t (t >= 1) is scored by the model's prediction at position t-1: log softmax(f[t-1])[x_t].
  A sequence's log-prob is the SUM over its response tokens; its length is the number of response
  tokens scored (``response_mask[:, 1:].sum(1)``).
- The log-softmax runs over chunks of at most ``chunk_size`` response tokens: the final hidden
  states are projected through the LM head one chunk at a time, in float32, so a (N, T, V) fp32
  logits tensor never exists. Under autograd each chunk is checkpointed (its logits are recomputed
  in the backward pass), so training memory is bounded the same way.

Public API:

- :func:`sequence_logps` (model or logits) -> :class:`SequenceLogps` (sums, lengths, means)
- :func:`concatenated_forward` (model, batch) -> :class:`PairForward` chosen/rejected in ONE forward
- :func:`perturbed_sequence_logps` for eps-DPO's perturbed policies
- :func:`score_logps` (model, tokenizer, dataset) -> dataset with logps columns (selection and
  evaluation reuse it)
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

# DEFAULT_CHUNK_SIZE and HiddenHead are part of this module's API, as they were before they moved.
from prefkit.lm_head import DEFAULT_CHUNK_SIZE, HiddenHead, _chunk_token_logps, _decoder, _head_of, _sum_rows, _unwrap

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HiddenHead",
    "SequenceLogps",
    "PairForward",
    "forward_hidden",
    "sequence_logps",
    "concatenated_forward",
    "perturbed_sequence_logps",
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
    """One concatenated forward's result, each (B,): chosen rows first, then rejected rows.

    ``head`` is the policy's :class:`HiddenHead` (hidden states detached) when requested, for
    :func:`perturbed_sequence_logps`; otherwise None. ``perturbed`` is eps-DPO's ``(minus, plus)``
    (each (2B,)) when the forward already computed them (prefkit.packed); otherwise None.
    """

    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor
    head: HiddenHead | None = None
    perturbed: tuple[torch.Tensor, torch.Tensor] | None = None


# ----------------------------------------------------------------------------------------------
# the model side: final hidden states from one forward, without the model computing full logits


def forward_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> HiddenHead:
    """Run `model` once (through its own forward, so DDP/PEFT wrappers work) and return the final
    hidden states (N, T, H) with its LM head. The model is asked for no logits at all
    (``logits_to_keep`` = an empty index), so (N, T, V) logits are never built."""
    inner = _unwrap(model)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = _decoder(inner).register_forward_hook(hook)
    try:
        keep = torch.empty(0, dtype=torch.long, device=input_ids.device)
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep)
        except TypeError:  # an architecture without logits_to_keep: its full logits are discarded
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    return _head_of(inner, captured["h"])


# ----------------------------------------------------------------------------------------------
# chunked token log-probs


def _selected(response_mask: torch.Tensor, input_ids: torch.Tensor):
    """Scored positions: rows, hidden positions (t-1), labels x_t, for response tokens t >= 1."""
    scored = response_mask[:, 1:].bool()
    rows, pos = scored.nonzero(as_tuple=True)
    labels = input_ids[:, 1:][rows, pos]
    return scored, rows, pos, labels


def _token_logps_from_head(head: HiddenHead, rows, pos, labels, chunk_size: int) -> torch.Tensor:
    h = head.hidden[:, :-1][rows, pos]  # (M, H)
    pieces = []
    grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad
                                        or any(a.requires_grad or b.requires_grad for a, b, _, _ in head.adapters))
    for start in range(0, h.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        if grad:
            pieces.append(checkpoint(_chunk_token_logps, head, h[sl], labels[sl], use_reentrant=False))
        else:
            pieces.append(_chunk_token_logps(head, h[sl], labels[sl]))
    return torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)


def _token_logps_from_logits(logits: torch.Tensor, rows, pos, labels, chunk_size: int) -> torch.Tensor:
    z = logits[:, :-1][rows, pos]  # (M, V) in the logits' dtype
    pieces = []
    for start in range(0, z.shape[0], chunk_size):
        c = z[start:start + chunk_size].float()
        pieces.append(c.gather(-1, labels[start:start + chunk_size, None]).squeeze(-1) - torch.logsumexp(c, -1))
    return torch.cat(pieces) if pieces else z.new_zeros(0, dtype=torch.float32)


def sequence_logps(model_or_logits, input_ids: torch.Tensor, response_mask: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   return_head: bool = False):
    """Per-sequence sums of response-token log-probs.

    `model_or_logits` is a causal LM (HF, possibly wrapped in DDP/PEFT), a precomputed
    :class:`HiddenHead`, or a logits tensor (N, T, V). Returns :class:`SequenceLogps` with
    ``logps`` (N,) float32 and ``lengths`` (N,) long; with ``return_head=True`` returns
    ``(SequenceLogps, HiddenHead)`` (model input only). Differentiable w.r.t. the model when
    grad is enabled. Chunks of at most `chunk_size` scored tokens (see module docstring).
    """
    scored, rows, pos, labels = _selected(response_mask, input_ids)
    n = input_ids.shape[0]
    lengths = scored.sum(1)
    head = None
    if isinstance(model_or_logits, torch.Tensor):
        tok = _token_logps_from_logits(model_or_logits, rows, pos, labels, chunk_size)
    else:
        head = model_or_logits if isinstance(model_or_logits, HiddenHead) else \
            forward_hidden(model_or_logits, input_ids, attention_mask)
        tok = _token_logps_from_head(head, rows, pos, labels, chunk_size)
    out = SequenceLogps(_sum_rows(tok, rows, n), lengths)
    return (out, head) if return_head else out


def concatenated_forward(model, batch: dict[str, Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                         return_head: bool = False) -> PairForward:
    """Chosen and rejected log-probs of a :class:`~prefkit.tokenize.PairCollator` batch in ONE forward.

    ``batch`` holds ``input_ids``, ``attention_mask``, ``response_mask`` of shape (2B, T), chosen
    rows first. Returns :class:`PairForward` of (B,) tensors; with ``return_head=True`` its ``head``
    carries the policy's hidden states (detached) for :func:`perturbed_sequence_logps`.
    """
    seq, head = sequence_logps(model, batch["input_ids"], batch["response_mask"], batch.get("attention_mask"),
                               chunk_size=chunk_size, return_head=True)
    b = batch["input_ids"].shape[0] // 2
    if return_head and head is not None:
        head = HiddenHead(head.hidden.detach(), head.weight.detach(),
                          None if head.bias is None else head.bias.detach(), head.softcap, head.scale,
                          tuple((a.detach(), b.detach(), s, d) for a, b, s, d in head.adapters))
    else:
        head = None
    return PairForward(seq.logps[:b], seq.logps[b:], seq.lengths[:b], seq.lengths[b:], head)


@torch.no_grad()
def perturbed_sequence_logps(policy, reference, input_ids: torch.Tensor, response_mask: torch.Tensor,
                             eps: float, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """eps-DPO's perturbed policies' sequence log-probs (no gradient).

    `policy` and `reference` are each a :class:`HiddenHead` or a logits tensor (N, T, V) for the
    same ``input_ids`` (N, T). With f_theta, f_ref their per-token logits, returns ``(minus, plus)``,
    each (N,): sums over response tokens of
      log softmax((1+eps) f_theta - eps f_ref)[x_t]   (the policy for beta- = beta/(1+eps))
      log softmax((1-eps) f_theta + eps f_ref)[x_t]   (the policy for beta+ = beta/(1-eps)).
    Computed over chunks of at most `chunk_size` scored tokens.
    """
    _, rows, pos, labels = _selected(response_mask, input_ids)
    n = input_ids.shape[0]

    def rows_of(src):
        if isinstance(src, torch.Tensor):
            z = src[:, :-1][rows, pos]
            return lambda sl: z[sl].float()
        h = src.hidden[:, :-1][rows, pos]
        return lambda sl: src.logits(h[sl])

    pol, ref = rows_of(policy), rows_of(reference)
    minus, plus = [], []
    for start in range(0, rows.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        fp, fr, lab = pol(sl), ref(sl), labels[sl, None]
        for coef, out in ((1.0 + eps, minus), (1.0 - eps, plus)):
            # (1+eps) fp - eps fr  |  (1-eps) fp + eps fr, written as fp + (coef-1)(fp - fr) so that a
            # policy equal to its reference (step 1 of every run) gives exactly fp: otherwise rounding
            # alone decides eps-DPO's per-pair beta there (seen on SmolLM2, whose logits reach ~30)
            z = fp + (coef - 1.0) * (fp - fr)
            out.append(z.gather(-1, lab).squeeze(-1) - torch.logsumexp(z, -1))
    dev = input_ids.device
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, device=dev)  # noqa: E731
    return _sum_rows(cat(minus), rows, n), _sum_rows(cat(plus), rows, n)


# ----------------------------------------------------------------------------------------------
# scoring API


def _pair_forward(model, batch, *, forward: str, chunk_size: int, pad_tolerance: float) -> PairForward:
    if forward == "packed":
        from prefkit.packed import packed_logps, packing_supported, plan_pairs, scored_hidden

        plan = plan_pairs(batch, pad_tolerance=pad_tolerance)
        if packing_supported(model, plan)[0]:
            out = packed_logps(scored_hidden(model, plan), plan, chunk_size=chunk_size)
            b = plan.n_pairs
            return PairForward(out.logps[:b], out.logps[b:], out.lengths[:b], out.lengths[b:])
    return concatenated_forward(model, batch, chunk_size=chunk_size)


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
        from prefkit.errors import ConfigError

        raise ConfigError(f"forward must be 'packed' or 'padded', got {forward!r}")
    from tqdm.auto import tqdm

    from prefkit.report import progress_enabled

    from prefkit.data import records as R
    from prefkit.report import StageReport
    from prefkit.tokenize import _DROP, _TRUNC, PairCollator, _check_options, _count, _encode_with_reasons

    report = report if report is not None else StageReport("score_logps")
    report.rows_in += len(dataset)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
        encoded = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
        reasons = [""] * len(encoded)
    else:
        _check_options(max_length, max_prompt_length, prompt_truncation, "drop")
        enc = _encode_with_reasons(dataset, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                                   prompt_truncation=prompt_truncation, chat_template_kwargs=chat_template_kwargs,
                                   on_invalid="drop", num_proc=None, desc="Tokenizing pairs for scoring")
        _count(enc, report)
        reasons = enc[_DROP]
        encoded = enc.select_columns(["prompt_ids", "chosen_ids", "rejected_ids", _DROP, _TRUNC])
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
                out = _pair_forward(m, b, forward=forward, chunk_size=chunk_size, pad_tolerance=pad_tolerance)
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

