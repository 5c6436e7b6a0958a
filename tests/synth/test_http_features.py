"""What a user of OpenAIBackend needs from its HTTP transport, each tried for real on a local
socket: an HTTP proxy from HTTP_PROXY, gzip-encoded answers, a 307 redirect, an IPv6 base URL,
Azure OpenAI (api-version query and api-key header), extra headers, a self-signed server behind a
custom CA bundle, a separate connect timeout, no `asyncio.timeout` (Python 3.10), and an API key
echoed back in an error body that must not reach any file a run writes.

The hand-written client prefkit had before failed every one of these (DNS error through a proxy,
"malformed response" on gzip and on 307, `Host: ::1`, api-version dropped and `Bearer` sent to
Azure, no header option, no CA option, connects bounded only by the 120 s try, AttributeError on
Python 3.10, the echoed key stored verbatim)."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import shutil
import socket
import ssl
import subprocess
import types
from pathlib import Path

import pytest

from prefkit.synth.backends import OpenAIBackend, RequestFailed, SamplingParams
from prefkit.synth.runs import Request, Run

P = SamplingParams(temperature=0.0, max_tokens=8)
MSGS = [{"role": "user", "content": "héllo"}]
OK = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()


def resp(status: int, body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def read_request(reader):
    """(request line, headers with lower-case names, body) of one HTTP/1.1 request, or None at EOF."""
    line = await reader.readline()
    if not line:
        return None
    headers = {}
    while (h := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return line.decode("latin-1").strip(), headers, body


class Upstream:
    """A scripted server: the i-th request gets script[i] (the last one repeats)."""

    def __init__(self, script, host="127.0.0.1", ssl_ctx=None):
        self.script, self.host, self.ssl_ctx = script, host, ssl_ctx
        self.seen: list[tuple[str, dict, bytes]] = []
        self.port_wanted = 0

    async def __aenter__(self):
        async def handle(reader, writer):
            try:
                while (req := await read_request(reader)) is not None:
                    self.seen.append(req)
                    writer.write(self.script[min(len(self.seen), len(self.script)) - 1])
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(handle, self.host, self.port_wanted, ssl=self.ssl_ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


def complete(url, **kw):
    """One request through a fresh backend; the Completion or the RequestFailed."""
    kw.setdefault("api_key", "sk-test-key-1234")
    kw.setdefault("max_retries", 0)
    be = OpenAIBackend(model="m", base_urls=[url], **kw)

    async def go():
        try:
            return await be.complete(MSGS, P)
        except RequestFailed as exc:
            return exc
        finally:
            await be.aclose()

    return go()


def test_gzip_encoded_answer_is_decoded():
    async def go():
        async with Upstream([resp(200, gzip.compress(OK), "Content-Encoding: gzip\r\n")]) as up:
            return await complete(f"http://127.0.0.1:{up.port}/v1"), up.seen

    out, seen = asyncio.run(go())
    assert not isinstance(out, RequestFailed), out
    assert out.text == "hi" and out.attempts == 1
    assert "gzip" in seen[0][1]["accept-encoding"]


def test_307_redirect_is_followed_with_the_post_body():
    async def go():
        async with Upstream([resp(307, b"", "Location: /v2/chat/completions\r\n"), resp(200, OK)]) as up:
            out = await complete(f"http://127.0.0.1:{up.port}/v1")
            return out, up.seen

    out, seen = asyncio.run(go())
    assert not isinstance(out, RequestFailed), out
    assert out.text == "hi" and out.attempts == 1
    assert [s[0] for s in seen] == ["POST /v1/chat/completions HTTP/1.1", "POST /v2/chat/completions HTTP/1.1"]
    assert seen[1][2] == seen[0][2] and json.loads(seen[1][2])["messages"] == MSGS


def _ipv6_loopback(port: int = 0) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    s = socket.socket(socket.AF_INET6)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::1", port))
    except OSError as exc:
        pytest.skip(f"cannot bind [::1]:{port} here ({exc})")
    finally:
        s.close()


@pytest.mark.parametrize("default_port", [False, True], ids=["own-port", "port-80"])
def test_ipv6_base_url_sends_a_bracketed_host(default_port):
    _ipv6_loopback(80 if default_port else 0)

    async def go():
        up = Upstream([resp(200, OK)], host="::1")
        if default_port:
            up.port_wanted = 80
        async with up:
            url = "http://[::1]/v1" if default_port else f"http://[::1]:{up.port}/v1"
            return await complete(url), up.seen, up.port

    out, seen, port = asyncio.run(go())
    assert not isinstance(out, RequestFailed), out
    assert seen[0][1]["host"] == ("[::1]" if default_port else f"[::1]:{port}")


def test_azure_keeps_api_version_and_sends_api_key_header():
    async def go():
        async with Upstream([resp(200, OK)]) as up:
            base = f"http://127.0.0.1:{up.port}/openai/deployments/my-gpt?api-version=2024-10-21"
            a = await complete(base, auth="api-key")
            b = await complete(f"http://127.0.0.1:{up.port}/openai/deployments/my-gpt", auth="api-key",
                               api_version="2024-06-01")
            return a, b, up.seen

    a, b, seen = asyncio.run(go())
    assert a.text == "hi" and b.text == "hi"
    assert seen[0][0] == "POST /openai/deployments/my-gpt/chat/completions?api-version=2024-10-21 HTTP/1.1"
    assert seen[1][0] == "POST /openai/deployments/my-gpt/chat/completions?api-version=2024-06-01 HTTP/1.1"
    for _, headers, _ in seen:
        assert headers["api-key"] == "sk-test-key-1234" and "authorization" not in headers


def test_azure_hosts_get_the_api_key_header_by_default():
    # auth="auto" decides by host name; an Azure host cannot be reached from a test, so this
    # checks the headers the backend would send to one and to any other host.
    be = OpenAIBackend(model="m", base_urls=["https://res.openai.azure.com/openai/deployments/d?api-version=x",
                                             "http://127.0.0.1:8000/v1"], api_key="k-123456")
    azure, other = (be._request_headers(ep) for ep in be._endpoint_specs)
    assert azure["api-key"] == "k-123456" and "Authorization" not in azure
    assert other["Authorization"] == "Bearer k-123456" and "api-key" not in other


def test_extra_headers_are_sent_and_override_defaults():
    async def go():
        async with Upstream([resp(200, OK)]) as up:
            out = await complete(f"http://127.0.0.1:{up.port}/v1",
                                 headers={"X-Trace-Id": "run-7", "OpenAI-Organization": "org-1",
                                          "User-Agent": "my-pipeline/2"})
            return out, up.seen[0][1]

    out, headers = asyncio.run(go())
    assert out.text == "hi"
    assert headers["x-trace-id"] == "run-7" and headers["openai-organization"] == "org-1"
    assert headers["user-agent"] == "my-pipeline/2"
    assert headers["authorization"] == "Bearer sk-test-key-1234"


async def _forwarding_proxy(upstream_port: int, log: list[str]):
    """A plain HTTP forward proxy: records each absolute-form request line and forwards the
    request to 127.0.0.1:upstream_port, whatever host the URL names."""

    async def handle(reader, writer):
        up_r, up_w = await asyncio.open_connection("127.0.0.1", upstream_port)
        try:
            while (req := await read_request(reader)) is not None:
                line, headers, body = req
                log.append(line)
                method, target, version = line.split(" ")
                path = "/" + target.split("://", 1)[1].split("/", 1)[1]
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items() if not k.startswith("proxy-"))
                up_w.write(f"{method} {path} {version}\r\n{head}\r\n".encode() + body)
                status = await up_r.readline()
                rest, n = b"", 0
                while (h := await up_r.readline()) not in (b"\r\n", b""):
                    rest += h
                    if h.lower().startswith(b"content-length:"):
                        n = int(h.split(b":")[1])
                writer.write(status + rest + b"\r\n" + await up_r.readexactly(n))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            up_w.close()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_http_proxy_from_the_environment(monkeypatch):
    # `llm.invalid` does not resolve (RFC 2606): only a client that uses the proxy can reach it.
    for var in ("NO_PROXY", "no_proxy", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    async def go():
        async with Upstream([resp(200, OK)]) as up:
            log: list[str] = []
            proxy, pport = await _forwarding_proxy(up.port, log)
            try:
                url = f"http://llm.invalid:{up.port}/v1"
                monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{pport}")
                via_proxy = await complete(url)
                direct = await complete(url, trust_env=False)
                monkeypatch.setenv("NO_PROXY", "llm.invalid")
                bypassed = await complete(url)
                return via_proxy, direct, bypassed, log, up.seen, up.port
            finally:
                proxy.close()

    via_proxy, direct, bypassed, log, seen, port = asyncio.run(go())
    assert not isinstance(via_proxy, RequestFailed), via_proxy
    assert via_proxy.text == "hi"
    assert log == [f"POST http://llm.invalid:{port}/v1/chat/completions HTTP/1.1"]
    assert seen[0][1]["authorization"] == "Bearer sk-test-key-1234"
    # without the proxy the name does not resolve: the failure a user behind a proxy would see
    assert isinstance(direct, RequestFailed) and direct.reason == "connection error"
    assert isinstance(bypassed, RequestFailed) and bypassed.reason == "connection error"


def _self_signed_cert(tmp: Path) -> tuple[Path, Path]:
    """A CA-less self-signed certificate for 127.0.0.1 (cryptography if installed, else openssl)."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import ipaddress
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE"],
                       check=True, capture_output=True)
        return cert, key
    pk = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pk.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
         .sign(pk, hashes.SHA256()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return cert, key


def test_custom_ca_bundle_and_ssl_cert_file(tmp_path, monkeypatch):
    cert, key = _self_signed_cert(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    async def go():
        async with Upstream([resp(200, OK)], ssl_ctx=ctx) as up:
            url = f"https://127.0.0.1:{up.port}/v1"
            untrusted = await complete(url, max_retries=3)
            trusted = await complete(url, ca_bundle=str(cert))
            monkeypatch.setenv("SSL_CERT_FILE", str(cert))
            from_env = await complete(url)
            return untrusted, trusted, from_env

    untrusted, trusted, from_env = asyncio.run(go())
    assert isinstance(untrusted, RequestFailed) and untrusted.reason == "TLS error"
    assert untrusted.attempts == 1  # a certificate problem is not retried
    assert "ca_bundle" in untrusted.detail
    assert not isinstance(trusted, RequestFailed), trusted
    assert trusted.text == "hi" and from_env.text == "hi"


def test_connect_timeout_is_separate_from_the_request_timeout():
    # A listener whose accept queue is full: Linux drops further SYNs, so a connect hangs.
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    port = lsock.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
        pytest.skip("this kernel accepts connections beyond the listen backlog")
    except (TimeoutError, socket.timeout):
        pass
    finally:
        probe.close()
    try:
        out = asyncio.run(complete(f"http://127.0.0.1:{port}/v1", timeout=600, connect_timeout=0.3))
    finally:
        for s in fillers + [lsock]:
            s.close()
    assert isinstance(out, RequestFailed) and out.reason == "connect timeout", out


class _AsyncioWithoutTimeout(types.ModuleType):
    """`asyncio` as Python 3.10 has it, for prefkit's module only: no `asyncio.timeout` (aiohttp
    itself picks its timer by Python version, so the real module is left alone)."""

    def __getattr__(self, name):
        if name == "timeout":
            raise AttributeError("module 'asyncio' has no attribute 'timeout'")
        return getattr(asyncio, name)


def test_works_without_asyncio_timeout_as_on_python_310(monkeypatch):
    """Python 3.10 has no `asyncio.timeout`; the old client called it on every try (and
    retried the AttributeError as a "malformed response")."""
    import prefkit.synth.backends as backends

    monkeypatch.setattr(backends, "asyncio", _AsyncioWithoutTimeout("asyncio"))

    async def go():
        async with Upstream([resp(200, OK)]) as up:
            ok = await complete(f"http://127.0.0.1:{up.port}/v1")

        async def hang(reader, writer):
            await asyncio.sleep(30)

        server = await asyncio.start_server(hang, "127.0.0.1", 0)
        try:
            slow = await complete(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", timeout=0.3)
        finally:
            server.close()
        return ok, slow

    ok, slow = asyncio.run(go())
    assert not isinstance(ok, RequestFailed), ok
    assert isinstance(slow, RequestFailed) and slow.reason == "timeout"


KEY = "sk-proj-ECHOED0123456789abcdef"


def _all_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def test_a_key_echoed_in_error_bodies_is_never_written(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFKIT_TEST_KEY", KEY)
    echo_401 = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}."}}).encode()
    echo_500 = f"upstream said: Authorization: Bearer {KEY} was refused".encode()
    extra = "X-Custom-Token-0123456789"

    async def go():
        async with Upstream([resp(500, echo_500), resp(401, echo_401)]) as up:
            be = OpenAIBackend(model="m", base_urls=[f"http://127.0.0.1:{up.port}/v1"], api_key_env="PREFKIT_TEST_KEY",
                               max_retries=2, backoff_base=0.01, headers={"X-Api-Token": extra})
            reqs = [Request([{"role": "user", "content": f"q{i}"}], P, 0, "s") for i in range(3)]
            with Run(tmp_path / "run", progress=False) as run:
                recs = await run.agenerate(be, reqs)
            await be.aclose()
            assert up.seen[0][1]["authorization"] == f"Bearer {KEY}"  # the key did go on the wire
            assert be.redact(f"{KEY} {extra} Bearer abcdef1234") == "[REDACTED] [REDACTED] Bearer [REDACTED]"
            return recs

    recs = asyncio.run(go())
    assert [r["reason"] for r in recs] == ["HTTP 401"] * 3
    assert "Incorrect API key provided: [REDACTED]" in recs[0]["detail"]
    files = _all_bytes(tmp_path)
    assert files and any(p.name == "requests.jsonl" for p, _ in files)
    for path, data in files:
        assert KEY.encode() not in data, path
        assert b"ECHOED0123" not in data, path


def test_the_cli_writes_no_echoed_key(tmp_path, monkeypatch):
    from prefkit.cli import main

    echo_401 = json.dumps({"error": {"message": f"invalid key {KEY}"}}).encode()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(3)))
    monkeypatch.setenv("PREFKIT_TEST_KEY", KEY)

    async def serve_and_run():
        async with Upstream([resp(401, echo_401)]) as up:
            argv = ["synth", "rlcd", str(prompts), "-o", str(tmp_path / "pairs.jsonl"), "--base-url",
                    f"http://127.0.0.1:{up.port}/v1", "--model", "m", "--api-key-env", "PREFKIT_TEST_KEY",
                    "--no-progress"]
            rc = await asyncio.to_thread(main, argv)
            return rc, len(up.seen)

    rc, n_seen = asyncio.run(serve_and_run())
    assert n_seen == 6  # two requests per prompt, each refused once (401 is not retried)
    written = [p for p, _ in _all_bytes(tmp_path) if p != prompts]
    assert any(p.name == "requests.jsonl" for p in written), (rc, written)
    for path, data in _all_bytes(tmp_path):
        assert KEY.encode() not in data, path
    assert os.environ["PREFKIT_TEST_KEY"] == KEY


def _python310() -> str | None:
    """A Python 3.10 interpreter that can import aiohttp: $PREFKIT_PYTHON310, else python3.10."""
    for exe in (os.environ.get("PREFKIT_PYTHON310"), shutil.which("python3.10")):
        if exe and subprocess.run([exe, "-c", "import sys, aiohttp; assert sys.version_info[:2] == (3, 10)"],
                                  capture_output=True).returncode == 0:
            return exe
    return None


def test_backend_on_a_real_python_310(tmp_path):
    exe = _python310()
    if exe is None:
        pytest.skip("no Python 3.10 with aiohttp here (set PREFKIT_PYTHON310 to one)")
    src = Path(__file__).resolve().parents[2] / "src"
    script = tmp_path / "smoke.py"
    script.write_text(
        "import asyncio\n"
        "from prefkit.synth.backends import OpenAIBackend, SamplingParams\n"
        "from prefkit.testing import FakeServer\n"
        "async def go(url):\n"
        "    be = OpenAIBackend(model='m', base_urls=[url], max_retries=0, timeout=5)\n"
        "    try:\n"
        "        return (await be.complete([{'role': 'user', 'content': 'hi'}], SamplingParams())).text\n"
        "    finally:\n"
        "        await be.aclose()\n"
        "with FakeServer() as srv:\n"
        "    print(asyncio.run(go(srv.base_url)))\n")
    out = subprocess.run([exe, str(script)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)},
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("reply "), out.stdout


def test_cli_transport_options_reach_the_wire(tmp_path, capsys):
    from prefkit.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "question"}) + "\n")

    async def serve_and_run():
        async with Upstream([resp(200, OK)]) as up:
            argv = ["synth", "rlcd", str(prompts), "-o", str(tmp_path / "pairs.jsonl"), "--base-url",
                    f"http://127.0.0.1:{up.port}/openai/deployments/d", "--model", "m", "--api-key", "k-0123456",
                    "--auth", "api-key", "--api-version", "2024-10-21", "--header", "X-Trace-Id: abc: 1",
                    "--connect-timeout", "3", "--no-progress", "--allow-empty"]   # both answers are the same text
            rc = await asyncio.to_thread(main, argv)
            return rc, up.seen

    rc, seen = asyncio.run(serve_and_run())
    assert rc == 0 and len(seen) == 2
    for line, headers, _ in seen:
        assert line == "POST /openai/deployments/d/chat/completions?api-version=2024-10-21 HTTP/1.1"
        assert headers["api-key"] == "k-0123456" and headers["x-trace-id"] == "abc: 1"
    capsys.readouterr()
    rc = main(["synth", "rlcd", str(prompts), "-o", str(tmp_path / "x.jsonl"), "--model", "m", "--header", "no-colon"])
    assert rc != 0 and "--header 'no-colon': expected 'NAME: VALUE'" in capsys.readouterr().err


