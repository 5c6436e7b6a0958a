"""Durable runs: nothing lost, nothing duplicated, failures recorded with their reasons."""

import asyncio
import json
from collections import Counter

import pytest

from prefkit.errors import PrefkitError
from prefkit.synth.backends import SamplingParams
from prefkit.testing import FakeServer, Faults, echo_responder
from prefkit.synth.runs import Request, Run, RunStore, request_key

from synth_testkit import make_backend

P = SamplingParams(temperature=0.0, max_tokens=16)


def _requests(n, prefix="q"):
    return [Request([{"role": "user", "content": f"{prefix} {i}"}], P, 0, "test") for i in range(n)]


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "requests.jsonl").read_text().splitlines()]


def test_key_depends_on_every_part():
    ident = {"backend": "openai", "model": "m"}
    msgs = [{"role": "user", "content": "hi"}]
    k = request_key(ident, msgs, P, 0)
    assert k == request_key(dict(ident), [dict(msgs[0])], SamplingParams(temperature=0.0, max_tokens=16), 0)
    assert k != request_key(ident, msgs, P, 1)
    assert k != request_key(ident, msgs, P.replace(temperature=0.5), 0)
    assert k != request_key({"backend": "openai", "model": "m2"}, msgs, P, 0)
    assert k != request_key(ident, [{"role": "user", "content": "hi!"}], P, 0)


def test_store_cuts_torn_tail_and_skips_corrupt_lines(tmp_path):
    good = {"key": "a", "ok": True, "text": "x"}
    (tmp_path / "requests.jsonl").write_bytes(
        (json.dumps(good) + "\n" + "garbage line\n" + json.dumps({"key": "b", "ok": True, "text": "y"}) + "\n"
         + '{"key": "c", "ok": tr').encode())
    with RunStore(tmp_path) as store:
        assert set(store.records) == {"a", "b"}
        assert store.corrupt_lines == 1
        assert store.torn_tail == len('{"key": "c", "ok": tr')
        store.append({"key": "c", "ok": True, "text": "z"})
    with RunStore(tmp_path) as store:
        assert set(store.records) == {"a", "b", "c"} and store.torn_tail == 0
    assert (tmp_path / "requests.jsonl").read_bytes().endswith(b'"text":"z"}\n')


def test_second_process_on_same_run_dir_is_refused(tmp_path):
    with RunStore(tmp_path):
        with pytest.raises(PrefkitError, match="in use"):
            RunStore(tmp_path).open()
    RunStore(tmp_path).open().close()  # released on close


def test_fault_server_loses_and_duplicates_nothing(tmp_path):
    faults = Faults(p_drop=0.1, p_500=0.1, p_429=0.1, p_malformed=0.1, p_slow=0.03, slow_s=1.5)
    reqs = _requests(300)
    with FakeServer(echo_responder, faults=faults, seed=7, latency=0.005) as srv:
        backend = make_backend(srv.base_url, concurrency=32, timeout=0.7, max_retries=12)
        with Run(tmp_path, progress=False) as run:
            recs = run.generate(backend, reqs)
        # every injected fault happened and was survived
        assert all(srv.stats[k] > 0 for k in ("drop", "500", "429", "malformed", "slow")), srv.stats
    assert all(r["ok"] for r in recs), Counter(r.get("reason") for r in recs)
    # each row got the answer to ITS request (no crossed wires)
    for req, rec in zip(reqs, recs):
        assert rec["text"] == echo_responder({"messages": req.messages})
    lines = _lines(tmp_path)
    assert len(lines) == 300 and len({x["key"] for x in lines}) == 300  # one line per request, no duplicates
    assert run.stats.done == 300 and run.stats.n_failed == 0
    assert max(x["attempts"] for x in lines) > 1


