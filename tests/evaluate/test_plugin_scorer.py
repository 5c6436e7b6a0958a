"""An evaluation scorer added from outside the package (a plugin module in tmp_path) is offered by
`prefkit eval policy --scorer`, runs on every policy's outputs and lands in every result file."""

from __future__ import annotations

import json

from helpers import read_jsonl, run_prefkit, save_tiny, write_jsonl, write_plugin

from prefkit.toy import task
from prefkit.toy.tiny import build_tokenizer

PLUGIN = '''
from prefkit.evaluate import Scores, register_scorer

@register_scorer("word-count", help="words in the output")
def word_count(ctx, policy, items):
    return Scores([len(text.split()) for row, text in items], summary={"policy_seen": policy},
                  details=[{"first_word": (text.split() or [""])[0]} for row, text in items])
'''


def test_a_plugin_scorer_runs_through_the_cli(tmp_path):
    env = write_plugin(tmp_path, "my_scorers", PLUGIN)
    model = save_tiny(tmp_path / "tiny", build_tokenizer(template="chatml"), arch="qwen2", layers=1)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in task.make_prompts(3, seed=2)])

    helped = run_prefkit("eval", "policy", "--help", env=env)
    assert helped.returncode == 0 and "word-count" in helped.stdout

    out = tmp_path / "eval"
    res = run_prefkit("eval", "policy", prompts, "--policy", f"tiny={model}", "-o", out, "--scorer", "word-count",
                      "--max-new-tokens", "12", "--temperature", "1.0", "-n", "2", "--no-progress", env=env)
    assert res.returncode == 0, res.stderr
    results = json.loads((out / "results.json").read_text())
    rows = read_jsonl(out / "per_prompt.jsonl")
    assert len(rows) == 6 and results["scorers"] == ["word-count"]
    counts = [len(r["output"].split()) for r in rows]
    assert [r["word_count"] for r in rows] == counts
    assert [r["first_word"] for r in rows] == [(r["output"].split() or [""])[0] for r in rows]
    summary = results["policies"]["tiny"]["word_count"]
    assert summary["n"] == 6 and summary["policy_seen"] == "tiny"
    assert abs(summary["mean"] - sum(counts) / 6) < 1e-9
    assert "scorer word-count" in res.stdout and "scorer word-count" in (out / "report.md").read_text()


def test_an_unknown_scorer_and_a_missing_input_are_usage_errors(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Sort: 2 1"}])
    unknown = run_prefkit("eval", "policy", prompts, "--policy", "x", "-o", tmp_path / "o", "--scorer", "word-count")
    assert unknown.returncode == 2 and "invalid choice: 'word-count'" in unknown.stderr
    missing = run_prefkit("eval", "policy", prompts, "--policy", "x", "-o", tmp_path / "o", "--scorer", "reward-fn")
    assert missing.returncode == 2 and "scorer 'reward-fn' needs a reward function" in missing.stderr
