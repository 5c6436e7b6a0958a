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


# --- the "hf" engine's decoding loop (prefkit.hf_decode) against plain HF `generate` ---

MIXED = ["a", "Sort these words alphabetically: kiwi apple fig banana cherry", "List alphabetically: plum date",
         "Put these in order: z y", "List alphabetically: fig kiwi lime mango olive pear quince"]


def hf_generate_greedy(model_dir, prompts, max_new_tokens, eos_ids=None):
    """Plain HF `generate`, greedy, on the prompts left-padded in one batch (the reference)."""
    import torch

    from prefkit.models import load_causal_lm

    model, tok = load_causal_lm(str(model_dir))
    texts = render_prompts(prompts, tok)
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=eos_ids or [tok.eos_token_id])
    new = gen[:, enc["input_ids"].shape[1]:]
    return [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)], new


def test_greedy_identical_to_plain_hf_generate_in_prompt_order(model_dir):
    ref, _ = hf_generate_greedy(model_dir, MIXED, 10)
    # batch_size 4 with n=2: two prompts per batch, batches formed in length order, not input order
    ours = generate(model_dir, MIXED, n=2, temperature=0, max_new_tokens=10, batch_size=4, progress=False)
    assert ours == [[r, r] for r in ref]
    assert len(set(ref)) > 2  # the prompts give different texts: a reordering would show
    whole = generate(model_dir, MIXED, n=2, temperature=0, max_new_tokens=10, progress=False)  # batch by memory
    assert whole == ours


def test_rows_that_end_leave_the_batch_and_the_rest_match_hf(model_dir, chatml_tokenizer):
    """An end token chosen from one prompt's greedy text: that row ends early in HF `generate` and
    in prefkit's loop (which drops it from the batch); every text still equals HF's."""
    import json

    _, new = hf_generate_greedy(model_dir, MIXED, 10)
    stop = int(new[1, 3])  # prompt 1's fourth token ends its answer
    cfg_path = model_dir / "generation_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg["eos_token_id"] = [chatml_tokenizer.eos_token_id, stop]
    cfg_path.write_text(json.dumps(cfg))
    ref, ref_ids = hf_generate_greedy(model_dir, MIXED, 10, eos_ids=cfg["eos_token_id"])
    ended = [(row == stop).any().item() for row in ref_ids]
    assert any(ended) and not all(ended)  # some rows ended early, others went on
    ours = generate(model_dir, MIXED, n=3, temperature=0, max_new_tokens=10, progress=False)
    assert ours == [[r] * 3 for r in ref]


def test_samples_split_over_batches_seeded(model_dir):
    """n larger than the batch: a prompt's samples spread over batches, still n per prompt, seeded."""
    a = generate(model_dir, MIXED[:2], n=5, max_new_tokens=6, batch_size=2, seed=1, progress=False)
    b = generate(model_dir, MIXED[:2], n=5, max_new_tokens=6, batch_size=2, seed=1, progress=False)
    assert a == b and [len(x) for x in a] == [5, 5]
    assert len(set(a[0])) > 1  # sampled, not greedy


def test_batch_rows_by_memory(model_dir, monkeypatch):
    from prefkit import hf_decode
    from prefkit.models import load_causal_lm

    model, _ = load_causal_lm(str(model_dir))
    per_token = hf_decode.kv_bytes_per_token(model)
    cfg = model.config
    assert per_token == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    monkeypatch.setattr(hf_decode, "free_memory_bytes", lambda device: 40 * per_token * 100)
    assert hf_decode.batch_rows(model, 100) == 10  # a quarter of the free memory
    monkeypatch.setattr(hf_decode, "free_memory_bytes", lambda device: 0)
    assert hf_decode.batch_rows(model, 100) == 1
    monkeypatch.setattr(hf_decode, "free_memory_bytes", lambda device: 10**15)
    assert hf_decode.batch_rows(model, 100) == hf_decode.MAX_AUTO_ROWS


@pytest.mark.slow
def test_smollm2_greedy_identical_to_plain_hf_generate(smollm2_dir):
    prompts = ["Write a short poem about rain.", "List three facts about the moon.", "What is 2 + 2?",
               "Explain coffee to a child in two sentences.", "Describe a city at night in one paragraph."]
    ref, _ = hf_generate_greedy(smollm2_dir, prompts, 24)
    ours = generate(smollm2_dir, prompts, n=2, temperature=0, max_new_tokens=24, batch_size=4, progress=False)
    assert ours == [[r, r] for r in ref]
