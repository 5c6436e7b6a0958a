"""LLM judges for policy evaluation, through the same durable request runs as synthesis.

- Single-answer grading (MT-Bench style, Zheng et al. 2023, arXiv:2306.05685): the judge rates
  one answer from 1 to 10 and ends with <score>N</score>; `prefkit.synth.parsing.parse_score`
  reads it. An unreadable answer is a counted parse failure, never a score.
- Pairwise comparison against a reference output, asked in both orders (the policy's answer
  shown first, then second) to cancel position bias; the judge may call a tie. Verdicts are read
  by `prefkit.synth.parsing.parse_verdict` and turned into the policy's preference by
  `prefkit.evaluate.winrate.policy_preference`.

The prompts are prefkit's own wording. Every request goes through a `prefkit.synth.runs.Run`:
finished answers are kept in the run directory and never asked twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefkit.evaluate.winrate import policy_preference
from prefkit.synth.backends import Backend, SamplingParams
from prefkit.synth.parsing import parse_score, parse_verdict
from prefkit.synth.prompts import render_conversation
from prefkit.synth.runs import Request, Run


def single_grading_messages(messages: list[dict], answer: str) -> list[dict]:
    text = (
        "You are grading an AI assistant's answer to the conversation below. Judge how helpful, relevant, "
        "accurate, deep and clear the answer is for what the user asked. Write a short explanation, then "
        "rate the answer on a scale of 1 (useless) to 10 (excellent) and end with the rating in the form "
        "<score>N</score>.\n\n"
        f"<conversation>\n{render_conversation(messages)}\n</conversation>\n\n"
        f"<answer>\n{answer}\n</answer>"
    )
    return [{"role": "user", "content": text}]


def pairwise_messages(messages: list[dict], answer_a: str, answer_b: str) -> list[dict]:
    text = (
        "Two AI assistants answered the conversation below. Decide which answer serves the user better: "
        "more helpful, correct, relevant and clear. The order in which the answers appear says nothing about "
        "their quality, and a longer answer is not better for being longer.\n\n"
        f"<conversation>\n{render_conversation(messages)}\n</conversation>\n\n"
        f"<answer_a>\n{answer_a}\n</answer_a>\n\n"
        f"<answer_b>\n{answer_b}\n</answer_b>\n\n"
        "Explain your reasoning briefly, then end with exactly one of <verdict>A</verdict>, "
        "<verdict>B</verdict> or <verdict>tie</verdict>."
    )
    return [{"role": "user", "content": text}]


@dataclass
class Grade:
    score: float | None
    failure: str | None  # 'request failed: ...' or 'unparseable: ...'; None when read
    raw: str | None


def grade_single(run: Run, judge: Backend, items: list[tuple[list[dict], str]], params: SamplingParams,
                 desc: str = "judge (single)") -> list[Grade]:
    """One 1-10 grade per (messages, answer)."""
    recs = run.generate(judge, [Request(single_grading_messages(m, a), params, 0, "judge-single")
                                for m, a in items], desc=desc)
    out = []
    for rec in recs:
        if not rec["ok"]:
            out.append(Grade(None, f"request failed: {rec['reason']}", None))
            continue
        v, issue = parse_score(rec["text"], 1, 10)
        out.append(Grade(v, None if v is not None else f"unparseable: {issue}", rec["text"]))
    return out


@dataclass
class Comparison:
    """One policy answer against its reference, judged in both orders."""

    verdicts: list[str | None]  # parsed verdict per order: [policy shown first, policy shown second]
    preferences: list[float | None]  # the policy's preference per order (1 / 0.5 / 0), None unread
    failures: list[str | None]  # per order: None, 'request failed: ...' or 'unparseable: ...'
    raw: list[str | None] = field(default_factory=list)

    @property
    def preference(self) -> float | None:
        """Mean of the readable orders' preferences; None when neither was read."""
        got = [p for p in self.preferences if p is not None]
        return sum(got) / len(got) if got else None


ORDERS = ("policy_first", "policy_second")


def compare_pairwise(run: Run, judge: Backend, items: list[tuple[list[dict], str, str]], params: SamplingParams,
                     desc: str = "judge (pairwise)") -> list[Comparison]:
    """Judge each (messages, policy answer, reference answer) in both orders."""
    reqs = []
    for messages, policy, reference in items:
        reqs.append(Request(pairwise_messages(messages, policy, reference), params, 0, "judge-pairwise"))
        reqs.append(Request(pairwise_messages(messages, reference, policy), params, 0, "judge-pairwise"))
    recs = run.generate(judge, reqs, desc=desc)
    out = []
    for i in range(len(items)):
        verdicts, prefs, failures, raw = [], [], [], []
        for order, rec in enumerate(recs[2 * i: 2 * i + 2]):
            if not rec["ok"]:
                verdicts.append(None)
                prefs.append(None)
                failures.append(f"request failed: {rec['reason']}")
                raw.append(None)
                continue
            v, issue = parse_verdict(rec["text"])
            verdicts.append(v)
            prefs.append(policy_preference(v, policy_first=(order == 0)))
            failures.append(None if v is not None else f"unparseable: {issue}")
            raw.append(rec["text"])
        out.append(Comparison(verdicts, prefs, failures, raw))
    return out
