"""The LM head as prefkit scores with it: final hidden states plus the head that turns them into
logits, one chunk of rows at a time (`HiddenHead`), found under DDP/FSDP/PEFT wrappers and with
LoRA adapters on the head applied as PEFT applies them. Shared by the padded log-prob path
(`prefkit.logprobs`) and the packed one (`prefkit.packed`), which both build on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: response tokens per log-softmax chunk (chunk_size x V fp32 values live at once: 512 x 32k = 64 MiB)
DEFAULT_CHUNK_SIZE = 512


@dataclass
class HiddenHead:
    """Final (post-norm) hidden states plus the LM head that turns them into logits.

    ``hidden`` (N, T, H); ``weight`` (V, H); ``bias`` (V,) or None; ``softcap`` the model's
    ``final_logit_softcapping`` (Gemma-2) or None; ``scale`` a multiplier applied to the logits
    before softcapping (1.0 for Llama/Qwen2). ``adapters``: the active LoRA adapters of a PEFT
    LM head, each (A (r, H), B (V, r), scaling, dropout module), added as the PEFT layer adds them.
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


def _unwrap(model):
    """The underlying HF PreTrainedModel under DDP/FSDP(1)/PEFT wrappers (their forward is still used)."""
    inner = model
    while hasattr(inner, "module") and isinstance(inner.module, torch.nn.Module):
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft.PeftModel: LoRA layers live inside the base model
        inner = inner.get_base_model()
    return inner


def _decoder(inner):
    dec = inner.get_decoder() if hasattr(inner, "get_decoder") else None
    if dec is None or dec is inner:
        dec = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    if dec is None or dec is inner:
        raise TypeError(f"cannot find the decoder (backbone) of {type(inner).__name__}")
    return dec


def _lora_head(head) -> tuple[torch.nn.Module, tuple]:
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


def _head_of(inner, hidden: torch.Tensor) -> HiddenHead:
    head, adapters = _lora_head(inner.get_output_embeddings())
    cfg = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    scale = getattr(cfg, "logit_scale", None)
    return HiddenHead(hidden=hidden, weight=head.weight, bias=getattr(head, "bias", None),
                      softcap=getattr(cfg, "final_logit_softcapping", None),
                      scale=1.0 if scale is None else float(scale), adapters=adapters)


def _chunk_token_logps(head: HiddenHead, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = head.logits(h)
    return logits.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _sum_rows(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, rows, values)
