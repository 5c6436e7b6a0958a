"""RMBoost data for a reward model, from one recipe (examples/recipes/toy-rmboost.yaml): the synth
stage (prefkit.synth's rmboost with the toy world's stand-in LLM, real tiny Llama base policy),
the reward_model stage (real Bradley-Terry training, accuracy on gold-labelled held-out pairs),
reruns that skip both, a kill -9 during synth that ends with the same pairs, and the validation
of the new stages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import RECIPES, TOY_RECIPE as TOY, kill_when, line_of, recipe_error

from prefkit.errors import ConfigError
from prefkit.pipeline import load_recipe, run

RMBOOST = RECIPES / "toy-rmboost.yaml"
# toy-rmboost, smaller: the quick world, 32 prompts in chunks of 4, 32 held-out prompts, one epoch
SMALL = ["policy.args.quick=true", "synth.backend.args.quick=true", "reward_model.eval_pairs.args.quick=true",
         "prompts.train.args.n=32", "synth.chunk_size=4", "reward_model.eval_pairs.args.n=32",
         "reward_model.num_train_epochs=1", "reward_model.per_device_train_batch_size=8"]


def _run(run_dir, overrides=(), **kw):
    return run(load_recipe(RMBOOST, overrides=SMALL + list(overrides)), run_dir, progress=False,
               log=lambda msg: None, **kw)


def _ran(result) -> list[str]:
    return [f"round-{e['round']}/{e['stage']}" for e in result["steps"] if e.get("ran")]


def _step(result, stage) -> dict:
    return next(e for e in result["steps"] if e["stage"] == stage)


@pytest.fixture(scope="module")
def rmboost_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("rmboost") / "run"
    return d, _run(d)


def test_rmboost_data_trains_a_reward_model_scored_on_gold_pairs(rmboost_run):
    d, res = rmboost_run
    assert [f"round-{e['round']}/{e['stage']}" for e in res["steps"]] == ["round-1/synth", "round-1/reward_model"]
    assert _ran(res) == ["round-1/synth", "round-1/reward_model"]
    synth, rm = _step(res, "synth"), _step(res, "reward_model")
    # the pairs: rmboost's rows (a fixed label, then a rewrite), every prompt accounted for
    rows = [json.loads(x) for x in open(synth["output"])]
    m = synth["metrics"]
    assert m["method"] == "rmboost" and m["pairs"] == len(rows) > 0
    assert m["pairs"] + sum(m["dropped"].values()) == m["prompts"] == 32
    assert all(r["rmboost_label"] in ("better", "worse") and r["chosen"] != r["rejected"] for r in rows)
    assert sum(m["labels"].values()) == len(rows)
    # the reward model: trained on those pairs from the base policy, scored on gold-labelled pairs
    assert rm["inputs"]["data"] == synth["output_hash"]
    assert rm["inputs"]["policy"] == res["manifest"]["initial_policy"]["hash"]
    model = Path(rm["output"])
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()
    assert json.loads((model / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    acc = rm["metrics"]["eval_accuracy"]
    assert acc["n"] > 0 and acc["accuracy"] == pytest.approx((acc["correct"] + 0.5 * acc["ties"]) / acc["n"])
    gold = [json.loads(x) for x in open(model.parent / "eval_pairs.jsonl")]
    assert len(gold) == acc["n"] and all(r["score_chosen"] > r["score_rejected"] for r in gold)
    assert rm["metrics"]["pairs"] == len(rows) and rm["metrics"]["train_loss"] is not None
    report = (d / "report.md").read_text()
    assert "## Reward models" in report and f"{acc['accuracy']:.3f}" in report


def test_rerun_skips_synth_and_reward_model(rmboost_run):
    d, res = rmboost_run
    again = _run(d)
    assert _ran(again) == []
    assert [e["output_hash"] for e in again["steps"]] == [e["output_hash"] for e in res["steps"]]


def test_changing_a_reward_model_option_keeps_the_pairs(rmboost_run, tmp_path):
    """Held-out pairs from a file instead of the factory: only reward_model reruns (the file's
    hash is one of its inputs), and the same pairs give the same accuracy."""
    import shutil

    d, res = rmboost_run
    copy = tmp_path / "run"
    shutil.copytree(d, copy)
    gold = tmp_path / "gold.jsonl"
    shutil.copy(Path(_step(res, "reward_model")["output"]).parent / "eval_pairs.jsonl", gold)
    changed = _run(copy, [f"reward_model.eval_pairs={{file: {gold}}}"])
    assert _ran(changed) == ["round-1/reward_model"]
    assert _step(changed, "synth")["key"] == _step(res, "synth")["key"]
    rm = _step(changed, "reward_model")
    assert rm["inputs"]["eval_pairs"] and rm["key"] != _step(res, "reward_model")["key"]
    assert rm["metrics"]["eval_accuracy"] == pytest.approx(_step(res, "reward_model")["metrics"]["eval_accuracy"])


@pytest.mark.slow
def test_kill_during_synth_then_rerun_gives_the_same_pairs(rmboost_run, tmp_path):
    _, whole = rmboost_run
    d = tmp_path / "run"
    cmd = [sys.executable, "-m", "prefkit", "run", str(RMBOOST), "-o", str(d), "--until", "synth", "--no-progress"]
    for s in SMALL:
        cmd += ["--set", s]
    kill_when(cmd, d, lambda p: len(list(p.glob("round-1/synth/*/chunks/chunk-*.json"))) >= 2)
    chunks = sorted(d.glob("round-1/synth/*/chunks/chunk-*.json"))
    assert 2 <= len(chunks) < 8 and not list(d.glob("round-1/synth/*/done"))
    before = {c.name: c.stat().st_mtime_ns for c in chunks}
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (done,) = list(d.glob("round-1/synth/*/done"))
    marker = json.loads(done.read_text())
    assert marker["output_hash"] == _step(whole, "synth")["output_hash"]
    assert marker["metrics"]["dropped"] == _step(whole, "synth")["metrics"]["dropped"]
    # the chunks finished before the kill were read, not sampled again
    assert {c.name: c.stat().st_mtime_ns for c in chunks} == before


# -- validation -------------------------------------------------------------------------------------

def _edited(tmp_path, old: str, new: str, base: Path = RMBOOST) -> Path:
    text = base.read_text()
    assert old in text
    p = tmp_path / "recipe.yaml"
    p.write_text(text.replace(old, new, 1))
    return p






def test_the_shipped_rmboost_recipes_resolve_to_the_method_options():
    from prefkit.synth import RMBoostOptions

    r = load_recipe(RMBOOST)
    assert list(r.stages) == ["synth", "reward_model"]
    assert r.stages["synth"]["method"] == "rmboost" and r.stages["synth"]["generation"] == {"temperature": 1.0,
                                                                                          "max_tokens": 24}
    assert r.stages["reward_model"]["learning_rate"] == 5e-4
    s = load_recipe(RECIPES / "smollm2-rmboost.yaml")
    assert s.policy == {"model": "smollm2"} and s.stages["synth"]["backend"]["args"]["model"] == "smollm2"
    # the schema is the method's own options object: a field of another method is unknown here
    from prefkit.pipeline.stages import STAGES

    opts = STAGES["synth"].options({"method": "rmboost"})
    assert opts["aspects"].choices == ("llm", "sample") and opts["seed"].default == RMBoostOptions().seed
    assert "n" in STAGES["synth"].options({"method": "west-of-n"}) and "n" not in opts


def test_synth_option_errors_name_file_line_key(tmp_path):
    p = _edited(tmp_path, "    aspects: llm", "    aspect: llm")
    msg = recipe_error(p)
    assert msg.startswith(f"{p}:{line_of(p, 'aspect: llm')}: stages.synth.aspect: unknown key (did you mean aspects")
    p = _edited(tmp_path, "method: rmboost", "method: rmbost")
    assert recipe_error(p) == (f"{p}:{line_of(p, 'rmbost')}: stages.synth.method: 'rmbost' is not one of "
                         "rlaif, rlcd, rmboost, west-of-n")
    p = _edited(tmp_path, "    method: rmboost\n", "")
    assert recipe_error(p).startswith(f"{p}:{line_of(p, '  synth:')}: stages.synth.method: missing; one of rlaif")
    # an option of another method
    p = _edited(tmp_path, "    aspects: llm", "    n: 4")
    assert recipe_error(p).startswith(f"{p}:{line_of(p, 'n: 4')}: stages.synth.n: unknown key")
    # the sampling parameters are SamplingParams' fields
    p = _edited(tmp_path, "generation: {temperature: 1.0, max_tokens: 24}", "generation:\n      temprature: 1.0")
    assert recipe_error(p) == (f"{p}:{line_of(p, 'temprature')}: stages.synth.generation.temprature: unknown key; "
                         "valid keys: temperature, top_p, max_tokens, seed, stop")
    p = _edited(tmp_path, "rewrite: {temperature: 0.7, max_tokens: 96}", "rewrite: {max_tokens: many}")
    assert recipe_error(p) == (f"{p}:{line_of(p, 'many')}: stages.synth.rewrite.max_tokens: expected an integer, "
                         "got 'many'")


def test_synth_backend_errors(tmp_path):
    p = _edited(tmp_path, "backend: {build: prefkit.toy.recipes:rewriter, args: {quick: false, seed: 0}}",
                "backend: {build: rewriter}")
    assert recipe_error(p) == (f"{p}:{line_of(p, 'backend:')}: stages.synth.backend.build: expected MODULE:FUNCTION, "
                         "got 'rewriter'")
    p = _edited(tmp_path, "backend: {build: prefkit.toy.recipes:rewriter, args: {quick: false, seed: 0}}",
                "backend: {model: qwen}")
    assert recipe_error(p).startswith(f"{p}:{line_of(p, 'backend:')}: stages.synth.backend.base_urls: missing")
    p = _edited(tmp_path, "    backend: {build: prefkit.toy.recipes:rewriter, args: {quick: false, seed: 0}}\n", "")
    assert recipe_error(p).startswith(f"{p}:{line_of(p, '  synth:')}: stages.synth: backend: missing")
    p = _edited(tmp_path, "    aspects: llm", "    judge: {local: policy}")
    assert recipe_error(p) == (f"{p}:{line_of(p, 'judge:')}: stages.synth.judge: rmboost takes no judge "
                         "(rlaif and west-of-n do)")
    # the schema follows the method: rlaif takes a judge, and not rmboost's rewrite sampling
    assert recipe_error(p, overrides=["synth.method=rlaif"]).startswith(
        f"{p}:{line_of(p, 'rewrite:')}: stages.synth.rewrite: unknown key")
    text = p.read_text()
    p.write_text(text[:text.index("    guideline:")] + "    judge: {local: policy}\n" + text[text.index("  reward_model:"):])
    r = load_recipe(p, overrides=["synth.method=rlaif"])
    assert r.stages["synth"]["judge"] == {"local": "policy"}


def test_reward_model_option_errors(tmp_path):
    p = _edited(tmp_path, "    warmup_ratio: 0.1", "    warmup_rato: 0.1")
    assert "stages.reward_model.warmup_rato: unknown key (did you mean warmup_ratio" in recipe_error(p)
    p = _edited(tmp_path, "eval_pairs: {build:", "eval_pairs: {fil: x, build:")
    assert recipe_error(p).startswith(f"{p}:{line_of(p, 'eval_pairs:')}: stages.reward_model.eval_pairs.fil: unknown key")
    p = _edited(tmp_path, "    max_length: 256", "    max_length: 256\n    max_prompt_length: 300")
    assert recipe_error(p).startswith(f"{p}:{line_of(p, 'max_prompt_length')}: stages.reward_model.max_prompt_length:")
    # any TrainingArguments field passes, as for train
    assert load_recipe(RMBOOST, overrides=["reward_model.logging_first_step=true"]).stages["reward_model"][
        "logging_first_step"] is True


def test_what_each_stage_needs(tmp_path):
    # reward_model needs pairs: from pair (generate, score, pair) or from synth
    text = RMBOOST.read_text()
    p = tmp_path / "recipe.yaml"
    p.write_text(text[:text.index("  synth:")] + text[text.index("  reward_model:"):])
    assert recipe_error(p) == (f"{p}:{line_of(p, 'reward_model:')}: stages.reward_model: needs a pair stage or a synth "
                         "stage before it (pair: generate, score, pair; synth: pairs from the prompts through an LLM)")
    # synth makes the pairs in place of generate, score and pair
    p = _edited(tmp_path, "  synth:\n", "  generate: {n: 2}\n  synth:\n")
    assert recipe_error(p).startswith(f"{p}:{line_of(p, 'generate:')}: stages.generate: synth makes the round's pairs")
    # pair needs scores, score needs samples
    p = _edited(tmp_path, '  score: {reward_fn: "prefkit.toy.task:gold_reward"}\n', "", base=TOY)
    assert recipe_error(p) == f"{p}:{line_of(p, '  pair:')}: stages.pair: needs a score stage before it"


def test_cli_bad_synth_recipe_exits_2_with_one_line(tmp_path):
    p = _edited(tmp_path, "aspects: llm", "aspects: some")
    proc = subprocess.run([sys.executable, "-m", "prefkit", "run", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"prefkit run: error: {p}:{line_of(p, 'aspects: some')}: stages.synth.aspects: "
                                   "'some' is not one of llm, sample")


@pytest.mark.slow
def test_smollm2_rmboost_recipe(smollm2_dir, tmp_path):
    """The SmolLM2 form (examples/recipes/smollm2-rmboost.yaml) with fewer prompts: SmolLM2's own
    answers rewritten by the toy stand-in LLM, a SmolLM2 reward model scored on gold pairs."""
    small = ["prompts.train.args.n=8", "synth.chunk_size=8", "synth.generation.max_tokens=16",
             "reward_model.eval_pairs.args.n=8", "reward_model.eval_pairs.args.max_new_tokens=16",
             "reward_model.num_train_epochs=1", "reward_model.save_steps=1"]
    res = run(load_recipe(RECIPES / "smollm2-rmboost.yaml", overrides=small), tmp_path / "run", progress=False,
              log=lambda m: None)
    synth, rm = _step(res, "synth"), _step(res, "reward_model")
    assert res["manifest"]["initial_policy"]["path"] == str(smollm2_dir)
    assert synth["metrics"]["pairs"] > 0 and rm["metrics"]["base_model"] == str(smollm2_dir)
    assert json.loads((Path(rm["output"]) / "config.json").read_text())["architectures"] == [
        "LlamaForSequenceClassification"]
    assert rm["metrics"]["eval_accuracy"]["n"] > 0


@pytest.mark.slow
def test_kill_during_reward_model_training_then_rerun(tmp_path):
    """The reward_model stage resumes from its latest complete checkpoint: the same per-step losses
    and the same accuracy as an uninterrupted run."""
    ckpt = ["reward_model.num_train_epochs=2", "reward_model.save_strategy=steps", "reward_model.save_steps=1"]

    def cmd(d):
        args = [sys.executable, "-m", "prefkit", "run", str(RMBOOST), "-o", str(d), "--no-progress"]
        for s in SMALL + ckpt:
            args += ["--set", s]
        return args

    whole = tmp_path / "whole"
    proc = subprocess.run(cmd(whole), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = tmp_path / "run"
    kill_when(cmd(d), d, lambda p: any(p.glob("round-1/reward_model/*/model/checkpoint-2/trainer_state.json")))
    assert not list(d.glob("round-1/reward_model/*/done"))
    proc = subprocess.run(cmd(d), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads(next(p.glob("round-1/reward_model/*/done")).read_text()) for p in (whole, d))
    (report,) = list(d.glob("round-1/reward_model/*/model/prefkit_train_report.json"))
    assert "/checkpoint-" in (json.loads(report.read_text())["resumed_from"] or "")
    la, lb = a["metrics"]["loss_values"], b["metrics"]["loss_values"]
    assert [s for s, _ in la] == [s for s, _ in lb] and len(la) >= 4
    assert [v for _, v in lb] == pytest.approx([v for _, v in la], abs=1e-5)
    assert b["metrics"]["eval_accuracy"]["accuracy"] == pytest.approx(a["metrics"]["eval_accuracy"]["accuracy"])


def test_backend_forms():
    from prefkit.pipeline.backend_spec import backend_from_spec
    from prefkit.synth import LocalBackend, OpenAIBackend

    local = backend_from_spec({"local": "policy", "batch_size": 4}, policy="/models/round-1")
    assert isinstance(local, LocalBackend) and local.model == "/models/round-1" and local.batch_size == 4
    served = backend_from_spec({"model": "qwen", "base_urls": ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"],
                                "concurrency": 8}, policy="unused")
    assert isinstance(served, OpenAIBackend) and served.base_urls == ["http://127.0.0.1:1/v1",
                                                                      "http://127.0.0.1:2/v1"]
    assert served.concurrency == 8
    with pytest.raises(ConfigError, match=r"^backend.build: prefkit.toy.recipes:prompts returned list, not a "):
        backend_from_spec({"build": "prefkit.toy.recipes:prompts", "args": {"n": 1}}, policy="unused")
    with pytest.raises(ConfigError, match=r"^backend.timout: unknown key for a model backend; valid keys: model, "):
        backend_from_spec({"model": "qwen", "base_urls": ["http://127.0.0.1:1/v1"], "timout": 3}, policy="unused")
