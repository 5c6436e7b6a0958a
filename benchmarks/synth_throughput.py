"""Request throughput of prefkit's durable runs against a local OpenAI-compatible server.

The server (prefkit.testing, its own process) answers every chat completion after a
fixed 200 ms. With 64 requests in flight the concurrency-limited ideal is 64 / 0.2 s = 320
requests/s. We run N requests through `Run.generate` (OpenAIBackend + the fsynced JSONL store +
progress accounting) and report achieved / ideal; target >= 0.9. As a peer measured in the same
run, the same requests go through the bare `openai` async client under a semaphore (no store, no
retries). Client and server share the machine, so both sides' CPU milliseconds per request are
printed (the server's from /proc on Linux) to show which one limits the rate. The client figure
for prefkit is what its transport (aiohttp, see benchmarks/http_client_cpu.py) plus the retry loop,
JSON parsing and the durable store cost per request.

    python benchmarks/synth_throughput.py [--requests 1600] [--concurrency 64] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time

CPU: dict[str, float] = {}  # client CPU milliseconds per request
SERVER_CPU: dict[str, float] = {}  # server CPU milliseconds per request
SERVER_PID = 0


def server_cpu_s() -> float:
    """CPU seconds (user + system) used so far by the server process (Linux /proc; 0 elsewhere)."""
    import os

    try:
        with open(f"/proc/{SERVER_PID}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def start_server(latency: float):
    proc = subprocess.Popen([sys.executable, "-m", "prefkit.testing", "--port", "0", "--latency",
                             str(latency), "--max-lifetime", "300"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def prefkit_run(url: str, n: int, conc: int, tag: str) -> float:
    from prefkit.synth.backends import OpenAIBackend, SamplingParams
    from prefkit.synth.runs import Request, Run

    backend = OpenAIBackend(model="bench", base_urls=[url], concurrency=conc, timeout=30, max_retries=3)
    params = SamplingParams(temperature=0.0, max_tokens=16)
    reqs = [Request([{"role": "user", "content": f"{tag} request {i}"}], params, 0, "bench") for i in range(n)]
    with tempfile.TemporaryDirectory() as d, Run(d, progress=False) as run:
        t0, c0, s0 = time.perf_counter(), time.process_time(), server_cpu_s()
        recs = run.generate(backend, reqs)
        dt = time.perf_counter() - t0
        CPU[tag] = (time.process_time() - c0) / n * 1000
        SERVER_CPU[tag] = (server_cpu_s() - s0) / n * 1000
    bad = sum(1 for r in recs if not r["ok"])
    if bad:
        raise SystemExit(f"{bad} requests failed in the benchmark")
    return n / dt


def bare_client(url: str, n: int, conc: int, tag: str) -> float:
    import openai

    async def go():
        client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=30,
                                    http_client=openai.DefaultAsyncHttpx2Client(
                                        limits=__import__("httpx2").Limits(max_connections=conc + 8,
                                                                            max_keepalive_connections=conc + 8)))
        sem = asyncio.Semaphore(conc)

        async def one(i):
            async with sem:
                await client.chat.completions.create(model="bench", max_tokens=16, temperature=0.0,
                                                     messages=[{"role": "user", "content": f"{tag} {i}"}])

        t0, c0, s0 = time.perf_counter(), time.process_time(), server_cpu_s()
        await asyncio.gather(*(one(i) for i in range(n)))
        dt = time.perf_counter() - t0
        CPU[tag] = (time.process_time() - c0) / n * 1000
        SERVER_CPU[tag] = (server_cpu_s() - s0) / n * 1000
        await client.close()
        return n / dt

    return asyncio.run(go())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1600)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    a = ap.parse_args()
    ideal = a.concurrency / a.latency
    global SERVER_PID
    proc, url = start_server(a.latency)
    SERVER_PID = proc.pid
    try:
        prefkit_run(url, a.concurrency * 2, a.concurrency, "warmup")
        peer = bare_client(url, a.requests, a.concurrency, "peer")
        ours = prefkit_run(url, a.requests, a.concurrency, "prefkit")
    finally:
        proc.kill()
        proc.wait()
    import os

    print(f"server latency {a.latency * 1000:.0f} ms, concurrency {a.concurrency}, {a.requests} requests; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"ideal (concurrency / latency)       {ideal:8.1f} req/s")
    print(f"bare openai client (peer)           {peer:8.1f} req/s  = {peer / ideal:.3f} of ideal  "
          f"({CPU['peer']:.2f} ms client, {SERVER_CPU['peer']:.2f} ms server CPU/request)")
    print(f"prefkit durable run                 {ours:8.1f} req/s  = {ours / ideal:.3f} of ideal  "
          f"({CPU['prefkit']:.2f} ms client, {SERVER_CPU['prefkit']:.2f} ms server CPU/request)")
    print(f"prefkit / bare client               {ours / peer:.3f}   (target: >= 0.9 of ideal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
