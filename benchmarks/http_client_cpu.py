"""Client CPU per chat-completion request for the HTTP clients prefkit could use.

Each candidate sends the same N chat completions, 64 in flight, to a local OpenAI-compatible
server (prefkit.testing in its own process, no added latency) and we report the client
process's CPU milliseconds per request (time.process_time over the batch, after a warm-up batch).
Candidates: `prefkit` (OpenAIBackend as shipped: the transport plus prefkit's retry loop and
stdlib-json parsing), the bare `httpx`, `httpx2` and `aiohttp` clients posting the same JSON and
reading it with stdlib json, and the official `openai` SDK (its default client and typed
response models). A candidate whose package is not installed is skipped.

    python benchmarks/http_client_cpu.py [--requests 2000] [--concurrency 64] [--rounds 3]

Each candidate is measured `--rounds` times, interleaved, and the median is printed, because the
machine this runs on may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

BODY = {"model": "bench", "max_tokens": 16, "temperature": 0.0}


def _msgs(i: int) -> list[dict]:
    return [{"role": "user", "content": f"request {i}"}]


async def _batch(one, n: int, conc: int) -> float:
    sem = asyncio.Semaphore(conc)

    async def guarded(i):
        async with sem:
            await one(i)

    c0 = time.process_time()
    await asyncio.gather(*(guarded(i) for i in range(n)))
    return (time.process_time() - c0) / n * 1000


def _check(obj: dict) -> None:
    if not obj["choices"][0]["message"]["content"]:
        raise SystemExit("empty answer")


async def prefkit_backend(url, n, conc):
    from prefkit.synth.backends import OpenAIBackend, SamplingParams

    be = OpenAIBackend(model="bench", base_urls=[url], concurrency=conc, timeout=30, max_retries=0)
    p = SamplingParams(temperature=0.0, max_tokens=16)

    async def one(i):
        await be.complete(_msgs(i), p)

    try:
        await _batch(one, conc * 2, conc)
        return await _batch(one, n, conc)
    finally:
        await be.aclose()


async def httpx_client(url, n, conc, module="httpx"):
    mod = __import__(module)
    client = mod.AsyncClient(limits=mod.Limits(max_connections=conc, max_keepalive_connections=conc),
                             timeout=30)
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}

    async def one(i):
        r = await client.post(f"{url}/chat/completions", headers=headers,
                              content=json.dumps({**BODY, "messages": _msgs(i)}).encode())
        r.raise_for_status()
        _check(json.loads(r.content))

    try:
        await _batch(one, conc * 2, conc)
        return await _batch(one, n, conc)
    finally:
        await client.aclose()


async def httpx2_client(url, n, conc):
    return await httpx_client(url, n, conc, module="httpx2")


async def aiohttp_client(url, n, conc):
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc),
                                    timeout=aiohttp.ClientTimeout(total=30))
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}

    async def one(i):
        async with session.post(f"{url}/chat/completions", headers=headers,
                                data=json.dumps({**BODY, "messages": _msgs(i)}).encode()) as r:
            r.raise_for_status()
            _check(json.loads(await r.read()))

    try:
        await _batch(one, conc * 2, conc)
        return await _batch(one, n, conc)
    finally:
        await session.close()


async def openai_sdk(url, n, conc):
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=30)

    async def one(i):
        r = await client.chat.completions.create(messages=_msgs(i), **BODY)
        if not r.choices[0].message.content:
            raise SystemExit("empty answer")

    try:
        await _batch(one, conc * 2, conc)
        return await _batch(one, n, conc)
    finally:
        await client.close()


CANDIDATES = {"prefkit": (prefkit_backend, "prefkit"), "httpx": (httpx_client, "httpx"),
              "httpx2": (httpx2_client, "httpx2"), "aiohttp": (aiohttp_client, "aiohttp"),
              "openai": (openai_sdk, "openai")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="*", default=list(CANDIDATES))
    a = ap.parse_args()
    names = []
    for name in a.only:
        try:
            __import__(CANDIDATES[name][1])
            names.append(name)
        except ImportError:
            print(f"{name}: not installed, skipped")
    proc = subprocess.Popen([sys.executable, "-m", "prefkit.testing", "--port", "0",
                             "--max-lifetime", "900"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
    ms: dict[str, list[float]] = {n: [] for n in names}
    try:
        for _ in range(a.rounds):
            for name in names:
                ms[name].append(asyncio.run(CANDIDATES[name][0](url, a.requests, a.concurrency)))
    finally:
        proc.kill()
        proc.wait()
    import os

    print(f"{a.requests} requests x {a.rounds} rounds, {a.concurrency} in flight; {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; python {sys.version.split()[0]}")
    for name in names:
        vals = ", ".join(f"{v:.2f}" for v in ms[name])
        print(f"{name:10s} {statistics.median(ms[name]):6.2f} ms client CPU/request  (rounds: {vals})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
