"""User-facing errors. The CLI prints these as one line, never a traceback, and exits with
`exit_code(error)`: 2 for a usage error (`ConfigError`: a bad option or configuration value, or an
input path that does not exist), 1 for a run that failed at run time (bad data content, every
request failed, nothing usable written)."""

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
    """A bad option or configuration value: a usage error (exit 2)."""


class MissingInputError(DataError, ConfigError):
    """An input file named on the command line does not exist: a usage error (exit 2) that
    is also a `DataError` (it names the file)."""


class EmptyResultError(PrefkitError):
    """A run that produced nothing usable: a stage that would write 0 rows from a non-empty
    input, or a synthesis or scoring run in which every request failed (exit 1). The stage's
    `allow_empty=True` (`--allow-empty`) writes such partial results instead."""


EXIT_RUNTIME = 1
EXIT_USAGE = 2


def exit_code(error: BaseException) -> int:
    """The CLI's exit status for an error: 2 for a usage error, 1 for anything else."""
    return EXIT_USAGE if isinstance(error, ConfigError) else EXIT_RUNTIME
