"""What both trainers share: reading the pairs, tokenising them with counted truncation,
loading the model and tokenizer, resolving the checkpoint to resume, the conditioning file,
and the final `prefkit_train_report.json`."""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable

from prefkit.errors import ConfigError, DataError
from prefkit.report import StageReport

REPORT_FILE = "prefkit_train_report.json"
STATE_FILE = "prefkit_trainer_state.json"   # prefkit's own resumable state, inside each checkpoint


def read_pairs(source, *, split=None, on_invalid: str = "drop", report: StageReport | None = None):
    """PAIRS dataset from a path/hub id/in-memory Dataset via prefkit.data.read."""
    from prefkit.data import read
    from prefkit.data.records import kind_of

    ds = read(source, split=split, on_invalid=on_invalid, report=report)
    if kind_of(ds.column_names) != "pairs":
        raise DataError(f"expected preference pairs (prompt, chosen, rejected); got columns {ds.column_names}. "
                        "Binarize multi-response data first: prefkit data binarize",
                        file=str(source) if isinstance(source, (str, os.PathLike)) else None)
    return ds


def load_splits(cfg, train_dataset=None, eval_dataset=None, report: StageReport | None = None):
    """(train, eval | None) PAIRS datasets per the config (eval_file, or eval_split_ratio of train)."""
    train = read_pairs(train_dataset if train_dataset is not None else cfg.train_file, split=cfg.train_split,
                       on_invalid=cfg.on_invalid, report=report)
    if eval_dataset is not None or cfg.eval_file:
        ev = read_pairs(eval_dataset if eval_dataset is not None else cfg.eval_file, split=cfg.eval_split,
                        on_invalid=cfg.on_invalid)
    elif cfg.eval_split_ratio > 0:
        if len(train) < 2:
            raise DataError(f"cannot hold out {cfg.eval_split_ratio:.0%} of {len(train)} pair(s) for evaluation")
        parts = train.train_test_split(test_size=cfg.eval_split_ratio, seed=cfg.seed)
        train, ev = parts["train"], parts["test"]
    else:
        ev = None
    return train, ev


def encode(dataset, tokenizer, cfg, report: StageReport, *, max_prompt_length="config"):
    """Tokenise pairs with prefkit.tokenize.encode_pairs; on_long='drop' drops (instead of
    truncating) pairs over the limits. Every truncation and drop is counted in `report`."""
    from prefkit.tokenize import encode_pairs

    mpl = cfg.max_prompt_length if max_prompt_length == "config" else max_prompt_length
    if cfg.on_long == "truncate":
        return encode_pairs(dataset, tokenizer, max_length=cfg.max_length, max_prompt_length=mpl,
                            prompt_truncation=cfg.truncation_mode, on_invalid=cfg.on_invalid, report=report)
    enc = encode_pairs(dataset, tokenizer, max_length=None, max_prompt_length=None,
                       prompt_truncation=cfg.truncation_mode, on_invalid=cfg.on_invalid, report=report)
    lens = enc.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()
    keep = []
    for i, (p, c, r) in enumerate(zip(lens["prompt_ids"], lens["chosen_ids"], lens["rejected_ids"])):
        if mpl is not None and len(p) > mpl:
            report.drop("prompt over max_prompt_length (on_long=drop)", 1, example=f"pair_index {enc[i]['pair_index']}")
        elif cfg.max_length is not None and len(p) + max(len(c), len(r)) > cfg.max_length:
            report.drop("pair over max_length (on_long=drop)", 1, example=f"pair_index {enc[i]['pair_index']}")
        else:
            keep.append(i)
    report.rows_out -= len(enc) - len(keep)
    return enc.select(keep) if len(keep) < len(enc) else enc


def load_tokenizer(cfg, tokenizer=None):
    """The run's tokenizer (given, or from tokenizer_name_or_path / model_name_or_path through
    prefkit.models), with EOS as pad when it has none."""
    from prefkit.models import load_tokenizer as load

    return load(tokenizer if tokenizer is not None else (cfg.tokenizer_name_or_path or cfg.model_name_or_path),
                trust_remote_code=cfg.trust_remote_code, pad_with_eos=True)


def load_model(kind: str, path: str, cfg, **kwargs):
    """A model of `kind` ('causal-lm' or 'sequence-classification') through prefkit.models, in
    the run's torch_dtype."""
    from prefkit.models import load_pretrained

    return load_pretrained(path, kind=kind, dtype=cfg.torch_dtype, trust_remote_code=cfg.trust_remote_code, **kwargs)


def lora_config(cfg, task_type: str):
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_target_modules or "all-linear")


