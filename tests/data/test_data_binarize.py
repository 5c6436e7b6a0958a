"""The binarization recipe checked by hand on small UltraFeedback-raw fixtures."""

import random

import datasets
import pytest

from prefkit.data import binarize, read
from prefkit.data.binarize import DROP_FEW, DROP_FG_LOWER, DROP_TIE, DROP_TRUTHFULQA, SKIP_NA
from prefkit.errors import ConfigError
from prefkit.report import StageReport

ALL5, ALL4, ALL2 = ("5", "5", "5", "5"), ("4", "4", "4", "4"), ("2", "2", "2", "2")


@pytest.fixture()
def multi(tmp_path, build):
    c = build.completion
    rows = [
        # 0: a normal prompt; chosen = idx 0 (8.0); rejected drawn from idx 1..3
        build.uf_row("p0", [c("r0a", 8.0, ALL5), c("r0b", 3.0, ALL2), c("r0c", 7.0, ALL4), c("r0d", 7.0, ALL4)]),
        # 1: TruthfulQA-sourced
        build.uf_row("p1", [c("r1a", 9.0, ALL5), c("r1b", 1.0, ALL2)], source="truthful_qa"),
        # 2: the top-scored completion has an N/A rating and is skipped; so is idx 3
        build.uf_row("p2", [c("r2a", 9.5, ("5", "N/A", "5", "5")), c("r2b", 6.0, ALL4), c("r2c", 5.0, ALL2),
                            c("r2d", 4.0, ("N/A", "2", "2", "2"))]),
        # 3: a tie
        build.uf_row("p3", [c("r3a", 7.0, ALL4), c("r3b", 7.0, ALL4)]),
        # 4: higher overall score but lower mean fine-grained rating
        build.uf_row("p4", [c("r4a", 8.0, ("3", "3", "3", "3")), c("r4b", 4.0, ("5", "4", "5", "4"))]),
        # 5: one eligible completion left after the N/A skip
        build.uf_row("p5", [c("r5a", 6.0, ALL4), c("r5b", 5.0, ("N/A", "N/A", "N/A", "N/A"))]),
    ]
    return read(build.write_jsonl(tmp_path / "uf.jsonl", rows))


def text(msgs):
    assert [m["role"] for m in msgs] == ["assistant"]
    return msgs[0]["content"]


def by_prompt(pairs):
    return {p["prompt"][0]["content"]: (text(p["chosen"]), text(p["rejected"])) for p in pairs}


def test_published_recipe_by_hand(multi):
    rep = StageReport("binarize")
    pairs = binarize(multi, report=rep)
    got = by_prompt(pairs)
    # the documented draw: random.Random(42).choice over the non-chosen eligible responses, prompts in order
    rng = random.Random(42)
    expected_r0 = rng.choice(["r0b", "r0c", "r0d"])
    assert got == {"p0": ("r0a", expected_r0), "p1": ("r1a", "r1b"), "p2": ("r2b", "r2c"), "p4": ("r4a", "r4b")}
    assert rep.dropped[DROP_TIE] == 1 and rep.notes["ties"] == 1
    assert rep.dropped[DROP_FEW] == 1
    assert rep.dropped[SKIP_NA] == 3
    assert rep.rows_in == 6 and rep.rows_out == 4
    p2 = pairs[[p["prompt"][0]["content"] for p in pairs].index("p2")]
    assert (p2["score_chosen"], p2["score_rejected"]) == (6.0, 5.0)
    assert p2["aspects_chosen"] == {"helpfulness": 4.0, "honesty": 4.0, "instruction_following": 4.0,
                                    "truthfulness": 4.0}
    assert (p2["fine_grained_chosen"], p2["fine_grained_rejected"]) == (4.0, 2.0)
    assert p2["source_row"] == 2 and p2["pair_id"].endswith("-r2-1v2")
    assert p2["prompt_id"] == multi[2]["prompt_id"]
    assert len(set(pairs["pair_id"])) == len(pairs)


