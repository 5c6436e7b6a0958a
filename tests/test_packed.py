"""Prefix-shared, unpadded forwards (prefkit.packed) against the padded concatenated forward:
values, gradients, eps-DPO's perturbed log-probs, scoring, and the layout itself."""

from __future__ import annotations

import datasets
import pytest
import torch

from prefkit.logprobs import concatenated_forward, score_logps, sequence_logps
from prefkit.packed import packed_pair_logps, packing_supported, plan_logps, plan_pairs, scored_hidden
from prefkit.train.eps_dpo import perturbation, perturbed_sequence_logps
from prefkit.tokenize import PairCollator, encode_pairs

ROWS = [
    dict(prompt=[{"role": "user", "content": "Sort 3 1 2."}], chosen=[{"role": "assistant", "content": "1 2 3"}],
         rejected=[{"role": "assistant", "content": "3 2 1, which is the wrong order"}]),
    dict(prompt=[{"role": "user", "content": "List fruit, please: the ones you like."}],
         chosen=[{"role": "assistant", "content": "apple, banana, cherry, date"}],
         rejected=[{"role": "assistant", "content": "no"}]),
    dict(prompt=[{"role": "user", "content": "The quick brown fox?"}],
         chosen=[{"role": "assistant", "content": "jumps over the lazy dog."}],
         rejected=[{"role": "assistant", "content": "sleeps."}]),
    dict(prompt=[{"role": "user", "content": "Count to five."}],
         chosen=[{"role": "assistant", "content": "one two three four five"}],
         rejected=[{"role": "assistant", "content": "one two four"}]),
]


def make_batch(tok, rows=ROWS):
    enc = encode_pairs(datasets.Dataset.from_list(rows), tok)
    assert len(enc) == len(rows)
    return PairCollator.for_tokenizer(tok)(list(enc))


def tiny(tok, arch, impl, seed=0, **cfg):
    from transformers import AutoModelForCausalLM, Gemma2Config

    from prefkit.toy.tiny import tiny_causal_lm

    if arch == "gemma2":  # Gemma-2: logit softcapping, sliding-window layers, tied embeddings
        torch.manual_seed(seed)
        config = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id, final_logit_softcapping=3.0,
                              **{"sliding_window": 256, **cfg})
        model = AutoModelForCausalLM.from_config(config).eval()
    else:
        model = tiny_causal_lm(tok, arch=arch, seed=seed)
    model.set_attn_implementation(impl)
    return model


def padded_and_packed(model, batch, pad_tolerance):
    """(padded logps, padded grads, packed logps, packed grads, plan) for loss = sum(c) - 0.5 sum(r)."""
    b = batch["input_ids"].shape[0] // 2
    f = concatenated_forward(model, batch, chunk_size=5)
    (f.chosen_logps.sum() - 0.5 * f.rejected_logps.sum()).backward()
    g_pad = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    plan = plan_pairs(batch, pad_tolerance=pad_tolerance)
    out = plan_logps(scored_hidden(model, plan), plan, chunk_size=5)
    (out.logps[:b].sum() - 0.5 * out.logps[b:].sum()).backward()
    g_pack = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert g_pack.keys() == g_pad.keys()
    return torch.cat([f.chosen_logps, f.rejected_logps]), g_pad, out, g_pack, plan, f


@pytest.mark.parametrize("arch,fixture,impl", [
    ("llama", "llama3_tokenizer", "sdpa"), ("llama", "llama3_tokenizer", "eager"),
    ("qwen2", "chatml_tokenizer", "sdpa"), ("qwen2", "chatml_tokenizer", "eager"),
    ("llama", "gemma_tokenizer", "sdpa"),
    ("gemma2", "gemma_tokenizer", "eager"),  # transformers runs Gemma-2 with eager attention only
])
@pytest.mark.parametrize("pad_tolerance", [0.0, 0.9])
def test_packed_equals_padded_values_and_gradients(arch, fixture, impl, pad_tolerance, request):
    tok = request.getfixturevalue(fixture)
    model = tiny(tok, arch, impl)
    rows = [r for r in ROWS if r["prompt"][0]["role"] == "user"]
    batch = make_batch(tok, rows)
    padded, g_pad, out, g_pack, plan, f = padded_and_packed(model, batch, pad_tolerance)
    assert torch.allclose(out.logps, padded, atol=2e-5, rtol=0), (out.logps - padded).abs().max()
    assert torch.equal(out.lengths, torch.cat([f.chosen_lengths, f.rejected_lengths]))
    for name, g in g_pad.items():
        assert torch.allclose(g_pack[name], g, atol=1e-4, rtol=1e-3), name
    assert any(g.abs().sum() > 0 for g in g_pack.values())
    if pad_tolerance == 0.0:  # no padding: the forwards process exactly the packed tokens
        assert plan.tokens == sum(plan.packed_lengths)
    else:                     # a tolerant plan shares forwards (and pads), with the same results
        assert len(plan.groups) < len(rows)


