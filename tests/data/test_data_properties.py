"""Property tests: readers fed malformed rows either read each row correctly or reject it with an
error naming exactly that row (and the field at fault)."""

import copy
import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefkit.data import read
from prefkit.errors import DataError
from prefkit.report import StageReport

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# any character, lone surrogates included (they survive JSON as \ud800 escapes)
TEXT = st.text(st.characters(codec=None, categories=None), max_size=6)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "human", ""]),
                                 "content": st.one_of(TEXT, st.none(), st.integers())})
VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 12), st.floats(allow_nan=True, allow_infinity=True),
                  TEXT, st.lists(MESSAGE, max_size=2), st.lists(st.integers(), max_size=2),
                  st.dictionaries(TEXT, st.integers(), max_size=2))
# a mutation: delete the key (None) or set it to a value
MUTATION = st.one_of(st.none(), st.tuples(VALUE))


def _write(rows) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="ascii")
    with f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=True) + "\n")  # ascii keeps lone surrogates writable
    return Path(f.name)


def _top(field: str) -> str:
    return re.split(r"[.\[]", field)[0]


def _check(rows, k, mutated_top: set, check_row):
    path = _write(rows)
    try:
        try:
            ds = read(path)
        except DataError as e:
            assert e.row == k, str(e)
            assert e.field is not None and _top(e.field) in mutated_top, str(e)
            assert "expected" in e.detail or "is empty" in e.detail, str(e)
            rep = StageReport("read")
            skipped = read(path, on_invalid="drop", report=rep)
            assert len(skipped) == len(rows) - 1 and k not in skipped["source_row"]
            assert rep.n_dropped == 1 and rep.dropped[e.reason] == 1
        else:
            assert len(ds) == len(rows)
            check_row(ds[k])
    finally:
        path.unlink()


def _apply(row: dict, path: list, mutation):
    obj = row
    for key in path[:-1]:
        obj = obj[key]
    if mutation is None:
        obj.pop(path[-1], None) if isinstance(obj, dict) else obj.pop(path[-1])
    else:
        obj[path[-1]] = mutation[0]


def _good_pair(i):
    return {"prompt": f"Question {i}?", "chosen": f" good answer {i}", "rejected": f" bad answer {i}",
            "score_chosen": 8.0, "score_rejected": 3.5}


@SETTINGS
@given(field=st.sampled_from(["prompt", "chosen", "rejected", "score_chosen", "score_rejected"]),
       mutation=MUTATION, k=st.integers(1, 3))
def test_trl_rows_are_read_correctly_or_rejected_at_their_row(field, mutation, k):
    rows = [_good_pair(i) for i in range(4)]
    _apply(rows[k], [field], mutation)
    raw = rows[k]

    def check_row(out):
        if "prompt" in raw:  # explicit prompt: every value must come through unchanged
            for col in ("prompt", "chosen", "rejected"):
                assert out[col] == raw[col]
        for col in ("score_chosen", "score_rejected"):
            assert out[col] == (None if raw.get(col) is None else float(raw[col]))

    # a prompt/response format mismatch may be reported on any of the three
    texts = {"prompt", "chosen", "rejected"}
    _check(rows, k, texts if field in texts else {field}, check_row)


UF_PATHS = [["instruction"], ["source"], ["completions"], ["completions", 0], ["completions", 0, "response"],
            ["completions", 0, "overall_score"], ["completions", 0, "model"], ["completions", 1, "annotations"],
            ["completions", 1, "annotations", "honesty"], ["completions", 1, "annotations", "honesty", "Rating"],
            ["completions", 1, "fine-grained_score"]]


def _good_uf(build, i):
    c = build.completion
    return build.uf_row(f"Instruction {i}", [c(f"first {i}", 7.5, ("4", "5", "4", "5"), model="m1"),
                                             c(f"second {i}", 3.0, ("2", "N/A", "2", "3"), model="m2")])


@SETTINGS
@given(path=st.sampled_from(UF_PATHS), mutation=MUTATION, k=st.integers(1, 3))
def test_ultrafeedback_rows_are_read_correctly_or_rejected_at_their_row(build, path, mutation, k):
    rows = [_good_uf(build, i) for i in range(4)]
    _apply(rows[k], path, mutation)
    raw = copy.deepcopy(rows[k])

    def check_row(out):
        assert out["prompt"] == [{"role": "user", "content": raw["instruction"]}]
        comps = raw["completions"]
        assert [r["text"] for r in out["responses"]] == [c["response"] for c in comps]
        assert [r["score"] for r in out["responses"]] == [float(c["overall_score"]) for c in comps]
        for r, c in zip(out["responses"], comps):
            rating = ((c.get("annotations") or {}).get("honesty") or {}).get("Rating")
            if isinstance(rating, str) and rating.strip().upper() == "N/A":
                assert r["aspects"]["honesty"] is None
            elif rating is not None:
                assert r["aspects"]["honesty"] == float(rating)

    _check(rows, k, {path[0]}, check_row)


@SETTINGS
@given(cut=st.integers(0, 10_000))
def test_truncated_file_fails_at_the_cut_line_or_reads_whole_lines(cut):
    text = "".join(json.dumps(_good_pair(i)) + "\n" for i in range(5))
    cut = cut % (len(text) + 1)
    f = tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False)
    with f:
        f.write(text[:cut])
    path = Path(f.name)
    complete = text[:cut].count("\n")
    partial = text[:cut].rsplit("\n", 1)[-1] if cut else ""
    try:
        ds = read(path) if complete or partial.strip() else None
    except DataError as e:
        assert e.row == complete and "not valid JSON (truncated?)" in str(e), str(e)
    else:
        if ds is not None:
            # whole lines only, or a partial line that happens to end right after its closing brace
            assert len(ds) == complete + (1 if partial.strip() else 0)
            assert ds["prompt"] == [f"Question {i}?" for i in range(len(ds))]
    finally:
        path.unlink()