def resolve_resume(value, output_dir: str, *, required: tuple[str, ...] = (),
                   skipped: list | None = None) -> str | None:
    """A checkpoint dir to resume from: explicit path, or 'auto'/'true' for the latest complete one
    in output_dir (None when there is none yet: a fresh start).

    'auto' skips checkpoints whose save did not finish (a run killed while saving; each is
    appended to `skipped` and warned about); a checkpoint with an unreadable file, or an explicit
    path to an incomplete one, is a ConfigError naming the file (prefkit.train.integrity).
    `required`: files the trainer itself writes into every checkpoint."""
    from prefkit.train.integrity import checkpoint_problem, latest_complete_checkpoint

    if value in (None, False, "", "false", "no", "none"):
        return None
    if value is True or str(value).lower() in ("auto", "true", "yes", "latest"):
        skipped = skipped if skipped is not None else []
        found = latest_complete_checkpoint(output_dir, required=required, skipped=skipped)
        for ckpt in skipped:
            warnings.warn(f"resume_from_checkpoint auto: skipping {ckpt}, its save did not finish "
                          "(the run was stopped while saving it)", stacklevel=2)
        return str(found) if found is not None else None
    if not os.path.isdir(value):
        raise ConfigError(f"resume_from_checkpoint: no checkpoint directory {value!r}")
    problem = checkpoint_problem(value, required=required)
    if problem is not None:
        kind, f = problem
        why = ("missing: the checkpoint's save did not finish" if kind == "incomplete"
               else kind.split(": ", 1)[1])
        raise ConfigError(f"{f}: cannot resume from this checkpoint, file {why}")
    return str(value)


def find_conditioning_spec(cfg, data_source):
    """The reward-conditioning spec that goes with the training data (None if there is none)."""
    if cfg.conditioning == "none":
        return None
    from prefkit.relabel import find_conditioning, load_conditioning

    if cfg.conditioning != "auto":
        spec = load_conditioning(cfg.conditioning)
        if spec is None:
            raise ConfigError(f"conditioning: no prefkit_conditioning.json at {cfg.conditioning!r}")
        return spec
    if isinstance(data_source, (str, os.PathLike)) and os.path.exists(data_source):
        return find_conditioning(data_source)
    return None


RELABEL_COLUMNS = ("relabel_half", "goal_score", "goal_scores")   # columns prefkit.relabel adds


def warn_if_relabeled(data, cfg) -> None:
    """Warn when the training data was relabeled (it has prefkit.relabel's columns) but no
    conditioning spec goes with it: the trained model would then be used without the
    conditioning it was trained on (no prefkit_conditioning.json in the output)."""
    if cfg.conditioning == "none":
        return
    cols = getattr(data, "column_names", None)
    if cols is None:
        return
    found = [c for c in RELABEL_COLUMNS if c in cols]
    if found:
        warnings.warn(f"the training data looks relabeled (column {found[0]!r}) but no conditioning spec goes with "
                      "it, so the model will have no prefkit_conditioning.json and generate, eval and servers will "
                      "not condition prompts as in training. prefkit relabel writes OUTPUT.conditioning.json and "
                      "every stage carries it to its output; give it with --conditioning PATH (Python: "
                      "conditioning=spec, from relabel_with_spec), or --conditioning none to silence this",
                      stacklevel=3)


