"""Selection on a real tiny Llama: metric values against an independent log-prob computation,
z-score edge cases, equal budgets, streaming equivalence, MULTI input, plot."""

import math

import datasets
import numpy as np
import pytest
import torch

from prefkit.errors import ConfigError, DataError
from prefkit.report import StageReport
from prefkit.select import score_margins, select, selection_ablation
from prefkit.tokenize import encode_pair
from prefkit.toy.tiny import tiny_causal_lm


def _independent_logps(model, tokenizer, prompt, response):
    """Plain full forward + log_softmax over the whole vocabulary (no chunking, no batching)."""
    enc = encode_pair(prompt, response, response, tokenizer)
    p, c = enc["prompt_ids"], enc["chosen_ids"]
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits.double(), dim=-1)[0]
    total = sum(logp[len(p) + t - 1, c[t]].item() for t in range(len(c)))
    return total, len(c)


def test_metric_columns_match_hand_computation(tiny_llama, llama3_tokenizer, pairs):
    ref = tiny_causal_lm(llama3_tokenizer, arch="llama", seed=1)
    scored = score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, reference=ref, beta=0.1, weight=1.0,
                   batch_size=3, chunk_size=3, progress=False)
    ds = scored.dataset
    lc, nc, lr, nr, rc, rr = [], [], [], [], [], []
    for row in pairs:
        a, n = _independent_logps(tiny_llama, llama3_tokenizer, row["prompt"], row["chosen"])
        b, m = _independent_logps(tiny_llama, llama3_tokenizer, row["prompt"], row["rejected"])
        lc.append(a), nc.append(n), lr.append(b), nr.append(m)
        rc.append(_independent_logps(ref, llama3_tokenizer, row["prompt"], row["chosen"])[0])
        rr.append(_independent_logps(ref, llama3_tokenizer, row["prompt"], row["rejected"])[0])
    lc, nc, lr, nr, rc, rr = map(np.array, (lc, nc, lr, nr, rc, rr))
    me = np.array(pairs["score_chosen"]) - np.array(pairs["score_rejected"])
    mi = lc / nc - lr / nr
    ze = (me - me.mean()) / me.std()
    zi = (np.abs(mi) - np.abs(mi).mean()) / np.abs(mi).std()
    dpo = 0.1 * ((lc - rc) - (lr - rr))
    zd = (np.abs(dpo) - np.abs(dpo).mean()) / np.abs(dpo).std()
    np.testing.assert_allclose(ds["len_chosen"], nc)
    np.testing.assert_allclose(ds["policy_logps_chosen"], lc, rtol=1e-5)
    np.testing.assert_allclose(ds["policy_logps_rejected"], lr, rtol=1e-5)
    np.testing.assert_allclose(ds["explicit_margin"], me)
    np.testing.assert_allclose(ds["implicit_margin"], mi, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ds["alignment_potential"], ze - zi, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ds["alignment_potential_paper"], np.abs(me) - np.abs(mi), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds["dpo_implicit_margin"], dpo, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ds["dpo_alignment_potential"], ze - zd, rtol=1e-4, atol=1e-4)

    # the selection keeps floor(0.4 * 8) = 3 rows: the largest z(m_e) - 2 z(|m_i|)
    kept = select(scored, "alignment-potential", fraction=0.4, weight=2.0)
    expected = np.sort(np.argsort(-(ze - 2.0 * zi), kind="stable")[:3])
    assert kept["pair_id"] == [f"p{i}" for i in expected]
    np.testing.assert_allclose(kept["selection_score"], (ze - 2.0 * zi)[expected], rtol=1e-4, atol=1e-5)
    # explicit: largest m_e first; implicit: smallest |m_i| first
    assert select(scored, "explicit", top_k=2)["pair_id"] == [f"p{i}" for i in np.sort(np.argsort(-me, kind="stable")[:2])]
    assert select(scored, "implicit", top_k=2)["pair_id"] == [
        f"p{i}" for i in np.sort(np.argsort(np.abs(mi), kind="stable")[:2])]


def test_constant_explicit_margin_leaves_the_ranking_to_the_implicit_term(tiny_llama, llama3_tokenizer, pairs):
    const = pairs.map(lambda r: {"score_chosen": 7.0, "score_rejected": 5.0})
    scored = score_margins(const, model=tiny_llama, tokenizer=llama3_tokenizer, progress=False)
    assert "explicit_margin constant" in scored.report.notes
    assert set(scored.dataset["z_explicit_margin"]) == {0.0}
    ap = select(scored, "alignment-potential", fraction=0.5)
    imp = select(scored, "implicit", fraction=0.5)
    assert ap["pair_id"] == imp["pair_id"] and len(ap) == 4


