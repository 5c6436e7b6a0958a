"""Trainers: DPO family and eps-DPO (`train_dpo`), Bradley-Terry reward models (`train_rm`),
supervised fine-tuning on prompt-completion rows (`train_sft`), and the on-disk reference
log-prob cache. Built on `transformers.Trainer`.

    from prefkit.train import DPOConfig, train_dpo
    out_dir = train_dpo(DPOConfig(model_name_or_path="my/model", train_file="pairs.jsonl",
                                  loss_type="sigmoid", beta=0.1, output_dir="runs/dpo"))

Heavy libraries load only when a trainer runs, so `import prefkit.train` stays cheap.
"""

from __future__ import annotations

import warnings

from prefkit.train.config import BaseTrainConfig, DPOConfig, RMConfig, SFTConfig, load_config

# PEFT's get_peft_model reads transformers' deprecated `is_gradient_checkpointing`, which warned on
# every LoRA run about code the user does not own and cannot change.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

__all__ = ["BaseTrainConfig", "DPOConfig", "RMConfig", "SFTConfig", "load_config", "train_dpo", "train_rm", "train_sft"]


def train_dpo(config, **kwargs):
    """Train a policy with a DPO-family loss or eps-DPO; returns the output directory.
    Keyword arguments (callbacks, probes, model, ref_model, tokenizer, train_dataset,
    eval_dataset): see prefkit.train.preference_trainer.train_dpo."""
    from prefkit.train.preference_trainer import train_dpo as _train  # noqa: PLC0415  heavy (torch): prefkit.train.config is read without it

    return _train(config, **kwargs)


def train_rm(config, **kwargs):
    """Train a Bradley-Terry reward model; returns the output directory. Keyword arguments
    (callbacks, model, tokenizer, train_dataset, eval_dataset): see prefkit.train.reward_trainer.train_rm."""
    from prefkit.train.reward_trainer import train_rm as _train  # noqa: PLC0415  heavy (torch): prefkit.train.config is read without it

    return _train(config, **kwargs)


def train_sft(config, **kwargs):
    """Supervised fine-tuning (the completion tokens' mean negative log-likelihood) on
    prompt-completion rows; returns the output directory. Keyword arguments (callbacks, model,
    tokenizer, train_dataset, eval_dataset, conditioning): see prefkit.train.sft_trainer.train_sft."""
    from prefkit.train.sft_trainer import train_sft as _train  # noqa: PLC0415  heavy (torch): prefkit.train.config is read without it

    return _train(config, **kwargs)
