"""Where a user of the synth/score/eval commands looks when requests fail, and the HTTP habits they
bring from requests/httpx, each tried on a real local socket (127.0.0.1):

- credentials in a base URL become HTTP Basic auth (never sent in the URL, redacted everywhere);
- NO_PROXY honours CIDR ranges, host:port and leading dots;
- the console shows the server's own reason for a failure kind (a wrong model name's 400);
- a server that decodes greedily (identical samples at temperature > 0) gets a hint;
- `--fresh` discards a run directory's recorded results, `--strict` exits 1 on any failure.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from prefkit.cli import main
from prefkit.synth.backends import RequestFailed
from prefkit.synth.proxies import basic_auth, bypasses_proxy, split_credentials
from prefkit.testing import FakeServer, echo_responder

from test_http_features import OK, Upstream, complete, resp

SECRET = "s3cret-pass-9876"


@pytest.fixture(autouse=True)
def _no_env_proxy_or_key(monkeypatch):
    for var in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)


class ThreadedUpstream:
    """An `Upstream` on its own event loop in a thread, for the CLI (which runs its own loop)."""

    def __init__(self, script):
        self.up = Upstream(script)
        self._ready = threading.Event()

    def __enter__(self):
        def run():
            async def main_():
                async with self.up:
                    self._stop = asyncio.Event()
                    self._loop = asyncio.get_running_loop()
                    self._ready.set()
                    await self._stop.wait()

            asyncio.run(main_())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.up.port}/v1"


def _prompts(tmp_path, n=3):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Name a colour number {i}."}) + "\n" for i in range(n)))
    return path


# ---- URL credentials ---------------------------------------------------------------------------

def test_split_credentials_decodes_percent_escapes():
    url, creds = split_credentials("http://al%40ice:p%3Aw@host:8000/v1?x=1")
    assert url == "http://host:8000/v1?x=1" and creds == ("al@ice", "p:w")
    assert split_credentials("http://host/v1") == ("http://host/v1", None)


def test_url_credentials_become_basic_auth_and_are_redacted():
    echo = json.dumps({"error": {"message": f"bad login alice:{SECRET} / {basic_auth('alice', SECRET)}"}}).encode()

    async def go():
        async with Upstream([resp(200, OK), resp(403, echo)]) as up:
            url = f"http://alice:{SECRET}@127.0.0.1:{up.port}/v1"
            ok = await complete(url, api_key=None)
            bad = await complete(url, api_key=None)
            return ok, bad, up.seen

    ok, bad, seen = asyncio.run(go())
    assert not isinstance(ok, RequestFailed), ok   # it used to fail as "malformed response" under --auth auto
    line, headers, _ = seen[0]
    assert headers["authorization"] == basic_auth("alice", SECRET)
    assert line.startswith("POST /v1/chat/completions ") and SECRET not in line
    assert isinstance(bad, RequestFailed) and bad.reason == "HTTP 403"
    assert SECRET not in str(bad) and basic_auth("alice", SECRET).split()[1] not in str(bad)
    assert "bad login" in str(bad)


def test_an_explicit_auth_mode_wins_over_url_credentials():
    async def go():
        async with Upstream([resp(200, OK)]) as up:
            await complete(f"http://alice:{SECRET}@127.0.0.1:{up.port}/v1", auth="bearer")
            return up.seen

    assert asyncio.run(go())[0][1]["authorization"] == "Bearer sk-test-key-1234"


# ---- NO_PROXY ----------------------------------------------------------------------------------

@pytest.mark.parametrize("entry, host, port, bypass", [
    ("127.0.0.0/8", "127.0.0.1", 8000, True),
    ("10.0.0.0/8", "127.0.0.1", 8000, False),
    ("::1/128", "::1", 8000, True),
    ("127.0.0.1:8000", "127.0.0.1", 8000, True),
    ("127.0.0.1:9000", "127.0.0.1", 8000, False),
    (".example.com", "api.example.com", 443, True),
    (".example.com", "example.com", 443, True),
    ("example.com", "api.example.com", 443, True),
    ("example.com", "badexample.com", 443, False),
    ("*.example.com", "a.b.example.com", 443, True),
    ("llm.internal:8000", "LLM.internal", 8000, True),
    ("[::1]:8000", "::1", 8000, True),
    ("*", "anything.org", 1, True),
    ("a.org, 127.0.0.0/8 b.org", "127.5.5.5", 1, True),
    ("127.0.0.0/8", "localhost", 80, False),   # names are not resolved to match a CIDR (as requests)
])
def test_no_proxy_entries(entry, host, port, bypass):
    assert bypasses_proxy(host, port, entry) is bypass


def test_no_proxy_cidr_and_host_port_bypass_a_dead_proxy(monkeypatch):
    """HTTP_PROXY points at a closed port: a request only succeeds when NO_PROXY sends it direct."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()

    async def go():
        async with Upstream([resp(200, OK)]) as up:
            url = f"http://127.0.0.1:{up.port}/v1"
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
            out = {}
            for no_proxy in ("127.0.0.0/8", f"127.0.0.1:{up.port}", "127.0.0.1:1", ".localhost,127.0.0.1"):
                monkeypatch.setenv("NO_PROXY", no_proxy)
                out[no_proxy] = await complete(url, connect_timeout=2)
            monkeypatch.setenv("NO_PROXY", ".localhost")
            out["localhost"] = await complete(f"http://localhost:{up.port}/v1", connect_timeout=2)
            return out, up.port

    out, port = asyncio.run(go())
    assert not isinstance(out["127.0.0.0/8"], RequestFailed), out["127.0.0.0/8"]
    assert not isinstance(out[f"127.0.0.1:{port}"], RequestFailed)
    assert isinstance(out["127.0.0.1:1"], RequestFailed) and out["127.0.0.1:1"].reason == "connection error"
    assert not isinstance(out[".localhost,127.0.0.1"], RequestFailed)
    assert not isinstance(out["localhost"], RequestFailed), out["localhost"]