def test_constant_implicit_margin_leaves_the_ranking_to_the_explicit_term(tiny_llama, llama3_tokenizer, pairs):
    same = pairs.map(lambda r: {"rejected": r["chosen"]})  # identical responses: m_i = 0 for every pair
    scored = score_margins(same, model=tiny_llama, tokenizer=llama3_tokenizer, progress=False)
    assert "abs_implicit_margin constant" in scored.report.notes
    assert not np.isnan(scored.dataset["alignment_potential"]).any()
    assert select(scored, "alignment-potential", top_k=3)["pair_id"] == select(scored, "explicit", top_k=3)["pair_id"]


def test_nan_score_is_an_error_naming_row_and_field(pairs):
    bad = pairs.map(lambda r, i: {"score_rejected": float("nan") if i == 5 else r["score_rejected"]}, with_indices=True)
    with pytest.raises(DataError) as err:
        select(bad, "explicit", progress=False, file="pairs.jsonl")
    assert (err.value.row, err.value.field) == (5, "score_rejected")
    assert "pairs.jsonl, row 5, field 'score_rejected': is NaN" in str(err.value)
    # skipping instead: the row is counted and never selected; the budget counts scorable rows
    from prefkit.report import StageReport

    rep = StageReport("select")
    kept = select(bad, "explicit", fraction=0.5, on_invalid="drop", report=rep, progress=False)
    assert rep.dropped["score_rejected missing, NaN or infinite"] == 1
    assert len(kept) == 3 and "p5" not in kept["pair_id"]


def test_missing_scores_column_and_unknown_metric(pairs):
    with pytest.raises(DataError, match="score_chosen"):
        select(pairs.remove_columns("score_chosen"), "explicit", progress=False)
    with pytest.raises(ConfigError, match="unknown metric"):
        select(pairs, "largest", progress=False)
    with pytest.raises(ConfigError, match="needs a model"):
        select(pairs, "alignment-potential", progress=False)
    with pytest.raises(ConfigError, match="reference"):
        select(pairs, "dpo-implicit", model=object(), tokenizer=object(), progress=False)
    with pytest.raises(ConfigError, match="fraction"):
        select(pairs, "explicit", fraction=1.5, progress=False)


def test_equal_budgets_across_metrics(tiny_llama, llama3_tokenizer, pairs):
    out = selection_ablation(pairs, tiny_llama, llama3_tokenizer, fraction=0.4, progress=False)
    assert set(out) == {"alignment-potential", "explicit", "implicit", "random"}
    assert {len(d) for d in out.values()} == {math.floor(0.4 * len(pairs))}
    out_k = selection_ablation(pairs, tiny_llama, llama3_tokenizer, top_k=5, progress=False)
    assert {len(d) for d in out_k.values()} == {5}
    # random is seeded: same seed, same rows; another seed, (here) other rows
    again = selection_ablation(pairs, tiny_llama, llama3_tokenizer, fraction=0.4, metrics=("random",), progress=False)
    assert again["random"]["pair_id"] == out["random"]["pair_id"]


def test_streaming_chunks_give_the_same_metrics_as_one_pass(tiny_llama, llama3_tokenizer, pairs, tmp_path):
    one = score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, chunk_size=100, progress=False).dataset
    many = score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, chunk_size=3, progress=False,
                 work_dir=tmp_path / "work").dataset
    assert (tmp_path / "work" / "metrics.arrow").exists()  # memory-mapped from disk
    for col in ("alignment_potential", "implicit_margin", "random_score", "explicit_margin"):
        np.testing.assert_allclose(many[col], one[col], rtol=1e-6)


def _resp(text, score):
    return {"text": text, "score": score, "fine_grained": None, "aspects": None, "model": None}