def test_seeded_rejected_choice_is_reproducible_and_covers_every_other_response(multi):
    picks = {binarize(multi, seed=s)[0]["rejected"][0]["content"] for s in range(30)}
    assert picks == {"r0b", "r0c", "r0d"}
    assert binarize(multi, seed=7).to_list() == binarize(multi, seed=7).to_list()


def test_ties_keep_counts_and_keeps_them(multi):
    rep = StageReport("binarize")
    pairs = binarize(multi, ties="keep", report=rep)
    assert by_prompt(pairs)["p3"] == ("r3a", "r3b")
    assert rep.notes["ties"] == 1 and DROP_TIE not in rep.dropped
    assert len(pairs) == 5


def test_drop_truthfulqa(multi):
    rep = StageReport("binarize")
    pairs = binarize(multi, drop_truthfulqa=True, report=rep)
    assert "p1" not in by_prompt(pairs) and len(pairs) == 3
    assert rep.dropped[DROP_TRUTHFULQA] == 1


def test_fine_grained_filter(multi):
    rep = StageReport("binarize")
    pairs = binarize(multi, fine_grained_filter=True, report=rep)
    assert set(by_prompt(pairs)) == {"p0", "p1", "p2"}
    assert rep.dropped[DROP_FG_LOWER] == 1


def test_best_vs_worst(multi):
    got = by_prompt(binarize(multi, method="best-vs-worst"))
    assert got["p0"] == ("r0a", "r0b") and got["p2"] == ("r2b", "r2c")


def test_all_pairs(multi):
    rep = StageReport("binarize")
    pairs = binarize(multi, method="all-pairs", report=rep)
    p0 = sorted((text(p["chosen"]), text(p["rejected"])) for p in pairs if p["prompt"][0]["content"] == "p0")
    assert p0 == [("r0a", "r0b"), ("r0a", "r0c"), ("r0a", "r0d"), ("r0c", "r0b"), ("r0d", "r0b")]
    assert rep.notes["ties"] == 2  # r0c/r0d and p3
    assert all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert len(set(pairs["pair_id"])) == len(pairs)


def test_string_prompts_give_string_responses():
    ds = read(datasets.Dataset.from_list([
        {"prompt": "Say hi", "responses": [{"text": "hi", "score": 2.0}, {"text": "go", "score": 1.0},
                                           {"text": "??", "score": None}]}]))
    rep = StageReport("binarize")
    pairs = binarize(ds, report=rep)
    assert pairs.to_list()[0]["chosen"] == "hi" and pairs[0]["rejected"] == "go" and pairs[0]["prompt"] == "Say hi"
    assert rep.dropped["response: no overall score (skipped)"] == 1


def test_binarize_rejects_pairs_and_bad_options(build):
    pairs = read(build.examples / "trl_standard.jsonl")
    with pytest.raises(ConfigError, match="already holds pairs"):
        binarize(pairs)
    with pytest.raises(ConfigError, match="unknown binarize method"):
        binarize(pairs, method="best")


def test_example_file_end_to_end(build):
    rep = StageReport("binarize")
    pairs = binarize(read(build.examples / "ultrafeedback_raw.jsonl"), report=rep)
    assert len(pairs) == rep.rows_out and rep.rows_in == 8
    assert all(p["score_chosen"] >= p["score_rejected"] for p in pairs)


def test_extra_response_fields_travel_to_the_pairs():
    ds = read(datasets.Dataset.from_list([
        {"prompt": "p", "judge": "toy", "responses": [{"text": "a", "score": 2.0, "rationale": "clear"},
                                                      {"text": "b", "score": 1.0, "rationale": "vague"}]}]))
    assert ds[0]["responses"][1]["rationale"] == "vague"
    pair = binarize(ds)[0]
    assert (pair["rationale_chosen"], pair["rationale_rejected"], pair["judge"]) == ("clear", "vague", "toy")
