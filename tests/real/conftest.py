"""The real model, SmolLM2-135M-Instruct (docs/models.md), shared by the tests in tests/real.

One tokenizer and one loaded model per session; a test that trains works on a deep copy, so the
shared weights stay the pretrained ones. The data is a handful of short conversational pairs so
that each stage runs in seconds on two CPU cores."""

from __future__ import annotations

import copy

import datasets
import pytest

from real_testkit import pair_rows


@pytest.fixture(scope="session")
def real_tokenizer(smollm2_dir):
    from prefkit.models import load_tokenizer

    return load_tokenizer(smollm2_dir, pad_with_eos=True)


@pytest.fixture(scope="session")
def real_model(smollm2_dir):
    """The pretrained model, loaded once. Read it; train only `fresh_model()` copies."""
    from prefkit.models import load_pretrained

    return load_pretrained(smollm2_dir, dtype="float32").eval()


@pytest.fixture()
def fresh_model(real_model):
    def make():
        return copy.deepcopy(real_model).train()
    return make


@pytest.fixture(scope="session")
def pairs():
    """Four pairs: two with their own system turn, two with the template's default one."""
    return datasets.Dataset.from_list(pair_rows(4, system_every=3))
