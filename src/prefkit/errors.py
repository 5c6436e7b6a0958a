"""User-facing errors. The CLI prints these as one line, never a traceback."""

from __future__ import annotations


class PrefkitError(Exception):
    """An error whose message is meant for the user as-is."""


class DataError(PrefkitError):
    """Bad input data: names the file, the row (0-based, as stored) and the field."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 field: str | None = None, reason: str = "invalid"):
        self.file, self.row, self.field, self.reason = file, row, field, reason
        self.detail = message
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(PrefkitError):
    """A bad option or configuration value."""
