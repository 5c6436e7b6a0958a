"""Training that survives faults: a kill while saving a checkpoint, a damaged checkpoint or
reference cache, NaN log-probs, and a full disk (prefkit.train.integrity)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from prefkit.errors import ConfigError, DataError
from train_helpers import base_config, make_pairs, train_losses, write_jsonl

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _env():
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
                OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _report(out):
    return json.loads((Path(out) / "prefkit_train_report.json").read_text())


# ---------------------------------------------------------------------------------------------
# a run killed (SIGKILL) while writing checkpoint-4


_KILL_WHILE_SAVING = textwrap.dedent("""
    import os, signal, sys
    import transformers
    from prefkit.train import DPOConfig, train_dpo

    real = transformers.Trainer._save_rng_state
    def killed_while_saving(self, output_dir):
        if self.state.global_step == 4:      # model, optimizer and scheduler of checkpoint-4 are written
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, output_dir)
    transformers.Trainer._save_rng_state = killed_while_saving
    cfg = DPOConfig(**__import__("json").loads(sys.argv[1]))
    train_dpo(cfg)
""")


def _cfg_json(cfg) -> str:
    return json.dumps(cfg.to_dict())


def test_auto_resume_skips_a_checkpoint_left_incomplete_by_a_kill_while_saving(tiny_model_dir, pairs_file,
                                                                              tmp_path):
    out = tmp_path / "run"
    cfg = base_config(tiny_model_dir, pairs_file, out, max_steps=6, save_steps=2)
    proc = subprocess.run([sys.executable, "-c", _KILL_WHILE_SAVING, _cfg_json(cfg)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert (out / "checkpoint-4" / "model.safetensors").is_file()           # the save was under way
    assert not (out / "checkpoint-4" / "trainer_state.json").exists()       # and did not finish

    from prefkit.train import train_dpo

    cfg.resume_from_checkpoint = "auto"
    with pytest.warns(UserWarning, match="skipping .*checkpoint-4, its save did not finish"):
        train_dpo(cfg)
    rep = _report(out)
    assert rep["resumed_from"] == str(out / "checkpoint-2")
    assert rep["skipped_incomplete_checkpoints"] == [str(out / "checkpoint-4")]
    assert rep["global_step"] == 6
    assert [h["step"] for h in rep["log_history"] if "loss" in h] == [1, 2, 3, 4, 5, 6]
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()          # saved again, whole this time


def _two_checkpoints(tiny_model_dir, pairs_file, out):
    from prefkit.train import train_dpo

    cfg = base_config(tiny_model_dir, pairs_file, out, max_steps=4, save_steps=2)
    train_dpo(cfg)
    return cfg


def test_a_corrupted_checkpoint_is_one_line_naming_the_file(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    cfg = _two_checkpoints(tiny_model_dir, pairs_file, out)
    weights = out / "checkpoint-4" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    argv = [sys.executable, "-m", "prefkit", "train", "dpo", str(pairs_file), str(out), "--model", tiny_model_dir,
            "--max-steps", "6", "--save-steps", "2", "--max-length", "64", "--max-prompt-length", "32",
            "--per-device-train-batch-size", "4", "--precision", "fp32", "--disable-tqdm", "true",
            "--ref-cache-dir", cfg.ref_cache_dir, "--resume-from-checkpoint", "auto"]
    proc = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]   # a damaged file found at run time
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert len(lines) == 1 and str(weights) in lines[0] and "truncated safetensors" in lines[0], proc.stderr[-2000:]


def test_an_explicit_incomplete_checkpoint_names_the_missing_file(tiny_model_dir, pairs_file, tmp_path):
    from prefkit.train import train_dpo

    out = tmp_path / "run"
    cfg = _two_checkpoints(tiny_model_dir, pairs_file, out)
    (out / "checkpoint-2" / "prefkit_trainer_state.json").unlink()
    cfg.resume_from_checkpoint = str(out / "checkpoint-2")
    cfg.max_steps = 6
    with pytest.raises(ConfigError, match="prefkit_trainer_state.json: cannot resume .* did not finish"):
        train_dpo(cfg)


# ---------------------------------------------------------------------------------------------
# the reference log-prob cache


def _cache_entry(cfg) -> Path:
    return Path(_report(cfg.output_dir)["reference"]["path"])


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_reference_cache_is_recomputed(tiny_model_dir, pairs_file, tmp_path, damage):
    from prefkit.train import train_dpo

    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "a", max_steps=2)
    train_dpo(cfg)
    first = train_losses(cfg.output_dir)
    npz = _cache_entry(cfg) / "ref_logps.npz"
    data = npz.read_bytes()
    if damage == "truncate":     # as a copy cut short leaves it
        npz.write_bytes(data[: len(data) // 2])
    else:                         # one changed byte in the middle of the float data
        mid = len(data) // 2
        npz.write_bytes(data[:mid] + bytes([data[mid] ^ 0x40]) + data[mid + 1:])
    cfg.output_dir = str(tmp_path / "b")
    with pytest.warns(UserWarning, match="cache entry not used, recomputing"):
        train_dpo(cfg)
    rep = _report(cfg.output_dir)
    assert rep["reference"]["cache_hit"] is False
    assert train_losses(cfg.output_dir) == first
    with np.load(npz) as z:       # the entry was rewritten whole
        assert np.isfinite(z["chosen"]).all() and len(z["chosen"]) == 16


def _nan_model(tiny_model_dir, word: str):
    """The tiny model with NaN input embeddings for the tokens of `word` (the LM head untied), so
    exactly the sequences that contain `word` get NaN log-probs."""
    import torch

    from prefkit.models import load_causal_lm

    model, tok = load_causal_lm(tiny_model_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    ids = tok(word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = float("nan")
    return model, tok


def _pairs_with_one_odd_chosen(tmp_path, index=5, word="\u03a9\u03a9"):
    rows = make_pairs(12)
    rows[index]["chosen"][0]["content"] += " " + word
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


@pytest.mark.parametrize("precompute", [True, False])
def test_a_nan_log_prob_stops_the_run_naming_the_pair(tiny_model_dir, tmp_path, precompute):
    from prefkit.train import train_dpo

    data = _pairs_with_one_odd_chosen(tmp_path)
    model, tok = _nan_model(tiny_model_dir, "\u03a9\u03a9")
    cfg = base_config(tiny_model_dir, data, tmp_path / "out", max_steps=3, precompute_ref_log_probs=precompute,
                      per_device_train_batch_size=12)
    with pytest.raises(DataError) as err:
        train_dpo(cfg, model=model, tokenizer=tok)
    assert err.value.row == 5 and err.value.field == "chosen"
    assert "pair_index 5, field 'chosen'" in str(err.value) and "nan" in str(err.value)
    assert not (tmp_path / "out" / "model.safetensors").exists()   # no NaN model written
    if precompute:   # nothing NaN was cached either
        assert not list(Path(cfg.ref_cache_dir).rglob("ref_logps.npz"))


def test_a_nan_in_the_cache_stops_the_run_naming_the_pair_and_the_file(tiny_model_dir, pairs_file, tmp_path):
    """An entry holding NaN (written by a version that did not check) is not trained on."""
    from prefkit.train import train_dpo

    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "a", max_steps=1)
    train_dpo(cfg)
    entry = _cache_entry(cfg)
    with np.load(entry / "ref_logps.npz") as z:
        chosen, rejected = z["chosen"].copy(), z["rejected"].copy()
    rejected[7] = -np.inf
    np.savez(entry / "ref_logps.npz", chosen=chosen, rejected=rejected)
    meta = json.loads((entry / "meta.json").read_text())
    meta.pop("sha256")
    (entry / "meta.json").write_text(json.dumps(meta))
    cfg.output_dir = str(tmp_path / "b")
    with pytest.raises(DataError, match=r"pair_index 7, field 'rejected': rejected log-prob is -inf \(read from "
                                        r"the cache file .*ref_logps.npz"):
        train_dpo(cfg)


# ---------------------------------------------------------------------------------------------
# a full disk: a real small tmpfs (mounted when this process may), and a file-size limit
# (RLIMIT_FSIZE: writes past it fail with EFBIG), which needs no privileges


@pytest.fixture()
def small_disk(tmpfs):
    """A 1 MiB tmpfs (a checkpoint of the tiny model takes about 0.7 MiB)."""
    return tmpfs("1m", "; the RLIMIT_FSIZE test covers EFBIG")


def _cli(tiny_model_dir, data, out, cache, *extra, limit: int | None = None):
    argv = [sys.executable, "-m", "prefkit", "train", "dpo", str(data), str(out), "--model", tiny_model_dir,
            "--max-length", "64", "--max-prompt-length", "32", "--per-device-train-batch-size", "4",
            "--precision", "fp32", "--disable-tqdm", "true", "--ref-cache-dir", str(cache), "--learning-rate",
            "0.001", "--seed", "0", *extra]

    def limit_file_size():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size if limit else None)


def _one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]   # a run-time failure, not a usage error
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("prefkit train: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one_and_resume_continues(
        tiny_model_dir, pairs_file, tmp_path, small_disk):
    import shutil

    from prefkit.train.integrity import checkpoint_problem

    out = small_disk / "run"
    proc = _cli(tiny_model_dir, pairs_file, out, tmp_path / "cache", "--max-steps", "4", "--save-steps", "2")
    line = _one_error_line(proc)
    assert f"{out}: no space left on device while writing a checkpoint" in line
    assert checkpoint_problem(out / "checkpoint-2", required=("prefkit_trainer_state.json",)) is None
    assert checkpoint_problem(out / "checkpoint-4")[0] == "incomplete"
    # moved to a disk with room, the run resumes from the last good checkpoint
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    proc = _cli(tiny_model_dir, pairs_file, moved, tmp_path / "cache", "--max-steps", "4", "--save-steps", "2",
                "--resume-from-checkpoint", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = _report(moved)
    assert rep["resumed_from"] == str(moved / "checkpoint-2") and rep["global_step"] == 4


def test_disk_full_while_saving_the_model_leaves_the_earlier_model_intact(tiny_model_dir, pairs_file, tmp_path,
                                                                          small_disk):
    out = small_disk / "run"
    proc = _cli(tiny_model_dir, pairs_file, out, tmp_path / "cache", "--max-steps", "2", "--save-strategy", "no")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"\0" * (free - 100_000))    # less room than one model file
    proc = _cli(tiny_model_dir, pairs_file, out, tmp_path / "cache", "--max-steps", "3", "--save-strategy", "no")
    line = _one_error_line(proc)
    assert f"{out}: no space left on device while writing the trained model" in line
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before                       # the first run's model, tokenizer and report, unchanged
    assert not (out / ".prefkit-saving").exists()


def test_a_file_size_limit_while_saving_the_model_is_one_line(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    # the model file (about 216 kB) is the only file of this run over 100 kB
    proc = _cli(tiny_model_dir, pairs_file, out, tmp_path / "cache", "--max-steps", "1", "--save-strategy", "no",
                limit=100_000)
    line = _one_error_line(proc)
    assert f"{out}: no space left on device while writing the trained model" in line
    assert not (out / "model.safetensors").exists() and not (out / ".prefkit-saving").exists()


def test_a_new_model_replaces_the_shards_of_an_earlier_save(tiny_model_dir, pairs_file, tmp_path):
    from prefkit.models import load_causal_lm
    from prefkit.train import train_dpo

    out = tmp_path / "run"
    out.mkdir()
    # an earlier, sharded save in the same directory (its index would win over model.safetensors)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "lm_head.weight": "model-00002-of-00002.safetensors"}}))
    (out / "model-00002-of-00002.safetensors").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    train_dpo(base_config(tiny_model_dir, pairs_file, out, max_steps=1, save_strategy="no"))
    assert sorted(p.name for p in out.iterdir() if "model" in p.name) == ["model.safetensors"]
    assert (out / "notes.txt").read_text() == "mine"
    load_causal_lm(str(out))
