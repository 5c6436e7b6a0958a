"""A row-level on-disk cache of the policy's (and reference's) sequence log-probs.

Scoring a large preference set with a model is the slow part of selection, so every scored
chunk of rows is written to disk as soon as it is done: an interrupted pass resumes where it
stopped, and a second selection over the same data (another metric, fraction or weight) scores
nothing at all.

Layout: `<cache_dir>/<key>/shard-*.parquet`, each shard a table of `row_key` plus the value
columns, and `<cache_dir>/<key>/manifest.json` describing the key for people.

- `key` hashes everything that changes the numbers: the model's identity (name, class, dtype,
  parameter count and a fingerprint of its weights), the tokenizer's (vocabulary, chat
  template), the reference model's identity when there is one, and the scoring settings.
- `row_key` hashes the row's content (prompt, chosen, rejected), so the cache serves the same
  pair wherever it sits in whichever dataset (a subset, a reshuffle, a re-run after edits to
  other rows). Together they play the role of "dataset fingerprint + model + settings" at row
  granularity.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import numpy as np

from prefkit.models import model_identity as identity


def row_key(prompt, chosen, rejected) -> str:
    """Content hash of one pair (strings or message lists alike)."""
    blob = json.dumps([prompt, chosen, rejected], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def model_identity(model) -> dict:
    """The scored model's identity (`prefkit.models.model_identity`, adapters included: a trained
    LoRA policy scores differently from its base)."""

    return identity(model)


def tokenizer_identity(tokenizer) -> dict:
    h = hashlib.sha1()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    h.update(str(getattr(tokenizer, "chat_template", None)).encode("utf-8"))
    for attr in ("bos_token", "eos_token", "pad_token", "padding_side", "truncation_side"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)}".encode())
    return {"name_or_path": getattr(tokenizer, "name_or_path", None), "sha1": h.hexdigest()}


class LogpCache:
    """Row-keyed store of float columns; shards are written atomically, one per scored chunk."""

    def __init__(self, root: str | os.PathLike, key_material: dict, columns: tuple[str, ...]):
        self.columns = tuple(columns)
        blob = json.dumps({"key": key_material, "columns": self.columns}, sort_keys=True, default=str)
        self.key = hashlib.sha1(blob.encode("utf-8")).hexdigest()[:20]
        self.dir = Path(root) / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "manifest.json"
        if not manifest.exists():
            manifest.write_text(json.dumps({"key": key_material, "columns": self.columns}, indent=2,
                                           default=str))
        self._values: dict[str, tuple] = {}
        self._load()

    def _load(self) -> None:
        import pyarrow.parquet as pq  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

        for shard in sorted(self.dir.glob("shard-*.parquet")):
            table = pq.read_table(shard)
            keys = table.column("row_key").to_pylist()
            cols = [table.column(c).to_numpy() for c in self.columns]
            for i, k in enumerate(keys):
                self._values[k] = tuple(float(c[i]) for c in cols)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def get(self, key: str) -> tuple | None:
        return self._values.get(key)

    def put_many(self, keys: list[str], values: dict[str, np.ndarray]) -> None:
        """Persist one chunk (a shard) and make it visible to `get`."""
        import pyarrow as pa  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light
        import pyarrow.parquet as pq  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

        if not keys:
            return
        table = pa.table({"row_key": pa.array(keys, pa.string()),
                          **{c: pa.array(np.asarray(values[c], dtype=np.float64)) for c in self.columns}})
        name = f"shard-{uuid.uuid4().hex}.parquet"
        tmp = self.dir / (name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, self.dir / name)  # atomic: a crash never leaves a half-written shard
        cols = [np.asarray(values[c], dtype=np.float64) for c in self.columns]
        for i, k in enumerate(keys):
            self._values[k] = tuple(float(c[i]) for c in cols)
