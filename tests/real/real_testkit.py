"""Shared by tests/real: the pairs, independent log-probs with plain torch, the CLI run in-process.

(A module name of its own: every test directory has a `conftest`, so tests import from here.)"""

from __future__ import annotations

from helpers import read_jsonl, write_jsonl  # noqa: F401  (shared; real tests import them from here)


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


def response_logps(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """sum_t log p(y_t | x, y_<t) by one plain forward (no prefkit code)."""
    import torch

    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].double()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
    return float(logp[len(prompt_ids) - 1:].sum())


def cli(*argv) -> None:
    from prefkit.cli import main

    rc = main([str(a) for a in argv])
    assert rc == 0, f"prefkit {' '.join(map(str, argv))} exited {rc}"


