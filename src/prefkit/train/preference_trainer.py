"""DPO-family and eps-DPO training on `transformers.Trainer`.

The trainer's own part is small: one forward per batch through the forward engine
(prefkit.logprobs.pair_forward on a packed or padded plan), the reference log-probs (precomputed
and cached, or a live reference), the beta control (prefkit.train.beta_control), and a loss looked
up by name in prefkit.losses. Everything else (optimiser, schedule, gradient accumulation, mixed precision,
checkpoints and resume, DDP under torchrun/accelerate, report_to integrations) is the Trainer's.

Reference, by case:
- a loss registered with needs_reference=False (simpo): none;
- a beta control with a LogitStatistic (eps-dpo): a live reference (it needs the reference's
  logits, not only its log-probs); with LoRA the adapter-disabled base model, otherwise a frozen copy;
- otherwise with precompute_ref_log_probs (default): one pass before training, cached on disk
  (prefkit.train.reference_cache), so only the policy is in memory while training;
- otherwise live: the adapter-disabled base (LoRA) or a frozen copy.

Per-pair metadata (pair_index, weight, precomputed reference log-probs) travels in
`batch["meta"]`, never mixed with model inputs.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from prefkit.data import records as R
from prefkit.errors import ConfigError, DataError
from prefkit.files import atomic_write_text
from prefkit.logprobs import PairForward, pair_forward, score_logps
from prefkit.losses import PairLogps, get_loss, loss_spec, pair_metrics
from prefkit.packed import plan_for, scored_hidden
from prefkit.tokenize import PairCollator
from prefkit.train import reference_cache as rc
from prefkit.train.beta_control import BetaControl
from prefkit.train.beta_control import beta_control as _beta_control
from prefkit.train.conditioning import find_conditioning_spec, warn_if_relabeled
from prefkit.train.integrity import STATE_FILE, resolve_resume, train_and_save
from prefkit.train.loading import load_model, lora_config
from prefkit.train.prepare import prepare_run
from prefkit.train.run_report import finish_run
from prefkit.train.trainer_base import MetricsTrainer

logger = logging.get_logger(__name__)


def _loss_fn(cfg, control: BetaControl):
    """The registered loss the beta control names (eps-dpo trains the sigmoid loss with a per-pair
    beta), with the config's loss options bound."""
    return get_loss(control.loss_name, **cfg.loss_option_values())


