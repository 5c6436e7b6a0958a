"""Raw row sources: where the rows of a file, a saved `datasets` directory or a hub dataset come
from, before any adapter looks at them.

Each source yields ``(row_index, row)`` where ``row`` is a dict or, for a row that cannot even be
parsed (a bad JSON line), a `DataError` the reader counts or raises. Whole-file problems (a
truncated Parquet footer, a missing split) raise `DataError` at once with a one-line message.
`locate(row_index)` says where a row is in terms a user can open: the 1-based line of a JSON
lines or CSV file (blank lines and quoted newlines counted), the row index of anything else.

JSON lines are parsed here rather than by Arrow so that a bad line or a value whose type differs
from the rows before it is reported with its own row number instead of a schema-cast traceback.
"""

from __future__ import annotations

import csv
import json
import os
from array import array
from pathlib import Path
from typing import Iterator

from prefkit.data.validate import BAD_JSON, UNDECODABLE
from prefkit.errors import ConfigError, DataError, MissingInputError

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
_BATCH = 1000


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


class Source:
    """A place rows come from: `label` for messages, `rows()` to iterate them, `locate(row)` for
    the keyword arguments of a `DataError` that points at a row."""

    label: str
    row_word = "row index"

    def rows(self) -> Iterator[tuple[int, dict | DataError]]:  # pragma: no cover - interface
        raise NotImplementedError

    def locate(self, row: int) -> dict:
        return {"row": row, "row_word": self.row_word}


class JsonLinesSource(Source):
    def __init__(self, path: Path, label: str):
        self.path, self.label = path, label
        self._lines = array("q")     # 1-based line of each row (blank lines are not rows)

    def locate(self, row: int) -> dict:
        if row < len(self._lines):
            return {"row": row, "line": self._lines[row]}
        return super().locate(row)

    def rows(self):
        row = 0
        self._lines = array("q")
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                self._lines.append(lineno)
                where = {"file": self.label, "row": row, "line": lineno}
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield row, DataError(f"not valid UTF-8 (byte {exc.start}); expected UTF-8 text", **where,
                                         reason=UNDECODABLE)
                    row += 1
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    truncated = not raw.endswith(b"\n") or exc.pos >= len(line.rstrip())
                    hint = " (truncated?)" if truncated else ""
                    yield row, DataError(f"not valid JSON{hint}: {exc.msg} at column {exc.colno}", **where,
                                         reason=BAD_JSON)
                    row += 1
                    continue
                if not isinstance(value, dict):
                    yield row, DataError(f"is a JSON {type(value).__name__}; expected an object (one record "
                                         "per line)", **where, reason=BAD_JSON)
                else:
                    yield row, value
                row += 1


class JsonArraySource(Source):
    """A .json file holding one array of records (or JSON lines, which is handled by the caller)."""

    row_word = "element"

    def __init__(self, path: Path, label: str):
        self.path, self.label = path, label

    def rows(self):
        try:
            data = json.loads(Path(self.path).read_bytes().decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"is not valid UTF-8 (byte {exc.start}); expected UTF-8 text", file=self.label,
                            reason=UNDECODABLE) from None
        except json.JSONDecodeError as exc:
            raise DataError(f"is not valid JSON at line {exc.lineno} column {exc.colno} "
                            f"({exc.msg}; truncated?)", file=self.label, reason=BAD_JSON) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DataError("expected a JSON array of records (or one JSON object per line)", file=self.label)
        for i, value in enumerate(data):
            if isinstance(value, dict):
                yield i, value
            else:
                yield i, DataError(f"is a JSON {type(value).__name__}; expected an object",
                                   file=self.label, row=i, row_word="element", reason=BAD_JSON)


class ArrowSource(Source):
    """Rows of an Arrow table or a `datasets.Dataset`, read in batches."""

    def __init__(self, table, label: str, *, row_word: str = "row index"):
        self.table, self.label, self.row_word = table, label, row_word

    def rows(self):
        row = 0
        if hasattr(self.table, "to_batches"):  # pyarrow.Table
            batches = (b.to_pylist() for b in self.table.to_batches(max_chunksize=_BATCH))
        else:  # datasets.Dataset
            ds = self.table
            batches = (ds[i:i + _BATCH] for i in range(0, len(ds), _BATCH))
            batches = ([dict(zip(b, vals)) for vals in zip(*b.values())] for b in batches)
        for batch in batches:
            for value in batch:
                yield row, value
                row += 1