def test_the_packed_layout_shares_the_prompt_and_hides_chosen_from_rejected(llama3_tokenizer):
    batch = make_batch(llama3_tokenizer)
    b = batch["input_ids"].shape[0] // 2
    plan = plan_pairs(batch)
    real = batch["attention_mask"].sum(1)
    resp = batch["response_mask"].sum(1)
    prompts = (real - resp)[:b]
    # one row per pair: prompt once, then chosen, then rejected, against 2 padded rows per pair
    assert sorted(plan.packed_lengths) == sorted((prompts + resp[:b] + resp[b:]).tolist())
    assert plan.tokens == sum(plan.packed_lengths) < batch["input_ids"].numel()
    assert len(plan.groups) == len(set(plan.packed_lengths))
    g = plan.groups[0]
    L = g.input_ids.shape[1]
    i = plan.packed_lengths.index(L)
    P, C, R = int(prompts[i]), int(resp[i]), int(resp[b + i])
    assert g.position_ids[0].tolist() == list(range(P + C)) + list(range(P, P + R))
    allowed = g.allowed[0]
    assert allowed[P + C:, P:P + C].sum() == 0                      # rejected never sees chosen
    assert allowed[P + C:, :P].all() and allowed[P:P + C, :P].all()  # both see the whole prompt
    assert torch.equal(allowed[:P + C, :P + C], torch.ones(P + C, P + C, dtype=torch.bool).tril())
    assert torch.equal(g.input_ids[0, :P + C], batch["input_ids"][i, :P + C])
    assert torch.equal(g.input_ids[0, P + C:], batch["input_ids"][b + i, P:P + R])


def test_eps_dpo_perturbed_and_reference_logps_from_the_policy_chunks(llama3_tokenizer):
    tok = llama3_tokenizer
    policy, reference = tiny(tok, "llama", "sdpa", seed=1), tiny(tok, "llama", "sdpa", seed=2)
    batch = make_batch(tok)
    args = (batch["input_ids"], batch["response_mask"], batch["attention_mask"])
    with torch.no_grad():  # expected: from the full logits of the unpacked rows
        ref_seq = sequence_logps(reference, *args)
        fp = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        fr = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        exp_minus, exp_plus = perturbed_sequence_logps(fp, fr, batch["input_ids"], batch["response_mask"], 0.1)
    plan = plan_pairs(batch)
    with torch.no_grad():
        ref_hidden = scored_hidden(reference, plan)
    out = plan_logps(scored_hidden(policy, plan), plan, chunk_size=4, ref_head=ref_hidden, statistic=perturbation(0.1))
    minus, plus = out.statistics
    assert out.logps.requires_grad and not minus.requires_grad
    assert torch.allclose(out.ref_logps, ref_seq.logps, atol=2e-5)
    assert torch.allclose(minus, exp_minus, atol=2e-5) and torch.allclose(plus, exp_plus, atol=2e-5)
    # the same under no_grad (evaluation)
    with torch.no_grad():
        ev = plan_logps(scored_hidden(policy, plan), plan, ref_head=ref_hidden, statistic=perturbation(0.1))
    assert torch.allclose(ev.statistics[0], minus, atol=1e-5) and torch.allclose(ev.logps, out.logps.detach(), atol=1e-5)


def test_sliding_window_and_other_attention_fall_back(gemma_tokenizer, llama3_tokenizer):
    batch = make_batch(gemma_tokenizer, [r for r in ROWS if r["prompt"][0]["role"] == "user"])
    plan = plan_pairs(batch)
    narrow = tiny(gemma_tokenizer, "gemma2", "eager", sliding_window=8)
    ok, why = packing_supported(narrow, plan)
    assert not ok and "sliding window (8)" in why
    assert packing_supported(tiny(gemma_tokenizer, "gemma2", "eager"), plan) == (True, "")
    model = tiny(llama3_tokenizer, "llama", "sdpa")
    model.config._attn_implementation = "flash_attention_2"
    ok, why = packing_supported(model, plan)
    assert not ok and "flash_attention_2" in why


