"""Reference log-probs computed once and cached on disk.

DPO-family losses need log pi_ref(y|x) for every chosen and rejected response. The reference
never changes, so prefkit computes these once, in one pass over the tokenised data, and stores
them keyed by

    (dataset fingerprint, model identity, tokenisation settings)

- dataset fingerprint: a hash of the token ids that the reference reads (prompt, chosen and
  rejected ids, in row order), so any change of data, chat template or truncation changes it;
- model identity: name_or_path, a hash of the config, and a hash of the weights (every byte for
  small models; a fixed strided sample of every tensor beyond `FULL_HASH_NUMEL`);
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

CACHE_VERSION = 1
FULL_HASH_NUMEL = 50_000_000      # hash all weights below this many parameters
SAMPLE_PER_TENSOR = 4096          # elements hashed per tensor above it


def default_cache_dir() -> Path:
    root = os.environ.get("PREFKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefkit")
    return Path(root) / "ref_logps"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model, *, skip_substrings: tuple[str, ...] = ("lora_",)) -> dict[str, str]:
    """Who the reference is: name_or_path, config hash, weights hash.

    Parameters whose names contain any of `skip_substrings` (LoRA adapters, by default) are
    left out, so a PEFT model hashes as its frozen base model, the reference it stands for.
    """
    import torch

    cfg = getattr(model, "config", None)
    name = str(getattr(cfg, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")
    try:
        cfg_dict = cfg.to_dict() if cfg is not None else {}
    except Exception:  # pragma: no cover - exotic configs
        cfg_dict = {"repr": repr(cfg)}
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype"):
        cfg_dict.pop(volatile, None)
    named = [(n, p) for n, p in model.state_dict().items() if not any(s in n for s in skip_substrings)]
    total = sum(p.numel() for _, p in named)
    h = hashlib.sha256()
    with torch.no_grad():
        for n, p in named:
            # PEFT wraps base layers as `...base_layer.weight`; strip wrapper names so the base
            # model hashes the same inside and outside a PeftModel.
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            h.update(f"{key}:{tuple(p.shape)}:{p.dtype}".encode())
            flat = p.detach().reshape(-1)
            if total > FULL_HASH_NUMEL and flat.numel() > SAMPLE_PER_TENSOR:
                idx = torch.linspace(0, flat.numel() - 1, SAMPLE_PER_TENSOR, device=flat.device).long()
                flat = flat[idx]
            h.update(flat.to("cpu", torch.float32).numpy().tobytes())
    return {"name_or_path": name, "config_sha": _sha(cfg_dict)[:16], "weights_sha": h.hexdigest()[:16],
            "weights_hashed": "all" if total <= FULL_HASH_NUMEL else f"sample/{SAMPLE_PER_TENSOR}"}


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
