"""Bradley-Terry reward-model training on `transformers.Trainer`.

The model is an AutoModelForSequenceClassification with one output; a pair's reward is the
output at the last real token of prompt + response (the chat template applied by
prefkit.tokenize, chosen and rejected in one forward). The loss is
prefkit.losses.bradley_terry_loss: -log s(r_w - r_l - m) + c (r_w + r_l)^2, with the per-pair
margin m taken from `margin_column` when the data has it and c = center_rewards_coefficient.
Pairwise accuracy (r_w > r_l; ties count 1/2) is logged as `accuracy` (eval: `eval_accuracy`).
"""

from __future__ import annotations

from typing import Any

import torch

from prefkit.errors import ConfigError
from prefkit.losses import bradley_terry_loss
from prefkit.tokenize import DEFAULT_META_COLUMNS, PairCollator
from prefkit.train.integrity import guard, resolve_resume, save_final, train_guarded
from prefkit.train.loading import load_model, lora_config
from prefkit.train.prepare import prepare_run
from prefkit.train.run_report import finish_run
from prefkit.train.trainer_base import MetricsTrainer

MARGIN = "margin"


def pair_rewards(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_chosen, r_rejected), each (B,), from one forward over a PairCollator batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    r = out.logits.squeeze(-1).float()
    b = r.shape[0] // 2
    return r[:b], r[b:]


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    d = (r_chosen - r_rejected).detach()
    return ((d > 0).double() + 0.5 * (d == 0).double()).mean().item()


class RewardTrainer(MetricsTrainer):
    """Trainer whose loss is the Bradley-Terry loss of a sequence-classification model."""

    def __init__(self, *args, prefkit_config, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.pk = prefkit_config

    def pair_loss(self, model, batch, *, training: bool = True):
        meta = batch.get("meta", {})
        rc, rr = pair_rewards(model, batch)
        margin = meta.get(MARGIN)
        if margin is not None:
            margin = torch.nan_to_num(margin.to(rc.dtype), nan=0.0)
        weights = meta.get("weight")
        if weights is not None:
            weights = torch.nan_to_num(weights.to(rc.dtype), nan=1.0)
        out = bradley_terry_loss(rc, rr, margin=margin, centering=self.pk.center_rewards_coefficient or 0.0,
                                 weights=weights)
        metrics = {"accuracy": pairwise_accuracy(rc, rr),
                   "rewards/chosen": rc.detach().double().mean().item(),
                   "rewards/rejected": rr.detach().double().mean().item(),
                   "rewards/margins": (rc - rr).detach().double().mean().item()}
        return out.losses.mean(), metrics


def train_rm(config, *, callbacks=None, model=None, tokenizer=None, train_dataset=None, eval_dataset=None) -> str:
    """Train a Bradley-Terry reward model; returns the output directory.

    config: an RMConfig. model / tokenizer / train_dataset / eval_dataset may be given in memory.
    The eval split (eval_file, or eval_split_ratio of the training pairs) gives the pairwise
    accuracy in the report. Writes the model + tokenizer, checkpoints and
    `prefkit_train_report.json` to output_dir.
    """
    run = prepare_run(config, model=model, tokenizer=tokenizer, train_dataset=train_dataset,
                      eval_dataset=eval_dataset,
                      renames={config.margin_column: MARGIN, config.weight_column: "weight"})
    cfg, args, tokenizer = run.cfg, run.args, run.tokenizer
    train_enc, eval_enc = run.train_enc, run.eval_enc
    skipped: list = []
    resume = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir, skipped=skipped)

    if model is None:
        model = load_model("sequence-classification", cfg.model_name_or_path, cfg, num_labels=1)
    if getattr(model.config, "num_labels", 1) != 1:
        raise ConfigError(f"a reward model has one output; {cfg.model_name_or_path} has "
                          f"num_labels={model.config.num_labels}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.config.pad_token_id = pad  # the classification head reads the last non-pad token
    if cfg.use_peft:
        from peft import get_peft_model  # noqa: PLC0415  heavy (peft): only when LoRA is used

        model = get_peft_model(model, lora_config(cfg, "SEQ_CLS"))

    collator = PairCollator.for_tokenizer(tokenizer, meta_columns=tuple(DEFAULT_META_COLUMNS) + (MARGIN,))
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_enc, eval_dataset=eval_enc,
                            data_collator=collator, processing_class=tokenizer, callbacks=list(callbacks or []),
                            prefkit_config=cfg)
    initial_eval = trainer.evaluate(metric_key_prefix="initial") if eval_enc is not None and not resume else None
    result = train_guarded(trainer, cfg, resume)
    final_eval = trainer.evaluate() if eval_enc is not None else None
    with guard(cfg, "the trained model"):
        save_final(trainer, cfg.output_dir)
    summary = []
    if final_eval:
        before = (f" (before training {initial_eval['initial_accuracy']:.4f})" if initial_eval else "")
        summary.append(f"eval: pairwise accuracy {final_eval['eval_accuracy']:.4f}{before} on {len(eval_enc)} pairs, "
                       f"loss {final_eval['eval_loss']:.4g}, margin {final_eval['eval_rewards/margins']:.4g}")
    finish_run(trainer, run, kind="rm", headline="prefkit train rm: ", resume=resume, result=result,
               summary=summary,
               run_fields={"skipped_incomplete_checkpoints": [str(p) for p in skipped]},
               eval_fields={"initial_eval": initial_eval, "final_eval": final_eval,
                            "eval_accuracy": final_eval["eval_accuracy"] if final_eval else None})
    return cfg.output_dir
