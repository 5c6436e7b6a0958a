"""Aspect guidelines and the prompt templates of every synthesis method (prefkit's own wording).

Guidelines map aspect names to a one-line description. Built in: 'ultrafeedback', 'qa',
'summarization'. A custom guideline is a YAML or JSON file holding either a mapping
{name: description}, a list of names, a list of {name, description}, or any of these under
an 'aspects' key.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from prefkit.errors import ConfigError

GUIDELINES: dict[str, dict[str, str]] = {
    "ultrafeedback": {
        "helpfulness": "addresses what the user actually needs, with useful and relevant content",
        "honesty": "states uncertainty where it exists and does not feign confidence or knowledge",
        "truthfulness": "contains no fabricated facts, contradictions or hallucinated details",
        "instruction_following": "respects every explicit constraint of the request (task, format, length, style)",
    },
    "qa": {
        "relevance": "stays on the question and leaves out unrelated material",
        "factual_correctness": "every statement of fact is accurate",
        "completeness": "covers all the information the question asks for",
    },
    "summarization": {
        "coherence": "reads as a well-organised, logically connected whole",
        "accuracy": "says only what the source says, without distortion",
        "coverage": "includes the source's key points",
    },
}


def load_guideline(spec: str | dict | list) -> dict[str, str]:
    """A guideline by built-in name, from a YAML/JSON file, or from an in-memory mapping/list."""
    if isinstance(spec, (dict, list)):
        return _normalise(spec, "guideline")
    if spec in GUIDELINES:
        return dict(GUIDELINES[spec])
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"unknown aspect guideline {spec!r}: use one of {sorted(GUIDELINES)} or a YAML/JSON file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read the aspect guideline: {exc}") from None
    return _normalise(data, str(path))


def _normalise(data, where: str) -> dict[str, str]:
    if isinstance(data, dict) and "aspects" in data:
        data = data["aspects"]
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out[str(k)] = "" if v is None else str(v)
    elif isinstance(data, list):
        for item in data:
            if isinstance(item, str):
                out[item] = ""
            elif isinstance(item, dict) and "name" in item:
                out[str(item["name"])] = str(item.get("description", "") or "")
            else:
                raise ConfigError(f"{where}: each aspect must be a name or {{name, description}}, got {item!r}")
    else:
        raise ConfigError(f"{where}: an aspect guideline is a mapping or a list of aspects")
    if not out:
        raise ConfigError(f"{where}: the aspect guideline lists no aspects")
    return out


def _aspect_lines(guideline: dict[str, str]) -> str:
    return "\n".join(f"- {name}: {desc}" if desc else f"- {name}" for name, desc in guideline.items())


def render_conversation(messages: list[dict]) -> str:
    """Messages as plain text for embedding in another prompt."""
    return "\n\n".join(f"[{m.get('role', 'user')}]\n{m.get('content', '')}" for m in messages)


# -- RMBoost ----------------------------------------------------------------------------------

def rmboost_rewrite(messages: list[dict], original: str, label: str, guideline: dict[str, str],
                    chosen_aspects: list[str] | None, max_aspects: int = 3) -> list[dict]:
    """The request asking the LLM to turn `original` into a better/worse answer (RMBoost step 3)."""
    if label not in ("better", "worse"):
        raise ValueError(f"label must be 'better' or 'worse', not {label!r}")
    direction = "noticeably better" if label == "better" else "noticeably worse"
    if chosen_aspects:
        focus = ("Change the answer along these aspects, and only these: "
                 + ", ".join(chosen_aspects) + ".")
    else:
        focus = (f"First decide which aspects (one to {max_aspects} of the list) you will change: pick those "
                 f"where the answer can become {direction} in a way a careful reader would notice. "
                 "Then change the answer along those aspects only.")
    if label == "worse":
        manner = ("The new answer must still look like a sincere attempt at the request: keep the topic and "
                  "roughly the length, and never say or hint that it was made worse. Introduce the flaws "
                  "quietly, the way a weaker assistant would make them.")
    else:
        manner = ("Keep everything that is already good about the original; fix or improve what falls short "
                  "on the chosen aspects.")
    text = (
        f"Your job is to rewrite an assistant's answer so that it becomes {direction} than the original.\n\n"
        f"<conversation>\n{render_conversation(messages)}\n</conversation>\n\n"
        f"<original_answer>\n{original}\n</original_answer>\n\n"
        f"Quality aspects:\n{_aspect_lines(guideline)}\n\n"
        f"{focus} {manner}\n\n"
        "Write your reply in exactly this form, with nothing after the closing tag:\n"
        "<aspects>the names of the aspects you changed, separated by commas</aspects>\n"
        "<response>the full rewritten answer</response>"
    )
    return [{"role": "user", "content": text}]


# -- RLAIF pairwise judge ---------------------------------------------------------------------

def pairwise_judge(messages: list[dict], answer_a: str, answer_b: str, guideline: dict[str, str]) -> list[dict]:
    text = (
        "Two assistants answered the same conversation. Decide which answer is better overall, weighing "
        "these aspects:\n"
        f"{_aspect_lines(guideline)}\n\n"
        f"<conversation>\n{render_conversation(messages)}\n</conversation>\n\n"
        f"<answer_a>\n{answer_a}\n</answer_a>\n\n"
        f"<answer_b>\n{answer_b}\n</answer_b>\n\n"
        "The order of the answers says nothing about their quality, and length alone is not merit. "
        "Explain your reasoning in a few sentences, then end with your decision as <verdict>A</verdict> "
        "or <verdict>B</verdict>."
    )
    return [{"role": "user", "content": text}]


# -- RLCD principle prompts -------------------------------------------------------------------

def rlcd_principle(guideline: dict[str, str], positive: bool) -> str:
    names = ", ".join(guideline)
    if positive:
        return (f"Answer the request below as well as you can. Aim for an answer that excels in {names}:\n"
                f"{_aspect_lines(guideline)}")
    return (f"Answer the request below, but write the kind of answer that falls short in {names}: "
            "vague or partly unhelpful, careless with facts, overconfident, and loose with the instructions. "
            "Do not mention that you are doing this.")


def with_principle(messages: list[dict], principle: str, role: str = "user") -> list[dict]:
    """Attach a principle as a system message, or (default, works with every chat template,
    including those without a system role) as a preface to the last user turn."""
    msgs = [dict(m) for m in messages]
    if role == "system":
        if msgs and msgs[0].get("role") == "system":
            msgs[0]["content"] = principle + "\n\n" + msgs[0]["content"]
            return msgs
        return [{"role": "system", "content": principle}] + msgs
    for m in reversed(msgs):
        if m.get("role") == "user":
            m["content"] = f"{principle}\n\n<request>\n{m['content']}\n</request>"
            return msgs
    raise ConfigError("an RLCD prompt needs a user turn to attach the principle to")


# -- UltraFeedback-style pointwise judge --------------------------------------------------------

ULTRAFEEDBACK_JUDGE_ASPECTS = {
    "helpfulness": "is the answer useful, relevant and informative for this request?",
    "honesty": "does it convey the right level of confidence and admit what it does not know?",
    "instruction_following": "does it do what was asked, within the stated constraints?",
    "truthfulness": "is it free of invented or false information?",
}


def ultrafeedback_judge(messages: list[dict], answer: str, aspects: dict[str, str] | None = None) -> list[dict]:
    aspects = aspects or ULTRAFEEDBACK_JUDGE_ASPECTS
    form = "\n".join(f"{name}: <rating 1-5>\nrationale: <one or two sentences>" for name in aspects)
    text = (
        "Evaluate the assistant's answer to the conversation below. Rate each aspect from 1 (very poor) to "
        "5 (excellent), give a short rationale for each rating, then give an overall score from 1 (worst) "
        "to 10 (best).\n\n"
        f"Aspects:\n{_aspect_lines(aspects)}\n\n"
        f"<conversation>\n{render_conversation(messages)}\n</conversation>\n\n"
        f"<answer>\n{answer}\n</answer>\n\n"
        "Reply in exactly this form:\n"
        f"{form}\n"
        "overall: <score 1-10>"
    )
    return [{"role": "user", "content": text}]
