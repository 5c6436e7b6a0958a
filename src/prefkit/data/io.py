"""`read` and `write`: any supported input to a canonical PAIRS or MULTI `datasets.Dataset`, and
back to a file or a saved dataset directory."""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from prefkit.data import records as R
from prefkit.data import validate as V
from prefkit.data.adapters import ADAPTERS, FORMATS, PASSTHROUGH, detect
from prefkit.data.sources import open_source
from prefkit.errors import ConfigError, DataError
from prefkit.files import disk_guard
from prefkit.report import StageReport, progress_enabled

log = logging.getLogger("prefkit.data")

_DETECT_ROWS = 100


def _located(err: DataError, source, row: int) -> DataError:
    """`err` with the file and the row's place in it (line or row index, per the source)."""
    if err.file is not None and (err.line is not None or err.row is not None):
        return err
    where = source.locate(row if err.row is None else err.row)
    return DataError(err.detail, file=err.file or source.label, field=err.field, reason=err.reason, **where)


def _kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _Consistency:
    """Checks that need earlier rows: one prompt format per dataset, unique pair ids, and one type
    per extra column (Arrow needs each column to hold one type)."""

    def __init__(self):
        self.prompt_form: str | None = None
        self.pair_ids: dict[str, int] = {}
        self.extra_kinds: dict[str, str] = {}

    def check(self, rec: dict, extras: dict, row: int) -> None:
        form = "messages" if isinstance(rec[R.PROMPT], list) else "text"
        if self.prompt_form is not None and form != self.prompt_form:
            earlier = "message lists" if self.prompt_form == "messages" else "strings"
            now = "a message list" if form == "messages" else "a string"
            raise V.fail(R.PROMPT, f"is {now} but earlier rows use {earlier}; expected one prompt format "
                         "per dataset", V.WRONG_TYPE)
        pid = rec.get(R.PAIR_ID)
        if pid is not None and pid in self.pair_ids:
            raise V.fail(R.PAIR_ID, f"{pid!r} repeats row {self.pair_ids[pid]}; expected unique pair ids",
                         V.DUPLICATE)
        for k, v in extras.items():
            kind, seen = _kind(v), self.extra_kinds.get(k)
            if kind is not None and seen is not None and kind != seen:
                raise V.fail(k, f"is a {kind} but earlier rows hold a {seen}; expected one type per column",
                             V.WRONG_TYPE)
        # commit only once every check passed
        self.prompt_form = form
        if pid is not None:
            self.pair_ids[pid] = row
        for k, v in extras.items():
            if v is not None:
                self.extra_kinds.setdefault(k, _kind(v))


def read(path, *, split: str | None = None, subset: str | None = None, revision: str | None = None,
         format: str = "auto", on_invalid: str = "error", report: StageReport | None = None):
    """Read a preference dataset into canonical columns (`prefkit.data.records`).

    path: a .jsonl/.json/.parquet/.csv file, a directory saved with `save_to_disk`, a local
      directory of data files or a Hugging Face hub id (both via `datasets.load_dataset` with
      `split`, `subset` (config name) and `revision`), or an in-memory `datasets.Dataset`.
    format: "auto" (from the columns) or one of "ultrafeedback", "ultrafeedback-binarized", "trl",
      "multi".
    on_invalid: "error" raises `DataError` naming file, line or row, and field at the first invalid
      row; "drop" drops invalid rows and counts them by reason in `report` (logged as a warning
      when no report is given). The old spelling "skip" still means "drop".

    Returns a `datasets.Dataset`: PAIRS for pairwise formats, MULTI for multi-response ones; every
    row keeps prompt_id, source_row (and pair_id for PAIRS) so later stages can join back.
    """
    on_invalid = V.on_invalid_mode(on_invalid)
    if format not in ("auto",) + FORMATS:
        raise ConfigError(f"unknown format {format!r}; expected auto or one of {', '.join(FORMATS)}")
    own_report = report is None
    rep = report if report is not None else StageReport("read")
    source = open_source(path, split=split, subset=subset, revision=revision)
    label = source.label
    rows = source.rows()
    head = list(itertools.islice(rows, _DETECT_ROWS))
    if format == "auto":
        parsed = [r for _, r in head if isinstance(r, dict)]
        if not parsed and head and on_invalid == "error":
            raise _located(head[0][1], source, head[0][0])  # the first row is unreadable: say so
        format = detect(parsed, label)
    adapter, known = ADAPTERS[format]
    passthrough = format in PASSTHROUGH
    cons = _Consistency()
    out: list[dict] = []
    extra_cols: dict[str, None] = {}
    n_in = 0
    for i, raw in _progress(itertools.chain(head, rows), label):
        n_in += 1
        try:
            if isinstance(raw, DataError):
                raise raw
            rec = adapter(raw, i)
            extras = {k: v for k, v in raw.items() if k not in known and k not in rec} if passthrough else {}
            cons.check(rec, extras, i)
            if R.CHOSEN in rec and rec[R.CHOSEN] == rec[R.REJECTED]:
                # Not malformed, but no preference either: the loss is constant on such a pair.
                # Dropped in every on_invalid mode, and counted.
                rep.drop(V.IDENTICAL, 1, example=str(DataError("chosen equals rejected", file=label,
                                                               **source.locate(i))))
                continue
        except DataError as err:
            err = _located(err, source, i)
            if on_invalid == "error":
                raise err from None
            rep.drop(err.reason, 1, example=str(err))
            continue
        if extras:
            rec.update(extras)
            for k in extras:
                extra_cols.setdefault(k, None)
        out.append(rec)
    rep.rows_in += n_in
    rep.rows_out += len(out)
    rep.notes.setdefault("format", format)
    if own_report and rep.n_dropped:
        log.warning("%s: skipped %d invalid rows: %s", label, rep.n_dropped, dict(rep.dropped))
    kind = "multi" if format in ("ultrafeedback", "multi") else "pairs"
    return build_dataset(out, kind, list(extra_cols), label=label)


