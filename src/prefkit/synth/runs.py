"""Durable, resumable request runs: finished work is never lost and never done twice.

A run directory holds `requests.jsonl`: one JSON line per finished request (success or final
failure), keyed by a hash of (backend kind, model, messages, sampling parameters, sample
index). Each line is written with a single `write` and flushed at once (so a killed process
keeps it: it is in the kernel), and the file is fsynced every `fsync_every` lines or
`fsync_interval` seconds and on close (so a power cut loses at most one batch).

On open, a torn last line (a write cut short by kill -9) is detected and cut off; unreadable
lines elsewhere are counted and ignored. Re-running the same requests skips every key already
finished: successes always, recorded failures unless `retry_failed=True`. A later record for
a key supersedes an earlier one, so a successful retry replaces its failure.

One process at a time: the directory is locked (`fcntl.flock`) while a run is open; the OS
drops the lock when the holder dies, so a killed run can be resumed at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

from prefkit.errors import ConfigError, PrefkitError
from prefkit.files import try_lock
from prefkit.report import progress_enabled
from prefkit.synth.backends import Backend, RequestFailed, SamplingParams

REQUESTS_FILE = "requests.jsonl"
LOCK_FILE = ".lock"


@dataclass
class Request:
    """One chat request. `stage` and `tag` are for bookkeeping only (not part of the key)."""

    messages: list[dict]
    params: SamplingParams
    sample_index: int = 0
    stage: str = ""


def request_key(identity: dict, messages: list[dict], params: SamplingParams, sample_index: int = 0) -> str:
    payload = {"backend": identity, "messages": messages, "params": params.to_dict(), "sample": sample_index}
    raw = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:40]


class RunStore:
    """The append-only record of a run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike, *, fsync_every: int = 64, fsync_interval: float = 1.0):
        self.dir = Path(run_dir)
        self.path = self.dir / REQUESTS_FILE
        self.fsync_every = fsync_every
        self.fsync_interval = fsync_interval
        self.records: dict[str, dict] = {}
        self.torn_tail = 0  # bytes cut from an incomplete last line
        self.corrupt_lines = 0
        self._fh = None
        self._lock_fh = None
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._write_lock = threading.Lock()

    # -- open / close ----------------------------------------------------------------------
    def open(self) -> "RunStore":

        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fh = try_lock(self.dir / LOCK_FILE)
        if self._lock_fh is None:
            raise PrefkitError(f"run directory {self.dir} is in use by another prefkit process")
        self._load()
        self._fh = open(self.path, "ab", buffering=0)
        return self

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        if end < len(data):
            self.torn_tail = len(data) - end
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        for line in data[:end].splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                key = rec["key"]
            except (ValueError, KeyError, TypeError):
                self.corrupt_lines += 1
                continue
            self.records[key] = rec

    def append(self, rec: dict) -> None:
        line = (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._write_lock:
            self._fh.write(line)  # unbuffered: one write() per record
            self.records[rec["key"]] = rec
            self._unsynced += 1
            if self._unsynced >= self.fsync_every or time.monotonic() - self._last_sync >= self.fsync_interval:
                self.sync()

    def sync(self) -> None:
        if self._fh is not None and self._unsynced:
            os.fsync(self._fh.fileno())
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None
        if self._lock_fh is not None:
            self._lock_fh.close()  # releases the flock
            self._lock_fh = None

    def __enter__(self) -> "RunStore":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RunStats:
    """What one `execute` call did; `merge` sums stages."""

    requested: int = 0  # unique requests asked for
    resumed: int = 0  # already finished successfully in the run directory
    kept_failed: int = 0  # recorded failures not retried (no --retry-failed)
    done: int = 0  # newly finished successfully
    failed: int = 0  # newly failed for good
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    failure_reasons: Counter = field(default_factory=Counter)  # over every failed key in the result
    failure_examples: dict = field(default_factory=dict)  # reason -> the first failure's detail (redacted)
    hints: list = field(default_factory=list)  # known causes of odd results, said once each

    def merge(self, other: "RunStats") -> None:
        for k in ("requested", "resumed", "kept_failed", "done", "failed", "prompt_tokens",
                  "completion_tokens", "seconds"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.failure_reasons.update(other.failure_reasons)
        for reason, detail in other.failure_examples.items():
            self.failure_examples.setdefault(reason, detail)
        self.hints += [h for h in other.hints if h not in self.hints]

    @classmethod
    def from_dict(cls, d: dict) -> "RunStats":
        """The inverse of `to_dict` (a stage report's notes['run'])."""
        plain = {k: v for k, v in d.items() if k in ("requested", "resumed", "kept_failed", "done", "failed",
                                                   "prompt_tokens", "completion_tokens", "seconds")}
        st = cls(**plain)
        st.failure_reasons.update(d.get("failure_reasons") or {})
        st.failure_examples.update(d.get("failure_examples") or {})
        st.hints.extend(d.get("hints") or [])
        return st

    @property
    def n_failed(self) -> int:
        return sum(self.failure_reasons.values())

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("requested", "resumed", "kept_failed", "done", "failed",
                                             "prompt_tokens", "completion_tokens")}
        d["seconds"] = round(self.seconds, 3)
        d["failure_reasons"] = dict(self.failure_reasons)
        d["failure_examples"] = dict(self.failure_examples)
        d["hints"] = list(self.hints)
        return d

    def summary(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        lines = [f"requests: {self.requested} unique, {self.resumed} resumed from the run directory, "
                 f"{self.done} done now ({rate:.1f} req/s), {self.n_failed} failed",
                 f"tokens: {self.prompt_tokens} prompt + {self.completion_tokens} completion (this session)"]
        for reason, n in self.failure_reasons.most_common():
            lines.append(f"  failed {n:>6}  {reason}")
            if self.failure_examples.get(reason):
                lines.append(f"           first: {self.failure_examples[reason]}")
        if self.n_failed:
            lines.append("  (re-run the same command with --retry-failed to retry only these)")
        lines += [f"  hint: {h}" for h in self.hints]
        return "\n".join(lines)


async def execute(backend: Backend, requests: Iterable[Request], store: RunStore, *, retry_failed: bool = False,
                  progress: bool = True, desc: str = "requests") -> tuple[dict[str, dict], dict[int, str], RunStats]:
    """Run `requests` through `backend`, recording each result in `store`.

    Returns (records by key, key of each input request by position, stats). Every key ends
    with exactly one current record: {"ok": True, "text": ...} or {"ok": False, "reason": ...}.
    """
    requests = list(requests)
    ident = backend.identity()
    keys: dict[int, str] = {}
    todo: dict[str, Request] = {}
    stats = RunStats()
    for i, req in enumerate(requests):
        k = request_key(ident, req.messages, req.params, req.sample_index)
        keys[i] = k
        if k in todo:
            continue
        rec = store.records.get(k)
        if rec is not None and rec.get("ok"):
            stats.resumed += 1
        elif rec is not None and not retry_failed:
            stats.kept_failed += 1
        else:
            todo[k] = req
    stats.requested = len(set(keys.values()))

    t0 = time.monotonic()
    bar = tqdm(total=len(todo), desc=desc, unit="req", disable=not progress_enabled(progress), dynamic_ncols=True,
               smoothing=0.1)
    last_rate = 0.0
    rate = 0.0

    def postfix() -> None:
        bar.set_postfix_str(f"{rate:.0f} tok/s, failed {stats.failed}", refresh=False)

    postfix()

    def on_done(ok: bool, n_tokens: int) -> None:
        # The failure count is exact at every redraw (and in the final one): the postfix is
        # refreshed on every failure; only the token rate is recomputed at most twice a second.
        nonlocal last_rate, rate
        now = time.monotonic()
        if now - last_rate > 0.5:
            last_rate = now
            rate = stats.completion_tokens / max(now - t0, 1e-9)
            postfix()
        elif not ok:
            postfix()
        bar.update(1)

    first_failed: dict[str, str] = {}  # reason -> key of this session's first failure of that kind
    queue: asyncio.Queue = asyncio.Queue()
    for k, req in todo.items():
        queue.put_nowait((k, req))

    async def worker() -> None:
        while True:
            try:
                k, req = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.time()
            try:
                comp = await backend.complete(req.messages, req.params)
                rec = {"key": k, "ok": True, "text": comp.text, "finish_reason": comp.finish_reason,
                       "prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens,
                       "attempts": comp.attempts, "stage": req.stage, "sample": req.sample_index,
                       "seconds": round(time.time() - started, 4)}
                stats.done += 1
                stats.prompt_tokens += comp.prompt_tokens
                stats.completion_tokens += comp.completion_tokens
            except RequestFailed as exc:
                rec = {"key": k, "ok": False, "reason": exc.reason, "detail": exc.detail,
                       "attempts": exc.attempts, "stage": req.stage, "sample": req.sample_index}
                stats.failed += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or an unforeseen error: record it, keep the others going
                rec = {"key": k, "ok": False, "reason": f"unexpected {type(exc).__name__}",
                       "detail": str(exc)[:300], "attempts": 1, "stage": req.stage, "sample": req.sample_index}
                stats.failed += 1
            store.append(rec)
            if not rec["ok"]:
                first_failed.setdefault(rec["reason"], k)
            on_done(rec["ok"], rec.get("completion_tokens", 0))

    n_workers = max(1, min(len(todo), 2 * max(1, backend.concurrency)))
    tasks = [asyncio.create_task(worker()) for _ in range(n_workers)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        store.sync()
        rate = stats.completion_tokens / max(time.monotonic() - t0, 1e-9)
        postfix()
        bar.close()
    stats.seconds = time.monotonic() - t0
    records = {k: store.records[k] for k in set(keys.values()) if k in store.records}
    for rec in records.values():
        if not rec.get("ok"):
            reason = rec.get("reason", "unknown")
            stats.failure_reasons[reason] += 1
            if rec.get("detail") and (reason not in stats.failure_examples
                                      or rec.get("key") == first_failed.get(reason)):
                stats.failure_examples[reason] = str(rec["detail"])[:300]
    unique = {keys[i]: i for i in range(len(requests))}  # one request per key (equal keys share a record)
    hint = greedy_hint([requests[i] for i in unique.values()], [records.get(k) for k in unique])
    if hint:
        stats.hints.append(hint)
    return records, keys, stats


def greedy_hint(requests: list[Request], records: list[dict | None]) -> str | None:
    """A hint when a server returned the same text for every sample of a prompt that was sampled
    several times at a temperature above 0: it decodes greedily (e.g. a server that ignores the
    temperature, or one started with sampling off), so best-of-N, West-of-N and RLAIF get no spread."""
    groups: dict[str, list[str]] = {}
    temps = set()
    for req, rec in zip(requests, records):
        if rec is None or not rec.get("ok") or not (req.params.temperature or 0) > 0:
            continue
        key = json.dumps([req.messages, req.params.replace(seed=None).to_dict(), req.stage], sort_keys=True)
        groups.setdefault(key, []).append(rec.get("text", ""))
        temps.add(req.params.temperature)
    multi = [texts for texts in groups.values() if len(texts) > 1]
    same = sum(1 for texts in multi if len(set(texts)) == 1)
    if same < 2 or 2 * same < len(multi):  # a short answer may repeat by chance; most prompts will not
        return None
    return (f"{same} of {len(multi)} prompts sampled several times at temperature "
            f"{', '.join(f'{t:g}' for t in sorted(temps))} got identical samples: the server seems to decode "
            "greedily (for `transformers serve`, sampling needs do_sample; check the server's generation "
            "settings), so the samples carry no spread to choose from")


def discard_run_dir(run_dir: str | os.PathLike) -> bool:
    """Remove a run directory's finished requests (`--fresh`): the next run asks for everything
    again. Refuses a directory that holds anything but a run's own files (a mistyped --run-dir
    must not delete other data). Returns whether there was one to remove."""

    d = Path(run_dir)
    if not d.exists():
        return False
    if not d.is_dir():
        raise ConfigError(f"--fresh: {d} is not a run directory (it is a file); nothing removed")
    foreign = [f.name for f in d.iterdir() if f.name not in (REQUESTS_FILE, LOCK_FILE)]
    if foreign:
        raise ConfigError(f"--fresh: {d} holds files a run directory does not ({', '.join(sorted(foreign)[:3])}); "
                           "nothing removed: give the run directory itself with --run-dir")
    with RunStore(d):  # not while another prefkit process is using it
        pass
    shutil.rmtree(d)
    return True


def run_sync(coro):
    """Run a coroutine from synchronous code, also when an event loop is already running
    (e.g. in a notebook): then it runs in a fresh loop on a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    th = threading.Thread(target=target)
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Run:
    """A run directory plus the backend(s) that feed it, shared by the stages of one method.

        with Run(run_dir, retry_failed=False) as run:
            texts = run.generate(backend, requests, desc="y1")   # list[dict] records, in order

    `run.stats` sums every stage; `run.stats.summary()` is what the CLI prints.
    """

    def __init__(self, run_dir: str | os.PathLike, *, retry_failed: bool = False, progress: bool = True):
        self.store = RunStore(run_dir)
        self.retry_failed = retry_failed
        self.progress = progress
        self.stats = RunStats()
        self.stage_stats: dict[str, RunStats] = {}

    def __enter__(self) -> "Run":
        self.store.open()
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()

    async def agenerate(self, backend: Backend, requests: list[Request], desc: str = "requests") -> list[dict]:
        records, keys, stats = await execute(backend, requests, self.store, retry_failed=self.retry_failed,
                                             progress=self.progress, desc=desc)
        self.stats.merge(stats)
        self.stage_stats.setdefault(desc, RunStats()).merge(stats)
        return [records[keys[i]] for i in range(len(requests))]

    def generate(self, backend: Backend, requests: list[Request], desc: str = "requests") -> list[dict]:
        return run_sync(self._gen_and_close(backend, requests, desc))

    async def _gen_and_close(self, backend, requests, desc):
        try:
            return await self.agenerate(backend, requests, desc)
        finally:
            await backend.aclose()
