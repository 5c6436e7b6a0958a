"""The toy instruction task and its gold reward.

Task: "sort these words alphabetically". A prompt names k distinct words (3 to 6 by default,
drawn from a fixed list of 20 fruit names) in a random order; a perfect response lists exactly
those words in alphabetical order separated by spaces, and nothing else.

Gold reward: three named aspects, each in [0, 1], combined into an UltraFeedback-like overall
score on a 1-10 scale. A response is read as words: lower-cased, split on whitespace and
commas, trailing punctuation stripped. With R the requested words (k = |R|) and T the response
words:

- coverage    = |set(T) ∩ R| / k                         (how many requested words appear)
- order       = (# pairs {a, b} of requested words, a < b alphabetically, whose first
                 occurrences both appear in T with a before b) / C(k, 2)
                 (pairs with a missing word earn nothing; k = 1 gives order = coverage)
- conciseness = (# words of T that are the first occurrence of a requested word) / |T|
                 (repeats and unrequested words are penalised; an empty response scores 0)

overall = 1 + 9 * (0.4 * coverage + 0.4 * order + 0.2 * conciseness)

so the empty response scores 1, the perfect one 10, and a response that copies the prompt's
(unsorted) order gets full coverage and conciseness but partial order. The formula was fixed
before any method was compared on it.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from itertools import combinations

ITEMS = (
    "apple", "banana", "cherry", "date", "fig", "grape", "kiwi", "lemon", "lime", "mango",
    "melon", "olive", "orange", "papaya", "peach", "pear", "plum", "quince", "raisin", "tomato",
)

ASPECTS = ("coverage", "order", "conciseness")
WEIGHTS = {"coverage": 0.4, "order": 0.4, "conciseness": 0.2}

INSTRUCTIONS = (
    "Sort these words alphabetically: {items}",
    "Put these words in alphabetical order: {items}",
    "List alphabetically: {items}",
)

# Phrases the noisy demonstrators add (verbosity the conciseness aspect penalises).
CHATTER = ("sure", "here you go", "the sorted list is", "ok", "done", "hope this helps")

_SPLIT_RE = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class Aspects:
    coverage: float
    order: float
    conciseness: float

    @property
    def overall(self) -> float:
        return overall_score(self)

    def as_dict(self) -> dict[str, float]:
        return {"coverage": self.coverage, "order": self.order, "conciseness": self.conciseness}


def make_prompt(rng: random.Random, min_items: int = 3, max_items: int = 6,
                items: tuple[str, ...] = ITEMS) -> str:
    """One task prompt: an instruction followed by k distinct words in random order."""
    k = rng.randint(min_items, max_items)
    chosen = rng.sample(list(items), k)
    template = rng.choice(INSTRUCTIONS)
    return template.format(items=" ".join(chosen))


def make_prompts(n: int, seed: int = 0, min_items: int = 3, max_items: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [make_prompt(rng, min_items, max_items) for _ in range(n)]


def requested_items(prompt) -> list[str]:
    """The words a prompt asks to sort, in the order given (a string, or messages with a user turn)."""
    text = user_text(prompt)
    if ":" not in text:
        raise ValueError(f"not a toy-task prompt (no ':' before the words): {text!r}")
    # The words follow the last ':' (a conditioning prefix may come before the instruction).
    return _words(text.rsplit(":", 1)[1])


def perfect_response(prompt) -> str:
    return " ".join(sorted(dict.fromkeys(requested_items(prompt))))


def response_words(response) -> list[str]:
    return _words(_assistant_text(response))


def gold_aspects(prompt, response) -> Aspects:
    """The three gold aspects of `response` to `prompt` (strings or TRL message lists)."""
    requested = list(dict.fromkeys(requested_items(prompt)))
    words = response_words(response)
    k = len(requested)
    want = set(requested)
    first_pos: dict[str, int] = {}
    useful = 0
    for i, w in enumerate(words):
        if w in want and w not in first_pos:
            first_pos[w] = i
            useful += 1
    coverage = len(first_pos) / k if k else 0.0
    if k >= 2:
        good = sum(1 for a, b in combinations(sorted(requested), 2)
                   if a in first_pos and b in first_pos and first_pos[a] < first_pos[b])
        order = good / (k * (k - 1) / 2)
    else:
        order = coverage
    conciseness = useful / len(words) if words else 0.0
    return Aspects(coverage=coverage, order=order, conciseness=conciseness)


def overall_score(aspects: Aspects) -> float:
    """1 + 9 * weighted mean of the aspects: a 1-10 score like UltraFeedback's overall_score."""
    a = aspects.as_dict()
    return 1.0 + 9.0 * sum(WEIGHTS[name] * a[name] for name in ASPECTS)


def gold_reward(prompt, response) -> float:
    """The gold overall score (1-10) of one response."""
    return overall_score(gold_aspects(prompt, response))


def noisy_demonstration(prompt, rng: random.Random, quality: float) -> str:
    """A demonstration written by a demonstrator of the given quality in [0, 1].

    Lower quality means more of each failure: dropping words, keeping the prompt's order,
    swapping neighbours, repeating or adding words, and chatter before the list.
    """
    q = min(max(quality, 0.0), 1.0)
    given = list(dict.fromkeys(requested_items(prompt)))
    words = list(given) if rng.random() < 0.7 * (1 - q) else sorted(given)
    words = [w for w in words if rng.random() >= 0.5 * (1 - q)]
    for i in range(len(words) - 1):
        if rng.random() < 0.4 * (1 - q):
            words[i], words[i + 1] = words[i + 1], words[i]
    n_extra = sum(rng.random() < 0.5 * (1 - q) for _ in range(3))
    for _ in range(n_extra):
        pool = words if words and rng.random() < 0.5 else [w for w in ITEMS if w not in given]
        words.insert(rng.randint(0, len(words)), rng.choice(pool))
    if rng.random() < 0.5 * (1 - q):
        words = rng.choice(CHATTER).split() + words
    return " ".join(words)


def _words(text: str) -> list[str]:
    return [w.strip(".:;!?\"'()").lower() for w in _SPLIT_RE.split(text.strip()) if w.strip(".:;!?\"'()")]


def user_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    if not users:
        raise ValueError("prompt has no user turn")
    return users[-1]


def _assistant_text(response) -> str:
    if isinstance(response, str):
        return response
    return " ".join(m["content"] for m in response if m.get("role") == "assistant")
