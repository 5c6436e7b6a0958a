"""Fixtures for the trainer tests: a tiny real model + tokenizer saved to disk, and small
preference datasets written as jsonl (read through prefkit.data.read like a user's file)."""

from __future__ import annotations

import pytest

from helpers import save_tiny
from train_helpers import make_pairs, write_jsonl


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest single-threaded, and the test machine is shared."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Llama (hidden 32, 2 layers) and its chatml tokenizer, saved like a hub model."""
    from prefkit.toy.tiny import build_tokenizer

    return save_tiny(tmp_path_factory.mktemp("tiny_llama"), build_tokenizer(template="chatml"))


@pytest.fixture()
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "pairs.jsonl", make_pairs(16))
