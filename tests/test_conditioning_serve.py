"""A model trained on relabeled data, served by a real `transformers serve` on 127.0.0.1 with its
exported chat template: a client's plain messages are conditioned exactly as prefkit.generate
conditions them (same prompt tokens, same greedy output)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture()
def trained_ra_model(tmp_path, chatml_tokenizer):
    """prefkit relabel, then prefkit train dpo --export-chat-template, on a tiny model."""
    from prefkit.cli import main
    from prefkit.toy.tiny import tiny_causal_lm

    base = tmp_path / "base"
    tiny_causal_lm(chatml_tokenizer, arch="qwen2", hidden=32, layers=1, heads=2).save_pretrained(base)
    chatml_tokenizer.save_pretrained(base)
    rows = [{"prompt": [{"role": "user", "content": f"Sort these numbers {i} 3 1"}],
             "chosen": [{"role": "assistant", "content": f"1 3 {i}"}],
             "rejected": [{"role": "assistant", "content": f"{i} 3 1"}],
             "score_chosen": 8 + i % 2, "score_rejected": 2 + i % 3} for i in range(8)]
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["relabel", str(src), "-o", str(tmp_path / "ra.jsonl"), "--placement", "system"]) == 0
    out = tmp_path / "ra-model"
    assert main(["train", "dpo", str(tmp_path / "ra.jsonl"), str(out), "--model", str(base), "--max-steps", "2",
                 "--per-device-train-batch-size", "4", "--learning-rate", "0.01", "--precision", "fp32",
                 "--save-strategy", "no", "--disable-tqdm", "--ref-cache-dir", str(tmp_path / "cache"),
                 "--export-chat-template"]) == 0
    return out


@pytest.fixture()
def server(trained_ra_model, tmp_path):
    from prefkit.testing import transformers_serve

    with transformers_serve(trained_ra_model, tmp_path / "serve.log", lifetime=240, startup_timeout=150) as url:
        yield url


def test_a_server_conditions_plain_messages_as_prefkit_generate(trained_ra_model, server, tmp_path):
    from prefkit.generate import generate, render_prompts
    from prefkit.models import load_tokenizer
    from prefkit.relabel import load_conditioning
    from prefkit.synth.backends import OpenAIBackend, SamplingParams
    from prefkit.synth.runs import Request, Run

    model = str(trained_ra_model)
    spec = load_conditioning(model)
    tok = load_tokenizer(model)
    prompts = [[{"role": "user", "content": f"Sort these numbers {i} 7 2"}] for i in range(3)]
    backend = OpenAIBackend(model=model, base_urls=[server], concurrency=1, timeout=60, max_retries=1)
    reqs = [Request(p, SamplingParams(temperature=0.0, max_tokens=8), 0, "t") for p in prompts]
    with Run(tmp_path / "run", progress=False) as run:
        recs = run.generate(backend, reqs)
    assert all(r["ok"] for r in recs), [r.get("detail") for r in recs]

    conditioned = render_prompts(prompts, tok, spec=spec)
    plain = render_prompts(prompts, tok, spec=None)
    ours = generate(model, prompts, temperature=0.0, max_new_tokens=8, progress=False)
    for rec, text, bare, mine in zip(recs, conditioned, plain, ours):
        n_cond = len(tok(text, add_special_tokens=False)["input_ids"])
        assert rec["prompt_tokens"] == n_cond                     # the server fed the conditioned prompt
        assert n_cond > len(tok(bare, add_special_tokens=False)["input_ids"])
        assert rec["text"].strip() == mine[0]                      # and generated what prefkit generates
