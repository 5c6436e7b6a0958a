"""`prefkit demo --quick` end to end (slow), and the unlearning probe's filter (fast)."""

import json
from pathlib import Path

import pytest


def test_high_quality_rejected_filter():
    import datasets

    from prefkit.evaluate.unlearning import high_quality_rejected

    ds = datasets.Dataset.from_list([
        {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 9.0, "score_rejected": s}
        for s in (2.0, 5.0, 7.5, 4.5, None)])
    assert high_quality_rejected(ds)["score_rejected"] == [5.0, 7.5]
    assert len(high_quality_rejected(ds, threshold=7.0, limit=1)) == 1


POLICIES = ("base", "base-conditioned", "dpo", "ra", "ra-half", "eps-dpo")
SELECT = ("select:alignment-potential", "select:explicit", "select:implicit", "select:random")
RM = ("rm:rmboost", "rm:rlaif", "rm:west-of-n", "rm:rlcd")


def _check_entry(e, n_seeds):
    """An entry's mean and sd are those of its per-seed values."""
    import statistics

    assert len(e["values"]) == n_seeds
    assert e["mean"] == pytest.approx(statistics.fmean(e["values"]))
    assert e["sd"] == pytest.approx(statistics.stdev(e["values"]) if n_seeds > 1 else 0.0)