def test_redirects_keep_secrets_on_their_origin_and_301_says_what_to_do():
    async def go():
        async with Upstream([resp(200, OK)]) as other:
            target = f"http://127.0.0.1:{other.port}/v1/chat/completions"
            async with Upstream([resp(308, b"", f"Location: {target}\r\n")]) as first:
                moved = await complete(f"http://127.0.0.1:{first.port}/v1", auth="api-key",
                                       headers={"X-Api-Token": "tok-123456", "X-Trace-Id": "t1"})
            async with Upstream([resp(301, b"", "Location: https://elsewhere.example/v1/chat/completions\r\n")]) as up:
                gone = await complete(f"http://127.0.0.1:{up.port}/v1")
            async with Upstream([resp(307, b"", "Location: /v1/chat/completions\r\n")]) as loop:
                looping = await complete(f"http://127.0.0.1:{loop.port}/v1")
            return moved, other.seen, first.seen, gone, looping, loop.seen

    moved, other_seen, first_seen, gone, looping, loop_seen = asyncio.run(go())
    assert moved.text == "hi"
    assert first_seen[0][1]["api-key"] == "sk-test-key-1234" and first_seen[0][1]["x-api-token"] == "tok-123456"
    headers = other_seen[0][1]
    assert "api-key" not in headers and "x-api-token" not in headers and "authorization" not in headers
    assert headers["x-trace-id"] == "t1" and other_seen[0][2] == first_seen[0][2]
    assert isinstance(gone, RequestFailed) and gone.reason == "HTTP 301" and gone.attempts == 1
    assert "use that URL as the base URL" in gone.detail and "https://elsewhere.example/v1" in gone.detail
    assert isinstance(looping, RequestFailed) and "more than 10 redirects" in looping.detail
    assert len(loop_seen) == 11