# ---- failures explained on the console -----------------------------------------------------------

def test_a_wrong_model_name_shows_the_servers_reason(tmp_path, capsys):
    body = json.dumps({"error": {"message": "The model `nope` does not exist."}}).encode()
    with ThreadedUpstream([resp(400, body)]) as srv:
        rc = main(["synth", "rlcd", str(_prompts(tmp_path)), "-o", str(tmp_path / "p.jsonl"), "--base-url",
                   srv.base_url, "--model", "nope", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "HTTP 400" in err and "The model `nope` does not exist." in err


def test_some_failures_show_their_reason_and_strict_exits_1(tmp_path, capsys):
    def flaky(body):
        if "number 1" in json.dumps(body["messages"]):
            raise RuntimeError("CUDA out of memory on this prompt")
        return echo_responder(body)

    argv = ["synth", "rlcd", str(_prompts(tmp_path)), "-o", str(tmp_path / "p.jsonl"), "--model", "m",
            "--max-retries", "0", "--no-progress"]
    with FakeServer(flaky) as srv:
        assert main(argv + ["--base-url", srv.base_url]) == 0        # partial failures: exit 0 by default
        out = capsys.readouterr().out
        assert "failed      2  HTTP 500" in out and "first: responder failed: CUDA out of memory" in out
        assert main(argv + ["--base-url", srv.base_url, "--strict"]) == 1
        err = capsys.readouterr().err
        assert "2 of 6 requests failed (--strict)" in err


def test_identical_samples_at_temperature_above_0_get_a_greedy_hint(tmp_path, capsys):
    """West-of-N asks each prompt 4 times at temperature 1; the fake server answers deterministically,
    as a server that ignores the temperature does."""
    with FakeServer() as srv:
        rc = main(["synth", "west-of-n", str(_prompts(tmp_path)), "-o", str(tmp_path / "w.jsonl"), "-n", "3",
                   "--base-url", srv.base_url, "--model", "m", "--judge-model", "m", "--no-progress",
                   "--allow-empty"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "hint: 3 of 3 prompts sampled several times at temperature 1 got identical samples" in out
    assert "decode greedily" in out


def test_fresh_discards_the_run_directory_and_refuses_a_foreign_one(tmp_path, capsys):
    argv = ["synth", "rlcd", str(_prompts(tmp_path)), "-o", str(tmp_path / "p.jsonl"), "--model", "m",
            "--no-progress"]
    with FakeServer() as srv:
        argv += ["--base-url", srv.base_url]
        assert main(argv) == 0
        assert main(argv) == 0
        assert "6 resumed from the run directory" in capsys.readouterr().out
        assert main(argv + ["--fresh"]) == 0
        cap = capsys.readouterr()
        assert "0 resumed from the run directory, 6 done now" in cap.out
        assert "--fresh: discarded the recorded results in" in cap.err
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        assert main(argv + ["--fresh", "--run-dir", str(tmp_path / "mine")]) == 2
        assert "holds files a run directory does not (notes.txt)" in capsys.readouterr().err
        assert (tmp_path / "mine" / "notes.txt").exists()


def test_a_proxy_that_refuses_connect_is_named_with_its_answer(monkeypatch):
    """HTTPS through HTTPS_PROXY: the proxy answers the CONNECT with 403. The reason says it was the
    proxy and what it said (it used to be a bare, retried "connection error")."""
    async def refuse(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def go():
        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        try:
            return await complete("https://llm.invalid/v1", max_retries=3)
        finally:
            server.close()

    out = asyncio.run(go())
    assert isinstance(out, RequestFailed) and out.reason == "proxy refused"
    assert "HTTP 403" in out.detail and "NO_PROXY" in out.detail
    assert out.attempts == 1   # a refusal is not retried
