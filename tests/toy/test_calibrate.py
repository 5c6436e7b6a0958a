"""Calibration of the base policy's goal-reading strength (prefkit.toy.calibrate) on a tiny world."""

import json
import subprocess
import sys

import pytest

from prefkit.errors import ConfigError
from prefkit.toy.calibrate import Setting, calibrate, nearest, parse_setting
from prefkit.evaluate.goal_curve import slope
from prefkit.toy.world import ToyWorldConfig

TINY = ToyWorldConfig(hidden=32, heads=2, n_demos=120, steps=4, batch_size=8, lr=5e-3)


def test_parse_setting_reads_the_knobs_and_names_a_bad_one():
    assert parse_setting("0.5:1:300") == Setting(0.5, 1.0, 300, 0)
    assert parse_setting("0.75:0.5:900:2") == Setting(0.75, 0.5, 900, 2)
    assert parse_setting("0:3:300").goal_noise == 0.0        # no prior: the noise means nothing
    for bad, what in [("0.5:1", "expected"), ("a:1:3", "expected"), ("1.5:1:300", "goal_prior"),
                      ("0.5:-1:300", "goal_noise"), ("0.5:1:0", "steps")]:
        with pytest.raises(ConfigError, match=what):
            parse_setting(bad)


def test_nearest_picks_the_closest_slope_pools_seeds_and_breaks_ties_toward_less_prior():
    rows = [{"goal_prior": 0.0, "goal_noise": 0.0, "steps": 300, "seed": 0, "slope": 0.01},
            {"goal_prior": 0.5, "goal_noise": 1.0, "steps": 300, "seed": 0, "slope": 0.15},
            {"goal_prior": 0.5, "goal_noise": 1.0, "steps": 300, "seed": 1, "slope": 0.25},
            {"goal_prior": 0.75, "goal_noise": 1.0, "steps": 300, "seed": 0, "slope": 0.2},
            {"goal_prior": 1.0, "goal_noise": 0.5, "steps": 900, "seed": 0, "slope": 0.55}]
    got = nearest(rows, targets=(0.0, 0.2, 0.6))
    assert (got["0"]["goal_prior"], got["0"]["distance"]) == (0.0, pytest.approx(0.01))
    # 0.5:1 pools its two seeds to 0.2, tying with 0.75:1; the smaller prior wins the tie
    assert got["0.2"]["goal_prior"] == 0.5 and got["0.2"]["seeds"] == [0, 1]
    assert got["0.2"]["slope_sd_over_seeds"] == pytest.approx(0.0707, abs=1e-3)
    assert got["0.6"]["steps"] == 900


def test_calibrate_measures_records_and_resumes(tmp_path):
    out = tmp_path / "cal.json"
    settings = [Setting(0.5, 1.0, 4), Setting(0.0, 0.0, 4)]
    doc = calibrate(settings, out, base_world=TINY, prompts=3, samples=1, goals=(2, 10), cache_dir=tmp_path / "cache",
                    plot=tmp_path / "cal.png", command="test")
    assert [r["setting"] for r in doc["rows"]] == ["0.5:1:4:0", "0:0:4:0"]
    for r in doc["rows"]:
        assert len(r["gold"]) == 2 and all(1.0 <= g <= 10.0 for g in r["gold"])
        assert r["slope"] == pytest.approx(slope([2, 10], r["gold"]))
        assert r["slope_ci95"][0] <= r["slope"] <= r["slope_ci95"][1]
        assert 1.0 <= r["unconditioned"] <= 10.0
    assert set(doc["nearest"]) == {"0", "0.2", "0.4", "0.6", "0.8"}
    assert (tmp_path / "cal.png").stat().st_size > 0
    assert json.loads(out.read_text())["rows"] == doc["rows"]
    # the base policies are cached; a second call measures nothing again
    bases = sorted((tmp_path / "cache").glob("base-*"))
    assert len(bases) == 2
    again = calibrate(settings[:1], out, base_world=TINY, prompts=3, samples=1, goals=(2, 10),
                      cache_dir=tmp_path / "cache")
    assert again["rows"] == doc["rows"] and len(again["runs"]) == 2
    # another protocol in the same file is refused, naming the file and the field
    with pytest.raises(ConfigError, match="cal.json: field 'protocol'"):
        calibrate(settings[:1], out, base_world=TINY, prompts=4, samples=1, goals=(2, 10), cache_dir=tmp_path / "cache")


def test_cli_usage_error_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prefkit.toy.calibrate", "0.5:1", "--out", str(tmp_path / "c.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "expected goal_prior:goal_noise:steps" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "c.json").exists()
