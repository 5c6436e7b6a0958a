"""prefkit.generate: chat template, left padding, seeding, and automatic reward conditioning."""

import pytest
from helpers import save_tiny

from prefkit.generate import generate, render_prompts, resolve_conditioning


@pytest.fixture()
def model_dir(tmp_path, chatml_tokenizer):
    save_tiny(tmp_path / "m", chatml_tokenizer, intermediate=None, max_position=2048, seed=1)
    return tmp_path / "m"


def as_messages(p):
    return [{"role": "user", "content": p}] if isinstance(p, str) else p


PROMPTS = ["Sort these words alphabetically: kiwi apple fig", "List alphabetically: plum date",
           [{"role": "user", "content": "Put these words in alphabetical order: pear lime olive mango"}]]


def test_seeded_and_shapes(model_dir):
    a = generate(model_dir, PROMPTS, n=2, max_new_tokens=6, seed=3, progress=False)
    b = generate(model_dir, PROMPTS, n=2, max_new_tokens=6, seed=3, progress=False)
    assert a == b and [len(x) for x in a] == [2, 2, 2]


def test_left_padding_matches_unbatched(model_dir):
    batched = generate(model_dir, PROMPTS, n=1, temperature=0, max_new_tokens=6, batch_size=8, progress=False)
    single = [generate(model_dir, [p], n=1, temperature=0, max_new_tokens=6, progress=False)[0] for p in PROMPTS]
    assert batched == single


def test_conditioning_file_applied_automatically(model_dir, chatml_tokenizer):
    from prefkit.relabel import condition, make_spec

    assert resolve_conditioning(model_dir) is None
    spec = make_spec(placement="system")
    spec.save(model_dir)
    loaded = resolve_conditioning(model_dir)
    assert loaded is not None
    texts = render_prompts(PROMPTS[:1], chatml_tokenizer, spec=loaded)
    assert "<|im_start|>system\n" in texts[0] and "Overall score: 10." in texts[0]
    assert "Overall score: 3." in render_prompts(PROMPTS[:1], chatml_tokenizer, spec=loaded, goal=3)[0]
    auto = generate(model_dir, PROMPTS, n=1, temperature=0, max_new_tokens=6, progress=False)
    manual = generate(model_dir, [condition(as_messages(p), goal=10, spec=loaded) for p in PROMPTS], n=1, temperature=0,
                      max_new_tokens=6, conditioning=None, progress=False)
    assert auto == manual
    low = generate(model_dir, PROMPTS, n=1, temperature=0, max_new_tokens=6, goal=3, progress=False)
    manual_low = generate(model_dir, [condition(as_messages(p), goal=3, spec=loaded) for p in PROMPTS], n=1, temperature=0,
                          max_new_tokens=6, conditioning=None, progress=False)
    assert low == manual_low


def test_model_object_needs_tokenizer(chatml_tokenizer):
    from prefkit.errors import ConfigError
    from prefkit.toy.tiny import tiny_causal_lm

    model = tiny_causal_lm(chatml_tokenizer, hidden=32, heads=2)
    with pytest.raises(ConfigError, match="tokenizer"):
        generate(model, PROMPTS, progress=False)
    out = generate(model, PROMPTS, tokenizer=chatml_tokenizer, max_new_tokens=4, progress=False)
    assert len(out) == 3
