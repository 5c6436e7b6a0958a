"""Prefix-shared, unpadded forwards for preference pairs (the trainer's and the scorer's default).

A :class:`~prefkit.tokenize.PairCollator` batch holds each pair twice (prompt + chosen, prompt +
rejected), padded to the batch's longest sequence. Here each pair becomes ONE packed sequence

    [ prompt (P tokens) | chosen (C tokens) | rejected (R tokens) ]

with position ids 0..P-1, P..P+C-1, P..P+R-1 (the rejected positions restart after the prompt)
and a 4D attention mask that is causal except that rejected tokens do not see chosen tokens. Every
token then sees exactly what it sees in its own unshared sequence, so the log-probs are those of
the padded path within float tolerance (tests/test_packed.py checks values, gradients, losses and
metrics), while the prompt is computed once per pair instead of twice. A pair whose rejected
response equals its chosen one is packed as prompt + chosen and both get the same (bit-equal)
log-probs, as in the padded path.

No padding waste: packed rows are grouped by length and a group only shares one forward when its
padding is at most ``pad_tolerance`` of its tokens (0.0, the default: only rows of equal length
share a forward; on a CPU a row alone runs as fast per token as a batch). The model never computes
full-vocabulary logits: only the final hidden states of the scored positions are gathered (the
prompt's last position scores the first token of both responses) and projected through the LM
head chunk by chunk (prefkit.logprobs), with a hand-written backward (`_ChunkLogps`) so that
eps-DPO's perturbed policies (arXiv:2502.13177) are computed from the same logits chunk as the
policy's log-probs: one full-vocabulary projection of the policy and one of the reference per
scored token, not a second pass.

Used for architectures whose attention accepts a custom 4D float mask with position ids (HF
``sdpa`` and ``eager`` attention: Llama, Qwen2, Mistral, Gemma, ...). A model that uses another
attention implementation, or sliding-window layers shorter than a packed row, runs the padded path
(prefkit.logprobs.concatenated_forward) instead, which :func:`packing_supported` tells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F

from prefkit.lm_head import DEFAULT_CHUNK_SIZE, HiddenHead, _decoder, _head_of, _sum_rows, _unwrap

__all__ = ["PackedPlan", "PackedLogps", "plan_pairs", "packing_supported", "scored_hidden", "packed_logps",
           "packed_pair_logps"]


@dataclass
class _Group:
    """One forward: G packed rows padded to T (at most pad_tolerance of its tokens are padding)."""

    input_ids: torch.Tensor      # (G, T)
    position_ids: torch.Tensor   # (G, T)
    allowed: torch.Tensor        # (G, T, T) bool: query i may attend key j
    flat_index: torch.Tensor     # (m,) indices into hidden.reshape(G*T, H): the scored positions' predictors


@dataclass
class PackedPlan:
    """How a PairCollator batch of B pairs is packed: the forwards to run and, for every scored
    token (M in all), its row (pair i's chosen = i, rejected = B+i), label and predictor position.
    ``lengths`` (2B,) are the scored tokens per row, as in the padded path."""

    groups: list[_Group]
    rows: torch.Tensor      # (M,) long
    labels: torch.Tensor    # (M,) long
    n: int                  # 2B
    lengths: torch.Tensor   # (2B,) long
    tokens: int             # tokens the forwards process (padding included)
    packed_lengths: list[int]
    same: torch.Tensor      # pairs whose rejected equals chosen: packed as prompt + chosen, rejected copied

    def complete(self, per_row: torch.Tensor) -> torch.Tensor:
        """Fill the rejected rows of pairs in ``same`` with their chosen rows' values (2B,)."""
        if self.same.numel() == 0:
            return per_row
        return per_row.index_copy(0, self.same + self.n // 2, per_row[self.same])

    @property
    def n_pairs(self) -> int:
        return self.n // 2


def plan_pairs(batch: dict[str, Any], *, pad_tolerance: float = 0.0, max_rows: int | None = None) -> PackedPlan:
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
        groups.append(_Group(gi, gp, allowed, torch.cat(flat)))
        tokens += len(g) * t
    lengths = torch.tensor(rlen, dtype=torch.long, device=dev)
    return PackedPlan(groups, torch.cat(rows_all), torch.cat(labels_all), n, lengths, tokens,
                      [lens[i] for i in range(b)], torch.tensor(same, dtype=torch.long, device=dev))


# ----------------------------------------------------------------------------------------------
# which models can run packed


def packing_supported(model, plan: PackedPlan | None = None) -> tuple[bool, str]:
    """(True, "") when `model`'s attention accepts the packed 4D mask with position ids; else
    (False, why). Sliding-window layers are supported only when every packed row fits the window."""
    inner = _unwrap(model)
    cfg = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return False, f"attention implementation {impl!r} (packed rows need 'sdpa' or 'eager')"
    from prefkit.lm_head import _lora_head

    if _lora_head(inner.get_output_embeddings())[1]:
        # The packed chunks' hand-written backward uses the head's own weight; the padded path
        # applies LoRA adapters on the head (prefkit.lm_head.HiddenHead.adapters).
        return False, "LoRA adapters on the LM head (the packed chunks use the head's base weight)"
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


def scored_hidden(model, plan: PackedPlan) -> HiddenHead:
    """Run `model` (through its own forward, so DDP/PEFT wrappers work) once per packed group and
    return a :class:`HiddenHead` whose ``hidden`` is (M, H): the final hidden state predicting each
    scored token, in the plan's order. No logits are computed."""
    inner = _unwrap(model)
    cfg = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    impl = getattr(cfg, "_attn_implementation", None) or "eager"
    dtype = _param_dtype(inner)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    pieces = []
    handle = _decoder(inner).register_forward_hook(hook)
    try:
        for g in plan.groups:
            keep = torch.empty(0, dtype=torch.long, device=g.input_ids.device)
            kw = dict(input_ids=g.input_ids, attention_mask=_mask(g.allowed, impl, dtype),
                      position_ids=g.position_ids, use_cache=False)
            try:
                model(**kw, logits_to_keep=keep)
            except TypeError:  # an architecture without logits_to_keep: its full logits are discarded
                model(**kw)
            h = captured.pop("h")
            pieces.append(h.reshape(-1, h.shape[-1])[g.flat_index])
    finally:
        handle.remove()
    return _head_of(inner, torch.cat(pieces))


# ----------------------------------------------------------------------------------------------
# chunked log-probs with a hand-written backward (and room for eps-DPO's perturbed policies)


def _lin(h, weight, bias, scale, softcap):
    """(fp32 logits, tanh(z / softcap) or None) for hidden rows h."""
    z = F.linear(h, weight, bias).float()
    if scale != 1.0:
        z = z * scale
    t = None
    if softcap:
        t = torch.tanh(z / softcap)
        z = t * softcap
    return z, t


class _ChunkLogps(torch.autograd.Function):
    """log softmax(head(h))[label] for a chunk of hidden rows; the backward recomputes the chunk's
    logits (as checkpointing would) and applies d/dz = onehot - softmax directly. `sink(z)` sees
    the chunk's fp32 logits in the forward (eps-DPO's perturbed policies use them)."""

    @staticmethod
    def forward(ctx, h, weight, bias, labels, scale, softcap, sink):
        z, _ = _lin(h, weight, bias, scale, softcap)
        lse = torch.logsumexp(z, -1)
        out = z.gather(-1, labels[:, None]).squeeze(-1) - lse
        if sink is not None:
            sink(z)
        ctx.save_for_backward(h, weight, bias, labels, lse)
        ctx.scale, ctx.softcap = scale, softcap
        return out

    @staticmethod
    def backward(ctx, g):
        h, weight, bias, labels, lse = ctx.saved_tensors
        z, t = _lin(h, weight, bias, ctx.scale, ctx.softcap)
        gz = torch.exp(z.sub_(lse[:, None])).mul_(-g[:, None])           # -g * softmax
        gz.scatter_add_(1, labels[:, None], g[:, None].to(gz.dtype))      # + g * onehot
        if t is not None:
            gz.mul_(1.0 - t * t)
        if ctx.scale != 1.0:
            gz.mul_(ctx.scale)
        gl = gz.to(h.dtype)
        grad_h = gl @ weight.to(h.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (gl.t() @ h).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = gl.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None, None, None, None


def _autocast_on(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # older torch
        return torch.is_autocast_enabled()


class PackedLogps(NamedTuple):
    """Per-row results, each (2B,): chosen rows first. ``ref_logps`` and ``minus``/``plus`` (eps-DPO's
    perturbed policies) are None unless a reference head was given."""

    logps: torch.Tensor
    lengths: torch.Tensor
    ref_logps: torch.Tensor | None = None
    minus: torch.Tensor | None = None
    plus: torch.Tensor | None = None


def packed_logps(head: HiddenHead, plan: PackedPlan, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 ref_head: HiddenHead | None = None, eps: float | None = None) -> PackedLogps:
    """Sequence log-probs from scored hidden rows (:func:`scored_hidden`), chunk by chunk.

    With `ref_head` (the reference's scored hidden rows, same plan) and `eps`, each chunk also
    yields the reference's log-probs and eps-DPO's perturbed policies' log-probs
      log softmax((1+eps) f_theta - eps f_ref)[x_t],  log softmax((1-eps) f_theta + eps f_ref)[x_t]
    from the same policy logits (no gradient flows through them)."""
    h, labels, rows = head.hidden, plan.labels, plan.rows
    grad = torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad)
    fused = grad and not _autocast_on(h.device)
    pol, ref_l, minus, plus = [], [], [], []

    def extras(zp: torch.Tensor, sl: slice) -> None:
        with torch.no_grad():
            zp = zp.detach()
            zr = ref_head.logits(ref_head.hidden[sl])
            lab = labels[sl, None]
            ref_l.append(zr.gather(-1, lab).squeeze(-1) - torch.logsumexp(zr, -1))
            if eps is not None:
                for coef, out in ((1.0 + eps, minus), (1.0 - eps, plus)):
                    # fp + (coef-1)(fp - fr): exactly fp when the policy equals its reference (as
                    # prefkit.logprobs.perturbed_sequence_logps), so rounding never moves a beta
                    z = zp + (coef - 1.0) * (zp - zr)
                    out.append(z.gather(-1, lab).squeeze(-1) - torch.logsumexp(z, -1))

    for start in range(0, h.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        sink: Callable | None = (lambda z, sl=sl: extras(z, sl)) if ref_head is not None else None
        if fused:
            pol.append(_ChunkLogps.apply(h[sl], head.weight, head.bias, labels[sl], head.scale, head.softcap, sink))
        elif grad:  # under autocast: the checkpointed chunk (prefkit.logprobs), extras computed beside it
            from torch.utils.checkpoint import checkpoint

            from prefkit.lm_head import _chunk_token_logps

            pol.append(checkpoint(_chunk_token_logps, head, h[sl], labels[sl], use_reentrant=False))
            if sink is not None:
                with torch.no_grad():
                    sink(head.logits(h[sl]))
        else:
            z = head.logits(h[sl])
            pol.append(z.gather(-1, labels[sl, None]).squeeze(-1) - torch.logsumexp(z, -1))
            if sink is not None:
                sink(z)

    def total(xs):
        return plan.complete(_sum_rows(torch.cat(xs) if xs else h.new_zeros(0, dtype=torch.float32), rows, plan.n))

    return PackedLogps(total(pol), plan.lengths,
                       total(ref_l) if ref_head is not None else None,
                       total(minus) if ref_head is not None and eps is not None else None,
                       total(plus) if ref_head is not None and eps is not None else None)


def packed_pair_logps(model, batch: dict[str, Any], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                      pad_tolerance: float = 0.0, plan: PackedPlan | None = None) -> PackedLogps:
    """Chosen-then-rejected sequence log-probs (2B,) of a PairCollator batch through packed,
    prefix-shared forwards; equal to prefkit.logprobs.concatenated_forward within float tolerance."""
    plan = plan if plan is not None else plan_pairs(batch, pad_tolerance=pad_tolerance)
    return packed_logps(scored_hidden(model, plan), plan, chunk_size=chunk_size)