class CsvSource(ArrowSource):
    """A CSV file read by Arrow; rows are located by their 1-based starting line, found with the
    standard `csv` module (quoted fields may span lines, so line = row + 2 does not hold). The scan
    runs once, on the first error."""

    def __init__(self, table, label: str, path: Path):
        super().__init__(table, label)
        self.path = path
        self._starts: list[int] | None = None

    def locate(self, row: int) -> dict:
        if self._starts is None:
            self._starts = _csv_record_lines(self.path)
        if row < len(self._starts):
            return {"row": row, "line": self._starts[row]}
        return super().locate(row)


def _csv_record_lines(path: Path) -> list[int]:
    """The 1-based line on which each data record (after the header) starts; blank lines skipped."""

    starts: list[int] = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        before = 0
        for i, rec in enumerate(reader):
            if i > 0 and rec:
                starts.append(before + 1)
            before = reader.line_num
    return starts


def _read_parquet(path: Path, label: str):
    import pyarrow.parquet as pq  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for corrupt files
        raise DataError(f"is not a readable Parquet file ({_first_line(exc)}); truncated or corrupt?",
                        file=label) from None


def _read_csv(path: Path, label: str):
    import pyarrow.csv as pcsv  # noqa: PLC0415  heavy (pyarrow): lazy, so importing this module stays light

    try:
        return pcsv.read_csv(path)
    except Exception as exc:
        raise DataError(f"is not a readable CSV file ({_first_line(exc)})", file=label) from None


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).exists() for n in ("dataset_info.json", "state.json",
                                                                "dataset_dict.json"))


def _pick_split(dd, split: str | None, label: str):
    names = list(dd.keys())
    if split is None:
        if len(names) == 1:
            return dd[names[0]]
        raise DataError(f"has splits {', '.join(names)}; choose one with --split (split=...)", file=label)
    if split not in dd:
        raise DataError(f"has no split {split!r}; its splits are {', '.join(names)}", file=label)
    return dd[split]


def open_source(path, *, split=None, subset=None, revision=None) -> Source:
    """The right `Source` for a local file, a saved `datasets` directory, a local directory of data
    files, or a hub id (the last two through `datasets.load_dataset`)."""
    import datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light

    if isinstance(path, (datasets.Dataset, datasets.DatasetDict)):
        ds = _pick_split(path, split, "<dataset>") if isinstance(path, datasets.DatasetDict) else path
        return ArrowSource(ds, "<dataset>", row_word="row")
    label = str(path)
    p = Path(os.path.expanduser(label))
    if p.is_file():
        if split is not None or subset is not None or revision is not None:
            raise ConfigError(f"{label}: --split/--subset/--revision apply to hub ids and dataset "
                              "directories, not to a single file")
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            return JsonLinesSource(p, label)
        if suffix == ".json":
            with open(p, "rb") as f:
                head = f.read(4096).lstrip()
            return JsonArraySource(p, label) if head.startswith(b"[") or head.startswith(b'{"data"') \
                else JsonLinesSource(p, label)
        if suffix == ".parquet":
            return ArrowSource(_read_parquet(p, label), label)
        if suffix == ".csv":
            return CsvSource(_read_csv(p, label), label, p)
        raise DataError(f"unknown file type {suffix!r}; expected one of {', '.join(FILE_SUFFIXES)}",
                        file=label)
    if _is_saved_dataset(p):
        try:
            loaded = datasets.load_from_disk(str(p))
        except Exception as exc:
            raise DataError(f"is not a readable saved dataset ({_first_line(exc)})", file=label) from None
        if isinstance(loaded, datasets.DatasetDict):
            loaded = _pick_split(loaded, split, label)
        elif split is not None:
            raise ConfigError(f"{label}: is a single saved Dataset; it has no split {split!r}")
        return ArrowSource(loaded, label)
    if p.suffix.lower() in FILE_SUFFIXES and not p.exists():
        raise MissingInputError("no such file", file=label)
    # A hub id, or a local directory of data files: the same `load_dataset` path either way.
    try:
        loaded = datasets.load_dataset(str(p) if p.exists() else label, name=subset, split=split,
                                       revision=revision)
    except DataError:
        raise
    except Exception as exc:
        where = "as a directory of data files" if p.exists() else \
            "(not a local file or directory, and loading it from the Hugging Face hub failed)"
        raise DataError(f"could not load {where}: {_first_line(exc)}", file=label) from None
    if isinstance(loaded, datasets.DatasetDict):
        loaded = _pick_split(loaded, split, label)
    return ArrowSource(loaded, label)
