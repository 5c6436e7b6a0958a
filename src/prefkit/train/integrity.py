"""Files a training run can trust: complete checkpoints, readable weights, writes that either
finish or leave the previous state as it was, and a full disk said in one line.

- `checkpoint_problem(dir)`: why a checkpoint cannot be resumed from (None when it can). A
  checkpoint is *incomplete* when its save did not finish (the Trainer writes
  `trainer_state.json` last, prefkit's trainer then writes `prefkit_trainer_state.json`): a
  run killed while saving leaves one. It is *corrupt* when a file it has cannot be read
  (a truncated safetensors or torch file, JSON that does not parse).
- `latest_complete_checkpoint(output_dir)`: what `resume_from_checkpoint: auto` resumes from.
- `resolve_resume(value, output_dir)`: the checkpoint a run resumes from (explicit or 'auto').
- `guard`, `train_guarded`, `save_final`: writes into the output directory that either finish or
  leave the previous files as they were (a full disk said in one line). Writing files safely
  (`atomic_write_text`, `disk_guard`, `DiskFullError`) lives in `prefkit.files`, shared with every
  stage that writes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

from prefkit.errors import ConfigError, DataError
from prefkit.files import disk_guard, readable_by_all
from prefkit.relabel import export_chat_template

TRAINER_STATE = "trainer_state.json"       # transformers.trainer_callback.TRAINER_STATE_NAME
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# ---------------------------------------------------------------------------------------------
# reading files without loading them


def file_problem(path: Path) -> str | None:
    """Why `path` cannot be read back (truncated or garbled), or None. Checks the container
    format only: safetensors header against the file size, the zip directory of torch files,
    JSON syntax; nothing is loaded into memory beyond headers."""
    name = path.name
    try:
        size = path.stat().st_size
        if name.endswith(".safetensors"):
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    return "truncated safetensors file (no header)"
                (n,) = struct.unpack("<Q", head)
                if n > size - 8:
                    return "truncated safetensors file (header longer than the file)"
                header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end > size:
                return f"truncated safetensors file ({size} bytes, its header needs {8 + n + end})"
        elif name.endswith((".pt", ".pth", ".bin")):
            if not zipfile.is_zipfile(path):
                return "not a readable torch file (truncated or corrupt zip archive)"
            with zipfile.ZipFile(path) as z:
                z.infolist()
        elif name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile) as exc:
        return f"cannot be read ({type(exc).__name__}: {exc})"
    return None


def checkpoint_problem(ckpt: str | os.PathLike, *, required: tuple[str, ...] = ()) -> tuple[str, Path | None] | None:
    """(kind, file) where kind is 'incomplete' (its save did not finish) or 'corrupt: <why>'; None
    when the checkpoint can be resumed from. `required`: files the trainer writes after the
    Trainer's own (prefkit_trainer_state.json)."""
    d = Path(ckpt)
    # trainer_state.json is written after the weights, optimizer, scheduler and RNG states (in
    # whatever layout: safetensors, FSDP or DeepSpeed folders), so its presence means they are there
    for name in (TRAINER_STATE, *required):
        if not (d / name).is_file():
            return "incomplete", d / name
    for f in sorted(d.iterdir()):
        if f.is_file():
            why = file_problem(f)
            if why:
                return f"corrupt: {why}", f
    return None


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """checkpoint-N directories of `output_dir`, newest (highest N) first."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_complete_checkpoint(output_dir, *, required: tuple[str, ...] = (),
                               skipped: list[Path] | None = None) -> Path | None:
    """The newest checkpoint whose save finished (incomplete ones, e.g. from a run killed while
    saving, are skipped and appended to `skipped`). A finished checkpoint with an unreadable file
    raises ConfigError naming the file: resuming from an older one would silently lose steps."""
    for ckpt in checkpoints(output_dir):
        problem = checkpoint_problem(ckpt, required=required)
        if problem is None:
            return ckpt
        kind, f = problem
        if kind == "incomplete":
            if skipped is not None:
                skipped.append(ckpt)
            continue
        # A damaged file found at run time (exit 1), not a bad option.
        raise DataError(f"{f}: checkpoint file is {kind.split(': ', 1)[1]}; delete {ckpt} to resume from "
                        "the checkpoint before it")
    return None


# ---------------------------------------------------------------------------------------------
# resuming, and writing into the run's output directory


STATE_FILE = "prefkit_trainer_state.json"   # prefkit's own resumable state, inside each checkpoint


def resolve_resume(value, output_dir: str, *, required: tuple[str, ...] = (),
                   skipped: list | None = None) -> str | None:
    """A checkpoint dir to resume from: explicit path, or 'auto'/'true' for the latest complete one
    in output_dir (None when there is none yet: a fresh start).

    'auto' skips checkpoints whose save did not finish (a run killed while saving; each is
    appended to `skipped` and warned about); a checkpoint with an unreadable file, or an explicit
    path to an incomplete one, is a ConfigError naming the file (prefkit.train.integrity).
    `required`: files the trainer itself writes into every checkpoint."""
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


def guard(cfg, what: str):
    """disk_guard for writes into the run's output directory."""
    return disk_guard(what, cfg.output_dir,
                      kept="completed checkpoints and files written before are intact; free space and rerun "
                           "with --resume-from-checkpoint auto")


def train_and_save(trainer, cfg, resume: str | None, spec=None) -> tuple:
    """Train (`train_guarded`), evaluate when the trainer has an eval set, save the model
    (`save_final`) and, on the main process, the conditioning spec beside it (and the chat
    template with it when `cfg.export_chat_template`): what every prefkit trainer does after its
    setup. Returns (train result, final eval metrics or None, the spec's path or None)."""
    result = train_guarded(trainer, cfg, resume)
    final_eval = trainer.evaluate() if trainer.eval_dataset is not None else None
    with guard(cfg, "the trained model"):
        save_final(trainer, cfg.output_dir)
    cond_path = None
    if trainer.is_world_process_zero() and spec is not None:
        with guard(cfg, "the conditioning spec"):
            cond_path = str(spec.save(cfg.output_dir))
            if cfg.export_chat_template:
                export_chat_template(cfg.output_dir, spec=spec)
    return result, final_eval, cond_path


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