def write_report(output_dir: str, payload: dict[str, Any]) -> Path:
    path = Path(output_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    from prefkit.files import atomic_write_text, disk_guard

    with disk_guard(REPORT_FILE, output_dir, kept="the trained model was saved before it"):
        return atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def data_summary(report: StageReport, eval_pairs: int | None = None) -> str:
    n = report.notes
    trunc = ", ".join(f"{k.replace('truncated_', '')} {n.get(k, 0)}"
                      for k in ("truncated_prompts", "truncated_chosen", "truncated_rejected"))
    held = f", {eval_pairs} for evaluation" if eval_pairs else ""
    lines = [f"pairs: {report.rows_in} read, {report.rows_out} trained on{held}, {report.n_dropped} dropped; "
             f"truncated: {trunc}"]
    for reason, k in sorted(report.dropped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  dropped {k:>6}  {reason}")
    return "\n".join(lines)


@dataclass
class PreparedRun:
    """What both trainers set up before a model is loaded: the run's own copy of the config
    (in-memory inputs named), settings, tokenizer, encoded splits."""

    cfg: Any
    precision: str
    args: Any
    tokenizer: Any
    train_enc: Any
    eval_enc: Any
    read_report: StageReport
    data_report: StageReport
    eval_report: StageReport
    t0: float


def prepare_run(cfg, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
                renames: dict[str, str] | None = None, check: Callable[[Any], None] | None = None) -> PreparedRun:
    """Check the config, fix precision and TrainingArguments, seed, load the tokenizer, read the
    train/eval splits (renaming `renames` columns in both) and encode them, counting drops.

    `check(cfg)` runs right after the config's own check, before anything is loaded. The caller's
    config is left as it is: the run works on (and reports) a copy that names in-memory inputs."""
    import copy

    from transformers import set_seed

    from prefkit.train.config import resolve_precision, training_arguments

    cfg = copy.copy(cfg)
    if model is not None and not cfg.model_name_or_path:
        cfg.model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", "") or "<in-memory model>"
    if train_dataset is not None and not cfg.train_file:
        cfg.train_file = "<in-memory dataset>"
    cfg.check()
    if check is not None:
        check(cfg)
    t0 = time.time()
    precision = resolve_precision(cfg)
    args = training_arguments(cfg)
    set_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg, tokenizer)
    read_report = StageReport("read")
    train_raw, eval_raw = load_splits(cfg, train_dataset, eval_dataset, report=read_report)
    for old, new in (renames or {}).items():
        if old == new:
            continue
        if old in train_raw.column_names:
            train_raw = train_raw.rename_column(old, new)
        if eval_raw is not None and old in eval_raw.column_names:
            eval_raw = eval_raw.rename_column(old, new)
    from prefkit.errors import EmptyResultError  # no pair left: a run-time failure (exit 1), not a usage error

    if len(train_raw) == 0:  # every row dropped on reading (encoding an empty table fails in datasets.map)
        raise EmptyResultError(f"no training pairs left after reading {cfg.train_file}:\n"
                               f"{data_summary(read_report)}")
    data_report = StageReport("train data")
    train_enc = encode(train_raw, tokenizer, cfg, data_report)
    if len(train_enc) == 0:
        raise EmptyResultError(f"no training pairs left after tokenisation:\n{data_summary(data_report)}")
    eval_report = StageReport("eval data")
    eval_enc = encode(eval_raw, tokenizer, cfg, eval_report) if eval_raw is not None else None
    return PreparedRun(cfg, precision, args, tokenizer, train_enc, eval_enc, read_report, data_report, eval_report, t0)


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
        from prefkit.model_card import write_model_card

        with guard(cfg, "the model card"):
            write_model_card(cfg.output_dir)  # README.md, replacing PEFT's empty card
        from prefkit.files import readable_by_all

        readable_by_all(cfg.output_dir)  # checkpoints too: safetensors and torch.save write 0600
    trainer.accelerator.wait_for_everyone()


def guard(cfg, what: str):
    """disk_guard for writes into the run's output directory."""
    from prefkit.files import disk_guard

    return disk_guard(what, cfg.output_dir,
                      kept="completed checkpoints and files written before are intact; free space and rerun "
                           "with --resume-from-checkpoint auto")


def train_guarded(trainer, cfg, resume: str | None):
    """trainer.train, with a full disk while saving a checkpoint said in one line (the checkpoint
    being written is left incomplete; `resume_from_checkpoint: auto` skips it)."""
    with guard(cfg, "a checkpoint"):
        return trainer.train(resume_from_checkpoint=resume)


_WEIGHT_FILES = r"^(model|adapter_model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$"


def save_final(trainer, output_dir: str) -> None:
    """trainer.save_model(output_dir), written into a temp directory first and moved into place
    file by file: a failure while writing (a full disk) leaves the files of an earlier save
    intact, and the temp directory is removed."""
    import shutil

    from prefkit.files import readable_by_all

    out = Path(output_dir)
    tmp = out / ".prefkit-saving"
    if trainer.is_world_process_zero():
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(str(tmp))
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            fresh = {f.relative_to(tmp) for f in tmp.rglob("*") if f.is_file()}
            kinds = {m.group(1) for f in fresh if (m := re.match(_WEIGHT_FILES, f.name))}
            # weight files of the same kind from an earlier save that this one does not have (its
            # shards) would be read with the new ones; save_pretrained into the directory removes them too
            for old in out.glob("*"):
                m = re.match(_WEIGHT_FILES, old.name)
                if old.is_file() and m and m.group(1) in kinds and old.relative_to(out) not in fresh:
                    old.unlink()
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    dest = out / f.relative_to(tmp)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(f, dest)
                    readable_by_all(dest)  # safetensors writes 0600
    finally:
        if trainer.is_world_process_zero():
            shutil.rmtree(tmp, ignore_errors=True)
