"""The per-half probe of reward-augmented DPO (Zhang et al. 2024, arXiv 2410.08067; docs/regimes.md,
"Mechanism panel"): on relabeled data (D^w + D^l, prefkit.relabel), do the two halves pull the
policy the same way, or do their gradients cancel?

    probe = half_probe(relabeled_pairs, tokenizer, cfg, reference_model, rows=32, seed=0)
    train_dpo(cfg, probes={"half": probe})    # logged as half/w/reward_chosen, ..., half/grad_cosine

At every logging step, on a fixed sample of up to `rows` D^w rows and up to `rows` D^l rows (the
`relabel_half` column; sampled once with `seed`, encoded with the run's own truncation), under the
model's current weights in eval mode (no dropout):

- `w/reward_chosen`, `l/reward_chosen` (and `.../reward_rejected`): the mean implicit reward
  beta (log pi(y|x) - log pi_ref(y|x)) of each half's chosen (rejected) responses;
- `w/loss`, `l/loss`: each half's mean training loss (the run's loss, beta and loss options);
- `w/grad_norm`, `l/grad_norm`: the L2 norm of the gradient of that mean loss with respect to the
  trainable parameters;
- `grad_cosine`: the cosine between the two halves' gradients (-1: they cancel; 1: they agree).

The gradients come from `torch.autograd.grad`, so the parameters' `.grad`, the optimiser state and
the random state of the run are left as they were: a run with the probe trains exactly as one
without (tests/train/test_half_probe.py). The policy's log-probs go through the trainer's forward
engine (prefkit.packed.plan_for, prefkit.logprobs.pair_forward); the reference's are scored once,
when the probe is built (prefkit.logprobs.score_logps, the function the reference cache fills
itself with). Losses with a per-pair beta (eps-dpo) or without a reference (simpo) are refused.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from prefkit.data import records as R
from prefkit.errors import ConfigError, DataError
from prefkit.logprobs import pair_forward, score_logps
from prefkit.losses import PairLogps, get_loss, loss_spec
from prefkit.packed import plan_for
from prefkit.relabel.augment import RELABEL_HALF
from prefkit.report import StageReport
from prefkit.tokenize import PairCollator
from prefkit.train.beta_control import beta_control
from prefkit.train.prepare import encode

HALVES = ("w", "l")
WEIGHT = "weight"


class HalfProbe:
    """fn(model) -> {key: float} over fixed D^w and D^l rows (see the module docstring). Built by
    `half_probe`; `rows` holds how many rows of each half it uses."""

    def __init__(self, halves: dict[str, list[dict[str, Any]]], collator: PairCollator, *, loss_name: str,
                 loss_options: dict, beta: float, forward_mode: str = "packed", pad_tolerance: float = 0.0,
                 batch_size: int = 16):
        self.halves = halves
        self.rows = {h: len(r) for h, r in halves.items()}
        self.collator = collator
        self.loss_fn = get_loss(loss_name, **loss_options)
        self.beta = float(beta)
        self.forward_mode = forward_mode
        self.pad_tolerance = pad_tolerance
        self.batch_size = max(1, int(batch_size))

    def __call__(self, model) -> dict[str, float]:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("the half probe needs trainable parameters (none requires grad)")
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                got = {h: self._half(model, params, rows) for h, rows in self.halves.items()}
        finally:
            model.train(was_training)
        out: dict[str, float] = {}
        for h, (grads, stats) in got.items():
            out.update({f"{h}/{k}": v for k, v in stats.items()})
            out[f"{h}/grad_norm"] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        gw, gl = got["w"][0], got["l"][0]
        dot = float(sum((a.double() * b.double()).sum() for a, b in zip(gw, gl)))
        norms = out["w/grad_norm"] * out["l/grad_norm"]
        out["grad_cosine"] = dot / norms if norms > 0 else float("nan")
        return out

    def _half(self, model, params, rows: list[dict[str, Any]]) -> tuple[list[torch.Tensor], dict[str, float]]:
        """The gradient of one half's mean loss (summed over micro-batches of `batch_size` rows)
        and its mean loss and implicit rewards."""
        n = len(rows)
        grads = [torch.zeros_like(p) for p in params]
        sums = {"loss": 0.0, "reward_chosen": 0.0, "reward_rejected": 0.0}
        device = params[0].device
        for start in range(0, n, self.batch_size):
            batch = self.collator(rows[start:start + self.batch_size])
            meta = batch.pop("meta")
            batch = {k: v.to(device) for k, v in batch.items()}
            plan, _ = plan_for(model, batch, forward_mode=self.forward_mode, pad_tolerance=self.pad_tolerance)
            fwd = pair_forward(model, plan)
            dtype = fwd.chosen_logps.dtype
            ref_c = meta[R.REF_LOGPS_CHOSEN].to(device=device, dtype=dtype)
            ref_r = meta[R.REF_LOGPS_REJECTED].to(device=device, dtype=dtype)
            logps = PairLogps(fwd.chosen_logps, fwd.rejected_logps, ref_c, ref_r, fwd.chosen_lengths,
                              fwd.rejected_lengths)
            weights = meta.get(WEIGHT)
            if weights is not None:
                weights = torch.nan_to_num(weights.to(device=device, dtype=dtype), nan=1.0)
            loss = self.loss_fn(logps, beta=self.beta, weights=weights).losses.sum() / n
            for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                if g is not None:
                    acc += g
            sums["loss"] += float(loss.detach())
            sums["reward_chosen"] += float((self.beta * (fwd.chosen_logps.detach() - ref_c)).sum()) / n
            sums["reward_rejected"] += float((self.beta * (fwd.rejected_logps.detach() - ref_r)).sum()) / n
        return grads, sums


def half_probe(pairs, tokenizer, cfg, reference, *, rows: int = 32, seed: int = 0) -> HalfProbe:
    """The probe for a run of `cfg` (a DPOConfig) on relabeled `pairs` (a Dataset with the
    `relabel_half` column): up to `rows` rows of each half, a seeded sample, encoded as the run
    encodes them; `reference` (the run's reference model) scores them once, here."""
    if RELABEL_HALF not in pairs.column_names:
        raise ConfigError(f"the half probe needs relabeled data (D^w + D^l with a '{RELABEL_HALF}' column, "
                          "written by prefkit relabel); these pairs have none")
    control = beta_control(cfg)
    if control.per_pair or control.statistic is not None:
        raise ConfigError(f"the half probe trains no per-pair beta; loss_type {cfg.loss_type!r} has one")
    if not loss_spec(control.loss_name).needs_reference:
        raise ConfigError(f"the half probe's implicit rewards need a reference; loss_type {cfg.loss_type!r} "
                          "uses none")
    if int(rows) < 1:
        raise ConfigError(f"half probe rows must be >= 1, got {rows}")
    if cfg.weight_column in pairs.column_names and cfg.weight_column != WEIGHT:
        pairs = pairs.rename_column(cfg.weight_column, WEIGHT)
    halves_of = pairs[RELABEL_HALF]
    rng = random.Random(seed)
    picked = []
    for h in HALVES:
        idx = [i for i, v in enumerate(halves_of) if v == h]
        if not idx:
            raise DataError(f"the half probe found no D^{h} rows ({RELABEL_HALF} == {h!r})")
        picked += rng.sample(idx, min(int(rows), len(idx)))
    # only the sample is encoded (a row the run's encoding drops is left out of its half)
    encoded = encode(pairs.select(sorted(picked)), tokenizer, cfg, StageReport("half probe"))
    keep = ["prompt_ids", "chosen_ids", "rejected_ids"] + ([WEIGHT] if WEIGHT in encoded.column_names else [])
    halves = {}
    for h in HALVES:
        idx = [i for i, v in enumerate(encoded[RELABEL_HALF]) if v == h]
        if not idx:
            raise DataError(f"the half probe has no D^{h} row left after encoding")
        sub = encoded.select(idx).select_columns(keep)
        scored = score_logps(reference, tokenizer, sub, batch_size=cfg.per_device_train_batch_size, progress=False,
                             forward=cfg.forward_mode, pad_tolerance=cfg.pad_tolerance)
        scored = scored.rename_columns({R.LOGPS_CHOSEN: R.REF_LOGPS_CHOSEN, R.LOGPS_REJECTED: R.REF_LOGPS_REJECTED})
        halves[h] = scored.select_columns(keep + [R.REF_LOGPS_CHOSEN, R.REF_LOGPS_REJECTED]).to_list()
    collator = PairCollator.for_tokenizer(tokenizer, meta_columns=(R.REF_LOGPS_CHOSEN, R.REF_LOGPS_REJECTED, WEIGHT))
    return HalfProbe(halves, collator, loss_name=control.loss_name, loss_options=cfg.loss_option_values(),
                     beta=control.base_beta, forward_mode=cfg.forward_mode, pad_tolerance=cfg.pad_tolerance,
                     batch_size=cfg.per_device_train_batch_size)
