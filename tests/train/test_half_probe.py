"""The half probe (prefkit.train.half_probe): per-half implicit rewards and the gradient cosine of
reward-augmented DPO's D^w and D^l halves, against values computed by hand on a tiny Llama, and a
run with the probe on trains exactly as one without."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from train_helpers import base_config, make_pairs, train_losses, write_jsonl

from prefkit.errors import ConfigError
from prefkit.relabel import relabel_with_spec
from prefkit.train import train_dpo
from prefkit.train.half_probe import half_probe
from prefkit.train.loading import load_model, load_tokenizer

BETA = 0.1


def _relabeled(n: int = 12, with_spec: bool = False):
    """n scored pairs relabeled into D^w + D^l (2n rows, a `relabel_half` column) [and its spec]."""
    import datasets

    rows = make_pairs(n)
    for i, r in enumerate(rows):
        r["score_chosen"], r["score_rejected"] = 6.0 + i % 4, 2.0 + i % 3
    ds, spec = relabel_with_spec(datasets.Dataset.from_list(rows), placement="system", seed=0)
    return (ds, spec) if with_spec else ds


def _setup(tiny_model_dir, tmp_path, **cfg_kw):
    cfg = base_config(tiny_model_dir, "unused.jsonl", tmp_path / "out", beta=BETA, **cfg_kw)
    tok = load_tokenizer(cfg)
    reference = load_model("causal-lm", tiny_model_dir, cfg)
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():   # a policy away from the reference, so rewards and gradients are not the trivial ones
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return cfg, tok, reference, policy


def _hand_logp(model, prompt_ids, resp_ids) -> torch.Tensor:
    """log pi(y | x): a plain HF forward of prompt + response, summed over the response tokens."""
    ids = torch.tensor([list(prompt_ids) + list(resp_ids)])
    logits = model(input_ids=ids).logits[0].float()
    lp = torch.log_softmax(logits[:-1], -1)
    start = len(prompt_ids) - 1
    return lp[torch.arange(start, ids.shape[1] - 1), ids[0, len(prompt_ids):]].sum()


def _hand_half(policy, reference, rows):
    """(mean chosen reward, mean rejected reward, mean DPO loss tensor with grad) of one half."""
    with torch.no_grad():
        ref_c = torch.stack([_hand_logp(reference, r["prompt_ids"], r["chosen_ids"]) for r in rows])
        ref_r = torch.stack([_hand_logp(reference, r["prompt_ids"], r["rejected_ids"]) for r in rows])
    pol_c = torch.stack([_hand_logp(policy, r["prompt_ids"], r["chosen_ids"]) for r in rows])
    pol_r = torch.stack([_hand_logp(policy, r["prompt_ids"], r["rejected_ids"]) for r in rows])
    loss = -F.logsigmoid(BETA * ((pol_c - ref_c) - (pol_r - ref_r))).mean()
    return (float(BETA * (pol_c.detach() - ref_c).mean()), float(BETA * (pol_r.detach() - ref_r).mean()), loss)


def test_rewards_and_gradient_cosine_equal_a_hand_computation(tiny_model_dir, tmp_path):
    pairs = _relabeled(12)
    cfg, tok, reference, policy = _setup(tiny_model_dir, tmp_path)
    probe = half_probe(pairs, tok, cfg, reference, rows=5, seed=3)
    assert probe.rows == {"w": 5, "l": 5}
    # the rows are the halves they claim to be: a D^l row's rejected response is a D^w row's chosen
    w_chosen = {tuple(ids) for ids in _responses(pairs, tok, "w", "chosen")}
    assert all(tuple(r["rejected_ids"]) in w_chosen for r in probe.halves["l"])
    assert not any(tuple(r["rejected_ids"]) in w_chosen for r in probe.halves["w"])

    sentinel = [torch.full_like(p, 7.0) for p in policy.parameters()]
    for p, s in zip(policy.parameters(), sentinel):
        p.grad = s.clone()
    policy.train()
    got = probe(policy)
    assert policy.training   # the caller's mode is restored
    assert all(torch.equal(p.grad, s) for p, s in zip(policy.parameters(), sentinel))   # .grad untouched

    policy.eval()
    grads, hand = {}, {}
    for h in ("w", "l"):
        rc, rr, loss = _hand_half(policy, reference, probe.halves[h])
        policy.zero_grad(set_to_none=True)
        loss.backward()   # one separate backward pass per half
        grads[h] = torch.cat([p.grad.reshape(-1) for p in policy.parameters()])
        hand[h] = (rc, rr, float(loss.detach()))
        assert got[f"{h}/reward_chosen"] == pytest.approx(rc, abs=1e-5)
        assert got[f"{h}/reward_rejected"] == pytest.approx(rr, abs=1e-5)
        assert got[f"{h}/loss"] == pytest.approx(hand[h][2], abs=1e-5)
        assert got[f"{h}/grad_norm"] == pytest.approx(float(grads[h].norm()), rel=1e-4)
    cos = float(F.cosine_similarity(grads["w"], grads["l"], dim=0))
    assert got["grad_cosine"] == pytest.approx(cos, abs=1e-4)
    assert hand["w"][0] != pytest.approx(0.0, abs=1e-4) and abs(cos) < 0.999   # not the trivial values

    # micro-batches of 2 rows (the run's per-device batch) give the same values as one batch of 5
    cfg2, *_ = _setup(tiny_model_dir, tmp_path, per_device_train_batch_size=2)
    small = half_probe(pairs, tok, cfg2, reference, rows=5, seed=3)
    again = small(policy)
    assert again == pytest.approx(got, abs=1e-5)


def _responses(pairs, tok, half: str, side: str) -> list[list[int]]:
    """The token ids of every `side` response of one half."""
    from prefkit.tokenize import encode_pairs

    return encode_pairs(pairs.filter(lambda h: h == half, input_columns=["relabel_half"]), tok)[f"{side}_ids"]


def test_at_the_reference_the_rewards_are_zero(tiny_model_dir, tmp_path):
    """Policy == reference: every implicit reward is 0 and each half's loss is log 2."""
    pairs = _relabeled(8)
    cfg, tok, reference, _ = _setup(tiny_model_dir, tmp_path)
    got = half_probe(pairs, tok, cfg, reference, rows=4)(copy.deepcopy(reference))
    for h in ("w", "l"):
        assert got[f"{h}/reward_chosen"] == pytest.approx(0.0, abs=1e-6)
        assert got[f"{h}/loss"] == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-6)
    assert -1.0 <= got["grad_cosine"] <= 1.0


