"""LLM judges for policy evaluation, through the same durable request runs as synthesis.

- Single-answer grading (MT-Bench style, Zheng et al. 2023, arXiv:2306.05685): the judge rates
  one answer from 1 to 10 and ends with <score>N</score>; `prefkit.synth.parsing.parse_score`
  reads it (or a reply that is nothing but the number). An unreadable answer is a counted parse
  failure, never a score.
- Pairwise comparison against a reference output, asked in both orders (the policy's answer
  shown first, then second) to cancel position bias; the judge may call a tie. Verdicts are read
  by `prefkit.synth.parsing.parse_verdict` (or a reply that is nothing but the verdict) and
  turned into the policy's preference by `prefkit.evaluate.winrate.policy_preference`.

The prompts are prefkit's own wording. `explain=False` asks for the verdict or rating alone (for
small judges that do not finish an explanation within a short token budget). Every request goes
through a `prefkit.synth.runs.Run`: finished answers are kept in the run directory and never
asked twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from prefkit.evaluate.winrate import policy_preference
from prefkit.synth.backends import Backend, SamplingParams
from prefkit.synth.parsing import parse_score, parse_verdict
from prefkit.synth.prompts import render_conversation
from prefkit.synth.runs import Request, Run


def single_grading_messages(messages: list[dict], answer: str, explain: bool = True) -> list[dict]:
    ask = ("Write a short explanation, then rate the answer on a scale of 1 (useless) to 10 (excellent) and end "
           "with the rating in the form <score>N</score>." if explain else
           "Rate the answer on a scale of 1 (useless) to 10 (excellent). Reply with only the rating, in the form "
           "<score>N</score>.")
    text = (
        "You are grading an AI assistant's answer to the conversation below. Judge how helpful, relevant, "
        f"accurate, deep and clear the answer is for what the user asked. {ask}\n\n"
        f"<conversation>\n{render_conversation(messages)}\n</conversation>\n\n"
        f"<answer>\n{answer}\n</answer>"
    )
    return [{"role": "user", "content": text}]


def pairwise_messages(messages: list[dict], answer_a: str, answer_b: str, explain: bool = True) -> list[dict]:
    ask = ("Explain your reasoning briefly, then end with exactly one of <verdict>A</verdict>, "
           "<verdict>B</verdict> or <verdict>tie</verdict>." if explain else
           "Reply with only your verdict: <verdict>A</verdict>, <verdict>B</verdict> or <verdict>tie</verdict>.")
    text = (
        "Two AI assistants answered the conversation below. Decide which answer serves the user better: "
        "more helpful, correct, relevant and clear. The order in which the answers appear says nothing about "
        "their quality, and a longer answer is not better for being longer.\n\n"
        f"<conversation>\n{render_conversation(messages)}\n</conversation>\n\n"
        f"<answer_a>\n{answer_a}\n</answer_a>\n\n"
        f"<answer_b>\n{answer_b}\n</answer_b>\n\n"
        f"{ask}"
    )
    return [{"role": "user", "content": text}]


_BARE = re.compile(r"^[\s*_`\"'(\[]*(?:answer|response|verdict)?\s*:?\s*([AB]|tie)[\s*_`\"').\]]*$", re.IGNORECASE)
_BARE_SCORE = re.compile(r"^[\s*_`\"'(\[]*(\d+(?:\.\d+)?)\s*(?:/\s*10)?[\s*_`\"').\]]*$")


def read_verdict(text: str | None) -> tuple[str | None, str | None]:
    """`parse_verdict`, plus a reply that is nothing but the verdict ('A', '**B**', 'Tie.'), which is
    what a judge asked for the verdict alone often writes. Anything else stays unread."""
    v, issue = parse_verdict(text)
    if v is None and text:
        m = _BARE.match(text)
        if m:
            v = "tie" if m.group(1).lower() == "tie" else m.group(1).upper()
            return v, None
    return v, issue


def read_score(text: str | None) -> tuple[float | None, str | None]:
    """`parse_score` on the 1-10 scale, plus a reply that is nothing but the number ('7', '7/10')."""
    v, issue = parse_score(text, 1, 10)
    if v is None and text:
        m = _BARE_SCORE.match(text)
        if m:
            x = float(m.group(1))
            return (x, None) if 1 <= x <= 10 else (None, f"score {x:g} outside 1-10")
    return v, issue


@dataclass
class Grade:
    score: float | None
    failure: str | None  # 'request failed: ...' or 'unparseable: ...'; None when read
    raw: str | None


def grade_single(run: Run, judge: Backend, items: list[tuple[list[dict], str]], params: SamplingParams,
                 desc: str = "judge (single)", explain: bool = True) -> list[Grade]:
    """One 1-10 grade per (messages, answer)."""
    recs = run.generate(judge, [Request(single_grading_messages(m, a, explain), params, 0, "judge-single")
                                for m, a in items], desc=desc)
    out = []
    for rec in recs:
        if not rec["ok"]:
            out.append(Grade(None, f"request failed: {rec['reason']}", None))
            continue
        v, issue = read_score(rec["text"])
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
                     desc: str = "judge (pairwise)", explain: bool = True) -> list[Comparison]:
    """Judge each (messages, policy answer, reference answer) in both orders."""
    reqs = []
    for messages, policy, reference in items:
        reqs.append(Request(pairwise_messages(messages, policy, reference, explain), params, 0, "judge-pairwise"))
        reqs.append(Request(pairwise_messages(messages, reference, policy, explain), params, 0, "judge-pairwise"))
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
            v, issue = read_verdict(rec["text"])
            verdicts.append(v)
            prefs.append(policy_preference(v, policy_first=(order == 0)))
            failures.append(None if v is not None else f"unparseable: {issue}")
            raw.append(rec["text"])
        out.append(Comparison(verdicts, prefs, failures, raw))
    return out