def _progress(it, label):
    # disable=None: only on a terminal; TQDM_DISABLE (and --quiet) turn it off
    return tqdm(it, desc=f"reading {Path(label).name}", unit=" rows", disable=None if progress_enabled() else True,
                mininterval=1.0,
                leave=False)


# ---------------------------------------------------------------------------- Arrow tables

def _types():
    import pyarrow as pa  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    msg = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    return pa, msg


def _aspect_struct(dicts) -> "object":
    import pyarrow as pa  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    keys: dict[str, None] = {}
    for d in dicts:
        if d:
            for k in d:
                keys.setdefault(k, None)
    if not keys:
        return pa.null()
    return pa.struct([(k, pa.float64()) for k in keys])


def build_dataset(rows: list[dict], kind: str, extra_cols=(), *, label: str = "<dataset>"):
    """A `datasets.Dataset` from canonical rows with explicit Arrow types for the canonical columns
    (so an all-null score column is still float64 and message lists keep their struct type)."""
    import datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    pa, msg = _types()
    text_form = not rows or isinstance(rows[0][R.PROMPT], str)
    tp = pa.string() if text_form else msg
    cols: dict[str, tuple[list, object]] = {}

    def col(name, typ):
        cols[name] = ([r.get(name) for r in rows], typ)

    col(R.PROMPT, tp)
    if kind == "pairs":
        col(R.CHOSEN, tp)
        col(R.REJECTED, tp)
        col(R.SCORE_CHOSEN, pa.float64())
        col(R.SCORE_REJECTED, pa.float64())
        for a in (R.ASPECTS_CHOSEN, R.ASPECTS_REJECTED):
            if any(a in r for r in rows):
                col(a, _aspect_struct(r.get(a) for r in rows))
        for f in (R.FINE_GRAINED_CHOSEN, R.FINE_GRAINED_REJECTED):
            if any(f in r for r in rows):
                col(f, pa.float64())
    else:
        asp = _aspect_struct(resp["aspects"] for r in rows for resp in r[R.RESPONSES])
        fields = [("text", pa.string()), ("score", pa.float64()), ("fine_grained", pa.float64()),
                  ("aspects", asp), ("model", pa.string())]
        extra: dict[str, list] = {}
        for r in rows:
            for resp in r[R.RESPONSES]:
                for k in resp:
                    if k not in ("text", "score", "fine_grained", "aspects", "model"):
                        extra.setdefault(k, [])
        for k, vals in extra.items():
            vals.extend(resp.get(k) for r in rows for resp in r[R.RESPONSES])
            try:
                fields.append((k, pa.array(vals).type))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise DataError(f"holds values of different types across responses ({str(exc).splitlines()[0]}); "
                                "expected one type per field", file=label, field=f"{R.RESPONSES}[].{k}") from None
        resp_t = pa.list_(pa.struct(fields))
        col(R.RESPONSES, resp_t)
    col(R.PROMPT_ID, pa.string())
    if kind == "pairs":
        col(R.PAIR_ID, pa.string())
    col(R.SOURCE_ROW, pa.int64())
    col(R.SOURCE, pa.string())
    for name in rows[0] if rows else ():
        if name not in cols and name not in extra_cols:
            col(name, None)  # other columns a stage added (e.g. model_chosen)
    for name in extra_cols:
        if name not in cols:
            col(name, None)
    arrays, names = [], []
    for name, (values, typ) in cols.items():
        try:
            arrays.append(pa.array(values, type=typ) if typ is not None else pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            msg_ = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"cannot be stored as one Arrow column ({msg_}); expected one type per column",
                            file=label, field=name) from None
        names.append(name)
    return datasets.Dataset(pa.Table.from_arrays(arrays, names=names))


