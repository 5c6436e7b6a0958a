"""The forward engine's plans and its one forward: which rows the model runs, and the final hidden
states of the positions that predict scored tokens.

A plan (`ForwardPlan`) lists the forwards to run (`ForwardGroup`s) and, for every scored token (M
in all), its output row, label and the position of its predictor. There are two kinds:

- padded (`plan_rows`): one row per sequence, as a :class:`~prefkit.tokenize.PairCollator` batch
  holds it (chosen rows, then rejected rows, right padded): the degenerate packing plan;
- packed (`plan_pairs`, the trainer's and the scorer's default): each pair becomes ONE sequence

    [ prompt (P tokens) | chosen (C tokens) | rejected (R tokens) ]

  with position ids 0..P-1, P..P+C-1, P..P+R-1 (the rejected positions restart after the prompt)
  and a 4D attention mask that is causal except that rejected tokens do not see chosen tokens.
  Every token then sees exactly what it sees in its own unshared sequence, so the log-probs are
  those of the padded plan within float tolerance (tests/test_packed.py checks values, gradients,
  losses and metrics), while the prompt is computed once per pair instead of twice. A pair whose
  rejected response equals its chosen one is packed as prompt + chosen and both get the same
  (bit-equal) log-probs, as in the padded plan. Packed rows are grouped by length and a group only
  shares one forward when its padding is at most ``pad_tolerance`` of its tokens (0.0, the default:
  only rows of equal length share a forward; on a CPU a row alone runs as fast per token as a batch).

`scored_hidden` runs either plan through the model's own forward (so DDP/PEFT wrappers work) with
no logits at all (``logits_to_keep`` = an empty index) and gathers the scored positions' hidden
states; `plan_logps` projects them through the LM head chunk by chunk (prefkit.lm_head.chunk_logps)
into per-row sums. Packing needs attention that accepts a custom 4D float mask with position ids
(HF ``sdpa`` and ``eager``: Llama, Qwen2, Mistral, Gemma, ...); `packing_supported` says when a
model cannot take it, and `plan_for` then falls back to the padded plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from prefkit.lm_head import (
    DEFAULT_CHUNK_SIZE,
    HiddenHead,
    LogitStatistic,
    chunk_logps,
    decoder_of,
    head_of,
    sum_rows,
    text_config,
    unwrap_model,
)

__all__ = ["ForwardPlan", "ForwardGroup", "RowLogps", "FORWARD_MODES", "plan_rows", "plan_pairs",
           "plan_for", "packing_supported", "scored_hidden", "plan_logps", "packed_pair_logps"]

FORWARD_MODES = ("packed", "padded")


@dataclass
class ForwardGroup:
    """One forward of G rows of T positions. Padded rows carry a 2D ``attention_mask`` (G, T); packed
    rows carry ``position_ids`` (G, T) and ``allowed`` (G, T, T) bool (query i may attend key j)."""

    input_ids: torch.Tensor                    # (G, T)
    flat_index: torch.Tensor                   # (m,) indices into hidden.reshape(G*T, H): the scored positions' predictors
    attention_mask: torch.Tensor | None = None  # (G, T), padded rows
    position_ids: torch.Tensor | None = None    # (G, T), packed rows
    allowed: torch.Tensor | None = None         # (G, T, T) bool, packed rows


@dataclass
class ForwardPlan:
    """The forwards to run for N output rows (a pair batch: pair i's chosen = i, rejected = B+i) and,
    for every scored token (M in all), its output row and label, in the order of the groups'
    ``flat_index``. ``lengths`` (N,) are the scored tokens per row."""

    groups: list[ForwardGroup]
    rows: torch.Tensor      # (M,) long
    labels: torch.Tensor    # (M,) long
    n: int                  # N
    lengths: torch.Tensor   # (N,) long
    tokens: int             # tokens the forwards process (padding included)
    packed_lengths: list[int]  # tokens of each row the model runs (per pair when packed)
    same: torch.Tensor      # packed pairs whose rejected equals chosen: packed as prompt + chosen, rejected copied

    def complete(self, per_row: torch.Tensor) -> torch.Tensor:
        """Fill the rejected rows of pairs in ``same`` with their chosen rows' values (2B,)."""
        if self.same.numel() == 0:
            return per_row
        return per_row.index_copy(0, self.same + self.n // 2, per_row[self.same])

    @property
    def n_pairs(self) -> int:
        return self.n // 2


def plan_rows(input_ids: torch.Tensor, response_mask: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> ForwardPlan:
    """The padded plan: one forward over the rows as given (N, T), one output row per input row.

    Token t (t >= 1) of a row is scored by the model's prediction at position t-1 when
    ``response_mask[:, t]`` is 1; a row's length is ``response_mask[:, 1:].sum()``."""
    scored = response_mask[:, 1:].bool()
    rows, pos = scored.nonzero(as_tuple=True)
    n, t = input_ids.shape
    group = ForwardGroup(input_ids, rows * t + pos, attention_mask=attention_mask)
    real = attention_mask.sum(1).tolist() if attention_mask is not None else [t] * n
    return ForwardPlan([group], rows, input_ids[:, 1:][rows, pos], n, scored.sum(1), n * t, real,
                       torch.zeros(0, dtype=torch.long, device=input_ids.device))


def plan_pairs(batch: dict[str, Any], *, pad_tolerance: float = 0.0, max_rows: int | None = None) -> ForwardPlan:
    """Pack a PairCollator batch (``input_ids``, ``attention_mask``, ``response_mask`` of shape
    (2B, T), chosen rows first; right padded) into one sequence per pair (module docstring)."""
    ids, am, resp = batch["input_ids"], batch.get("attention_mask"), batch["response_mask"]
    n = ids.shape[0]
    if n % 2:
        raise ValueError(f"a pair batch has an even number of rows (chosen then rejected); got {n}")
    b = n // 2
    dev = ids.device
    am = torch.ones_like(ids) if am is None else am
    real = am.bool()
    resp_b = resp.bool() & real
    tot = real.sum(1).tolist()
    rlen = resp_b.sum(1).tolist()
    pairs, same = [], []
    for i in range(b):
        pc, pr = tot[i] - rlen[i], tot[b + i] - rlen[b + i]
        c, r = rlen[i], rlen[b + i]
        if pc != pr or not torch.equal(ids[i, :pc], ids[b + i, :pr]):
            raise ValueError(f"pair {i}: the chosen and rejected rows do not share their prompt; "
                             "a packed forward needs a PairCollator batch")
        if pc < 1:
            raise ValueError(f"pair {i}: empty prompt (no token to condition the response on)")
        chosen, rejected = ids[i, pc:pc + c], ids[b + i, pr:pr + r]
        if c == r and torch.equal(chosen, rejected):  # identical responses: computed once, copied
            same.append(i)
            rejected = rejected[:0]
        pairs.append((ids[i, :pc], chosen, rejected))
    order = sorted(range(b), key=lambda i: -sum(len(x) for x in pairs[i]))
    lens = {i: sum(len(x) for x in pairs[i]) for i in range(b)}
    chunks: list[list[int]] = []
    for i in order:
        if chunks:
            g = chunks[-1]
            t = lens[g[0]]
            size = t * (len(g) + 1)
            waste = size - sum(lens[j] for j in g) - lens[i]
            if waste <= pad_tolerance * size and (max_rows is None or len(g) < max_rows):
                g.append(i)
                continue
        chunks.append([i])

    groups, rows_all, labels_all, tokens = [], [], [], 0
    for g in chunks:
        t = lens[g[0]]
        gi = torch.zeros((len(g), t), dtype=torch.long, device=dev)
        gp = torch.zeros((len(g), t), dtype=torch.long, device=dev)
        allowed = torch.zeros((len(g), t, t), dtype=torch.bool, device=dev)
        flat = []
        for k, i in enumerate(g):
            p, c, r = pairs[i]
            P, C, R = len(p), len(c), len(r)
            L = P + C + R
            gi[k, :L] = torch.cat([p, c, r])
            gi[k, L:] = p[0]  # any valid token id: padding is masked out and never scored
            gp[k, :L] = torch.cat([torch.arange(P + C, device=dev), torch.arange(P, P + R, device=dev)])
            allowed[k, :L, :L] = torch.ones((L, L), dtype=torch.bool, device=dev).tril()
            allowed[k, P + C:L, P:P + C] = False           # rejected tokens do not see chosen tokens
            if L < t:
                idx = torch.arange(L, t, device=dev)
                allowed[k, idx, idx] = True               # a padding query sees itself only (no empty softmax row)
            src_c = torch.cat([torch.tensor([P - 1], device=dev), torch.arange(P, P + C - 1, device=dev)])
            src_r = torch.cat([torch.tensor([P - 1], device=dev), torch.arange(P + C, P + C + max(R - 1, 0), device=dev)])[:R]
            flat += [k * t + src_c, k * t + src_r]
            rows_all += [torch.full((C,), i, dtype=torch.long, device=dev),
                         torch.full((R,), b + i, dtype=torch.long, device=dev)]
            labels_all += [c, r]
        groups.append(ForwardGroup(gi, torch.cat(flat), position_ids=gp, allowed=allowed))
        tokens += len(g) * t
    lengths = torch.tensor(rlen, dtype=torch.long, device=dev)
    return ForwardPlan(groups, torch.cat(rows_all), torch.cat(labels_all), n, lengths, tokens,
                      [lens[i] for i in range(b)], torch.tensor(same, dtype=torch.long, device=dev))


# ----------------------------------------------------------------------------------------------
# which models can run packed


def packing_supported(model, plan: ForwardPlan | None = None) -> tuple[bool, str]:
    """(True, "") when `model`'s attention accepts the packed 4D mask with position ids; else
    (False, why). Sliding-window layers are supported only when every packed row fits the window."""
    cfg = text_config(unwrap_model(model))
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return False, f"attention implementation {impl!r} (packed rows need 'sdpa' or 'eager')"
    layer_types = getattr(cfg, "layer_types", None) or []
    window = getattr(cfg, "sliding_window", None)
    uses_window = "sliding_attention" in layer_types or (window and getattr(cfg, "use_sliding_window", False))
    if uses_window and window and plan is not None and max(plan.packed_lengths, default=0) > window:
        return False, f"a packed row of {max(plan.packed_lengths)} tokens exceeds the sliding window ({window})"
    return True, ""


# ----------------------------------------------------------------------------------------------
# forwards


def _mask(allowed: torch.Tensor, impl: str, dtype: torch.dtype) -> torch.Tensor:
    """(G, 1, T, T): a boolean mask for sdpa, an additive float mask for eager attention."""
    if impl == "sdpa":
        return allowed[:, None]
    m = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return m.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _param_dtype(inner) -> torch.dtype:
    for p in inner.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def scored_hidden(model, plan: ForwardPlan) -> HiddenHead:
    """Run `model` (through its own forward, so DDP/PEFT wrappers work) once per group of `plan` and
    return a :class:`HiddenHead` whose ``hidden`` is (M, H): the final hidden state predicting each
    scored token, in the plan's order. The model is asked for no logits (``logits_to_keep`` = an
    empty index; an architecture without it computes its logits, which are discarded)."""
    inner = unwrap_model(model)
    impl = getattr(text_config(inner), "_attn_implementation", None) or "eager"
    dtype = _param_dtype(inner)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    pieces = []
    handle = decoder_of(inner).register_forward_hook(hook)
    try:
        for g in plan.groups:
            if g.allowed is not None:
                kw = dict(attention_mask=_mask(g.allowed, impl, dtype), position_ids=g.position_ids)
            else:
                kw = dict(attention_mask=g.attention_mask)
            kw.update(input_ids=g.input_ids, use_cache=False)
            keep = torch.empty(0, dtype=torch.long, device=g.input_ids.device)
            try:
                model(**kw, logits_to_keep=keep)
            except TypeError:  # an architecture without logits_to_keep: its full logits are discarded
                model(**kw)
            h = captured.pop("h")
            pieces.append(h.reshape(-1, h.shape[-1])[g.flat_index])
    finally:
        handle.remove()
    return head_of(inner, torch.cat(pieces))


def plan_for(model, batch: dict[str, Any], *, forward_mode: str = "packed", pad_tolerance: float = 0.0
             ) -> tuple[ForwardPlan, str]:
    """The plan for a PairCollator batch: packed when `forward_mode` is "packed" and the model can
    take it, else padded; with the reason when a packed request fell back ("" otherwise)."""
    if forward_mode not in FORWARD_MODES:
        raise ValueError(f"forward_mode must be one of {', '.join(FORWARD_MODES)}; got {forward_mode!r}")
    if forward_mode == "packed":
        plan = plan_pairs(batch, pad_tolerance=pad_tolerance)
        ok, why = packing_supported(model, plan)
        if ok:
            return plan, ""
    else:
        why = ""
    return plan_rows(batch["input_ids"], batch["response_mask"], batch.get("attention_mask")), why


class RowLogps(NamedTuple):
    """Per output row of a plan, each (N,): the policy's log-prob sums, the scored-token counts, the
    reference's sums (None without a reference head) and a LogitStatistic's sums (() without one)."""

    logps: torch.Tensor
    lengths: torch.Tensor
    ref_logps: torch.Tensor | None = None
    statistics: tuple[torch.Tensor, ...] = ()


def plan_logps(head: HiddenHead, plan: ForwardPlan, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
               ref_head: HiddenHead | None = None, statistic: LogitStatistic | None = None) -> RowLogps:
    """Sequence log-probs of the plan's rows from scored hidden rows (:func:`scored_hidden`): sums of
    :func:`prefkit.lm_head.chunk_logps` per row (its `ref_head` and `statistic` likewise)."""
    tok = chunk_logps(head, plan.labels, chunk_size=chunk_size, ref_head=ref_head, statistic=statistic)

    def total(values: torch.Tensor) -> torch.Tensor:
        return plan.complete(sum_rows(values, plan.rows, plan.n))

    return RowLogps(total(tok.policy), plan.lengths, None if tok.reference is None else total(tok.reference),
                    tuple(total(v) for v in tok.statistics))


def packed_pair_logps(model, batch: dict[str, Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      pad_tolerance: float = 0.0, plan: ForwardPlan | None = None) -> RowLogps:
    """Chosen-then-rejected sequence log-probs (2B,) of a PairCollator batch through packed,
    prefix-shared forwards; equal to the padded plan's within float tolerance."""
    plan = plan if plan is not None else plan_pairs(batch, pad_tolerance=pad_tolerance)
    return plan_logps(scored_hidden(model, plan), plan, chunk_size=chunk_size)