def test_failures_are_recorded_per_row_and_retried_only_with_retry_failed(tmp_path):
    healthy = {"on": False}

    def responder(body):
        if "poison" in body["messages"][-1]["content"] and not healthy["on"]:
            raise_500()
        return echo_responder(body)

    reqs = _requests(20) + _requests(3, prefix="poison")
    with FakeServer(responder) as srv:
        backend = make_backend(srv.base_url, max_retries=2)
        with Run(tmp_path, progress=False) as run:
            recs = run.generate(backend, reqs)
        bad = [r for r in recs if not r["ok"]]
        assert len(bad) == 3 and all(r["reason"] == "HTTP 500" and r["attempts"] == 3 for r in bad)
        assert all(r["ok"] for r in recs[:20])  # one failure never blanks another row
        assert run.stats.failure_reasons == {"HTTP 500": 3}
        assert "--retry-failed" in run.stats.summary()

        # a plain re-run redoes nothing: failures are finished (recorded) requests too
        served_before = srv.stats["ok"] + srv.stats["500"]
        with Run(tmp_path, progress=False) as run:
            recs2 = run.generate(backend, reqs)
        assert srv.stats["ok"] + srv.stats["500"] == served_before
        assert run.stats.resumed == 20 and run.stats.kept_failed == 3 and run.stats.done == 0
        assert [r["ok"] for r in recs2] == [r["ok"] for r in recs]

        healthy["on"] = True
        with Run(tmp_path, retry_failed=True, progress=False) as run:
            recs3 = run.generate(backend, reqs)
        assert run.stats.done == 3 and run.stats.resumed == 20
        assert all(r["ok"] for r in recs3)
        assert srv.stats["ok"] == 23  # the 20 good rows were never asked again
    lines = _lines(tmp_path)
    assert len(lines) == 26  # 20 ok + 3 failed + 3 retried ok
    assert sum(1 for x in lines if x["ok"]) == 23 and len({x["key"] for x in lines if x["ok"]}) == 23


def raise_500():
    raise RuntimeError("poisoned prompt")  # the fake server answers 500 when its responder raises


def test_client_errors_fail_at_once(tmp_path):
    from prefkit.synth.backends import RequestFailed

    with FakeServer() as srv:
        backend = make_backend(srv.base_url.replace("/v1", "/nope"), max_retries=5)

        async def go():
            try:
                await backend.complete([{"role": "user", "content": "x"}], P)
            finally:
                await backend.aclose()

        with pytest.raises(RequestFailed) as ei:
            asyncio.run(go())
    assert ei.value.reason == "HTTP 404" and ei.value.attempts == 1


def test_requests_spread_over_several_servers(tmp_path):
    with FakeServer(latency=0.02) as a, FakeServer(latency=0.02) as b:
        backend = make_backend(a.base_url, concurrency=8)
        backend.base_urls = [a.base_url, b.base_url]
        with Run(tmp_path, progress=False) as run:
            recs = run.generate(backend, _requests(80))
        assert all(r["ok"] for r in recs)
        assert a.stats["ok"] + b.stats["ok"] == 80
        assert min(a.stats["ok"], b.stats["ok"]) >= 20, (a.stats, b.stats)


def test_progress_bar_failure_count_is_live(tmp_path, capsys):
    """The bar's 'failed N' follows every failure: its last drawing says how many failed (it used
    to be refreshed at most twice a second, so a burst of failures showed as 'failed 1')."""
    def down(body):
        raise RuntimeError("backend down")

    with FakeServer(down) as srv:
        backend = make_backend(srv.base_url, max_retries=0)
        with Run(tmp_path, progress=True) as run:
            recs = run.generate(backend, _requests(7), desc="judge")
    assert not any(r["ok"] for r in recs)
    err = capsys.readouterr().err
    last = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("judge")][-1]
    assert "7/7" in last and "failed 7" in last, err


def test_tqdm_disable_turns_the_bar_off(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")  # the tqdm convention, although progress=True is passed
    with FakeServer() as srv:
        with Run(tmp_path, progress=True) as run:
            run.generate(make_backend(srv.base_url), _requests(3), desc="gen")
    assert capsys.readouterr().err == ""