class PreferenceTrainer(MetricsTrainer):
    """A `transformers.Trainer` whose loss is a prefkit.losses loss over one chosen+rejected
    forward. Logs TRL's metric names plus the beta control's metrics (eps-DPO's beta statistics).

    reference: "precomputed" (log-probs in batch["meta"]), "none" (reference-free loss),
    "adapter" (PEFT model with its adapter disabled), or a model (a frozen copy).
    probes: {name: fn(model) -> float or {key: float}}, evaluated at every logging step and logged
    as `name` or `name/key` (`probe_values`; e.g. the demo's unlearning probe, the half probe of
    prefkit.train.half_probe).
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a micro-batch mean

    def __init__(self, *args, prefkit_config, reference, beta_control: BetaControl | None = None,
                 probes: dict[str, Callable] | None = None, chunk_size: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.pk = prefkit_config
        self.beta_control = beta_control if beta_control is not None else _beta_control(prefkit_config)
        self.loss_fn = _loss_fn(prefkit_config, self.beta_control)
        self.reference = reference
        if isinstance(reference, torch.nn.Module):
            reference.eval().requires_grad_(False)
            self.reference = reference.to(self.args.device)
        if self.beta_control.statistic is not None and reference in ("precomputed", "none"):
            raise ConfigError(f"{prefkit_config.loss_type} needs a live reference model (its logits), "
                              "not precomputed log-probs")
        self.probes = dict(probes or {})
        self.chunk_size = chunk_size
        self._warned_packing = False
        self.add_callback(_PrefkitState(self))

    # -- the loss ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reference_model(self, model):
        if self.reference == "adapter":
            peft_model = self.accelerator.unwrap_model(model)
            with peft_model.disable_adapter():
                yield peft_model
        else:
            yield self.reference

    def _forward(self, model, batch: dict[str, Any]) -> PairForward:
        """The policy's (and a live reference's) log-probs for one batch through the forward engine
        (prefkit.logprobs.pair_forward): one prefix-shared, unpadded sequence per pair
        (forward_mode='packed', prefkit.packed) or padded rows, the model's attention permitting.
        A live reference runs first (no gradient); its hidden rows feed the policy's logits chunks,
        which yield the reference's log-probs and the beta control's statistic as well."""
        # Under DDP (several processes) the policy runs ONE forward per batch, as DDP's gradient
        # reduction expects: every packed row shares it, padded to the longest (still prefix-shared).
        tol = 1.0 if self.accelerator.num_processes > 1 else self.pk.pad_tolerance
        plan, why = plan_for(model, batch, forward_mode=self.pk.forward_mode, pad_tolerance=tol)
        if why and not self._warned_packing:
            logger.warning("forward_mode=packed: %s; this run uses the padded forward", why)
            self._warned_packing = True
        kw = {"chunk_size": self.chunk_size} if self.chunk_size else {}
        ref_head = None
        if self.reference not in ("precomputed", "none"):
            with torch.no_grad(), self._reference_model(model) as ref:
                ref_head = scored_hidden(ref, plan)
        fwd = pair_forward(model, plan, ref_head=ref_head, statistic=self.beta_control.statistic, **kw)
        if self.reference == "precomputed":
            meta = batch.get("meta", {})
            fwd = fwd._replace(ref_chosen_logps=meta[R.REF_LOGPS_CHOSEN].to(fwd.chosen_logps.dtype),
                               ref_rejected_logps=meta[R.REF_LOGPS_REJECTED].to(fwd.chosen_logps.dtype))
        return fwd

    def pair_loss(self, model, batch: dict[str, Any], *, training: bool):
        """(mean loss, metrics dict) for one PairCollator batch."""
        meta = batch.get("meta", {})
        fwd = self._forward(model, batch)
        logps = PairLogps(fwd.chosen_logps, fwd.rejected_logps, fwd.ref_chosen_logps, fwd.ref_rejected_logps,
                          fwd.chosen_lengths, fwd.rejected_lengths)
        _check_finite(logps, meta)

        control = self.beta_control
        beta, metrics = control.pair_beta(fwd, training=training) if control.per_pair else (control.base_beta, {})

        weights = meta.get("weight")
        if weights is not None:
            weights = torch.nan_to_num(weights.to(fwd.chosen_logps.dtype), nan=1.0)
        out = self.loss_fn(logps, beta=beta, weights=weights)
        loss = out.losses.mean()
        metrics.update(pair_metrics(out, logps))
        return loss, metrics

    # -- logging ----------------------------------------------------------------------------

    def extra_logs(self, logs: dict[str, float], split: str) -> None:
        if split == "train" and "loss" in logs:
            self.beta_control.log(logs)
            if self.probes:
                was_training = self.model.training
                self.model.eval()
                try:
                    with torch.no_grad():
                        for name, fn in self.probes.items():
                            logs.update(probe_values(name, fn(self.model)))
                finally:
                    self.model.train(was_training)

    # -- beta control state ----------------------------------------------------------------------

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint:
            state = Path(resume_from_checkpoint) / STATE_FILE
            if state.exists():
                self.beta_control.load_state_dict(json.loads(state.read_text()))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


def probe_values(name: str, value) -> dict[str, float]:
    """What a probe's value logs: {name: value}, or {name/key: v} for a probe returning {key: v}."""
    if isinstance(value, Mapping):
        return {f"{name}/{k}": float(v) for k, v in value.items()}
    return {name: float(value)}


def _check_finite(logps: PairLogps, meta: dict[str, Any]) -> None:
    """Stop on a NaN/inf policy or reference log-prob, naming the pair, before it reaches the weights."""
    parts = [("policy", "chosen", logps.chosen), ("policy", "rejected", logps.rejected)]
    if logps.ref_chosen is not None:
        parts += [("reference", "chosen", logps.ref_chosen), ("reference", "rejected", logps.ref_rejected)]
    stacked = torch.stack([t.detach().float() for _, _, t in parts])
    if bool(torch.isfinite(stacked).all()):
        return
    k, j = (int(v) for v in (~torch.isfinite(stacked)).nonzero()[0])
    who, side, _ = parts[k]
    pair = meta.get("pair_index")
    pair = int(pair[j]) if pair is not None else j
    raise DataError(f"{who} {side} log-prob is {float(stacked[k, j])}; one such pair turns every weight NaN, "
                    "so the run stops here", row=pair, field=side, row_word="pair_index")


