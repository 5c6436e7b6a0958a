"""Stages compose: every sensible two- and three-stage chain of the CLI, run as a user runs it, and
checked at the end for what must arrive there (the conditioning spec, whole relabeled pairs, scores,
a model card, a conditioned server).

    binarize -> relabel -> select -> train -> eval policy / generate
    binarize -> select -> relabel -> train
    relabel -> select (alignment potential, with a model) : whole pairs, ranked as the original pair
    relabel -> score (reward model) -> select
    synth -> score -> select
    relabel -> train -> models export-chat-template (the template a server reads conditions)
    relabel -> train --use-peft -> models merge-lora --export-chat-template -> transformers serve  (slow)
"""

from __future__ import annotations

import json

import pytest

from prefkit.cli import main
from prefkit.relabel import find_conditioning, load_conditioning

RAW = "examples/data/ultrafeedback_raw.jsonl"


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def _tiny_dir(tmp_path_factory, name, build):
    """A tiny model (`build(tokenizer, ...)`) with a ChatML tokenizer, saved as a model directory."""
    from prefkit.toy.tiny import build_tokenizer

    d = tmp_path_factory.mktemp(name)
    tok = build_tokenizer(template="chatml")
    build(tok, arch="qwen2" if name == "base" else "llama", hidden=32, layers=1, heads=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny Qwen2 policy."""
    from prefkit.toy.tiny import tiny_causal_lm

    return _tiny_dir(tmp_path_factory, "base", tiny_causal_lm)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A tiny Llama reward model (sequence classification)."""
    from prefkit.toy.tiny import tiny_reward_model

    return _tiny_dir(tmp_path_factory, "rm", tiny_reward_model)


def _train(data, out, base, tmp_path, *extra):
    return main(["-q", "train", "dpo", str(data), "-o", str(out), "--model", str(base), "--max-steps", "2",
                 "--per-device-train-batch-size", "2", "--precision", "fp32", "--save-strategy", "no",
                 "--ref-cache-dir", str(tmp_path / "refcache"), *extra])


@pytest.fixture()
def relabeled(tmp_path):
    pairs, ra = tmp_path / "pairs.jsonl", tmp_path / "ra.jsonl"
    assert main(["-q", "data", "binarize", RAW, "-o", str(pairs)]) == 0
    assert main(["-q", "relabel", str(pairs), "-o", str(ra)]) == 0
    return ra


def test_binarize_relabel_select_train_eval(relabeled, base_dir, rm_dir, tmp_path, capsys):
    sel = tmp_path / "sel.jsonl"
    assert main(["-q", "select", str(relabeled), "-o", str(sel), "--metric", "explicit", "--fraction", "0.5"]) == 0
    spec = find_conditioning(relabeled)
    assert find_conditioning(sel) == spec                                   # the spec travelled with the data
    rows = _rows(sel)
    halves = {}
    for r in rows:
        halves.setdefault(r["source_pair_id"], set()).add(r["relabel_half"])
    assert len(halves) == 3 and all(h == {"w", "l"} for h in halves.values())   # whole pairs, 3 of 6
    assert all(r["selection_score"] > 0 for r in rows)                       # ranked on the original margin

    model = tmp_path / "model"
    assert _train(sel, model, base_dir, tmp_path) == 0
    assert load_conditioning(model) == spec                                  # ... and reached the model
    card = (model / "README.md").read_text()
    assert card.startswith("---\n") and "reward-augmented" in card and spec.render(None) in card

    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["-q", "eval", "policy", RAW, "--policy", str(model), "--reward-model", str(rm_dir),
                 "--max-new-tokens", "4", "--limit", "2", "-o", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    (policy,) = res["policies"].values()
    assert policy["conditioned"] and policy["goal"] == spec.best_goal       # eval applied the conditioning

    from prefkit.generate import generate
    from prefkit.generate import render_prompts
    from prefkit.models import load_tokenizer

    tok = load_tokenizer(str(model))
    text = render_prompts([rows[0]["prompt"][-1:]], tok, spec=load_conditioning(model))[0]
    assert spec.render(None) in text                                         # generate conditions on the best goal
    assert len(generate(str(model), [rows[0]["prompt"][-1:]], max_new_tokens=2, progress=False)[0]) == 1


def test_select_before_relabel_also_arrives(tmp_path, base_dir):
    pairs, sel, ra, model = (tmp_path / n for n in ("pairs.jsonl", "sel.jsonl", "ra.jsonl", "model"))
    assert main(["-q", "data", "binarize", RAW, "-o", str(pairs)]) == 0
    assert main(["-q", "select", str(pairs), "-o", str(sel), "--metric", "explicit", "--fraction", "0.5"]) == 0
    assert find_conditioning(sel) is None
    assert main(["-q", "relabel", str(sel), "-o", str(ra)]) == 0
    assert len(_rows(ra)) == 2 * len(_rows(sel))
    assert _train(ra, model, base_dir, tmp_path) == 0
    assert load_conditioning(model) == find_conditioning(ra)


def test_select_with_a_model_on_relabeled_data_scores_each_original_pair_once(relabeled, base_dir, tmp_path):
    out, scored = tmp_path / "sel.jsonl", tmp_path / "scored.jsonl"
    assert main(["-q", "select", str(relabeled), "-o", str(out), "--model", str(base_dir), "--top-k", "2",
                 "--scored", str(scored)]) == 0
    ra = _rows(relabeled)
    rows = _rows(out)
    assert len(rows) == 4 and {r["source_pair_id"] for r in rows}.__len__() == 2
    by_pair = {}
    for r in rows:
        by_pair.setdefault(r["source_pair_id"], []).append(r)
    for pair_rows in by_pair.values():                          # both halves carry the pair's metric values
        assert len({(r["selection_score"], r["explicit_margin"]) for r in pair_rows}) == 1
        assert pair_rows[0]["explicit_margin"] > 0
    s = _rows(scored)
    assert len(s) == len(ra) // 2 and sum(r["selected"] for r in s) == 2   # one scored row per original pair
    assert find_conditioning(scored) == find_conditioning(relabeled)


def test_relabel_score_select_carries_the_spec(relabeled, rm_dir, tmp_path):
    scored, sel = tmp_path / "scored.jsonl", tmp_path / "sel.jsonl"
    assert main(["-q", "score", str(relabeled), "-o", str(scored), "--reward-model", str(rm_dir)]) == 0
    assert find_conditioning(scored) == find_conditioning(relabeled)
    assert main(["-q", "select", str(scored), "-o", str(sel), "--metric", "explicit", "--top-k", "2"]) == 0
    assert find_conditioning(sel) == find_conditioning(relabeled)
    assert len(_rows(sel)) == 4


def test_synth_score_select(tmp_path, rm_dir):
    from prefkit.testing import FakeServer

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Name a colour, number {i}."}) + "\n" for i in range(6)))
    pairs, scored, sel = tmp_path / "pairs.jsonl", tmp_path / "scored.jsonl", tmp_path / "sel.jsonl"
    with FakeServer() as srv:
        assert main(["-q", "synth", "rlcd", str(prompts), "-o", str(pairs), "--base-url", srv.base_url,
                     "--model", "m"]) == 0
    assert main(["-q", "score", str(pairs), "-o", str(scored), "--reward-model", str(rm_dir)]) == 0
    assert main(["-q", "select", str(scored), "-o", str(sel), "--metric", "explicit", "--fraction", "0.5"]) == 0
    rows = _rows(sel)
    assert len(rows) == 3
    margins = [r["score_chosen"] - r["score_rejected"] for r in rows]
    every = sorted((r["score_chosen"] - r["score_rejected"] for r in _rows(scored)), reverse=True)
    assert sorted(margins, reverse=True) == pytest.approx(every[:3])        # the largest explicit margins


def test_relabel_train_export_gives_a_template_that_conditions(relabeled, base_dir, tmp_path, capsys):
    """relabel -> train -> models export-chat-template: the saved chat template, read by plain
    transformers as a server reads it, conditions a plain message on the best goal."""
    from transformers import AutoTokenizer

    model = tmp_path / "model"
    assert _train(relabeled, model, base_dir, tmp_path) == 0
    assert main(["models", "export-chat-template", str(model)]) == 0
    spec = load_conditioning(model)
    assert spec == find_conditioning(relabeled)
    tok = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    text = tok.apply_chat_template([{"role": "user", "content": "Sort 3 1 2"}], tokenize=False,
                                   add_generation_prompt=True)
    assert spec.render(None) in text and "Sort 3 1 2" in text


@pytest.mark.slow
def test_lora_on_relabeled_data_merges_and_serves_with_its_conditioning(relabeled, base_dir, tmp_path):
    """relabel -> train --use-peft -> models merge-lora --export-chat-template -> a real transformers serve:
    plain messages are conditioned as prefkit.generate conditions them."""
    from prefkit.generate import generate, render_prompts
    from prefkit.model_card import card_front_matter
    from prefkit.models import load_tokenizer
    from prefkit.synth.backends import OpenAIBackend, SamplingParams
    from prefkit.synth.runs import Request, Run
    from prefkit.testing import transformers_serve

    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    assert _train(relabeled, adapter, base_dir, tmp_path, "--use-peft", "--lora-r", "4",
                  "--learning-rate", "0.01") == 0
    assert card_front_matter(adapter / "README.md")["library_name"] == "peft"     # not PEFT's empty card
    assert main(["models", "merge-lora", str(adapter), "-o", str(merged), "--export-chat-template"]) == 0
    assert not (merged / "adapter_config.json").exists() and (merged / "config.json").exists()
    meta = card_front_matter(merged / "README.md")
    assert meta["library_name"] == "transformers" and "reward-augmented" in meta["tags"]
    spec = load_conditioning(merged)
    assert spec == find_conditioning(relabeled)

    prompts = [[{"role": "user", "content": f"Sort these numbers {i} 7 2"}] for i in range(2)]
    with transformers_serve(merged, tmp_path / "serve.log", lifetime=240, startup_timeout=150) as url:
        backend = OpenAIBackend(model=str(merged), base_urls=[url], concurrency=1, timeout=60, max_retries=1)
        reqs = [Request(p, SamplingParams(temperature=0.0, max_tokens=6), 0, "t") for p in prompts]
        with Run(tmp_path / "run", progress=False) as run:
            recs = run.generate(backend, reqs)
    assert all(r["ok"] for r in recs), [r.get("detail") for r in recs]
    tok = load_tokenizer(str(merged))
    conditioned = render_prompts(prompts, tok, spec=spec)
    plain = render_prompts(prompts, tok, spec=None)
    ours = generate(str(merged), prompts, temperature=0.0, max_new_tokens=6, progress=False)
    for rec, text, bare, mine in zip(recs, conditioned, plain, ours):
        n_cond = len(tok(text, add_special_tokens=False)["input_ids"])
        assert rec["prompt_tokens"] == n_cond > len(tok(bare, add_special_tokens=False)["input_ids"])
        assert rec["text"].strip() == mine[0]
