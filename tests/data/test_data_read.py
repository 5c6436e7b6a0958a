import hashlib
import json

import datasets
import pytest

from prefkit.data import read, write
from prefkit.errors import ConfigError, DataError
from prefkit.report import StageReport


def sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


# ---------------------------------------------------------------- adapters


def test_ultrafeedback_raw_to_multi(tmp_path, build):
    c = build.completion
    row = build.uf_row("Name a prime.", [
        c("2 is prime.", 9.0, ("5", "5", "5", "5"), model="gpt-4"),
        c("4 is prime.", 2.0, ("1", "N/A", "2", "1"), model="alpaca-7b"),
        c("7.", 7.5, ("4", "4", "4", "4"), model="llama", fine_grained=3.75),  # file's value wins
    ], source="truthful_qa")
    path = build.write_jsonl(tmp_path / "uf.jsonl", [row])
    rep = StageReport("read")
    ds = read(path, report=rep)
    assert rep.notes["format"] == "ultrafeedback"
    assert ds.column_names == ["prompt", "responses", "prompt_id", "source_row", "source"]
    r = ds[0]
    assert r["prompt"] == [{"role": "user", "content": "Name a prime."}]
    assert r["prompt_id"] == sha("Name a prime.")  # same id ultrafeedback_binarized uses
    assert r["source"] == "truthful_qa" and r["source_row"] == 0
    resp = r["responses"]
    assert [x["text"] for x in resp] == ["2 is prime.", "4 is prime.", "7."]
    assert [x["score"] for x in resp] == [9.0, 2.0, 7.5]
    assert [x["model"] for x in resp] == ["gpt-4", "alpaca-7b", "llama"]
    assert resp[1]["aspects"] == {"helpfulness": 1.0, "honesty": None, "instruction_following": 2.0,
                                  "truthfulness": 1.0}
    assert resp[1]["fine_grained"] == pytest.approx((1 + 2 + 1) / 3)
    assert resp[2]["fine_grained"] == 3.75


def test_ultrafeedback_fine_grained_computed_when_file_has_none(tmp_path, build):
    comp = build.completion("ok", 5.0, ("3", "4", "N/A", "5"), fine_grained=None)
    ds = read(build.write_jsonl(tmp_path / "uf.jsonl", [build.uf_row("q", [comp])]))
    assert ds[0]["responses"][0]["fine_grained"] == pytest.approx(4.0)


def test_ultrafeedback_binarized_to_conversational_pairs(build):
    ds = read(build.examples / "ultrafeedback_binarized.jsonl")
    rows = [json.loads(line) for line in open(build.examples / "ultrafeedback_binarized.jsonl")]
    assert len(ds) == len(rows)
    for got, raw in zip(ds, rows):
        assert got["prompt"] == [{"role": "user", "content": raw["prompt"]}]
        assert got["chosen"] == [raw["chosen"][1]]
        assert got["rejected"] == [{"role": "assistant", "content": raw["rejected"][1]["content"]}]
        assert got["score_chosen"] == raw["score_chosen"] and got["score_rejected"] == raw["score_rejected"]
        assert got["prompt_id"] == raw["prompt_id"]
    assert len(set(ds["pair_id"])) == len(ds)


def test_trl_standard_explicit_prompt_and_optional_scores(tmp_path, build):
    rows = [{"prompt": "2+2=", "chosen": " 4", "rejected": " 5", "score_chosen": 1, "score_rejected": 0.5},
            {"prompt": "Sky?", "chosen": " blue", "rejected": " green"}]
    ds = read(build.write_jsonl(tmp_path / "t.jsonl", rows))
    assert ds["prompt"] == ["2+2=", "Sky?"]
    assert ds["chosen"] == [" 4", " blue"]
    assert ds["score_chosen"] == [1.0, None]
    assert ds["score_rejected"] == [0.5, None]
    assert ds["prompt_id"] == [sha("2+2="), sha("Sky?")]
    assert ds["source_row"] == [0, 1]


def test_trl_conversational_explicit_prompt(build):
    ds = read(build.examples / "trl_conversational.jsonl")
    assert ds[0]["prompt"][-1]["role"] == "user"
    assert all(m["role"] == "assistant" for m in ds[0]["chosen"])


def test_trl_implicit_prompt_string_shared_prefix_cut_at_word_boundary(tmp_path, build):
    rows = [{"chosen": "Q: sky colour?\nA: blue", "rejected": "Q: sky colour?\nA: black"},
            {"chosen": "Say hi. Hello there", "rejected": "Say hi. Go away"}]
    ds = read(build.write_jsonl(tmp_path / "t.jsonl", rows))
    assert ds[0]["prompt"] == "Q: sky colour?\nA:" and ds[0]["chosen"] == " blue" and ds[0]["rejected"] == " black"
    assert ds[1]["prompt"] == "Say hi." and ds[1]["chosen"] == " Hello there"


def test_trl_implicit_prompt_conversational_shared_messages(tmp_path, build):
    sys_ = {"role": "system", "content": "Be brief."}
    u1, a1, u2 = ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Colour of the sky?"})
    rows = [{"chosen": [sys_, u1, a1, u2, {"role": "assistant", "content": "Blue."}],
             "rejected": [sys_, u1, a1, u2, {"role": "assistant", "content": "Green."}]}]
    ds = read(build.write_jsonl(tmp_path / "t.jsonl", rows))
    assert ds[0]["prompt"] == [sys_, u1, a1, u2]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "Blue."}]


def test_multi_format_and_extra_columns_pass_through(tmp_path, build):
    rows = [{"prompt": "p1", "responses": [{"text": "a", "score": 3}, {"text": "b", "score": 1.5, "model": "m"}],
             "judge": "toy"},
            {"prompt": "p2", "responses": [{"text": "c", "score": None, "aspects": {"clarity": 4}}], "judge": "toy"}]
    ds = read(build.write_jsonl(tmp_path / "m.jsonl", rows))
    assert ds["judge"] == ["toy", "toy"]
    assert ds[0]["responses"][1] == {"text": "b", "score": 1.5, "fine_grained": None, "aspects": None, "model": "m"}
    assert ds[1]["responses"][0]["aspects"] == {"clarity": 4.0}


def test_forced_format_mismatch_names_the_field(build):
    with pytest.raises(DataError) as e:
        read(build.examples / "trl_standard.jsonl", format="ultrafeedback")
    assert e.value.row == 0 and e.value.field == "instruction"
    assert "missing; expected the instruction text" in str(e.value)


def test_undetectable_columns(tmp_path, build):
    with pytest.raises(DataError, match=r"cannot tell the format from the columns \(answer, question\)"):
        read(build.write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "answer": "a"}]))


def test_read_accepts_an_in_memory_dataset():
    ds = read(datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}]))
    assert ds[0]["pair_id"].endswith("-r0")


# ---------------------------------------------------------------- provenance


def test_canonical_reread_keeps_provenance_and_duplicate_pair_id_is_rejected(tmp_path, build):
    ds = read(build.examples / "ultrafeedback_binarized.jsonl").select([4, 2])
    again = read(write(ds, tmp_path / "c.jsonl"))
    assert again["source_row"] == [4, 2]
    assert again["pair_id"] == ds["pair_id"]
    rows = again.to_list()
    rows.append(dict(rows[0]))
    with pytest.raises(DataError) as e:
        read(datasets.Dataset.from_list(rows))
    assert e.value.row == 2 and e.value.field == "pair_id" and "repeats row 0" in str(e.value)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["ultrafeedback_raw", "ultrafeedback_binarized", "trl_standard",
                                  "trl_conversational"])
@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet", ""])
def test_round_trip_every_writer_and_reader(tmp_path, build, name, ext):
    ds = read(build.examples / f"{name}.jsonl")
    out = write(ds, tmp_path / f"out{ext}")
    back = read(out)
    assert back.to_list() == ds.to_list()
    assert back.features == ds.features


def test_round_trip_csv_for_flat_data(tmp_path, build):
    ds = read(build.examples / "trl_standard.jsonl")
    back = read(write(ds, tmp_path / "out.csv"))
    assert back.to_list() == ds.to_list()


def test_csv_refuses_nested_columns(tmp_path, build):
    ds = read(build.examples / "trl_conversational.jsonl")
    with pytest.raises(ConfigError, match="CSV holds flat columns only, but prompt, chosen, rejected"):
        write(ds, tmp_path / "out.csv")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_json_array_input(tmp_path, build):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    assert read(tmp_path / "a.json")["chosen"] == ["a"]


def test_saved_dataset_dict_needs_a_split(tmp_path, build):
    ds = read(build.examples / "trl_standard.jsonl")
    write(datasets.DatasetDict(train=ds, test=ds.select([0])), tmp_path / "dd")
    with pytest.raises(DataError, match=r"has splits train, test; choose one with --split"):
        read(tmp_path / "dd")
    assert len(read(tmp_path / "dd", split="test")) == 1
    with pytest.raises(DataError, match="has no split 'dev'; its splits are train, test"):
        read(tmp_path / "dd", split="dev")


def test_directory_of_data_files_goes_through_load_dataset(tmp_path, build):
    # the same datasets.load_dataset call a hub id takes, on local data files
    d = tmp_path / "repo"
    d.mkdir()
    (d / "train.jsonl").write_text((build.examples / "ultrafeedback_binarized.jsonl").read_text())
    lines = (build.examples / "ultrafeedback_binarized.jsonl").read_text().splitlines()
    (d / "test.jsonl").write_text("\n".join(lines[:2]) + "\n")
    with pytest.raises(DataError, match="choose one with --split"):
        read(d)
    ds = read(d, split="test")
    assert len(ds) == 2 and ds[0]["chosen"][0]["role"] == "assistant"


def test_unreachable_hub_id_is_one_clear_line():
    with pytest.raises(DataError) as e:
        read("no-such-org/no-such-dataset", split="train")
    msg = str(e.value)
    assert msg.startswith("no-such-org/no-such-dataset: could not load") and "\n" not in msg


def test_split_on_a_single_file_is_a_config_error(build):
    with pytest.raises(ConfigError, match="apply to hub ids"):
        read(build.examples / "trl_standard.jsonl", split="train")
