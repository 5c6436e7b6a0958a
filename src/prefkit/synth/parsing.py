"""Robust parsing of LLM outputs: tagged sections, pairwise verdicts, aspect ratings.

Every parser returns what it found plus an `issue` string when something was off, and never
invents a value: an answer it cannot read yields None and a reason the caller records.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field


@dataclass
class Tagged:
    text: str | None  # None when the tag was not found or was empty
    issue: str | None = None  # 'missing tag', 'empty', 'unclosed tag' (text kept), ...


def _tag_re(tag: str, closing: bool) -> re.Pattern:
    slash = r"/\s*" if closing else ""
    return re.compile(rf"<\s*{slash}{re.escape(tag)}(?:\s[^<>]*)?\s*>", re.IGNORECASE)


_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


def _clean(text: str) -> str:
    text = text.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    return text


def extract_tag(text: str | None, tag: str) -> Tagged:
    """The content of the last complete <tag>...</tag> in `text`.

    Tolerates case, spaces and attributes inside the tags, code fences around the content,
    and an echoed instruction before the answer (the LAST complete pair wins). An opening tag
    without its closing tag yields the rest of the text with issue 'unclosed tag'.
    """
    if not text:
        return Tagged(None, "empty output")
    opens = list(_tag_re(tag, False).finditer(text))
    closes = list(_tag_re(tag, True).finditer(text))
    if not opens:
        return Tagged(None, f"missing <{tag}> tag")
    # Last complete pair: the last close, and the last open before it.
    for close in reversed(closes):
        before = [o for o in opens if o.end() <= close.start()]
        if before:
            body = _clean(text[before[-1].end():close.start()])
            if body:
                return Tagged(body, None)
            return Tagged(None, f"empty <{tag}>")
    body = _clean(text[opens[-1].end():])
    if not body:
        return Tagged(None, f"empty <{tag}>")
    return Tagged(body, "unclosed tag")


def similarity(a: str, b: str) -> float:
    """Character-level similarity in [0, 1] of whitespace-normalised texts (difflib ratio)."""
    na, nb = " ".join(a.split()).lower(), " ".join(b.split()).lower()
    if na == nb:
        return 1.0
    return difflib.SequenceMatcher(None, na, nb, autojunk=False).ratio()


def _norm_name(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")


def parse_aspect_list(text: str | None, known: list[str]) -> tuple[list[str], list[str]]:
    """Split an <aspects> body into (known aspect names, unrecognised items).

    Accepts commas, semicolons, newlines, bullets and numbering; matches names ignoring case,
    spaces, hyphens and underscores ('Instruction following' -> 'instruction_following')."""
    if not text:
        return [], []
    by_norm = {_norm_name(k): k for k in known}
    found, unknown = [], []
    for item in re.split(r"[,;\n]|\band\b", text):
        item = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", item).strip().strip("*_`'\".:")
        if not item:
            continue
        # "helpfulness: added detail" -> take the name before a colon or dash
        head = re.split(r"\s*[:(\u2013\u2014]\s*|\s+-\s+", item, maxsplit=1)[0]
        name = by_norm.get(_norm_name(head))
        if name is None:
            name = next((by_norm[n] for n in by_norm if n and n in _norm_name(head)), None)
        if name is not None:
            if name not in found:
                found.append(name)
        else:
            unknown.append(item)
    return found, unknown


# -- pairwise verdicts --------------------------------------------------------------------------

_VERDICT_PATTERNS = [
    re.compile(r"<\s*verdict\s*>\s*\**\s*(?:answer|response)?\s*([AB]|tie)\b", re.IGNORECASE),
    re.compile(r"\[\[\s*([AB]|tie)\s*\]\]", re.IGNORECASE),
    re.compile(r"\bverdict\s*[:=\-]\s*\**\s*(?:answer|response)?\s*([AB]|tie)\b", re.IGNORECASE),
    re.compile(r"\b(?:better|best)\s+(?:answer|response)\s*(?:is|:)\s*\**\s*(?:answer|response)?\s*([AB])\b",
               re.IGNORECASE),
]


def parse_verdict(text: str | None) -> tuple[str | None, str | None]:
    """('A' | 'B' | 'tie' | None, issue) from a pairwise judge's output.

    Reads the last <verdict>X</verdict>; falls back to '[[X]]', 'Verdict: X' and
    'the better answer is X'. Anything else is unreadable (None), never a guess."""
    if not text:
        return None, "empty output"
    for pat in _VERDICT_PATTERNS:
        hits = pat.findall(text)
        if hits:
            v = hits[-1].strip()
            v = "tie" if v.lower() == "tie" else v.upper()
            return v, None
    return None, "no verdict found"


# -- UltraFeedback-style ratings -------------------------------------------------------------

@dataclass
class Ratings:
    aspects: dict[str, float | None] = field(default_factory=dict)
    rationales: dict[str, str | None] = field(default_factory=dict)
    overall: float | None = None
    issues: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.overall is not None and all(v is not None for v in self.aspects.values())


_NUM = r"\**\s*\[?\s*(\d+(?:\.\d+)?)\s*\]?\s*\**(?:\s*(?:/|out\s+of)\s*(\d+))?"


def _aspect_pattern(name: str) -> str:
    parts = [re.escape(p) for p in re.split(r"[_\s-]+", name) if p]
    return r"[\s_-]*".join(parts)


def parse_ratings(text: str | None, aspects: list[str], *, aspect_range=(1, 5),
                  overall_range=(1, 10)) -> Ratings:
    """Read 'aspect: N' lines (plus 'rationale: ...' after each) and an 'overall: N' line.

    Tolerates markdown emphasis, '#', bullets, 'rating'/'score' words, 'N/5' and 'N out of 5'.
    The last readable value per name wins. Values outside the range, or with a denominator
    that contradicts it, are rejected (None plus an issue)."""
    out = Ratings(aspects={a: None for a in aspects}, rationales={a: None for a in aspects})
    if not text:
        out.issues.append("empty output")
        return out
    lines = text.splitlines()

    def find(name_pat: str, lo: float, hi: float, label: str):
        pat = re.compile(rf"^[\s#>*\-\u2022\d.)]*\**\s*(?:{name_pat})\s*\**\s*(?:\((?:[^)]*)\))?\s*"
                         rf"(?:rating|score)?\s*\**\s*[:=\-\u2013]\s*{_NUM}", re.IGNORECASE)
        value, where = None, None
        for i, line in enumerate(lines):
            m = pat.search(line)
            if m:
                v = float(m.group(1))
                denom = m.group(2)
                if denom is not None and float(denom) != hi:
                    out.issues.append(f"{label}: rated out of {denom}, expected {hi:g}")
                    value, where = None, i
                    continue
                if not (lo <= v <= hi):
                    out.issues.append(f"{label}: {v:g} outside {lo:g}-{hi:g}")
                    value, where = None, i
                    continue
                value, where = v, i
        return value, where

    for a in aspects:
        v, where = find(_aspect_pattern(a), *aspect_range, a)
        out.aspects[a] = v
        if v is None:
            if not any(i.startswith(a + ":") for i in out.issues):
                out.issues.append(f"{a}: no rating found")
            continue
        # the rationale: a 'rationale:' line after the rating, before the next rating line
        for line in lines[where + 1: where + 4]:
            m = re.match(r"^[\s#>*\-\u2022]*\**\s*(?:rationale|reason|explanation)\s*\**\s*[:=\-]\s*(.*)$",
                         line, re.IGNORECASE)
            if m:
                out.rationales[a] = m.group(1).strip().strip("*").strip() or None
                break
    v, _ = find(r"overall(?:[\s_-]*(?:score|quality|rating))?", *overall_range, "overall")
    out.overall = v
    if v is None and not any(i.startswith("overall:") for i in out.issues):
        out.issues.append("overall: no score found")
    return out


def parse_score(text: str | None, lo: float = 1, hi: float = 10) -> tuple[float | None, str | None]:
    """A single 'score: N' (or <score>N</score>) in [lo, hi]; None plus an issue otherwise."""
    tagged = extract_tag(text, "score")
    if tagged.text is not None:
        m = re.match(r"^\s*(\d+(?:\.\d+)?)", tagged.text)
        if m:
            v = float(m.group(1))
            return (v, None) if lo <= v <= hi else (None, f"score {v:g} outside {lo:g}-{hi:g}")
    r = parse_ratings(text, [], overall_range=(lo, hi))
    if r.overall is not None:
        return r.overall, None
    pat = re.compile(rf"^[\s#>*\-]*\**\s*score\s*\**\s*[:=\-]\s*{_NUM}", re.IGNORECASE | re.MULTILINE)
    hits = pat.findall(text or "")
    if hits:
        v = float(hits[-1][0])
        return (v, None) if lo <= v <= hi else (None, f"score {v:g} outside {lo:g}-{hi:g}")
    return None, "no score found"
