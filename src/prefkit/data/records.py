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

LOG-PROBS (per sequence: the sum of response-token log-probs, and the response tokens scored)
  logps_chosen / logps_rejected           under the model being scored (prefkit.logprobs.score_logps)
  ref_logps_chosen / ref_logps_rejected   under its reference (score_logps with reference=; the
                                          trainer's precomputed reference log-probs)
  len_chosen / len_rejected               response tokens scored
  `prefkit select` writes the policy's and the reference's log-probs beside its margins under
  longer names, so that they are not mistaken for a training input:
  policy_logps_chosen / policy_logps_rejected, reference_logps_chosen / reference_logps_rejected
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

LOGPS_CHOSEN = "logps_chosen"
LOGPS_REJECTED = "logps_rejected"
REF_LOGPS_CHOSEN = "ref_logps_chosen"
REF_LOGPS_REJECTED = "ref_logps_rejected"
LEN_CHOSEN = "len_chosen"
LEN_REJECTED = "len_rejected"
POLICY_LOGPS_CHOSEN = "policy_logps_chosen"
POLICY_LOGPS_REJECTED = "policy_logps_rejected"
REFERENCE_LOGPS_CHOSEN = "reference_logps_chosen"
REFERENCE_LOGPS_REJECTED = "reference_logps_rejected"

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
