"""Chunked sequence log-probs against a naive full-logits computation, eps-DPO perturbations, scoring."""

from __future__ import annotations

import datasets
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from prefkit.lm_head import HiddenHead
from prefkit.logprobs import concatenated_forward, pair_forward, score_logps, sequence_logps
from prefkit.losses import PairLogps, get_loss
from prefkit.packed import plan_rows, scored_hidden
from prefkit.train.eps_dpo import eps_dpo_beta, eps_dpo_update_beta, perturbation, perturbed_sequence_logps
from prefkit.report import StageReport
from prefkit.tokenize import PairCollator, encode_pairs

ROWS = [
    dict(prompt=[{"role": "user", "content": "Sort 3 1 2."}], chosen=[{"role": "assistant", "content": "1 2 3"}],
         rejected=[{"role": "assistant", "content": "3 2 1, which is the wrong order"}]),
    dict(prompt=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List fruit."}],
         chosen=[{"role": "assistant", "content": "apple, banana, cherry, date"}],
         rejected=[{"role": "assistant", "content": "no"}]),
    dict(prompt=[{"role": "user", "content": "The quick brown fox?"}],
         chosen=[{"role": "assistant", "content": "jumps over the lazy dog."}],
         rejected=[{"role": "assistant", "content": "sleeps."}]),
]


def naive_logps(logits, input_ids, response_mask):
    """Reference: full fp32 log-softmax over the whole (N, T, V) tensor, summed over response tokens."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (lp * response_mask[:, 1:]).sum(1)


def make_batch(tok, rows=ROWS):
    enc = encode_pairs(datasets.Dataset.from_list(rows), tok)
    return PairCollator.for_tokenizer(tok)(list(enc))


@pytest.mark.parametrize("arch,fixture", [("llama", "llama3_tokenizer"), ("qwen2", "chatml_tokenizer")])
def test_chunked_logps_match_full_logits_values_and_gradients(arch, fixture, request):
    from prefkit.toy.tiny import tiny_causal_lm

    tok = request.getfixturevalue(fixture)
    model = tiny_causal_lm(tok, arch=arch)
    batch = make_batch(tok)
    seq = sequence_logps(model, batch["input_ids"], batch["response_mask"], batch["attention_mask"], chunk_size=5)
    seq.logps.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = naive_logps(logits, batch["input_ids"], batch["response_mask"])
    expected.sum().backward()
    assert torch.allclose(seq.logps.double(), expected, atol=1e-5, rtol=0)
    assert seq.lengths.tolist() == batch["response_mask"].sum(1).tolist()
    for name, p in model.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-5, rtol=1e-4), name
    # the logits-tensor path and the mean agree too
    from_logits = sequence_logps(logits.detach(), batch["input_ids"], batch["response_mask"], chunk_size=4)
    assert torch.allclose(from_logits.logps.double(), expected.detach(), atol=1e-5)
    assert torch.allclose(from_logits.mean, from_logits.logps / seq.lengths, atol=1e-6)


class LargestLogits(TorchDispatchMode):
    """Records the largest number of rows of any float tensor whose last dimension is the vocabulary
    (the LM head's own (hidden, vocab) weight and its gradient excepted)."""

    def __init__(self, vocab, hidden):
        super().__init__()
        self.vocab, self.hidden, self.rows = vocab, hidden, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() >= 1
                    and t.shape[-1] == self.vocab and tuple(t.shape) != (self.hidden, self.vocab)):
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


def test_full_vocabulary_logits_never_exist_for_the_batch(llama3_tokenizer, tiny_llama):
    batch = make_batch(llama3_tokenizer)
    vocab = tiny_llama.config.vocab_size
    n_tokens = int(batch["attention_mask"].sum())
    with LargestLogits(vocab, tiny_llama.config.hidden_size) as probe:
        out = concatenated_forward(tiny_llama, batch, chunk_size=4)
        (out.chosen_logps - out.rejected_logps).sum().backward()
    # forward and backward only ever hold logits for one chunk of 4 response tokens
    assert 0 < probe.rows <= 4 < n_tokens
    assert tiny_llama.lm_head.weight.grad is not None


