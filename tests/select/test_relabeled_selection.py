"""Selection on reward-augmented data selects whole pairs, ranked as the original pair
(docs/select.md, "Relabeled input"): the same pairs as selecting before relabeling, for full and
for `half` data."""

from __future__ import annotations

import pytest

from prefkit.relabel import relabel
from prefkit.select import select


def _ids(ds, column):
    return sorted(str(v) for v in ds[column])


@pytest.mark.parametrize("metric", ["explicit", "random"])
def test_relabel_then_select_keeps_the_pairs_select_then_relabel_keeps(pairs, metric):
    first = select(pairs, metric, top_k=3, progress=False)
    ra = relabel(pairs, ties="keep")
    after = select(ra, metric, top_k=3, progress=False)
    assert len(after) == 6                                               # both halves of 3 pairs
    assert sorted(set(_ids(after, "source_pair_id"))) == _ids(first, "pair_id")
    for pid in set(after["source_pair_id"]):
        halves = sorted(r["relabel_half"] for r in after if r["source_pair_id"] == pid)
        assert halves == ["l", "w"]
    if metric == "explicit":
        assert min(after["explicit_margin"]) > 0                         # ranked on the original orientation


def test_half_data_ranks_a_d_l_row_as_its_original_pair(pairs):
    ra = relabel(pairs, half=True, ties="keep", seed=1)
    assert set(ra["relabel_half"]) == {"w", "l"}                         # the seed gives both kinds
    kept = select(ra, "explicit", top_k=4, progress=False)
    assert len(kept) == 4
    expected = sorted(range(len(pairs)), key=lambda i: -(pairs[i]["score_chosen"] - pairs[i]["score_rejected"]))[:4]
    assert sorted(set(kept["source_pair_id"])) == sorted(str(pairs[i]["pair_id"]) for i in expected)
    for r in kept:                                                       # a D^l row keeps its own orientation
        if r["relabel_half"] == "l":
            assert r["score_chosen"] < r["score_rejected"] and r["explicit_margin"] > 0
