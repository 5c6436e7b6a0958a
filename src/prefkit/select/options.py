"""`SelectOptions`: every option of the selection stage, in one object.

`select`, `score_margins`, `selection_ablation`, `evolve_then_select` (its second selection) and
the `prefkit select` / `prefkit select evolve` commands all take it; each function also accepts
the fields as keywords, which override the object (`select(pairs, "explicit", fraction=0.5)`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from prefkit.data.validate import on_invalid_mode
from prefkit.select.metrics import get_metric


@dataclass(frozen=True)
class SelectOptions:
    """metric: a name registered with `prefkit.select.register_metric`; built in:
    'alignment-potential' (z(m_e) - weight z(|m_i|)), 'ap-paper', 'dpo-implicit' (needs a
    reference; uses `beta`), 'explicit', 'implicit' and 'random'.
    fraction / top_k: keep floor(fraction * scorable pairs) rows, or top_k rows.
    weight: w of alignment potential. beta: beta of the DPO implicit margin.
    batch_size: pairs per model forward. chunk_size: pairs per streaming chunk and cache shard.
    cache_dir: row-level log-prob cache (resumable scoring). score_kwargs: passed on to
    `prefkit.logprobs.score_logps` (max_length, max_prompt_length, ...). seed: of the random
    metric. work_dir: keep the metric table there, memory-mapped (data larger than memory).
    on_invalid: 'error' or 'drop' (counted; the old 'skip' means 'drop') for rows that cannot be scored. progress: bars.
    plot: PNG of explicit against implicit margin with the selection boundary. scored_path:
    also write every row with its metric columns and `selected`."""

    metric: str = "alignment-potential"
    fraction: float = 0.4
    top_k: int | None = None
    weight: float = 1.0
    beta: float = 0.1
    batch_size: int = 8
    chunk_size: int = 512
    cache_dir: Any = None
    score_kwargs: dict | None = None
    seed: int = 42
    work_dir: Any = None
    on_invalid: str = "error"
    progress: bool = True
    plot: Any = None
    scored_path: Any = None

    def __post_init__(self):

        get_metric(self.metric)  # an unknown name is a ConfigError naming the registered ones
        object.__setattr__(self, "on_invalid", on_invalid_mode(self.on_invalid))

    @classmethod
    def of(cls, options: SelectOptions | None = None, **overrides) -> SelectOptions:
        """`options` (default: all defaults) with `overrides` (field=value) applied."""
        return replace(options if options is not None else cls(), **overrides)
