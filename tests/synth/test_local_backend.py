"""The local transformers backend: batched generation behind the same durable runs."""

import pytest

from prefkit.synth import rlcd
from prefkit.synth.backends import LocalBackend, SamplingParams
from prefkit.synth.runs import Request, Run


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from prefkit.toy.tiny import build_tokenizer, tiny_causal_lm

    tok = build_tokenizer(template="chatml")
    d = tmp_path_factory.mktemp("tiny-local")
    tiny_causal_lm(tok, arch="qwen2", hidden=32, layers=1, heads=2).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_local_backend_batches_and_matches_unbatched_greedy(tiny_dir, tmp_path):
    from prefkit.generate import generate

    backend = LocalBackend(str(tiny_dir), batch_size=4)
    params = SamplingParams(temperature=0.0, max_tokens=5)
    prompts = [f"Sort: {i} 3 1" for i in range(6)]
    reqs = [Request([{"role": "user", "content": p}], params, 0, "t") for p in prompts]
    calls = []
    orig = backend._generate
    backend._generate = lambda msgs, p: calls.append(len(msgs)) or orig(msgs, p)
    with Run(tmp_path / "run", progress=False) as run:
        recs = run.generate(backend, reqs)
    assert all(r["ok"] for r in recs)
    assert max(calls) > 1 and sum(calls) == 6  # requests were batched
    single = generate(str(tiny_dir), prompts, n=1, temperature=0.0, max_new_tokens=5, batch_size=1, progress=False)
    assert [r["text"] for r in recs] == [s[0] for s in single]
    assert all(r["prompt_tokens"] > 0 for r in recs) and run.stats.prompt_tokens == sum(r["prompt_tokens"] for r in recs)


def test_rlcd_with_local_backend_and_resume(tiny_dir, tmp_path):
    backend = LocalBackend(str(tiny_dir), batch_size=8)
    prompts = [f"Say {w}." for w in ("one", "two", "three")]
    gen = SamplingParams(temperature=1.0, max_tokens=6)
    from prefkit.report import StageReport

    rep = StageReport("rlcd")
    ds = rlcd(prompts, backend, run_dir=tmp_path / "run", generation=gen, progress=False, report=rep)
    assert len(ds) + rep.n_dropped == 3 and rep.notes["run"]["done"] == 6
    rep2 = StageReport("rlcd")
    again = rlcd(prompts, backend, run_dir=tmp_path / "run", generation=gen, progress=False, report=rep2)
    assert ds.to_list() == again.to_list()  # sampled once; the resume reuses the recorded answers
    assert rep2.notes["run"]["resumed"] == 6 and rep2.notes["run"]["done"] == 0
