"""StageReport: what a stage kept, changed and dropped, by reason.

Every stage that drops or skips rows counts them here; the CLI prints the summary and
writes it beside the output as `<output>.report.json` so nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
