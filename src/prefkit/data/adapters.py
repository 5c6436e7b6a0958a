"""Adapters: one function per public schema, turning a raw row into a canonical PAIRS or MULTI row
(see `prefkit.data.records`). Each validates what it reads and raises `DataError` naming the field
and what was expected; the reader adds the file and row.

Formats (auto-detected from the columns, or forced):
  ultrafeedback             openbmb/UltraFeedback raw: instruction + completions with annotations -> MULTI
  ultrafeedback-binarized   HuggingFaceH4/ultrafeedback_binarized: prompt string + full conversations -> PAIRS
  trl                       TRL preference format, standard or conversational, explicit or implicit prompt -> PAIRS
  multi                     prompt-centric multi-response rows (prefkit MULTI) -> MULTI
"""

from __future__ import annotations

import hashlib
import json

from prefkit.data import records as R
from prefkit.data import validate as V
from prefkit.errors import DataError

FORMATS = ("ultrafeedback", "ultrafeedback-binarized", "trl", "multi")

UF_SCORE_RANGE = (1.0, 10.0)   # overall_score: GPT-4 critique score
UF_RATING_RANGE = (1.0, 5.0)   # per-aspect Rating "1".."5"


# ---------------------------------------------------------------------------- provenance

def prompt_hash(prompt) -> str:
    """Stable id of a prompt: sha256 of its text. A single user turn hashes as its content (so a
    prompt read from UltraFeedback raw gets the same id as in ultrafeedback_binarized); any other
    message list hashes as canonical JSON."""
    if isinstance(prompt, list):
        if len(prompt) == 1 and prompt[0]["role"] == "user":
            prompt = prompt[0]["content"]
        else:
            prompt = json.dumps([[m["role"], m["content"]] for m in prompt], ensure_ascii=False)
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def make_pair_id(prompt_id: str, source_row: int, suffix: str | None = None) -> str:
    """Stable, readable pair id: prompt id prefix, the source row, and (for pairs built from one
    multi-response row) which responses were paired."""
    base = f"{prompt_id[:16]}-r{source_row}"
    return f"{base}-{suffix}" if suffix else base


def _provenance(row: dict, index: int, prompt) -> tuple[str, int, str | None]:
    pid = row.get(R.PROMPT_ID)
    pid = V.text(pid, R.PROMPT_ID) if pid is not None else prompt_hash(prompt)
    src_row = row.get(R.SOURCE_ROW)
    if src_row is None:
        src_row = index
    elif isinstance(src_row, bool) or not isinstance(src_row, int) or src_row < 0:
        raise V.fail(R.SOURCE_ROW, f"expected a non-negative integer row index, got {V.type_name(src_row)}",
                     V.WRONG_TYPE)
    source = row.get(R.SOURCE)
    if source is not None:
        source = V.text(source, R.SOURCE, allow_empty=True) or None
    return pid, src_row, source


# ---------------------------------------------------------------------------- UltraFeedback raw

def _uf_rating(value, field: str) -> float | None:
    if isinstance(value, str):
        v = value.strip()
        if v.upper() == "N/A":
            return None
        try:
            value = float(v)
        except ValueError:
            raise V.fail(field, f"is {value!r}; expected a rating '1'..'5' or 'N/A'", V.BAD_SCORE) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise V.fail(field, f"expected a rating '1'..'5' or 'N/A', got {V.type_name(value)}", V.WRONG_TYPE)
    return V.score(value, field, lo=UF_RATING_RANGE[0], hi=UF_RATING_RANGE[1])


