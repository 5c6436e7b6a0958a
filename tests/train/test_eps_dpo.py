"""eps-DPO inside the trainer: per-pair beta picked from constructed policy/reference logits,
and the base-beta update after each optimiser step (mean over micro-batches)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from train_helpers import base_config

EPS = 0.1
BETA = 0.2


def _biased_reference(policy, token_id: int, bias: float):
    """The policy with a logit bias on one token: f_ref = f_theta + bias * e_token."""
    ref = copy.deepcopy(policy)
    old = ref.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token_id] = bias
    ref.lm_head = head
    return ref


def _pairs(kinds_per_prompt=("plus", "minus", "same")):
    """Per pair type, the check must pick:
    'plus'  chosen = x (the token the reference favours): z- < z < z+  -> beta+ = beta/(1-eps)
    'minus' rejected = x:                                  z- > z > z+  -> beta- = beta/(1+eps)
    'same'  chosen == rejected: z = z- = z+ = 0                         -> beta
    ('same' pairs exist only in the trainer-level test: reading data drops pairs whose chosen
    equals rejected.)"""
    texts = {"plus": ("x", "y"), "minus": ("y", "x"), "same": ("y", "y")}
    rows, kinds = [], []
    for i in range(4):
        for kind in kinds_per_prompt:
            c, r = texts[kind]
            rows.append({"prompt": [{"role": "user", "content": f"Sort {i} items."}],
                         "chosen": [{"role": "assistant", "content": c}],
                         "rejected": [{"role": "assistant", "content": r}]})
            kinds.append(kind)
    return rows, kinds


@pytest.fixture()
def eps_setup(chatml_tokenizer):
    from datasets import Dataset

    from prefkit.toy.tiny import tiny_causal_lm

    tok = chatml_tokenizer
    policy = tiny_causal_lm(tok, arch="llama", hidden=32, layers=2, heads=2, intermediate=64, max_position=256)
    ref = _biased_reference(policy, tok.convert_tokens_to_ids("x"), bias=4.0)
    rows, kinds = _pairs()
    return tok, policy, ref, Dataset.from_list(rows), kinds


def test_trainer_picks_beta_minus_plus_and_base(eps_setup, tmp_path):
    from prefkit.tokenize import PairCollator, encode_pairs
    from prefkit.train.config import training_arguments
    from prefkit.train.preference_trainer import PreferenceTrainer

    tok, policy, ref, ds, kinds = eps_setup
    cfg = base_config("<mem>", "<mem>", tmp_path / "out", loss_type="eps-dpo", beta=BETA, eps=EPS)
    enc = encode_pairs(ds, tok, max_length=64, max_prompt_length=32)
    trainer = PreferenceTrainer(model=policy, args=training_arguments(cfg), train_dataset=enc,
                                data_collator=PairCollator.for_tokenizer(tok), processing_class=tok,
                                prefkit_config=cfg, reference=ref)
    batch = PairCollator.for_tokenizer(tok)([enc[i] for i in range(len(enc))])
    loss, metrics = trainer.pair_loss(policy, batch, training=True)
    beta_tilde, steps = trainer.beta_control.pending[0]
    want = {"plus": BETA / (1 - EPS), "minus": BETA / (1 + EPS), "same": BETA}
    want_step = {"plus": -1, "minus": 1, "same": 0}
    for i, pair_index in enumerate(batch["meta"]["pair_index"].tolist()):
        kind = kinds[pair_index]
        assert beta_tilde[i].item() == pytest.approx(want[kind], rel=1e-6), (pair_index, kind)
        assert steps[i].item() == want_step[kind]
    assert metrics["eps/frac_plus"] == pytest.approx(1 / 3) and metrics["eps/frac_minus"] == pytest.approx(1 / 3)
    # loss uses the per-pair beta: at init policy == ... no: reference differs, so check the formula directly
    assert torch.isfinite(loss)

    # the base beta after the optimiser step: paper rule = mean of the per-pair beta
    trainer.beta_control.after_step(trainer.accelerator)
    assert trainer.beta_control.base_beta == pytest.approx(sum(want[k] for k in kinds) / len(kinds), rel=1e-6)
    assert trainer.beta_control.pending == []


@pytest.mark.parametrize("rule", ["paper", "code"])
def test_base_beta_update_over_accumulated_micro_batches(eps_setup, tmp_path, rule):
    """A real run: 12 pairs (8 plus, 4 minus), micro-batches of 3 x 4 accumulation = one step of
    12. With learning_rate 0 the policy stays put, so every step sees 2/3 plus and 1/3 minus, and
    the logged base beta must follow the update rule over ALL micro-batches of the step."""
    from datasets import Dataset

    from prefkit.train import train_dpo

    tok, policy, ref, _, _ = eps_setup
    rows, _ = _pairs(("plus", "minus", "plus"))
    ds = Dataset.from_list(rows)
    cfg = base_config("<mem>", None, tmp_path / "out", loss_type="eps-dpo", beta=BETA, eps=EPS,
                      beta_update=rule, learning_rate=0.0, per_device_train_batch_size=3,
                      gradient_accumulation_steps=4, max_steps=2)
    from prefkit.relabel import ConditioningSpec, load_conditioning

    spec = ConditioningSpec(scale_max=5.0)  # in-memory relabeled data hands its spec over directly
    out = train_dpo(cfg, model=policy, ref_model=ref, tokenizer=tok, train_dataset=ds, conditioning=spec)
    assert load_conditioning(out) == spec
    rep = json.loads((Path(out) / "prefkit_train_report.json").read_text())
    logs = [h for h in rep["log_history"] if "loss" in h]
    assert [h["step"] for h in logs] == [1, 2]
    beta = BETA
    for h in logs:
        assert h["eps/frac_plus"] == pytest.approx(2 / 3) and h["eps/frac_minus"] == pytest.approx(1 / 3)
        if rule == "paper":   # mean of the per-pair beta
            beta = beta * (2 / (1 - EPS) + 1 / (1 + EPS)) / 3
        else:                 # beta / (1 + eps * mean(s)), s = -1 (plus) or +1 (minus)
            beta = beta / (1 + EPS * (2 * -1 + 1) / 3)
        assert h["beta/base"] == pytest.approx(beta, rel=1e-6)
    assert rep["final_base_beta"] == pytest.approx(beta, rel=1e-6)
    assert rep["reference"]["mode"].startswith("live")
    assert math.isfinite(rep["train_loss"])
