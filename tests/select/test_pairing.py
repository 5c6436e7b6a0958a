"""MULTI rows are paired max score against min score; ties are counted, NaN is an error."""

import datasets
import pytest

from prefkit.errors import DataError
from prefkit.report import StageReport
from prefkit.select.pairing import pair_best_worst


def _multi(rows):
    return datasets.Dataset.from_list([
        {"prompt": p, "responses": [{"text": t, "score": s} for t, s in resp], "prompt_id": f"id{i}",
         "source_row": i, "source": "test"}
        for i, (p, resp) in enumerate(rows)
    ])


def test_max_vs_min_with_ties_counted_and_dropped():
    ds = _multi([
        ("q0", [("a", 3.0), ("b", 9.0), ("c", 1.0), ("d", 5.0)]),   # b vs c
        ("q1", [("a", 4.0), ("b", 4.0)]),                          # all tie: dropped
        ("q2", [("a", 7.0), ("b", 7.0), ("c", 2.0)]),               # tied best: first (a) taken
        ("q3", [("a", 6.0), ("b", None)]),                         # one scored: dropped
    ])
    rep = StageReport("select")
    pairs = pair_best_worst(ds, report=rep)
    assert pairs["prompt"] == ["q0", "q2"]
    assert pairs["chosen"] == ["b", "a"] and pairs["rejected"] == ["c", "c"]
    assert pairs["score_chosen"] == [9.0, 7.0] and pairs["score_rejected"] == [1.0, 2.0]
    assert pairs["source_row"] == [0, 2]
    assert rep.dropped["all responses tie (no preference)"] == 1
    assert rep.dropped["fewer than two scored responses"] == 1
    assert rep.dropped["response without a score skipped"] == 1
    assert rep.notes["tied best/worst, first taken"] == 1


def test_conversational_prompt_gets_assistant_message_responses():
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                      "responses": [{"text": "good", "score": 2.0}, {"text": "bad", "score": 1.0}]}])
    pairs = pair_best_worst(ds)
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "bad"}]


def test_nan_score_names_row_and_field():
    ds = _multi([("q0", [("a", 1.0), ("b", 2.0)]), ("q1", [("a", 1.0), ("b", float("nan"))])])
    with pytest.raises(DataError) as err:
        pair_best_worst(ds, file="multi.jsonl")
    assert err.value.row == 1 and err.value.field == "responses[1].score"
    assert "multi.jsonl" in str(err.value)
