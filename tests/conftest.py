"""Shared fixtures: real HF tokenizers and tiny models built locally (nothing downloaded)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


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
