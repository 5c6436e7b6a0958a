"""Generation backends: any OpenAI-compatible server, or a local transformers model.

A backend turns one chat request (messages + sampling parameters) into one `Completion`, or
raises `RequestFailed` with a short reason once its retries are spent. Concurrency limits,
retries and load balancing live here; durability lives in `prefkit.synth.runs`.

- `OpenAIBackend`: the official `openai` async client against one or more base URLs (vLLM,
  `transformers serve`, Ollama, hosted APIs). Scale out by starting more servers and passing
  every URL: requests go to the least-loaded one (or round-robin). The API key comes from an
  environment variable (default OPENAI_API_KEY) or an argument and is never logged or stored.
- `LocalBackend`: a transformers causal LM in this process; concurrent requests are gathered
  into padded batches for `model.generate`.
"""

from __future__ import annotations

import asyncio
import itertools
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


@dataclass
class _Endpoint:
    url: str
    clients: list  # several small connection pools: a pool's bookkeeping grows with its size
    in_flight: int = 0
    served: int = 0
    turn: int = 0

    def client(self):
        self.turn += 1
        return self.clients[self.turn % len(self.clients)]


@dataclass
class OpenAIBackend(Backend):
    """Chat completions through `openai.AsyncOpenAI`, with our own retries and balancing.

    Retries (up to `max_retries` after the first try) on HTTP 408/409/425/429/5xx, timeouts,
    connection errors and malformed bodies, sleeping a full-jitter exponential backoff
    (uniform in [0, min(backoff_max, backoff_base * 2**attempt)]), or the server's
    Retry-After when it sends one. Other 4xx errors fail at once.
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
        import httpx2
        import openai

        # Connections are split over several clients of at most ~16 connections each: the HTTP
        # pool scans all its connections on every request, which at 64+ costs more CPU than the
        # request itself.
        shards = max(1, -(-self.concurrency // 16))
        per = -(-self.concurrency // shards) + 4
        limits = httpx2.Limits(max_connections=per, max_keepalive_connections=per)
        self._endpoints = []
        for url in self.base_urls:
            clients = [openai.AsyncOpenAI(base_url=url.rstrip("/"), api_key=self._key(), max_retries=0,
                                          timeout=self.timeout,
                                          http_client=openai.DefaultAsyncHttpx2Client(limits=limits,
                                                                                      timeout=self.timeout))
                       for _ in range(shards)]
            self._endpoints.append(_Endpoint(url, clients))
        self._sem = asyncio.Semaphore(self.concurrency)

    def _pick(self) -> _Endpoint:
        eps = self._endpoints
        start = next(self._rr) % len(eps)
        if self.balance == "round-robin" or len(eps) == 1:
            return eps[start]
        order = eps[start:] + eps[:start]
        return min(order, key=lambda e: e.in_flight)

    async def complete(self, messages: list[dict], params: SamplingParams) -> Completion:
        self._setup()
        attempt = 0
        while True:
            attempt += 1
            delay_hint = None
            try:
                async with self._sem:
                    ep = self._pick()
                    ep.in_flight += 1
                    try:
                        resp = await self._call(ep, messages, params)
                    finally:
                        ep.in_flight -= 1
                comp = _completion_from(resp)
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

    async def _call(self, ep: _Endpoint, messages, params: SamplingParams):
        kw: dict[str, Any] = dict(model=self.model, messages=messages, temperature=params.temperature,
                                  top_p=params.top_p, max_tokens=params.max_tokens)
        if params.seed is not None:
            kw["seed"] = params.seed
        if params.stop:
            kw["stop"] = list(params.stop)
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        return await ep.client().chat.completions.create(**kw)

    async def aclose(self) -> None:
        if self._endpoints:
            for ep in self._endpoints:
                for client in ep.clients:
                    try:
                        await client.close()
                    except Exception:
                        pass
        self._endpoints = None

    def describe(self) -> str:
        urls = ", ".join(self.base_urls)
        return f"openai:{self.model} @ {urls} (concurrency {self.concurrency})"


def _completion_from(resp) -> Completion:
    """Validate a chat completion; a body without text is a malformed (retryable) answer."""
    choices = getattr(resp, "choices", None)
    if not choices:
        raise _retryable("malformed response", "no choices in the body")
    msg = getattr(choices[0], "message", None)
    text = getattr(msg, "content", None)
    if not isinstance(text, str):
        raise _retryable("malformed response", "choice has no message content")
    usage = getattr(resp, "usage", None)
    return Completion(text=text,
                      prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                      completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
                      finish_reason=getattr(choices[0], "finish_reason", None))


def _retryable(reason: str, detail: str) -> RequestFailed:
    exc = RequestFailed(reason, detail)
    exc.retryable = True
    return exc


def _classify(exc: Exception) -> tuple[str, str, bool, float | None]:
    """(reason, detail, retryable, server-requested delay) for an exception from the client."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", "request timed out", True, None
    if isinstance(exc, openai.APIConnectionError):
        return "connection error", str(exc)[:200], True, None
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        hint = None
        try:
            ra = exc.response.headers.get("retry-after")
            hint = float(ra) if ra is not None else None
        except (TypeError, ValueError):
            hint = None
        msg = _status_message(exc)
        return f"HTTP {status}", msg, status in _RETRYABLE_STATUS or status >= 500, hint
    if isinstance(exc, (openai.APIResponseValidationError, ValueError, KeyError, TypeError, AttributeError)):
        return "malformed response", f"{type(exc).__name__}: {str(exc)[:200]}", True, None
    if isinstance(exc, openai.APIError):
        return "api error", str(exc)[:200], True, None
    raise exc


def _status_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:200]
    return str(getattr(exc, "message", exc))[:200]


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
            from prefkit.generate import load_model_and_tokenizer

            model, tok = load_model_and_tokenizer(self._model_src, self._tokenizer)
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
