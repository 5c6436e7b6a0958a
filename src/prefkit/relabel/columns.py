"""Columnar insertion of S(g) into a prompt column (Arrow + numpy, no per-row Python).

String prompts:          S(g) + "\\n\\n" + prompt (both placements).
Conversational prompts:  system placement: a new system message first, or, when the prompt
                         already starts with a system message, S(g) + "\\n\\n" + its content
                         (S(g) still appears exactly once);
                         user placement: S(g) + "\\n\\n" + the first user turn's content.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from prefkit.errors import DataError

SEPARATOR = "\n\n"


def prompt_format(arrow_type: pa.DataType) -> str:
    """'string' or 'conversational' for a prompt column's Arrow type (DataError otherwise)."""
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)) and pa.types.is_struct(
            arrow_type.value_type):
        names = {f.name for f in arrow_type.value_type}
        if {"role", "content"} <= names:
            return "conversational"
    raise DataError(f"prompt must be a string or a list of {{role, content}} messages, got Arrow type {arrow_type}",
                    field="prompt")


def _as_array(col) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _normalized_list(arr: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(offsets starting at 0, the values they index) for a possibly sliced list array."""
    offs = np.asarray(arr.offsets, dtype=np.int64)
    values = arr.values
    if offs[0] != 0 or offs[-1] != len(values):
        values = values.slice(int(offs[0]), int(offs[-1] - offs[0]))
        offs = offs - offs[0]
    return offs, values


def _prefix_at(content: pa.Array, texts: pa.Array, positions: np.ndarray, rows: np.ndarray) -> pa.Array:
    """content with texts[rows[k]] + SEPARATOR prefixed at element positions[k]."""
    n = len(content)
    idx = np.zeros(n, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    idx[positions] = rows
    mask[positions] = False
    prefix = texts.take(pa.array(idx, mask=mask))
    joined = pc.binary_join_element_wise(prefix, content, SEPARATOR, null_handling="emit_null")
    return pc.if_else(pa.array(~mask), joined, content)


def _rebuild_struct(values: pa.StructArray, **replace: pa.Array) -> pa.StructArray:
    fields = list(values.type)
    arrays = [replace.get(f.name, values.field(i)) for i, f in enumerate(fields)]
    mask = values.is_null() if values.null_count else None
    return pa.StructArray.from_arrays(arrays, fields=fields, mask=mask)


def condition_column(prompts, texts: pa.Array, placement: str) -> pa.Array:
    """Insert texts[i] (S(g_i)) into prompts[i] for every row; returns an array of the prompt type."""
    prompts = _as_array(prompts)
    kind = prompt_format(prompts.type)
    if kind == "string":
        texts = texts.cast(prompts.type)
        return pc.binary_join_element_wise(texts, prompts, SEPARATOR)

    n = len(prompts)
    offs, values = _normalized_list(prompts)
    struct_type = values.type
    content_type = struct_type.field("content").type
    texts = texts.cast(content_type)
    role = values.field("role")
    content = values.field("content")
    lengths = np.diff(offs)

    if placement == "user":
        is_user = np.asarray(pc.fill_null(pc.equal(role, "user"), False))
        user_pos = np.flatnonzero(is_user)
        k = np.searchsorted(user_pos, offs[:-1])
        valid = k < len(user_pos)
        first = np.full(n, -1, dtype=np.int64)
        first[valid] = user_pos[k[valid]]
        bad = ~valid | (first >= offs[1:])
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError("user placement needs a user turn in the prompt, found none", row=row, field="prompt")
        new_content = _prefix_at(content, texts, first, np.arange(n))
        new_values = _rebuild_struct(values, content=new_content)
        cls = pa.LargeListArray if pa.types.is_large_list(prompts.type) else pa.ListArray
        return cls.from_arrays(pa.array(offs, type=pa.int64() if cls is pa.LargeListArray else pa.int32()),
                               new_values, type=prompts.type)

    if placement != "system":
        raise ValueError(f"placement must be resolved to 'system' or 'user', got {placement!r}")
    starts = offs[:-1]
    nonempty = lengths > 0
    first_role = np.zeros(n, dtype=bool)
    if nonempty.any():
        first_role[nonempty] = np.asarray(
            pc.fill_null(pc.equal(role.take(pa.array(starts[nonempty])), "system"), False))
    has_sys = first_role
    # Rows that already open with a system message: prefix its content (S(g) once).
    sys_rows = np.flatnonzero(has_sys)
    if len(sys_rows):
        content = _prefix_at(content, texts, starts[sys_rows], sys_rows)
        values = _rebuild_struct(values, content=content)
    # Other rows: insert a new system message before the first turn.
    ins_rows = np.flatnonzero(~has_sys)
    ins = (~has_sys).astype(np.int64)
    new_offs = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths + ins, out=new_offs[1:])
    order = np.empty(int(new_offs[-1]), dtype=np.int64)
    row_of_elem = np.repeat(np.arange(n, dtype=np.int64), lengths)
    shift = np.cumsum(ins)  # insertions at or before each row
    order[np.arange(len(values), dtype=np.int64) + shift[row_of_elem]] = np.arange(len(values), dtype=np.int64)
    order[new_offs[ins_rows]] = len(values) + np.arange(len(ins_rows), dtype=np.int64)
    new_arrays = []
    for f in struct_type:
        if f.name == "role":
            new_arrays.append(pa.repeat(pa.scalar("system", type=f.type), len(ins_rows)))
        elif f.name == "content":
            new_arrays.append(texts.take(pa.array(ins_rows)))
        else:
            new_arrays.append(pa.nulls(len(ins_rows), type=f.type))
    sys_msgs = pa.StructArray.from_arrays(new_arrays, fields=list(struct_type))
    merged = pa.concat_arrays([values, sys_msgs]).take(pa.array(order))
    large = pa.types.is_large_list(prompts.type)
    cls = pa.LargeListArray if large else pa.ListArray
    return cls.from_arrays(pa.array(new_offs, type=pa.int64() if large else pa.int32()), merged, type=prompts.type)