class _PrefkitState(TrainerCallback):
    """Lets the beta control act after each optimiser step (eps-DPO's base-beta update) and saves
    its state in each checkpoint so that a resumed run continues exactly."""

    def __init__(self, trainer: PreferenceTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.beta_control.after_step(self.trainer.accelerator)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                atomic_write_text(ckpt / STATE_FILE, json.dumps(self.trainer.beta_control.state_dict()))


# ---------------------------------------------------------------------------------------------
# train_dpo: data -> tokens -> reference -> Trainer -> saved model + report


def _autocast(precision: str, device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def ref_batch_size(cfg) -> int:
    """Pairs per batch of the reference pass: precompute_ref_batch_size, else four training
    batches (no gradient, so a larger batch fits)."""
    return cfg.precompute_ref_batch_size or 4 * cfg.per_device_train_batch_size


def _reference_logps(ref_model, tokenizer, encoded, cfg, args, precision: str, settings: dict,
                     desc: str) -> tuple[Any, dict]:
    """Add ref_logps_chosen/ref_logps_rejected to `encoded`, from the disk cache or one pass."""
    fingerprint = rc.dataset_fingerprint(encoded, ["prompt_ids", "chosen_ids", "rejected_ids"])
    identity = rc.model_identity(ref_model)
    key = rc.cache_key(fingerprint, identity, {**settings, "precision": precision})

    def compute():
        ref_model.to(args.device)
        with _autocast(precision, args.device):
            scored = score_logps(ref_model, tokenizer, encoded.select_columns(["prompt_ids", "chosen_ids",
                                                                                 "rejected_ids"]),
                                 batch_size=ref_batch_size(cfg), progress=not args.disable_tqdm,
                                 forward=cfg.forward_mode, pad_tolerance=cfg.pad_tolerance)
        return scored[R.LOGPS_CHOSEN], scored[R.LOGPS_REJECTED]

    with args.main_process_first(desc=desc):
        try:
            ref = rc.load_or_compute(key, compute, cache_dir=cfg.ref_cache_dir, expected_rows=len(encoded),
                                     meta={"model": identity, "dataset": fingerprint, "settings": settings})
        except rc.NonFiniteLogps as exc:
            where = (f"read from the cache file {exc.path}; delete that entry" if exc.cached
                     else "computed by the reference model")
            raise nonfinite_error(cfg, tokenizer, encoded, exc.row, exc.side, exc.value, where) from None
    for col in (R.REF_LOGPS_CHOSEN, R.REF_LOGPS_REJECTED):
        if col in encoded.column_names:
            encoded = encoded.remove_columns(col)
    encoded = encoded.add_column(R.REF_LOGPS_CHOSEN, ref.chosen.tolist())
    encoded = encoded.add_column(R.REF_LOGPS_REJECTED, ref.rejected.tolist())
    info = {"key": ref.key, "path": str(ref.path), "cache_hit": ref.hit, "seconds": round(ref.seconds, 3)}
    return encoded, info


def nonfinite_error(cfg, tokenizer, encoded, row: int, side: str, value: float, where: str) -> DataError:
    """The DataError for a NaN/inf log-prob at `row` of the encoded data: names the training file,
    the pair (its pair_index), the side, and the end of its prompt."""
    r = encoded[int(row)]
    pair = int(r.get("pair_index", row))
    tail = tokenizer.decode(r["prompt_ids"][-40:], skip_special_tokens=True).strip()[-80:]
    return DataError(f"{side} log-prob is {value} ({where}); one such pair turns every weight NaN, so the run "
                     f"stops here (prompt ends {tail!r})", file=str(cfg.train_file), row=pair, field=side,
                     row_word="pair_index")


def train_dpo(config, *, callbacks=None, model=None, ref_model=None, tokenizer=None, train_dataset=None,
              eval_dataset=None, probes: dict[str, Callable] | None = None, conditioning=None) -> str:
    """Train a policy with a DPO-family loss (or eps-DPO); returns the output directory.

    config: a DPOConfig (see prefkit.train.config). model / ref_model / tokenizer /
    train_dataset / eval_dataset may be given in memory instead of by path (ref_model defaults to
    the initial policy; with LoRA, to the adapter-disabled base model). callbacks: transformers
    TrainerCallbacks passed to the Trainer. probes: {name: fn(model) -> float or {key: float}}
    logged at each logging step as `name` or `name/key` (in eval mode, under no_grad; a probe
    that needs gradients enables them itself and leaves the parameters' .grad alone, as
    prefkit.train.half_probe does). conditioning: the ConditioningSpec of
    in-memory relabeled data (`prefkit.relabel.relabel_with_spec` returns it); for data read from
    disk the spec beside it is found automatically (config `conditioning`).

    Writes to output_dir: the model and tokenizer (the LoRA adapter with use_peft),
    checkpoints, `prefkit_train_report.json` (config, metrics history, truncated/dropped counts,
    reference cache use), and `prefkit_conditioning.json` when the data was relabeled.
    """
    control = _beta_control(config)   # the run's one beta control
    _loss_fn(config, control)          # an unknown loss or option fails before anything is loaded
    run = prepare_run(config, model=model, tokenizer=tokenizer, train_dataset=train_dataset,
                      eval_dataset=eval_dataset, renames={config.weight_column: "weight"})
    cfg, tokenizer = run.cfg, run.tokenizer
    spec = conditioning if conditioning is not None else find_conditioning_spec(cfg, cfg.train_file)
    if spec is None:
        warn_if_relabeled(train_dataset if train_dataset is not None else run.train_enc, cfg)
        if cfg.export_chat_template:
            raise ConfigError("export_chat_template: the training data has no conditioning spec (relabeled data "
                              "written by prefkit relabel has one beside it; in memory, pass conditioning=spec)")
    skipped: list = []
    resume = resolve_resume(cfg.resume_from_checkpoint, cfg.output_dir, required=(STATE_FILE,),
                            skipped=skipped)
    if model is None:
        model = load_model("causal-lm", cfg.model_name_or_path, cfg)
    reference, ref_info = _choose_reference(run, model, ref_model, control)
    if cfg.use_peft:
        from peft import get_peft_model  # noqa: PLC0415  heavy (peft): only when LoRA is used

        model = get_peft_model(model, lora_config(cfg, "CAUSAL_LM"))

    trainer = PreferenceTrainer(
        model=model, args=run.args, train_dataset=run.train_enc, eval_dataset=run.eval_enc,
        data_collator=PairCollator.for_tokenizer(tokenizer), processing_class=tokenizer,
        callbacks=list(callbacks or []), prefkit_config=cfg, reference=reference, beta_control=control,
        probes=probes)
    result, final_eval, cond_path = train_and_save(trainer, cfg, resume, spec)
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    last = train_logs[-1] if train_logs else {}
    summary = [f"reference: {ref_info.get('mode')}"
               + (f", cache {'hit' if ref_info.get('cache_hit') else 'miss'} {ref_info.get('key')}"
                  if "key" in ref_info else "")]
    if last:
        keys = ["loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]
        summary.append("last log: " + ", ".join(f"{k}={last[k]:.4g}" for k in keys if k in last))
    if final_eval:
        summary.append("eval: " + ", ".join(f"{k}={v:.4g}" for k, v in final_eval.items()
                                              if k in ("eval_loss", "eval_rewards/accuracies",
                                                       "eval_rewards/margins")))
    if cond_path:
        summary.append(f"conditioning spec copied to {cond_path}"
                       + ("; written into the chat template" if cfg.export_chat_template else ""))
    finish_run(trainer, run, kind="dpo", resume=resume, result=result, summary=summary,
               headline=f"prefkit train dpo: {cfg.loss_type} beta={cfg.beta}{trainer.beta_control.summary()}, ",
               run_fields={"final_base_beta": trainer.beta_control.base_beta, "reference": ref_info,
                           "skipped_incomplete_checkpoints": [str(p) for p in skipped]},
               eval_fields={"final_eval": final_eval, "conditioning": cond_path})
    return cfg.output_dir


def _choose_reference(run, model, ref_model, control: BetaControl) -> tuple[Any, dict[str, Any]]:
    """(reference for PreferenceTrainer, report entry). With precomputed log-probs the reference
    columns are added to run.train_enc / run.eval_enc here, and no reference stays in memory.

    - a loss registered with needs_reference=False (simpo): "none";
    - precompute_ref_log_probs, unless the beta control needs the reference's logits (a statistic: eps-dpo):
      one pass of ref_model (default: the initial policy), cached on disk -> "precomputed";
    - LoRA without a separate reference: the adapter-disabled base -> "adapter";
    - otherwise a frozen model: ref_model, reference_model_name_or_path, or a copy of the policy."""

    cfg = run.cfg
    if not loss_spec(control.loss_name).needs_reference:
        return "none", {"mode": "none (reference-free loss)"}
    if cfg.precompute_ref_log_probs and control.statistic is None:
        if ref_model is None:
            ref_model = model
            if cfg.reference_model_name_or_path:
                ref_model = load_model("causal-lm", cfg.reference_model_name_or_path, cfg)
        settings = {"max_length": cfg.max_length, "max_prompt_length": cfg.max_prompt_length,
                    "truncation_mode": cfg.truncation_mode, "on_long": cfg.on_long,
                    "chat_template": getattr(run.tokenizer, "chat_template", None), "forward": cfg.forward_mode}
        run.train_enc, ref_info = _reference_logps(ref_model, run.tokenizer, run.train_enc, cfg, run.args,
                                                   run.precision, settings, "reference log-probs (train)")
        if run.eval_enc is not None:
            run.eval_enc, ev_info = _reference_logps(ref_model, run.tokenizer, run.eval_enc, cfg, run.args,
                                                     run.precision, settings, "reference log-probs (eval)")
            ref_info["eval"] = ev_info
        ref_info["mode"] = "precomputed (disk cache)"
        return "precomputed", ref_info
    if cfg.use_peft and not cfg.reference_model_name_or_path and ref_model is None:
        return "adapter", {"mode": "live: the adapter-disabled base model"}
    if ref_model is not None:
        reference = ref_model
    elif cfg.reference_model_name_or_path:
        reference = load_model("causal-lm", cfg.reference_model_name_or_path, cfg)
    else:
        reference = copy.deepcopy(model)
    return reference, {"mode": "live: a frozen copy of the initial policy"}
