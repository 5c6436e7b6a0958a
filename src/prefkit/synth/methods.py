"""Synth methods: a registry (`register_synth_method`) and the options every method shares.

A synth method is a function

    method(prompts, backend, options=None, *, judge=None, report=None, **overrides) -> Dataset

(`judge` only for methods registered with ``uses_judge=True``) that writes preference pairs
for `prompts` with `backend`, and its options: a frozen dataclass deriving from `SynthOptions`
whose extra fields are the method's own options. `prefkit synth NAME` is built from the
registration: one flag per option field (``--field-name``; its `metadata` gives ``help``, and may
give ``choices``, ``flags`` for other spellings, or ``cli=False`` to keep a field Python-only);
fields holding `SamplingParams` (their metadata's ``sampling`` gives the defaults, used by the
method when the field is None) take the generator's sampling flags (``--temperature``,
``--top-p``, ``--max-tokens``), and ``judge_params`` the judge's (``--judge-temperature``, ...). Keywords given to the function override the options object
(`rmboost(prompts, backend, seed=3)`), as for `SelectOptions`.

Built in (registered where they are written): 'rmboost' (`prefkit.synth.rmboost`), 'rlaif',
'west-of-n' and 'rlcd' (`prefkit.synth.baselines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from prefkit.registry import Registry
from prefkit.synth.backends import SamplingParams

__all__ = ["SynthOptions", "SynthMethod", "register_synth_method", "get_synth_method", "available_synth_methods",
           "options_of", "sampling_params", "GUIDELINE_HELP"]

GUIDELINE_HELP = "aspect guideline: ultrafeedback, qa, summarization, or a YAML/JSON file"


@dataclass(frozen=True)
class SynthOptions:
    """What every synth method takes: where finished requests are kept (`run_dir`; re-running
    resumes), retrying the failed ones, progress bars, and the generator's sampling."""

    run_dir: Any = field(default=None, metadata={"cli": False})
    retry_failed: bool = field(default=False, metadata={"cli": False})
    progress: bool = field(default=True, metadata={"cli": False})
    generation: SamplingParams | None = field(default=None, metadata={
        "help": "the generator's sampling", "sampling": {"temperature": 0.7}})


@dataclass(frozen=True)
class SynthMethod:
    name: str
    run: Callable
    options: type
    help: str
    uses_judge: bool = False


_METHODS: Registry[SynthMethod] = Registry("synth method")


def register_synth_method(name: str, *, options: type = SynthOptions, help: str, uses_judge: bool = False):
    """Decorator: make `method` the synth method `name` (`prefkit synth NAME`), with `options`
    (a `SynthOptions` subclass) as its options; `uses_judge`: it takes a `judge=` backend (the CLI
    then offers the --judge-* flags)."""
    if not (isinstance(options, type) and issubclass(options, SynthOptions)):
        raise TypeError(f"synth method {name!r}: options must be a SynthOptions subclass, not {options!r}")
    missing = [f.name for f in fields(options) if f.metadata.get("cli", True) and not f.metadata.get("help")]
    if missing:
        raise TypeError(f"synth method {name!r}: option field(s) {', '.join(missing)} need metadata help "
                        "(or cli=False)")
    return _METHODS.decorator(name, lambda method: SynthMethod(name, method, options, help, uses_judge))


#: get_synth_method(name) -> SynthMethod (ConfigError naming the choices if none); available_synth_methods()
#: -> sorted names
get_synth_method = _METHODS.get
available_synth_methods = _METHODS.names


def sampling_params(options: SynthOptions, name: str) -> SamplingParams:
    """The SamplingParams field `name` of `options`, or its declared default (metadata 'sampling')."""
    value = getattr(options, name)
    if value is not None:
        return value
    meta = {f.name: f.metadata for f in fields(options)}[name]
    return SamplingParams(**meta["sampling"])


def options_of(cls: type, options=None, overrides: dict | None = None):
    """`options` (default: `cls()`) with `overrides` (field=value) applied; the one way a method
    reads its options."""
    o = options if options is not None else cls()
    if not isinstance(o, cls):
        raise TypeError(f"expected {cls.__name__}, not {type(o).__name__}")
    return replace(o, **overrides) if overrides else o
