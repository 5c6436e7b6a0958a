"""LoRA on the LM head (`lm_head` in lora_target_modules): the hidden-state log-prob path scores
with the adapter exactly as the model's own forward does (it used to read the base weight only,
off by nats, and the head's adapter never trained)."""

from __future__ import annotations

import torch

from prefkit.logprobs import pair_forward, sequence_logps
from prefkit.packed import packing_supported, plan_pairs, plan_rows, scored_hidden


def _lora(model, **kw):
    from peft import LoraConfig, get_peft_model

    opts = dict(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], lora_dropout=0.0,
                init_lora_weights=False)   # random A and B: the adapter moves the logits from the start
    opts.update(kw)
    return get_peft_model(model, LoraConfig(**opts))


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (4, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[:, :5] = 0
    return ids, mask


def test_hidden_path_equals_full_logits_with_the_adapter_on_and_off(tiny_llama):
    model = _lora(tiny_llama).eval()
    ids, resp = _batch()
    with torch.no_grad():
        hidden = sequence_logps(model, ids, resp).logps
        full = sequence_logps(model(input_ids=ids).logits, ids, resp).logps
        with model.disable_adapter():
            base_hidden = sequence_logps(model, ids, resp).logps
            base_full = sequence_logps(model(input_ids=ids).logits, ids, resp).logps
    torch.testing.assert_close(hidden, full, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(base_hidden, base_full, rtol=1e-5, atol=1e-4)
    assert (hidden - base_hidden).abs().max() > 0.1      # the adapter matters, so the check above can fail


def test_gradients_reach_the_head_adapter_as_through_full_logits(tiny_llama):
    model = _lora(tiny_llama).train()
    ids, resp = _batch(1)
    lora_b = model.base_model.model.lm_head.lora_B["default"].weight
    sequence_logps(model, ids, resp, chunk_size=7).logps.sum().backward()
    via_hidden = lora_b.grad.clone()
    model.zero_grad()
    sequence_logps(model(input_ids=ids).logits, ids, resp).logps.sum().backward()
    torch.testing.assert_close(via_hidden, lora_b.grad, rtol=1e-4, atol=1e-5)
    assert via_hidden.abs().sum() > 0


def test_the_scored_hidden_rows_head_carries_the_adapter(tiny_llama):
    """eps-DPO's perturbed policies read the policy's logits from the same head: with the adapter."""
    model = _lora(tiny_llama).eval()
    ids, resp = _batch(2)
    plan = plan_rows(ids, resp)
    with torch.no_grad():
        head = scored_hidden(model, plan)
        full = model(input_ids=ids).logits.reshape(-1, head.weight.shape[0])[plan.groups[0].flat_index]
        torch.testing.assert_close(head.logits(head.hidden), full.float(), rtol=1e-5, atol=1e-4)


def _pair_batch(seed=0):
    """Four pairs sharing their prompts (5 tokens), right padded, chosen rows first."""
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(5, 300, (4, 5), generator=g)
    lens = [(6, 3), (4, 7), (5, 5), (2, 8)]
    t = 5 + max(max(c, r) for c, r in lens)
    ids = torch.zeros(8, t, dtype=torch.long)
    att, resp = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (c, r) in enumerate(lens):
        for row, n in ((i, c), (4 + i, r)):
            ids[row, :5] = prompt[i]
            ids[row, 5:5 + n] = torch.randint(5, 300, (n,), generator=g)
            att[row, :5 + n] = 1
            resp[row, 5:5 + n] = 1
    return {"input_ids": ids, "attention_mask": att, "response_mask": resp}


def test_packed_forward_with_a_head_adapter_equals_padded_values_and_gradients(tiny_llama):
    """Packing takes LoRA heads: the one chunked head applies the adapter in both plans."""
    model = _lora(tiny_llama).train()
    batch = _pair_batch()
    plan = plan_pairs(batch)
    assert packing_supported(model, plan) == (True, "")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    results = []
    for plan_ in (plan_rows(batch["input_ids"], batch["response_mask"], batch["attention_mask"]), plan):
        fwd = pair_forward(model, plan_, chunk_size=5)
        (fwd.chosen_logps.sum() - 0.5 * fwd.rejected_logps.sum()).backward()
        results.append((torch.cat([fwd.chosen_logps, fwd.rejected_logps]).detach(),
                        {n: p.grad.clone() for n, p in params.items()}))
        model.zero_grad()
    (padded, g_pad), (packed, g_pack) = results
    torch.testing.assert_close(packed, padded, rtol=0, atol=2e-5)
    head_b = [n for n in g_pad if "lm_head" in n and "lora_B" in n]
    assert head_b and g_pad[head_b[0]].abs().sum() > 0
    for n, g in g_pad.items():
        torch.testing.assert_close(g_pack[n], g, rtol=1e-3, atol=1e-4, msg=n)


def test_dpo_with_lora_on_lm_head_trains_the_head_adapter(tmp_path, chatml_tokenizer):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent / "train"))
    from train_helpers import base_config, make_pairs, write_jsonl

    from helpers import save_tiny

    from prefkit.train import train_dpo

    model_dir = save_tiny(tmp_path / "m", chatml_tokenizer)
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    cfg = base_config(str(model_dir), data, tmp_path / "out", max_steps=2, use_peft=True, lora_r=4,
                      lora_dropout=0.0, lora_target_modules=["q_proj", "lm_head"], learning_rate=1e-2)
    train_dpo(cfg)
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    head_b = [v for k, v in weights.items() if "lm_head" in k and "lora_B" in k]
    assert head_b and head_b[0].abs().sum() > 0    # LoRA B starts at zero: only a gradient moves it
