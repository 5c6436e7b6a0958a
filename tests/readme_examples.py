"""Reading README.md's examples, for tests/test_readme.py.

An example is a code block (indented by four spaces, or fenced with ``` ):
- a shell example: its first line starts with `$ `; every `$ ` line is a command (a line ending in
  `\\` continues on the next), the other lines are the output the command prints (stdout and
  stderr together);
- a Python example: a ```python fence; the output of a line `print(...)` is the comment on that line
  (`print(x)  # 3`) or the comment lines right below it (`# 6 ['prompt', ...]`).

Shown output is compared line by line with what the example prints: each shown line must appear, in
order (a README may leave lines out), with runs of spaces counted as one, `...` matching any text
within a line, durations and rates (`3.3s`, `17.9 req/s`) matching any number, and a cache's hit or miss
(`cache miss KEY` / `cache hit KEY`: a run on a machine that ran it before hits) matching either,
and a decimal number (`-0.0004305`, `6.1e-05`) matching a printed number within 1% of it or one unit
of its last shown digit, whichever is larger: training logs are seeded, but their last digits move
with the CPU's kernels (another order of float sums; docs/toy.md, "Another CPU"). Whole numbers
(counts, steps, hashes) must match exactly.

A marker, an HTML comment on the line before the block, says how to run it:
  <!-- readme-test: skip: REASON -->      not run (a long or real-model run, a server); REASON is required
  <!-- readme-test: setup: NAME[,NAME] -->  run after the setups of that name (tests/test_readme.py SETUPS)
Blocks that are neither shell nor Python examples (diagrams, the layout) are not examples.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field

MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|setup)\s*:\s*(.*?)\s*-->")


@dataclass
class Example:
    kind: str                 # "shell" or "python"
    line: int                 # 1-based line of the block's first line in README.md
    code: str                 # shell: the commands, one per entry joined by newlines; python: the source
    expected: list[str]       # shown output lines
    skip: str | None = None   # the reason, when marked skip
    setups: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        return f"L{self.line}:{first[:60]}"


def _blocks(lines: list[str]):
    """(first line number, kind hint, block lines, marker text or None) for each code block."""
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        marker = None
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and MARKER.search(lines[j]):
            marker = lines[j]
        if line.startswith("```"):
            lang = line[3:].strip().lower()
            k = i + 1
            while k < n and not lines[k].startswith("```"):
                k += 1
            yield i + 2, lang, lines[i + 1:k], marker
            i = k + 1
            continue
        if line.startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            k = i
            block = []
            while k < n and (lines[k].startswith("    ") or not lines[k].strip()):
                block.append(lines[k] if lines[k].strip() else "")
                k += 1
            while block and not block[-1]:
                block.pop()
            # a block inside a list item is indented further: drop the indentation its lines share
            yield i + 1, "indented", textwrap.dedent("\n".join(block)).splitlines(), marker
            i = k
            continue
        i += 1


def _shell(block: list[str]) -> tuple[str, list[str]]:
    commands, expected, k = [], [], 0
    while k < len(block):
        line = block[k]
        if line.startswith("$ "):
            cmd = line[2:]
            while cmd.endswith("\\") and k + 1 < len(block):
                k += 1
                cmd = cmd[:-1].rstrip() + " " + block[k].strip()
            commands.append(cmd)
        elif line.strip():
            expected.append(line)
        k += 1
    return "\n".join(commands), expected


_PRINT_COMMENT = re.compile(r"^(print\(.*\))\s+#\s?(.*)$")


def _python(block: list[str]) -> list[str]:
    expected = []
    last_was_print = False
    for line in block:
        stripped = line.strip()
        m = _PRINT_COMMENT.match(stripped)
        if m:
            expected.append(m.group(2))
            last_was_print = True
        elif stripped.startswith("print("):
            last_was_print = True
        elif stripped.startswith("#") and last_was_print:
            expected.append(stripped[1:].strip())
        else:
            last_was_print = False
    return expected


def examples(text: str) -> list[Example]:
    out = []
    lines = text.splitlines()
    for lineno, hint, block, marker in _blocks(lines):
        skip, setups = None, []
        if marker:
            kind_, value = MARKER.search(marker).groups()
            if kind_ == "skip":
                skip = value
            else:
                setups = [s.strip() for s in value.split(",") if s.strip()]
        if hint == "python":
            out.append(Example("python", lineno, "\n".join(block), _python(block), skip, setups))
        elif block and block[0].startswith("$ ") and hint in ("indented", "", "sh", "bash", "console", "shell"):
            code, expected = _shell(block)
            out.append(Example("shell", lineno, code, expected, skip, setups))
    return out


_TIMING = re.compile(r"\d+(?:\.\d+)?(?=\s*(?:s|ms|req/s|pair/s|it/s)\b)")


_CACHE = re.compile(r"\bcache (?:hit|miss)\b")


def _normalise(line: str) -> str:
    return " ".join(_CACHE.sub("cache <hit/miss>", _TIMING.sub("<N>", line)).split())


# A decimal number standing alone (not part of a word, a hash or a version like 1.2.3).
_DECIMAL = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?:[eE][-+]?\d+)?(?![\w.])")
# Where a printed number may stand: not inside another number or word (so `...` before it cannot
# take its first digits or its sign).
_NUMBER = r"(?<![\w.+-])([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)(?![\w.])"


def _close(shown: str, printed: str) -> bool:
    """`printed` within 1% of `shown`, or within one unit of `shown`'s last digit."""
    mantissa, _, exponent = shown.lower().partition("e")
    unit = 10.0 ** (int(exponent or 0) - len(mantissa.split(".")[1]))
    want, got = float(shown), float(printed)
    return abs(got - want) <= max(0.01 * abs(want), unit) + 1e-12 * unit


def _literal(text: str) -> str:
    """A regex for shown text without numbers: itself, `...` matching any text."""
    return ".*".join(re.escape(p) for p in text.split("..."))


def _pattern(shown: str) -> tuple[str, list[str]]:
    """A regex for a shown line: `...` any text, each decimal number a group; and those numbers."""
    pieces, numbers, pos = [], [], 0
    for m in _DECIMAL.finditer(shown):
        pieces += [_literal(shown[pos:m.start()]), _NUMBER]
        numbers.append(m.group())
        pos = m.end()
    pieces.append(_literal(shown[pos:]))
    return "".join(pieces), numbers


def _matches(shown: str, actual: str) -> bool:
    shown, actual = _normalise(shown), _normalise(actual)
    pattern, numbers = _pattern(shown)
    m = re.fullmatch(pattern, actual)
    return m is not None and all(_close(n, g) for n, g in zip(numbers, m.groups(), strict=True))


def missing_lines(expected: list[str], output: str) -> list[str]:
    """The shown lines that do not appear, in order, in `output` (empty when it matches)."""
    actual = [line for line in output.splitlines() if line.strip()]
    pos, missing = 0, []
    for shown in expected:
        for k in range(pos, len(actual)):
            if _matches(shown, actual[k]):
                pos = k + 1
                break
        else:
            missing.append(shown)
    return missing
