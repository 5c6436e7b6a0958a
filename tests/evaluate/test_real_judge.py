"""The real SmolLM2-135M-Instruct as a policy and as the judge, behind a local `transformers serve`.

The judge is weak; the test checks the mechanics: generation through the server, both orders put
to the judge for every comparison, unreadable answers counted, and the win rate and its standard
error equal to a hand computation on the parsed verdicts. Few prompts, short outputs (CPU)."""

import math

import pytest

from prefkit.evaluate.judging import pairwise_messages, read_score, read_verdict
from prefkit.evaluate.policy import PolicySpec, evaluate_policies
from prefkit.synth.backends import OpenAIBackend, SamplingParams
from prefkit.synth.runs import RunStore, request_key
from prefkit.toy import task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir, tmp_path_factory):
    from prefkit.testing import transformers_serve

    with transformers_serve(smollm2_dir, tmp_path_factory.mktemp("serve") / "serve.log", lifetime=900,
                            startup_timeout=240) as url:
        yield url


def test_smollm2_policy_and_judge_behind_transformers_serve(smollm2_server, smollm2_dir, tmp_path):
    url, model = smollm2_server, str(smollm2_dir)
    prompts = task.make_prompts(2, seed=1)
    refs = [task.perfect_response(p) for p in prompts]
    judge = OpenAIBackend(model=model, base_urls=[url], concurrency=2, timeout=600, max_retries=1)
    judge_params = SamplingParams(temperature=0.0, max_tokens=8, seed=0)
    kw = dict(max_new_tokens=16, temperature=0.0, reward_fn=task.gold_reward, judge=judge,
              scorers=("reward-fn", "judge-single", "pairwise"), reference_outputs=refs, judge_params=judge_params,
              judge_explain=False, output_dir=tmp_path / "eval", progress=False)
    res = evaluate_policies([PolicySpec("smollm2", model, base_urls=[url])], prompts, **kw)
    pol = res["policies"]["smollm2"]
    recs = res["per_prompt"]
    assert pol["generation_failed"] == 0 and all(isinstance(r["output"], str) and r["output"] for r in recs)
    assert [r["reward_fn"] for r in recs] == [task.gold_reward(p, r["output"]) for p, r in zip(prompts, recs)]

    # single grades: each recorded grade is what the reader makes of the judge's recorded answer
    for r in recs:
        assert r["judge_score"] == read_score(r["judge_raw"])[0]
    assert pol["judge_single"]["n"] + pol["judge_single"]["failed"] == 2

    # both orders were asked: the run directory holds a judge answer for each
    store = RunStore(tmp_path / "eval" / "run").open()
    try:
        for i, r in enumerate(recs):
            msgs = [{"role": "user", "content": prompts[i]}]
            for a, b in ((r["output"], refs[i]), (refs[i], r["output"])):
                key = request_key(judge.identity(), pairwise_messages(msgs, a, b, explain=False), judge_params, 0)
                assert store.records[key]["ok"]
    finally:
        store.close()

    # the win rate by hand from the parsed verdicts
    per_prompt, unread = [], 0
    for r in recs:
        raw = r["pairwise"]["judge_raw"]
        prefs = []
        for order, letter in (("policy_first", "A"), ("policy_second", "B")):
            v, _ = read_verdict(raw[order])
            assert r["pairwise"]["verdicts"][order] == v
            if v is None:
                unread += 1
            else:
                prefs.append(0.5 if v == "tie" else float(v == letter))
        if prefs:
            per_prompt.append(sum(prefs) / len(prefs))
    w = pol["pairwise"]
    assert w["orders_asked"] == 4 and w["verdicts_read"] == 4 - unread
    assert w["failures"] == ({"unparseable": unread} if unread else {})
    assert w["n"] == len(per_prompt) and w["unjudged"] == 2 - len(per_prompt)
    if per_prompt:
        m = sum(per_prompt) / len(per_prompt)
        assert w["win_rate"] == pytest.approx(m)
        if len(per_prompt) > 1:
            se = math.sqrt(sum((v - m) ** 2 for v in per_prompt) / (len(per_prompt) - 1) / len(per_prompt))
            assert w["standard_error"] == pytest.approx(se)
    else:
        assert w["win_rate"] is None
    assert pol["length_controlled"]["label"].startswith("length-controlled (prefkit variant")
    assert (tmp_path / "eval" / "outputs" / "smollm2.alpaca_eval.json").is_file()

    # resuming asks the server nothing
    again = evaluate_policies([PolicySpec("smollm2", model, base_urls=[url])], prompts, **kw)
    assert again["run"]["done"] == 0 and again["policies"]["smollm2"]["pairwise"] == w
