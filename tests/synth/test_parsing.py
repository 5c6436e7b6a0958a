"""The parsers on well-formed and malformed LLM outputs: they read what is there and never invent."""

import pytest

from prefkit.synth.parsing import extract_tag, parse_aspect_list, parse_ratings, parse_score, parse_verdict, similarity

ASPECTS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]


@pytest.mark.parametrize("raw, text, issue", [
    ("<aspects>x</aspects>\n<response>Hello world</response>", "Hello world", None),
    ("<RESPONSE >\n  Hello\n</ response>", "Hello", None),
    ('<response lang="en">Hi</response>', "Hi", None),
    ("<response>\n```\ncode here\n```\n</response>", "code here", None),
    # an echoed template first, then the real answer: the last complete pair wins
    ("Form: <response>the full rewritten answer</response>\n\n<response>Real one</response>", "Real one", None),
    ("<response>cut off in the midd", "cut off in the midd", "unclosed tag"),
    ("no tags at all", None, "missing <response> tag"),
    ("<response>   </response>", None, "empty <response>"),
    ("", None, "empty output"),
    (None, None, "empty output"),
])
def test_extract_tag(raw, text, issue):
    got = extract_tag(raw, "response")
    assert got.text == text
    assert got.issue == issue


def test_extract_tag_multiline_body_keeps_inner_newlines():
    got = extract_tag("<response>line 1\n\nline 2</response>", "response")
    assert got.text == "line 1\n\nline 2"


def test_aspect_list_normalises_names_and_keeps_unknowns():
    found, unknown = parse_aspect_list("- Helpfulness: more detail\n- instruction-following\n* Style", ASPECTS)
    assert found == ["helpfulness", "instruction_following"]
    assert unknown == ["Style"]
    assert parse_aspect_list("honesty, Honesty and truthfulness", ASPECTS) == (["honesty", "truthfulness"], [])
    assert parse_aspect_list(None, ASPECTS) == ([], [])


@pytest.mark.parametrize("raw, verdict", [
    ("Reasoning...\n<verdict>B</verdict>", "B"),
    ("<verdict> a </verdict>", "A"),
    ("<verdict>Answer A</verdict>", "A"),
    ("[[B]]", "B"),
    ("Verdict: **A**", "A"),
    ("The better answer is B.", "B"),
    ("<verdict>tie</verdict>", "tie"),
    ("First <verdict>A</verdict> ... on reflection <verdict>B</verdict>", "B"),
])
def test_verdict(raw, verdict):
    assert parse_verdict(raw) == (verdict, None)


@pytest.mark.parametrize("raw", ["Both are good.", "", None, "<verdict>C</verdict>", "A and B both fine"])
def test_unreadable_verdict_is_none(raw):
    v, issue = parse_verdict(raw)
    assert v is None and issue


def test_ratings_well_formed():
    raw = "\n".join(["helpfulness: 4", "rationale: useful", "honesty: 5", "rationale: calibrated",
                     "instruction_following: 3", "rationale: ignores length", "truthfulness: 5",
                     "rationale: no errors", "overall: 8"])
    r = parse_ratings(raw, ASPECTS)
    assert r.aspects == {"helpfulness": 4, "honesty": 5, "instruction_following": 3, "truthfulness": 5}
    assert r.rationales["instruction_following"] == "ignores length"
    assert r.overall == 8 and r.complete and r.issues == []


def test_ratings_markdown_variants():
    raw = ("### Helpfulness Rating: **4/5**\n- **Honesty** (calibration): 3 out of 5\n"
           "1. Instruction Following - [2]\nTruthfulness = 5\n\n**Overall score:** 7/10")
    r = parse_ratings(raw, ASPECTS)
    assert r.aspects == {"helpfulness": 4, "honesty": 3, "instruction_following": 2, "truthfulness": 5}
    assert r.overall == 7


def test_ratings_malformed_are_not_invented():
    # echoed template placeholders, out-of-range values, a wrong scale, a missing overall
    raw = "helpfulness: <rating 1-5>\nhonesty: 7\ntruthfulness: 4/10\ninstruction_following: 2\nno overall here"
    r = parse_ratings(raw, ASPECTS)
    assert r.aspects == {"helpfulness": None, "honesty": None, "instruction_following": 2, "truthfulness": None}
    assert r.overall is None and not r.complete
    joined = " | ".join(r.issues)
    assert "honesty: 7 outside 1-5" in joined
    assert "truthfulness: rated out of 10" in joined
    assert "helpfulness: no rating found" in joined
    assert "overall: no score found" in joined


def test_ratings_last_value_wins_and_overall_out_of_range():
    r = parse_ratings("overall: 6\n...changed my mind\noverall: 11", ASPECTS)
    assert r.overall is None
    assert any("outside 1-10" in i for i in r.issues)
    assert parse_ratings("Overall: 6\nOverall: 9", []).overall == 9


def test_parse_score():
    assert parse_score("<score>7</score>") == (7.0, None)
    assert parse_score("Score: 3") == (3.0, None)
    assert parse_score("<score>12</score>")[0] is None
    assert parse_score("no number")[0] is None


def test_similarity():
    assert similarity("Hello   world", "hello world") == 1.0
    assert similarity("abc", "xyz") < 0.2
    assert 0.9 < similarity("The cat sat on the mat.", "The cat sat on the mat!") < 1.0
