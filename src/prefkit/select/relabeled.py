"""Selection on reward-augmented data: whole pairs, ranked on the original pair.

`prefkit.relabel` turns each scored pair into two rows: D^w (conditioned on the chosen score,
chosen and rejected as given) and D^l (conditioned on the rejected score, chosen and rejected
swapped), linked by `source_pair_id` and told apart by `relabel_half`. Ranking those rows one by
one would rank a D^l row on a negative explicit margin and keep the halves of a pair
independently; the method (docs/methods.md section 1) trains on both halves of each pair. So a
relabeled input is selected pair by pair: each original pair is represented by its D^w row
(or, in `--half` data that holds only its D^l row, by that row with chosen/rejected and their
scores swapped back), the representatives are ranked by the metric at the usual budget, and the
output holds every row of each kept pair with the pair's metric columns. docs/select.md argues
this choice over refusing.
"""

from __future__ import annotations

from prefkit.data import records as R

RELABEL_HALF = "relabel_half"        # the columns prefkit.relabel writes (prefkit.relabel.augment)
SOURCE_PAIR_ID = "source_pair_id"
_SWAPPED = ((R.CHOSEN, R.REJECTED), (R.SCORE_CHOSEN, R.SCORE_REJECTED), ("aspects_chosen", "aspects_rejected"))


def is_relabeled(dataset) -> bool:
    cols = getattr(dataset, "column_names", None) or ()
    return RELABEL_HALF in cols and SOURCE_PAIR_ID in cols


def representatives(dataset):
    """(representative rows as a Dataset, pair id of each input row): one row per original pair,
    oriented as the original pair (chosen = the better response)."""
    # (column access through the Dataset, not its Arrow table: a selected or shuffled Dataset
    # keeps an indices mapping over the table)
    halves = list(dataset[RELABEL_HALF])
    ids = [str(v) for v in dataset[SOURCE_PAIR_ID]]
    first: dict[str, int] = {}
    for i, (pid, half) in enumerate(zip(ids, halves)):
        j = first.get(pid)
        if j is None or (half == "w" and halves[j] != "w"):
            first[pid] = i
    idx = sorted(first.values())
    reps = dataset.select(idx)
    flip = [halves[i] != "w" for i in idx]
    if any(flip):
        cols = reps.column_names
        swaps = [(a, b) for a, b in _SWAPPED if a in cols and b in cols]

        def orient(row, k):
            if flip[k]:
                for a, b in swaps:
                    row[a], row[b] = row[b], row[a]
            return row

        reps = reps.map(orient, with_indices=True, desc="orienting D^l-only pairs")
    return reps, ids


def expand_to_halves(dataset, ids: list[str], kept_reps, added_columns: list[str]):
    """Every row of `dataset` whose pair is among `kept_reps`, in input order, with the pair's
    `added_columns` (metric columns, selection_score) copied from its representative."""
    kept_ids = [str(v) for v in kept_reps[SOURCE_PAIR_ID]]
    pos = {pid: k for k, pid in enumerate(kept_ids)}
    rows = [i for i, pid in enumerate(ids) if pid in pos]
    out = dataset.select(rows)
    take = [pos[ids[i]] for i in rows]
    for name in added_columns:
        if name in out.column_names:
            out = out.remove_columns(name)
        values = kept_reps[name]
        out = out.add_column(name, [values[k] for k in take])
    return out
