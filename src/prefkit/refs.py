"""`MODULE:FUNCTION` references: how a recipe names a policy builder, a prompt set or a backend that
lives in Python (the toy world's are in `prefkit.toy.recipes`), and how `--reward-fn` names a reward
function, without the caller knowing about any of them. The one resolver of such names."""

from __future__ import annotations

import importlib

from prefkit.errors import ConfigError


def resolve_ref(ref: str, *, what: str | None = None, example: str | None = None):
    """The callable that `ref` ('module:function') names; a ConfigError that says what is wrong
    (prefixed with `what`, e.g. '--reward-fn', and ending with an `example` when given)."""
    label = f"{what} {ref!r}" if what else repr(ref)
    mod, sep, attr = str(ref).partition(":")
    if not sep or not mod or not attr:
        raise ConfigError(f"{label}: expected MODULE:FUNCTION" + (f", e.g. {example}" if example else ""))
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{label}: cannot import it ({exc})") from None
    if not callable(obj):
        raise ConfigError(f"{label} is not callable")
    return obj


def call_ref(ref: str, args: dict | None = None):
    """Call what `ref` names with the keyword `args` (a recipe's `args:` mapping)."""
    fn = resolve_ref(ref)
    try:
        return fn(**(args or {}))
    except TypeError as exc:
        raise ConfigError(f"{ref}: {exc}") from None
