"""Reference log-probs computed once and cached on disk.

DPO-family losses need log pi_ref(y|x) for every chosen and rejected response. The reference
never changes, so prefkit computes these once, in one pass over the tokenised data, and stores
them keyed by

    (dataset fingerprint, model identity, tokenisation settings)

- dataset fingerprint: a hash of the token ids that the reference reads (prompt, chosen and
  rejected ids, in row order), so any change of data, chat template or truncation changes it;
- model identity: `prefkit.models.model_identity` with LoRA adapters left out (a PEFT model
  stands for its frozen base): name, class, dtype, config hash and weights hash;
- tokenisation settings: whatever the caller passes (max_length, max_prompt_length, ...).

Training then holds one model in memory. A second run with the same key loads the cached
arrays instead of running the reference again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from prefkit import models
from prefkit.files import atomic_write_text, is_disk_full, sha256_file

CACHE_VERSION = 2    # 2: identity from prefkit.models (class, dtype, integer sampling)


def default_cache_dir() -> Path:
    root = os.environ.get("PREFKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefkit")
    return Path(root) / "ref_logps"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model) -> dict:
    """The reference's identity: a PEFT model hashes as its frozen base model."""
    return models.model_identity(model, skip_substrings=("lora_",))


def dataset_fingerprint(dataset, columns: list[str] | None = None, batch_size: int = 4096) -> str:
    """A content hash of the token-id columns of a tokenised dataset, in row order."""
    cols = columns or sorted(c for c in dataset.column_names if c.endswith("input_ids"))
    if not cols:
        raise ValueError("dataset_fingerprint: no '*input_ids' columns to hash")
    h = hashlib.sha256(f"{len(dataset)}:{cols}".encode())
    table = dataset.with_format("arrow")
    for start in range(0, len(dataset), batch_size):
        batch = table[start:start + batch_size]
        for c in cols:
            col = batch.column(c)
            # list<int> arrays: hash offsets-free flattened values plus per-row lengths
            flat = col.combine_chunks() if hasattr(col, "combine_chunks") else col
            h.update(np.asarray(flat.value_lengths(), dtype=np.int64).tobytes())
            h.update(np.asarray(flat.flatten(), dtype=np.int64).tobytes())
    return h.hexdigest()[:24]


def cache_key(fingerprint: str, identity: dict, settings: dict) -> str:
    return _sha({"v": CACHE_VERSION, "data": fingerprint, "model": identity, "settings": settings})[:32]


@dataclass
class ReferenceLogps:
    """Per-row reference log-probs (float64 arrays aligned with the tokenised dataset's rows)."""

    chosen: np.ndarray
    rejected: np.ndarray
    key: str
    path: Path
    hit: bool             # True when loaded from an earlier run's cache
    seconds: float        # time spent computing (0 for a hit)


class NonFiniteLogps(ValueError):
    """A reference log-prob that is NaN or infinite: `row` (index into the arrays), `side`
    ('chosen' or 'rejected'), `value`, and `cached` (read from `path` rather than computed)."""

    def __init__(self, row: int, side: str, value: float, cached: bool, path: Path):
        self.row, self.side, self.value, self.cached, self.path = row, side, value, cached, path
        super().__init__(f"reference log-prob of the {side} response is {value} (row {row})")


def first_nonfinite(chosen: np.ndarray, rejected: np.ndarray) -> tuple[int, str, float] | None:
    """(row, 'chosen'|'rejected', value) of the first NaN/inf value, or None."""
    bad = ~(np.isfinite(chosen) & np.isfinite(rejected))
    if not bad.any():
        return None
    row = int(np.flatnonzero(bad)[0])
    side = "chosen" if not np.isfinite(chosen[row]) else "rejected"
    return row, side, float((chosen if side == "chosen" else rejected)[row])


def read_entry(entry: Path, expected_rows: int | None = None) -> tuple[np.ndarray, np.ndarray] | str:
    """The cached (chosen, rejected) arrays of a cache entry, or why they cannot be used: missing,
    unreadable (truncated/corrupt file), a checksum that differs from meta.json's, or a row count
    that differs from the data's."""
    arrays = entry / "ref_logps.npz"
    if not arrays.exists():
        return "missing"
    try:
        meta = json.loads((entry / "meta.json").read_text()) if (entry / "meta.json").exists() else {}
        want = meta.get("sha256")
        if want and sha256_file(arrays) != want:
            return f"{arrays}: checksum differs from meta.json (the file was changed or damaged)"
        with np.load(arrays) as z:
            chosen, rejected = np.asarray(z["chosen"], dtype=np.float64), np.asarray(z["rejected"], dtype=np.float64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return f"{arrays}: unreadable ({type(exc).__name__}: {exc})"
    if chosen.shape != rejected.shape or chosen.ndim != 1:
        return f"{arrays}: arrays of shapes {chosen.shape} and {rejected.shape}"
    if expected_rows is not None and len(chosen) != expected_rows:
        return f"{arrays}: {len(chosen)} rows, the data has {expected_rows}"
    return chosen, rejected


def load_or_compute(key: str, compute: Callable[[], tuple[np.ndarray, np.ndarray]], *,
                    cache_dir: str | Path | None = None, meta: dict | None = None,
                    expected_rows: int | None = None) -> ReferenceLogps:
    """Return the cached arrays for `key`, or run `compute()` once and store them.

    A cached entry is verified (readable, meta.json's checksum, row count) before use; one that
    fails is recomputed with a warning, never a zipfile traceback. Cached or computed values
    that are NaN or infinite raise NonFiniteLogps (and are never written). The write is atomic
    (temp file, checksum into meta.json, rename), so a run killed mid-write leaves no entry that
    passes the check; a full disk leaves no entry and the run continues with the computed arrays.
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    entry = root / key
    arrays = entry / "ref_logps.npz"
    found = read_entry(entry, expected_rows)
    if isinstance(found, tuple):
        chosen, rejected = found
        bad = first_nonfinite(chosen, rejected)
        if bad is not None:
            raise NonFiniteLogps(*bad, cached=True, path=arrays)
        return ReferenceLogps(chosen, rejected, key, entry, hit=True, seconds=0.0)
    if found != "missing":
        warnings.warn(f"reference log-prob cache entry not used, recomputing: {found}", stacklevel=2)
    t0 = time.perf_counter()
    chosen, rejected = compute()
    seconds = time.perf_counter() - t0
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    bad = first_nonfinite(chosen, rejected)
    if bad is not None:
        raise NonFiniteLogps(*bad, cached=False, path=arrays)
    tmp = entry / f".tmp-{os.getpid()}.npz"
    try:
        entry.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, chosen=chosen, rejected=rejected)
        info = {"key": key, "rows": int(len(chosen)), "seconds": round(seconds, 3), "sha256": sha256_file(tmp),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(meta or {})}
        atomic_write_text(entry / "meta.json", json.dumps(info, indent=2, default=str))
        os.replace(tmp, arrays)
    except Exception as exc:  # noqa: BLE001 - a cache that cannot be written is not a failed run
        if not is_disk_full(exc, entry):
            raise
        warnings.warn(f"{entry}: no space left on device, reference log-probs not cached (the run goes on)",
                      stacklevel=2)
    finally:
        tmp.unlink(missing_ok=True)
    return ReferenceLogps(chosen, rejected, key, entry, hit=False, seconds=seconds)
