"""The regime map (prefkit.toy.regimes, docs/regimes.md): its cells against the design's tables,
the pre-registered decision rule, the recipe overrides of a seed, and a tiny cell-seed through
the engine."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from prefkit.errors import ConfigError
from prefkit.toy import regimes as R

DOCS = Path(__file__).resolve().parents[2] / "docs"
TINY = R.Scale(train_prompts=16, samples=2, test_prompts=6, test_samples=1, val_prompts=6, val_samples=1,
               curve_samples=1, lr_grid=(5e-4, 2e-3), val_seeds=(100,), max_new_tokens=12,
               world_args={"quick": True})


def _table_levels(section: str, axis: str) -> list[str]:
    """The levels of `axis` in a method's axis table of docs/regimes.md (bold marks dropped)."""
    text = (DOCS / "regimes.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    line = next(ln for ln in body.splitlines() if ln.startswith(f"| {axis}"))
    cell = line.split("|")[2]
    return [v.strip().strip("*").strip() for v in re.split(r"[,·]", cell.replace("**", ""))]


def test_cell_counts_match_the_design():
    ra = R.ra_cells()
    assert sum(c.part == "core" for c in ra) == 40 and sum(c.part == "sweep" for c in ra) == 8
    assert len(R.ap_cells()) == 36 and len(R.eps_cells()) == 16 and len(R.rmboost_cells()) == 9
    assert len({c.name for c in R.all_cells()}) == 109          # no cell twice
    assert all(c.a["length"] == "1ep" and c.a["reg"] == "today" and c.a["slope"] in ("0.2", "0.6")
               for c in ra if c.part == "sweep")


def test_levels_match_the_design_tables():
    eps = R.eps_cells()
    assert [f"{v:g}" for v in sorted({c.a["eps"] for c in eps})] == _table_levels("ε-DPO", "ε")
    assert sorted({c.a["beta0"] for c in eps}) == [float(v) for v in _table_levels("ε-DPO", "β0")]
    ap = R.ap_cells()
    budgets = re.findall(r"\d+%", " ".join(_table_levels("AP", "budget (share of pairs kept)")))
    assert [f"{v * 100:g}%" for v in sorted({c.a["budget"] for c in ap})] == budgets
    weights = re.findall(r"[\d.]+", " ".join(_table_levels("AP", "weight w"))[:20])
    assert sorted({c.a["w"] for c in ap}) == [float(w) for w in weights]
    sizes = re.findall(r"\d+", " ".join(_table_levels("RA (reward-augmented DPO", "data size")).split("×")[-1])
    assert sorted(R.SIZES) == [int(s) for s in sizes]
    # judge noise levels (overall; aspect): 0; 0 · 1.0; 0.5 · 2.0; 1.0
    assert [tuple(float(x) for x in v.split(";")) for v in _table_levels("AP", "judge / reward noise (overall; aspect)")] \
        == list(R.NOISES.values())


def test_worlds_are_the_calibrations_chosen_settings():
    nearest = json.loads((DOCS / "regimes_calibration.json").read_text())["nearest"]
    assert set(nearest) == set(R.WORLDS)
    for target, ((prior, noise, steps), slope) in R.WORLDS.items():
        n = nearest[target]
        assert (n["goal_prior"], n["goal_noise"], n["steps"], n["seeds"]) == (prior, noise, steps, [0])
        assert n["slope"] == pytest.approx(slope, abs=5e-4)


def test_decision_rule_on_synthetic_differences():
    helps = [0.30, 0.25, 0.40, -0.02, 0.35]          # 4 of 5 positive, the interval above 0
    mean, lo, hi = R.interval(helps)
    assert mean == pytest.approx(statistics.fmean(helps))
    assert hi - mean == pytest.approx(2.776 * statistics.stdev(helps) / 5 ** 0.5)
    assert lo > 0 and R.decide(helps) == "helps"
    assert R.decide([-d for d in helps]) == "hurts"
    assert R.decide([0.1, 2.0, 0.1, 0.1, 0.1]) == "cannot be told apart"      # all positive, interval holds 0
    assert R.decide([0.3, 0.3, 0.3, 0.3, 0.3 + 1e-9]) == "helps"
    assert R.decide([0.2, 0.3, 0.1, -0.4, -0.3]) == "cannot be told apart"
    assert R.decide(helps[:4]) == "incomplete (4 of 5 seeds)"


def test_select_cells_filters():
    cells = R.all_cells("ra")
    got = R.select_cells(cells, "slope=0|0.2,length=1ep,reg=today,noise=1;0.5,size=400")
    assert [c.a["slope"] for c in got] == ["0", "0.2"]
    assert [c.name for c in R.select_cells(R.all_cells(), "default")] == [
        "ra:slope=0.2,length=1ep,reg=today,noise=1;0.5,size=400", "ap:budget=0.4,noise=1;0.5,w=1.0",
        "eps:eps=0.01,length=1ep,beta0=0.1", "rmboost:fidelity=0.8,budget=200"]
    assert len(R.select_cells(cells, "3")) == 3
    with pytest.raises(ConfigError, match="unknown axis budgett"):
        R.select_cells(cells, "budgett=0.4")


def test_seed_overrides_follow_the_design():
    from prefkit.pipeline.recipe import load_recipe

    ov = R.group_overrides("0.8", "papers", "2;1", 400, 3, R.DESIGN)
    recipe = load_recipe(R.RECIPE, overrides=ov)
    assert recipe.policy["args"] == {"goal_prior": 1.0, "goal_noise": 0.0, "steps": 900, "seed": 0}
    assert recipe.prompts["train"]["args"] == {"n": 400, "seed": 1003}
    assert recipe.prompts["eval"]["args"] == {"n": 200, "seed": 2003}
    st = recipe.stages
    assert (st["generate"]["n"], st["generate"]["seed"], st["evaluate"]["n"], st["evaluate"]["seed"]) == (4, 1003, 4, 10003)
    assert st["score"]["reward_args"] == {"aspect_noise": 1.0, "overall_noise": 2.0, "seed": 3}
    assert (st["pair"]["ties"], st["pair"]["fine_grained_filter"], st["relabel"]["ties"]) == ("keep", True, "keep")
    # a learning-rate cell's seed: training prompts 1100 + s, validation prompts 4000 + s without test prompts
    val = load_recipe(R.RECIPE, overrides=R.group_overrides("0.2", "today", "1;0.5", 400, 100, R.DESIGN,
                                                            validation=True))
    assert val.prompts["train"]["args"]["seed"] == 1200 and val.stages["evaluate"]["n"] == 2
    from prefkit.toy import task
    from prefkit.toy.recipes import validation_prompts

    got = validation_prompts(**val.prompts["eval"]["args"])
    tests = {p for s in range(2000, 2005) for p in task.make_prompts(200, seed=s)}
    assert 90 <= len(got) <= 100 and not tests & set(got)


def test_every_cells_arms_are_a_valid_recipe():
    from prefkit.pipeline.recipe import load_recipe

    rates = {r: 5e-4 for r in ("dpo", "dpo@10", "ra", "ap", "random", "explicit", "eps", "cond-sft")}
    for cell in R.all_cells()[::7] + R.select_cells(R.all_cells(), "length=stepmatched")[:1]:
        arms = R.cell_arms(cell, rates, R.DESIGN, seed=1, dpo_steps=24, ra_steps=48)
        if cell.method == "rmboost":
            path, ov = R.RM_RECIPE, R.rm_group_overrides(cell.a["budget"], 1, R.DESIGN)
        else:
            path, ov = R.RECIPE, R.group_overrides(R.cell_world(cell), R.cell_reg_data(cell),
                                                   cell.a.get("noise", "1;0.5"), cell.a.get("size", 400), 1, R.DESIGN)
        recipe = load_recipe(path, overrides=ov + ["arms=" + json.dumps(dict(arms.values()))])
        assert len(recipe.arms) == len(arms)
        for _label, m, b in R.comparisons(cell):
            assert m in arms and b in arms
    cell = R.select_cells(R.all_cells("ra"), "slope=0.4,length=stepmatched,reg=papers")[0]
    arms = R.cell_arms(cell, rates, R.DESIGN, dpo_steps=24)
    assert arms["ra"][1]["train"]["max_steps"] == 24 and arms["ra"][1]["train"]["beta"] == 0.01
    assert arms["ra"][1]["train"]["label_smoothing"] == 0.3 and arms["dpo"][1]["train"]["num_train_epochs"] == 1


def test_tiny_cell_seed_through_the_engine(tmp_path):
    """The eps-DPO default cell at tiny sizes: its learning-rate cells, then the cell-seed, read back
    from the engine's stage markers; a rerun finds every step done."""
    cell = R.select_cells(R.all_cells("eps"), "default")[0]
    got = R.run_cell_seed(cell, 0, tmp_path, TINY)
    lr = json.loads(next((tmp_path / "lr").glob("lr_eps*.json")).read_text())
    assert got["rates"]["eps"] == lr["chosen"] and lr["chosen"] in TINY.lr_grid
    assert lr["chosen"] == min(float(r) for r, m in lr["mean"].items() if m == max(lr["mean"].values()))
    run_dir = tmp_path / "data" / "slope0.2-pairs-today-noise1_0.5-n400" / "seed0"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    ev = {e["arm"]: json.loads((run_dir / e["dir"] / "done").read_text())["metrics"]["reward_fn"]["mean"]
          for e in manifest["stages"].values() if e["stage"] == "evaluate" and e["round"] == 1}
    assert got["gold"] == {"eps": ev[got["arms"]["eps"]], "dpo": ev[got["arms"]["dpo"]]}
    assert got["diff"]["eps - dpo"] == pytest.approx(got["gold"]["eps"] - got["gold"]["dpo"])
    assert got["train_steps"]["eps"] >= 1 and got["pairs"] > 0
    (tmp_path / "cells" / cell.slug / "seed0.json").unlink()
    again = R.run_cell_seed(cell, 0, tmp_path, TINY)
    assert again["gold"] == got["gold"] and again["seconds_run"] == 0
    rows = R.collect(tmp_path, [cell, R.all_cells("eps")[0]], list(range(5)))
    assert rows[0]["decision"] == "incomplete (1 of 5 seeds)" and rows[1]["decision"] == "not run"
    text = R.write_map(tmp_path, [cell, R.all_cells("eps")[0]], list(range(5))).read_text()
    assert "not run" in text and "eps - dpo" in text and (tmp_path / "map_eps_eps.png").stat().st_size > 1000
    from prefkit.code_version import code, fingerprint

    assert got["code"] == code() and lr["code"] == code()          # each record says which code made it
    assert f"Code: 1 cell-seed(s) made by prefkit {fingerprint()}" in text


@pytest.mark.slow
def test_tiny_ra_stepmatched_cell(tmp_path):
    """RA's step-matched cell: RA trains for DPO's number of steps at 1 epoch; base@10 is the base."""
    cell = R.select_cells(R.all_cells("ra"), "slope=0.2,length=stepmatched,reg=today,noise=1;0.5,size=400")[0]
    got = R.run_cell_seed(cell, 0, tmp_path, TINY)
    assert got["train_steps"]["ra"] == got["train_steps"]["dpo"]
    assert set(got["diff"]) == {"ra - dpo", "ra - dpo@10", "ra - base@10", "ra - cond-sft"}
    assert set(got["curves"]) == {"dpo@10", "base@10", "ra", "cond-sft"}
    assert got["train_steps"]["cond-sft"] == got["train_steps"]["ra"]


def test_cond_sft_leaves_the_other_arms_steps_unchanged():
    """Adding `cond-sft` to an RA cell changes none of its other arms: the same arm names, the same
    stages and options, so the same engine keys (results already computed stay valid)."""
    from prefkit.pipeline import plan
    from prefkit.pipeline.engine import Runner
    from prefkit.pipeline.recipe import load_recipe

    rates = {"dpo": 2e-4, "dpo@10": 2e-4, "ra": 5e-4, "cond-sft": 2e-3}
    cells = R.select_cells(R.all_cells("ra"), "slope=0.2|0.8") + R.select_cells(R.all_cells("ra"), "size=100")
    for cell in cells:
        ov = R.group_overrides(R.cell_world(cell), R.cell_reg_data(cell), cell.a["noise"], cell.a["size"], 2,
                               R.DESIGN)
        without = R.cell_arms(cell, rates, R.DESIGN, seed=2, dpo_steps=24)
        with_sft = R.cell_arms(cell, rates, R.DESIGN, seed=2, dpo_steps=24, ra_steps=47)
        assert {k: v for k, v in with_sft.items() if k != "cond-sft"} == without
        keys = []
        for arms in (without, with_sft):
            recipe = load_recipe(R.RECIPE, overrides=ov + ["arms=" + json.dumps(dict(arms.values()))])
            runner = Runner(recipe, Path("/nonexistent"))
            keys.append({s.label: runner.key(s, {"inputs": "the same"}) for s in plan(recipe)
                         if s.arm != with_sft["cond-sft"][0]})
        assert keys[0] == keys[1] and len(keys[0]) >= 5 * (len(without) - 1)
        name, sft = with_sft["cond-sft"]
        assert name == f"cond-sft-{cell.a['reg']}-lr0.002-steps47"
        assert sft["sft"]["max_steps"] == 47 and sft["sft"]["learning_rate"] == 2e-3 and sft["sft"]["seed"] == 2
        assert sft["pair"] is False and sft["train"] is False and sft["relabel"]["rows"] == "sft"
        assert sft["evaluate"]["goal"] == 10 == with_sft["ra"][1]["evaluate"]["goal"]
        assert R.lr_cells(cell)["cond-sft"].name == f"lr:cond-sft,slope={cell.a['slope']},reg={cell.a['reg']}"
        assert ("ra - cond-sft", "ra", "cond-sft") in R.comparisons(cell)


@pytest.mark.slow
def test_tiny_cond_sft_cell_seed(tmp_path):
    """RA's default cell with its conditioning-only control: cond-sft's learning rate picked from
    the grid by its own learning-rate cell, trained for RA's optimiser steps on every judged sample
    conditioned on its own score, evaluated at goal 10; a record from before cond-sft is completed
    with the other arms found done."""
    cell = R.select_cells(R.all_cells("ra"), "default")[0]
    got = R.run_cell_seed(cell, 0, tmp_path, TINY)
    lr = json.loads((tmp_path / "lr" / "lr_cond-sft,slope=0.2,reg=today.json").read_text())
    assert got["rates"]["cond-sft"] == lr["chosen"] and set(lr["mean"]) == {f"{r:g}" for r in TINY.lr_grid}
    assert got["train_steps"]["cond-sft"] == got["train_steps"]["ra"] >= 1
    assert got["diff"]["ra - cond-sft"] == pytest.approx(got["gold"]["ra"] - got["gold"]["cond-sft"])
    assert "cond-sft" in got["curves"]
    run_dir = tmp_path / "data" / "slope0.2-pairs-today-noise1_0.5-n400" / "seed0"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    sft = manifest["stages"][f"{got['arms']['cond-sft']}/round-1/sft"]
    assert sft["metrics"]["steps"] == got["train_steps"]["ra"]
    rows = manifest["stages"][f"{got['arms']['cond-sft']}/round-1/relabel"]
    judged = [json.loads(x) for x in open(manifest["stages"][f"{got['arms']['cond-sft']}/round-1/score"]["output"])]
    assert sft["metrics"]["rows"] == sum(1 for _ in open(rows["output"])) >= 0.9 * sum(len(r["responses"])
                                                                                      for r in judged)
    # an earlier record (without cond-sft) is completed; the other arms' results are kept
    path = tmp_path / "cells" / cell.slug / "seed0.json"
    old = json.loads(path.read_text())
    for key in ("gold", "diff", "rates", "arms", "train_steps", "curves"):
        old[key] = {k: v for k, v in old[key].items() if "cond-sft" not in k}
    path.write_text(json.dumps(old))
    again = R.run_cell_seed(cell, 0, tmp_path, TINY)
    assert again["gold"] == got["gold"] and again["diff"] == got["diff"]
    assert again["seconds_run"] == pytest.approx(old["seconds_run"], abs=0.05)   # the record rounds to 0.1 s
    rows = {r["comparison"]: r for r in R.collect(tmp_path, [cell], [0])}
    assert rows["ra - cond-sft"]["diffs"] == [got["diff"]["ra - cond-sft"]]
    assert "cond-sft" in R.write_map(tmp_path, [cell], [0]).read_text()


def test_cli_dry_run_states_the_cost(tmp_path, capsys):
    from prefkit.cli import main

    assert main(["demo", "--regimes", "--method", "ap", "--dry-run", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "36 cell(s) x 5 seed(s): 180 cell-seed(s) and 3 learning-rate cell(s) to run; estimated" in err
    assert main(["demo", "--cells", "3"]) == 2
    assert main(["demo", "--mechanism"]) == 2   # the mechanism panel belongs to the regime map (--regimes)
    assert main(["demo", "--regimes", "--mechanism", "--cells", "3", "--out", str(tmp_path)]) == 2
    assert "--cells applies to the map's cells, not to --mechanism" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_mechanism_panel(tmp_path):
    """The RA mechanism panel at tiny sizes: the probed RA arm trains in the map's data group at the
    learning-rate cell's rate, logs the half probe from step 0 (policy = reference: rewards 0) on,
    trains exactly as the map's own RA arm there, and a rerun finds it done."""
    from prefkit.toy import mechanism as M

    scale = R.Scale(**{**TINY.__dict__, "train_prompts": 48})
    jp = R.run_mechanism(tmp_path, seeds=1, scale=scale, rows=4, worlds=["0.2"])
    panel = json.loads(jp.read_text())
    (level,) = panel["levels"]
    rec = panel["runs"][0]
    lr = json.loads((tmp_path / "lr" / "lr_ra,slope=0.2,reg=today.json").read_text())["chosen"]
    assert level["slope"] == R.WORLDS["0.2"][1] and level["learning_rate"] == lr and rec["rows"] == {"w": 4, "l": 4}
    steps = [s for s, _ in rec["values"]["grad_cosine"]]
    assert steps[0] == 0 and steps[1:] == list(range(5, rec["steps"] + 1, 5)) and len(steps) >= 2
    for key in M.REWARDS:
        assert rec["values"][key][0][1] == pytest.approx(0.0, abs=1e-6)
    assert all(-1 <= v <= 1 for _, v in rec["values"]["grad_cosine"])
    assert level["summary"]["grad_cosine"]["steps"] == steps and (tmp_path / "mechanism.png").stat().st_size > 1000
    # the map's RA arm of that cell-seed, in the same run directory: the same training
    cell = R.select_cells(R.all_cells("ra"), "slope=0.2,length=1ep,reg=today,noise=1;0.5,size=400")[0]
    name, changes = R.cell_arms(cell, {"dpo": lr, "ra": lr}, scale)["ra"]
    res = R.run_arms(Path(rec["run_dir"]), R.group_overrides("0.2", "today", "1;0.5", 400, 0, scale),
                     {name: {**changes, "evaluate": False}})
    assert res[name]["1/train"]["metrics"]["loss_values"] == rec["loss_values"]
    assert not any(res[name][f"1/{st}"]["ran"] for st in ("generate", "score", "pair", "relabel"))  # the same data
    again = R.run_mechanism(tmp_path, seeds=1, scale=scale, rows=4, worlds=["0.2"])
    assert json.loads(again.read_text())["runs"] == panel["runs"]
    with pytest.raises(ConfigError, match="unknown world level"):
        R.run_mechanism(tmp_path, seeds=1, scale=scale, worlds=["0.3"])


def test_the_map_refuses_results_and_steps_of_other_code(tmp_path, capsys):
    """A map directory holding a cell-seed record or an engine step made by other prefkit code (here:
    a record without a `code` field, as prefkit wrote before it recorded one, and a step of another
    fingerprint) is refused before anything runs, naming them; steps moved aside (RUN_DIR/stale/) and
    steps of this code are not counted."""
    from prefkit import code_version

    cell = R.select_cells(R.all_cells("eps"), "default")[0]
    rec = tmp_path / "cells" / cell.slug / "seed0.json"
    rec.parent.mkdir(parents=True)
    rec.write_text(json.dumps({"cell": cell.name, "seed": 0, "seconds_run": 1.0}))
    run_dir = tmp_path / "data" / "g" / "seed0"
    for where, made in [("round-1/generate/aaa", {"fingerprint": "0123456789abcdef"}),
                        ("stale/0123456789abcdef/round-1/generate/bbb", {"fingerprint": "0123456789abcdef"}),
                        ("round-1/score/ccc", code_version.code())]:
        (run_dir / where).mkdir(parents=True)
        (run_dir / where / "done").write_text(json.dumps({"code": made}))
    assert R.main(["--out", str(tmp_path), "--method", "eps", "--cells", "default", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"prefkit.toy.regimes: error: {tmp_path}: 2 result(s) or step(s) were made by other "
                          f"prefkit code (cells/{cell.slug}/seed0.json, data/g/seed0/round-1/generate/aaa).")
    assert "The map must not mix code versions" in err and "--rerun-stale" in err and "--keep-stale" in err
    assert not (tmp_path / "lr").exists() and not (tmp_path / "map.md").exists()
    with pytest.raises(ConfigError, match="made by other prefkit code"):
        R._cached(rec, "refuse")
    assert R._cached(rec, "keep")["seed"] == 0 and R._cached(rec, "rerun") is None


def test_demo_stale_flags_belong_to_the_regime_map():
    from prefkit.cli import main

    assert main(["demo", "--keep-stale", "--quick"]) == 2


# -- RMBoost's cells (docs/regimes.md, "RMBoost") ----------------------------------------------------

TINY_RM = R.Scale(**{**TINY.__dict__, "rm_prompts": 16, "rm_eval_prompts": 40, "rm_eval_pairs": 24})


def test_rmboost_cells_match_the_design():
    cells = R.rmboost_cells()
    assert len(cells) == 9 and len({c.name for c in cells}) == 9
    fid = _table_levels("RMBoost", "rewriter fidelity")
    assert [f"{v:g}" for v in sorted({c.a["fidelity"] for c in cells})] == fid == ["0.5", "0.8", "0.95"]
    assert sorted({c.a["budget"] for c in cells}) == [int(v) for v in _table_levels("RMBoost", "budget")]
    assert [c.name for c in cells if R.is_default(c)] == ["rmboost:fidelity=0.8,budget=200"]
    assert [label for label, _, _ in R.comparisons(cells[0])] == [
        "rmboost - rlaif", "rmboost - west-of-n", "rmboost - rlcd"]
    assert R.lr_cells(cells[0]) == {}                               # the demo's RM config, no rate grid
    assert R.all_cells("rmboost") == cells and R.select_cells(R.all_cells(), "fidelity=0.5") == cells[:3]


def test_rmboost_seed_overrides_and_arms_follow_the_design():
    from prefkit.pipeline.recipe import load_recipe

    arms = {f: R.cell_arms(R.Cell("rmboost", (("fidelity", f), ("budget", 800))), {}, R.DESIGN, seed=3)
            for f in R.FIDELITIES}
    ov = R.rm_group_overrides(800, 3, R.DESIGN)
    recipe = load_recipe(R.RM_RECIPE, overrides=ov + ["arms=" + json.dumps(dict(arms[0.5].values()))])
    assert recipe.prompts["train"]["args"]["n"] == 800 and recipe.prompts["train"]["args"]["seed"] == 1003
    held = recipe.stages["reward_model"]["eval_pairs"]["args"]
    assert (held["n"], held["seed"], held["sample_seed"], held["pairs"]) == (500, 2003, 10003, 400)
    rm = recipe.stages["reward_model"]
    assert (rm["learning_rate"], rm["num_train_epochs"], rm["per_device_train_batch_size"], rm["seed"]) == (5e-4, 2, 16, 3)
    assert list(recipe.arms) == ["rmboost-fidelity0.5", "rlaif", "west-of-n", "rlcd"]
    rb = recipe.arms["rmboost-fidelity0.5"]["synth"]
    assert rb["method"] == "rmboost" and rb["seed"] == 3
    assert rb["backend"]["args"]["edit_success"] == 0.5 and rb["backend"]["args"]["slip"] == 0.2
    assert rb["backend"]["args"]["seed"] == 1003 and rb["backend"]["args"]["world"]["goal_prior"] == 0.5
    assert recipe.arms["rlaif"]["synth"]["seed"] == 3
    # the baselines do not depend on the fidelity: one arm shared by the three cells of a budget and seed
    for m in ("rlaif", "west-of-n", "rlcd"):
        assert arms[0.5][m] == arms[0.8][m] == arms[0.95][m]
    assert len({json.dumps(a["rmboost"]) for a in arms.values()}) == 3
    # the default budget follows the Scale (tests shrink it); other levels are as named
    assert load_recipe(R.RM_RECIPE, overrides=R.rm_group_overrides(200, 0, TINY_RM)).prompts["train"]["args"]["n"] == 16
    assert load_recipe(R.RM_RECIPE, overrides=R.rm_group_overrides(100, 0, TINY_RM)).prompts["train"]["args"]["n"] == 100


def _rm_done(run_dir: Path) -> dict:
    """arm -> the reward_model stage's (done marker, directory) of a run."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {e["arm"]: (json.loads((run_dir / e["dir"] / "done").read_text()), run_dir / e["dir"])
            for e in manifest["stages"].values() if e["stage"] == "reward_model" and e.get("status") == "done"}


@pytest.mark.slow
def test_tiny_rmboost_cell_seed_through_the_engine(tmp_path):
    """RMBoost's default cell at tiny sizes: one engine run of the reward-model recipe, four RM
    accuracies on one shared file of held-out pairs, differences as recorded; a rerun retrains
    nothing; the next fidelity cell of the same budget and seed trains only its RMBoost arm."""
    cell = R.select_cells(R.all_cells("rmboost"), "default")[0]
    got = R.run_cell_seed(cell, 0, tmp_path, TINY_RM)
    run_dir = tmp_path / "data" / "rm-slope0.2-budget200" / "seed0"
    done = _rm_done(run_dir)
    assert set(got["arms"]) == set(R.RM_METHODS) and set(done) == set(got["arms"].values())
    held = {role: (done[arm][1] / "eval_pairs.jsonl").read_bytes() for role, arm in got["arms"].items()}
    assert len(set(held.values())) == 1                              # the same pairs for every arm
    rows = [json.loads(x) for x in next(iter(held.values())).decode().splitlines()]
    assert len(rows) == got["eval_pairs"] == TINY_RM.rm_eval_pairs
    assert all(r["score_chosen"] > r["score_rejected"] for r in rows)
    for role, arm in got["arms"].items():
        acc = done[arm][0]["metrics"]["eval_accuracy"]
        assert 0.0 <= got["accuracy"][role] == acc["accuracy"] <= 1.0 and acc["n"] == len(rows)
    for label, m, b in R.comparisons(cell):
        assert got["diff"][label] == pytest.approx(got["accuracy"][m] - got["accuracy"][b], abs=1e-12)
    assert got["pairs"]["rmboost"] > 0 and 0.0 <= got["near_copy_share"] <= 1.0
    assert all(0.0 <= v <= 1.0 for v in got["label_agreement"].values())
    # a rerun from the run directory: every step found done, the same numbers
    stamps = {arm: (d / "done").stat().st_mtime_ns for arm, (_, d) in done.items()}
    (tmp_path / "cells" / cell.slug / "seed0.json").unlink()
    again = R.run_cell_seed(cell, 0, tmp_path, TINY_RM)
    assert again["accuracy"] == got["accuracy"] and again["seconds_run"] == 0
    # fidelity 0.5, same budget and seed: only its RMBoost arm trains; the baselines are found done
    other = R.select_cells(R.all_cells("rmboost"), "fidelity=0.5,budget=200")[0]
    low = R.run_cell_seed(other, 0, tmp_path, TINY_RM)
    after = _rm_done(run_dir)
    assert set(after) == {"rmboost-fidelity0.5", "rlaif", "west-of-n", "rlcd"}
    assert {arm: (after[arm][1] / "done").stat().st_mtime_ns for arm in ("rlaif", "west-of-n", "rlcd")} == \
        {arm: stamps[arm] for arm in ("rlaif", "west-of-n", "rlcd")}
    assert after["rmboost-fidelity0.5"][1] != done["rmboost-fidelity0.8"][1]
    # the fidelity reaches the stand-in LLM: the synth step's recorded backend builds a ToyRewriter at 0.5
    from prefkit.pipeline.backend_spec import backend_from_spec

    manifest = json.loads((run_dir / "manifest.json").read_text())
    synth = json.loads((run_dir / manifest["stages"]["rmboost-fidelity0.5/round-1/synth"]["dir"] / "stage.json").read_text())
    rewriter = backend_from_spec(synth["options"]["backend"])
    assert (rewriter.edit_success, rewriter.slip) == (0.5, 0.2)
    assert {k: v for k, v in low["accuracy"].items() if k != "rmboost"} == \
        {k: v for k, v in got["accuracy"].items() if k != "rmboost"}
    assert low["eval_pairs_sha256"] == got["eval_pairs_sha256"] and low["seconds_run"] > 0
    (tmp_path / "cells" / cell.slug / "seed0.json").unlink()          # and back: fidelity 0.8 is still done
    assert R.run_cell_seed(cell, 0, tmp_path, TINY_RM)["seconds_run"] == 0
    rows = R.collect(tmp_path, R.all_cells("rmboost"), list(range(5)))
    row = next(r for r in rows if r["cell"] == cell.name and r["comparison"] == "rmboost - rlcd")
    assert row["decision"] == "incomplete (1 of 5 seeds)" and row["diffs"] == [got["diff"]["rmboost - rlcd"]]
    assert row["metric"] == "accuracy" and row["accuracy"] == got["accuracy"]
    text = R.write_map(tmp_path, R.all_cells("rmboost"), list(range(5))).read_text()
    assert "RM accuracy on held-out gold-labelled pairs" in text and "rmboost - west-of-n" in text
    assert "not run" in text and (tmp_path / "map_rmboost_fidelity.png").stat().st_size > 1000


def test_stop_time_is_the_next_occurrence():
    import calendar

    at_2300 = float(calendar.timegm((2026, 12, 6, 23, 0, 0)))
    assert R._stop_time("23:55", now=at_2300) == at_2300 + 55 * 60
    assert R._stop_time("00:30", now=at_2300) == at_2300 + 90 * 60          # past midnight: tomorrow's
    assert R._stop_time(None) is None
    with pytest.raises(ConfigError, match="expected HH:MM"):
        R._stop_time("noon")


def test_levels_belong_to_the_mechanism_panel(tmp_path, capsys):
    from prefkit.cli import main

    assert R.main(["--out", str(tmp_path), "--levels", "0"]) == 2
    assert "--levels applies to the mechanism panel" in capsys.readouterr().err
    assert main(["demo", "--levels", "0"]) == 2
    assert R.main(["--out", str(tmp_path), "--mechanism", "--levels", "0.3"]) == 2
    assert "unknown world level(s) 0.3" in capsys.readouterr().err and not (tmp_path / "mechanism").exists()
