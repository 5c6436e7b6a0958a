"""The relabeled output trains as-is in TRL's DPOTrainer (TRL is a test-only dependency)."""

from __future__ import annotations

import pytest
from datasets import Dataset

from prefkit.relabel import relabel

trl = pytest.importorskip("trl")

WORDS = ["apple", "banana", "cherry", "date", "fig", "grape"]


def _pairs(conversational: bool, n: int = 6):
    rows = []
    for i in range(n):
        q, good, bad = f"List item {i}", " ".join(WORDS[: 2 + i % 3]), WORDS[i % 6]
        if conversational:
            rows.append(dict(prompt=[{"role": "user", "content": q}], chosen=[{"role": "assistant", "content": good}],
                             rejected=[{"role": "assistant", "content": bad}], score_chosen=8.0 + i % 2 / 2,
                             score_rejected=3.0, pair_id=f"p{i}"))
        else:
            rows.append(dict(prompt=q, chosen=" " + good, rejected=" " + bad, score_chosen=8.0 + i % 2 / 2,
                             score_rejected=3.0, pair_id=f"p{i}"))
    return Dataset.from_list(rows)


def _train_two_steps(model, ref_model, tok, ds, tmp_path):
    import torch
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                     learning_rate=1e-3, beta=0.1, max_length=96, report_to="none", save_strategy="no",
                     logging_steps=1, use_cpu=True, bf16=False, dataloader_num_workers=0, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=ds, processing_class=tok)
    processed = trainer.train_dataset
    result = trainer.train()
    return processed, result


@pytest.mark.parametrize("tok_name,placement,conversational", [
    ("gemma_tokenizer", "auto", True),      # template rejects system: auto -> user placement
    ("chatml_tokenizer", "system", True),
    ("chatml_tokenizer", "system", False),  # TRL standard (string) format
])
def test_relabeled_pairs_train_in_trl_dpo(request, tmp_path, tok_name, placement, conversational):
    import math

    from prefkit.toy.tiny import tiny_causal_lm

    tok = request.getfixturevalue(tok_name)
    ra = relabel(_pairs(conversational), placement=placement, tokenizer=tok, template="Goal {goal_lines}")
    assert len(ra) == 12
    model = tiny_causal_lm(tok, arch="llama", hidden=32, layers=1, heads=2).train()
    ref = tiny_causal_lm(tok, arch="llama", hidden=32, layers=1, heads=2)
    processed, result = _train_two_steps(model, ref, tok, ra, tmp_path)
    assert len(processed) == len(ra)
    # The conditioning reached the token ids of the prompt, once, for D^w and D^l rows alike.
    for i in (0, 6):
        prompt_text = tok.decode(processed[i]["prompt_ids"])
        assert prompt_text.count("Goal Overall score:") == 1
        goal = "8" if i == 0 else "3"
        assert f"Overall score: {goal}." in prompt_text
    # D^l row 6 (pair p0, goal r_l) trains the source's rejected response as chosen and vice versa.
    assert processed[6]["chosen_ids"] == processed[0]["rejected_ids"]
    assert processed[6]["rejected_ids"] == processed[0]["chosen_ids"]
    assert processed[0]["chosen_ids"] != processed[0]["rejected_ids"]
    assert result.global_step == 2 and math.isfinite(result.training_loss)
