"""Loading what a training run trains: the tokenizer, the model (through prefkit.models, the one
place that loads models) and the LoRA configuration."""

from __future__ import annotations

from typing import Any

from prefkit.models import load_pretrained
from prefkit.models import load_tokenizer as _load_tokenizer
from prefkit.train.config import BaseTrainConfig


def load_tokenizer(cfg: BaseTrainConfig, tokenizer: Any = None):
    """The run's tokenizer (given, or from tokenizer_name_or_path / model_name_or_path through
    prefkit.models), with EOS as pad when it has none."""
    return _load_tokenizer(tokenizer if tokenizer is not None else (cfg.tokenizer_name_or_path or cfg.model_name_or_path),
                           trust_remote_code=cfg.trust_remote_code, pad_with_eos=True)


def load_model(kind: str, path: str, cfg: BaseTrainConfig, **kwargs):
    """A model of `kind` ('causal-lm' or 'sequence-classification') through prefkit.models, in
    the run's torch_dtype."""
    return load_pretrained(path, kind=kind, dtype=cfg.torch_dtype, trust_remote_code=cfg.trust_remote_code, **kwargs)


def lora_config(cfg: BaseTrainConfig, task_type: str):
    """The peft LoraConfig of the run's lora_* options (all linear layers unless lora_target_modules)."""
    from peft import LoraConfig  # noqa: PLC0415  heavy (peft): only when LoRA is used

    return LoraConfig(task_type=task_type, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules or "all-linear")
