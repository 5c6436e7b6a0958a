"""Prompt/response boundaries on SmolLM2's chat template equal TRL 1.16's, token for token.

SmolLM2's template injects a default system prompt when the conversation has none; the
relabeled data puts the goal either in a system message (which then replaces that default) or
in front of the user turn (the default stays). Each case is checked against TRL's own
tokenisation code (DPOTrainer._prepare_dataset) and against the exact rendered text."""

from __future__ import annotations

from types import SimpleNamespace

import datasets
import pytest

from real_testkit import pair_rows

pytestmark = pytest.mark.slow

DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
GOAL_TEXT = ("Write a response to the instruction below. Without referring to them, aim for the quality targets "
             "listed here; each is rated from 1 (lowest) to 10 (highest).\nOverall score: {}.")


def trl_tokenize(rows: datasets.Dataset, tokenizer) -> datasets.Dataset:
    """TRL 1.16's DPOTrainer tokenisation, run on its own (no model needed)."""
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir="unused", report_to=[], use_cpu=True, bf16=False, max_length=1024)
    return DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tokenizer), rows, tokenizer, args, "train")


def prefkit_tokenize(rows, tokenizer):
    from prefkit.report import StageReport
    from prefkit.tokenize import encode_pairs

    report = StageReport("tokenize")
    enc = encode_pairs(rows, tokenizer, report=report, on_invalid="error")
    assert report.notes["prompt_boundary_mismatch"] == 0 and sum(report.dropped.values()) == 0
    return enc


def assert_same_ids(ours, theirs):
    for col in ("prompt_ids", "chosen_ids", "rejected_ids"):
        assert ours[col] == theirs[col], col


def test_default_system_prompt_is_injected_and_boundaries_equal_trl(real_tokenizer):
    rows = datasets.Dataset.from_list(pair_rows(8, system_every=3))
    ours, theirs = prefkit_tokenize(rows, real_tokenizer), trl_tokenize(rows, real_tokenizer)
    assert_same_ids(ours, theirs)
    dec = real_tokenizer.decode
    # row 1 has no system turn: the template's default system prompt is part of the prompt
    assert dec(ours[1]["prompt_ids"]) == (DEFAULT_SYSTEM + "<|im_start|>user\nName a fruit.<|im_end|>\n"
                                          "<|im_start|>assistant\n")
    # row 0 has its own system turn: no default
    assert dec(ours[0]["prompt_ids"]) == ("<|im_start|>system\nAnswer in as few words as possible.<|im_end|>\n"
                                          "<|im_start|>user\nSort these numbers: 3 1 2<|im_end|>\n"
                                          "<|im_start|>assistant\n")
    # the response is the answer and the end-of-turn tokens the model must learn to emit
    assert dec(ours[1]["chosen_ids"]) == "Apple.<|im_end|>\n"
    assert dec(ours[1]["rejected_ids"]) == "A car.<|im_end|>\n"
    assert ours[1]["chosen_ids"][-2:] == [real_tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                          real_tokenizer("\n", add_special_tokens=False)["input_ids"][0]]


@pytest.mark.parametrize("placement", ["system", "user"])
def test_relabel_placements_equal_trl(real_tokenizer, placement):
    from prefkit.relabel import relabel

    rows = datasets.Dataset.from_list(pair_rows(6, system_every=3, scores=True))
    ra = relabel(rows, placement=placement, tokenizer=real_tokenizer)
    assert len(ra) == 12
    ours, theirs = prefkit_tokenize(ra, real_tokenizer), trl_tokenize(ra, real_tokenizer)
    assert_same_ids(ours, theirs)
    text = real_tokenizer.decode(ours[1]["prompt_ids"])   # row 1: no system turn of its own, goal 8
    goal = GOAL_TEXT.format(8)
    if placement == "system":   # the goal's system message replaces the template's default
        assert text == (f"<|im_start|>system\n{goal}<|im_end|>\n<|im_start|>user\nName a fruit.<|im_end|>\n"
                        "<|im_start|>assistant\n")
        # row 0 had a system turn: the goal goes first, the row's own instruction stays after it
        assert real_tokenizer.decode(ours[0]["prompt_ids"]).startswith(
            f"<|im_start|>system\n{GOAL_TEXT.format(7)}\n\nAnswer in as few words as possible.<|im_end|>\n")
    else:                       # the goal prefixes the user turn; the default system prompt stays
        assert text == (f"{DEFAULT_SYSTEM}<|im_start|>user\n{goal}\n\nName a fruit.<|im_end|>\n"
                        "<|im_start|>assistant\n")
    # D^l rows (second half) carry the rejected response's goal and the swapped pair
    assert real_tokenizer.decode(ours[7]["chosen_ids"]) == "A car.<|im_end|>\n"
    assert GOAL_TEXT.format(3) in real_tokenizer.decode(ours[7]["prompt_ids"])
