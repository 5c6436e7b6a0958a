"""`prefkit demo --model smollm2 --quick` end to end on the real model (slow), and its options (fast)."""

import json
import statistics
from pathlib import Path

import pytest

REAL_POLICIES = ("base", "base-conditioned", "dpo", "ra", "eps-dpo")


@pytest.mark.slow
def test_real_demo_quick_end_to_end(tmp_path, smollm2_dir):
    from prefkit.cli import main
    from prefkit.generate import render_prompts
    from prefkit.models import load_pretrained, load_tokenizer
    from prefkit.relabel import load_conditioning
    from prefkit.toy import task
    from prefkit.toy.real_model import real_quick_config
    from prefkit.toy.world import gold_evaluation

    cfg = real_quick_config()
    out = tmp_path / "real"
    assert main(["demo", "--model", "smollm2", "--quick", "--out", str(out)]) == 0

    # the seed is a run of the demo's recipe on the engine: every stage's output, by its arm's steps
    seed = out / "seed0"

    def step(label):
        entry = json.loads((seed / "manifest.json").read_text())["stages"][label]
        return json.loads((seed / entry["dir"] / "done").read_text()), seed / entry["dir"]

    for label in ("ra/round-1/score", "ra/round-1/pair", "ra/round-1/relabel"):
        assert Path(step(label)[0]["output"]).stat().st_size > 0
    merged = {}
    for m in ("dpo", "ra", "eps-dpo"):
        done, d = step(f"{m}/round-1/train")
        assert (d / "model" / "adapter_config.json").exists()             # LoRA training
        merged[m] = Path(done["output"])
        assert merged[m] == d / "merged" and (merged[m] / "config.json").exists()   # merged for sampling
    for f in ("report.md", "results.json", "gold_reward.png", "goal_following.png"):
        assert (out / f).stat().st_size > 0

    # results.json: each policy by name with its per-seed values, their mean and sd
    summary = json.loads((out / "results.json").read_text())
    world = summary["worlds"][0]
    assert world["base_dir"] == str(smollm2_dir) and world["settings"]["model"] == "smollm2"
    assert set(summary["methods"]) == set(REAL_POLICIES)
    per_seed = world["per_seed"][0]
    for name, e in summary["methods"].items():
        assert e["values"] == [per_seed[f"gold_{name}"]]
        assert e["mean"] == pytest.approx(statistics.fmean(e["values"])) and e["sd"] == 0.0
    report = (out / "report.md").read_text()
    for name, e in summary["methods"].items():
        assert f"| `{name}` | {e['mean']:.3f} | {e['sd']:.3f} |" in report

    # the goal-following curves: one value per goal, before (base) and after RA training
    curves = world["goal_following"]
    assert set(curves) == {"base", "ra"}
    for c in curves.values():
        assert c["goals"] == list(cfg.curve_goals) == [2, 6, 10]
        assert len(c["mean"]) == 3 and len(c["values"]) == 1 and len(c["values"][0]) == 3
    # base-conditioned and RA at their best goal are the goal-10 points (same prompts and seed)
    assert per_seed["gold_base-conditioned"] == curves["base"]["values"][0][-1]
    assert per_seed["gold_ra"] == curves["ra"]["values"][0][-1]

    # conditioning: in the system turn of SmolLM2's template, replacing its default system prompt,
    # in the RA training rows and when the merged RA model is sampled
    rows = [json.loads(line) for line in Path(step("ra/round-1/relabel")[0]["output"]).read_text().splitlines()]
    assert len(rows) == per_seed["ra_pairs"] == 2 * per_seed["pairs"]
    for r in rows:
        assert r["prompt"][0]["role"] == "system" and r["prompt"][1]["role"] == "user"
        assert r["prompt"][0]["content"].endswith(f"Overall score: {r['goal_score']:g}.")
    spec = load_conditioning(merged["ra"])
    assert spec is not None and spec.placement == "system"
    tok = load_tokenizer(str(merged["ra"]))
    prompt = "Sort these words alphabetically: pear apple fig"
    text = render_prompts([prompt], tok, spec=spec, goal=10)[0]
    assert text.startswith("<|im_start|>system\n" + spec.render(10) + "<|im_end|>\n<|im_start|>user\n" + prompt)
    plain = render_prompts([prompt], tok)[0]
    default_system = plain.split("<|im_end|>")[0]
    assert default_system.startswith("<|im_start|>system\n") and default_system not in text
    assert not (merged["dpo"] / "prefkit_conditioning.json").exists()

    # the reported RA number is the gold reward of the merged RA model, conditioned through its
    # own prefkit_conditioning.json on goal 10
    eval_prompts = task.make_prompts(cfg.n_eval_prompts, seed=2000)
    again = gold_evaluation({"ra": str(merged["ra"])}, eval_prompts, n=cfg.eval_samples,
                            max_new_tokens=cfg.max_new_tokens, seed=10_000)
    assert again["policies"]["ra"]["reward_fn"]["mean"] == per_seed["gold_ra"]

    # the merged model carries the trained adapter: its weights differ from the base model's
    base = dict(load_pretrained(str(smollm2_dir)).named_parameters())
    trained = dict(load_pretrained(str(merged["dpo"])).named_parameters())
    changed = [n for n, p in trained.items() if not bool((p == base[n]).all())]
    assert changed and all("proj" in n for n in changed)

    # the unlearning probe: the pairs whose rejected response the judge scored >= the threshold
    pairs = [json.loads(line) for line in Path(step("ra/round-1/pair")[0]["output"]).read_text().splitlines()]
    hq = sum(p["score_rejected"] >= cfg.probe_threshold for p in pairs)
    assert per_seed["probe_pairs"] == min(hq, cfg.probe_pairs)
    for m in ("dpo", "ra", "eps-dpo"):
        if per_seed["probe_pairs"]:   # the probe before training, then at each logging step
            steps = [s for s, _ in per_seed[f"probe_{m}"]["probe/hq_rejected_logp"]]
            assert steps[0] == 0 and len(steps) >= 2
        else:
            assert per_seed[f"probe_{m}"] == {}


def test_real_demo_options(tmp_path, capsys):
    from prefkit.cli import main
    from prefkit.toy.demo_config import world_name
    from prefkit.toy.real_model import RealWorld, real_config

    assert main(["demo", "--only-seed", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--only-seed applies to the real-model demo (--model)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()

    cfg = real_config(seeds=2, model="some/dir")
    assert cfg.world == RealWorld(model="some/dir") and cfg.ablation_world is None
    assert world_name(cfg.world) == "real model some/dir" and cfg.world.key() == "real-some_dir"
    assert cfg.train_options["use_peft"] and cfg.methods == ("dpo", "ra", "eps-dpo")
