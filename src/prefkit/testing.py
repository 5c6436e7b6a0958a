"""prefkit.testing: a small OpenAI-compatible chat server for tests, benchmarks and dry runs.

It is tooling, not a pipeline stage: nothing in prefkit imports it. It ships with the package
so that users can rehearse a `prefkit synth` run (and its failure handling) without a model.

It is a real HTTP/1.1 server (asyncio streams, keep-alive) bound to 127.0.0.1 that answers
`POST /v1/chat/completions`, `GET /v1/models` and `GET /health`. Replies come from a
`responder(body) -> str` callable (default: a deterministic echo), after an optional fixed
latency, and can be spoiled on purpose (`Faults`): HTTP 500 and 429, slow replies, malformed
bodies and dropped connections. Every server stops itself after `max_lifetime` seconds.

    with FakeServer(latency=0.2) as srv:
        backend = OpenAIBackend("fake", base_urls=[srv.base_url])

From a shell (used by the kill -9 test and the throughput benchmark):

    python -m prefkit.testing --port 0 --latency 0.2   # prints "READY <port>"

`transformers_serve(model_dir)` runs the other kind of server the tests use: a real
`transformers serve` process serving a model directory on 127.0.0.1 (the real SmolLM2, a
trained model with an exported chat template, ...), up and answering when the block starts and
stopped when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


@dataclass
class Faults:
    """Probabilities of each injected fault per request (checked in this order)."""

    p_drop: float = 0.0  # close the connection without answering
    p_500: float = 0.0
    p_429: float = 0.0
    p_malformed: float = 0.0  # 200 with a body that is not a chat completion
    p_slow: float = 0.0  # answer only after `slow_s` (to trip client timeouts)
    slow_s: float = 5.0


class ServeUnavailable(RuntimeError):
    """`transformers serve` is not installed (it comes with `transformers[serving]`)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def transformers_serve(model_dir, log_path, *, lifetime: int = 900, startup_timeout: float = 180,
                       warm_up: bool = False) -> Iterator[str]:
    """A real `transformers serve` process serving `model_dir` on 127.0.0.1; yields its base URL
    (`http://127.0.0.1:PORT/v1`). The process is bounded by `timeout LIFETIME` (so it ends even if
    the caller dies without cleaning up) and writes its output to `log_path`, whose tail the error
    shows when it does not come up within `startup_timeout` seconds. `warm_up` sends one short
    request first: the server loads the model on its first request, so later requests then
    measure the model and not its loading."""
    import httpx  # noqa: PLC0415  heavy (httpx): lazy, so importing this module stays light

    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or shutil.which("transformers")
    if exe is None:
        raise ServeUnavailable("the `transformers` CLI is not installed (pip install 'transformers[serving]')")
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log_path = Path(log_path)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["timeout", str(lifetime), exe, "serve", str(model_dir), "--host", "127.0.0.1",
                                 "--port", str(port), "--device", "cpu"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + startup_timeout
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("transformers serve did not come up:\n" + log_path.read_text()[-3000:])
                time.sleep(0.5)
            if warm_up:
                warm = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=lifetime, json={
                    "model": str(model_dir), "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]})
                if warm.status_code != 200:
                    raise RuntimeError(f"transformers serve: warm-up request failed: {warm.text[:500]}")
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def echo_responder(body: dict) -> str:
    """Deterministic reply naming a digest of the request and the last user turn."""
    msgs = body.get("messages") or []
    last = next((m.get("content", "") for m in reversed(msgs) if m.get("role") == "user"), "")
    digest = hashlib.sha1(json.dumps(msgs, sort_keys=True).encode()).hexdigest()[:8]
    return f"reply {digest}: {str(last)[:80]}"


def _count_tokens(text: str) -> int:
    return len(str(text).split())


class FakeServer:
    def __init__(self, responder: Callable[[dict], str] | None = None, *, latency: float = 0.0,
                 faults: Faults | None = None, seed: int = 0, port: int = 0, max_lifetime: float = 120.0,
                 model: str = "fake-model"):
        self.responder = responder or echo_responder
        self.latency = latency
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.port = port
        self.max_lifetime = max_lifetime
        self.model = model
        self.stats: Counter = Counter()  # outcome -> count
        self.served: Counter = Counter()  # digest of request body -> successful answers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeServer":
        self._thread = threading.Thread(target=self._run_thread, daemon=True, name="prefkit-fake-server")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> "FakeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run_thread(self) -> None:
        asyncio.run(self.serve())

    async def serve(self, on_ready: Callable[[int], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        if on_ready:
            on_ready(self.port)
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=self.max_lifetime)
        except asyncio.TimeoutError:
            pass
        server.close()
        # Do not wait for idle keep-alive connections: close them by ending the loop.

    # -- HTTP ------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(n) if n else b""
                keep = await self._dispatch(method, path, raw, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            pass  # client went away, or the server is shutting down
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _dispatch(self, method: str, path: str, raw: bytes, writer) -> bool:
        path = path.split("?", 1)[0]
        if method == "GET" and path in ("/health", "/v1/health"):
            return self._send(writer, 200, {"status": "ok"})
        if method == "GET" and path == "/v1/models":
            return self._send(writer, 200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        if method != "POST" or path != "/v1/chat/completions":
            return self._send(writer, 404, {"error": {"message": f"no route {method} {path}"}})
        f = self.faults
        roll = self.rng.random
        if roll() < f.p_drop:
            self.stats["drop"] += 1
            writer.transport.abort()
            return False
        if roll() < f.p_500:
            self.stats["500"] += 1
            return self._send(writer, 500, {"error": {"message": "injected server error"}})
        if roll() < f.p_429:
            self.stats["429"] += 1
            return self._send(writer, 429, {"error": {"message": "injected rate limit"}})
        malformed = roll() < f.p_malformed
        slow = roll() < f.p_slow
        if self.latency:
            await asyncio.sleep(self.latency)
        if slow:
            self.stats["slow"] += 1
            await asyncio.sleep(f.slow_s)
        if malformed:
            self.stats["malformed"] += 1
            if roll() < 0.5:
                return self._send_raw(writer, 200, b'{"id": "x", "choices": [{"message": {"cont')
            return self._send(writer, 200, {"id": "x", "object": "chat.completion", "choices": []})
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            return self._send(writer, 400, {"error": {"message": "request body is not JSON"}})
        try:
            text = self.responder(body)
        except Exception as exc:  # a responder that raises is a server error
            self.stats["500"] += 1
            return self._send(writer, 500, {"error": {"message": f"responder failed: {exc}"}})
        self.stats["ok"] += 1
        self.served[hashlib.sha1(raw).hexdigest()] += 1
        prompt_tokens = sum(_count_tokens(m.get("content", "")) for m in body.get("messages", []))
        out = {
            "id": f"chatcmpl-{self.stats['ok']}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": _count_tokens(text),
                      "total_tokens": prompt_tokens + _count_tokens(text)},
        }
        return self._send(writer, 200, out)

    def _send(self, writer, status: int, obj) -> bool:
        return self._send_raw(writer, status, json.dumps(obj).encode())

    @staticmethod
    def _send_raw(writer, status: int, data: bytes) -> bool:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
                  500: "Internal Server Error"}.get(status, "Status")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: keep-alive\r\n\r\n").encode()
        writer.write(head + data)
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="a local OpenAI-compatible server for tests and benchmarks")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--p-500", type=float, default=0.0)
    ap.add_argument("--p-429", type=float, default=0.0)
    ap.add_argument("--p-drop", type=float, default=0.0)
    ap.add_argument("--p-malformed", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-lifetime", type=float, default=120.0)
    a = ap.parse_args(argv)
    srv = FakeServer(latency=a.latency, seed=a.seed, port=a.port, max_lifetime=a.max_lifetime,
                     faults=Faults(p_drop=a.p_drop, p_500=a.p_500, p_429=a.p_429, p_malformed=a.p_malformed))
    asyncio.run(srv.serve(on_ready=lambda port: print(f"READY {port}", flush=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
