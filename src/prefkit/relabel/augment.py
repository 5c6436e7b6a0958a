"""Reward-augmented relabeling (Zhang et al., arXiv 2410.08067; docs/methods.md section 1).

Each pair (x, y_w, y_l, r_w, r_l) becomes two training pairs:
  D^w: prompt S(r_w) + x, chosen y_w, rejected y_l
  D^l: prompt S(r_l) + x, chosen y_l, rejected y_w    (measured against goal r_l, y_l is the match)
The output is D^w followed by D^l. In D^l every chosen/rejected column pair swaps with the
responses (score_chosen, aspects_chosen, fine_grained_chosen, ...), so a row's `*_chosen`
columns always describe its chosen response and `goal_score == score_chosen` in both halves.

Everything is columnar: goals are rendered once per distinct goal value and the prompt column
is rewritten with Arrow kernels and numpy index arithmetic (see `columns.py`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefkit import data as pdata
from prefkit.data import binarize, read
from prefkit.data import records as R
from prefkit.data.binarize import truthfulqa_drops, truthfulqa_prompt_set
from prefkit.data.records import (
    ASPECTS_CHOSEN,
    ASPECTS_REJECTED,
    CHOSEN,
    FINE_GRAINED_CHOSEN,
    FINE_GRAINED_REJECTED,
    PAIR_ID,
    PROMPT,
    REJECTED,
    RESPONSES,
    SCORE_CHOSEN,
    SCORE_REJECTED,
)
from prefkit.errors import ConfigError, DataError, EmptyResultError
from prefkit.models import load_causal_lm, load_tokenizer
from prefkit.relabel.columns import condition_column, prompt_format
from prefkit.relabel.conditioning import OVERALL, ConditioningSpec, make_spec, parse_attributes
from prefkit.report import StageReport, check_result

GOAL_SCORE = "goal_score"
GOAL_SCORES = "goal_scores"
SOURCE_PAIR_ID = "source_pair_id"
RELABEL_HALF = "relabel_half"


@dataclass(frozen=True)
class RelabelOptions:
    """Every option of relabeling, shared by `relabel`, `relabel_with_spec`, `relabel_file` and
    the `prefkit relabel` command (one flag per field).

    placement: 'system' (a system message before the first user turn; for string prompts S(g)
        then a blank line before the prompt text), 'user' (S(g), a blank line, then the first user
        turn's text) or 'auto' (system if `tokenizer`'s chat template accepts a system role).
        A prompt that already opens with a system message gets S(g) + blank line prefixed to that
        message's content in system placement, and is left as is in user placement.
    ties: 'drop' (default; counted) or 'keep' pairs whose goals are equal (after rounding).
    fine_grained_filter: keep only pairs with fine_grained_chosen >= fine_grained_rejected (the
        authors' pre-filter); needs those columns.
    half: the paper's size-matched ablation: each pair contributes exactly one of its two rows, its
        D^w or its D^l row, by a fair coin seeded with `seed`; output size == pairs kept.
    round_scores: round goals to this many decimals before tie detection and rendering.
    template: template text or a template file (see `prefkit.relabel.conditioning`).
    attributes: goal attributes (list or 'a,b,c'): 'overall' reads score_chosen/score_rejected;
        another name reads that field of aspects_chosen/aspects_rejected or the columns
        `<name>_chosen`/`<name>_rejected`. Default ['overall'] (the single `Overall score` line).
    goal_from: 'scores' (judge scores in the columns above) or 'implicit': the implicit reward
        r = beta * (log pi(y|x) - log pi_ref(y|x)) of `model` against `reference` (reference-free
        beta * log pi(y|x) when reference is None), computed with `prefkit.logprobs.score_logps`
        (needs `tokenizer`; `batch_size` pairs per forward), then mapped linearly onto `scale`
        (the lowest reward in the data -> scale min, the highest -> scale max) and rounded to
        `round_scores` decimals (default 1). The rewards are kept as implicit_reward_chosen/_rejected.
    scale: (min, max) of the goal scale stated in S(g); max is the goal used at inference.
    drop_truthfulqa: drop pairs (or, for multi-response input, prompts) whose `source` is
        TruthfulQA, as `prefkit.data.binarize(drop_truthfulqa=True)` does (counted).
    truthfulqa_prompts: a list of TruthfulQA questions (a file, one per line or JSON lines, or an
        iterable of strings; see `prefkit.data.binarize.truthfulqa_prompt_set`): also drop prompts
        of any other source whose text is one of them. Implies drop_truthfulqa.
    """

    placement: str = "system"
    tokenizer: Any = None
    ties: str = "drop"
    fine_grained_filter: bool = False
    half: bool = False
    seed: int = 42
    round_scores: int | None = None
    template: Any = None
    attributes: Any = None
    goal_from: str = "scores"
    scale: tuple[float, float] = (1, 10)
    model: Any = None
    reference: Any = None
    beta: float = 0.1
    batch_size: int = 8
    drop_truthfulqa: bool = False
    truthfulqa_prompts: Any = None

    def __post_init__(self):
        if self.ties not in ("drop", "keep"):
            raise ConfigError(f"ties must be 'drop' or 'keep', got {self.ties!r}")
        if self.goal_from not in ("scores", "implicit"):
            raise ConfigError(f"goal_from must be 'scores' or 'implicit', got {self.goal_from!r}")

    @classmethod
    def of(cls, options: RelabelOptions | None = None, **overrides) -> RelabelOptions:
        """`options` (default: all defaults) with `overrides` (field=value) applied."""
        return replace(options if options is not None else cls(), **overrides)


def relabel(dataset, options: RelabelOptions | None = None, *, report: StageReport | None = None, **overrides):
    """Relabel a PAIRS dataset into reward-augmented pairs (D^w then D^l); returns a `datasets.Dataset`.

    options: a `RelabelOptions` (every field is documented there); its fields may also be given
    as keywords (`relabel(pairs, placement="auto", tokenizer=tok)`), which override `options`.

    Output columns: the input's columns (prompt conditioned; chosen/rejected pairs swapped in D^l;
    pair_id made unique as '<pair_id>:w' / '<pair_id>:l'), plus `goal_score` (when 'overall' is an
    attribute), `goal_scores` (a struct, for several attributes), `source_pair_id` and
    `relabel_half` ('w' or 'l'). Multi-response (MULTI) input is binarized first with
    `prefkit.data.binarize(..., seed=seed, ties=ties, fine_grained_filter=fine_grained_filter,
    drop_truthfulqa=..., truthfulqa_prompts=...)`.

    A dataset that has not gone through `prefkit.data.read` (for example the raw
    ultrafeedback_binarized schema: a string `prompt` and full conversations in chosen/rejected, or
    raw UltraFeedback rows) is first canonicalised with `prefkit.data.read` (its drops counted in
    `report`), so that the goal text lands in the prompt the trainer reads.
    """
    out, _ = relabel_with_spec(dataset, options, report=report, **overrides)
    return out


def relabel_with_spec(dataset, options: RelabelOptions | None = None, *, report: StageReport | None = None,
                      **overrides):
    """`relabel`, also returning the resolved `ConditioningSpec` (to save beside the output)."""
    o = RelabelOptions.of(options, **overrides)
    import datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light
    from datasets.table import InMemoryTable  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    report = report if report is not None else StageReport("relabel")
    if not isinstance(dataset, datasets.Dataset):
        raise ConfigError(f"relabel expects a datasets.Dataset, got {type(dataset).__name__}")

    rows_in = len(dataset)
    why = _not_canonical(dataset)
    if why is not None:

        sub = StageReport("read")
        dataset = read(dataset, report=sub)
        report.merge(sub)
        report.notes["canonicalised"] = f"{why}: read with prefkit.data.read (format {sub.notes.get('format')})"
    cols = set(dataset.column_names)
    report.rows_in = rows_in
    listed = None
    if o.truthfulqa_prompts is not None:

        listed = truthfulqa_prompt_set(o.truthfulqa_prompts)
    if RESPONSES in cols and not {CHOSEN, REJECTED} <= cols:
        dataset = _binarize(dataset, seed=o.seed, ties=o.ties, fine_grained_filter=o.fine_grained_filter,
                            drop_truthfulqa=o.drop_truthfulqa, truthfulqa_prompts=listed, report=report)
        o = replace(o, fine_grained_filter=False, drop_truthfulqa=False, truthfulqa_prompts=None)  # applied
        listed = None
        cols = set(dataset.column_names)
    missing = [c for c in (PROMPT, CHOSEN, REJECTED) if c not in cols]
    if missing:
        raise DataError(f"relabel needs columns prompt, chosen, rejected; missing {missing} "
                        f"(columns: {sorted(cols)})", field=missing[0])
    if RELABEL_HALF in cols:
        raise DataError("input is already relabeled (it has a 'relabel_half' column)", field=RELABEL_HALF)
    if o.goal_from == "implicit":
        if parse_attributes(o.attributes) != [OVERALL]:
            raise ConfigError("goal_from='implicit' gives one overall goal; attributes cannot be used with it")
        o = replace(o, round_scores=1 if o.round_scores is None else o.round_scores,
                    tokenizer=load_tokenizer(o.tokenizer))
        dataset = _add_implicit_rewards(dataset, model=o.model, reference=o.reference, tokenizer=o.tokenizer,
                                        beta=o.beta, batch_size=o.batch_size, report=report)

    table: pa.Table = dataset.with_format("arrow")[:]
    n = table.num_rows
    report.notes["pairs_in"] = n
    fmt = prompt_format(table.schema.field(PROMPT).type)
    spec = make_spec(placement=o.placement, tokenizer=o.tokenizer, template=o.template, attributes=o.attributes,
                     scale=o.scale, round_scores=o.round_scores, prompt_format=fmt)
    _check_prompts(table[PROMPT], fmt)

    # Source ids (for examples in the report and the output's source_pair_id).
    if PAIR_ID in cols:
        src_ids = pc.cast(table[PAIR_ID], pa.string())
        if src_ids.null_count:
            src_ids = pc.coalesce(src_ids, pc.cast(pa.array(np.arange(n)), pa.string()))
    else:
        src_ids = pc.cast(pa.array(np.arange(n)), pa.string())

    # Goals per attribute for the chosen (r_w) and rejected (r_l) responses: (n, k) float arrays.
    goals_w = np.empty((n, len(spec.attributes)))
    goals_l = np.empty((n, len(spec.attributes)))
    if o.goal_from == "implicit":
        goals_w[:, 0], goals_l[:, 0] = _implicit_goals(table, spec)
    else:
        for j, attr in enumerate(spec.attributes):
            goals_w[:, j], goals_l[:, j] = _attribute_scores(table, attr)
    if spec.round_scores is not None:
        goals_w = np.round(goals_w, spec.round_scores)
        goals_l = np.round(goals_l, spec.round_scores)

    keep = np.ones(n, dtype=bool)

    def drop(mask: np.ndarray, reason: str) -> None:
        mask = mask & keep
        if mask.any():
            rows = np.flatnonzero(mask)
            report.drop(reason, int(len(rows)))
            examples = report.examples.setdefault(reason, [])
            for r in rows[: max(0, 5 - len(examples))]:
                examples.append(f"pair_id={src_ids[int(r)].as_py()}")
            keep[mask] = False

    if o.drop_truthfulqa or listed is not None:

        sources = table[R.SOURCE].to_pylist() if R.SOURCE in cols else None
        reasons = np.array(truthfulqa_drops(table[PROMPT].to_pylist() if listed else [None] * n, sources, listed),
                           dtype=object)
        for reason in sorted({r for r in reasons if r is not None}):
            drop(reasons == reason, reason)

    missing_goal = np.isnan(goals_w).any(axis=1) | np.isnan(goals_l).any(axis=1)
    if n and missing_goal.all():
        raise DataError(f"no pair has goal scores for attributes {spec.attributes} (all missing); "
                        "score the pairs first (`prefkit score`)",
                        field="score_chosen" if spec.attributes[0] == OVERALL else spec.attributes[0])
    drop(missing_goal, "missing score (" + ", ".join(spec.attributes) + ")")
    if o.fine_grained_filter:
        fg_w, fg_l = _fine_grained(table)
        drop(np.isnan(fg_w) | np.isnan(fg_l), "fine-grained rating missing (pre-filter)")
        with np.errstate(invalid="ignore"):
            drop(fg_w < fg_l, "fine-grained chosen < rejected (pre-filter)")
    tie = (goals_w == goals_l).all(axis=1)
    if o.ties == "drop":
        drop(tie, "tie: goal of chosen == goal of rejected")
    else:
        report.notes["ties_kept"] = int((tie & keep).sum())

    kept = np.flatnonzero(keep)
    if o.half:
        take_w = np.random.default_rng(o.seed).random(len(kept)) < 0.5
        w_idx, l_idx = kept[take_w], kept[~take_w]
    else:
        w_idx = l_idx = kept
    idx_np = np.concatenate([w_idx, l_idx])
    idx = pa.array(idx_np)

    # S(g) rendered once per distinct goal vector, then gathered per output row.
    goals = np.concatenate([goals_w[w_idx], goals_l[l_idx]])
    texts, n_goals = goal_texts(spec, goals)

    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    swap = _swap_partners(table.column_names)
    for name in table.column_names:
        if name == PROMPT:
            columns[name] = pa.chunked_array(
                [condition_column(part, texts.slice(start, len(part)), spec.placement)
                 for start, part in _take_blocks(table[PROMPT], idx_np)], type=table.schema.field(PROMPT).type)
        elif name == PAIR_ID:
            continue  # rebuilt below
        else:
            w_part = pa.chunked_array([c for _, c in _take_blocks(table[name], w_idx)], type=table[name].type)
            partner = table[swap.get(name, name)]
            l_part = pa.chunked_array([c for _, c in _take_blocks(partner, l_idx)], type=partner.type)
            if l_part.type != w_part.type:  # e.g. int scores for chosen, float for rejected
                try:
                    common = pa.unify_schemas([pa.schema([("c", w_part.type)]), pa.schema([("c", l_part.type)])],
                                              promote_options="permissive").field("c").type
                    w_part, l_part = w_part.cast(common), l_part.cast(common)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise DataError(f"cannot swap '{name}' with '{swap[name]}': types {w_part.type} and "
                                    f"{l_part.type} differ", field=name) from exc
            columns[name] = pa.chunked_array(list(w_part.chunks) + list(l_part.chunks), type=w_part.type)
    src = src_ids.take(idx)
    half_col = pa.concat_arrays([pa.repeat(pa.scalar("w"), len(w_idx)), pa.repeat(pa.scalar("l"), len(l_idx))])
    columns[PAIR_ID] = pc.binary_join_element_wise(src, pc.binary_join_element_wise(":", half_col, ""), "")
    if OVERALL in spec.attributes:
        columns[GOAL_SCORE] = pa.array(goals[:, spec.attributes.index(OVERALL)], type=pa.float64())
    if spec.multi_attribute:
        columns[GOAL_SCORES] = pa.StructArray.from_arrays(
            [pa.array(goals[:, j], type=pa.float64()) for j in range(len(spec.attributes))], names=spec.attributes)
    columns[SOURCE_PAIR_ID] = src
    columns[RELABEL_HALF] = half_col

    order = [c for c in table.column_names] + [c for c in columns if c not in table.column_names]
    out_table = pa.table({c: columns[c] for c in order})
    # A fingerprint from the input's and the options' (hashing a large output table costs seconds).
    options = (spec.to_dict(), o.ties, bool(o.fine_grained_filter), bool(o.half), o.seed, o.goal_from, o.beta)
    fingerprint = hashlib.sha256(f"relabel|{dataset._fingerprint}|{options!r}".encode()).hexdigest()[:16]
    out = datasets.Dataset(InMemoryTable(out_table), fingerprint=fingerprint)

    report.rows_out = out.num_rows
    report.notes.update({
        "pairs_relabeled": int(len(kept)),
        "rows_D_w": int(len(w_idx)),
        "rows_D_l": int(len(l_idx)),
        "placement": spec.placement,
        "prompt_format": fmt,
        "attributes": ",".join(spec.attributes),
        "half": bool(o.half),
        "distinct_goals": n_goals,
    })
    return out, spec


# -- helpers -------------------------------------------------------------------------------------

IMPLICIT_CHOSEN = "implicit_reward_chosen"
IMPLICIT_REJECTED = "implicit_reward_rejected"
LOGPS = {"chosen": (R.LOGPS_CHOSEN, R.REF_LOGPS_CHOSEN), "rejected": (R.LOGPS_REJECTED, R.REF_LOGPS_REJECTED)}


def _add_implicit_rewards(dataset, *, model, reference, tokenizer, beta, batch_size, report):
    """Add implicit_reward_chosen/_rejected = beta * (logps - ref_logps) from `score_logps`."""
    if model is None or tokenizer is None:
        raise ConfigError("goal_from='implicit' needs model= (the policy whose implicit rewards give the goals) "
                          "and tokenizer=")

    model = load_causal_lm(model, need_tokenizer=False)[0]
    reference = load_causal_lm(reference, need_tokenizer=False)[0]
    from prefkit.logprobs import score_logps  # noqa: PLC0415  torch: only goal_from="implicit" scores a model

    sub = StageReport("score_logps")
    scored = score_logps(model, tokenizer, dataset, batch_size=batch_size, reference=reference, report=sub)
    report.merge(sub)
    t = scored.with_format("arrow")[:]

    def reward(side: str) -> np.ndarray:
        policy, ref = LOGPS[side]
        lp = _to_float(t[policy], policy)
        if reference is not None:
            lp = lp - _to_float(t[ref], ref)
        return float(beta) * lp

    for name, side in ((IMPLICIT_CHOSEN, "chosen"), (IMPLICIT_REJECTED, "rejected")):
        if name in scored.column_names:
            scored = scored.remove_columns(name)
        scored = scored.add_column(name, pa.array(reward(side), from_pandas=True).to_pylist())
    return scored


def _implicit_goals(table: pa.Table, spec: ConditioningSpec) -> tuple[np.ndarray, np.ndarray]:
    """Implicit rewards mapped linearly onto [scale_min, scale_max] over the whole dataset."""
    rw = _to_float(table[IMPLICIT_CHOSEN], IMPLICIT_CHOSEN)
    rl = _to_float(table[IMPLICIT_REJECTED], IMPLICIT_REJECTED)
    both = np.concatenate([rw, rl])
    finite = both[np.isfinite(both)]
    if len(finite) == 0:
        return rw, rl
    lo, hi = float(finite.min()), float(finite.max())
    span = (hi - lo) or 1.0
    scale = spec.scale_max - spec.scale_min
    return spec.scale_min + (rw - lo) / span * scale, spec.scale_min + (rl - lo) / span * scale


TAKE_BLOCK = 131_072  # rows per gathered block: keeps every string block far below Arrow's 2 GiB offsets


def _take_blocks(column: pa.ChunkedArray, indices: np.ndarray):
    """(start, rows of `column` at indices[start:start+TAKE_BLOCK]) blocks, each one contiguous array."""
    for start in range(0, len(indices), TAKE_BLOCK):
        part = column.take(pa.array(indices[start:start + TAKE_BLOCK]))
        yield start, part.combine_chunks() if isinstance(part, pa.ChunkedArray) else part
    if len(indices) == 0:
        yield 0, column.take(pa.array([], type=pa.int64())).combine_chunks()


def _not_canonical(dataset) -> str | None:
    """Why `dataset` is not in prefkit's canonical PAIRS or MULTI columns (so relabeling its
    `prompt` column would not change what the trainer reads), or None when it is."""
    cols = set(dataset.column_names)
    if R.RESPONSES in cols and R.PROMPT in cols and not {R.CHOSEN, R.REJECTED} & cols:
        resp = dataset.data.schema.field(R.RESPONSES).type
        ok = (pa.types.is_list(resp) or pa.types.is_large_list(resp)) and pa.types.is_struct(resp.value_type) \
            and resp.value_type.get_field_index("text") >= 0
        return None if ok else "its 'responses' are not prefkit MULTI responses"
    if {"instruction", "completions"} <= cols and R.PROMPT not in cols:
        return "it holds raw UltraFeedback rows (instruction, completions)"
    if not {R.PROMPT, R.CHOSEN, R.REJECTED} <= cols:
        return "its prompt is implicit (the shared start of chosen and rejected)" \
            if {R.CHOSEN, R.REJECTED} <= cols else None  # else: relabel names the missing columns
    schema = dataset.data.schema
    is_list = {c: pa.types.is_list(schema.field(c).type) or pa.types.is_large_list(schema.field(c).type)
               for c in (R.PROMPT, R.CHOSEN, R.REJECTED)}
    if not is_list[R.PROMPT] and (is_list[R.CHOSEN] or is_list[R.REJECTED]):
        return "its prompt is a string but its responses are message lists (the ultrafeedback_binarized " \
               "schema, whose conversations repeat the prompt)"
    if is_list[R.CHOSEN] and is_list[R.REJECTED]:
        table = dataset.with_format("arrow")[:]
        for c in (R.CHOSEN, R.REJECTED):
            flat = pc.list_flatten(table[c])
            if pa.types.is_struct(flat.type) and flat.type.get_field_index("role") >= 0:
                roles = pc.struct_field(flat, "role")
                if pc.any(pc.not_equal(roles, "assistant")).as_py():
                    return f"its '{c}' holds whole conversations, not only the assistant's answer"
    return None


def _binarize(dataset, *, seed, ties, fine_grained_filter, report, drop_truthfulqa=False, truthfulqa_prompts=None):

    sub = StageReport("binarize")
    pairs = binarize(dataset, seed=seed, ties=ties, fine_grained_filter=fine_grained_filter,
                     drop_truthfulqa=drop_truthfulqa, truthfulqa_prompts=truthfulqa_prompts, report=sub)
    report.merge(sub)  # its drops and notes, under relabel's rows_in (the multi-response rows)
    return pairs


def _check_prompts(prompts: pa.ChunkedArray, fmt: str) -> None:
    if prompts.null_count:
        row = int(np.flatnonzero(np.asarray(prompts.is_null()))[0])
        raise DataError("prompt is missing", row=row, field="prompt")
    if fmt == "conversational":
        empty = np.asarray(pc.equal(pc.list_value_length(prompts), 0))
        if empty.any():
            raise DataError("prompt has no messages", row=int(np.flatnonzero(empty)[0]), field="prompt")


def _to_float(col, name: str) -> np.ndarray:
    try:
        col = pc.cast(col, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"score column must be numeric, got {col.type}", field=name) from exc
    arr = col.to_numpy() if isinstance(col, pa.ChunkedArray) else col.to_numpy(zero_copy_only=False)
    return np.asarray(arr, dtype=np.float64)


def _attribute_scores(table: pa.Table, attr: str) -> tuple[np.ndarray, np.ndarray]:
    """(chosen, rejected) scores for one goal attribute as float arrays (NaN for missing)."""

    names = table.column_names
    if attr == OVERALL:
        if SCORE_CHOSEN not in names or SCORE_REJECTED not in names:
            raise DataError("relabeling needs goal scores: columns score_chosen and score_rejected "
                            f"(columns: {names}); score the pairs first (`prefkit score`)", field=SCORE_CHOSEN)
        return _to_float(table[SCORE_CHOSEN], SCORE_CHOSEN), _to_float(table[SCORE_REJECTED], SCORE_REJECTED)
    if ASPECTS_CHOSEN in names and ASPECTS_REJECTED in names:
        typ = table.schema.field(ASPECTS_CHOSEN).type
        if pa.types.is_struct(typ) and typ.get_field_index(attr) >= 0:
            return (_to_float(pc.struct_field(table[ASPECTS_CHOSEN], attr), ASPECTS_CHOSEN),
                    _to_float(pc.struct_field(table[ASPECTS_REJECTED], attr), ASPECTS_REJECTED))
        if pa.types.is_map(typ):
            w = pc.map_lookup(table[ASPECTS_CHOSEN], pa.scalar(attr, typ.key_type), "first")
            if w.null_count < len(w):
                r = pc.map_lookup(table[ASPECTS_REJECTED], pa.scalar(attr, typ.key_type), "first")
                return _to_float(w, ASPECTS_CHOSEN), _to_float(r, ASPECTS_REJECTED)
    cw, cr = f"{attr}_chosen", f"{attr}_rejected"
    if cw in names and cr in names:
        return _to_float(table[cw], cw), _to_float(table[cr], cr)
    available = []
    if ASPECTS_CHOSEN in names and pa.types.is_struct(table.schema.field(ASPECTS_CHOSEN).type):
        available += [f.name for f in table.schema.field(ASPECTS_CHOSEN).type]
    available += [c[: -len("_chosen")] for c in names if c.endswith("_chosen") and
                  c[: -len("_chosen")] + "_rejected" in names and c != ASPECTS_CHOSEN]
    raise ConfigError(f"attribute {attr!r}: no field in aspects_chosen/aspects_rejected and no columns "
                      f"{cw}/{cr}; available: {sorted(set(available)) + [OVERALL]}")


def _fine_grained(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:

    if FINE_GRAINED_CHOSEN not in table.column_names or FINE_GRAINED_REJECTED not in table.column_names:
        raise ConfigError("fine_grained_filter needs columns fine_grained_chosen and fine_grained_rejected "
                          "(the mean aspect rating of each response); this dataset has none")
    return (_to_float(table[FINE_GRAINED_CHOSEN], FINE_GRAINED_CHOSEN),
            _to_float(table[FINE_GRAINED_REJECTED], FINE_GRAINED_REJECTED))


def _swap_partners(names: Sequence[str]) -> dict[str, str]:
    """Column pairs that describe the chosen/rejected response and swap in D^l."""
    present = set(names)
    swap = {}
    for c in names:
        for a, b in (("chosen", "rejected"), ("rejected", "chosen")):
            if c == a:
                partner = b
            elif c.endswith("_" + a):
                partner = c[: -len(a)] + b
            elif c.startswith(a + "_"):
                partner = b + c[len(a):]
            else:
                continue
            if partner in present:
                swap[c] = partner
    return swap


def _distinct_rows(goals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct goal vectors, index of each row's vector): hash-based per column, O(n)."""
    codes = np.zeros(len(goals), dtype=np.int64)
    radix = 1
    for j in range(goals.shape[1]):
        enc = pa.array(goals[:, j]).dictionary_encode()
        size = len(enc.dictionary)
        if radix * max(size, 1) >= 2 ** 62:  # too many combinations for one int64 key
            uniq, inverse = np.unique(goals, axis=0, return_inverse=True)
            return uniq, np.asarray(inverse).reshape(-1)
        codes += np.asarray(enc.indices, dtype=np.int64) * radix
        radix *= max(size, 1)
    enc = pa.array(codes).dictionary_encode()
    inverse = np.asarray(enc.indices, dtype=np.int64)
    first = np.full(len(enc.dictionary), len(goals), dtype=np.int64)
    np.minimum.at(first, inverse, np.arange(len(goals), dtype=np.int64))
    return goals[first], inverse


