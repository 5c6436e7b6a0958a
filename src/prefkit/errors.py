"""User-facing errors. The CLI prints these as one line, never a traceback."""

from __future__ import annotations


class PrefkitError(Exception):
    """An error whose message is meant for the user as-is."""


class DataError(PrefkitError):
    """Bad input data: names the place a user opens and the field.

    The place is the 1-based `line` for line-based files (JSON lines, CSV), or else the 0-based
    `row` index, said as "row index" for files and tables stored by row (Parquet, Arrow, saved
    datasets) and as "row" for an in-memory dataset. `row` always holds the 0-based index.
    """

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None, reason: str = "invalid", line: int | None = None,
                 row_word: str = "row"):
        self.file, self.row, self.field, self.reason = file, row, field, reason
        self.line, self.row_word = line, row_word
        self.detail = message
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        elif row is not None:
            where.append(f"{row_word} {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(PrefkitError):
    """A bad option or configuration value."""
