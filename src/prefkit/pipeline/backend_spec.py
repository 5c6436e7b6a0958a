"""A recipe's LLM backend (the synth stage's writer and judge, the evolve stage's rewriter):

    {build: MODULE:FUNCTION, args: {...}}          a function returning a `prefkit.synth.Backend`
                                                   (the toy world's: prefkit.toy.recipes:rewriter)
    {model: NAME, base_urls: [URL, ...], ...}      OpenAI-compatible servers (`OpenAIBackend`; its
                                                   other fields, e.g. concurrency, timeout, server)
    {local: policy | DIR, batch_size: N}           a transformers model in this process
                                                   (`LocalBackend`); `policy`: the round's policy
"""

from __future__ import annotations

import dataclasses

from prefkit.errors import ConfigError
from prefkit.refs import call_ref
from prefkit.synth.backends import Backend, LocalBackend, OpenAIBackend

FORMS = ("build", "model", "local")
LOCAL_KEYS = ("local", "batch_size", "seed", "engine")


def _openai_keys() -> tuple:
    return tuple(f.name for f in dataclasses.fields(OpenAIBackend) if f.init and f.name != "api_key")


def check_backend_spec(spec, key: str) -> None:
    """ConfigError "KEY[.SUB]: what" unless `spec` is one of the forms above."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{key}: expected a mapping with one of {', '.join(FORMS)}, got {spec!r}")
    given = [f for f in FORMS if spec.get(f) is not None]
    if len(given) != 1:
        raise ConfigError(f"{key}: give exactly one of build (MODULE:FUNCTION), model (with base_urls), "
                          "local (policy or a model directory)")
    form = given[0]
    valid = {"build": ("build", "args"), "local": LOCAL_KEYS}.get(form) or _openai_keys()
    for k in spec:
        if k not in valid:
            raise ConfigError(f"{key}.{k}: unknown key for a {form} backend; valid keys: {', '.join(valid)}")
    if form == "build":
        if not isinstance(spec["build"], str) or ":" not in spec["build"]:
            raise ConfigError(f"{key}.build: expected MODULE:FUNCTION, got {spec['build']!r}")
        if spec.get("args") is not None and not isinstance(spec["args"], dict):
            raise ConfigError(f"{key}.args: expected a mapping of keyword arguments")
    elif form == "model" and not spec.get("base_urls"):
        raise ConfigError(f"{key}.base_urls: missing; the servers' OpenAI-compatible URLs, "
                          "e.g. [http://localhost:8000/v1]")


def backend_from_spec(spec: dict, *, policy: str, key: str = "backend"):
    """The Backend `spec` describes; `policy` stands for `local: policy`."""
    check_backend_spec(spec, key)
    if spec.get("build"):
        backend = call_ref(spec["build"], spec.get("args") or {})
        if not isinstance(backend, Backend):
            raise ConfigError(f"{key}.build: {spec['build']} returned {type(backend).__name__}, not a "
                              "prefkit.synth.Backend")
        return backend
    if spec.get("local"):
        opts = {k: v for k, v in spec.items() if k != "local"}
        return LocalBackend(policy if spec["local"] == "policy" else spec["local"], **opts)
    kw = dict(spec)
    kw["base_urls"] = list(kw["base_urls"]) if isinstance(kw["base_urls"], (list, tuple)) else [kw["base_urls"]]
    return OpenAIBackend(**kw)
