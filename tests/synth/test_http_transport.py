"""OpenAIBackend's HTTP transport (aiohttp) against a raw asyncio server: chunked bodies,
Retry-After, Connection: close, non-retryable 4xx, stale keep-alive connections, and the API key
on the wire only (never in repr or errors). The transport's other features are tested in
test_http_features.py."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from prefkit.synth.backends import OpenAIBackend, RequestFailed, SamplingParams

P = SamplingParams(temperature=0.0, max_tokens=8)
OK = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()


async def _serve(script):
    """A server whose i-th request gets `script[i]` (raw bytes, or None = close silently)."""
    seen: list[tuple[dict, bytes]] = []

    async def handle(reader, writer):
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                seen.append((headers, body))
                answer = script[min(len(seen) - 1, len(script) - 1)]
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", seen


def _resp(status: int, body: bytes, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body


def _chunked(body: bytes) -> bytes:
    a, b = body[:10], body[10:]
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            + f"{len(a):x}\r\n".encode() + a + b"\r\n" + f"{len(b):x};ext=1\r\n".encode() + b + b"\r\n0\r\n\r\n")


def _run(script, **kw):
    async def go():
        server, url, seen = await _serve(script)
        be = OpenAIBackend(model="m", base_urls=[url], api_key="sk-SECRET", concurrency=2,
                           backoff_base=0.01, backoff_max=5.0, **kw)
        try:
            t0 = time.monotonic()
            out = []
            for _ in range(2):
                try:
                    out.append(await be.complete([{"role": "user", "content": "héllo"}], P))
                except RequestFailed as exc:
                    out.append(exc)
            return out, seen, time.monotonic() - t0, be
        finally:
            await be.aclose()
            server.close()

    return asyncio.run(go())


def test_chunked_body_keepalive_and_key_on_the_wire_only():
    out, seen, _, be = _run([_chunked(OK)])
    assert [c.text for c in out] == ["hi", "hi"]
    assert out[0].finish_reason == "length" and out[0].prompt_tokens == 3 and out[0].completion_tokens == 1
    assert seen[0][0]["authorization"] == "Bearer sk-SECRET"
    body = json.loads(seen[0][1])
    assert body["messages"][0]["content"] == "héllo" and body["model"] == "m" and body["max_tokens"] == 8
    assert "SECRET" not in repr(be)


def test_retry_after_is_honoured_and_4xx_fails_at_once():
    err = json.dumps({"error": {"message": "slow down"}}).encode()
    out, seen, dt, _ = _run([_resp(429, err, "Retry-After: 0.3\r\n"), _resp(200, OK), _resp(400, b'{"error": "bad"}')])
    assert out[0].text == "hi" and out[0].attempts == 2 and dt >= 0.3
    assert isinstance(out[1], RequestFailed) and out[1].reason == "HTTP 400" and out[1].attempts == 1
    assert "SECRET" not in str(out[1])


def test_connection_close_and_dropped_connections_are_retried():
    # 1: answer then close; 2: drop without answering (retried); 3..: answers
    out, seen, _, _ = _run([_resp(200, OK, "Connection: close\r\n"), None, _resp(200, OK)])
    assert [c.text for c in out] == ["hi", "hi"]


def test_timeout_and_malformed_bodies_fail_with_their_reason():
    out, _, _, _ = _run([_resp(200, b'{"choices": [{"message": {"cont')], max_retries=1)
    assert all(isinstance(o, RequestFailed) and o.reason == "malformed response" for o in out)
    assert out[0].attempts == 2

    async def go():
        async def hang(reader, writer):
            await asyncio.sleep(5)

        server = await asyncio.start_server(hang, "127.0.0.1", 0)
        be = OpenAIBackend(model="m", base_urls=[f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"],
                           timeout=0.2, max_retries=0)
        try:
            with pytest.raises(RequestFailed, match="timeout"):
                await be.complete([{"role": "user", "content": "x"}], P)
        finally:
            await be.aclose()
            server.close()

    asyncio.run(go())
