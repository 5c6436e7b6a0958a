"""Writing files that either finish or leave the previous state as it was, and a full disk said
in one line. Every stage that writes (data outputs, training runs, caches) uses these.

- `atomic_write_text(path, text)`: temp file + rename in the same directory.
- `try_lock(path)`: an exclusive, non-blocking `flock` on `path` (one process at a time in a
  directory: a request run, an engine run directory), or None when another process holds it.
- `disk_guard(what, where)`: turns "no space left on device" (ENOSPC, EDQUOT, or EFBIG from a
  file-size limit), however the writing library words it, into a `DiskFullError` naming the
  directory, so the CLI prints one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from prefkit.errors import PrefkitError


class DiskFullError(PrefkitError):
    """A write failed because the device (or the file-size limit) is full."""


# ---------------------------------------------------------------------------------------------
# one process at a time

def try_lock(path: str | os.PathLike):
    """Open `path` (created when missing, never truncated) and take an exclusive `flock` on it
    without waiting: the open file, whose closing releases the lock (as the kernel does when the
    process ends however it ends, kill -9 included), or None when another process holds it."""
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh


# ---------------------------------------------------------------------------------------------
# writing


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temp file in the same directory and a rename: `path` is
    either its old content or the new one, never a prefix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def readable_by_all(path: str | os.PathLike) -> None:
    """Give a file (or every file in a directory tree) the mode of any other file we write (0644
    under a 022 umask): safetensors writes 0600, which hides weights from the other users of a
    shared directory or cache."""
    umask = os.umask(0)
    os.umask(umask)
    p = Path(path)
    for f in ([p] if p.is_file() else (x for x in p.rglob("*") if x.is_file())):
        f.chmod(0o666 & ~umask)


_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# How writers that are not Python's own say it: safetensors (Rust io::Error), torch's zip writer
# ("file write failed" carries no errno), numpy/zipfile (OSError with errno).
_FULL_WORDS = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded",
               "file too large", "os error 27", "filetoolarge")


def is_disk_full(exc: BaseException, where: str | os.PathLike | None = None) -> bool:
    """True when `exc` (or an exception it was raised from) is a full device or file-size limit."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return True
        text = str(e).lower()
        if any(w in text for w in _FULL_WORDS):
            return True
        if any(w in text for w in _TORCH_WRITER) and where is not None and _nearly_full(where):
            return True   # torch's zip writer says no errno: trust it when the device really is (nearly) full
        e = e.__cause__ or e.__context__
    return False


_TORCH_WRITER = ("file write failed", "inline_container", "unexpected pos")


def _nearly_full(where) -> bool:
    """Under 1 MiB free where `where` lives, or a file-size limit (RLIMIT_FSIZE) in force."""
    try:
        import resource  # noqa: PLC0415  POSIX only

        if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
            return True
    except (ImportError, OSError, ValueError):
        pass
    return _free_bytes(where) < (1 << 20)


def _free_bytes(where) -> int:

    p = Path(where)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return 1 << 62


@contextlib.contextmanager
def disk_guard(what: str, where: str | os.PathLike, *, kept: str = "") -> Iterator[None]:
    """Re-raise a full-disk failure inside the block as DiskFullError: one line naming `where`
    and what was being written; `kept` says what was left intact."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:  # noqa: BLE001 - only full-disk failures are translated
        if not is_disk_full(exc, where):
            raise
        tail = f"; {kept}" if kept else ""
        raise DiskFullError(f"{where}: no space left on device while writing {what}{tail}") from exc


def sha256_file(path, chunk: int = 1 << 22) -> str:
    """SHA-256 hex digest of a file's bytes, read in `chunk`-byte blocks (the one file hash of
    prefkit: data fingerprints, recipe stage keys, the reference cache, imported models)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
