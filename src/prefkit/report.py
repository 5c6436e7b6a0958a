"""StageReport: what a stage kept, changed and dropped, by reason.

Every stage that drops or skips rows counts them here; the CLI prints the summary and
writes it beside the output as `<output>.report.json` so nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefkit.errors import EmptyResultError


@dataclass
class StageReport:
    stage: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, n: int = 1, example: str | None = None) -> None:
        """Count `n` rows dropped or skipped for `reason` (keeps up to 5 examples per reason)."""
        if n <= 0:
            return
        self.dropped[reason] += n
        if example is not None:
            ex = self.examples.setdefault(reason, [])
            if len(ex) < 5:
                ex.append(example)

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def merge(self, other: "StageReport") -> None:
        self.dropped.update(other.dropped)
        for k, v in other.examples.items():
            self.examples.setdefault(k, []).extend(v[: 5 - len(self.examples.get(k, []))])
        self.notes.update(other.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": dict(self.dropped),
            "examples": self.examples,
            "notes": self.notes,
        }

    def summary(self) -> str:
        lines = [f"{self.stage}: {self.rows_in} rows in, {self.rows_out} rows out"]
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            lines.append(f"  dropped/skipped {n:>8}  {reason}")
        for k, v in self.notes.items():
            if isinstance(v, (int, float, str, bool)):
                lines.append(f"  {k}: {v}")
        return "\n".join(lines)

    def write_beside(self, output: str | Path) -> Path:
        """Write `<output>.report.json` (for a directory output: `<dir>/prefkit_report.json`)."""
        out = Path(output)
        path = out / "prefkit_report.json" if out.is_dir() else out.with_name(out.name + ".report.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        return path


def progress_enabled(progress: bool = True) -> bool:
    """Whether to show a progress bar: `progress`, unless TQDM_DISABLE is set (the tqdm
    convention; `prefkit --quiet` sets it). Pass `disable=not progress_enabled(progress)` to tqdm:
    an explicit `disable=` would otherwise override TQDM_DISABLE."""
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").strip().lower() in ("", "0", "false", "no")


def quiet() -> bool:
    """Whether `prefkit --quiet` is in effect (it sets PREFKIT_QUIET=1 while the command runs)."""
    return os.environ.get("PREFKIT_QUIET", "").strip().lower() not in ("", "0", "false", "no")


def all_requests_failed(report: StageReport) -> tuple[int, dict] | None:
    """(requests, failure reasons, first failure's detail per reason) when a run of the stage (report.notes['run'] or
    notes['<name> run'], the RunStats that synthesis, scoring and evolve write) asked for
    requests and every one of them failed; else None."""
    for key, run in report.notes.items():
        if not (key == "run" or key.endswith(" run")) or not isinstance(run, dict) or not run.get("requested"):
            continue
        reasons = run.get("failure_reasons") or {}
        if sum(reasons.values()) >= run["requested"]:
            return run["requested"], dict(reasons), dict(run.get("failure_examples") or {})
    return None


def check_result(report: StageReport, *, allow_empty: bool = False, rows_in: int | None = None,
                 output=None) -> None:
    """Refuse a result that holds nothing usable: raise `EmptyResultError` (the CLI exits 1) when
    a synthesis or scoring run had every request fail, or when 0 rows come out of a non-empty
    input (`rows_in`, default `report.rows_in`). `allow_empty=True` (`--allow-empty`) accepts such
    partial results."""

    if allow_empty:
        return
    rows_in = report.rows_in if rows_in is None else rows_in
    where = f"; nothing written to {output}" if output is not None else ""
    optout = " (--allow-empty / allow_empty=True writes the partial result)"
    failed = all_requests_failed(report)
    if failed is not None:
        n, reasons, examples = failed
        ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
        top = ", ".join(f"{r} x{k}" for r, k in ranked[:3])
        first = examples.get(ranked[0][0]) if ranked else None
        said = f"; the server said: {first}" if first else ""
        raise EmptyResultError(f"every request failed ({n} of {n}: {top}{said}){where}; fix the backend and re-run "
                               f"with --retry-failed{optout}")
    if rows_in > 0 and report.rows_out == 0:
        why = ", ".join(f"{r}: {k}" for r, k in sorted(report.dropped.items(), key=lambda kv: -kv[1])[:3])
        raise EmptyResultError(f"0 rows out of {rows_in} in" + (f" (dropped: {why})" if why else "")
                               + f"{where}{optout}")