def from_ultrafeedback(row: dict, index: int) -> dict:
    instruction = V.text(V.require(row, "instruction", "the instruction text"), "instruction")
    completions = V.require(row, "completions", "a list of completions")
    if not isinstance(completions, list):
        raise V.fail("completions", f"expected a list of completions, got {V.type_name(completions)}",
                     V.WRONG_TYPE)
    responses = []
    for j, c in enumerate(completions):
        f = f"completions[{j}]"
        if not isinstance(c, dict):
            raise V.fail(f, f"expected a completion object, got {V.type_name(c)}", V.WRONG_TYPE)
        text = V.text(V.require(c, "response", "the response text", field=f"{f}.response"), f"{f}.response")
        score = V.score(c.get("overall_score"), f"{f}.overall_score", lo=UF_SCORE_RANGE[0],
                        hi=UF_SCORE_RANGE[1], required=True)
        ann = c.get("annotations")
        aspects = None
        if ann is not None:
            if not isinstance(ann, dict):
                raise V.fail(f"{f}.annotations", f"expected an object of aspects, got {V.type_name(ann)}",
                             V.WRONG_TYPE)
            aspects = {}
            for name, a in ann.items():
                af = f"{f}.annotations.{name}"
                if isinstance(a, list) and len(a) == 1 and isinstance(a[0], dict):
                    a = a[0]  # a few UltraFeedback dumps wrap each aspect in a one-element list
                if not isinstance(a, dict) or "Rating" not in a:
                    raise V.fail(af, "expected an object with a 'Rating' ('1'..'5' or 'N/A')",
                                 V.MISSING if isinstance(a, dict) else V.WRONG_TYPE)
                aspects[name] = _uf_rating(a["Rating"], f"{af}.Rating")
        fg = c.get("fine-grained_score")
        if isinstance(fg, str) and fg.strip().upper() == "N/A":
            fg = None
        fg = V.score(fg, f"{f}.fine-grained_score", lo=UF_RATING_RANGE[0], hi=UF_RATING_RANGE[1])
        if fg is None and aspects:
            rated = [v for v in aspects.values() if v is not None]
            fg = sum(rated) / len(rated) if rated else None
        model = c.get("model")
        if model is not None:
            model = V.text(model, f"{f}.model")
        responses.append({"text": text, "score": score, "fine_grained": fg, "aspects": aspects,
                          "model": model})
    prompt = [{"role": "user", "content": instruction}]
    pid, src_row, source = _provenance(row, index, prompt)
    return {R.PROMPT: prompt, R.RESPONSES: responses, R.PROMPT_ID: pid, R.SOURCE_ROW: src_row,
            R.SOURCE: source}


# ---------------------------------------------------------------------------- shared prompt extraction

def split_shared_messages(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list]:
    """(prompt, chosen tail, rejected tail): the leading messages both share, ending before the
    answer (a shared trailing assistant turn stays with the responses)."""
    n = 0
    while n < len(chosen) and n < len(rejected) and chosen[n] == rejected[n]:
        n += 1
    n = min(n, len(chosen) - 1, len(rejected) - 1)
    while n > 0 and chosen[n - 1]["role"] == "assistant":
        n -= 1
    return chosen[:n], chosen[n:], rejected[n:]


