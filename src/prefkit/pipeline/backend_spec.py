"""A recipe's LLM backend: the synth stage's writer and judge, the score stage's judge, the evolve
stage's rewriter (and judge). One of:

    {build: MODULE:FUNCTION, args: {...}}          a function returning a `prefkit.synth.Backend`
                                                   (the toy world's: prefkit.toy.recipes:rewriter)
    {model: NAME, base_urls: [URL, ...], ...}      OpenAI-compatible servers (`OpenAIBackend`):
                                                   requests are spread over all of them; its other
                                                   fields (concurrency, timeout, max_retries,
                                                   balance, server, api_key_env, ...) too; the key
                                                   itself only through the environment: a recipe
                                                   is not a place for secrets
    {local: policy | DIR, batch_size: N}           a transformers model in this process
                                                   (`LocalBackend`); `policy`: the round's policy

`check_backend_spec` runs when the recipe is validated, so a bad spec is an error naming the
recipe's line before anything runs; `backend_from_spec` makes the object when the stage runs.
`sampling` turns a recipe's `{temperature, top_p, max_tokens}` mapping into the `SamplingParams`
the stage functions take.
"""

from __future__ import annotations

import dataclasses

from prefkit.errors import ConfigError
from prefkit.refs import call_ref
from prefkit.synth.backends import Backend, LocalBackend, OpenAIBackend, SamplingParams

FORMS = ("build", "model", "local")
FORMS_TEXT = ("give {model: NAME, base_urls: [URL, ...]}, {local: policy or MODEL_DIR} or "
              "{build: MODULE:FUNCTION, args: {...}}")
LOCAL_KEYS = ("local", "batch_size", "seed", "engine")
_NOT_IN_RECIPES = ("api_key", "model", "base_urls")


def _served_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(OpenAIBackend) if f.init and f.name not in _NOT_IN_RECIPES)


def _at(key: str | None, sub: str | None = None) -> str:
    return ".".join(p for p in (key, sub) if p)


def check_backend_spec(spec, key: str | None = None) -> dict:
    """`spec` checked, with None values dropped (`--set judge.KEY=` unsets KEY) and base_urls as a
    list; ConfigError "KEY[.SUB]: what" (without `key`: "SUB: what") unless it is one of the forms."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{_at(key) + ': ' if key else ''}expected a mapping; {FORMS_TEXT}, got {spec!r}")
    spec = {k: v for k, v in spec.items() if v is not None}
    given = [f for f in FORMS if spec.get(f) is not None]
    if len(given) != 1:
        raise ConfigError(f"{_at(key) + ': ' if key else ''}{FORMS_TEXT}")
    form = given[0]
    valid = {"build": ("build", "args"), "local": LOCAL_KEYS}.get(form) or ("model", "base_urls") + _served_fields()
    for k in spec:
        if k not in valid:
            raise ConfigError(f"{_at(key, k)}: unknown key for a {form} backend; valid keys: {', '.join(valid)}")
    out = dict(spec)
    if form == "build":
        if not isinstance(spec["build"], str) or ":" not in spec["build"]:
            raise ConfigError(f"{_at(key, 'build')}: expected MODULE:FUNCTION, got {spec['build']!r}")
        if spec.get("args") is not None and not isinstance(spec["args"], dict):
            raise ConfigError(f"{_at(key, 'args')}: expected a mapping of keyword arguments")
    elif form == "model":
        urls = spec.get("base_urls")
        if not urls:
            raise ConfigError(f"{_at(key, 'base_urls')}: missing; the servers' OpenAI-compatible URLs, "
                              "e.g. [http://localhost:8000/v1]")
        urls = [urls] if isinstance(urls, str) else urls
        if not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            raise ConfigError(f"{_at(key, 'base_urls')}: expected a list of http(s) URLs (the servers' "
                              f"OpenAI-compatible endpoints, e.g. [http://localhost:8000/v1]), got "
                              f"{spec.get('base_urls')!r}")
        out["base_urls"] = list(urls)
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


def backend_from_spec(spec: dict, *, policy: str | None = None, key: str = "backend") -> Backend:
    """The Backend `spec` describes (checked again: a runner may be called directly); `policy`
    stands for `local: policy`."""
    spec = check_backend_spec(spec, key)
    if spec.get("build"):
        backend = call_ref(spec["build"], spec.get("args") or {})
        if not isinstance(backend, Backend):
            raise ConfigError(f"{key}.build: {spec['build']} returned {type(backend).__name__}, not a "
                              "prefkit.synth.Backend")
        return backend
    if spec.get("local"):
        opts = {k: v for k, v in spec.items() if k != "local"}
        if spec["local"] == "policy" and policy is None:
            raise ConfigError(f"{key}.local: 'policy' names the round's policy, which this stage does not have")
        return LocalBackend(policy if spec["local"] == "policy" else spec["local"], **opts)
    return OpenAIBackend(**spec)


SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed", "stop")


def sampling(values, **defaults):
    """SamplingParams from a recipe's mapping (its keys over `defaults`); None stays None when
    there are no defaults either."""
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
