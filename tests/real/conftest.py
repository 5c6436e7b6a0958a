"""The real model, SmolLM2-135M-Instruct (docs/models.md), shared by the tests in tests/real.

One tokenizer and one loaded model per session; a test that trains works on a deep copy, so the
shared weights stay the pretrained ones. The data is a handful of short conversational pairs so
that each stage runs in seconds on two CPU cores."""

from __future__ import annotations

import copy

import datasets
import pytest

USERS = ["Sort these numbers: 3 1 2", "Name a fruit.", "What is 2+2?", "Say hello.",
         "Sort these letters: b a c", "Name a colour.", "What is 3+4?", "Greet me briefly."]
GOOD = ["1 2 3", "Apple.", "4", "Hello!", "a b c", "Blue.", "7", "Hi there!"]
BAD = ["3 2 1", "A car.", "5", "Goodbye.", "c b a", "Seven.", "12", "No."]


def pair_rows(n: int = 8, system_every: int = 0, scores: bool = False) -> list[dict]:
    """`n` conversational pairs; every `system_every`-th prompt (if > 0) carries its own system
    turn, the others get SmolLM2's injected default system prompt from its template."""
    rows = []
    for i in range(n):
        prompt = [{"role": "user", "content": USERS[i]}]
        if system_every and i % system_every == 0:
            prompt = [{"role": "system", "content": "Answer in as few words as possible."}] + prompt
        row = dict(prompt=prompt, chosen=[{"role": "assistant", "content": GOOD[i]}],
                   rejected=[{"role": "assistant", "content": BAD[i]}])
        if scores:
            row.update(score_chosen=float(7 + i % 3), score_rejected=float(2 + i % 4))
        rows.append(row)
    return rows


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
