"""Files a training run can trust: complete checkpoints, readable weights, writes that either
finish or leave the previous state as it was, and a full disk said in one line.

- `checkpoint_problem(dir)`: why a checkpoint cannot be resumed from (None when it can). A
  checkpoint is *incomplete* when its save did not finish (the Trainer writes
  `trainer_state.json` last, prefkit's trainer then writes `prefkit_trainer_state.json`): a
  run killed while saving leaves one. It is *corrupt* when a file it has cannot be read
  (a truncated safetensors or torch file, JSON that does not parse).
- `latest_complete_checkpoint(output_dir)`: what `resume_from_checkpoint: auto` resumes from.
- Writing files safely (`atomic_write_text`, `disk_guard`, `DiskFullError`) lives in
  `prefkit.files`, shared with every stage that writes.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path


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
    from prefkit.errors import DataError

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
