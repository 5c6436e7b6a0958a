"""A training run's report, `prefkit_train_report.json`: the summary (with the data summary of
prefkit.train.prepare, every drop and truncation counted), written atomically by the main process."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefkit.files import atomic_write_text, disk_guard, readable_by_all
from prefkit.model_card import write_model_card
from prefkit.train.integrity import guard
from prefkit.train.prepare import PreparedRun, data_summary

REPORT_FILE = "prefkit_train_report.json"


def write_report(output_dir: str, payload: dict[str, Any]) -> Path:
    path = Path(output_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    with disk_guard(REPORT_FILE, output_dir, kept="the trained model was saved before it"):
        return atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def finish_run(trainer, run: PreparedRun, *, kind: str, headline: str, resume: str | None, result,
               summary: list[str], run_fields: dict[str, Any], eval_fields: dict[str, Any]) -> None:
    """Write `prefkit_train_report.json` (on the main process) and wait for every process.

    headline: the summary's first line up to "N steps in Ts"; summary: the lines after the
    data summary; run_fields / eval_fields: the trainer's own entries, placed before `data` /
    after `eval_data`."""
    cfg = run.cfg
    if trainer.is_world_process_zero():
        data_report = run.data_report
        data_report.rows_in = run.read_report.rows_in or data_report.rows_in
        data_report.merge(run.read_report)
        eval_enc = run.eval_enc
        lines = [f"{headline}{trainer.state.global_step} steps in {time.time() - run.t0:.1f}s"
                 + (f" (resumed from {resume})" if resume else ""),
                 data_summary(data_report, len(eval_enc) if eval_enc is not None else None), *summary]
        write_report(cfg.output_dir, {
            "kind": kind,
            "summary": "\n".join(lines),
            "config": cfg.to_dict(),
            "precision": run.precision,
            "world_size": trainer.accelerator.num_processes,
            "global_step": trainer.state.global_step,
            "train_loss": result.training_loss,
            "resumed_from": resume,
            **run_fields,
            "data": data_report.to_dict(),
            "eval_data": run.eval_report.to_dict() if eval_enc is not None else None,
            **eval_fields,
            "log_history": trainer.state.log_history,
        })
        with guard(cfg, "the model card"):
            write_model_card(cfg.output_dir)  # README.md, replacing PEFT's empty card
        readable_by_all(cfg.output_dir)  # checkpoints too: safetensors and torch.save write 0600
    trainer.accelerator.wait_for_everyone()
