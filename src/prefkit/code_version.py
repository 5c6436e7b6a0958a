"""Which prefkit code is running: a fingerprint of the package's own source, and its git commit.

The recipe engine keys a step by its inputs and options; the code that made the step is recorded
beside it (`code()` in every `done` marker and in the run manifest) so that a run directory never
silently mixes steps made by two versions of prefkit (docs/loop.md, "Code versions").

- `fingerprint()`: 16 hex digits of a SHA-256 over `prefkit.__version__` and every source and
  packaged data file under the installed `prefkit` directory (*.py and the package data of
  pyproject.toml: *.yaml, *.json, *.txt, *.jinja), by relative path, in sorted order. Any edit to
  the code or a packaged recipe changes it; compiled caches (__pycache__) do not.
- `git_commit()`: `git rev-parse HEAD` of the checkout the package sits in, or None (an installed
  wheel, no git, a slow git). Informational only: an uncommitted edit changes the fingerprint,
  not the commit.

Both are computed once per process.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
from pathlib import Path

import prefkit
from prefkit.files import sha256_file

PACKAGE_DIR = Path(prefkit.__file__).resolve().parent
#: the files that make the package what it is: its source and its package data (pyproject.toml)
SUFFIXES = (".py", ".yaml", ".json", ".txt", ".jinja")


def source_files(root: Path = PACKAGE_DIR) -> list[Path]:
    """The package's source and data files, sorted by path relative to `root`."""
    return sorted((p for p in root.rglob("*") if p.is_file() and p.suffix in SUFFIXES
                   and "__pycache__" not in p.relative_to(root).parts),
                  key=lambda p: p.relative_to(root).as_posix())


def fingerprint_of(root: Path, version: str | None) -> str:
    h = hashlib.sha256(f"version {version}\n".encode())
    for p in source_files(root):
        h.update(f"{p.relative_to(root).as_posix()} {sha256_file(p)}\n".encode())
    return h.hexdigest()[:16]


@functools.cache
def fingerprint() -> str:
    """This process's prefkit code, as 16 hex digits."""
    return fingerprint_of(PACKAGE_DIR, getattr(prefkit, "__version__", None))


@functools.cache
def git_commit() -> str | None:
    """The commit of the git checkout holding the package, or None."""
    try:
        # the package's own files are tracked there (not a wheel inside some other project's checkout)
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=PACKAGE_DIR,
                                 capture_output=True, text=True, timeout=5)
        if tracked.returncode != 0:
            return None
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_DIR, capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else None


def code() -> dict:
    """What a step records about the code that made it: {"fingerprint", "commit"}."""
    return {"fingerprint": fingerprint(), "commit": git_commit()}


def describe(c: dict | None) -> str:
    """One recorded code version in words: 'fingerprint (commit abc1234)' or 'unknown version'."""
    if not c or not c.get("fingerprint"):
        return "an unknown version (written before prefkit recorded its code)"
    return c["fingerprint"] + (f" (commit {c['commit'][:10]})" if c.get("commit") else "")
