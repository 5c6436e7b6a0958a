"""A stand-in "instruction-following LLM" for the toy world, behind prefkit.synth's Backend interface.

The toy base policy is far too small to follow a rewrite instruction or to judge, so the toy
world answers prefkit.synth's own prompts with this backend, the same way `prefkit.toy.judge`
stands in for an AI judge. It reads the prompt text that `prefkit.synth.prompts` wrote and
answers it:

- plain generation (any other prompt): a sample from the toy base policy at the requested
  temperature, through a wrapped `LocalBackend` (so through `prefkit.generate`);
- RMBoost's rewrite prompt (`<original_answer>` ... "noticeably better/worse"): the original
  answer y1 edited along the requested aspects (or, when the LLM is to choose, 1-2 aspects drawn
  at random), each edit carried out with probability `edit_success` and followed, with
  probability `slip`, by one unrequested random slip (a neighbour swap or a dropped word):
    coverage     better: add one missing requested word   worse: drop one requested word
    order        better: sort the requested words          worse: swap two adjacent words / reverse
    conciseness  better: remove chatter, repeats, extras    worse: add chatter or a repeated word
  Aspect names outside the toy task's (e.g. UltraFeedback's) are mapped to a random toy aspect.
  The reply is `<aspects>..</aspects><response>..</response>`;
- RLAIF's pairwise-judge prompt (`<answer_a>`/`<answer_b>`): the noisy toy judge's overall score
  of each answer (`prefkit.toy.judge.judge_completion`), the higher wins (`<verdict>A|B|tie</verdict>`);
- the UltraFeedback-style pointwise judge prompt (West-of-N's judge): the noisy toy judge's overall
  score, with the fine-grained score as every requested aspect's 1-5 rating;
- the evolve stage's rewrite prompt (`prefkit.select.evolve`: `<instruction>` ... `<prompt>` tags):
  a harder sorting prompt, the toy analogue of an Evol-Instruct rewrite: add-constraints, deepen
  and reasoning add one or two words to sort, concretise rewords the instruction and adds one,
  broaden asks to sort as many other words; with probability `evolve_failure` the reply lacks its
  tags (a failed rewrite, which the evolve stage drops and counts);
- RLCD's principle prompts: the request with the principle removed, sampled from the base policy at
  `rlcd_temperatures` (low temperature for the positive principle, high for the negative one) -
  the toy analogue of "the same model, prompted to do well or badly".

Randomness is seeded by (seed, prompt text), so a resumed run answers the same way.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from prefkit.select.evolve import OPERATIONS
from prefkit.synth.backends import Backend, Completion, LocalBackend, SamplingParams
from prefkit.toy import task
from prefkit.toy.judge import JudgeConfig, judge_completion

_TAG = r"<{0}>\n?(.*?)\n?</{0}>"


def _tag(text: str, name: str) -> str | None:
    m = re.search(_TAG.format(name), text, re.S)
    return m.group(1) if m else None


def _conversation_request(text: str) -> str:
    """The (last) user turn of a `<conversation>` block rendered by prompts.render_conversation."""
    conv = _tag(text, "conversation") or ""
    parts = re.split(r"(?:^|\n\n)\[user\]\n", conv)
    return parts[-1].split("\n\n[", 1)[0] if len(parts) > 1 else conv


class ToyRewriter(Backend):
    """The toy world's stand-in generator/judge LLM (see the module docstring)."""

    kind = "toy"

    def __init__(self, base, *, seed: int = 0, edit_success: float = 0.8, slip: float = 0.2,
                 judge: JudgeConfig = JudgeConfig(), rlcd_temperatures: tuple[float, float] = (0.3, 1.6),
                 batch_size: int = 64, name: str = "toy-rewriter", evolve_failure: float = 0.1):
        self.local = LocalBackend(str(base), batch_size=batch_size, seed=seed, name=str(base))
        self.model = name
        self.concurrency = self.local.concurrency
        self.seed = seed
        self.edit_success, self.slip = edit_success, slip
        self.judge_config = judge
        self.rlcd_temperatures = rlcd_temperatures
        self.evolve_failure = evolve_failure

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model, "base": self.local.model, "seed": self.seed,
                "edit_success": self.edit_success, "slip": self.slip,
                "judge": [self.judge_config.aspect_noise, self.judge_config.overall_noise],
                "rlcd_temperatures": list(self.rlcd_temperatures), "evolve_failure": self.evolve_failure}

    def _rng(self, text: str) -> random.Random:
        return random.Random(f"{self.seed}:" + hashlib.sha1(text.encode()).hexdigest())

    async def complete(self, messages: list[dict], params: SamplingParams) -> Completion:
        text = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        if "<original_answer>" in text:
            return Completion(self.rewrite_reply(text))
        if "<answer_a>" in text and "<answer_b>" in text:
            return Completion(self.pairwise_reply(text))
        if "<answer>" in text and "overall: <score 1-10>" in text:
            return Completion(self.pointwise_reply(text))
        if "<instruction>" in text and "<prompt>" in text:
            return Completion(self.evolve_reply(text))
        if "<request>" in text:  # an RLCD principle attached to the request
            request = _tag(text, "request") or text
            positive = text.startswith("Answer the request below as well as you can")
            temp = self.rlcd_temperatures[0 if positive else 1]
            return await self.local.complete([{"role": "user", "content": request}], params.replace(temperature=temp))
        return await self.local.complete(messages, params)

    # -- RMBoost rewrite ---------------------------------------------------------------------

    def rewrite_reply(self, text: str) -> str:
        rng = self._rng(text)
        prompt = _conversation_request(text)
        original = _tag(text, "original_answer") or ""
        better = "noticeably better than the original" in text
        m = re.search(r"along these aspects, and only these: (.*?)\.\s", text)
        if m:
            asked = [a.strip() for a in m.group(1).split(",") if a.strip()]
        else:
            asked = rng.sample(task.ASPECTS, rng.choice((1, 2)))
        aspects = [a if a in task.ASPECTS else rng.choice(task.ASPECTS) for a in asked]
        words = task.response_words(original)
        for a in dict.fromkeys(aspects):
            if rng.random() < self.edit_success:
                words = edit(prompt, words, a, better, rng)
        if rng.random() < self.slip and len(words) > 1:
            i = rng.randrange(len(words))
            if rng.random() < 0.5 and i + 1 < len(words):
                words[i], words[i + 1] = words[i + 1], words[i]
            else:
                del words[i]
        return f"<aspects>{', '.join(asked)}</aspects>\n<response>{' '.join(words)}</response>"

    # -- evolve rewrite ------------------------------------------------------------------------

    def evolve_reply(self, text: str) -> str:
        rng = self._rng(text)
        found = re.findall(r"<instruction>\n(.*?)\n</instruction>", text, re.S)   # not the tags' mention
        instruction = found[-1] if found else ""
        op = next((name for name, what in OPERATIONS.items() if what in text), "deepen")
        try:
            words = list(dict.fromkeys(task.requested_items(instruction)))
        except ValueError:   # not a sorting prompt: the toy LLM cannot rewrite it
            return "I cannot rewrite this instruction."
        if rng.random() < self.evolve_failure:
            return f"Here is a harder version: sort {len(words) + 1} words."   # no tags: a failed rewrite
        others = [w for w in task.ITEMS if w not in words]
        template = next((t for t in task.INSTRUCTIONS if instruction.startswith(t.split("{")[0])), task.INSTRUCTIONS[0])
        if op == "broaden":
            words = rng.sample(others, min(len(words), len(others)))
        else:
            add = 1 if op == "concretise" else rng.choice((1, 2))
            words = words + rng.sample(others, min(add, len(others)))
            rng.shuffle(words)
            if op == "concretise":
                template = rng.choice([t for t in task.INSTRUCTIONS if t != template])
        return f"<prompt>{template.format(items=' '.join(words))}</prompt>"

    # -- judges -----------------------------------------------------------------------------------

    def _judged(self, prompt: str, answer: str, rng: random.Random) -> dict:
        return judge_completion(prompt, answer, rng, self.judge_config)

    def pairwise_reply(self, text: str) -> str:
        rng = self._rng(text)
        prompt = _conversation_request(text)
        a = self._judged(prompt, _tag(text, "answer_a") or "", rng)["overall_score"]
        b = self._judged(prompt, _tag(text, "answer_b") or "", rng)["overall_score"]
        v = "A" if a > b else "B" if b > a else "tie"
        return f"Answer A scores about {a:g} of 10 and answer B about {b:g}.\n<verdict>{v}</verdict>"

    def pointwise_reply(self, text: str) -> str:
        rng = self._rng(text)
        c = self._judged(_conversation_request(text), _tag(text, "answer") or "", rng)
        names = re.findall(r"^(\w+): <rating 1-5>$", text, re.M)
        fg = round(c["fine-grained_score"])
        lines = [f"{n}: {fg}\nrationale: toy judge" for n in names]
        return "\n".join(lines + [f"overall: {c['overall_score']:g}"])

    async def aclose(self) -> None:
        await self.local.aclose()

    def describe(self) -> str:
        return f"toy:{self.model} over {self.local.describe()}"


