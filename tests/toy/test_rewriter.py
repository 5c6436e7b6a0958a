"""The toy rewriter answers prefkit.synth's own prompts (fast: no model is loaded for these)."""

import asyncio
import random
import statistics

from prefkit.synth import prompts as P
from prefkit.synth.backends import SamplingParams
from prefkit.synth.parsing import extract_tag, parse_aspect_list, parse_ratings, parse_verdict
from prefkit.toy import task
from prefkit.toy.rewriter import ToyRewriter

GUIDE = {a: "" for a in task.ASPECTS}


def _ask(rw, messages):
    return asyncio.run(rw.complete(messages, SamplingParams())).text


def test_rewrites_move_gold_reward_in_the_requested_direction(tmp_path):
    rw = ToyRewriter(tmp_path / "unused-base", seed=0)
    rng = random.Random(0)
    moves = {"better": [], "worse": []}
    for p in task.make_prompts(60, seed=7):
        y1 = task.noisy_demonstration(p, rng, rng.random())
        for label, deltas in moves.items():
            aspects = None if rng.random() < 0.5 else rng.sample(task.ASPECTS, 2)
            raw = _ask(rw, P.rmboost_rewrite([{"role": "user", "content": p}], y1, label, GUIDE, aspects))
            y2 = extract_tag(raw, "response")
            assert y2.text is not None and y2.issue is None, raw
            named, unknown = parse_aspect_list(extract_tag(raw, "aspects").text, list(GUIDE))
            assert named and not unknown
            if aspects:
                assert named == aspects
            deltas.append(task.gold_reward(p, y2.text) - task.gold_reward(p, y1))
    assert statistics.fmean(moves["better"]) > 0.2
    assert statistics.fmean(moves["worse"]) < -0.2
    # imperfect: not every rewrite moves the way it was asked
    assert any(d <= 0 for d in moves["better"]) and any(d >= 0 for d in moves["worse"])


def test_judge_prompts_get_the_noisy_toy_judge():
    rw = ToyRewriter("unused-base", seed=0)
    p = "Sort these words alphabetically: pear apple fig"
    msgs = [{"role": "user", "content": p}]
    v, issue = parse_verdict(_ask(rw, P.pairwise_judge(msgs, "pear", "apple fig pear", GUIDE)))
    assert v == "B" and issue is None
    v, _ = parse_verdict(_ask(rw, P.pairwise_judge(msgs, "apple fig pear", "pear", GUIDE)))
    assert v == "A"
    r = parse_ratings(_ask(rw, P.ultrafeedback_judge(msgs, "apple fig pear")), list(P.ULTRAFEEDBACK_JUDGE_ASPECTS))
    assert r.complete and r.overall >= 8


def test_evolve_rewrites_are_harder_sorting_prompts(tmp_path):
    from prefkit.select.evolve import OPERATIONS, check_rewrite, evolve_messages, parse_evolved

    rw = ToyRewriter(tmp_path / "unused-base", seed=0)
    failed, by_op = 0, {op: [] for op in OPERATIONS}
    for p in task.make_prompts(40, seed=11):
        for op in OPERATIONS:
            evolved = parse_evolved(_ask(rw, evolve_messages(p, op)))
            if evolved is None:
                failed += 1
                continue
            assert check_rewrite(p, evolved) is None, (p, evolved)   # the evolve stage keeps it
            by_op[op].append((task.requested_items(p), task.requested_items(evolved)))
    assert 0 < failed < 0.25 * 40 * len(OPERATIONS)                    # some replies miss their tags
    for op, got in by_op.items():
        for old, new in got:
            if op == "broaden":                                        # as many words, other ones
                assert len(new) == len(old) and not set(new) & set(old)
            else:                                                      # one or two more words to sort
                assert set(old) < set(new) and len(new) - len(old) in ((1,) if op == "concretise" else (1, 2))
    assert _ask(rw, evolve_messages("Write a poem about the sea.", "deepen")) == "I cannot rewrite this instruction."
