"""Generation backends: any OpenAI-compatible server, or a local transformers model.

A backend turns one chat request (messages + sampling parameters) into one `Completion`, or
raises `RequestFailed` with a short reason once its retries are spent. Concurrency limits,
retries and load balancing live here; durability lives in `prefkit.synth.runs`.

- `OpenAIBackend`: a lean asyncio HTTP/1.1 keep-alive client for the OpenAI chat-completions
  API against one or more base URLs (vLLM, `transformers serve`, Ollama, hosted APIs). Scale out by starting more servers and passing
  every URL: requests go to the least-loaded one (or round-robin). The API key comes from an
  environment variable (default OPENAI_API_KEY) or an argument and is never logged or stored.
- `LocalBackend`: a transformers causal LM in this process; concurrent requests are gathered
  into padded batches for `model.generate`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    stop: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["stop"] is not None:
            d["stop"] = list(d["stop"])
        return d

    def replace(self, **kw) -> "SamplingParams":
        d = asdict(self)
        d.update(kw)
        return SamplingParams(**d)


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    attempts: int = 1


class RequestFailed(Exception):
    """A request that failed for good. `reason` is short and groupable (e.g. 'HTTP 500')."""

    def __init__(self, reason: str, detail: str = "", attempts: int = 1):
        self.reason, self.detail, self.attempts = reason, detail, attempts
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Backend:
    """Interface: `identity()` (what keys a request), `concurrency`, `complete()`, `aclose()`."""

    kind = "base"
    model: str = ""
    concurrency: int = 1

    def identity(self) -> dict[str, Any]:
        return {"backend": self.kind, "model": self.model}

    async def complete(self, messages: list[dict], params: SamplingParams) -> Completion:  # pragma: no cover
        raise NotImplementedError

    async def aclose(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.kind}:{self.model}"


# --------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP
# --------------------------------------------------------------------------------------------

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _HTTPStatus(Exception):
    def __init__(self, status: int, body: bytes, retry_after: str | None):
        self.status, self.body, self.retry_after = status, body, retry_after
        super().__init__(f"HTTP {status}")


class _Endpoint:
    """One base URL: a keep-alive HTTP/1.1 connection pool (asyncio streams, LIFO idle list).

    The pool never holds more connections than requests in flight, which the backend's
    semaphore bounds. The request head, API key included, is built once and kept only here.
    """

    def __init__(self, url: str, key: str):
        from urllib.parse import urlsplit

        from prefkit.errors import ConfigError

        self.url = url
        u = urlsplit(url.rstrip("/"))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"base URL must be http(s)://HOST[:PORT]/PATH, not {url!r}")
        self.host = u.hostname
        self.tls = u.scheme == "https"
        self.port = u.port or (443 if self.tls else 80)
        default = (self.tls and self.port == 443) or (not self.tls and self.port == 80)
        hostport = self.host if default else f"{self.host}:{self.port}"
        if ":" in self.host and not default:
            hostport = f"[{self.host}]:{self.port}"
        self._head = (f"POST {u.path}/chat/completions HTTP/1.1\r\nHost: {hostport}\r\n"
                      f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
                      f"Accept: application/json\r\nUser-Agent: prefkit\r\nContent-Length: ").encode("latin-1")
        self._idle: list = []
        self.in_flight = 0
        self.served = 0

    def __repr__(self) -> str:  # never shows the head (it holds the API key)
        return f"_Endpoint({self.url!r}, in_flight={self.in_flight})"

    async def _connect(self):
        ssl_ctx = None
        if self.tls:
            import ssl

            ssl_ctx = ssl.create_default_context()
        return await asyncio.open_connection(self.host, self.port, ssl=ssl_ctx, limit=2 ** 20)

    async def post(self, body: bytes) -> bytes:
        """POST a chat completion; returns the 2xx body or raises _HTTPStatus / OSError / EOFError."""
        data = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
        reused = bool(self._idle)
        conn = self._idle.pop() if reused else await self._connect()
        try:
            conn[1].write(data)
            line = await conn[0].readline()
            if not line and reused:  # the server closed an idle keep-alive connection: one fresh try
                conn[1].close()
                conn = await self._connect()
                conn[1].write(data)
                line = await conn[0].readline()
            status, keep, payload, retry_after = await _read_response(conn[0], line)
        except BaseException:
            conn[1].transport.abort()
            raise
        if keep:
            self._idle.append(conn)
        else:
            conn[1].close()
        if not 200 <= status < 300:
            raise _HTTPStatus(status, payload, retry_after)
        return payload

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].transport.abort()


async def _read_response(reader, line: bytes):
    """(status, keep-alive, body, Retry-After) of one HTTP/1.1 response whose status line is read."""
    while True:
        if not line:
            raise EOFError("server closed the connection without answering")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise ValueError(f"not an HTTP status line: {line[:80]!r}")
        status = int(parts[1])
        length = chunked = retry_after = None
        keep = parts[0] != b"HTTP/1.0"
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n"):
                break
            if not h:
                raise EOFError("connection closed in the response headers")
            name, _, value = h.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                v = value.strip().lower()
                keep = v == b"keep-alive" if parts[0] == b"HTTP/1.0" else v != b"close"
            elif name == b"retry-after":
                retry_after = value.strip().decode("latin-1")
        if 100 <= status < 200:  # an interim response: the real one follows
            line = await reader.readline()
            continue
        break
    if chunked:
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";", 1)[0], 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        payload = b"".join(chunks)
    elif length is not None:
        payload = await reader.readexactly(length) if length else b""
    else:
        payload, keep = await reader.read(), False
    return status, keep, payload, retry_after


@dataclass
class OpenAIBackend(Backend):
    """Chat completions from any OpenAI-compatible server, with our own retries and balancing.

    Requests go over a lean HTTP/1.1 keep-alive client on asyncio streams (one connection pool
    per base URL, at most `concurrency` connections; https via the stdlib `ssl` module), with
    stdlib `json`: the bodies are plain chat-completion JSON, read as dicts, so each request
    costs a fraction of the CPU of a general HTTP client plus typed response models.

    Retries (up to `max_retries` after the first try) on HTTP 408/409/425/429/5xx, timeouts,
    connection errors and malformed bodies, sleeping a full-jitter exponential backoff
    (uniform in [0, min(backoff_max, backoff_base * 2**attempt)]), or the server's
    Retry-After when it sends one. Other 4xx errors fail at once. `timeout` bounds each try.
    """

    model: str = ""
    base_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 64
    timeout: float = 120.0
    max_retries: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    balance: str = "least-loaded"  # or "round-robin"
    extra_body: dict | None = None
    kind: ClassVar[str] = "openai"

    def __post_init__(self):
        from prefkit.errors import ConfigError

        if not self.model:
            raise ConfigError("OpenAIBackend needs a model name (--model)")
        if isinstance(self.base_urls, str):
            self.base_urls = [self.base_urls]
        if not self.base_urls:
            raise ConfigError("OpenAIBackend needs at least one base URL (--base-url)")
        if self.balance not in ("least-loaded", "round-robin"):
            raise ConfigError(f"balance must be 'least-loaded' or 'round-robin', not {self.balance!r}")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        self._endpoints: list[_Endpoint] | None = None
        self._loop = None
        self._sem: asyncio.Semaphore | None = None
        self._rr = itertools.count()
        self._rng = random.Random()

    def identity(self) -> dict[str, Any]:
        # Base URLs are deliberately not part of the identity: adding servers must not
        # invalidate a run's finished requests.
        return {"backend": self.kind, "model": self.model, "extra_body": self.extra_body or None}

    def _key(self) -> str:
        return self.api_key or os.environ.get(self.api_key_env) or "EMPTY"

    def _setup(self) -> None:
        loop = asyncio.get_running_loop()
        if self._endpoints is not None and self._loop is loop:
            return
        # First use, or a new event loop: connections belong to the loop that opened them.
        self._loop = loop
        key = self._key()
        self._endpoints = [_Endpoint(url, key) for url in self.base_urls]
        self._sem = asyncio.Semaphore(self.concurrency)

    def _pick(self) -> _Endpoint:
        eps = self._endpoints
        start = next(self._rr) % len(eps)
        if self.balance == "round-robin" or len(eps) == 1:
            return eps[start]
        order = eps[start:] + eps[:start]
        return min(order, key=lambda e: e.in_flight)

    def _body(self, messages, params: SamplingParams) -> bytes:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": params.temperature,
                                "top_p": params.top_p, "max_tokens": params.max_tokens}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        if self.extra_body:
            body.update(self.extra_body)
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    async def complete(self, messages: list[dict], params: SamplingParams) -> Completion:
        self._setup()
        body = self._body(messages, params)
        attempt = 0
        while True:
            attempt += 1
            delay_hint = None
            try:
                async with self._sem:
                    ep = self._pick()
                    ep.in_flight += 1
                    try:
                        async with asyncio.timeout(self.timeout):
                            payload = await ep.post(body)
                    finally:
                        ep.in_flight -= 1
                comp = _completion_from(payload)
                comp.attempts = attempt
                ep.served += 1
                return comp
            except RequestFailed as exc:
                reason, detail, retryable, delay_hint = exc.reason, exc.detail, getattr(exc, "retryable", False), \
                    getattr(exc, "delay_hint", None)
            except Exception as exc:  # classified below
                reason, detail, retryable, delay_hint = _classify(exc)
            if not retryable or attempt > self.max_retries:
                tries = f" after {attempt} tries" if attempt > 1 else ""
                raise RequestFailed(reason, f"{detail}{tries}", attempts=attempt)
            cap = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
            wait = delay_hint if delay_hint is not None else self._rng.uniform(0, cap)
            await asyncio.sleep(min(wait, self.backoff_max))

    async def aclose(self) -> None:
        if self._endpoints:
            for ep in self._endpoints:
                ep.close()
        self._endpoints = None

    def describe(self) -> str:
        urls = ", ".join(self.base_urls)
        return f"openai:{self.model} @ {urls} (concurrency {self.concurrency})"


def _completion_from(payload: bytes) -> Completion:
    """Validate a chat completion body; one without text is a malformed (retryable) answer."""
    try:
        resp = json.loads(payload)
    except ValueError as exc:
        raise _retryable("malformed response", f"body is not JSON: {str(exc)[:150]}") from None
    choices = resp.get("choices") if isinstance(resp, dict) else None
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise _retryable("malformed response", "no choices in the body")
    msg = choices[0].get("message")
    text = msg.get("content") if isinstance(msg, dict) else None
    if not isinstance(text, str):
        raise _retryable("malformed response", "choice has no message content")
    usage = resp.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(text=text,
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0),
                      finish_reason=choices[0].get("finish_reason"))


def _retryable(reason: str, detail: str) -> RequestFailed:
    exc = RequestFailed(reason, detail)
    exc.retryable = True
    return exc


def _classify(exc: Exception) -> tuple[str, str, bool, float | None]:
    """(reason, detail, retryable, server-requested delay) for an exception from a try."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "request timed out", True, None
    if isinstance(exc, _HTTPStatus):
        try:
            hint = float(exc.retry_after) if exc.retry_after is not None else None
        except (TypeError, ValueError):
            hint = None
        return f"HTTP {exc.status}", _status_message(exc), exc.status in _RETRYABLE_STATUS or exc.status >= 500, hint
    if isinstance(exc, (OSError, EOFError, asyncio.IncompleteReadError)):
        return "connection error", f"{type(exc).__name__}: {str(exc)[:200]}", True, None
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError, asyncio.LimitOverrunError)):
        return "malformed response", f"{type(exc).__name__}: {str(exc)[:200]}", True, None
    raise exc


