"""Builders for fixtures in the exact public schemas (openbmb/UltraFeedback raw,
HuggingFaceH4/ultrafeedback_binarized, TRL preference format), written by us."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import write_jsonl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def _completion(response, overall, ratings=("4", "4", "4", "4"), model="model-a", fine_grained="auto"):
    ann = {}
    for aspect, rating in zip(ASPECTS, ratings):
        a = {"Rating": rating, "Rationale": f"{aspect} rationale"}
        if aspect in ("helpfulness", "truthfulness"):
            a.update({"Rationale For Rating": "why", "Type": ["1"]})
        ann[aspect] = a
    if fine_grained == "auto":
        nums = [float(r) for r in ratings if r != "N/A"]
        fine_grained = sum(nums) / len(nums) if nums else None
    return {"annotations": ann, "critique": "a critique", "custom_system_prompt": "You are helpful.",
            "fine-grained_score": fine_grained, "model": model, "overall_score": overall,
            "principle": "helpfulness", "response": response}


def _uf_row(instruction, completions, source="evol_instruct"):
    return {"source": source, "instruction": instruction, "models": [c["model"] for c in completions],
            "completions": completions, "correct_answers": [], "incorrect_answers": []}


def _binarized_row(prompt, chosen, rejected, sc, sr):
    ch = [{"content": prompt, "role": "user"}, {"content": chosen, "role": "assistant"}]
    rj = [{"content": prompt, "role": "user"}, {"content": rejected, "role": "assistant"}]
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "chosen": ch,
            "rejected": rj, "messages": ch, "score_chosen": sc, "score_rejected": sr}


@pytest.fixture()
def build():
    return SimpleNamespace(completion=_completion, uf_row=_uf_row, binarized_row=_binarized_row,
                           write_jsonl=write_jsonl, examples=EXAMPLES)

