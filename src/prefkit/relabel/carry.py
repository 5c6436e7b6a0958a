"""The conditioning spec travels with reward-augmented data through every stage.

`prefkit relabel` writes the spec beside its output (`OUTPUT.conditioning.json`, or
`prefkit_conditioning.json` in a dataset directory). A later stage that reads such data and
writes rows (select, score, data binarize/convert, ...) calls `carry_conditioning(input, output)`
so the spec lands beside its output too, and `prefkit train` finds it there: relabel -> select ->
train gives a model with `prefkit_conditioning.json`, as relabel -> train does.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefkit.relabel.conditioning import find_conditioning


def carry_conditioning(source, output) -> Path | None:
    """Write the spec found beside `source` (a path; in-memory data carry none) beside `output`;
    returns where it went, or None when `source` has no spec."""
    if not isinstance(source, (str, os.PathLike)) or not os.path.exists(source):
        return None
    spec = find_conditioning(source)
    if spec is None:
        return None
    return spec.write_beside(output)
