"""The toy task's gold reward against hand-computed cases."""

import random

import pytest

from prefkit.toy import task

P = "Sort these words alphabetically: kiwi apple fig"


@pytest.mark.parametrize("response, cov, order, conc, overall", [
    ("apple fig kiwi", 1, 1, 1, 10.0),
    # all words, prompt order: only (apple, fig) of the 3 pairs is in order
    ("kiwi apple fig", 1, 1 / 3, 1, 1 + 9 * (0.4 + 0.4 / 3 + 0.2)),
    # chatter + a repeat + a missing word: 2 of 3 covered, (apple, kiwi) ordered, 2 useful of 4 words
    ("sure apple apple kiwi", 2 / 3, 1 / 3, 0.5, 1 + 9 * (0.4 * 2 / 3 + 0.4 / 3 + 0.1)),
    ("Apple, fig, kiwi.", 1, 1, 1, 10.0),
    ("", 0, 0, 0, 1.0),
    ("banana", 0, 0, 0, 1.0),
    ("kiwi", 1 / 3, 0, 1, 1 + 9 * (0.4 / 3 + 0.2)),
])
def test_gold_aspects_hand_computed(response, cov, order, conc, overall):
    a = task.gold_aspects(P, response)
    assert a.coverage == pytest.approx(cov)
    assert a.order == pytest.approx(order)
    assert a.conciseness == pytest.approx(conc)
    assert task.gold_reward(P, response) == pytest.approx(overall)
    assert a.overall == pytest.approx(overall)


def test_conversational_and_conditioned_prompts():
    msgs = [{"role": "system", "content": "Overall score: 7."}, {"role": "user", "content": P}]
    resp = [{"role": "assistant", "content": "apple fig kiwi"}]
    assert task.gold_reward(msgs, resp) == pytest.approx(10.0)
    # a string prompt with a conditioning prefix before the instruction (string placement)
    assert task.requested_items("Rate 1 to 10.\nOverall score: 7.\n\n" + P) == ["kiwi", "apple", "fig"]


def test_not_a_task_prompt_is_an_error():
    with pytest.raises(ValueError, match="not a toy-task prompt"):
        task.requested_items("hello there")


def test_demonstrations_span_quality():
    rng = random.Random(0)
    prompts = task.make_prompts(300, seed=1)
    assert all(task.gold_reward(p, task.noisy_demonstration(p, rng, 1.0)) == 10.0 for p in prompts[:50])
    low = [task.gold_reward(p, task.noisy_demonstration(p, rng, 0.0)) for p in prompts]
    assert min(low) < 4 and sum(low) / len(low) < 7.5
    k = [len(task.requested_items(p)) for p in prompts]
    assert min(k) == 3 and max(k) == 6
