"""Shared fixtures: real HF tokenizers and tiny models built locally (nothing downloaded)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one torch thread each (set before torch is
    # imported; subprocesses the tests start inherit it) instead of two threads each on one core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The model cache of the session, before any test points PREFKIT_CACHE elsewhere (see smollm2_dir).
CACHE_AT_START = os.environ.get("PREFKIT_CACHE")


@pytest.fixture(scope="session")
def chatml_tokenizer():
    from prefkit.toy.tiny import build_tokenizer

    return build_tokenizer(template="chatml")


@pytest.fixture(scope="session")
def llama3_tokenizer():
    from prefkit.toy.tiny import build_tokenizer

    return build_tokenizer(template="llama3")


@pytest.fixture(scope="session")
def gemma_tokenizer():
    from prefkit.toy.tiny import build_tokenizer

    return build_tokenizer(template="gemma")


@pytest.fixture()
def tiny_llama(llama3_tokenizer):
    from prefkit.toy.tiny import tiny_causal_lm

    return tiny_causal_lm(llama3_tokenizer, arch="llama")


@pytest.fixture()
def tiny_qwen2(chatml_tokenizer):
    from prefkit.toy.tiny import tiny_causal_lm

    return tiny_causal_lm(chatml_tokenizer, arch="qwen2")


@pytest.fixture(scope="session")
def smollm2_dir():
    """The real SmolLM2-135M-Instruct, imported once from the bundled GGUF file into the prefkit
    model cache (`make test` installs the package and imports it). Not skipped when missing: the
    real-model tests are part of the suite."""
    from prefkit.errors import ConfigError
    from prefkit.models import resolve_model_path

    # A session fixture is made when a test first asks for it, perhaps while a module's fixture has
    # PREFKIT_CACHE pointing at a temporary cache (tests/test_generate_engines.py): resolved there,
    # it would import the model into that cache and give every later test a path no stage uses.
    try:
        with pytest.MonkeyPatch.context() as mp:
            if CACHE_AT_START is None:
                mp.delenv("PREFKIT_CACHE", raising=False)
            else:
                mp.setenv("PREFKIT_CACHE", CACHE_AT_START)
            return resolve_model_path("smollm2")
    except ConfigError as exc:
        pytest.fail(f"the real model is not available ({exc}); run `make install`")


@pytest.fixture()
def tmpfs(tmp_path):
    """`tmpfs(size, note="")`: a real small tmpfs mounted under tmp_path (a full disk for the
    disk-full tests), unmounted afterwards; the test is skipped where this process may not mount."""
    import subprocess

    mounted = []

    def mount(size: str, note: str = ""):
        d = tmp_path / f"small-{len(mounted)}" if mounted else tmp_path / "small"
        d.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}){note}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)
