"""Helpers shared across the test folders (importable as `helpers`: pytest puts tests/ on sys.path
for tests/conftest.py): jsonl files, tiny saved models, plugins written outside the package, and
`prefkit` run as a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prefkit.toy.tiny import tiny_causal_lm, tiny_reward_model

#: the small real-architecture shape most tests save (hidden 32, 2 heads)
TINY = dict(arch="llama", hidden=32, layers=2, heads=2, intermediate=64, max_position=256)

#: the shipped recipes, and the toy one the engine's tests run at a small size
RECIPES = Path(__file__).resolve().parents[1] / "examples" / "recipes"
TOY_RECIPE = RECIPES / "toy-quick.yaml"
#: toy-quick at its smallest for one round up to the pairs: 8 training, 4 held-out prompts, 1 sample
TOY_PAIRS = ["prompts.train.args.n=8", "prompts.train.per_round=8", "prompts.eval.args.n=4", "evaluate.n=1"]
#: toy-quick, one round through training: 16 training prompts x 3 samples, 6 held-out prompts
TOY_ONE_ROUND = ["prompts.train.args.n=16", "prompts.eval.args.n=6", "evaluate.n=1", "rounds=1",
                 "train.per_device_train_batch_size=8", "train.reference=", "generate.n=3"]


def run_toy_pairs(run_dir, *extra) -> subprocess.CompletedProcess:
    """`prefkit run` of toy-quick at TOY_PAIRS's size, one round up to the pairs, in a child
    process (its exit code and one-line errors are what a user sees)."""
    args = [sys.executable, "-m", "prefkit", "run", str(TOY_RECIPE), "-o", str(run_dir), "--rounds", "1",
            "--until", "pair", "--no-progress", *extra]
    for s in TOY_PAIRS:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True)


def write_jsonl(path, rows) -> str:
    """Write `rows` one a line: dicts as JSON (UTF-8, not escaped), strings as they are (for
    malformed lines); returns the path as a string."""
    Path(path).write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                                  for r in rows), encoding="utf-8")
    return str(path)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_tiny(directory, tokenizer, *, reward_model: bool = False, **shape) -> str:
    """Build a tiny causal LM (or, with reward_model, a sequence-classification reward model) for
    `tokenizer` with `TINY` updated by `shape`, save it and the tokenizer like a hub model in
    `directory`; returns the directory as a string."""
    build = tiny_reward_model if reward_model else tiny_causal_lm
    build(tokenizer, **{**TINY, **shape}).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def write_plugin(root, module: str, source: str) -> dict:
    """Write a plugin module `module`.py into `root`/plugins (outside the prefkit package) and
    return the environment for a child `prefkit` that loads it through PREFKIT_PLUGINS."""
    folder = Path(root) / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    env = dict(os.environ)
    env["PREFKIT_PLUGINS"] = module
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_prefkit(*args, env=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m prefkit ARGS` in a child process (text output captured)."""
    return subprocess.run([sys.executable, "-m", "prefkit", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def kill_when(cmd: list[str], run_dir, ready, timeout: float = 600) -> None:
    """Start `cmd`, wait until `ready(Path(run_dir))` holds, then `kill -9` it (the run must still be
    going: a run that ends first fails the test, with its stderr)."""
    import signal
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not ready(Path(run_dir)):
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -9


def line_of(path, needle: str, exact: bool = False) -> int:
    """The 1-based number of the first line of `path` that contains (or, exact, is) `needle`."""
    return next(i for i, line in enumerate(Path(path).read_text().splitlines(), 1)
                if (line == needle if exact else needle in line))


def recipe_error(path, **kw) -> str:
    """The one-line ConfigError `load_recipe(path, **kw)` raises (the test fails if it does not)."""
    import pytest

    from prefkit.errors import ConfigError
    from prefkit.pipeline import load_recipe

    with pytest.raises(ConfigError) as err:
        load_recipe(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg
