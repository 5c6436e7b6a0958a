"""Chat-template encoding with an exact prompt/response boundary, truncation and drop accounting."""

from __future__ import annotations

import datasets
import pytest
import torch

from prefkit.errors import ConfigError, DataError
from prefkit.report import StageReport
from prefkit.tokenize import PairCollator, encode_pair, encode_pairs


def conv(user, chosen, rejected, system=None, **extra):
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return dict(prompt=prompt, chosen=[{"role": "assistant", "content": chosen}],
                rejected=[{"role": "assistant", "content": rejected}], **extra)


def render(tok, messages, gen):
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        add_generation_prompt=gen)["input_ids"])


@pytest.mark.parametrize("fixture", ["chatml_tokenizer", "llama3_tokenizer"])
def test_conversational_boundary_is_exact(fixture, request):
    tok = request.getfixturevalue(fixture)
    row = conv("Sort 3 1 2.", "1 2 3", "3 2 1", system="You are a helpful assistant.")
    enc = encode_pair(row["prompt"], row["chosen"], row["rejected"], tok)
    # prompt = the template with the generation header; prompt + response = the full conversation
    assert enc["prompt_ids"] == render(tok, row["prompt"], True)
    assert enc["prompt_ids"] + enc["chosen_ids"] == render(tok, row["prompt"] + row["chosen"], False)
    assert enc["prompt_ids"] + enc["rejected_ids"] == render(tok, row["prompt"] + row["rejected"], False)
    assert not enc["boundary_mismatch"] and enc["truncated"] == []
    # the response carries the end-of-turn token the model must learn to emit
    assert tok.decode(enc["chosen_ids"]).startswith("1 2 3" + tok.eos_token)
    assert tok.eos_token_id in enc["chosen_ids"]
    if tok.bos_token_id is not None:  # llama3: BOS once, from the template, never doubled
        ids = enc["prompt_ids"] + enc["chosen_ids"]
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_standard_strings_get_eos_and_plain_tokenization(chatml_tokenizer):
    tok = chatml_tokenizer
    enc = encode_pair("Question: sort 3 1 2.\nAnswer:", " 1 2 3", " 3 2 1" + tok.eos_token, tok)
    assert enc["prompt_ids"] == tok("Question: sort 3 1 2.\nAnswer:")["input_ids"]
    assert enc["chosen_ids"][-1] == tok.eos_token_id and enc["rejected_ids"][-1] == tok.eos_token_id
    # the EOS is appended once, not twice when already there
    assert enc["rejected_ids"].count(tok.eos_token_id) == 1
    assert tok.decode(enc["chosen_ids"]) == " 1 2 3" + tok.eos_token


def test_template_that_renders_the_prompt_differently_is_cut_to_the_shared_prefix():
    from prefkit.toy.tiny import build_tokenizer

    tok = build_tokenizer(template="chatml")
    # generation prompt adds a marker that the full conversation does not contain
    tok.chat_template = tok.chat_template.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant\nTHINK '")
    assert "THINK" in tok.chat_template
    row = conv("Sort 3 1 2.", "1 2 3", "3 2 1")
    plain = render(tok, row["prompt"], True)
    assert tok.decode(plain).endswith("THINK ")
    report = StageReport("tokenize")
    out = encode_pairs(datasets.Dataset.from_list([row]), tok, report=report)
    full = render(tok, row["prompt"] + row["chosen"], False)
    assert out[0]["prompt_ids"] + out[0]["chosen_ids"] == full
    assert out[0]["prompt_ids"] == plain[: len(out[0]["prompt_ids"])]
    assert "THINK" not in tok.decode(out[0]["prompt_ids"] + out[0]["chosen_ids"])
    assert report.notes["prompt_boundary_mismatch"] == 1


def test_truncation_is_explicit_and_counted(llama3_tokenizer):
    tok = llama3_tokenizer
    long_prompt = conv("word " * 200, "short answer", "another short answer")
    long_answer = conv("Sort 3 1 2.", "1 2 3 " * 100, "no")
    full_prompt = encode_pair(long_prompt["prompt"], long_prompt["chosen"], long_prompt["rejected"], tok,
                              max_length=None, max_prompt_length=None)["prompt_ids"]
    report = StageReport("tokenize")
    out = encode_pairs(datasets.Dataset.from_list([long_prompt, long_answer]), tok,
                       max_length=64, max_prompt_length=32, report=report)
    assert len(out) == 2
    # keep_end keeps the last prompt tokens: the generation header survives
    assert out[0]["prompt_ids"] == full_prompt[-32:]
    assert tok.decode(out[0]["prompt_ids"]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    for r in out:
        assert len(r["prompt_ids"]) + len(r["chosen_ids"]) <= 64
        assert len(r["prompt_ids"]) + len(r["rejected_ids"]) <= 64
    assert len(out[1]["prompt_ids"]) + len(out[1]["chosen_ids"]) == 64
    assert report.notes["truncated_prompts"] == 1
    assert report.notes["truncated_chosen"] == 1
    assert report.notes["truncated_rejected"] == 0
    start = encode_pairs(datasets.Dataset.from_list([long_prompt]), tok, max_length=64, max_prompt_length=32,
                         prompt_truncation="keep_start")
    assert start[0]["prompt_ids"] == full_prompt[:32]


def test_bad_pairs_are_dropped_and_counted_never_a_crash(gemma_tokenizer):
    tok = gemma_tokenizer
    rows = [
        conv("fine", "good", "bad", pair_id="ok-0"),
        conv("empty answer", "good", "   ", pair_id="empty"),
        conv("word " * 300, "good", "bad", pair_id="long-prompt"),
        conv("has system", "good", "bad", system="be nice", pair_id="system"),  # gemma rejects system
        dict(conv("missing", "good", "bad", pair_id="none"), chosen=None),
        conv("also fine", "good", "bad", pair_id="ok-1"),
    ]
    report = StageReport("tokenize")
    out = encode_pairs(datasets.Dataset.from_list(rows), tok, max_length=128, max_prompt_length=None, report=report)
    assert out["pair_id"] == ["ok-0", "ok-1"]
    assert out["pair_index"] == [0, 5]
    assert report.rows_in == 6 and report.rows_out == 2
    assert report.dropped == {"empty rejected response": 1, "prompt alone reaches max_length": 1,
                              "chat template error": 1, "missing or invalid chosen": 1}
    assert "row 2" in report.examples["prompt alone reaches max_length"]
    with pytest.raises(DataError, match=r"row 1, field 'rejected': empty rejected response"):
        encode_pairs(datasets.Dataset.from_list(rows), tok, on_invalid="error")


def test_options_are_checked(chatml_tokenizer):
    ds = datasets.Dataset.from_list([conv("a", "b", "c")])
    with pytest.raises(ConfigError, match="max_prompt_length"):
        encode_pairs(ds, chatml_tokenizer, max_length=16, max_prompt_length=16)
    with pytest.raises(ConfigError, match="prompt_truncation"):
        encode_pairs(ds, chatml_tokenizer, prompt_truncation="middle")
    with pytest.raises(DataError, match="'rejected'"):
        encode_pairs(ds.remove_columns("rejected"), chatml_tokenizer)


def test_collator_builds_one_concatenated_batch_with_meta(chatml_tokenizer):
    tok = chatml_tokenizer
    rows = [conv("Sort 3 1 2.", "1 2 3", "3 2 1, which is wrong", weight=1.0, goal_score=10),
            conv("Hi", "Hello there, how can I help?", "Go away", weight=0.5, goal_score=None)]
    enc = encode_pairs(datasets.Dataset.from_list(rows), tok)
    batch = PairCollator.for_tokenizer(tok, pad_to_multiple_of=8)(list(enc))
    ids, att, resp = batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    assert ids.shape[0] == 4 and ids.shape[1] % 8 == 0
    for i, r in enumerate(enc):
        for row, key in ((i, "chosen_ids"), (i + 2, "rejected_ids")):  # chosen rows first, then rejected
            seq = r["prompt_ids"] + r[key]
            n = len(seq)
            assert ids[row, :n].tolist() == seq and att[row].sum() == n
            assert (ids[row, n:] == tok.pad_token_id).all()
            assert resp[row].tolist() == [0] * len(r["prompt_ids"]) + [1] * len(r[key]) + [0] * (ids.shape[1] - n)
    meta = batch["meta"]
    assert meta["pair_index"].tolist() == [0, 1]
    assert meta["weight"].dtype == torch.float32 and meta["weight"].tolist() == [1.0, 0.5]
    assert meta["goal_score"][0] == 10 and torch.isnan(meta["goal_score"][1])
    assert "prompt" not in meta
