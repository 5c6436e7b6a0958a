"""Bradley-Terry reward-model training on `transformers.Trainer`.

The model is an AutoModelForSequenceClassification with one output; a pair's reward is the
output at the last real token of prompt + response (the chat template applied by
prefkit.tokenize, chosen and rejected in one forward). The loss is
prefkit.losses.bradley_terry_loss: -log s(r_w - r_l - m) + c (r_w + r_l)^2, with the per-pair
margin m taken from `margin_column` when the data has it and c = center_rewards_coefficient.
Pairwise accuracy (r_w > r_l; ties count 1/2) is logged as `accuracy` (eval: `eval_accuracy`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from prefkit.errors import ConfigError
from prefkit.losses import bradley_terry_loss
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

    def pair_loss(self, model, batch):
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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.pair_loss(model, inputs)
        self.store_metrics(metrics, "train")
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, metrics = self.pair_loss(model, inputs)
        self.store_metrics(metrics, "eval")
        return loss.detach(), None, None


def train_rm(config, *, callbacks=None, model=None, tokenizer=None, train_dataset=None, eval_dataset=None) -> str:
    """Train a Bradley-Terry reward model; returns the output directory.

    config: an RMConfig. model / tokenizer / train_dataset / eval_dataset may be given in memory.
    The eval split (eval_file, or eval_split_ratio of the training pairs) gives the pairwise
    accuracy in the report. Writes the model + tokenizer, checkpoints and
    `prefkit_train_report.json` to output_dir.
    """
    from prefkit.tokenize import DEFAULT_META_COLUMNS, PairCollator
    from prefkit.train import common

    cfg = config
    run = common.prepare_run(cfg, model=model, tokenizer=tokenizer, train_dataset=train_dataset,
                             eval_dataset=eval_dataset, renames={cfg.margin_column: MARGIN, cfg.weight_column: "weight"})
    precision, args, tokenizer, t0 = run.precision, run.args, run.tokenizer, run.t0
    train_enc, eval_enc = run.train_enc, run.eval_enc
    read_report, data_report, eval_report = run.read_report, run.data_report, run.eval_report

    if model is None:
        model = common.load_model("sequence-classification", cfg.model_name_or_path, cfg, num_labels=1)
    if getattr(model.config, "num_labels", 1) != 1:
        raise ConfigError(f"a reward model has one output; {cfg.model_name_or_path} has "
                          f"num_labels={model.config.num_labels}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.config.pad_token_id = pad  # the classification head reads the last non-pad token
    if cfg.use_peft:
        from peft import get_peft_model

        model = get_peft_model(model, common.lora_config(cfg, "SEQ_CLS"))

    collator = PairCollator.for_tokenizer(tokenizer, meta_columns=tuple(DEFAULT_META_COLUMNS) + (MARGIN,))
    trainer = RewardTrainer(model=model, args=args, train_dataset=train_enc, eval_dataset=eval_enc,
                            data_collator=collator, processing_class=tokenizer, callbacks=list(callbacks or []),
                            prefkit_config=cfg)
    resume = common.resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir)
    initial_eval = trainer.evaluate(metric_key_prefix="initial") if eval_enc is not None and not resume else None
    result = trainer.train(resume_from_checkpoint=resume)
    final_eval = trainer.evaluate() if eval_enc is not None else None
    trainer.save_model(cfg.output_dir)
    if trainer.is_world_process_zero():
        data_report.rows_in = read_report.rows_in or data_report.rows_in
        data_report.merge(read_report)
        summary = [f"prefkit train rm: {trainer.state.global_step} steps in {time.time() - t0:.1f}s"
                   + (f" (resumed from {resume})" if resume else ""),
                   common.data_summary(data_report, len(eval_enc) if eval_enc is not None else None)]
        if final_eval:
            before = (f" (before training {initial_eval['initial_accuracy']:.4f})" if initial_eval else "")
            summary.append(f"eval: pairwise accuracy {final_eval['eval_accuracy']:.4f}{before} on {len(eval_enc)} pairs, "
                           f"loss {final_eval['eval_loss']:.4g}, margin {final_eval['eval_rewards/margins']:.4g}")
        common.write_report(cfg.output_dir, {
            "kind": "rm",
            "summary": "\n".join(summary),
            "config": cfg.to_dict(),
            "precision": precision,
            "world_size": trainer.accelerator.num_processes,
            "global_step": trainer.state.global_step,
            "train_loss": result.training_loss,
            "resumed_from": resume,
            "data": data_report.to_dict(),
            "eval_data": eval_report.to_dict() if eval_enc is not None else None,
            "initial_eval": initial_eval,
            "final_eval": final_eval,
            "eval_accuracy": final_eval["eval_accuracy"] if final_eval else None,
            "log_history": trainer.state.log_history,
        })
    trainer.accelerator.wait_for_everyone()
    return cfg.output_dir
