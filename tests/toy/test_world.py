"""The world's tokenizer and a small base policy: it trains, caches and samples."""

import json
import os

import pytest

from prefkit.toy import task
from prefkit.toy.world import ToyWorldConfig, base_policy, world_tokenizer

SMALL = ToyWorldConfig(hidden=32, heads=2, n_demos=200, steps=20, batch_size=16, lr=5e-3)


def test_tokenizer_has_system_role_and_covers_conditioning():
    tok = world_tokenizer(SMALL)
    msgs = [{"role": "system", "content": "Overall score: 7."},
            {"role": "user", "content": "Sort these words alphabetically: kiwi apple fig"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert "<|im_start|>system\nOverall score: 7.<|im_end|>" in text
    ids = tok("Overall score: 7.", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == "Overall score: 7." and len(ids) <= 6
    for w in task.ITEMS:  # each fruit name is a single token after a space
        assert len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1


def test_micro_batched_pretraining_gradient_is_the_whole_batch_gradient():
    """Pretraining runs each batch as length-sorted micro-batches; the loss and its gradient are
    the one padded batch's (HF's own causal-LM loss), up to rounding."""
    import random

    import torch

    from prefkit.toy.tiny import tiny_causal_lm
    from prefkit.toy.world import batch_backward

    tok = world_tokenizer(SMALL)
    model = tiny_causal_lm(tok, arch="llama", hidden=32, layers=2, heads=2, max_position=512, seed=0)
    rng = random.Random(0)
    batch = [([rng.randrange(5, 300) for _ in range(rng.randrange(3, 40))],
              [rng.randrange(5, 300) for _ in range(rng.randrange(1, 12))]) for _ in range(13)]
    width = max(len(p) + len(r) for p, r in batch)
    ids = torch.full((len(batch), width), tok.pad_token_id)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, (p, r) in enumerate(batch):
        ids[b, :len(p) + len(r)] = torch.tensor(p + r)
        labels[b, len(p):len(p) + len(r)] = torch.tensor(r)
        mask[b, :len(p) + len(r)] = 1
    whole = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    whole.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = batch_backward(model, batch, tok.pad_token_id, micro_batches=4)
    assert loss == pytest.approx(float(whole), rel=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-6)


def test_base_policy_trains_caches_and_samples(tmp_path):
    import json

    from prefkit.generate import generate

    path = base_policy(SMALL, cache_dir=tmp_path, progress=False)
    meta = json.loads((path / "prefkit_toy_world.json").read_text())
    assert meta["final_loss"] < meta["first_loss"] - 1.0
    stamp = (path / "prefkit_toy_world.json").stat().st_mtime_ns
    assert base_policy(SMALL, cache_dir=tmp_path, progress=False) == path  # cached: no retraining
    assert (path / "prefkit_toy_world.json").stat().st_mtime_ns == stamp
    assert ToyWorldConfig(hidden=32, heads=2, n_demos=200, steps=26, batch_size=16, lr=5e-3).key() != SMALL.key()
    prompts = task.make_prompts(4, seed=9)
    out = generate(path, prompts, n=3, max_new_tokens=12, seed=0, progress=False)
    assert [len(o) for o in out] == [3, 3, 3, 3]
    assert all(isinstance(s, str) for o in out for s in o)
    scores = [task.gold_reward(p, s) for p, o in zip(prompts, out) for s in o]
    assert all(1.0 <= s <= 10.0 for s in scores)


def test_goal_prior_conditions_a_share_of_the_same_demonstrations_as_the_relabeler_would():
    from prefkit.relabel import condition, make_spec

    plain = ToyWorldConfig(n_demos=400, goal_prior=0.0, goal_noise=0.0)
    prior = ToyWorldConfig(n_demos=400, goal_prior=0.5, goal_noise=1.0)
    rows0 = world_demos(plain)
    rows = world_demos(prior)
    assert [r["response"] for r in rows] == [r["response"] for r in rows0]  # the prior changes only the prompts
    assert all(r["goal"] is None for r in rows0)
    with_goal = [(r, r0) for r, r0 in zip(rows, rows0) if r["goal"] is not None]
    assert 150 <= len(with_goal) <= 250  # about half of 400
    spec = make_spec(placement="system")
    for r, r0 in with_goal:
        assert 1.0 <= r["goal"] <= 10.0 and (2 * r["goal"]).is_integer()
        assert r["messages"] == condition(r0["messages"], goal=r["goal"], spec=spec)
        assert r["messages"][0]["role"] == "system"
    for r, r0 in zip(rows, rows0):
        if r["goal"] is None:
            assert r["messages"] == r0["messages"]
    # the goal is the gold score plus noise: correlated with it, not equal to it
    import statistics

    goals = [r["goal"] for r, _ in with_goal]
    golds = [r["gold"] for r, _ in with_goal]
    assert statistics.correlation(goals, golds) > 0.5
    assert sum(abs(g - round(2 * x) / 2) > 0 for g, x in zip(goals, golds)) > len(goals) / 4
    assert plain.key() != prior.key() != ToyWorldConfig(n_demos=400, goal_prior=0.5, goal_noise=2.0).key()


def world_demos(cfg):
    from prefkit.toy.world import demonstrations

    return demonstrations(cfg.n_demos, seed=3, config=cfg)


def test_goal_following_curve_conditions_each_goal_and_fits_its_slope(tmp_path):
    import numpy as np

    from prefkit.evaluate.policy import PolicySpec
    from prefkit.toy.world import conditioning_spec, goal_following_curve, gold_evaluation

    path = base_policy(SMALL, cache_dir=tmp_path, progress=False)
    prompts = task.make_prompts(6, seed=11)
    curve = goal_following_curve(path, prompts, (2, 6, 10), n=2, max_new_tokens=8, seed=4)
    assert curve["goals"] == [2, 6, 10] and len(curve["gold"]) == 3
    assert abs(curve["slope"] - np.polyfit(curve["goals"], curve["gold"], 1)[0]) < 1e-9
    by_hand = gold_evaluation({"g6": PolicySpec("g6", str(path), conditioning=conditioning_spec(), goal=6)},
                              prompts, n=2, max_new_tokens=8, seed=4)
    assert curve["gold"][1] == by_hand["policies"]["g6"]["reward_fn"]["mean"]


def test_two_processes_needing_one_base_build_it_once(tmp_path):
    """Two processes that ask for the same uncached base at once: the second waits for the first
    (a lock per base) and loads its result; it does not train it again and replace the directory
    the first is reading (same directory inode and metadata seen by both, one pretraining)."""
    import subprocess
    import sys

    code = ("import json, os, sys; from prefkit.toy.world import ToyWorldConfig, base_policy; "
            "c = ToyWorldConfig(hidden=32, heads=2, n_demos=200, steps=20, batch_size=16, lr=5e-3); "
            f"p = base_policy(c, cache_dir={str(tmp_path)!r}, progress=False); "
            "print(json.dumps([str(p), os.stat(p).st_ino, (p / 'prefkit_toy_world.json').read_text()]))")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS="1")) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1]
    path = outs[0][0]
    assert os.stat(path).st_ino == outs[0][1] and sorted(x.name for x in tmp_path.iterdir() if x.is_dir()) == [
        os.path.basename(path)]                                     # no leftover build directory
