"""RMBoost and the baselines against a deterministic fake LLM behind a real local HTTP server.

Answers carry a hidden quality marker q=N (see conftest.py), so pairing direction can be checked."""

import json
import re
from collections import Counter

import pytest

from prefkit.cli import main
from prefkit.synth import rlaif, rlcd, rmboost, score, west_of_n
from prefkit.synth.rmboost import balanced_labels



def q(text):
    if isinstance(text, list):
        text = text[-1]["content"]
    return int(re.findall(r"q=(\d)", text)[-1])


PROMPTS = [f"Question number {i}: explain topic {i}." for i in range(24)]


def test_balanced_labels_are_exact_and_seeded():
    for n in (1, 2, 7, 24):
        labs = balanced_labels(n, seed=3)
        c = Counter(labs)
        assert c["better"] - c["worse"] in (0, 1)
        assert labs == balanced_labels(n, seed=3)
    assert balanced_labels(24, seed=3) != balanced_labels(24, seed=4)


def test_rmboost_label_balance_and_pairing_direction(llm, tmp_path):
    from prefkit.report import StageReport

    rep = StageReport("synth rmboost")
    ds = rmboost(PROMPTS, llm, run_dir=tmp_path / "run", progress=False, report=rep, seed=5)
    assert len(ds) == 24 and rep.n_dropped == 0
    rows = ds.to_list()
    labels = Counter(r["rmboost_label"] for r in rows)
    assert labels == {"better": 12, "worse": 12}
    for r in rows:
        # the rewrite (y2) is the chosen answer exactly when it was asked to be better
        assert q(r["chosen"]) > q(r["rejected"])
        y2 = re.search(r"<response>\n(.*)\n</response>", r["rmboost_raw"], re.S).group(1)
        assert (r["chosen"] == y2) == (r["rmboost_label"] == "better")
        assert (r["rejected"] == y2) == (r["rmboost_label"] == "worse")
        assert r["rmboost_aspects"]  # the LLM named the aspects it changed
        assert set(r["rmboost_aspects"]) <= {"helpfulness", "instruction_following", "truthfulness"}
        assert r["method"] == "rmboost" and r["prompt"] in PROMPTS
    assert len({r["pair_id"] for r in rows}) == 24
    assert rep.notes["failed_rewrite_rate"] == 0.0
    assert rep.notes["run"]["requested"] == 48


def test_rmboost_sampled_aspects_and_conversational_prompts(llm, tmp_path):
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in PROMPTS[:6]]
    ds = rmboost(prompts, llm, run_dir=tmp_path / "run", aspects="sample", num_aspects=2, guideline="qa",
                 progress=False)
    rows = ds.to_list()
    assert len(rows) == 6
    for r in rows:
        assert len(r["rmboost_aspects"]) == 2
        assert set(r["rmboost_aspects"]) <= {"relevance", "factual_correctness", "completeness"}
        # the fake LLM echoes the aspects it was told to change
        assert r["rmboost_named_aspects"] == r["rmboost_aspects"]
        assert r["chosen"][0]["role"] == "assistant" and r["prompt"][0]["role"] == "system"


def test_rmboost_failed_rewrites_are_counted(llm, tmp_path):
    from prefkit.report import StageReport

    prompts = PROMPTS[:6] + ["NOTAGS please", "COPYCAT please", "NOTAGS again"]
    rep = StageReport("synth rmboost")
    ds = rmboost(prompts, llm, run_dir=tmp_path / "run", progress=False, report=rep)
    assert len(ds) == 6
    assert rep.dropped["rewrite unusable: missing <response> tag"] == 2
    assert rep.dropped["rewrite unusable: near-copy of y1 (similarity >= 0.95)"] == 1
    assert rep.notes["failed_rewrites"] == 3 and rep.notes["failed_rewrite_rate"] == pytest.approx(3 / 9, abs=1e-4)