def test_concatenated_forward_splits_chosen_and_rejected(llama3_tokenizer, tiny_llama):
    batch = make_batch(llama3_tokenizer)
    out = concatenated_forward(tiny_llama, batch)
    whole = sequence_logps(tiny_llama, batch["input_ids"], batch["response_mask"], batch["attention_mask"])
    assert torch.equal(torch.cat([out.chosen_logps, out.rejected_logps]), whole.logps)
    assert torch.equal(torch.cat([out.chosen_lengths, out.rejected_lengths]), whole.lengths)
    assert out.ref_chosen_logps is None and out.statistics == ()
    assert out.chosen_logps.shape == (3,)


def test_lora_model_goes_through_the_same_path(llama3_tokenizer, tiny_llama):
    from peft import LoraConfig, get_peft_model

    batch = make_batch(llama3_tokenizer)
    peft_model = get_peft_model(tiny_llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    seq = sequence_logps(peft_model, batch["input_ids"], batch["response_mask"], batch["attention_mask"])
    logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(seq.logps.double(), naive_logps(logits, batch["input_ids"], batch["response_mask"]), atol=1e-5)
    with peft_model.disable_adapter():  # the adapter-disabled base model is the reference
        ref = sequence_logps(peft_model, batch["input_ids"], batch["response_mask"], batch["attention_mask"])
    assert not torch.allclose(ref.logps, seq.logps)


def test_perturbed_logps_match_full_computation(llama3_tokenizer):
    from prefkit.toy.tiny import tiny_causal_lm

    tok = llama3_tokenizer
    policy, reference = tiny_causal_lm(tok, seed=1), tiny_causal_lm(tok, seed=2)
    batch = make_batch(tok)
    plan = plan_rows(batch["input_ids"], batch["response_mask"], batch["attention_mask"])
    eps = 0.1
    with torch.no_grad():
        rh = scored_hidden(reference, plan)
        fp = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        fr = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # the engine's statistic, from the policy's own logits chunks (with gradient on the policy)
    fwd = pair_forward(policy, plan, ref_head=rh, statistic=perturbation(eps), chunk_size=3)
    minus, plus = fwd.statistics
    assert fwd.chosen_logps.requires_grad and not minus.requires_grad
    ref_logps = torch.cat([fwd.ref_chosen_logps, fwd.ref_rejected_logps]).double()
    assert torch.allclose(ref_logps, naive_logps(fr, batch["input_ids"], batch["response_mask"]), atol=1e-5)
    exp_minus = naive_logps((1 + eps) * fp - eps * fr, batch["input_ids"], batch["response_mask"])
    exp_plus = naive_logps((1 - eps) * fp + eps * fr, batch["input_ids"], batch["response_mask"])
    assert torch.allclose(minus.double(), exp_minus, atol=1e-5) and torch.allclose(plus.double(), exp_plus, atol=1e-5)
    # logits tensors give the same; eps = 0 is the policy itself
    m2, p2 = perturbed_sequence_logps(fp, fr, batch["input_ids"], batch["response_mask"], eps)
    assert torch.allclose(m2, minus, atol=1e-5) and torch.allclose(p2, plus, atol=1e-5)
    m0, _ = perturbed_sequence_logps(fp, fr, batch["input_ids"], batch["response_mask"], 0.0)
    assert torch.allclose(m0.double(), naive_logps(fp, batch["input_ids"], batch["response_mask"]), atol=1e-5)


def test_eps_dpo_picks_beta_minus_plus_and_beta_on_constructed_logits():
    """Three pairs, vocabulary of 3, sequences [prompt token 0, response token]: chosen answers token 1,
    rejected answers token 2. The reference logits are 0 everywhere. The policy's logits at the prompt
    position of the chosen row are
      pair 0: [0,  1, 0]  the policy moved towards chosen: extrapolating away from the reference
                          ((1+eps) f) raises z, interpolating towards it lowers z: z- > z > z+ -> beta-
      pair 1: [0, -1, 0]  moved away from chosen: z- < z < z+ -> beta+
      pair 2: [0,  0, 0]  equal to the reference: z- = z = z+ -> beta
    and 0 on every rejected row."""
    eps, beta = 0.1, 0.1
    input_ids = torch.tensor([[0, 1]] * 3 + [[0, 2]] * 3)
    response_mask = torch.tensor([[0, 1]] * 6)
    f_ref = torch.zeros(6, 2, 3)
    f_pol = torch.zeros(6, 2, 3)
    f_pol[0, 0, 1], f_pol[1, 0, 1] = 1.0, -1.0
    pol = sequence_logps(f_pol, input_ids, response_mask).logps
    minus, plus = perturbed_sequence_logps(f_pol, f_ref, input_ids, response_mask, eps)
    z, z_minus, z_plus = pol[:3] - pol[3:], minus[:3] - minus[3:], plus[:3] - plus[3:]
    choice = eps_dpo_beta(z, z_minus, z_plus, beta=beta, eps=eps)
    assert choice.steps.tolist() == [1, -1, 0]
    assert torch.allclose(choice.beta_tilde, torch.tensor([beta / (1 + eps), beta / (1 - eps), beta]))
    # the loss uses the per-pair beta; after the step the base beta is the mean (paper) ...
    ref = sequence_logps(f_ref, input_ids, response_mask).logps
    out = get_loss("sigmoid")(PairLogps(pol[:3], pol[3:], ref[:3], ref[3:]), beta=choice.beta_tilde)
    assert torch.allclose(out.chosen_rewards, choice.beta_tilde * (pol[:3] - ref[:3]))
    new_beta = eps_dpo_update_beta(beta, beta_tilde=choice.beta_tilde)
    assert new_beta == pytest.approx((beta / 1.1 + beta / 0.9 + beta) / 3, rel=1e-6)
    # ... or beta / (1 + eps * mean(s)) with the authors' rule: mean(s) = 0 here
    assert eps_dpo_update_beta(beta, steps=choice.steps, eps=eps, rule="code") == pytest.approx(beta)


def test_hidden_head_softcap_is_applied():
    h = HiddenHead(hidden=torch.zeros(2, 2), weight=torch.tensor([[10.0, 0.0], [0.0, 0.0]]), softcap=2.0)
    z = h.logits(torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(z, torch.tensor([[2.0 * torch.tanh(torch.tensor(5.0)), 0.0]]))


def test_score_logps_adds_columns_in_order_and_counts_unscorable_rows(llama3_tokenizer, tiny_llama):
    from prefkit.toy.tiny import tiny_causal_lm

    tok = llama3_tokenizer
    rows = ROWS + [dict(ROWS[0], rejected=[{"role": "assistant", "content": ""}])]
    ds = datasets.Dataset.from_list(rows).add_column("pair_id", ["a", "b", "c", "empty"])
    report = StageReport("score")
    reference = tiny_causal_lm(tok, seed=3)
    scored = score_logps(tiny_llama, tok, ds, batch_size=2, progress=False, reference=reference, report=report)
    assert scored["pair_id"] == ["a", "b", "c", "empty"]
    batch = make_batch(tok)
    with torch.no_grad():
        direct = concatenated_forward(tiny_llama, batch)
        direct_ref = concatenated_forward(reference, batch)
    assert scored["logps_chosen"][:3] == pytest.approx(direct.chosen_logps.tolist(), abs=1e-5)
    assert scored["logps_rejected"][:3] == pytest.approx(direct.rejected_logps.tolist(), abs=1e-5)
    assert scored["ref_logps_chosen"][:3] == pytest.approx(direct_ref.chosen_logps.tolist(), abs=1e-5)
    assert scored["len_chosen"][:3] == direct.chosen_lengths.tolist()
    assert scored["logps_chosen"][3] is None and scored["len_rejected"][3] is None
    assert report.dropped == {"empty rejected response": 1} and report.notes["scored_pairs"] == 3
    # batch size and ordering do not change the numbers (right padding is inert)
    one = score_logps(tiny_llama, tok, ds, batch_size=1, progress=False, sort_by_length=False)
    assert one["logps_chosen"][:3] == pytest.approx(scored["logps_chosen"][:3], abs=1e-5)
    # an encoded dataset is scored as encoded
    enc = encode_pairs(datasets.Dataset.from_list(ROWS), tok)
    again = score_logps(tiny_llama, tok, enc, progress=False)
    assert again["logps_rejected"] == pytest.approx(scored["logps_rejected"][:3], abs=1e-5)