def _status_message(exc: _HTTPStatus) -> str:
    try:
        body = json.loads(exc.body)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
        if isinstance(err, str) and err:
            return err[:200]
    text = exc.body[:200].decode("utf-8", "replace").strip()
    return text or f"HTTP {exc.status}"


# --------------------------------------------------------------------------------------------
# Local transformers model
# --------------------------------------------------------------------------------------------

class LocalBackend(Backend):
    """A local causal LM; concurrent `complete()` calls are batched through `prefkit.generate`.

    `model` is a directory (model + tokenizer) or an already loaded model, in which case pass
    `tokenizer`. Requests with equal sampling parameters are grouped into batches of up to
    `batch_size`, generated in a worker thread so the event loop keeps writing finished rows.
    Without a seed in the sampling parameters each batch draws its seed from `seed`'s stream.
    Token counts are re-tokenized lengths; the finish reason is not known (None).
    """

    kind = "local"

    def __init__(self, model, tokenizer=None, *, batch_size: int = 16, device: str | None = None,
                 name: str | None = None, conditioning="auto", seed: int = 0):
        from prefkit.errors import ConfigError

        if not isinstance(model, (str, os.PathLike)) and tokenizer is None:
            raise ConfigError("LocalBackend with a loaded model needs its tokenizer")
        self._model_src = model
        self._tokenizer = tokenizer
        self.batch_size = batch_size
        self.concurrency = max(2 * batch_size, 1)
        self.device = device
        self.model = name or (str(model) if isinstance(model, (str, os.PathLike))
                              else getattr(getattr(model, "config", None), "_name_or_path", "") or
                              type(model).__name__)
        self.conditioning = conditioning
        self._rng = random.Random(seed)
        self._queue: asyncio.Queue | None = None
        self._loop = None
        self._worker: asyncio.Task | None = None
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from prefkit.models import load_causal_lm

            model, tok = load_causal_lm(self._model_src, self._tokenizer)
            if self.device is not None:
                model = model.to(self.device)
            self._loaded = (model, tok)
        return self._loaded

    async def complete(self, messages: list[dict], params: SamplingParams) -> Completion:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            self._queue, self._worker, self._loop = asyncio.Queue(), None, loop
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._batch_loop())
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((messages, params, fut))
        return await fut

    async def _batch_loop(self) -> None:
        q = self._queue
        while True:
            first = await q.get()
            await asyncio.sleep(0)  # let the other pending requests arrive
            items = [first]
            while not q.empty() and len(items) < self.batch_size * 4:
                items.append(q.get_nowait())
            groups: dict[SamplingParams, list] = {}
            for it in items:
                groups.setdefault(it[1], []).append(it)
            for params, group in groups.items():
                for i in range(0, len(group), self.batch_size):
                    chunk = group[i:i + self.batch_size]
                    try:
                        outs = await asyncio.to_thread(self._generate, [c[0] for c in chunk], params)
                    except Exception as exc:  # one bad batch fails its own requests only
                        for c in chunk:
                            if not c[2].done():
                                c[2].set_exception(RequestFailed("local generation error",
                                                                 f"{type(exc).__name__}: {exc}"[:200]))
                        continue
                    for c, out in zip(chunk, outs):
                        if not c[2].done():
                            c[2].set_result(out)

    def _generate(self, batch_messages: list[list[dict]], params: SamplingParams) -> list[Completion]:
        """One padded batch through `prefkit.generate` (which also applies a reward-conditioning
        spec saved beside the model, as for every local sampling in prefkit)."""
        from prefkit.generate import generate

        model, tok = self._load()
        seed = params.seed if params.seed is not None else self._rng.randrange(2**31)
        texts = generate(model, batch_messages, tokenizer=tok, n=1, temperature=params.temperature,
                         top_p=params.top_p, max_new_tokens=params.max_tokens, batch_size=len(batch_messages),
                         seed=seed, conditioning=self.conditioning, progress=False)
        out = []
        for msgs, (text,) in zip(batch_messages, texts):
            n_prompt = len(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"])
            out.append(Completion(text=text, prompt_tokens=n_prompt,
                                  completion_tokens=len(tok(text, add_special_tokens=False)["input_ids"])))
        return out

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
        self._worker = None
        self._queue = None

    def describe(self) -> str:
        return f"local:{self.model} (batch {self.batch_size})"
