"""`prefkit demo --quick` end to end (slow), and the unlearning probe's filter (fast)."""

import json

import pytest


def test_high_quality_rejected_filter():
    import datasets

    from prefkit.evaluate.unlearning import high_quality_rejected

    ds = datasets.Dataset.from_list([
        {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 9.0, "score_rejected": s}
        for s in (2.0, 5.0, 7.5, 4.5, None)])
    assert high_quality_rejected(ds)["score_rejected"] == [5.0, 7.5]
    assert len(high_quality_rejected(ds, threshold=7.0, limit=1)) == 1


POLICIES = ("base", "base-conditioned", "dpo", "ra", "ra-half", "eps-dpo", "ira")
SELECT = ("select:alignment-potential", "select:explicit", "select:implicit", "select:random")
RM = ("rm:rmboost", "rm:rlaif", "rm:west-of-n", "rm:rlcd")


def _check_entry(e, n_seeds):
    """An entry's mean and sd are those of its per-seed values."""
    import statistics

    assert len(e["values"]) == n_seeds
    assert e["mean"] == pytest.approx(statistics.fmean(e["values"]))
    assert e["sd"] == pytest.approx(statistics.stdev(e["values"]) if n_seeds > 1 else 0.0)


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

    seed0 = main_world["per_seed"][0]
    curves = main_world["goal_following"]
    assert set(curves) == {"base", "dpo", "ra"} and curves["base"]["goals"] == [2, 4, 6, 8, 10]
    # base-conditioned is the base policy conditioned on goal 10 by hand; RA is conditioned on 10 through
    # its prefkit_conditioning.json: the goal-10 point of their curve (1 sample per prompt in --quick)
    # is their evaluation's sample 0 (the same requests), read from the evaluation's per-prompt rows
    rows = [json.loads(line) for line in (out / "seed0" / "eval" / "per_prompt.jsonl").read_text().splitlines()]
    for policy, curve in (("base-conditioned", "base"), ("ra", "ra")):
        first = [r["reward_fn"] for r in rows if r["policy"] == policy and r["sample"] == 0]
        assert len(first) == 16 and curves[curve]["values"][0][-1] == pytest.approx(sum(first) / len(first), abs=1e-12)
        both = [r["reward_fn"] for r in rows if r["policy"] == policy]
        assert seed0[f"gold_{policy}"] == pytest.approx(sum(both) / len(both), abs=1e-12)
    assert (out / "seed0" / "eval" / "outputs" / "dpo.alpaca_eval.json").exists()
    # the reported DPO number is the gold reward of the saved DPO model
    eval_prompts = task.make_prompts(16, seed=2000)
    again = gold_evaluation({"dpo": str(out / "seed0" / "dpo")}, eval_prompts, n=2, max_new_tokens=24, seed=10_000)
    assert again["policies"]["dpo"]["reward_fn"]["mean"] == seed0["gold_dpo"]
    # RA half: one row per kept pair, RA: two; IRA's goals come from implicit rewards
    assert 2 * seed0["ra-half_pairs"] == seed0["ra_pairs"]
    ira_rows = [json.loads(line) for line in (out / "seed0" / "ira_pairs.jsonl").read_text().splitlines()]
    assert len(ira_rows) == seed0["ira_pairs"] and "implicit_reward_chosen" in ira_rows[0]
    for m in ("ra", "ra-half", "ira"):
        assert (out / "seed0" / m / "prefkit_conditioning.json").exists()
    assert not (out / "seed0" / "dpo" / "prefkit_conditioning.json").exists()
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

    # a rerun resumes: finished seeds are skipped and the summary's numbers are the same
    assert main(["demo", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    assert "skipping" in capfd.readouterr().out   # from the worker processes too
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
    (["--methods", "ra,ira"], "--methods: ira relabels with the DPO model's implicit rewards; add dpo"),
])
def test_demo_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    from prefkit.cli import main

    assert main(["demo", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_a_seed_resumes_part_by_part_and_its_parts_merge_into_results_json(tmp_path):
    """The two-process demo runs a seed as parts (PARTS): each part's results-<part>.json is read back
    instead of rerunning its stages, and the merged results.json replaces the part files."""
    from prefkit.toy.demo import PARTS, merge_parts, run_seed
    from prefkit.toy.demo_config import quick_config

    calls = []

    def fake_stage(name):
        def fn(ctx):
            calls.append(name)
            ctx["results"][f"from_{name.replace(' ', '_')}"] = len(calls)
        return fn

    stages = [(n, fake_stage(n)) for n in ("sample", "select", "reward models")]
    cfg = quick_config()
    parts = {}
    for part, _ in PARTS:
        parts[part], reused = run_seed(tmp_path, cfg, cfg.world, tmp_path, stages, 0, progress=False, part=part)
        assert reused == 0
    assert calls == ["sample", "select", "reward models"]
    assert {p.name for p in (tmp_path / "seed0").iterdir()} == {
        "results-core.json", "results-select.json", "results-reward-models.json"}
    again, reused = run_seed(tmp_path, cfg, cfg.world, tmp_path, stages, 0, progress=False, part="select")
    assert reused == 1 and again == parts["select"] and len(calls) == 3        # read back, not rerun
    merged = merge_parts(tmp_path, 0, parts)
    assert merged["from_sample"] == 1 and merged["from_select"] == 2 and merged["from_reward_models"] == 3
    assert [p.name for p in (tmp_path / "seed0").iterdir()] == ["results.json"]
