"""README.md's code runs: every shell and Python example in it is executed here, in a temporary
directory holding the repository's examples/, and fails when what it prints no longer matches what
the README shows. How examples are read and marked (skip with a reason, setups): tests/readme_examples.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from readme_examples import examples, missing_lines

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
EXAMPLES = examples(README.read_text(encoding="utf-8"))


def _tiny_policy(d: Path) -> None:
    """./policy: a tiny Qwen2 model with a ChatML template (built locally, nothing downloaded)."""
    from prefkit.toy.tiny import build_tokenizer, tiny_causal_lm

    tok = build_tokenizer(template="chatml")
    tiny_causal_lm(tok, arch="qwen2").save_pretrained(d / "policy")
    tok.save_pretrained(d / "policy")


def _relabeled(d: Path) -> None:
    """./ra.jsonl (+ its conditioning spec): examples/data/ultrafeedback_raw.jsonl relabeled."""
    from prefkit.relabel import RelabelOptions, relabel_file

    relabel_file(str(d / "examples/data/ultrafeedback_raw.jsonl"), str(d / "ra.jsonl"), RelabelOptions())


SETUPS = {"tiny-policy": _tiny_policy, "relabeled": _relabeled}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "100"          # argparse wraps help text at the terminal width
    env["PY"] = sys.executable
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


@pytest.fixture()
def workdir(tmp_path):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    return tmp_path


def test_the_readme_has_examples_and_every_skip_says_why():
    kinds = {e.kind for e in EXAMPLES}
    assert kinds == {"shell", "python"}, kinds
    assert len([e for e in EXAMPLES if e.skip is None]) >= 6
    for e in EXAMPLES:
        assert e.skip is None or len(e.skip) > 10, f"README.md line {e.line}: a skip needs its reason"
        assert all(s in SETUPS for s in e.setups), f"README.md line {e.line}: unknown setup {e.setups}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_readme_example(example, workdir):
    if example.skip is not None:
        pytest.skip(f"README.md line {example.line}: {example.skip}")
    for name in example.setups:
        SETUPS[name](workdir)
    if example.kind == "shell":
        script = 'prefkit() { "$PY" -m prefkit "$@"; }\n' + "\n".join(
            f"{cmd} || echo \"[exit status $?]\"" for cmd in example.code.splitlines())
        proc = subprocess.run(["bash", "-c", script], cwd=workdir, env=_env(), capture_output=True, text=True,
                              timeout=600)
        output = proc.stdout + proc.stderr
        failed = "[exit status" in output
        assert not failed or any("error:" in line for line in example.expected), (
            f"README.md line {example.line}: a command failed:\n{output[-3000:]}")
    else:
        (workdir / "example.py").write_text(example.code, encoding="utf-8")
        proc = subprocess.run([sys.executable, "-W", "default", "example.py"], cwd=workdir, env=_env(),
                              capture_output=True, text=True, timeout=600)
        output = proc.stdout
        assert proc.returncode == 0, f"README.md line {example.line}: the example raised:\n{proc.stderr[-3000:]}"
        own = [line for line in proc.stderr.splitlines() if "Warning" in line and "/prefkit/" in line]
        assert not own, f"README.md line {example.line}: the example triggers prefkit's own warnings: {own}"
    missing = missing_lines(example.expected, output)
    assert not missing, (f"README.md line {example.line}: shown output not printed (in order):\n  "
                         + "\n  ".join(missing) + f"\n--- printed:\n{output[-4000:]}")


def test_shown_decimals_match_within_their_precision():
    from readme_examples import _matches

    shown = "last log: loss=0.6934, rewards/margins=-0.0004305, logps/chosen=-370.1"
    assert _matches(shown, "last log: loss=0.6934, rewards/margins=-0.0004314, logps/chosen=-370.1")
    assert not _matches(shown, "last log: loss=0.6934, rewards/margins=-0.0004405, logps/chosen=-370.1")
    assert not _matches(shown, "last log: loss=0.6934, rewards/margins=+0.0004305, logps/chosen=-370.1")
    assert _matches("lr 6.1e-05 at step 3", "lr 6.1e-05 at step 3")
    assert not _matches("lr 6.1e-05 at step 3", "lr 6.1e-04 at step 3")
    assert not _matches("lr 6.1e-05 at step 3", "lr 6.1e-05 at step 4")     # whole numbers exactly
    assert _matches("accuracy 0.25 (2 of 8)", "accuracy 0.26 (2 of 8)")        # one unit of the last digit
    assert not _matches("accuracy 0.25 (2 of 8)", "accuracy 0.27 (2 of 8)")
    assert _matches("mean ... 12.5 gold", "mean over 3 seeds 12.5 gold")
    assert not _matches("mean ... 12.5 gold", "mean over 3 seeds 13.5 gold")   # `...` cannot take a digit
    assert _matches("cache miss 631f094d71db9d2e077c18f338d186e9", "cache hit 631f094d71db9d2e077c18f338d186e9")
    assert not _matches("version 1.2.3", "version 1.2.4")
