"""Supervised fine-tuning (SFT) on prompt-completion rows, on `transformers.Trainer`.

The loss is the mean negative log-likelihood of the completion tokens given the prompt, over
every completion token of the micro-batch (prompt tokens are masked out): TRL's SFTTrainer
convention for conversational rows ``{"prompt": [messages], "completion": [messages]}`` with
the loss on the completion only. A string row's completion gets the EOS text appended, as
prefkit.tokenize does for a pair's responses.

One forward path: an SFT row is encoded as a pair whose chosen and rejected responses are both
its completion (prefkit.tokenize.encode_pairs: the same prompt/completion boundary, truncation
and drop counting as the preference trainer), batched by PairCollator and run through the
forward engine (prefkit.packed): the packed plan computes a pair whose rejected equals its chosen
once (prompt + completion, no padding); the padded plan runs the chosen rows only. The
completion's per-row log-prob sums come from prefkit.packed.plan_logps.

Everything else (optimiser, schedule, `max_steps`, gradient accumulation, checkpoints and resume,
LoRA, DDP) is shared with the preference trainer (prefkit.train.prepare, loading, integrity,
run_report). With gradient accumulation each micro-batch's token mean is averaged, as the
preference trainer averages its per-micro-batch means.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import torch
from transformers.utils import logging

from prefkit.data.records import CHOSEN, PROMPT, REJECTED, is_conversational
from prefkit.data.sources import open_source
from prefkit.errors import ConfigError, DataError
from prefkit.packed import packing_supported, plan_logps, plan_pairs, plan_rows, scored_hidden
from prefkit.report import StageReport
from prefkit.tokenize import PairCollator
from prefkit.train.conditioning import find_conditioning_spec
from prefkit.train.integrity import resolve_resume, train_and_save
from prefkit.train.loading import load_model, lora_config
from prefkit.train.prepare import prepare_run
from prefkit.train.run_report import finish_run
from prefkit.train.trainer_base import MetricsTrainer

logger = logging.get_logger(__name__)

COMPLETION = "completion"


def read_completions(source, *, split=None, on_invalid: str = "drop", report: StageReport | None = None):
    """Prompt-completion rows (a file, saved dataset dir, hub id or in-memory Dataset) as the pair
    table the tokenizer encodes: prompt, chosen = rejected = completion. A row without a usable
    prompt or completion (missing, not a string or message list, or the two in different formats)
    is dropped and counted in `report`, or a DataError naming file, line and field with
    on_invalid='error'."""
    report = report if report is not None else StageReport("read")
    src = open_source(source, split=split)
    label = src.label if isinstance(source, (str, os.PathLike)) else None
    rows = []
    for i, row in src.rows():
        report.rows_in += 1
        if isinstance(row, DataError):
            why, field = row.reason, None
        else:
            prompt, completion = row.get(PROMPT), row.get(COMPLETION)
            why, field = None, None
            if not isinstance(prompt, (str, list)):
                why, field = "missing or invalid prompt", PROMPT
            elif not isinstance(completion, (str, list)):
                why, field = "missing or invalid completion", COMPLETION
            elif is_conversational(prompt) != is_conversational(completion):
                why, field = "prompt and completion mix string and message formats", COMPLETION
        if why is not None:
            if on_invalid == "error":
                raise DataError(why + (" (SFT rows have prompt and completion)" if field else ""), file=label,
                                field=field, **src.locate(i))
            report.drop(why, 1, example=f"row {i}")
            continue
        rows.append({PROMPT: prompt, CHOSEN: completion, REJECTED: completion})
    report.rows_out += len(rows)
    if not rows:   # prepare_run says so (no training rows left), with the drops counted
        return datasets.Dataset.from_dict({PROMPT: [], CHOSEN: [], REJECTED: []})
    return datasets.Dataset.from_list(rows)


def completion_forward(model, batch: dict[str, Any], *, forward_mode: str = "packed", pad_tolerance: float = 0.0,
                       warn=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob sums, completion token counts), each (B,), of a PairCollator batch of SFT rows
    (chosen = rejected = the completion) through the forward engine: packed (each row once,
    unpadded) when asked and the model can take it, else the padded chosen rows.
    `warn(why)` is called when a packed request falls back."""
    b = batch["input_ids"].shape[0] // 2
    if forward_mode == "packed":
        plan = plan_pairs(batch, pad_tolerance=pad_tolerance)
        ok, why = packing_supported(model, plan)
        if ok:
            out = plan_logps(scored_hidden(model, plan), plan)
            return out.logps[:b], out.lengths[:b]
        if warn is not None:
            warn(why)
    am = batch.get("attention_mask")
    plan = plan_rows(batch["input_ids"][:b], batch["response_mask"][:b], None if am is None else am[:b])
    out = plan_logps(scored_hidden(model, plan), plan)
    return out.logps, out.lengths


