"""The HTTP path against a real `transformers serve` process serving a tiny local model directory."""

import pytest

from prefkit.synth.backends import OpenAIBackend, SamplingParams
from prefkit.synth.runs import Request, Run

pytestmark = pytest.mark.slow


@pytest.fixture()
def served_model(tmp_path, chatml_tokenizer):
    from prefkit.testing import ServeUnavailable, transformers_serve
    from prefkit.toy.tiny import tiny_causal_lm

    model_dir = tmp_path / "tiny-chat"
    tiny_causal_lm(chatml_tokenizer, arch="qwen2", hidden=32, layers=1, heads=2).save_pretrained(model_dir)
    chatml_tokenizer.save_pretrained(model_dir)
    try:
        with transformers_serve(model_dir, tmp_path / "serve.log", lifetime=180, startup_timeout=120) as url:
            yield url, str(model_dir)
    except ServeUnavailable as exc:
        pytest.skip(str(exc))


def test_chat_completions_through_a_real_transformers_server(served_model, tmp_path):
    url, model = served_model
    backend = OpenAIBackend(model=model, base_urls=[url], concurrency=2, timeout=60, max_retries=2)
    params = SamplingParams(temperature=0.0, max_tokens=6)
    reqs = [Request([{"role": "user", "content": f"Sort these numbers {i} 3 1"}], params, 0, "t") for i in range(4)]
    with Run(tmp_path / "run", progress=False) as run:
        recs = run.generate(backend, reqs)
    assert all(r["ok"] for r in recs), [r.get("detail") for r in recs]
    assert all(isinstance(r["text"], str) for r in recs)
    assert all(0 < r["completion_tokens"] <= 6 and r["prompt_tokens"] > 0 for r in recs)
    assert run.stats.completion_tokens == sum(r["completion_tokens"] for r in recs)
    # resuming asks the server nothing
    with Run(tmp_path / "run", progress=False) as run:
        again = run.generate(backend, reqs)
    assert run.stats.resumed == 4 and run.stats.done == 0 and again == recs


def test_transformers_server_samples_when_asked(served_model):
    """`server="transformers"` sends do_sample through the request's generation_config: without
    it the server decodes greedily whatever the temperature, and samples would all be equal."""
    import asyncio

    url, model = served_model
    msgs = [{"role": "user", "content": "Sort these numbers 4 3 1"}]

    async def texts(backend, temperature, seeds):
        try:
            outs = [await backend.complete(msgs, SamplingParams(temperature=temperature, max_tokens=12, seed=s))
                    for s in seeds]
        finally:
            await backend.aclose()
        return [o.text for o in outs]

    sampling = OpenAIBackend(model=model, base_urls=[url], timeout=60, max_retries=1, server="transformers")
    sampled = asyncio.run(texts(sampling, 1.0, [1, 2, 3]))
    assert len(set(sampled)) > 1, sampled
    plain = OpenAIBackend(model=model, base_urls=[url], timeout=60, max_retries=1)
    assert len(set(asyncio.run(texts(plain, 1.0, [1, 2, 3])))) == 1  # the server's greedy default
    greedy = OpenAIBackend(model=model, base_urls=[url], timeout=60, max_retries=1, server="transformers")
    assert len(set(asyncio.run(texts(greedy, 0.0, [1, 2])))) == 1
