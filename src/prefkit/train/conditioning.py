"""The reward-conditioning spec that goes with a run's training data (prefkit.relabel writes one
beside relabeled data), and the warning when relabeled data comes without one."""

from __future__ import annotations

import os
import warnings

from prefkit.errors import ConfigError
from prefkit.relabel import find_conditioning, load_conditioning
from prefkit.train.config import BaseTrainConfig


def find_conditioning_spec(cfg: BaseTrainConfig, data_source):
    """The reward-conditioning spec that goes with the training data (None if there is none)."""
    if cfg.conditioning == "none":
        return None
    if cfg.conditioning != "auto":
        spec = load_conditioning(cfg.conditioning)
        if spec is None:
            raise ConfigError(f"conditioning: no prefkit_conditioning.json at {cfg.conditioning!r}")
        return spec
    if isinstance(data_source, (str, os.PathLike)) and os.path.exists(data_source):
        return find_conditioning(data_source)
    return None


RELABEL_COLUMNS = ("relabel_half", "goal_score", "goal_scores")   # columns prefkit.relabel adds


def warn_if_relabeled(data, cfg: BaseTrainConfig) -> None:
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