class SFTTrainer(MetricsTrainer):
    """A `transformers.Trainer` whose loss is the completion tokens' mean negative log-likelihood.
    Logs `loss` and `logps/completion` (the mean per-row log-prob sum) and `tokens` (completion
    tokens per micro-batch)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a micro-batch mean

    def __init__(self, *args, prefkit_config, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.pk = prefkit_config
        self._warned_packing = False

    def _warn(self, why: str) -> None:
        if not self._warned_packing:
            logger.warning("forward_mode=packed: %s; this run uses the padded forward", why)
            self._warned_packing = True

    def pair_loss(self, model, batch: dict[str, Any], *, training: bool):
        # Under DDP (several processes) each batch is ONE forward, as DDP's gradient reduction expects.
        tol = 1.0 if self.accelerator.num_processes > 1 else self.pk.pad_tolerance
        logps, lengths = completion_forward(model, batch, forward_mode=self.pk.forward_mode, pad_tolerance=tol,
                                            warn=self._warn)
        tokens = lengths.sum()
        loss = -logps.sum() / tokens.clamp(min=1).to(logps.dtype)
        if not bool(torch.isfinite(loss.detach())):
            raise DataError(f"the completion log-likelihood is {float(loss)}; the run stops here")
        return loss, {"logps/completion": logps.detach().double().mean().item(), "tokens": float(tokens)}


def train_sft(config, *, callbacks=None, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
              conditioning=None) -> str:
    """Supervised fine-tuning on prompt-completion rows; returns the output directory.

    config: an SFTConfig (prefkit.train.config). model / tokenizer / train_dataset / eval_dataset
    may be given in memory (datasets of prompt and completion columns). conditioning: the
    ConditioningSpec of in-memory goal-conditioned rows (`prefkit.relabel.sft_rows` returns it);
    for data read from disk the spec beside it is found (config `conditioning`), and copied into
    the output as `prefkit_conditioning.json` so that generation conditions prompts as trained.

    Writes to output_dir: the model and tokenizer (the LoRA adapter with use_peft), checkpoints
    and `prefkit_train_report.json`.
    """
    run = prepare_run(config, model=model, tokenizer=tokenizer, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, reader=read_completions)
    cfg, tokenizer = run.cfg, run.tokenizer
    spec = conditioning if conditioning is not None else find_conditioning_spec(cfg, cfg.train_file)
    if spec is None and cfg.export_chat_template:
        raise ConfigError("export_chat_template: the training data has no conditioning spec (rows written by "
                          "prefkit.relabel.sft_rows_file have one beside them; in memory, pass conditioning=spec)")
    skipped: list = []
    resume = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir, skipped=skipped)
    if model is None:
        model = load_model("causal-lm", cfg.model_name_or_path, cfg)
    if cfg.use_peft:
        from peft import get_peft_model  # noqa: PLC0415  heavy (peft): only when LoRA is used

        model = get_peft_model(model, lora_config(cfg, "CAUSAL_LM"))
    trainer = SFTTrainer(model=model, args=run.args, train_dataset=run.train_enc, eval_dataset=run.eval_enc,
                         data_collator=PairCollator.for_tokenizer(tokenizer, meta_columns=()),
                         processing_class=tokenizer, callbacks=list(callbacks or []), prefkit_config=cfg)
    result, final_eval, cond_path = train_and_save(trainer, cfg, resume, spec)
    last = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
    summary = []
    if last:
        summary.append("last log: " + ", ".join(f"{k}={last[k]:.4g}" for k in ("loss", "logps/completion")
                                                 if k in last))
    if final_eval:
        summary.append(f"eval: loss={final_eval['eval_loss']:.4g}")
    if cond_path:
        summary.append(f"conditioning spec copied to {cond_path}")
    finish_run(trainer, run, kind="sft", resume=resume, result=result, summary=summary,
               headline="prefkit train sft: completion-only NLL, ",
               run_fields={"skipped_incomplete_checkpoints": [str(p) for p in skipped]},
               eval_fields={"final_eval": final_eval, "conditioning": cond_path})
    return cfg.output_dir