def test_multi_rows_are_paired_max_vs_min_then_scored(tiny_llama, llama3_tokenizer, tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"Sort: {i} 2 7"}],
             "responses": [_resp("2 7", 3.0), _resp("7 2 " * (i + 1), 1.0 + i), _resp("2 and 7", 9.0 - i)],
             "prompt_id": f"q{i}", "source_row": i, "source": None}
            for i in range(5)]
    rows.append({**rows[0], "prompt_id": "tie", "responses": [_resp("a", 4.0), _resp("b", 4.0)]})
    multi = datasets.Dataset.from_list(rows)
    rep = StageReport("select")
    kept = select(multi, "alignment-potential", fraction=0.4, model=tiny_llama, tokenizer=llama3_tokenizer,
                  progress=False, plot=tmp_path / "ap.png", report=rep)
    assert rep.rows_in == 6 and rep.notes["multi rows paired max vs min"] == 5
    assert rep.notes["ties"] == 1  # the all-tie prompt: counted and dropped
    assert len(kept) == 2  # floor(0.4 * 5)
    for row in kept:
        i = int(row["prompt_id"][1:])
        scores = [3.0, 1.0 + i, 9.0 - i]
        assert row["explicit_margin"] == max(scores) - min(scores)
        assert row["score_chosen"] == max(scores) and row["chosen"][0]["role"] == "assistant"
    png = (tmp_path / "ap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    nan = datasets.Dataset.from_list(rows[:2] + [{**rows[2], "responses": [_resp("a", 1.0), _resp("b", float("nan"))]}])
    with pytest.raises(DataError) as err:
        select(nan, "explicit", progress=False, file="multi.jsonl")
    assert (err.value.row, err.value.field) == (2, "responses[1].score")


def test_every_metric_plots_its_boundary(tiny_llama, llama3_tokenizer, pairs, tmp_path):
    """The line drawn on each plot is the metric's real selection boundary: every kept pair lies
    on its kept side and every other pair on the far side (checked at each pair's own margins)."""
    from prefkit.select import available_metrics, get_metric
    from prefkit.select.selection import selection_scores

    ref = tiny_causal_lm(llama3_tokenizer, arch="llama", seed=1)
    scored = score_margins(pairs, model=tiny_llama, tokenizer=llama3_tokenizer, reference=ref, progress=False)
    ds = scored.dataset
    x = np.asarray(ds["explicit_margin"], dtype=np.float64)
    assert available_metrics() == ["alignment-potential", "ap-paper", "dpo-implicit", "explicit", "implicit", "random"]
    for metric in available_metrics():
        png = tmp_path / f"{metric}.png"
        report = StageReport("select")
        kept_rows = select(scored, metric, fraction=0.5, plot=png, report=report)
        assert len(kept_rows) == 4 and png.stat().st_size > 0
        s = selection_scores(scored, metric)
        threshold = report.notes["threshold (lowest kept score)"]
        kept = s >= threshold
        assert sorted(kept_rows["selection_score"]) == pytest.approx(sorted(s[kept])), metric
        m = get_metric(metric)
        y = np.abs(np.asarray(ds[m.implicit_column], dtype=np.float64))
        b = m.boundary(threshold, scored.stats, scored.weight, x) if m.boundary else None
        if metric == "random":
            assert b is None  # random selection has no boundary in this plane
            continue
        kind, v = b
        tol = 1e-9 * (1 + np.abs(v)).max()
        if kind == "vline":  # kept: explicit margin at or right of the line
            assert (x[kept] >= v - tol).all() and (x[~kept] <= v + tol).all(), metric
        else:  # kept: |implicit margin| at or below the line
            line = np.full_like(x, v) if kind == "hline" else v
            assert (y[kept] <= line[kept] + tol).all() and (y[~kept] >= line[~kept] - tol).all(), metric


def test_one_options_object_or_its_fields_as_keywords(tiny_llama, llama3_tokenizer, pairs):
    """select, score_margins and selection_ablation take one SelectOptions; keywords override it."""
    from prefkit.select import SelectOptions

    opts = SelectOptions(metric="implicit", fraction=0.5, seed=3, progress=False)
    by_object = select(pairs, options=opts, model=tiny_llama, tokenizer=llama3_tokenizer)
    by_keywords = select(pairs, "implicit", fraction=0.5, seed=3, progress=False, model=tiny_llama,
                         tokenizer=llama3_tokenizer)
    assert by_object.to_list() == by_keywords.to_list() and len(by_object) == 4
    overridden = select(pairs, "explicit", opts, top_k=2, model=tiny_llama, tokenizer=llama3_tokenizer)
    assert len(overridden) == 2
    everything = [r["score_chosen"] - r["score_rejected"] for r in pairs]
    assert sorted(overridden["explicit_margin"]) == pytest.approx(sorted(everything)[-2:])
    ablation = selection_ablation(pairs, tiny_llama, llama3_tokenizer, options=opts, metrics=("implicit", "random"))
    assert ablation["implicit"].to_list() == by_object.to_list()
    with pytest.raises(ConfigError, match="on_invalid must be 'error' or 'drop'"):
        SelectOptions(on_invalid="ignore")
    assert SelectOptions(on_invalid="skip").on_invalid == "drop"  # the old spelling still works
