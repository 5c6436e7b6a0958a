"""prefkit's tokenize + logprobs + losses reproduce TRL 1.16's DPOTrainer within 1e-5.

TRL is driven through its own code path: a DPOTrainer is built on a tiny model, a separate
reference model and a real tokenizer; one batch comes from its dataloader and its compute_loss
runs; its loss and logged metrics are compared with prefkit's on the same rows. Every batch holds
the whole dataset, so the order TRL's sampler picks does not matter (all numbers are batch means).
"""

from __future__ import annotations

import datasets
import pytest
import torch

trl = pytest.importorskip("trl")

from prefkit.logprobs import concatenated_forward  # noqa: E402
from prefkit.losses import PairLogps, get_loss, pair_metrics  # noqa: E402
from prefkit.tokenize import PairCollator, encode_pairs  # noqa: E402

TOL = 1e-5
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def conversational_rows():
    users = ["Sort 3 1 2.", "List three fruits.", "What does the fox do?", "Count to five."]
    good = ["1 2 3", "apple, banana, cherry", "The quick brown fox jumps over the lazy dog.", "1 2 3 4 5"]
    bad = ["3 2 1 and that is the order", "no", "It sleeps.", "one two"]
    rows = []
    for i, (u, g, b) in enumerate(zip(users, good, bad)):
        prompt = [{"role": "user", "content": u}]
        if i % 2:
            prompt = [{"role": "system", "content": "You are a helpful assistant."}] + prompt
        rows.append(dict(prompt=prompt, chosen=[{"role": "assistant", "content": g}],
                         rejected=[{"role": "assistant", "content": b}]))
    return rows


def standard_rows():
    return [dict(prompt=r["prompt"][-1]["content"] + "\nAnswer:", chosen=" " + r["chosen"][0]["content"],
                 rejected=" " + r["rejected"][0]["content"]) for r in conversational_rows()]


@pytest.fixture(scope="module")
def trl_and_prefkit(request):
    """Per (arch, template, data format): a TRL DPOTrainer with one batch from its dataloader, and
    prefkit's encoded rows and policy/reference log-probs for the same rows and models."""
    from trl import DPOConfig, DPOTrainer

    from prefkit.toy.tiny import build_tokenizer, tiny_causal_lm

    cache = {}

    def get(arch, template, fmt, tmp_path):
        key = (arch, template, fmt)
        if key in cache:
            return cache[key]
        tok = build_tokenizer(template=template)
        rows = conversational_rows() if fmt == "conversational" else standard_rows()
        args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(rows), beta=0.1,
                         loss_type=["sigmoid"], max_length=None, report_to=[], use_cpu=True, bf16=False,
                         logging_strategy="no", save_strategy="no", seed=0)
        trainer = DPOTrainer(model=tiny_causal_lm(tok, arch=arch, seed=0),
                             ref_model=tiny_causal_lm(tok, arch=arch, seed=1),
                             args=args, train_dataset=datasets.Dataset.from_list(rows), processing_class=tok)
        trl_batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))

        enc = encode_pairs(datasets.Dataset.from_list(rows), tok, max_length=None, max_prompt_length=None)
        batch = PairCollator.for_tokenizer(tok)(list(enc))
        with torch.no_grad():
            pol = concatenated_forward(tiny_causal_lm(tok, arch=arch, seed=0), batch)
            ref = concatenated_forward(tiny_causal_lm(tok, arch=arch, seed=1), batch)
        logps = PairLogps(pol.chosen_logps, pol.rejected_logps, ref.chosen_logps, ref.rejected_logps,
                          pol.chosen_lengths, pol.rejected_lengths)
        cache[key] = (trainer, trl_batch, enc, logps)
        return cache[key]

    return get


def trl_step(trainer, batch, loss_type, beta, label_smoothing):
    """TRL's own compute_loss on its batch, with the loss settings DPOTrainer.__init__ reads from DPOConfig."""
    trainer.beta, trainer.loss_types, trainer.loss_weights = beta, [loss_type], [1.0]
    trainer.label_smoothing = label_smoothing
    mode = "train" if trainer.model.training else "eval"
    trainer._metrics[mode].clear()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    return float(loss), {k: v[-1] for k, v in trainer._metrics[mode].items()}


def prefkit_step(logps, loss_type, beta, label_smoothing):
    options = {"label_smoothing": label_smoothing} if loss_type in ("sigmoid", "robust") else {}
    out = get_loss(loss_type, **options)(logps, beta=beta)
    return float(out.losses.mean()), pair_metrics(out, logps)


CASES = [  # (loss, beta, label smoothing); TRL 1.16's 'sigmoid' has no label smoothing
    ("sigmoid", 0.1, 0.0),
    ("robust", 0.2, 0.1),
    ("hinge", 0.5, 0.0),
    ("ipo", 0.3, 0.0),
]


def compare(trl_loss, trl_metrics, pk_loss, pk_metrics):
    assert abs(trl_loss - pk_loss) <= TOL, (trl_loss, pk_loss)
    for name in METRICS:
        assert abs(trl_metrics[name] - pk_metrics[name]) <= TOL, (name, trl_metrics[name], pk_metrics[name])


@pytest.mark.parametrize("arch,template", [("llama", "llama3"), ("qwen2", "chatml")])
@pytest.mark.parametrize("loss_type,beta,label_smoothing", CASES)
def test_losses_and_metrics_equal_trl(arch, template, loss_type, beta, label_smoothing, tmp_path,
                                      trl_and_prefkit):
    trainer, trl_batch, enc, logps = trl_and_prefkit(arch, template, "conversational", tmp_path)
    # the same token ids, prompt/response boundary included
    for col in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert trainer.train_dataset[col] == enc[col], col
    compare(*trl_step(trainer, trl_batch, loss_type, beta, label_smoothing),
            *prefkit_step(logps, loss_type, beta, label_smoothing))
    # not a vacuous comparison: policy and reference differ, so rewards are non-zero
    assert abs(float((logps.chosen - logps.ref_chosen).abs().mean())) > 1e-2


def test_standard_string_format_equals_trl(tmp_path, trl_and_prefkit):
    trainer, trl_batch, enc, logps = trl_and_prefkit("llama", "llama3", "standard", tmp_path)
    assert trainer.train_dataset["chosen_ids"] == enc["chosen_ids"]
    compare(*trl_step(trainer, trl_batch, "sigmoid", 0.1, 0.0), *prefkit_step(logps, "sigmoid", 0.1, 0.0))
