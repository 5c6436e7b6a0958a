"""`prefkit demo --model smollm2 --lab power` (prefkit.toy.real_lab): the power-sized lab at a tiny
size on the real model (slow), its statistics and its options (fast)."""

import json
import math
import statistics

import pytest


def _train_step(seed_dir, arm):
    manifest = json.loads((seed_dir / "manifest.json").read_text())
    entry = manifest["stages"][f"{arm}/round-1/train"]
    d = seed_dir / entry["dir"]
    return json.loads((d / "stage.json").read_text()), json.loads((d / "done").read_text()), d


@pytest.mark.slow
def test_power_lab_tiny_on_smollm2_records_pairs_and_resumes(tmp_path, smollm2_dir):
    from prefkit.cli import main
    from prefkit.toy.real_lab import COMPARISONS, PAPERS_ARM, POLICIES, per_sample_gold

    out = tmp_path / "lab"
    argv = ["demo", "--model", "smollm2", "--lab", "power", "--quick", "--prompts", "4", "--samples", "2",
            "--seeds", "1", "--out", str(out)]
    assert main(argv) == 0
    seed = out / "seed0"
    rec = json.loads((seed / "lab_record.json").read_text())
    assert rec["missing_policies"] == [] and set(rec["policies"]) == set(POLICIES)

    # per-sample gold rewards: 4 prompts x 2 samples per policy, the same as the evaluate step's
    # records, and their mean is the engine's mean
    manifest = json.loads((seed / "manifest.json").read_text())["stages"]
    for p, v in rec["policies"].items():
        label = "dpo/round-0/evaluate" if p == "base" else f"{p}/round-1/evaluate"
        assert v["samples"] == per_sample_gold(seed / manifest[label]["dir"])
        assert len(v["samples"]) == 4 and all(len(row) == 2 for row in v["samples"])
        flat = [x for row in v["samples"] for x in row]
        assert None not in flat
        assert v["mean"] == pytest.approx(statistics.fmean(flat)) == pytest.approx(v["engine_mean"])

    # each comparison's paired difference, recomputed here from the per-sample values
    for label, a, b in COMPARISONS:
        sa, sb = rec["policies"][a]["samples"], rec["policies"][b]["samples"]
        diffs = [x - y for ra, rb in zip(sa, sb) for x, y in zip(ra, rb)]
        c = rec["comparisons"][label]
        assert c["n"] == 8 and c["missing"] == 0
        assert c["d"] == pytest.approx(statistics.fmean(diffs))
        assert c["d"] == pytest.approx(rec["policies"][a]["mean"] - rec["policies"][b]["mean"])
        assert c["sd_diff"] == pytest.approx(statistics.stdev(diffs))

    # the papers-scale arm: full-parameter, beta 0.01, learning rate 5e-7; the others LoRA at 5e-4
    stage, done, d = _train_step(seed, PAPERS_ARM)
    assert stage["options"]["use_peft"] is False
    assert stage["options"]["beta"] == 0.01 and stage["options"]["learning_rate"] == 5e-7
    assert (d / "model" / "model.safetensors").exists() and not (d / "model" / "adapter_config.json").exists()
    assert done["output"] == str(d / "model")          # no LoRA merge: the trained model itself
    stage, done, d = _train_step(seed, "dpo")
    assert stage["options"]["use_peft"] is True and stage["options"]["beta"] == 0.1
    assert stage["options"]["learning_rate"] == 5e-4 and (d / "model" / "adapter_config.json").exists()

    # the report and its json: every comparison with its decision (1 of 5 seeds: incomplete)
    lab = json.loads((out / "lab.json").read_text())
    report = (out / "report.md").read_text()
    for label, _, _ in COMPARISONS:
        assert lab["comparisons"][label]["decision"] == "incomplete (1 of 5 seeds)"
        assert lab["comparisons"][label]["d"] == [rec["comparisons"][label]["d"]]
        assert f"| {label} | {rec['comparisons'][label]['d']:+.3f} |" in report
    grids, sds = [], []   # a policy whose samples equal another's counted once
    for p in POLICIES:
        if rec["policies"][p]["samples"] not in grids:
            grids.append(rec["policies"][p]["samples"])
            sds.append(statistics.stdev(x for row in rec["policies"][p]["samples"] for x in row))
    assert lab["sigma_pooled"] == pytest.approx(math.sqrt(statistics.fmean(s * s for s in sds)))

    # a rerun skips every finished step: no step's done marker is written again
    markers = {p: p.stat().st_mtime_ns for p in seed.rglob("done")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in seed.rglob("done")} == markers
    again = json.loads((seed / "lab_record.json").read_text())
    assert again["wall_seconds"] == rec["wall_seconds"] and again["comparisons"] == rec["comparisons"]

    # --report-only: the same report from the records, nothing run; it names the code that ran the seed
    from prefkit.code_version import code, describe

    (out / "report.md").unlink()
    assert main(argv + ["--report-only"]) == 0
    assert {p: p.stat().st_mtime_ns for p in seed.rglob("done")} == markers
    assert (out / "report.md").read_text() == report
    assert f"| {describe(code())} |" in report and (out / "lab.png").stat().st_size > 10_000
    assert json.loads((out / "lab.json").read_text())["code"] == {"0": code()}


