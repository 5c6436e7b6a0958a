"""`MetricsTrainer`: a `transformers.Trainer` whose loss is `pair_loss(model, batch, training=)`
-> (mean loss, metrics), and that averages those per-batch metrics between logging steps (over
every micro-batch, and over processes under DDP) and logs them under their own names (eval
metrics with the Trainer's `eval_` prefix). Both prefkit trainers build on it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_callback import PrinterCallback

from prefkit.report import quiet


class MetricsTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if quiet():  # prefkit --quiet: no per-step log dicts on stdout (they stay in the train report)
            self.remove_callback(PrinterCallback)
        self._stored: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def pair_loss(self, model, batch: dict[str, Any], *, training: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """(mean loss, metrics dict) for one PairCollator batch."""
        raise NotImplementedError

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.pair_loss(model, inputs, training=True)
        self.store_metrics(metrics, "train")
        return (loss, metrics) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, metrics = self.pair_loss(model, inputs, training=False)
        self.store_metrics(metrics, "eval")
        return loss.detach(), None, None

    def store_metrics(self, metrics: dict[str, float], split: str) -> None:
        for k, v in metrics.items():
            self._stored[split][k].append(float(v))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # evaluate(metric_key_prefix=P) logs P_runtime; the end-of-training summary logs train_runtime
        eval_prefixes = {k[: -len("_runtime")] for k in logs if k.endswith("_runtime")} - {"train"}
        split = "eval" if eval_prefixes else "train"
        stored = self._stored[split]
        if stored and (eval_prefixes or "train_runtime" not in logs):
            names = sorted(stored)
            means = torch.tensor([sum(stored[n]) / len(stored[n]) for n in names], dtype=torch.float64,
                                 device=self.args.device)
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means, reduction="mean")
            prefix = f"{min(eval_prefixes)}_" if eval_prefixes else ""
            logs.update({prefix + n: v for n, v in zip(names, means.tolist())})
            stored.clear()
        self.extra_logs(logs, split)
        super().log(logs, start_time)

    def extra_logs(self, logs: dict[str, float], split: str) -> None:
        """Hook: add values to `logs` before they are logged."""