def _done(run_dir, label):
    """The done marker of a step of a demo run (the engine's manifest names its directory)."""
    entry = json.loads((run_dir / "manifest.json").read_text())["stages"][label]
    return json.loads((run_dir / entry["dir"] / "done").read_text()), run_dir / entry["dir"]


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capfd):
    from prefkit.cli import main
    from prefkit.toy import task
    from prefkit.toy.world import gold_evaluation

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    for png in ("gold_reward.png", "unlearning.png", "goal_following.png"):
        assert (out / png).stat().st_size > 1000

    # results.json: every method of the main world by name, each with mean/sd of its per-seed values
    main_world, ablation = summary["worlds"]
    assert summary["methods"] == main_world["methods"] and main_world["main"] and not ablation["main"]
    assert set(summary["methods"]) == set(POLICIES + SELECT + RM)
    for e in summary["methods"].values():
        _check_entry(e, 2)
    # the ablation world: the same main table without the goal prior, and the prior ablation beside it
    assert main_world["settings"]["goal_prior"] > 0 and ablation["settings"]["goal_prior"] == 0
    assert summary["world"] == main_world["settings"] and main_world["key"] != ablation["key"]
    assert set(ablation["methods"]) == set(POLICIES)
    for e in ablation["methods"].values():
        _check_entry(e, 2)
    for name, a in summary["prior_ablation"].items():
        assert a["with_prior"]["values"] == main_world["methods"][name]["values"]
        assert a["without_prior"]["values"] == ablation["methods"][name]["values"]
        _check_entry(a["difference"], 2)
    # the report's table shows the numbers of results.json
    for name in POLICIES:
        e = summary["methods"][name]
        assert f"| `{name}` | {e['mean']:.3f} | {e['sd']:.3f} |" in report

    # each seed is a run of the demo's recipe on the loop engine, its arms sharing the data stages
    seed0, run0 = main_world["per_seed"][0], out / "seed0"
    manifest = json.loads((run0 / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "toy-demo"
    dirs = {label.split("/", 1)[0]: e["dir"] for label, e in manifest["stages"].items() if label.endswith("round-1/pair")}
    assert len(dirs) == 9 and len(set(dirs.values())) == 1          # 9 arms, one pair stage
    assert (run0 / "report.md").exists()
    curves = main_world["goal_following"]
    assert set(curves) == {"base", "dpo", "ra"} and curves["base"]["goals"] == [2, 4, 6, 8, 10]
    # base-conditioned is the base policy at goal 10 through the RA data's spec, RA at goal 10 through its
    # prefkit_conditioning.json: the goal-10 point of their curve (1 sample per prompt in --quick) is their
    # evaluation's sample 0 (the same requests), read from the evaluation's per-prompt rows
    for arm, curve in (("base-conditioned", "base"), ("ra", "ra")):
        _, d = _done(run0, f"{arm}/round-1/evaluate")
        rows = [json.loads(line) for line in (d / "per_prompt.jsonl").read_text().splitlines()]
        first = [r["reward_fn"] for r in rows if r["sample"] == 0]
        assert len(first) == 16 and curves[curve]["values"][0][-1] == pytest.approx(sum(first) / len(first), abs=1e-12)
        both = [r["reward_fn"] for r in rows]
        assert seed0[f"gold_{arm}"] == pytest.approx(sum(both) / len(both), abs=1e-12)
    # the reported DPO number is the gold reward of the saved DPO model
    train, _ = _done(run0, "dpo/round-1/train")
    eval_prompts = task.make_prompts(16, seed=2000)
    again = gold_evaluation({"dpo": train["output"]}, eval_prompts, n=2, max_new_tokens=24, seed=10_000)
    assert again["policies"]["dpo"]["reward_fn"]["mean"] == seed0["gold_dpo"]
    # RA half: one row per kept pair, RA: two; the RA models carry their conditioning, DPO's does not
    assert 2 * seed0["ra-half_pairs"] == seed0["ra_pairs"]
    for arm in ("ra", "ra-half"):
        assert (Path(_done(run0, f"{arm}/round-1/train")[0]["output"]) / "prefkit_conditioning.json").exists()
    assert not (Path(train["output"]) / "prefkit_conditioning.json").exists()
    if seed0["probe_pairs"]:  # the probe before training, then at each logging step
        assert len(seed0["probe_dpo"]["probe/hq_rejected_logp"]) >= 2

    # one process (this one, with its own torch thread count) gives the numbers the two worker
    # processes gave (one thread each)
    import dataclasses

    from prefkit.toy.demo import run_demo
    from prefkit.toy.demo_config import quick_config

    alone = tmp_path / "alone"
    run_demo(alone, dataclasses.replace(quick_config(seeds=1), ablation_world=None, parallel_worlds=False),
             progress=False)
    seed0_alone = json.loads((alone / "seed0" / "results.json").read_text())
    for key in [k for k in seed0 if k.startswith(("gold_", "select_gold_", "rm_acc_", "curve_"))]:
        assert seed0_alone[key] == seed0[key], key

    # a rerun runs nothing again (every step is done) and the summary's numbers are the same
    capfd.readouterr()
    assert main(["demo", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    assert "· train" not in capfd.readouterr().out
    assert json.loads((out / "results.json").read_text())["methods"] == summary["methods"]


def test_summary_entries_are_per_seed_values_with_their_mean_and_sd():
    from prefkit.toy.demo_report import prior_ablation, world_methods

    seeds = [{"seed": i, "gold_base": 5.0 + i, "gold_dpo": 6.0 + 2 * i, "rm_acc_rlaif": 0.5 + 0.1 * i} for i in range(3)]
    methods = world_methods(seeds)
    assert set(methods) == {"base", "dpo", "rm:rlaif"}
    assert methods["dpo"]["values"] == [6.0, 8.0, 10.0]
    assert methods["dpo"]["mean"] == 8.0 and methods["dpo"]["sd"] == 2.0
    for e in methods.values():
        _check_entry(e, 3)
    with_prior = {"settings": {"goal_prior": 0.2}, "methods": methods}
    without = {"settings": {"goal_prior": 0.0}, "methods": world_methods(
        [{**r, "gold_dpo": r["gold_dpo"] - 1.0 + r["seed"]} for r in seeds])}
    ab = prior_ablation(without, with_prior)  # either world may be the main one
    assert ab["dpo"]["difference"]["values"] == [1.0, 0.0, -1.0]
    assert ab["base"]["difference"]["mean"] == 0.0


@pytest.mark.parametrize("argv, message", [
    (["--methods", "dpo,foo"], "--methods: unknown foo"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--methods", "ra,ira"], "--methods: unknown ira"),
])
def test_demo_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    from prefkit.cli import main

    assert main(["demo", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