def split_shared_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen tail, rejected tail) for implicit-prompt strings: the shared prefix, cut back
    to the last whitespace so no word is split (the whitespace starts the responses)."""
    n = 0
    m = min(len(chosen), len(rejected))
    while n < m and chosen[n] == rejected[n]:
        n += 1
    cut = n
    while cut > 0 and not chosen[cut - 1].isspace():  # back out of a split word
        cut -= 1
    while cut > 0 and chosen[cut - 1].isspace():  # the separating whitespace starts the responses
        cut -= 1
    return chosen[:cut], chosen[cut:], rejected[cut:]


# ---------------------------------------------------------------------------- pairs formats

def _pair_extras(row: dict, out: dict) -> dict:
    for col, validate in ((R.SCORE_CHOSEN, V.score), (R.SCORE_REJECTED, V.score),
                          (R.FINE_GRAINED_CHOSEN, V.score), (R.FINE_GRAINED_REJECTED, V.score),
                          (R.ASPECTS_CHOSEN, V.aspects), (R.ASPECTS_REJECTED, V.aspects)):
        if col in row:
            out[col] = validate(row[col], col)
        elif col in (R.SCORE_CHOSEN, R.SCORE_REJECTED):
            out[col] = None
    return out


def _finish_pair(row: dict, index: int, prompt, chosen, rejected) -> dict:
    out = {R.PROMPT: prompt, R.CHOSEN: chosen, R.REJECTED: rejected}
    _pair_extras(row, out)
    pid, src_row, source = _provenance(row, index, prompt)
    pair_id = row.get(R.PAIR_ID)
    pair_id = V.text(pair_id, R.PAIR_ID) if pair_id is not None else make_pair_id(pid, src_row)
    out.update({R.PROMPT_ID: pid, R.PAIR_ID: pair_id, R.SOURCE_ROW: src_row, R.SOURCE: source})
    return out


def from_ultrafeedback_binarized(row: dict, index: int) -> dict:
    V.text(V.require(row, R.PROMPT, "the prompt text"), R.PROMPT)
    chosen = V.messages(V.require(row, R.CHOSEN, "a list of messages (user, then assistant)"), R.CHOSEN,
                        need_user=True)
    rejected = V.messages(V.require(row, R.REJECTED, "a list of messages (user, then assistant)"),
                          R.REJECTED, need_user=True)
    prompt, c_tail, r_tail = split_shared_messages(chosen, rejected)
    if not prompt:
        raise V.fail(R.CHOSEN, "shares no leading user turn with 'rejected'; expected both to start with "
                     "the same user message", V.BAD_MESSAGES)
    c_tail = V.messages(c_tail, R.CHOSEN, need_user=False, assistant_only=True)
    r_tail = V.messages(r_tail, R.REJECTED, need_user=False, assistant_only=True)
    out = _finish_pair(row, index, prompt, c_tail, r_tail)
    for col in (R.SCORE_CHOSEN, R.SCORE_REJECTED):
        out[col] = V.score(row.get(col), col, lo=UF_SCORE_RANGE[0], hi=UF_SCORE_RANGE[1])
    return out


def from_trl(row: dict, index: int) -> dict:
    chosen = V.require(row, R.CHOSEN, "the chosen response (a string or a list of messages)")
    rejected = V.require(row, R.REJECTED, "the rejected response (a string or a list of messages)")
    prompt = row.get(R.PROMPT)
    if prompt is None:  # implicit prompt: the shared prefix
        if isinstance(chosen, str):
            chosen, rejected = V.text(chosen, R.CHOSEN), V.text(rejected, R.REJECTED)
            prompt, chosen, rejected = split_shared_text(chosen, rejected)
            if not prompt.strip():
                raise V.fail(R.PROMPT, "missing, and 'chosen' and 'rejected' share no prefix; expected a "
                             "'prompt' column or a shared prompt prefix", V.MISSING)
        else:
            chosen = V.messages(chosen, R.CHOSEN, need_user=True)
            rejected = V.messages(rejected, R.REJECTED, need_user=True)
            prompt, chosen, rejected = split_shared_messages(chosen, rejected)
            if not prompt:
                raise V.fail(R.PROMPT, "missing, and 'chosen' and 'rejected' share no leading messages; "
                             "expected a 'prompt' column or a shared user turn", V.MISSING)
            V.prompt_messages(prompt, R.PROMPT)
    if isinstance(prompt, str):
        prompt = V.text(prompt, R.PROMPT)
        for col, val in ((R.CHOSEN, chosen), (R.REJECTED, rejected)):
            if not isinstance(val, str):
                raise V.fail(col, f"expected a string like 'prompt' (standard format), got {V.type_name(val)}",
                             V.WRONG_TYPE)
        chosen, rejected = V.text(chosen, R.CHOSEN), V.text(rejected, R.REJECTED)
    elif isinstance(prompt, list):
        prompt = V.prompt_messages(prompt, R.PROMPT)
        for col, val in ((R.CHOSEN, chosen), (R.REJECTED, rejected)):
            if not isinstance(val, list):
                raise V.fail(col, "expected a list of messages like 'prompt' (conversational format), got "
                             f"{V.type_name(val)}", V.WRONG_TYPE)
        chosen = V.messages(chosen, R.CHOSEN, need_user=False, assistant_only=True)
        rejected = V.messages(rejected, R.REJECTED, need_user=False, assistant_only=True)
    else:
        raise V.fail(R.PROMPT, f"expected a string or a list of messages, got {V.type_name(prompt)}",
                     V.WRONG_TYPE)
    return _finish_pair(row, index, prompt, chosen, rejected)


# ---------------------------------------------------------------------------- MULTI

RESPONSE_KEYS = ("text", "score", "fine_grained", "aspects", "model")


def from_multi(row: dict, index: int) -> dict:
    prompt = V.require(row, R.PROMPT, "the prompt (a string or a list of messages)")
    if isinstance(prompt, list):
        prompt = V.prompt_messages(prompt, R.PROMPT)
    else:
        prompt = V.text(prompt, R.PROMPT)
    resps = V.require(row, R.RESPONSES, "a list of {text, score, ...} responses")
    if not isinstance(resps, list):
        raise V.fail(R.RESPONSES, f"expected a list of responses, got {V.type_name(resps)}", V.WRONG_TYPE)
    responses = []
    for j, r in enumerate(resps):
        f = f"{R.RESPONSES}[{j}]"
        if not isinstance(r, dict):
            raise V.fail(f, f"expected a {{text, score, ...}} object, got {V.type_name(r)}", V.WRONG_TYPE)
        model = r.get("model")
        responses.append({
            "text": V.text(V.require(r, "text", "the response text", field=f"{f}.text"), f"{f}.text"),
            "score": V.score(r.get("score"), f"{f}.score"),
            "fine_grained": V.score(r.get("fine_grained"), f"{f}.fine_grained"),
            "aspects": V.aspects(r.get("aspects"), f"{f}.aspects"),
            "model": V.text(model, f"{f}.model") if model is not None else None,
            # other per-response fields (a judge's rationale, a goal score) travel along
            **{k: v for k, v in r.items() if k not in RESPONSE_KEYS},
        })
    pid, src_row, source = _provenance(row, index, prompt)
    return {R.PROMPT: prompt, R.RESPONSES: responses, R.PROMPT_ID: pid, R.SOURCE_ROW: src_row,
            R.SOURCE: source}


ADAPTERS = {
    "ultrafeedback": (from_ultrafeedback, {"instruction", "completions", "models", "source",
                                           "correct_answers", "incorrect_answers", R.PROMPT_ID, R.SOURCE_ROW}),
    "ultrafeedback-binarized": (from_ultrafeedback_binarized, {R.PROMPT, R.PROMPT_ID, R.CHOSEN, R.REJECTED,
                                                               "messages", R.SCORE_CHOSEN, R.SCORE_REJECTED,
                                                               R.SOURCE, R.SOURCE_ROW, R.PAIR_ID}),
    "trl": (from_trl, {R.PROMPT, R.CHOSEN, R.REJECTED, R.SCORE_CHOSEN, R.SCORE_REJECTED, R.ASPECTS_CHOSEN,
                       R.ASPECTS_REJECTED, R.FINE_GRAINED_CHOSEN, R.FINE_GRAINED_REJECTED, R.PROMPT_ID,
                       R.PAIR_ID, R.SOURCE_ROW, R.SOURCE}),
    "multi": (from_multi, {R.PROMPT, R.RESPONSES, R.PROMPT_ID, R.SOURCE_ROW, R.SOURCE}),
}

# Extra columns of these formats travel through unchanged (a later stage's columns, e.g. goal scores).
PASSTHROUGH = {"trl", "multi"}


def detect(rows: list[dict], label: str) -> str:
    """The format of a file from the columns of its first rows."""
    if not rows:
        raise DataError("has no readable rows; cannot tell its format (give the format to read an empty file: --format on the command line, format= in Python)",
                        file=label)
    cols = set()
    for r in rows:
        cols.update(r)
    if {"instruction", "completions"} <= cols:
        return "ultrafeedback"
    if R.RESPONSES in cols:
        return "multi"
    if {R.CHOSEN, R.REJECTED} <= cols:
        if R.PROMPT in cols:
            for r in rows:
                if isinstance(r.get(R.PROMPT), str) and isinstance(r.get(R.CHOSEN), list):
                    return "ultrafeedback-binarized"
                if r.get(R.PROMPT) is not None and r.get(R.CHOSEN) is not None:
                    break
        return "trl"
    shown = ", ".join(sorted(cols)) or "none"
    raise DataError(f"cannot tell the format from the columns ({shown}); expected UltraFeedback raw "
                    "(instruction, completions), ultrafeedback_binarized or TRL (chosen, rejected[, prompt]), "
                    "or multi-response (prompt, responses); or give the format: --format on the command line, "
                    "format= in Python", file=label)
