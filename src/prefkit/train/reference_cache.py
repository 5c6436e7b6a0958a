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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

CACHE_VERSION = 2    # 2: identity from prefkit.models (class, dtype, integer sampling)


def default_cache_dir() -> Path:
    root = os.environ.get("PREFKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefkit")
    return Path(root) / "ref_logps"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model) -> dict:
    """The reference's identity: a PEFT model hashes as its frozen base model."""
    from prefkit.models import model_identity as identity

    return identity(model, skip_substrings=("lora_",))


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


def load_or_compute(key: str, compute: Callable[[], tuple[np.ndarray, np.ndarray]], *,
                    cache_dir: str | Path | None = None, meta: dict | None = None,
                    expected_rows: int | None = None) -> ReferenceLogps:
    """Return the cached arrays for `key`, or run `compute()` once and store them.

    The write is atomic (temp file + rename), so a run killed mid-write leaves no broken entry.
    """
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    entry = root / key
    arrays = entry / "ref_logps.npz"
    if arrays.exists():
        with np.load(arrays) as z:
            chosen, rejected = z["chosen"], z["rejected"]
        if expected_rows is None or len(chosen) == expected_rows:
            return ReferenceLogps(chosen, rejected, key, entry, hit=True, seconds=0.0)
    t0 = time.perf_counter()
    chosen, rejected = compute()
    seconds = time.perf_counter() - t0
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    entry.mkdir(parents=True, exist_ok=True)
    tmp = entry / f".tmp-{os.getpid()}.npz"
    np.savez(tmp, chosen=chosen, rejected=rejected)
    os.replace(tmp, arrays)
    info = {"key": key, "rows": int(len(chosen)), "seconds": round(seconds, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(meta or {})}
    (entry / "meta.json").write_text(json.dumps(info, indent=2, default=str))
    return ReferenceLogps(chosen, rejected, key, entry, hit=False, seconds=seconds)
