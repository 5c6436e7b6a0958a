"""A deterministic fake LLM behind a real local HTTP server (prefkit.testing).

Every generated answer carries a hidden quality marker `q=N` (1-9). The fake LLM follows prefkit's
prompts the way a capable model would: a rewrite asked to be better raises q, one asked to be worse
lowers it; the pairwise judge prefers the higher q; the UltraFeedback-style judge rates from q; the
RLCD positive principle gives q=8 and the negative q=2. Special words in a prompt make it misbehave:
NOTAGS (rewrite without tags), COPYCAT (rewrite = the original), GARBLE (unreadable judge output).
"""

from __future__ import annotations

import random
import re
import threading

import pytest

from prefkit.testing import FakeServer
from synth_testkit import make_backend

_rng = random.Random(1234)
_lock = threading.Lock()
FILLER = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
          "kilo", "lima", "mike", "november", "oscar", "papa"]


def _q(text: str) -> int:
    m = re.findall(r"q=(\d)", text)
    return int(m[-1]) if m else 5


def _answer(q: int, topic: str) -> str:
    with _lock:
        words = " ".join(_rng.choice(FILLER) for _ in range(12))
    return f"On {topic[:30]!s}: {words} q={q}"


def _between(text: str, tag: str) -> str:
    m = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.DOTALL)
    return m.group(1) if m else ""


def fake_llm(body: dict) -> str:
    text = body["messages"][-1]["content"]
    if text.startswith("Your job is to rewrite"):
        orig = _between(text, "original_answer")
        conv = _between(text, "conversation")
        better = "noticeably better" in text
        if "NOTAGS" in conv:
            return "Sure! Here is a rewritten answer without any tags."
        if "COPYCAT" in conv:
            return f"<aspects>helpfulness</aspects>\n<response>{orig}</response>"
        m = re.search(r"only these: (.*?)\.", text)
        aspects = m.group(1) if m else ("Helpfulness, instruction following" if better else "truthfulness")
        q = _q(orig)
        q = min(9, q + 3) if better else max(1, q - 3)
        return f"I will change: {aspects}.\n<aspects>{aspects}</aspects>\n<response>\n{_answer(q, 'rewrite')}\n</response>"
    if text.startswith("Two assistants answered"):
        if "GARBLE" in _between(text, "conversation"):
            return "Both answers have merits and it is hard to say."
        qa, qb = _q(_between(text, "answer_a")), _q(_between(text, "answer_b"))
        v = "A" if qa > qb else "B" if qb > qa else "tie"
        return f"A has q={qa}, B has q={qb}.\n<verdict>{v}</verdict>"
    if text.startswith("Evaluate the assistant's answer"):
        if "GARBLE" in _between(text, "conversation"):
            return "This answer is fine I guess."
        q = _q(_between(text, "answer"))
        r = max(1, min(5, (q + 1) // 2))
        lines = []
        for a in ("helpfulness", "honesty", "instruction_following", "truthfulness"):
            lines += [f"**{a.replace('_', ' ').title()}**: {r}/5", f"rationale: rated from q={q}"]
        return "\n".join(lines + [f"Overall: {q + 1}"])
    everything = " ".join(m["content"] for m in body["messages"])
    if "falls short in" in everything:
        return _answer(2, "neg")
    if "excels in" in everything:
        return _answer(8, "pos")
    with _lock:
        q = _rng.randint(2, 8)
    return _answer(q, text)


@pytest.fixture()
def llm_server():
    with FakeServer(fake_llm, max_lifetime=120) as srv:
        yield srv


@pytest.fixture()
def llm(llm_server):
    return make_backend(llm_server.base_url)
