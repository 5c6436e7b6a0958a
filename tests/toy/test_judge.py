"""The noisy judge writes UltraFeedback's raw schema, which the data layer reads."""

import json

from prefkit.toy import task
from prefkit.toy.judge import JudgeConfig, judge, write_jsonl


def test_noise_free_judge_matches_gold():
    prompts = task.make_prompts(5, seed=3)
    responses = [[task.perfect_response(p), "", "xyzzy xyzzy"] for p in prompts]
    rows = judge(prompts, responses, JudgeConfig(aspect_noise=0.0, overall_noise=0.0))
    for p, row in zip(prompts, rows):
        assert row["instruction"] == p and len(row["completions"]) == 3
        best, empty, bad = row["completions"]
        assert best["overall_score"] == 10.0
        assert {k: v["Rating"] for k, v in best["annotations"].items()} == {
            "coverage": "5", "order": "5", "conciseness": "5"}
        assert best["fine-grained_score"] == 5.0
        assert empty["overall_score"] == 1.0 and bad["overall_score"] == 1.0
        assert all(v["Rating"] == "1" for v in empty["annotations"].values())


def test_judge_noise_is_seeded_and_bounded():
    prompts = task.make_prompts(50, seed=4)
    responses = [[task.perfect_response(p), p.split(":")[1]] for p in prompts]
    a = judge(prompts, responses, JudgeConfig(aspect_noise=1.0, overall_noise=2.0, seed=7))
    b = judge(prompts, responses, JudgeConfig(aspect_noise=1.0, overall_noise=2.0, seed=7))
    assert a == b
    scores = [c["overall_score"] for r in a for c in r["completions"]]
    assert all(1 <= s <= 10 and (2 * s) == int(2 * s) for s in scores)
    assert len(set(scores)) > 3  # the noise is there


def test_data_layer_reads_and_binarizes_judge_output(tmp_path):
    from prefkit import data

    prompts = task.make_prompts(6, seed=5)
    responses = [[task.perfect_response(p), p.split(":")[1].strip(), "sure " + p.split(":")[1].strip()]
                 for p in prompts]
    rows = judge(prompts, responses, JudgeConfig(seed=1))
    path = write_jsonl(rows, tmp_path / "judged.jsonl")
    multi = data.read(str(path), format="ultrafeedback")
    assert len(multi) == 6
    first = multi[0]
    assert first["prompt"] == [{"role": "user", "content": prompts[0]}]
    assert [r["text"] for r in first["responses"]] == responses[0]
    assert [r["score"] for r in first["responses"]] == [c["overall_score"] for c in rows[0]["completions"]]
    assert first["responses"][0]["aspects"]["coverage"] == float(rows[0]["completions"][0]["annotations"]["coverage"]["Rating"])
    pairs = data.binarize(multi, method="best-vs-worst", ties="drop")
    assert len(pairs) >= 1
    assert all(c > r for c, r in zip(pairs["score_chosen"], pairs["score_rejected"]))
    json.loads(path.read_text().splitlines()[0])  # plain JSON lines
