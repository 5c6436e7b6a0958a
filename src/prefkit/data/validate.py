"""Field checks shared by the adapters. Each raises `DataError` naming the field and saying what
was expected; the adapter adds the file and row. `reason` is the short key under which a skipped
row is counted (``--on-invalid drop``)."""

from __future__ import annotations

import math

from prefkit.data.records import ROLES
from prefkit.errors import ConfigError, DataError

# The one spelling of `on_invalid` / `--on-invalid` in every stage: stop at the first invalid row
# with an error naming file, line or row, and field; or drop invalid rows and count them by
# reason in the StageReport. 'skip', the data, relabel, select and synth stages' old word for
# 'drop', is still accepted.
ON_INVALID = ("error", "drop")
ON_INVALID_OLD = {"skip": "drop"}


def on_invalid_mode(value: str) -> str:
    """`value` in its one spelling ('error' or 'drop'); the old 'skip' reads as 'drop'."""
    value = ON_INVALID_OLD.get(value, value)
    if value not in ON_INVALID:
        raise ConfigError(f"on_invalid must be 'error' or 'drop', not {value!r}")
    return value

# Reasons under which invalid rows are counted when skipped.
MISSING = "missing field"
WRONG_TYPE = "wrong type"
EMPTY = "empty text"
BAD_SCORE = "invalid score"
BAD_MESSAGES = "invalid message list"
UNDECODABLE = "undecodable text"
BAD_JSON = "invalid JSON line"
DUPLICATE = "duplicate pair_id"
IDENTICAL = "chosen equals rejected"
PROMPT_ENDS_WITH_ANSWER = "prompt ends with an assistant turn"


def type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def fail(field: str, message: str, reason: str) -> DataError:
    return DataError(message, field=field, reason=reason)


def require(row: dict, key: str, what: str, *, field: str | None = None):
    """The value of a required key (present and not null); `field` names it in the message."""
    if key not in row or row[key] is None:
        raise fail(field or key, f"missing; expected {what}", MISSING)
    return row[key]


def text(value, field: str, *, allow_empty: bool = False) -> str:
    """A decodable string (non-empty unless allowed)."""
    if not isinstance(value, str):
        raise fail(field, f"expected a string, got {type_name(value)}", WRONG_TYPE)
    if not allow_empty and (not value or value.isspace()):
        raise fail(field, "is empty; expected non-empty text", EMPTY)
    try:
        if not value.isascii():  # only non-ASCII text can hold a lone surrogate
            value.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(field, "contains undecodable text (a lone surrogate); expected valid Unicode",
                   UNDECODABLE) from None
    return value


def messages(value, field: str, *, need_user: bool, assistant_only: bool = False) -> list[dict]:
    """A list of {role, content} messages with known roles, returned as clean dicts."""
    if not isinstance(value, list) or not value:
        raise fail(field, f"expected a non-empty list of {{role, content}} messages, got {type_name(value)}",
                   BAD_MESSAGES if isinstance(value, list) else WRONG_TYPE)
    out = []
    for i, msg in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(msg, dict):
            raise fail(where, f"expected a {{role, content}} message, got {type_name(msg)}", BAD_MESSAGES)
        role = msg.get("role")
        if role not in ROLES:
            raise fail(f"{where}.role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}",
                       BAD_MESSAGES)
        if assistant_only and role != "assistant":
            raise fail(f"{where}.role", f"role {role!r} in a response; expected 'assistant' turns only",
                       BAD_MESSAGES)
        content = msg.get("content")
        if content is None:
            raise fail(f"{where}.content", "missing; expected the message text", MISSING)
        out.append({"role": role, "content": text(content, f"{where}.content", allow_empty=role != "user")})
    if need_user and not any(m["role"] == "user" for m in out):
        raise fail(field, "has no user turn; expected at least one message with role 'user'", BAD_MESSAGES)
    if assistant_only and not any(m["content"].strip() for m in out):
        raise fail(field, "is empty; expected non-empty assistant text", EMPTY)
    return out


def prompt_messages(value, field: str) -> list[dict]:
    """A prompt conversation: valid messages with a user turn, ending before the answer (a prompt
    whose last turn is the assistant's would be trained and generated as if the model spoke twice)."""
    out = messages(value, field, need_user=True)
    if out[-1]["role"] == "assistant":
        raise fail(f"{field}[{len(out) - 1}].role", "ends the prompt with an assistant turn; expected the turns "
                   "before the answer (the answer belongs in chosen/rejected)", PROMPT_ENDS_WITH_ANSWER)
    return out


def score(value, field: str, *, lo: float | None = None, hi: float | None = None,
          required: bool = False) -> float | None:
    """A finite number (optionally within [lo, hi]), or None when allowed."""
    if value is None:
        if required:
            raise fail(field, "missing; expected a number", MISSING)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(field, f"expected a number, got {type_name(value)}", WRONG_TYPE)
    value = float(value)
    if not math.isfinite(value):
        raise fail(field, f"is {value}; expected a finite number", BAD_SCORE)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise fail(field, f"is {value:g}; expected a number from {lo:g} to {hi:g}", BAD_SCORE)
    return value


def aspects(value, field: str, *, lo: float | None = None, hi: float | None = None) -> dict | None:
    """{aspect: rating or None}; None means 'N/A' (not rated)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise fail(field, f"expected an object of aspect ratings, got {type_name(value)}", WRONG_TYPE)
    return {str(k): score(v, f"{field}.{k}", lo=lo, hi=hi) for k, v in value.items()}
