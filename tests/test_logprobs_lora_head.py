"""LoRA on the LM head (`lm_head` in lora_target_modules): the hidden-state log-prob path scores
with the adapter exactly as the model's own forward does (it used to read the base weight only,
off by nats, and the head's adapter never trained)."""

from __future__ import annotations

import torch

from prefkit.logprobs import concatenated_forward, sequence_logps


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


def test_eps_dpo_head_carries_the_adapter(tiny_llama):
    model = _lora(tiny_llama).eval()
    ids, resp = _batch(2)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": resp}
    with torch.no_grad():
        fwd = concatenated_forward(model, batch, return_head=True)
        full = model(input_ids=ids).logits[:, :-1]
        h = fwd.head.hidden[:, :-1]
        torch.testing.assert_close(fwd.head.logits(h.reshape(-1, h.shape[-1])),
                                   full.reshape(-1, full.shape[-1]).float(), rtol=1e-5, atol=1e-4)


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


def test_packed_forward_defers_to_the_padded_path_for_a_head_adapter(tiny_llama):
    """The packed chunks' backward uses the head's own weight, so a LoRA adapter on the head
    sends the trainer (and score_logps) to the padded path, which applies it."""
    from peft import LoraConfig, get_peft_model

    from prefkit.packed import packing_supported

    assert packing_supported(tiny_llama)[0]
    model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules=["q_proj", "lm_head"], lora_dropout=0.0))
    ok, why = packing_supported(model)
    assert not ok and "LoRA adapters on the LM head" in why
    with model.disable_adapter():
        assert packing_supported(model)[0]   # the adapter-disabled reference packs as the base model