def edit(prompt, words: list[str], aspect: str, better: bool, rng: random.Random) -> list[str]:
    """One edit of a response (as words) along a toy aspect, towards better or worse."""
    words = list(words)
    requested = list(dict.fromkeys(task.requested_items(prompt)))
    want = set(requested)
    if aspect == "coverage":
        present = [w for w in requested if w in words]
        if better:
            missing = [w for w in requested if w not in words]
            if missing:
                words.insert(rng.randint(0, len(words)), rng.choice(missing))
        elif len(present) > 1:  # never empties the answer
            gone = rng.choice(present)
            words = [w for w in words if w != gone]
    elif aspect == "order":
        idx = [i for i, w in enumerate(words) if w in want]
        vals = [words[i] for i in idx]
        if better:
            vals = sorted(vals)
        elif len(vals) >= 2:
            if rng.random() < 0.5:
                j = rng.randrange(len(vals) - 1)
                vals[j], vals[j + 1] = vals[j + 1], vals[j]
            else:
                vals = sorted(vals, reverse=True)
        for i, v in zip(idx, vals):
            words[i] = v
    elif aspect == "conciseness":
        if better:
            seen: set[str] = set()
            kept = []
            for w in words:
                if w in want and w not in seen:
                    kept.append(w)
                    seen.add(w)
            words = kept
        elif rng.random() < 0.5 or not words:
            words = rng.choice(task.CHATTER).split() + words
        else:
            i = rng.randrange(len(words))
            words.insert(i, words[i])
    return words