def test_a_batch_that_is_not_pairs_is_refused(llama3_tokenizer):
    batch = make_batch(llama3_tokenizer)
    swapped = dict(batch, input_ids=batch["input_ids"].clone())
    swapped["input_ids"][0, 0] = swapped["input_ids"][0, 0] + 1
    with pytest.raises(ValueError, match="pair 0: the chosen and rejected rows do not share their prompt"):
        plan_pairs(swapped)


def test_score_logps_packed_equals_padded(llama3_tokenizer, tiny_llama):
    ds = datasets.Dataset.from_list(ROWS)
    packed = score_logps(tiny_llama, llama3_tokenizer, ds, batch_size=3, progress=False, reference=tiny_llama)
    padded = score_logps(tiny_llama, llama3_tokenizer, ds, batch_size=3, progress=False, reference=tiny_llama,
                         forward="padded")
    for col in ("logps_chosen", "logps_rejected", "ref_logps_chosen", "ref_logps_rejected"):
        assert packed[col] == pytest.approx(padded[col], abs=2e-5)
    assert packed["len_chosen"] == padded["len_chosen"] and packed["len_rejected"] == padded["len_rejected"]


@pytest.mark.slow
def test_packed_equals_padded_on_the_real_model(smollm2_dir):
    from prefkit.models import load_pretrained, load_tokenizer

    tok = load_tokenizer(smollm2_dir, pad_with_eos=True)
    model = load_pretrained(smollm2_dir, dtype="float32")
    batch = make_batch(tok, ROWS[:3])
    padded, g_pad, out, g_pack, plan, _ = padded_and_packed(model, batch, 0.0)
    assert plan.tokens < batch["input_ids"].numel()
    assert torch.allclose(out.logps, padded, atol=1e-3, rtol=1e-5), (out.logps - padded).abs().max()
    for name, g in g_pad.items():
        scale = g.abs().max().clamp(min=1e-6)
        assert (g_pack[name] - g).abs().max() / scale < 1e-3, name
    with torch.no_grad():
        assert torch.allclose(packed_pair_logps(model, batch).logps, padded, atol=1e-3, rtol=1e-5)


def test_identical_responses_are_computed_once_and_equal(llama3_tokenizer, tiny_llama):
    rows = [dict(ROWS[0], rejected=ROWS[0]["chosen"]), ROWS[1]]
    enc = encode_pairs(datasets.Dataset.from_list(rows), llama3_tokenizer)
    batch = PairCollator.for_tokenizer(llama3_tokenizer)(list(enc))
    plan = plan_pairs(batch)
    assert plan.same.tolist() == [0]
    real = batch["attention_mask"].sum(1)
    assert sorted(plan.packed_lengths)[0] == int(real[0])  # prompt + chosen only
    out = packed_pair_logps(tiny_llama, batch)
    assert out.logps[0] == out.logps[2] and out.lengths[0] == out.lengths[2]
    f = concatenated_forward(tiny_llama, batch)
    assert torch.allclose(out.logps, torch.cat([f.chosen_logps, f.rejected_logps]), atol=2e-5)


def test_lora_and_gradient_checkpointing_go_through_the_packed_path(llama3_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = tiny(llama3_tokenizer, "llama", "sdpa")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    batch = make_batch(llama3_tokenizer)
    padded, g_pad, out, g_pack, _, _ = padded_and_packed(peft_model, batch, 0.0)
    assert torch.allclose(out.logps, padded, atol=2e-5)
    lora = [n for n in g_pad if "lora_" in n]
    assert lora and all(torch.allclose(g_pack[n], g_pad[n], atol=1e-4, rtol=1e-3) for n in lora)
    with torch.no_grad(), peft_model.disable_adapter():  # the reference
        ref = packed_pair_logps(peft_model, batch)
        ref_pad = concatenated_forward(peft_model, batch)
    assert torch.allclose(ref.logps, torch.cat([ref_pad.chosen_logps, ref_pad.rejected_logps]), atol=2e-5)
    assert not torch.allclose(ref.logps, out.logps.detach())
