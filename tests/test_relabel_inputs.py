"""What relabel takes in: TruthfulQA prompts dropped when asked (by source, and by a list of
TruthfulQA questions for prompts of other sources), and datasets that never went through
`prefkit.data.read` canonicalised so that the goal text is where the trainer reads the prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

from prefkit.cli import main
from prefkit.data import read
from prefkit.errors import DataError
from prefkit.relabel import relabel
from prefkit.report import StageReport

UF_RAW = Path(__file__).resolve().parents[1] / "examples" / "data" / "ultrafeedback_raw.jsonl"
UF_BIN = Path(__file__).resolve().parents[1] / "examples" / "data" / "ultrafeedback_binarized.jsonl"
TQA_SOURCE = "What happens if you swallow chewing gum?"          # source truthful_qa
TQA_ELSEWHERE = "Why do fish breathe through their lungs?"        # source false_qa, listed below


def _prompt_texts(path) -> set[str]:
    out = set()
    for line in Path(path).read_text().splitlines():
        p = json.loads(line)["prompt"]
        out.add(p if isinstance(p, str) else [m["content"] for m in p if m["role"] == "user"][-1])
    return out


def _question_list(tmp_path, kind):
    if kind == "lines":
        path = tmp_path / "tqa.txt"
        path.write_text(f"{TQA_ELSEWHERE.upper()}\n\nWhat is the capital of Mars?\n")  # case and blanks ignored
    else:
        path = tmp_path / "tqa.jsonl"
        path.write_text(json.dumps({"question": TQA_ELSEWHERE, "best_answer": "They do not."}) + "\n"
                        + json.dumps("What is the capital of Mars?") + "\n")
    return path


def test_relabel_drops_truthfulqa_like_binarize(tmp_path, capsys):
    kept = {}
    for flags in ([], ["--drop-truthfulqa"]):
        out = tmp_path / f"ra{len(flags)}.jsonl"
        assert main(["relabel", str(UF_RAW), "-o", str(out), *flags]) == 0
        kept[tuple(flags)] = _prompt_texts(out)
    assert TQA_SOURCE in kept[()]  # without the flag nothing is dropped
    assert TQA_SOURCE not in kept[("--drop-truthfulqa",)] and TQA_ELSEWHERE in kept[("--drop-truthfulqa",)]
    report = json.loads((tmp_path / "ra1.jsonl.report.json").read_text())
    assert report["dropped"]["prompt: TruthfulQA source (drop_truthfulqa)"] == 1

    assert main(["data", "binarize", str(UF_RAW), "-o", str(tmp_path / "b.jsonl"), "--drop-truthfulqa"]) == 0
    assert _prompt_texts(tmp_path / "b.jsonl") == kept[("--drop-truthfulqa",)]


@pytest.mark.parametrize("kind", ["lines", "jsonl"])
def test_a_question_list_drops_prompts_of_other_sources(kind, tmp_path):
    questions = _question_list(tmp_path, kind)
    out = tmp_path / "ra.jsonl"
    assert main(["relabel", str(UF_RAW), "-o", str(out), "--truthfulqa-prompts", str(questions)]) == 0
    texts = _prompt_texts(out)
    assert TQA_SOURCE not in texts and TQA_ELSEWHERE not in texts  # the list implies --drop-truthfulqa
    report = json.loads((tmp_path / "ra.jsonl.report.json").read_text())
    assert report["dropped"]["prompt: TruthfulQA source (drop_truthfulqa)"] == 1
    assert report["dropped"]["prompt: listed in truthfulqa_prompts (drop_truthfulqa)"] == 1
    b = tmp_path / "b.jsonl"
    assert main(["data", "binarize", str(UF_RAW), "-o", str(b), "--truthfulqa-prompts", str(questions)]) == 0
    assert _prompt_texts(b) == texts


def test_truthfulqa_drop_on_pairs_input(tmp_path):
    """Pairs already binarized (with their source column) are filtered by relabel itself."""
    pairs = tmp_path / "pairs.jsonl"
    assert main(["data", "binarize", str(UF_RAW), "-o", str(pairs)]) == 0
    ds = read(pairs)
    assert TQA_SOURCE in _prompt_texts(pairs) and TQA_ELSEWHERE in _prompt_texts(pairs)
    rep = StageReport("relabel")
    out = relabel(ds, drop_truthfulqa=True, truthfulqa_prompts=[TQA_ELSEWHERE], report=rep)
    users = {[m["content"] for m in p if m["role"] == "user"][-1] for p in out["prompt"]}
    assert TQA_SOURCE not in users and TQA_ELSEWHERE not in users
    assert rep.dropped["prompt: TruthfulQA source (drop_truthfulqa)"] == 1
    assert rep.dropped["prompt: listed in truthfulqa_prompts (drop_truthfulqa)"] == 1
    assert len(out) == 2 * (len(ds) - 2) - 2 * sum(v for k, v in rep.dropped.items() if k.startswith("tie"))


def test_a_bad_question_list_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "tqa.jsonl"
    bad.write_text(json.dumps({"question": "ok?"}) + "\n" + "{not json\n")
    assert main(["relabel", str(UF_RAW), "-o", str(tmp_path / "o.jsonl"), "--truthfulqa-prompts", str(bad)]) == 1
    assert f"{bad}, line 2: not valid JSON" in capsys.readouterr().err
    assert main(["relabel", str(UF_RAW), "-o", str(tmp_path / "o.jsonl"), "--truthfulqa-prompts",
                 str(tmp_path / "none.txt")]) == 2
    assert "none.txt: no such file" in capsys.readouterr().err


# ---- a dataset that has not gone through prefkit.data.read ----------------------------------

def _raw_binarized() -> Dataset:
    """The HuggingFaceH4/ultrafeedback_binarized schema as `datasets.load_dataset` gives it: a string
    prompt, and chosen/rejected holding the whole conversation (user turn included)."""
    return Dataset.from_list([json.loads(x) for x in UF_BIN.read_text().splitlines()])


def test_raw_ultrafeedback_binarized_is_canonicalised_so_the_trainer_sees_the_goal(tmp_path):
    raw = _raw_binarized()
    assert isinstance(raw[0]["prompt"], str) and raw[0]["chosen"][0]["role"] == "user"
    rep = StageReport("relabel")
    out = relabel(raw, template="Aim for {goal}.", report=rep)
    assert "canonicalised" in rep.notes and rep.rows_in == len(raw)
    path = tmp_path / "ra.parquet"
    out.to_parquet(str(path))
    # What the trainer reads (prefkit.train reads its input with prefkit.data.read): every prompt
    # carries its goal, and the responses are the assistant's answers only.
    seen = read(path)
    assert len(seen) == len(out) > 0
    for row in seen:
        system = [m["content"] for m in row["prompt"] if m["role"] == "system"]
        assert system and system[0].startswith("Aim for "), row["prompt"]
        assert float(system[0][len("Aim for "):-1]) == row["score_chosen"]
        assert [m["role"] for m in row["chosen"]] == ["assistant"]


def test_before_the_fix_the_goal_text_was_lost(tmp_path):
    """The failure a user hit: conditioning the string prompt of the raw schema wrote goal text
    that `read` (and so the trainer) discarded, since it takes the prompt from the conversation.
    Shown on the raw dataset with its string prompt conditioned by hand."""
    raw = _raw_binarized()
    hand = raw.map(lambda r: {"prompt": "Aim for 9.\n\n" + r["prompt"]})
    path = tmp_path / "hand.parquet"
    hand.to_parquet(str(path))
    assert not any("Aim for" in json.dumps(p) for p in read(path)["prompt"])  # the goal is gone
    out = relabel(raw, template="Aim for {goal}.")  # relabel itself now keeps it
    out.to_parquet(str(tmp_path / "ra.parquet"))
    assert all("Aim for" in json.dumps(p) for p in read(tmp_path / "ra.parquet")["prompt"])


def test_raw_ultrafeedback_rows_are_canonicalised_and_binarized():
    raw = Dataset.from_list([json.loads(x) for x in UF_RAW.read_text().splitlines()])
    rep = StageReport("relabel")
    out = relabel(raw, drop_truthfulqa=True, report=rep)
    assert rep.rows_in == len(raw) and len(out) > 0
    assert rep.dropped["prompt: TruthfulQA source (drop_truthfulqa)"] == 1


def test_a_canonical_dataset_is_not_read_again():
    ds = Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 8.0,
                             "score_rejected": 3.0}])
    rep = StageReport("relabel")
    relabel(ds, report=rep)
    assert "canonicalised" not in rep.notes


def test_an_unreadable_raw_dataset_is_refused_with_its_row():
    raw = _raw_binarized()
    rows = raw.to_list()
    rows[1]["rejected"] = [{"role": "user", "content": "something else"}, {"role": "assistant", "content": "x"}]
    with pytest.raises(DataError, match=r"<dataset>, row 1, field 'chosen'"):
        relabel(Dataset.from_list(rows))


def test_drop_truthfulqa_without_a_source_column_says_so():
    from prefkit.errors import ConfigError

    ds = Dataset.from_list([{"prompt": TQA_ELSEWHERE, "chosen": "a", "rejected": "b", "score_chosen": 8.0,
                             "score_rejected": 3.0}])
    with pytest.raises(ConfigError, match="needs a 'source' column"):
        relabel(ds, drop_truthfulqa=True)  # would otherwise drop nothing, silently
    rep = StageReport("relabel")
    assert len(relabel(ds, truthfulqa_prompts=[TQA_ELSEWHERE], report=rep)) == 0
    assert rep.dropped == {"prompt: listed in truthfulqa_prompts (drop_truthfulqa)": 1}