def test_paired_and_icc_from_per_sample_values():
    from prefkit.toy.real_lab import icc, paired

    got = paired([[1.0, 2.0], [3.0, None]], [[0.0, 0.0], [1.0, 1.0]])
    assert got["n"] == 3 and got["missing"] == 1
    assert got["d"] == pytest.approx(5 / 3) and got["sd_diff"] == pytest.approx(statistics.stdev([1, 2, 2]))
    assert got["rho"] == pytest.approx(statistics.correlation([1.0, 2.0, 3.0], [0.0, 0.0, 1.0]))
    # all variation between prompts: c = 1; all within prompts: c = -1/(m-1) = -1 for m = 2
    assert icc([[1.0, 1.0], [3.0, 3.0]]) == pytest.approx(1.0)
    assert icc([[1.0, 3.0], [1.0, 3.0]]) == pytest.approx(-1.0)
    with pytest.raises(Exception, match="different prompts or samples"):
        paired([[1.0, 2.0]], [[1.0]])


def test_power_config_and_options(tmp_path, capsys):
    from prefkit.cli import main
    from prefkit.toy.demo import demo_arms, demo_overrides
    from prefkit.toy.real_lab import PAPERS_ARM, power_config, samples_per_seed

    cfg = power_config()
    assert (cfg.seeds, cfg.n_eval_prompts, cfg.eval_samples) == (5, 300, 4)
    assert cfg.n_train_prompts == 16 and cfg.train_options["use_peft"] and cfg.learning_rate == 5e-4
    assert demo_arms(cfg, True) == ["base-conditioned", "dpo", "ra", "eps-dpo", PAPERS_ARM]
    over = demo_overrides(cfg, cfg.world, 3, demo_arms(cfg, True))
    assert "evaluate.batch_size=256" in over and "evaluate.seed=10003" in over
    papers = [o for o in over if o.startswith(f"arms.{PAPERS_ARM}=")]
    assert len(papers) == 1 and json.loads(papers[0].split("=", 1)[1])["train"] == {
        "use_peft": False, "beta": 0.01, "learning_rate": 5e-7}
    # 6 policies x 1200 samples, and the base and RA curves' goals 2 and 6 at 1 sample per prompt
    assert samples_per_seed(cfg) == 6 * 1200 + 2 * 2 * 300

    for argv, msg in ((["demo", "--lab", "power"], "--lab applies to the real-model lab"),
                      (["demo", "--model", "smollm2", "--prompts", "10"], "--prompts applies to the power-sized lab"),
                      (["demo", "--model", "smollm2", "--lab", "power", "--prompts", "1"], "at least 2 prompts"),
                      (["demo", "--model", "smollm2", "--report-only"], "--report-only applies to the regime map"),
                      (["demo", "--model", "smollm2", "--lab", "power", "--report-only", "--only-seed", "0"],
                       "--report-only runs nothing"),
                      (["demo", "--model", "smollm2", "--lab", "power", "--report-only"], "no seed has finished")):
        assert main(argv + ["--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_per_sample_gold_reads_outputs_holding_line_separators(tmp_path):
    """The evaluation writes its records with ensure_ascii=False; a sample holding U+2028 (seed 0
    of the full-size run had one) must not split its record."""
    from prefkit.toy.real_lab import per_sample_gold

    rows = [{"prompt_index": i, "sample": j, "output": "fig\u2028lime\x85", "reward_fn": float(i + j)}
            for i in range(2) for j in range(2)]
    (tmp_path / "per_prompt.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert per_sample_gold(tmp_path) == [[0.0, 1.0], [1.0, 2.0]]
