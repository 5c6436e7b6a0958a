"""Test helpers for tests/synth, in a module with a unique name (several test folders have a
`conftest.py`, so `from conftest import ...` would pick whichever was imported first)."""

from __future__ import annotations

from prefkit.synth.backends import OpenAIBackend


def make_backend(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("concurrency", 8)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("max_retries", 6)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.1)
    return OpenAIBackend(model="fake-model", base_urls=[url], **kw)