# ---------------------------------------------------------------------------- writers

def _arrow_batches(dataset, batch_size: int = 1000):
    ds = dataset.with_format("arrow")
    for i in range(0, len(dataset), batch_size):
        yield ds[i:i + batch_size]


def _nested(dataset) -> list[str]:
    import pyarrow as pa  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    table = dataset.with_format("arrow")[:0]
    return [f.name for f in table.schema if pa.types.is_nested(f.type)]


def write(dataset, path) -> Path:
    """Write `dataset` to `path`; the extension picks the format: .jsonl (one JSON object per
    line), .json (one JSON array), .parquet, .csv (flat columns only), or no extension for a
    directory written with `save_to_disk` (a `DatasetDict` is allowed there). Files are written
    to a temporary name and renamed, so a crash never leaves a half-written output; a full disk
    is one DiskFullError line naming the directory (the temporary file is removed and an earlier
    `path` stays as it was)."""

    p = Path(os.path.expanduser(str(path)))
    with disk_guard(p.name, p.parent, kept=f"{p} is as it was before"):
        return _write(dataset, path)


def _write(dataset, path) -> Path:
    import datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    p = Path(os.path.expanduser(str(path)))
    suffix = p.suffix.lower()
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix in ("", ".hf", ".arrow") or p.is_dir():
        if p.exists() and not (p.is_dir() and (not any(p.iterdir()) or _saved(p))):
            raise ConfigError(f"{p}: exists and is not a saved dataset directory; refusing to overwrite it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", dir=p.parent))
        try:
            dataset.save_to_disk(str(tmp))
            if p.exists():
                shutil.rmtree(p)
            os.replace(tmp, p)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return p
    if isinstance(dataset, datasets.DatasetDict):
        raise ConfigError(f"{p}: a DatasetDict (splits {', '.join(dataset)}) can only be written to a "
                          "directory; pick one split or give a path without extension")
    if suffix not in (".jsonl", ".json", ".parquet", ".csv"):
        raise ConfigError(f"{p}: unknown output extension {suffix!r}; expected .jsonl, .json, .parquet, "
                          ".csv, or a directory (no extension)")
    if suffix == ".csv":
        nested = _nested(dataset)
        if nested:
            raise ConfigError(f"{p}: CSV holds flat columns only, but {', '.join(nested)} hold lists or "
                              "objects (message lists, aspect ratings, responses); write .jsonl or .parquet")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix in (".jsonl", ".json"):
            with open(tmp, "w", encoding="utf-8") as f:
                first = True
                if suffix == ".json":
                    f.write("[")
                for batch in _arrow_batches(dataset):
                    for row in batch.to_pylist():
                        line = json.dumps(row, ensure_ascii=False)
                        if suffix == ".jsonl":
                            f.write(line + "\n")
                        else:
                            f.write(("\n" if first else ",\n") + line)
                            first = False
                if suffix == ".json":
                    f.write("\n]\n")
        elif suffix == ".parquet":
            import pyarrow.parquet as pq  # noqa: PLC0415  only for a .parquet output

            table = dataset.with_format("arrow")[:]
            pq.write_table(table, tmp)
        else:
            import pyarrow.csv as pcsv  # noqa: PLC0415  only for a .csv output

            pcsv.write_csv(dataset.with_format("arrow")[:], tmp)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def _saved(p: Path) -> bool:
    return any((p / n).exists() for n in ("dataset_info.json", "state.json", "dataset_dict.json"))
