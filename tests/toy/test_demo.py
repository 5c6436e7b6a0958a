"""`prefkit demo --quick` end to end (slow), and the unlearning probe's filter (fast)."""

import json

import pytest


def test_high_quality_rejected_filter():
    import datasets

    from prefkit.evaluate.unlearning import high_quality_rejected

    ds = datasets.Dataset.from_list([
        {"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 9.0, "score_rejected": s}
        for s in (2.0, 5.0, 7.5, 4.5, None)])
    assert high_quality_rejected(ds)["score_rejected"] == [5.0, 7.5]
    assert len(high_quality_rejected(ds, threshold=7.0, limit=1)) == 1


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    from prefkit.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Gold reward on held-out prompts" in report and "Verdict" in report
    assert (out / "gold_reward.png").stat().st_size > 1000
    assert (out / "unlearning.png").stat().st_size > 1000
    results = json.loads((out / "results.json").read_text())
    for m in ("base", "dpo", "ra", "eps-dpo"):
        assert 1.0 <= results[0][f"gold_{m}"] <= 10.0
    assert "Reward models: RMBoost versus RLAIF / West-of-N / RLCD" in report
    for m in ("rmboost", "rlaif", "west-of-n", "rlcd"):
        assert results[0][f"rm_pairs_{m}"] > 0 and 0.0 <= results[0][f"rm_acc_{m}"] <= 1.0
    assert (out / "seed0" / "ra" / "prefkit_conditioning.json").exists()
    assert not (out / "seed0" / "dpo" / "prefkit_conditioning.json").exists()
    # a rerun resumes: the finished seed is skipped
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert "skipping" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--methods", "dpo,foo"], "--methods: unknown foo"),
    (["--seeds", "0"], "--seeds must be >= 1"),
])
def test_demo_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    from prefkit.cli import main

    assert main(["demo", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
