"""A selection metric added from outside the package (a plugin module in tmp_path) is offered by
`prefkit select --metric`, gets what it declares it needs, and decides what is kept."""

from __future__ import annotations

import numpy as np
from helpers import read_jsonl, run_prefkit, save_tiny, write_jsonl, write_plugin

PLUGIN = '''
from prefkit.select import register_metric

@register_metric("likely-chosen", needs=("policy",), ranked_by="policy log-prob of the chosen response, largest first",
                 help="the chosen response the policy finds most likely")
def likely_chosen(column, weight):
    return column("policy_logps_chosen")
'''


def test_a_plugin_metric_runs_through_the_cli(pairs, llama3_tokenizer, tmp_path):
    env = write_plugin(tmp_path, "my_metrics", PLUGIN)
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    model = save_tiny(tmp_path / "policy", llama3_tokenizer)

    helped = run_prefkit("select", "--help", env=env)
    assert helped.returncode == 0 and "likely-chosen" in helped.stdout

    # it declared it needs the policy: without --model a one-line usage error
    missing = run_prefkit("select", src, "-o", tmp_path / "x.jsonl", "--metric", "likely-chosen", env=env)
    assert missing.returncode == 2 and "needs a model" in missing.stderr and "Traceback" not in missing.stderr

    out, scored = tmp_path / "kept.jsonl", tmp_path / "scored.jsonl"
    done = run_prefkit("select", src, "-o", out, "--metric", "likely-chosen", "--top-k", "3", "--model", model,
                       "--scored", scored, env=env)
    assert done.returncode == 0, done.stderr
    assert "policy log-prob of the chosen response" in done.stdout  # its ranked_by line in the report
    every = read_jsonl(scored)
    logp = np.array([r["policy_logps_chosen"] for r in every])
    expected = sorted(np.argsort(-logp, kind="stable")[:3].tolist())
    assert [i for i, r in enumerate(every) if r["selected"]] == expected
    kept = read_jsonl(out)
    assert [r["pair_id"] for r in kept] == [every[i]["pair_id"] for i in expected]
    assert [r["selection_score"] for r in kept] == [every[i]["policy_logps_chosen"] for i in expected]
    # and the ranking differs from the default metric's on this data, so the plugin decided it
    default = run_prefkit("select", src, "-o", tmp_path / "ap.jsonl", "--top-k", "3", "--model", model, env=env)
    assert default.returncode == 0, default.stderr
    assert [r["pair_id"] for r in read_jsonl(tmp_path / "ap.jsonl")] != [r["pair_id"] for r in kept]


def test_without_the_plugin_the_metric_is_a_usage_error(pairs, tmp_path):
    src = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    res = run_prefkit("select", src, "-o", tmp_path / "x.jsonl", "--metric", "likely-chosen")
    assert res.returncode == 2 and "invalid choice: 'likely-chosen'" in res.stderr