def test_rmboost_custom_guideline_file(llm, tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("aspects:\n  - name: clarity\n    description: easy to follow\n  - name: brevity\n")
    ds = rmboost(PROMPTS[:4], llm, run_dir=tmp_path / "run", guideline=str(g), aspects="sample", num_aspects=1,
                 progress=False)
    assert {a for r in ds.to_list() for a in r["rmboost_aspects"]} <= {"clarity", "brevity"}


def test_rlaif_pairs_follow_the_judge(llm, tmp_path):
    from prefkit.report import StageReport

    rep = StageReport("synth rlaif")
    ds = rlaif(PROMPTS[:12] + ["GARBLE this"], llm, run_dir=tmp_path / "run", progress=False, report=rep,
               both_orders=True)
    rows = ds.to_list()
    # ties (equal q) and the unreadable verdict are dropped and counted, never guessed
    assert len(rows) + rep.n_dropped == 13
    assert rep.dropped["judge verdict unreadable: no verdict found"] == 1
    assert len(rows) >= 6
    for r in rows:
        assert q(r["chosen"]) > q(r["rejected"])
        assert len(r["rlaif_judge_raw"]) == 2


def test_west_of_n_with_judge_pairs_best_and_worst(llm, tmp_path):
    ds = west_of_n(PROMPTS[:8], llm, n=4, judge=llm, run_dir=tmp_path / "run", progress=False)
    rows = ds.to_list()
    assert len(rows) >= 6
    for r in rows:
        assert r["score_chosen"] == max(r["won_scores"]) and r["score_rejected"] == min(r["won_scores"])
        assert r["score_chosen"] == q(r["chosen"]) + 1  # the fake judge's overall = q + 1
        assert r["score_chosen"] > r["score_rejected"]


def test_west_of_n_with_reward_model(llm, tmp_path, chatml_tokenizer):
    from prefkit.reward_model import RewardModelScorer
    from prefkit.toy.tiny import tiny_reward_model

    rm = tiny_reward_model(chatml_tokenizer, hidden=32, layers=1, heads=2)
    scorer = RewardModelScorer(rm, chatml_tokenizer, batch_size=8)
    ds = west_of_n(PROMPTS[:5], llm, n=3, reward_model=scorer, run_dir=tmp_path / "run", progress=False)
    rows = ds.to_list()
    assert len(rows) == 5
    for r in rows:
        again = scorer.score([r["prompt"], r["prompt"]], [r["chosen"], r["rejected"]], progress=False)
        assert again == pytest.approx([r["score_chosen"], r["score_rejected"]], abs=1e-4)
        assert r["score_chosen"] == pytest.approx(max(r["won_scores"]), abs=1e-6)


@pytest.mark.parametrize("role", ["user", "system"])
def test_rlcd_labels_by_construction(llm, tmp_path, role):
    ds = rlcd(PROMPTS[:6], llm, run_dir=tmp_path / "run", principle_role=role, progress=False)
    rows = ds.to_list()
    assert len(rows) == 6
    for r in rows:
        assert q(r["chosen"]) == 8 and q(r["rejected"]) == 2
        assert r["prompt"] in PROMPTS  # the pair keeps the original prompt, not the principle prompt


def test_judge_score_multi_in_ultrafeedback_schema(llm, tmp_path):
    import datasets

    multi = datasets.Dataset.from_list([
        {"prompt": "Explain x.", "responses": [{"text": "a q=7", "score": None, "fine_grained": None, "aspects": None,
                                                "model": "m1"},
                                               {"text": "b q=2", "score": None, "fine_grained": None, "aspects": None,
                                                "model": "m2"}],
         "prompt_id": "p0", "source_row": 0, "source": "s"},
        {"prompt": "GARBLE y", "responses": [{"text": "c q=5", "score": None, "fine_grained": None, "aspects": None,
                                              "model": "m1"}],
         "prompt_id": "p1", "source_row": 1, "source": "s"},
    ])
    from prefkit.report import StageReport

    rep = StageReport("score")
    out = score(multi, judge=llm, run_dir=tmp_path / "run", progress=False, report=rep).to_list()
    r0 = out[0]["responses"]
    assert [x["score"] for x in r0] == [8.0, 3.0]
    assert r0[0]["aspects"] == {"helpfulness": 4.0, "honesty": 4.0, "instruction_following": 4.0, "truthfulness": 4.0}
    assert r0[0]["fine_grained"] == 4.0 and r0[0]["model"] == "m1"
    assert out[0]["judge_rationales"][1]["honesty"] == "rated from q=2"
    # unreadable judge output: a recorded failure, not a score
    assert out[1]["responses"][0]["score"] is None
    assert out[1]["judge_failures"][0].startswith("unparseable judge output")
    assert rep.notes["responses_failed"] == 1 and rep.notes["responses_scored"] == 2


def test_cli_synth_rmboost_end_to_end_and_resume(llm_server, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": p, "source": "toy"}) + "\n" for p in PROMPTS[:10]))
    out = tmp_path / "pairs.jsonl"
    argv = ["synth", "rmboost", str(src), "-o", str(out), "--base-url", llm_server.base_url, "--model", "fake",
            "--no-progress", "--concurrency", "4", "--aspects", "sample", "--num-aspects", "1"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 10 and all(r["source"] == "toy" for r in rows)
    out_text = capsys.readouterr().out  # the summary is on stdout
    assert "failed_rewrite_rate: 0.0" in out_text and "20 unique" in out_text
    report = json.loads((tmp_path / "pairs.jsonl.report.json").read_text())
    assert report["rows_out"] == 10
    served = llm_server.stats["ok"]
    assert main(argv) == 0  # resumes: nothing is asked again
    assert llm_server.stats["ok"] == served
    assert "20 resumed" in capsys.readouterr().out
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows


def test_cli_score_pairs(llm_server, tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"prompt": "Q?", "chosen": "good q=8", "rejected": "bad q=1"}) + "\n")
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(src), "-o", str(out), "--base-url", llm_server.base_url, "--model", "fake",
                 "--no-progress"]) == 0
    row = json.loads(out.read_text())
    assert (row["score_chosen"], row["score_rejected"]) == (9.0, 2.0)
    assert row["aspects_chosen"]["truthfulness"] == 4.0 and row["fine_grained_rejected"] == 1.0


def test_cli_west_of_n_judge_defaults_to_generator_servers(llm_server, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:4]))
    out = tmp_path / "won.jsonl"
    assert main(["synth", "west-of-n", str(src), "-o", str(out), "--base-url", llm_server.base_url, "--model", "gen",
                 "--judge-model", "judge", "-n", "3", "--no-progress", "--max-retries", "0"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) + json.loads((tmp_path / "won.jsonl.report.json").read_text())["dropped"].get(
        "best and worst samples score the same", 0) == 4
    assert all(r["scorer"] == "judge judge" and r["score_chosen"] > r["score_rejected"] for r in rows)
    assert "samples_skipped: 0" in capsys.readouterr().out