def test_training_with_the_probe_equals_training_without(tiny_model_dir, tmp_path):
    pairs, spec = _relabeled(12, with_spec=True)
    data = write_jsonl(tmp_path / "ra.jsonl", pairs.to_list())
    runs = {}
    for name in ("plain", "probed"):
        cfg = base_config(tiny_model_dir, data, tmp_path / name, beta=BETA, max_steps=5, logging_steps=2)
        probes = None
        if name == "probed":
            tok = load_tokenizer(cfg)
            probes = {"half": half_probe(pairs, tok, cfg, load_model("causal-lm", tiny_model_dir, cfg), rows=4)}
        runs[name] = Path(train_dpo(cfg, probes=probes, conditioning=spec))
    assert train_losses(runs["plain"]) == train_losses(runs["probed"])
    a, b = (load_file(str(runs[n] / "model.safetensors")) for n in ("plain", "probed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [h for h in json.loads((runs["probed"] / "prefkit_train_report.json").read_text())["log_history"]
            if "loss" in h]
    assert [h["step"] for h in logs] == [2, 4]
    assert all(-1.0 <= h["half/grad_cosine"] <= 1.0 and "half/l/reward_chosen" in h for h in logs)


def test_refuses_unrelabeled_pairs_and_per_pair_beta(tiny_model_dir, tmp_path):
    import datasets

    cfg, tok, reference, _ = _setup(tiny_model_dir, tmp_path)
    with pytest.raises(ConfigError, match="needs relabeled data"):
        half_probe(datasets.Dataset.from_list(make_pairs(4)), tok, cfg, reference)
    eps = base_config(tiny_model_dir, "unused.jsonl", tmp_path / "eps", loss_type="eps-dpo")
    with pytest.raises(ConfigError, match="per-pair beta"):
        half_probe(_relabeled(4), tok, eps, reference)
