"""The LM head as prefkit scores with it, and the ONE chunked log-softmax over it.

`HiddenHead`: final (post-norm) hidden states plus the head that turns them into logits, found
under DDP/FSDP/PEFT wrappers (`head_of`), with LoRA adapters on the head applied as PEFT applies
them and Gemma-2's logit softcap. `chunk_logps` turns scored hidden rows into token log-probs one
chunk of rows at a time, in float32, so that full-vocabulary logits never exist for a batch; every
forward of prefkit (padded or packed, training or scoring; prefkit.packed, prefkit.logprobs) goes
through it. A caller's `LogitStatistic` sees each chunk's policy and reference logits, which is how
eps-DPO's perturbed policies (prefkit.train.eps_dpo) come from the same projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["DEFAULT_CHUNK_SIZE", "HiddenHead", "LogitStatistic", "TokenLogps", "chunk_logps", "head_of",
           "unwrap_model", "decoder_of", "lora_head", "sum_rows", "text_config"]

#: response tokens per log-softmax chunk (chunk_size x V fp32 values live at once: 512 x 32k = 64 MiB)
DEFAULT_CHUNK_SIZE = 512

#: f(policy logits (m, V) fp32, reference logits (m, V) fp32, labels (m,)) -> per-token values, each (m,).
#: Called without gradient on each chunk; the engine sums each value over a sequence's scored tokens.
LogitStatistic = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]


@dataclass
class HiddenHead:
    """Final (post-norm) hidden states plus the LM head that turns them into logits.

    ``hidden`` (M, H) the scored rows (prefkit.packed.scored_hidden); ``weight`` (V, H); ``bias``
    (V,) or None; ``softcap`` the model's ``final_logit_softcapping`` (Gemma-2) or None; ``scale`` a
    multiplier applied to the logits before softcapping (1.0 for Llama/Qwen2). ``adapters``: the
    active LoRA adapters of a PEFT LM head, each (A (r, H), B (V, r), scaling, dropout module),
    added as the PEFT layer adds them.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None = None
    softcap: float | None = None
    scale: float = 1.0
    adapters: tuple = ()

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """float32 logits for hidden rows ``h`` (M, H) -> (M, V)."""
        z = F.linear(h, self.weight, self.bias)
        for a, b, scaling, dropout in self.adapters:   # LoRA on the LM head: W h + s B A dropout(h)
            z = z + F.linear(F.linear(dropout(h.to(a.dtype)), a), b).to(z.dtype) * scaling
        z = z.float()
        if self.scale != 1.0:
            z = z * self.scale
        if self.softcap:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def with_hidden(self, hidden: torch.Tensor) -> HiddenHead:
        """The same head over other hidden rows."""
        return HiddenHead(hidden, self.weight, self.bias, self.softcap, self.scale, self.adapters)

    def requires_grad(self) -> bool:
        return (self.hidden.requires_grad or self.weight.requires_grad
                or any(a.requires_grad or b.requires_grad for a, b, _, _ in self.adapters))


# ----------------------------------------------------------------------------------------------
# finding the head of a (wrapped) model


def unwrap_model(model):
    """The underlying HF PreTrainedModel under DDP/FSDP(1)/PEFT wrappers (their forward is still used)."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft.PeftModel: LoRA layers live inside the base model
        inner = inner.get_base_model()
    return inner


def text_config(inner):
    """The text model's config (the config itself for a text-only model)."""
    return inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config


def decoder_of(inner):
    """The backbone whose output is the final hidden states (the forward hook goes on it)."""
    dec = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if dec is None or dec is inner:
        dec = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    if dec is None or dec is inner:
        raise TypeError(f"cannot find the decoder (backbone) of {type(inner).__name__}")
    return dec


def lora_head(head) -> tuple[torch.nn.Module, tuple]:
    """(base linear, active adapters) of an LM head that PEFT wrapped with LoRA (`lm_head` in
    target_modules), so that the hidden-state path scores with the adapter as the model's own
    forward does; (head, ()) for a plain head. LoRA variants (DoRA, ...) are refused."""
    if not (hasattr(head, "base_layer") and hasattr(head, "lora_A")):
        return head, ()
    if getattr(head, "disable_adapters", False) or getattr(head, "merged", False):
        return head.base_layer, ()   # disabled: the base; merged: the base weight holds the adapter
    adapters = []
    for name in head.active_adapters:
        if name not in head.lora_A:
            continue
        if name in getattr(head, "lora_variant", {}):
            raise TypeError(f"a LoRA variant ({type(head.lora_variant[name]).__name__}) on the LM head is not "
                            "supported by prefkit's log-prob path; leave lm_head out of lora_target_modules")
        adapters.append((head.lora_A[name].weight, head.lora_B[name].weight, head.scaling[name],
                         head.lora_dropout[name]))
    return head.base_layer, tuple(adapters)


