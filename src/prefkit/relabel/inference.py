"""Conditioning a prompt at inference, the same way training data was relabeled."""

from __future__ import annotations

import os
from typing import Any, Mapping

import pyarrow as pa

from prefkit.errors import ConfigError
from prefkit.relabel.columns import condition_column
from prefkit.relabel.conditioning import ConditioningSpec, load_conditioning, make_spec, resolve_placement


def condition(prompt: str | list[dict[str, Any]], goal: float | Mapping[str, float] | None = None,
              spec: ConditioningSpec | str | os.PathLike | None = None, tokenizer=None):
    """Return `prompt` conditioned on `goal` (a new string or a new message list; input untouched).

    goal: None (default) -> the spec's best goal (the top of its scale, 10 unless changed); a
        number -> that goal (for every attribute); a mapping {attribute: goal}.
    spec: a ConditioningSpec, or a model/dataset directory holding prefkit_conditioning.json;
        None -> the default template with system placement, or 'auto' placement when a tokenizer
        is given. Uses exactly the insertion code that `relabel` uses for training data.
    """
    if isinstance(spec, (str, os.PathLike)):
        loaded = load_conditioning(spec)
        if loaded is None:
            raise ConfigError(f"{spec}: no prefkit_conditioning.json there")
        spec = loaded
    if spec is None:
        spec = make_spec(placement="auto" if tokenizer is not None else "system", tokenizer=tokenizer)
    placement = resolve_placement(spec.placement, tokenizer)
    text = spec.render(goal)
    if isinstance(prompt, str):
        return condition_column(pa.array([prompt], type=pa.string()), pa.array([text]), placement)[0].as_py()
    if not isinstance(prompt, list) or not all(isinstance(m, Mapping) for m in prompt) or not prompt:
        raise ConfigError("prompt must be a string or a non-empty list of {role, content} messages")
    if not any(m.get("role") == "user" for m in prompt) and placement == "user":
        raise ConfigError("user placement needs a user turn in the prompt, found none")
    arr = pa.array([[dict(m) for m in prompt]])
    out = condition_column(arr, pa.array([text]), placement)[0].as_py()
    # Arrow fills keys a message did not have with None; give back messages shaped like the input.
    return [{k: v for k, v in m.items() if v is not None or k in ("role", "content")} for m in out]