def goal_texts(spec: ConditioningSpec, goals: np.ndarray) -> tuple[pa.Array, int]:
    """(S(g) for every row of `goals` (n, k), number of distinct goals); rendered once per distinct goal."""
    if len(goals) == 0:
        return pa.array([], type=pa.string()), 0
    uniq, inverse = _distinct_rows(goals)
    rendered = pa.array([spec._render_vector(u) for u in uniq], type=pa.string())
    return rendered.take(pa.array(inverse)), len(uniq)


def relabel_file(input: str | os.PathLike, output: str | os.PathLike, options: RelabelOptions | None = None, *,
                 split=None, subset=None, revision=None, input_format: str = "auto", on_invalid: str = "error",
                 allow_empty: bool = False, **overrides) -> StageReport:
    """Read INPUT, relabel it, write OUTPUT, and beside it the conditioning spec and the report.

    options / overrides: as for `relabel` (a `RelabelOptions`, and/or its fields as keywords).
    allow_empty: write OUTPUT even when no row is left from a non-empty INPUT; by default that
    raises `EmptyResultError` (the report is still written beside OUTPUT).
    Returns the StageReport (also written beside OUTPUT)."""

    options = RelabelOptions.of(options, **overrides)  # a bad option fails before anything is read
    return conditioned_file(relabel_with_spec, "relabel", input, output, options, split=split, subset=subset,
                            revision=revision, input_format=input_format, on_invalid=on_invalid,
                            allow_empty=allow_empty)


def conditioned_file(transform, stage: str, input, output, options: RelabelOptions, *, split=None, subset=None,
                     revision=None, input_format: str = "auto", on_invalid: str = "error",
                     allow_empty: bool = False) -> StageReport:
    """Read INPUT, `transform(ds, options, report=...) -> (rows, spec)`, write OUTPUT, and beside it
    the conditioning spec and the report (written also when no row is left: `EmptyResultError`
    unless allow_empty). The file form of `relabel` and of `sft_rows`."""
    report = StageReport(stage)
    ds = pdata.read(str(input), split=split, subset=subset, revision=revision, format=input_format,
                    on_invalid=on_invalid, report=report)
    rows_read = report.rows_in
    out, spec = transform(ds, options, report=report)
    report.rows_in = rows_read  # the rows of INPUT (the transform counted those left after reading)
    try:
        check_result(report, allow_empty=allow_empty, output=output)
    except EmptyResultError:
        report.write_beside(output)
        raise
    pdata.write(out, str(output))
    report.notes["conditioning_spec"] = str(spec.write_beside(output))
    report.write_beside(output)
    return report
