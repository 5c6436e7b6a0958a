"""Reward-augmented relabeling and goal conditioning (docs/methods.md section 1).

    from prefkit.relabel import relabel, condition, load_conditioning
    ra = relabel(pairs, placement="auto", tokenizer=tok)      # D^w then D^l, twice the pairs
    rows, spec = sft_rows(judged)     # every judged response, conditioned on its own score (SFT)
    prompt = condition("Sort 3 1 2", goal=10, spec=load_conditioning(model_dir))
"""

from prefkit.relabel.augment import RelabelOptions, relabel, relabel_file, relabel_with_spec
from prefkit.relabel.conditioning import (
    CONDITIONING_FILE,
    DEFAULT_TEMPLATE,
    ConditioningSpec,
    accepts_system_role,
    find_conditioning,
    format_goal,
    load_conditioning,
    make_spec,
)
from prefkit.relabel.inference import condition
from prefkit.relabel.serving import export_chat_template
from prefkit.relabel.sft_rows import sft_rows, sft_rows_file

__all__ = [
    "CONDITIONING_FILE", "DEFAULT_TEMPLATE", "ConditioningSpec", "RelabelOptions", "accepts_system_role", "condition",
    "export_chat_template",
    "find_conditioning", "format_goal", "load_conditioning", "make_spec", "relabel", "relabel_file",
    "relabel_with_spec", "sft_rows", "sft_rows_file",
]
