"""The world's tokenizer and a small base policy: it trains, caches and samples."""

import time

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


def test_base_policy_trains_caches_and_samples(tmp_path):
    import json

    from prefkit.generate import generate

    path = base_policy(SMALL, cache_dir=tmp_path, progress=False)
    meta = json.loads((path / "prefkit_toy_world.json").read_text())
    assert meta["final_loss"] < meta["first_loss"] - 1.0
    t = time.time()
    assert base_policy(SMALL, cache_dir=tmp_path, progress=False) == path  # cached: no retraining
    assert time.time() - t < 1.0
    assert ToyWorldConfig(hidden=32, heads=2, n_demos=200, steps=26, batch_size=16, lr=5e-3).key() != SMALL.key()
    prompts = task.make_prompts(4, seed=9)
    out = generate(path, prompts, n=3, max_new_tokens=12, seed=0, progress=False)
    assert [len(o) for o in out] == [3, 3, 3, 3]
    assert all(isinstance(s, str) for o in out for s in o)
    scores = [task.gold_reward(p, s) for p, o in zip(prompts, out) for s in o]
    assert all(1.0 <= s <= 10.0 for s in scores)