def head_of(inner, hidden: torch.Tensor) -> HiddenHead:
    """The LM head of an unwrapped model over `hidden`."""
    head, adapters = lora_head(inner.get_output_embeddings())
    cfg = text_config(inner)
    scale = getattr(cfg, "logit_scale", None)
    return HiddenHead(hidden=hidden, weight=head.weight, bias=getattr(head, "bias", None),
                      softcap=getattr(cfg, "final_logit_softcapping", None),
                      scale=1.0 if scale is None else float(scale), adapters=adapters)


def sum_rows(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) sums of per-token `values` by their row index."""
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, rows, values)


# ----------------------------------------------------------------------------------------------
# the chunked log-softmax


def _token_logps(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return z.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(z, -1)


def _checkpointed_chunk(head: HiddenHead, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return _token_logps(head.logits(h), labels)


class _ChunkLogps(torch.autograd.Function):
    """log softmax(head(h))[label] for a chunk of hidden rows of a head without adapters; the
    backward recomputes the chunk's logits (as checkpointing would) and applies d/dz = onehot -
    softmax directly, through the softcap and scale. `sink(z)` sees the chunk's fp32 logits in the
    forward, so a LogitStatistic needs no second projection of the policy."""

    @staticmethod
    def forward(ctx, h, weight, bias, labels, head, sink):
        z = head.logits(h)
        lse = torch.logsumexp(z, -1)
        out = z.gather(-1, labels[:, None]).squeeze(-1) - lse
        if sink is not None:
            sink(z)
        ctx.save_for_backward(h, weight, bias, labels, lse)
        ctx.head = head
        return out

    @staticmethod
    def backward(ctx, g):
        h, weight, bias, labels, lse = ctx.saved_tensors
        head = ctx.head
        z = head.logits(h)
        cap = None
        if head.softcap:
            cap = z / head.softcap                                        # tanh(z0 / softcap)
        gz = torch.exp(z.sub_(lse[:, None])).mul_(-g[:, None])            # -g * softmax
        gz.scatter_add_(1, labels[:, None], g[:, None].to(gz.dtype))      # + g * onehot
        if cap is not None:
            gz.mul_(1.0 - cap * cap)
        if head.scale != 1.0:
            gz.mul_(head.scale)
        gl = gz.to(h.dtype)
        grad_h = gl @ weight.to(h.dtype) if ctx.needs_input_grad[0] else None
        grad_w = (gl.t() @ h).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = gl.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None, None, None


def _autocast_on(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except TypeError:  # older torch
        return torch.is_autocast_enabled()


class TokenLogps(NamedTuple):
    """Per scored token (M,): the policy's log-probs (with gradient when training), the reference's
    (None without a reference head) and the LogitStatistic's values (() without one)."""

    policy: torch.Tensor
    reference: torch.Tensor | None = None
    statistics: tuple[torch.Tensor, ...] = ()


def chunk_logps(head: HiddenHead, labels: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                ref_head: HiddenHead | None = None, statistic: LogitStatistic | None = None) -> TokenLogps:
    """log softmax(head(h_m))[labels_m] for every scored hidden row m, `chunk_size` rows at a time.

    With `ref_head` (the reference's hidden rows, same order) each chunk also gives the reference's
    log-probs, and `statistic` (which needs `ref_head`) its per-token values from the chunk's policy
    and reference logits; neither carries a gradient. Under autograd a chunk's logits are recomputed
    in the backward pass: by a hand-written backward for a plain head (`_ChunkLogps`), by activation
    checkpointing under autocast or for LoRA adapters on the head (their dropout replays its RNG).
    """
    if statistic is not None and ref_head is None:
        raise ValueError("a LogitStatistic needs the reference's hidden rows (ref_head)")
    h = head.hidden
    grad = torch.is_grad_enabled() and head.requires_grad()
    fused = grad and not head.adapters and not _autocast_on(h.device)
    pol: list[torch.Tensor] = []
    ref: list[torch.Tensor] = []
    stats: list[list[torch.Tensor]] = []

    def extras(zp: torch.Tensor | None, sl: slice) -> None:
        with torch.no_grad():
            zr = ref_head.logits(ref_head.hidden[sl])
            ref.append(_token_logps(zr, labels[sl]))
            if statistic is not None:
                if zp is None:   # the policy's chunk went through autograd: project it once more
                    zp = head.logits(h[sl])
                stats.append(list(statistic(zp.detach(), zr, labels[sl])))

    for start in range(0, h.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        if fused:
            sink = (lambda z, sl=sl: extras(z, sl)) if ref_head is not None else None
            pol.append(_ChunkLogps.apply(h[sl], head.weight, head.bias, labels[sl], head, sink))
        elif grad:
            pol.append(checkpoint(_checkpointed_chunk, head, h[sl], labels[sl], use_reentrant=False))
            if ref_head is not None:
                extras(None, sl)
        else:
            z = head.logits(h[sl])
            pol.append(_token_logps(z, labels[sl]))
            if ref_head is not None:
                extras(z, sl)

    def cat(xs):
        return torch.cat(xs) if xs else h.new_zeros(0, dtype=torch.float32)

    return TokenLogps(cat(pol), cat(ref) if ref_head is not None else None,
                      tuple(cat(list(col)) for col in zip(*stats)) if stats else ())
