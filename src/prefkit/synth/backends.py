"""Generation backends: any OpenAI-compatible server, or a local transformers model.

A backend turns one chat request (messages + sampling parameters) into one `Completion`, or
raises `RequestFailed` with a short reason once its retries are spent. Concurrency limits,
retries and load balancing live here; durability lives in `prefkit.synth.runs`.

- `OpenAIBackend`: the OpenAI chat-completions API over aiohttp against one or more base URLs
  (vLLM, `transformers serve`, Ollama, hosted APIs, Azure OpenAI), through proxies and custom CA
  bundles. Scale out by starting more servers and passing every URL: requests go to the
  least-loaded one (or round-robin). The API key comes from an environment variable (default
  OPENAI_API_KEY) or an argument and is never logged or stored (errors are redacted).
- `LocalBackend`: a transformers causal LM in this process; concurrent requests are gathered
  into padded batches for `model.generate`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import ssl
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import yarl

from prefkit import __version__
from prefkit.engines import check_engine
from prefkit.errors import ConfigError
from prefkit.generate import generate
from prefkit.models import load_causal_lm
from prefkit.synth.proxies import basic_auth, bypasses_proxy, split_credentials


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

# The transport is aiohttp, chosen by client CPU per request (benchmarks/http_client_cpu.py,
# docs/synth.md: aiohttp 0.19 ms, httpx2 1.3 ms, httpx 2.6 ms, the openai SDK 2.6 ms). It brings
# proxies from HTTP(S)_PROXY/NO_PROXY, TLS with the system or a given CA bundle, gzip/deflate
# bodies, redirects and IPv6; prefkit keeps its own retries, balancing and stdlib-json parsing.

_RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com")
_SECRET_HEADER_WORDS = ("auth", "key", "token", "secret", "cookie", "password", "signature")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}")
_REDACTED = "[REDACTED]"
_MAX_REDIRECTS = 10


class _HTTPStatus(Exception):
    def __init__(self, status: int, body: bytes, retry_after: str | None):
        self.status, self.body, self.retry_after = status, body, retry_after
        super().__init__(f"HTTP {status}")


class _Endpoint:
    """One base URL: its chat-completions URL (query kept, e.g. Azure's api-version) and load."""

    def __init__(self, url: str, api_version: str | None = None):
        self.url = url
        stripped, self.credentials = split_credentials(url.strip())
        u = urlsplit(stripped)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ConfigError(f"base URL must be http(s)://HOST[:PORT]/PATH[?QUERY], not {_redact_url(url)!r}")
        try:
            _ = u.port  # raises on an invalid port
        except ValueError:
            raise ConfigError(f"base URL {_redact_url(url)!r} has an invalid port") from None
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        query = parse_qsl(u.query, keep_blank_values=True)
        if api_version and not any(k == "api-version" for k, _ in query):
            query.append(("api-version", api_version))
        self.chat_url = urlunsplit((u.scheme, u.netloc, u.path.rstrip("/") + "/chat/completions",
                                    urlencode(query), ""))
        self.password = self.credentials[1] if self.credentials else None
        self.in_flight = 0
        self.served = 0

    @property
    def azure(self) -> bool:
        return self.host.lower().endswith(_AZURE_HOSTS)

    def __repr__(self) -> str:
        return f"_Endpoint({_redact_url(self.url)!r}, in_flight={self.in_flight})"


def _redact_url(url: str) -> str:
    """The URL with any user:password@ part replaced."""
    return re.sub(r"//[^/@]*@", f"//{_REDACTED}@", str(url))


@dataclass
class OpenAIBackend(Backend):
    """Chat completions from any OpenAI-compatible server, with our own retries and balancing.

    Transport: one aiohttp session per event loop (keep-alive pool of at most `concurrency`
    connections over all base URLs). It honours HTTP_PROXY/HTTPS_PROXY/NO_PROXY (or `proxy`),
    verifies TLS against the system store, SSL_CERT_FILE or `ca_bundle`, decodes gzip/deflate,
    follows 307/308 redirects with the POST body (secrets stay on their origin) and takes IPv6
    literals (`http://[::1]:8000/v1`). No HTTP/2: aiohttp does not offer it.
    Bodies are built and read with stdlib `json` (no typed response models).

    Auth: `Authorization: Bearer KEY`, or Azure OpenAI's `api-key: KEY` header (`auth="api-key"`;
    `auth="auto"`, the default, picks it for *.openai.azure.com and *.cognitiveservices.azure.com
    hosts). Credentials in a base URL (`http://user:pw@host/v1`) become HTTP Basic auth for that
    URL under `auth="auto"`, as requests and httpx do; they are never sent in the URL itself. A query in a base URL (Azure's `?api-version=...`) is kept; `api_version` adds one.
    `headers` are sent with every request (and override the defaults). The key, secret-looking
    header values and URL passwords are redacted from every error message, so nothing a server
    echoes back reaches a run directory.

    Retries (up to `max_retries` after the first try) on HTTP 408/409/425/429/5xx, timeouts,
    connection errors and malformed bodies, sleeping a full-jitter exponential backoff
    (uniform in [0, min(backoff_max, backoff_base * 2**attempt)]), or the server's
    Retry-After when it sends one. Other 4xx errors and TLS verification errors fail at once.
    `timeout` bounds each try (connect, send, wait and read); `connect_timeout` bounds the TCP
    and TLS connect on its own, so an unreachable server fails fast.
    """

    model: str = ""
    base_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 64
    timeout: float = 120.0
    connect_timeout: float = 10.0
    max_retries: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    balance: str = "least-loaded"  # or "round-robin"
    extra_body: dict | None = None
    headers: dict[str, str] | None = field(default=None, repr=False)
    auth: str = "auto"  # "bearer", "api-key" (Azure OpenAI), "none", or "auto"
    api_version: str | None = None
    ca_bundle: str | None = None
    proxy: str | None = field(default=None, repr=False)
    trust_env: bool = True
    # "transformers" for `transformers serve`: it decodes greedily unless the request's
    # `generation_config` (a JSON string, the one way it accepts do_sample) asks it to sample
    server: str = "openai"
    kind: ClassVar[str] = "openai"

    def __post_init__(self):
        if not self.model:
            raise ConfigError("OpenAIBackend needs a model name (--model)")
        if isinstance(self.base_urls, str):
            self.base_urls = [self.base_urls]
        if not self.base_urls:
            raise ConfigError("OpenAIBackend needs at least one base URL (--base-url)")
        if self.server not in ("openai", "transformers"):
            raise ConfigError(f"server must be 'openai' or 'transformers', not {self.server!r}")
        if self.balance not in ("least-loaded", "round-robin"):
            raise ConfigError(f"balance must be 'least-loaded' or 'round-robin', not {self.balance!r}")
        if self.auth not in ("auto", "bearer", "api-key", "none"):
            raise ConfigError(f"auth must be 'auto', 'bearer', 'api-key' or 'none', not {self.auth!r}")
        if self.concurrency < 1:
            raise ConfigError("concurrency must be >= 1")
        if not self.timeout > 0 or not self.connect_timeout > 0:
            raise ConfigError("timeout and connect_timeout must be > 0 seconds")
        if self.ca_bundle is not None and not os.path.exists(self.ca_bundle):
            raise ConfigError(f"CA bundle {self.ca_bundle} does not exist (ca_bundle / --ca-bundle)")
        for name, value in (self.headers or {}).items():
            if not isinstance(name, str) or not isinstance(value, str) or "\n" in name + value or "\r" in name + value:
                raise ConfigError(f"header {name!r}: name and value must be strings on one line")
        # Validate the URLs now, so a typo fails before any work starts.
        self._endpoint_specs = [_Endpoint(url, self.api_version) for url in self.base_urls]
        self._endpoints: list[_Endpoint] | None = None
        self._session = None
        self._loop = None
        self._sem: asyncio.Semaphore | None = None
        self._rr = itertools.count()
        self._rng = random.Random()

    def identity(self) -> dict[str, Any]:
        # Base URLs, headers and transport settings are deliberately not part of the identity:
        # adding servers (or a proxy) must not invalidate a run's finished requests.
        return {"backend": self.kind, "model": self.model, "extra_body": self.extra_body or None}

    def _key(self) -> str:
        return self.api_key or os.environ.get(self.api_key_env) or "EMPTY"

    def _secrets(self) -> list[str]:
        """Strings that must never be written anywhere: the key, secret-looking header values and
        URL passwords (longest first, so a secret containing another is replaced whole)."""
        out = [self._key()] if self._key() != "EMPTY" else []
        for name, value in (self.headers or {}).items():
            if any(w in name.lower() for w in _SECRET_HEADER_WORDS):
                out.append(value)
                out.extend(value.split()[1:])  # "Bearer XYZ" -> also XYZ alone
        out += [ep.password for ep in self._endpoint_specs if ep.password]
        out += [basic_auth(*ep.credentials).split()[1] for ep in self._endpoint_specs if ep.credentials]

        for proxy in [self.proxy, *getattr(self, "_proxies", {}).values()]:
            pw = urlsplit(proxy).password if proxy else None
            if pw:
                out.append(pw)
        return sorted({s for s in out if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` with every secret this backend knows (and any Bearer/Basic credential) replaced."""
        for s in self._secrets():
            text = text.replace(s, _REDACTED)
        return _BEARER.sub(lambda m: f"{m.group(1)} {_REDACTED}", _redact_url(text))

    def _request_headers(self, endpoint: _Endpoint) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json",
             "User-Agent": f"prefkit/{__version__}"}
        auth = self.auth
        if auth == "auto":
            auth = "url" if endpoint.credentials else "api-key" if endpoint.azure else "bearer"
        if auth == "url":
            h["Authorization"] = basic_auth(*endpoint.credentials)
        elif auth == "bearer":
            h["Authorization"] = f"Bearer {self._key()}"
        elif auth == "api-key":
            h["api-key"] = self._key()
        for name, value in (self.headers or {}).items():
            for k in [k for k in h if k.lower() == name.lower()]:
                del h[k]
            h[name] = value
        return h

    def _setup(self) -> None:
        loop = asyncio.get_running_loop()
        if self._session is not None and self._loop is loop:
            return

        # First use, or a new event loop: a session belongs to the loop that opened it. An
        # abandoned session of an earlier (closed) loop is dropped without touching that loop.
        self._loop = loop
        ssl_ctx = ssl.create_default_context(cafile=self.ca_bundle)  # SSL_CERT_FILE/DIR apply too
        connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0, ssl=ssl_ctx)
        # trust_env=False: we resolve HTTP(S)_PROXY/NO_PROXY once per base URL in _proxy_for
        # (aiohttp's own lookup runs in a thread for every request: twice the client CPU).
        self._session = aiohttp.ClientSession(
            connector=connector, trust_env=False, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout))
        self._endpoints = [_Endpoint(url, self.api_version) for url in self.base_urls]
        self._headers = {id(ep): self._request_headers(ep) for ep in self._endpoints}
        self._proxies = {id(ep): self._proxy_for(ep) for ep in self._endpoints}
        self._yurls = {id(ep): yarl.URL(ep.chat_url, encoded=True) for ep in self._endpoints}  # parsed once
        self._sem = asyncio.Semaphore(self.concurrency)

    def _proxy_for(self, ep: _Endpoint, chat_url: str | None = None) -> str | None:
        """`proxy`, else (with `trust_env`) the HTTP_PROXY/HTTPS_PROXY for the URL's scheme
        unless NO_PROXY names its host (either case of the variable names; CIDR ranges, host:port
        and leading dots as requests and httpx read them: prefkit.synth.proxies)."""

        if self.proxy:
            return self.proxy
        if not self.trust_env:
            return None
        proxies = urllib.request.getproxies_environment()
        scheme = (chat_url or ep.chat_url).split(":", 1)[0]
        proxy = proxies.get(scheme)
        if not proxy or bypasses_proxy(ep.host, ep.port, proxies.get("no")):
            return None
        if "://" not in proxy:
            proxy = f"http://{proxy}"
        if not proxy.startswith(("http://", "https://")):
            raise ConfigError(f"{scheme.upper()}_PROXY={_redact_url(proxy)!r}: only http:// and https:// "
                              "proxies are supported")
        return proxy

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
        if self.server == "transformers" and params.temperature > 0:
            body["generation_config"] = json.dumps({"do_sample": True, "temperature": params.temperature,
                                                    "top_p": params.top_p, "top_k": 0})
        if self.extra_body:
            body.update(self.extra_body)
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    async def _post(self, ep: _Endpoint, body: bytes) -> bytes:
        """One try: the 2xx body, or _HTTPStatus / an aiohttp or timeout error. The session's
        total timeout bounds each hop (no asyncio.timeout, which Python 3.10 lacks), and a
        deadline bounds the try when it follows redirects."""
        url, headers, proxy = self._yurls[id(ep)], self._headers[id(ep)], self._proxies[id(ep)]
        timeout, deadline = self._session.timeout, None  # (an explicit None would mean no timeout)
        for _hop in range(_MAX_REDIRECTS + 1):
            async with self._session.post(url, data=body, headers=headers, proxy=proxy, allow_redirects=False,
                                          timeout=timeout) as resp:
                payload = await resp.read()
                status, location = resp.status, resp.headers.get("Location")
                if 200 <= status < 300:
                    return payload
                if status not in (307, 308) or not location:
                    if status in (301, 302, 303) and location:
                        payload = (f"the server redirects to {location} with HTTP {status}, which turns a POST "
                                   "into a GET; use that URL as the base URL").encode()
                    raise _HTTPStatus(status, payload, resp.headers.get("Retry-After"))

            if deadline is None:  # the first redirect: the rest of the try shares one deadline
                deadline = asyncio.get_running_loop().time() + self.timeout
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise asyncio.TimeoutError()
            timeout = aiohttp.ClientTimeout(total=remaining, sock_connect=self.connect_timeout)
            new = url.join(yarl.URL(location))
            if new.scheme not in ("http", "https"):
                raise _HTTPStatus(status, f"redirect to a non-HTTP URL {new.scheme}:...".encode(), None)
            if (new.scheme, new.host, new.port) != (url.scheme, url.host, url.port):
                # Another origin never sees the key or secret-looking headers (as browsers and
                # other HTTP clients do for Authorization); its proxy follows the environment.
                headers = {k: v for k, v in headers.items()
                           if not any(w in k.lower() for w in _SECRET_HEADER_WORDS)}
                proxy = self._proxy_for(_Endpoint(str(new)), chat_url=str(new))
            url = new
        raise _HTTPStatus(status, f"more than {_MAX_REDIRECTS} redirects".encode(), None)

    async def complete(self, messages: list[dict], params: SamplingParams) -> Completion:
        self._setup()
        body = self._body(messages, params)
        attempt = 0
        while True:
            attempt += 1
            delay = None
            try:
                async with self._sem:
                    ep = self._pick()
                    ep.in_flight += 1
                    try:
                        payload = await self._post(ep, body)
                    finally:
                        ep.in_flight -= 1
                comp = _completion_from(payload)
                comp.attempts = attempt
                ep.served += 1
                return comp
            except RequestFailed as exc:
                reason, detail, retryable = exc.reason, exc.detail, getattr(exc, "retryable", False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # classified below
                reason, detail, retryable, delay = _classify(exc)
            detail = self.redact(detail)
            if not retryable or attempt > self.max_retries:
                tries = f" after {attempt} tries" if attempt > 1 else ""
                raise RequestFailed(self.redact(reason), f"{detail}{tries}", attempts=attempt)
            cap = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
            wait = delay if delay is not None else self._rng.uniform(0, cap)
            await asyncio.sleep(min(wait, self.backoff_max))

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._loop is asyncio.get_running_loop():
            await session.close()
        self._endpoints = None
        self._loop = None

    def describe(self) -> str:
        urls = ", ".join(_redact_url(u) for u in self.base_urls)
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
    """(reason, detail, retryable, server-requested delay) for an exception from one try."""

    def what(e: BaseException) -> str:
        return f"{type(e).__name__}: {str(e)[:200]}"

    if isinstance(exc, _HTTPStatus):
        try:
            hint = float(exc.retry_after) if exc.retry_after is not None else None
        except (TypeError, ValueError):
            hint = None
        return f"HTTP {exc.status}", _status_message(exc), exc.status in _RETRYABLE_STATUS or exc.status >= 500, hint
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        # the proxy answered the CONNECT itself (403: not allowed there, 407: it wants credentials)
        why = {403: "the proxy does not allow this host (check NO_PROXY / the proxy's rules)",
               407: "the proxy wants credentials: http://user:password@proxy:port in HTTPS_PROXY"}.get(exc.status, "")
        return ("proxy refused", f"the proxy answered HTTP {exc.status} {exc.message or ''}".rstrip()
                + (f": {why}" if why else ""), exc.status >= 500, None)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "connect timeout", "no connection within connect_timeout", True, None
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", "request timed out", True, None
    if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
        return ("TLS error", f"{what(exc)} (give the server's CA with ca_bundle / --ca-bundle or SSL_CERT_FILE)",
                False, None)
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects", what(exc), False, None
    if isinstance(exc, (aiohttp.InvalidURL, aiohttp.NonHttpUrlRedirectClientError)):
        return "bad URL", what(exc), False, None
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ContentTypeError)):
        return "malformed response", what(exc), True, None
    if isinstance(exc, (aiohttp.ClientError, OSError, EOFError)):
        return "connection error", what(exc), True, None
    if isinstance(exc, (ValueError, KeyError, TypeError, AttributeError)):
        return "malformed response", what(exc), True, None
    return f"unexpected {type(exc).__name__}", str(exc)[:300], False, None


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
    `engine` picks what decodes, as in `prefkit.generate.generate` (docs/generate.md).
    """

    kind = "local"

    def __init__(self, model, tokenizer=None, *, batch_size: int = 16, device: str | None = None,
                 name: str | None = None, conditioning="auto", seed: int = 0, engine: str | None = None):

        if not isinstance(model, (str, os.PathLike)) and tokenizer is None:
            raise ConfigError("LocalBackend with a loaded model needs its tokenizer")
        self._model_src = model
        self._tokenizer = tokenizer
        # which engine decodes (prefkit.engines; None: the default, checked now so that a missing
        # one is a ConfigError before any request)
        self.engine = None if engine in (None, "auto") else check_engine(engine)
        self.batch_size = batch_size
        # The batch loop takes up to 4 batches' worth of waiting requests and groups them by
        # sampling parameters (an evaluation's n samples differ in seed: n groups). Twice that many
        # in flight keeps each group a full batch: with 2x, 4 seeds split 256 requests into batches
        # of 64 and a toy goal curve took 9.9 s instead of 6.8 s at 8x (same samples).
        self.concurrency = max(8 * batch_size, 1)
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

        model, tok = self._load()
        seed = params.seed if params.seed is not None else self._rng.randrange(2**31)
        texts = generate(model, batch_messages, tokenizer=tok, n=1, temperature=params.temperature,
                         top_p=params.top_p, max_new_tokens=params.max_tokens, batch_size=len(batch_messages),
                         seed=seed, conditioning=self.conditioning, progress=False, engine=self.engine)
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
