"""`prefkit relabel` -> `prefkit train dpo` -> `prefkit.generate` on SmolLM2: the trained directory
carries the conditioning, and generation renders the prompt exactly as training did (the goal in
the system turn, replacing the template's default system prompt); the directory loads in plain
transformers and generates the same text."""

from __future__ import annotations

import json

import pytest

from real_testkit import cli, pair_rows, write_jsonl

pytestmark = pytest.mark.slow

GOAL_TEXT = ("Write a response to the instruction below. Without referring to them, aim for the quality targets "
             "listed here; each is rated from 1 (lowest) to 10 (highest).\nOverall score: {}.")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ra")
    write_jsonl(tmp / "pairs.jsonl", pair_rows(4, scores=True))
    cli("relabel", tmp / "pairs.jsonl", "-o", tmp / "ra.jsonl", "--placement", "system")
    cli("train", "dpo", tmp / "ra.jsonl", "-o", tmp / "run", "--model", "smollm2", "--max-steps", 1,
        "--learning-rate", 1e-5, "--save-strategy", "no", "--disable-tqdm", "true",
        "--ref-cache-dir", tmp / "cache")
    return tmp


def test_generation_conditions_exactly_as_training(trained):
    import datasets

    from prefkit.generate import render_prompts
    from prefkit.models import load_tokenizer
    from prefkit.relabel import load_conditioning
    from prefkit.tokenize import encode_pairs

    run = trained / "run"
    assert (run / "prefkit_conditioning.json").exists()
    spec = load_conditioning(run)
    tok = load_tokenizer(str(run))
    ra = datasets.Dataset.from_json(str(trained / "ra.jsonl"))
    enc = encode_pairs(ra, tok)
    # row 1 of the relabeled data: "Name a fruit." conditioned on its chosen score, 8
    assert ra[1]["prompt"][-1]["content"] == "Name a fruit."
    rendered = render_prompts(["Name a fruit."], tok, spec=spec, goal=8)[0]
    assert tok(rendered, add_special_tokens=False)["input_ids"] == enc[1]["prompt_ids"]
    # at inference the default goal is the best score, in the same system turn
    best = render_prompts(["Name a fruit."], tok, spec=spec)[0]
    assert best == (f"<|im_start|>system\n{GOAL_TEXT.format(10)}<|im_end|>\n"
                    "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n")
    assert "SmolLM" not in best   # the template's default system prompt is replaced, as in training


def test_trained_directory_generates_in_prefkit_and_plain_transformers(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefkit.generate import generate, render_prompts
    from prefkit.relabel import load_conditioning

    run = trained / "run"
    report = json.loads((run / "prefkit_train_report.json").read_text())
    assert report["global_step"] == 1 and report["reference"]["mode"] == "precomputed (disk cache)"
    prompts = ["Name a fruit.", "Sort these numbers: 3 1 2"]
    ours = generate(str(run), prompts, n=1, temperature=0.0, max_new_tokens=8, progress=False)

    tok = AutoTokenizer.from_pretrained(run)
    model = AutoModelForCausalLM.from_pretrained(run).eval()
    texts = render_prompts(prompts, tok, spec=load_conditioning(run))
    for text, (sample,) in zip(texts, ours):
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=8, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        plain = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        assert plain == sample and plain, (plain, sample)
