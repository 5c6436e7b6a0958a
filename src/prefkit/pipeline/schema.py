"""The recipe schema, read from the stage functions and options objects themselves.

A stage's options are the fields of its options dataclass (`RelabelOptions`, `SelectOptions`,
`DPOConfig`, ...) or the keyword parameters of its public function (`prefkit.generate.generate`,
`prefkit.data.binarize`, `prefkit.evaluate.options.EvaluateOptions`): name, type and default
come from there, so an option added to a stage appears in the recipe schema with no second
spelling. Choices come from a field's `metadata["choices"]`, a `Literal[...]` annotation, or a
registry named in `prefkit.pipeline.stages` (loss names, selection metrics, binarize methods).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

from prefkit.errors import ConfigError
from prefkit.train.config import coerce_value  # the one type coercion of prefkit's configs

_MISSING = object()


@dataclass(frozen=True)
class Option:
    """One recipe option: its name, annotated type, default and (when known) allowed values."""

    name: str
    type: Any = Any
    default: Any = None
    choices: tuple | None = None
    doc: str = ""

    def check(self, value):
        """`value` coerced to this option's type; ConfigError with the valid values otherwise. An
        option whose type is a dataclass (e.g. `SamplingParams`) takes a mapping of its fields,
        checked and coerced the same way (ConfigError "NAME.FIELD: ...")."""
        nested = _dataclass_of(self.type)
        if nested is not None and isinstance(value, dict):
            sub = options_of(nested)
            for k in value:
                if k not in sub:
                    raise ConfigError(f"{self.name}.{k}: unknown key; valid keys: {', '.join(sub)}")
            out = {}
            for k, v in value.items():
                try:
                    out[k] = sub[k].check(v)
                except ConfigError as exc:
                    raise ConfigError(f"{self.name}.{exc}") from None
            return out
        if value is not None and self.type is not Any:
            value = coerce_value(self.name, value, self.type)
        if self.choices is not None and value is not None:
            values = value if isinstance(value, (list, tuple)) else [value]
            for v in values:
                if v not in self.choices:
                    raise ConfigError(f"{self.name}: {v!r} is not one of {', '.join(map(str, self.choices))}")
        return value

    def describe(self) -> str:
        t = getattr(self.type, "__name__", None) or str(self.type).replace("typing.", "")
        extra = f" one of {', '.join(map(str, self.choices))}" if self.choices else ""
        return f"{self.name} ({t}, default {self.default!r}){extra}"


def _dataclass_of(tp):
    """The dataclass `tp` is, or the one in an Optional[...] / union; None otherwise."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    for a in typing.get_args(tp):
        if isinstance(a, type) and dataclasses.is_dataclass(a):
            return a
    return None


def _literal_choices(tp) -> tuple | None:
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    for a in typing.get_args(tp):
        c = _literal_choices(a)
        if c:
            return c
    return None


def options_of(source, *, include=None, exclude=(), choices: dict[str, Callable[[], Any]] | None = None) -> dict[str, Option]:
    """The options of a dataclass (its init fields) or a function (its keyword parameters with
    defaults), in declaration order; `include` keeps only those names, `exclude` drops names."""
    choices = choices or {}
    out: dict[str, Option] = {}
    if dataclasses.is_dataclass(source):
        hints = typing.get_type_hints(source)
        items = []
        for f in dataclasses.fields(source):
            if not f.init:
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            items.append((f.name, hints.get(f.name, Any), default, f.metadata.get("choices"), f.metadata.get("help", "")))
    else:
        hints = typing.get_type_hints(source)
        items = []
        for p in inspect.signature(source).parameters.values():
            if p.default is inspect.Parameter.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            items.append((p.name, hints.get(p.name, Any), p.default, None, ""))
    for name, tp, default, meta_choices, doc in items:
        if include is not None and name not in include:
            continue
        if name in exclude:
            continue
        c = meta_choices
        if name in choices:
            c = choices[name]()
        elif c is None:
            c = _literal_choices(tp)
        out[name] = Option(name, tp, default, tuple(c) if c is not None else None, doc)
    return out


def build_options(cls, values: dict, **engine):
    """`cls(**values, **engine)` with a checked mapping turned into the dataclass its field holds
    (a recipe's `generation: {temperature: 0.7}` -> SamplingParams(temperature=0.7))."""
    hints = typing.get_type_hints(cls)
    kw = {}
    for k, v in values.items():
        nested = _dataclass_of(hints.get(k, Any))
        kw[k] = nested(**v) if nested is not None and isinstance(v, dict) else v
    return cls(**kw, **engine)


def error_key(msg: str, keys) -> str | None:
    """Which of `keys` a config check's message is about (the one it starts with, else the one it
    names), so the recipe's error points at that key's line; None if none."""
    return next((k for k in keys if msg.startswith(k)), None) or \
        next((k for k in keys if f"'{k}'" in msg or f" {k} " in f" {msg} "), None)
