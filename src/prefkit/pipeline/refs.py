"""`MODULE:FUNCTION` references in recipes: how a recipe names a policy builder, a prompt set or a
backend that lives in Python (the toy world's are in `prefkit.toy.recipes`), without the engine
knowing about any of them."""

from __future__ import annotations

import importlib

from prefkit.errors import ConfigError


def resolve_ref(ref: str):
    mod, sep, attr = str(ref).partition(":")
    if not sep or not mod or not attr:
        raise ConfigError(f"{ref!r}: expected MODULE:FUNCTION")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{ref!r}: cannot import it ({exc})") from None
    if not callable(obj):
        raise ConfigError(f"{ref!r} is not callable")
    return obj


def call_ref(ref: str, args: dict | None = None):
    fn = resolve_ref(ref)
    try:
        return fn(**(args or {}))
    except TypeError as exc:
        raise ConfigError(f"{ref}: {exc}") from None
