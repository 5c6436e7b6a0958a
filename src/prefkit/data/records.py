"""Column conventions shared by every stage.

Two canonical shapes travel between stages as `datasets.Dataset` tables:

PAIRS (TRL preference format plus prefkit's own columns)
  prompt          str | list[{role, content}]   (conversational: the turns before the answer)
  chosen          str | list[{role, content}]   (conversational: the assistant turn(s))
  rejected        str | list[{role, content}]
  score_chosen    float | None     overall quality score of chosen (UltraFeedback: 1-10)
  score_rejected  float | None
  aspects_chosen / aspects_rejected   dict[aspect -> float | None] | absent   (1-5 ratings)
  fine_grained_chosen / fine_grained_rejected   float | None | absent   (mean aspect rating)
  prompt_id       str    stable id of the prompt
  pair_id         str    stable id of the pair (unique within a dataset)
  source_row      int    row index in the file the pair came from
  source          str | None   where the prompt came from (e.g. 'evol_instruct')

MULTI (prompt-centric multi-response: what judges and synthesis produce)
  prompt          str | list[{role, content}]
  responses       list[{text, score, fine_grained, aspects, model}]
  prompt_id, source_row, source   as above
"""

from __future__ import annotations

PROMPT = "prompt"
CHOSEN = "chosen"
REJECTED = "rejected"
SCORE_CHOSEN = "score_chosen"
SCORE_REJECTED = "score_rejected"
ASPECTS_CHOSEN = "aspects_chosen"
ASPECTS_REJECTED = "aspects_rejected"
FINE_GRAINED_CHOSEN = "fine_grained_chosen"
FINE_GRAINED_REJECTED = "fine_grained_rejected"
PROMPT_ID = "prompt_id"
PAIR_ID = "pair_id"
SOURCE_ROW = "source_row"
SOURCE = "source"
RESPONSES = "responses"

PAIR_COLUMNS = (PROMPT, CHOSEN, REJECTED)
ROLES = ("system", "user", "assistant", "tool")

# UltraFeedback's four fine-grained aspects, in the dataset's own spelling.
ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def is_conversational(value) -> bool:
    """True for a list of {role, content} messages (TRL's conversational format)."""
    return isinstance(value, list) and (len(value) == 0 or isinstance(value[0], dict))


def kind_of(column_names) -> str:
    """'pairs', 'multi' or 'unknown' for a canonical dataset's columns."""
    cols = set(column_names)
    if {CHOSEN, REJECTED} <= cols:
        return "pairs"
    if RESPONSES in cols:
        return "multi"
    return "unknown"
