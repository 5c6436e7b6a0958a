"""The data layer: read any supported preference dataset into canonical columns
(`prefkit.data.records`), write it back, binarize multi-response data into pairs, and describe it.

    from prefkit.data import read, write
    ds = read("ultrafeedback_raw.jsonl")            # MULTI (format detected from the columns)
    write(ds, "canonical.parquet")
"""

from prefkit.data.binarize import binarize
from prefkit.data.io import read, write
from prefkit.data.stats import format_stats, plot_stats, stats

__all__ = ["read", "write", "binarize", "stats", "format_stats", "plot_stats"]
