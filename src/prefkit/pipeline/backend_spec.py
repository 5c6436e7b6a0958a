"""A recipe's LLM backend: the score stage's judge and the evolve stage's rewriter (and judge).

    judge: {model: NAME, base_urls: [URL, URL]}          # OpenAI-compatible servers; requests are
                                                         # spread over all of them (least-loaded)
    judge: {model: NAME, base_urls: [URL], server: transformers, concurrency: 8, timeout: 300}
    judge: {local: MODEL_DIR}                            # a local transformers model
    backend: {build: MODULE:FUNCTION, args: {...}}       # any prefkit.synth Backend object

Besides model and base_urls, a served spec takes the fields of
`prefkit.synth.backends.OpenAIBackend` (concurrency, timeout, max_retries, balance, server,
api_key_env, ...; the key itself only through the environment: a recipe is not a place for
secrets). `check_backend_spec` runs when the recipe is validated, so a bad spec is an error
naming the recipe's line before anything runs; `build_backend` makes the object when the stage
runs. `sampling` turns a recipe's `{temperature, top_p, max_tokens}` mapping into the
`SamplingParams` the stage functions take.
"""

from __future__ import annotations

import dataclasses

from prefkit.errors import ConfigError

FORMS = "give {model: NAME, base_urls: [URL, ...]}, {local: MODEL_DIR} or {build: MODULE:FUNCTION, args: {...}}"
_NOT_IN_RECIPES = ("api_key", "model", "base_urls")


def _served_fields() -> tuple[str, ...]:
    from prefkit.synth.backends import OpenAIBackend

    return tuple(f.name for f in dataclasses.fields(OpenAIBackend) if f.init and f.name not in _NOT_IN_RECIPES)


def valid_keys() -> tuple[str, ...]:
    return ("model", "base_urls", "local", "build", "args", "batch_size") + _served_fields()


def check_backend_spec(spec) -> dict:
    """`spec` checked (ConfigError naming the bad key as `KEY: what`), base_urls as a list."""
    if not isinstance(spec, dict):
        raise ConfigError(f"expected a mapping; {FORMS}")
    spec = {k: v for k, v in spec.items() if v is not None}     # `--set judge.KEY=` unsets KEY
    valid = valid_keys()
    for k in spec:
        if k not in valid:
            raise ConfigError(f"{k}: unknown key; valid keys: {', '.join(valid)}")
    forms = [k for k in ("build", "local", "model") if spec.get(k) is not None]
    if len(forms) != 1:
        raise ConfigError(FORMS)
    out = dict(spec)
    if forms == ["build"]:
        ref = spec["build"]
        if not isinstance(ref, str) or ":" not in ref:
            raise ConfigError(f"build: expected MODULE:FUNCTION, got {ref!r}")
        if spec.get("args") is not None and not isinstance(spec["args"], dict):
            raise ConfigError("args: expected a mapping of keyword arguments")
        extra = [k for k in spec if k not in ("build", "args")]
    elif forms == ["local"]:
        extra = [k for k in spec if k not in ("local", "batch_size")]
    else:
        urls = spec.get("base_urls")
        if isinstance(urls, str):
            urls = [urls]
        if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            raise ConfigError(f"base_urls: expected a list of http(s) URLs, got {spec.get('base_urls')!r}")
        out["base_urls"] = list(urls)
        extra = [k for k in spec if k in ("args", "batch_size")]
    if extra:
        raise ConfigError(f"{extra[0]}: does not go with {forms[0]}; {FORMS}")
    return out


def check_server_options(opts) -> dict:
    """A generate stage's `backend_options`: OpenAIBackend fields only (the servers and the model
    are the stage's `servers` and `served_model`)."""
    if not isinstance(opts, dict):
        raise ConfigError(f"expected a mapping of {', '.join(_served_fields())}")
    for k in opts:
        if k not in _served_fields():
            raise ConfigError(f"{k}: unknown key; valid keys: {', '.join(_served_fields())}")
    check_backend_spec({"model": "m", "base_urls": ["http://servers/v1"], **opts})
    return opts


def build_backend(spec: dict):
    """The backend object `spec` describes (checked again: the runner may be called directly)."""
    from prefkit.refs import call_ref
    from prefkit.synth.backends import LocalBackend, OpenAIBackend

    spec = check_backend_spec(spec)
    if spec.get("build"):
        return call_ref(spec["build"], spec.get("args") or {})
    if spec.get("local"):
        return LocalBackend(spec["local"], **({"batch_size": spec["batch_size"]} if spec.get("batch_size") else {}))
    return OpenAIBackend(**spec)


SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed", "stop")


def sampling(values, **defaults):
    """SamplingParams from a recipe's mapping (its keys over `defaults`); None stays None when
    there are no defaults either."""
    from prefkit.synth.backends import SamplingParams

    if values is None and not defaults:
        return None
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"expected a mapping of {', '.join(SAMPLING_KEYS)}, got {values!r}")
    for k in values or {}:
        if k not in SAMPLING_KEYS:
            raise ConfigError(f"{k}: unknown key; valid keys: {', '.join(SAMPLING_KEYS)}")
    kw = dict(defaults, **(values or {}))
    if kw.get("stop") is not None:
        kw["stop"] = tuple(kw["stop"])
    return SamplingParams(**kw)
