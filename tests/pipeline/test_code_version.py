"""A run directory never silently mixes code versions (docs/loop.md, "Code versions"): every step
records the prefkit code that made it; a run whose done steps were made by other code refuses
(exit 2) until told --rerun-stale or --keep-stale. "Other code" is simulated the way an older
prefkit leaves it: a marker with another fingerprint, or with none at all (prefkit before this
change), or a whole run made in-process under a patched fingerprint by a patched stage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit import code_version
from prefkit.pipeline import load_recipe, run
from prefkit.pipeline.engine import StaleStepsError
from helpers import TOY_PAIRS as SMALL, TOY_RECIPE as TOY, run_toy_pairs

# toy-quick, small: one round up to the pairs, 8 prompts, 4 held-out prompts
OLD = {"fingerprint": "0123456789abcdef", "commit": "deadbeefdeadbeef"}


def _run(run_dir, **kw):
    return run(load_recipe(TOY, overrides=SMALL, rounds=1), run_dir, until="pair", progress=False,
               log=lambda msg: None, **kw)


def _ran(result) -> list[str]:
    return [f"round-{e['round']}/{e['stage']}" for e in result["steps"] if e.get("ran")]


def _marker_path(run_dir, stage) -> Path:
    (p,) = (Path(run_dir) / "round-1" / stage).glob("*/done")
    return p


def _markers(run_dir) -> dict:
    out = {s: json.loads(_marker_path(run_dir, s).read_text()) for s in ("generate", "score", "pair")}
    (ev,) = (Path(run_dir) / "round-0" / "evaluate").glob("*/done")
    out["evaluate"] = json.loads(ev.read_text())
    return out


@pytest.fixture
def older_run(tmp_path):
    """A finished run whose generate step an older prefkit made (another fingerprint) and whose
    score step a prefkit from before code versions were recorded made (no `code` field)."""
    d = tmp_path / "run"
    _run(d)
    gen = _marker_path(d, "generate")
    m = json.loads(gen.read_text())
    m["code"] = OLD
    gen.write_text(json.dumps(m))
    score = _marker_path(d, "score")
    m = json.loads(score.read_text())
    del m["code"]
    score.write_text(json.dumps(m))
    return d, _markers(d)


def test_fingerprint_covers_the_source_and_package_data_only(tmp_path):
    pkg = tmp_path / "prefkit"
    shutil.copytree(code_version.PACKAGE_DIR, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    first = code_version.fingerprint_of(pkg, "0.1.0")
    # by relative path: a copy of this package elsewhere has this process's fingerprint
    assert code_version.fingerprint_of(pkg, code_version.prefkit.__version__) == code_version.fingerprint()
    assert len(first) == 16
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "engine.cpython-312.pyc").write_bytes(b"compiled")
    (pkg / "notes.log").write_text("not part of the package")
    assert code_version.fingerprint_of(pkg, "0.1.0") == first
    assert code_version.fingerprint_of(pkg, "0.1.1") != first
    eng = pkg / "pipeline" / "engine.py"
    eng.write_text(eng.read_text() + "\n# an edit\n")
    edited = code_version.fingerprint_of(pkg, "0.1.0")
    assert edited != first
    recipe = pkg / "toy" / "demo_recipes" / "main.yaml"
    recipe.write_text(recipe.read_text() + "\n# an edit\n")
    assert code_version.fingerprint_of(pkg, "0.1.0") != edited


def test_every_step_and_the_manifest_record_the_code(tmp_path):
    d = tmp_path / "run"
    res = _run(d)
    now = code_version.code()
    assert len(now["fingerprint"]) == 16
    for stage, marker in _markers(d).items():
        assert marker["code"] == now, stage
    for stage in ("generate", "score", "pair"):
        assert json.loads((_marker_path(d, stage).parent / "stage.json").read_text())["code"] == now
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["code"] == now and manifest["history"][-1]["code"] == now
    assert {e["code"]["fingerprint"] for e in manifest["stages"].values()} == {now["fingerprint"]}
    assert all(e["code"] == now for e in res["steps"])


def test_a_run_over_steps_of_other_code_refuses_before_running_anything(older_run):
    d, before = older_run
    dirs = sorted(str(p) for p in d.rglob("*"))
    with pytest.raises(StaleStepsError) as exc:
        _run(d)
    assert [f"round-{e['round']}/{e['stage']}" for e in exc.value.steps] == ["round-1/generate", "round-1/score"]
    msg = str(exc.value)
    assert "2 step(s)" in msg and "round-1/generate, round-1/score" in msg
    assert OLD["fingerprint"] in msg and "unknown version" in msg and code_version.fingerprint() in msg
    assert "--rerun-stale" in msg and "--keep-stale" in msg
    assert _markers(d) == before and sorted(str(p) for p in d.rglob("*")) == dirs
    # a dry run plans over them and says which were made by other code
    plan = {f"round-{e['round']}/{e['stage']}": e for e in _run(d, dry_run=True)["steps"]}
    assert plan["round-1/generate"]["stale"] and plan["round-1/score"]["stale"] and not plan["round-1/pair"].get("stale")


def test_cli_refusal_is_one_line_with_exit_2_and_status_shows_the_steps(older_run):
    d, before = older_run
    proc = run_toy_pairs(d)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("prefkit run: error: 2 step(s) in this run directory were made by other prefkit code: "
                           "round-1/generate, round-1/score.")
    assert "--rerun-stale" in line and "--keep-stale" in line and OLD["fingerprint"] in line
    assert _markers(d) == before
    st = subprocess.run([sys.executable, "-m", "prefkit", "run", "--status", str(d)], capture_output=True, text=True)
    assert st.returncode == 0, st.stderr
    rows = {ln.split()[0]: ln for ln in st.stdout.splitlines() if ln.startswith("  ")}
    assert f"[other code: {OLD['fingerprint']}" in rows["round-1/generate"]
    assert "[other code: an unknown version" in rows["round-1/score"]
    assert "other code" not in rows["round-1/pair"] and "other code" not in rows["round-0/evaluate"]
    assert "2 step(s) were made by other prefkit code" in st.stdout
    proc = run_toy_pairs(d, "--keep-stale", "--rerun-stale")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


def test_keep_stale_uses_them_as_they_are(older_run):
    d, before = older_run
    res = _run(d, stale="keep")
    assert _ran(res) == []
    assert _markers(d) == before                    # nothing rewritten: the old code stays recorded
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest["stages"]["round-1/generate"]["code"] == OLD
    assert manifest["stages"]["round-1/score"]["code"] is None
    assert manifest["stages"]["round-1/pair"]["code"] == code_version.code()
    assert manifest["history"][-1]["kept_stale"] == ["round-1/generate", "round-1/score"]
    assert not (d / "stale").exists()
    with pytest.raises(StaleStepsError):            # each run must be told again
        _run(d)


def test_rerun_stale_runs_exactly_the_stale_steps_again(older_run):
    d, before = older_run
    res = _run(d, stale="rerun")
    assert _ran(res) == ["round-1/generate", "round-1/score"]
    after = _markers(d)
    now = code_version.code()
    for stage in ("generate", "score"):
        assert after[stage]["code"] == now
        # recomputed in a fresh directory (the old one moved aside whole); sampling is seeded, so the
        # same data come out, and the step after them keeps its key
        assert after[stage]["output_hash"] == before[stage]["output_hash"]
        assert Path(after[stage]["output"]).is_file()
    assert after["pair"] == before["pair"] and after["evaluate"] == before["evaluate"]
    (old_gen,) = (d / "stale" / OLD["fingerprint"] / "round-1" / "generate").glob("*/done")
    assert json.loads(old_gen.read_text()) == before["generate"]
    (old_score,) = (d / "stale" / "unknown" / "round-1" / "score").glob("*/done")
    assert json.loads(old_score.read_text()) == before["score"]
    assert _ran(_run(d)) == []                       # one code version now: no refusal, nothing to run
    manifest = json.loads((d / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["round-0/evaluate", "round-1/generate", "round-1/score", "round-1/pair"]


def test_rerun_stale_after_old_code_made_other_data_reruns_what_follows(tmp_path, monkeypatch):
    """The whole run made by "old code": a patched fingerprint and a patched gold reward (the old
    scores). With this code, --rerun-stale reruns every step; the scores differ, so the pairs get
    a new key and the old pairs (keyed on the old scores) move aside too."""
    import prefkit.toy.task as task

    d = tmp_path / "run"
    gold = task.gold_reward
    with monkeypatch.context() as m:
        m.setattr(code_version, "fingerprint", lambda: OLD["fingerprint"])
        m.setattr(code_version, "git_commit", lambda: OLD["commit"])
        m.setattr(task, "gold_reward", lambda prompt, text: -gold(prompt, text))
        _run(d)
    old = _markers(d)
    assert old["pair"]["code"] == OLD
    with pytest.raises(StaleStepsError) as exc:
        _run(d)
    assert len(exc.value.steps) == 4
    res = _run(d, stale="rerun")
    assert _ran(res) == ["round-0/evaluate", "round-1/generate", "round-1/score", "round-1/pair"]
    new = _markers(d)                                 # one pair step left in round-1/pair
    assert new["generate"]["output_hash"] == old["generate"]["output_hash"]
    assert new["score"]["output_hash"] != old["score"]["output_hash"]
    assert _marker_path(d, "pair").parent.name != Path(old["pair"]["output"]).parent.name
    assert all(m["code"] == code_version.code() for m in new.values())
    assert len(list((d / "stale" / OLD["fingerprint"]).glob("round-*/*/*/done"))) == 4


def test_a_step_started_by_other_code_counts_too(tmp_path):
    """A step other code started and did not finish (its stage.json, no done marker): refused like a
    finished one; kept, it resumes over that work and its marker says so."""
    d = tmp_path / "run"
    _run(d)
    score = _marker_path(d, "score")
    score.unlink()
    sj = score.parent / "stage.json"
    sj.write_text(json.dumps({**json.loads(sj.read_text()), "code": OLD}))
    with pytest.raises(StaleStepsError) as exc:
        _run(d)
    assert [e["stage"] for e in exc.value.steps] == ["score"] and not score.exists()
    res = _run(d, stale="keep")
    assert _ran(res) == ["round-1/score"]
    marker = json.loads(score.read_text())
    assert marker["code"] == code_version.code() and marker["resumed_from_code"] == OLD
