"""`evaluate_policies` and `prefkit eval policy|unlearning` with tiny real models.

The LLM judge here is a scripted `Backend` (a deterministic stand-in whose verdicts the tests
choose, including unreadable answers and position bias); the real SmolLM2 judge behind
`transformers serve` is exercised in test_real_judge.py (slow)."""

import json
import math
import re
import statistics

import pytest
from helpers import save_tiny

from prefkit.cli import main
from prefkit.evaluate.policy import evaluate_policies, parse_policy
from prefkit.evaluate.winrate import LC_LABELS
from prefkit.synth.backends import Backend, Completion
from prefkit.synth.parsing import parse_verdict
from prefkit.toy import task


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from prefkit.relabel import make_spec
    from prefkit.toy.tiny import build_tokenizer

    tok = build_tokenizer(template="chatml")
    root = tmp_path_factory.mktemp("policies")
    dirs = {}
    for name, seed in (("base", 0), ("other", 1), ("ra", 2)):
        dirs[name] = root / name
        save_tiny(dirs[name], tok, arch="qwen2", layers=1, intermediate=None, max_position=2048, seed=seed)
    make_spec(placement="system").save(dirs["ra"])
    return dirs


def _between(text, tag):
    m = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return m.group(1) if m else None


class ScriptedJudge(Backend):
    """Pairwise: prefers the longer answer, calls equal lengths a tie, except that for the prompts
    in `biased` it always says A (position bias) and for those in `garbled` it answers without a
    verdict. Single: <score>len(answer) % 10 + 1</score>, garbled likewise."""

    kind = "scripted"
    model = "longer-wins"
    concurrency = 8

    def __init__(self, biased=(), garbled=()):
        self.biased, self.garbled = biased, garbled
        self.asked = []

    async def complete(self, messages, params):
        text = messages[0]["content"]
        self.asked.append(text)
        conv = (_between(text, "conversation") or "").removeprefix("[user]\n")
        if conv in self.garbled:
            return Completion(text="Both answers have merit.")
        a, b = _between(text, "answer_a"), _between(text, "answer_b")
        if a is None:
            return Completion(text=f"Fine.\n<score>{len(_between(text, 'answer')) % 10 + 1}</score>")
        if conv in self.biased:
            return Completion(text="<verdict>A</verdict>")
        v = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"
        return Completion(text=f"Reasoning.\n<verdict>{v}</verdict>")


def test_parse_policy_forms():
    s = parse_policy("ra=runs/ra")
    assert (s.name, s.model, s.served) == ("ra", "runs/ra", False)
    s = parse_policy("runs/dpo/")
    assert (s.name, s.model) == ("dpo", "runs/dpo/")
    s = parse_policy("q=Qwen/Qwen2.5-7B@http://127.0.0.1:8000/v1,http://127.0.0.1:8001/v1")
    assert s.name == "q" and s.model == "Qwen/Qwen2.5-7B" and s.base_urls == ["http://127.0.0.1:8000/v1",
                                                                              "http://127.0.0.1:8001/v1"]


def test_gold_reward_single_and_pairwise_judging_files_and_resume(tiny_dirs, tmp_path):
    prompts = task.make_prompts(6, seed=5)
    biased, garbled = prompts[1], prompts[2]
    assert len(set(prompts)) == 6
    refs = [task.perfect_response(p) for p in prompts]
    ref_file = tmp_path / "refs.json"
    ref_file.write_text(json.dumps([{"instruction": p, "output": r, "generator": "perfect"}
                                    for p, r in zip(prompts, refs)]))
    judge = ScriptedJudge(biased=(biased,), garbled=(garbled,))
    kw = dict(output_dir=tmp_path / "out", n=2, temperature=1.0, max_new_tokens=8, reward_fn=task.gold_reward,
              judge=judge, scorers=("reward-fn", "judge-single", "pairwise"), reference_outputs=str(ref_file),
              progress=False)
    res = evaluate_policies({"base": str(tiny_dirs["base"]), "other": str(tiny_dirs["other"])}, prompts, **kw)

    for name in ("base", "other"):
        pol = res["policies"][name]
        recs = [r for r in res["per_prompt"] if r["policy"] == name]
        assert len(recs) == 12 and pol["outputs"] == 12 and pol["generation_failed"] == 0
        # gold reward: the mean of the function over every recorded output
        gold = [task.gold_reward(prompts[r["prompt_index"]], r["output"]) for r in recs]
        assert pol["reward_fn"]["mean"] == pytest.approx(sum(gold) / 12) and pol["reward_fn"]["n"] == 12
        assert [r["reward_fn"] for r in recs] == pytest.approx(gold)
        assert [v for row in res["scores"][name]["reward_fn"] for v in row] == pytest.approx(gold)
        assert pol["reward_fn"]["std"] == pytest.approx(statistics.pstdev(gold))
        # single grades: the scripted score, the garbled prompt's two samples counted as unparseable
        single = pol["judge_single"]
        assert single["failed"] == 2 and single["failures"] == {"unparseable": 2}
        read = [len(r["output"]) % 10 + 1 for r in recs if r["prompt_index"] != 2]
        assert single["mean"] == pytest.approx(sum(read) / len(read)) and single["n"] == 10
        # pairwise by hand from the recorded raw answers
        per_prompt = {}
        unreadable = 0
        for r in recs:
            raw = r["pairwise"]["judge_raw"]
            prefs = []
            for order, policy_letter in (("policy_first", "A"), ("policy_second", "B")):
                v, _ = parse_verdict(raw[order])
                if v is None:
                    unreadable += 1
                    continue
                prefs.append(0.5 if v == "tie" else float(v == policy_letter))
            if prefs:
                per_prompt.setdefault(r["prompt_index"], []).append(sum(prefs) / len(prefs))
            # the expected verdict from the lengths
            i = r["prompt_index"]
            if i not in (1, 2):
                lp, lr = len(r["output"]), len(refs[i])
                want = [1.0, 1.0] if lp > lr else [0.0, 0.0] if lp < lr else [0.5, 0.5]
                assert prefs == want
            elif i == 1:
                assert prefs == [1.0, 0.0]  # always 'A': one order for the policy, one against
        vals = [sum(v) / len(v) for v in per_prompt.values()]
        m = sum(vals) / len(vals)
        se = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1) / len(vals))
        w = pol["pairwise"]
        assert w["win_rate"] == pytest.approx(m) and w["standard_error"] == pytest.approx(se)
        assert w["n"] == 5 and w["unjudged"] == 1 and unreadable == 4 and w["failures"] == {"unparseable": 4}
        assert w["orders_asked"] == 24 and w["verdicts_read"] == 20 and w["both_orders_read"] == 10
        assert w["position_consistent"] == 8  # the biased prompt's two samples disagree across orders
        lc = pol["length_controlled"]
        assert lc["variant"] == "prefkit-joint" and lc["label"] == LC_LABELS["prefkit-joint"]
        assert 0 <= lc["length_controlled_win_rate"] <= 1 and lc["n"] == 10
        assert pol["length_controlled_official"]["available"] is False
    # both orders were put to the judge for every comparison
    pairwise_asked = [t for t in judge.asked if "<answer_a>" in t]
    rec = next(r for r in res["per_prompt"] if r["policy"] == "base" and r["prompt_index"] == 0 and r["sample"] == 0)
    firsts = [t for t in pairwise_asked if _between(t, "answer_a") == rec["output"] and _between(t, "answer_b") == refs[0]]
    seconds = [t for t in pairwise_asked if _between(t, "answer_b") == rec["output"] and _between(t, "answer_a") == refs[0]]
    assert firsts and seconds

    out = tmp_path / "out"
    alp = json.loads((out / "outputs" / "base.alpaca_eval.json").read_text())
    assert len(alp) == 6 and set(alp[0]) == {"instruction", "output", "generator", "dataset"}
    assert [a["instruction"] for a in alp] == prompts and alp[0]["generator"] == "base"
    assert alp[3]["output"] == res["outputs"]["base"][3][0]
    rows = [json.loads(line) for line in (out / "outputs" / "other.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {r["sample"] for r in rows} == {0, 1}
    assert len((out / "per_prompt.jsonl").read_text().splitlines()) == 24
    saved = json.loads((out / "results.json").read_text())
    assert saved["policies"]["base"]["pairwise"]["win_rate"] == res["policies"]["base"]["pairwise"]["win_rate"]
    report = (out / "report.md").read_text()
    assert LC_LABELS["prefkit-joint"] in report and "length.png" in report and (out / "length.png").stat().st_size

    # resuming: nothing is generated or judged again, the same results come back
    judge2 = ScriptedJudge(biased=(biased,), garbled=(garbled,))
    again = evaluate_policies({"base": str(tiny_dirs["base"]), "other": str(tiny_dirs["other"])}, prompts,
                              **{**kw, "judge": judge2})
    assert judge2.asked == [] and again["run"]["done"] == 0 and again["run"]["resumed"] == again["run"]["requested"]
    assert again["outputs"] == res["outputs"]
    assert again["policies"]["base"]["pairwise"] == res["policies"]["base"]["pairwise"]


def test_reference_policy_and_length_only_variant(tiny_dirs, tmp_path):
    prompts = task.make_prompts(4, seed=9)
    res = evaluate_policies({"base": str(tiny_dirs["base"]), "other": str(tiny_dirs["other"])}, prompts,
                            max_new_tokens=6, temperature=0.0, judge=ScriptedJudge(), scorers=("pairwise",),
                            reference="base", progress=False)
    assert "pairwise" not in res["policies"]["base"]
    w = res["policies"]["other"]["pairwise"]
    assert w["reference"] == "base" and w["comparisons"] == 4 and w["orders_asked"] == 8
    assert res["policies"]["other"]["length_controlled"]["variant"] == "prefkit-length-only"


def test_conditioning_is_applied_like_prefkit_generate(tiny_dirs):
    from prefkit.generate import generate

    prompts = task.make_prompts(3, seed=11)
    for goal in (None, 3.0):
        from prefkit.evaluate.policy import PolicySpec

        spec = PolicySpec("ra", str(tiny_dirs["ra"]), goal=goal)
        res = evaluate_policies([spec], prompts, max_new_tokens=6, temperature=0.0, reward_fn=task.gold_reward,
                                progress=False)
        want = generate(str(tiny_dirs["ra"]), prompts, n=1, temperature=0.0, max_new_tokens=6, goal=goal,
                        progress=False)
        assert res["outputs"]["ra"] == want
        assert res["policies"]["ra"]["conditioned"] and res["policies"]["ra"]["goal"] == (goal or 10)
    plain = evaluate_policies([PolicySpec("ra", str(tiny_dirs["ra"]), conditioning=None)], prompts, max_new_tokens=6,
                              temperature=0.0, reward_fn=task.gold_reward, progress=False)
    assert plain["outputs"]["ra"] == generate(str(tiny_dirs["ra"]), prompts, temperature=0.0, max_new_tokens=6,
                                              conditioning=None, progress=False)
    assert not plain["policies"]["ra"]["conditioned"]


def test_requests_are_keyed_by_model_not_name_and_a_scratch_run_is_removed(tiny_dirs, tmp_path, monkeypatch):
    """Two names for one model (with equal messages) share their requests, also across calls with
    one run_dir; another model does not. Without run_dir or output_dir nothing is left behind."""
    import tempfile

    from prefkit.evaluate.policy import PolicySpec

    prompts = task.make_prompts(3, seed=12)
    kw = dict(n=2, max_new_tokens=6, temperature=1.0, seed=7, reward_fn=task.gold_reward, progress=False)
    run_dir = tmp_path / "run"
    first = evaluate_policies({"a": str(tiny_dirs["base"])}, prompts, run_dir=run_dir, **kw)
    assert first["run"]["done"] == 6 and first["run"]["resumed"] == 0
    again = evaluate_policies({"b": PolicySpec("b", str(tiny_dirs["base"]), conditioning=None),
                               "c": str(tiny_dirs["other"])}, prompts, run_dir=run_dir, **kw)
    assert again["run"]["resumed"] == 6 and again["run"]["done"] == 6     # b from a's records, c new
    assert again["outputs"]["b"] == first["outputs"]["a"]
    assert again["outputs"]["c"] != first["outputs"]["a"]

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    res = evaluate_policies({"a": str(tiny_dirs["base"])}, prompts, **kw)
    assert res["run_dir"] is None and list(scratch.iterdir()) == []
    assert res["outputs"]["a"] == first["outputs"]["a"]


def test_lora_adapter_policy_is_merged_into_its_base(tiny_dirs, tmp_path):
    from peft import LoraConfig, get_peft_model

    from prefkit.generate import generate
    from prefkit.models import load_causal_lm

    base, tok = load_causal_lm(str(tiny_dirs["base"]))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    prompts = task.make_prompts(3, seed=13)
    res = evaluate_policies({"lora": str(adapter)}, prompts, max_new_tokens=6, temperature=0.0,
                            reward_fn=task.gold_reward, progress=False)
    merged = peft_model.merge_and_unload()
    assert res["outputs"]["lora"] == generate(merged, prompts, tokenizer=tok, temperature=0.0, max_new_tokens=6,
                                              progress=False)


def test_cli_eval_policy_with_a_local_judge_counts_unreadable_verdicts(tiny_dirs, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    texts = task.make_prompts(3, seed=17)
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in texts))
    out = tmp_path / "eval"
    rc = main(["eval", "policy", str(prompts), "--policy", f"base={tiny_dirs['base']}",
               "--policy", f"other={tiny_dirs['other']}", "-o", str(out), "--reference", "base",
               "--judge-local", str(tiny_dirs["other"]), "--judge-max-tokens", "4", "--max-new-tokens", "5",
               "--reward-fn", "prefkit.toy.task:gold_reward", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Pairwise win rate against `base`" in printed and LC_LABELS["prefkit-length-only"] in printed
    res = json.loads((out / "results.json").read_text())
    w = res["policies"]["other"]["pairwise"]
    # a random tiny model never writes a verdict: every order is counted unreadable, nothing is guessed
    assert w["orders_asked"] == 6 and w["verdicts_read"] == 0 and w["failures"] == {"unparseable": 6}
    assert w["win_rate"] is None and w["unjudged"] == 3
    assert res["policies"]["base"]["reward_fn"]["n"] == 3
    assert main(["eval", "policy", str(prompts), "--policy", str(tiny_dirs["base"]), "-o", str(out / "x"),
                 "--reward-fn", "nonexistent.module:f", "--no-progress"]) == 2


def test_cli_eval_unlearning_conditions_on_the_rejected_responses_own_goal(tiny_dirs, tmp_path, capsys):
    from prefkit.data import read
    from prefkit.evaluate.unlearning import condition_pairs, high_quality_rejected, mean_rejected_logp
    from prefkit.models import load_causal_lm
    from prefkit.relabel import load_conditioning

    rows = [{"prompt": p, "chosen": task.perfect_response(p), "rejected": "fig apple", "score_chosen": 9.0,
             "score_rejected": s} for p, s in zip(task.make_prompts(5, seed=19), (2.0, 6.0, 7.0, 4.0, 8.0))]
    pairs_path = tmp_path / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "probe.json"
    assert main(["eval", "unlearning", str(tiny_dirs["ra"]), str(pairs_path), "-o", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["pairs"] == 3 and res["pairs_total"] == 5 and res["conditioned"] and res["goal"] == "own"
    model, tok = load_causal_lm(str(tiny_dirs["ra"]))
    hq = high_quality_rejected(read(str(pairs_path)), threshold=5.0)
    want = mean_rejected_logp(model, tok, condition_pairs(hq, load_conditioning(tiny_dirs["ra"]), "own", tok))
    assert res["mean_rejected_logp"] == pytest.approx(want, rel=1e-5)
    assert "3 of 5 pairs" in capsys.readouterr().out
    assert main(["eval", "unlearning", str(tiny_dirs["ra"]), str(pairs_path), "-o", str(out), "--goal", "none",
                 "--no-progress"]) == 0
    plain = json.loads(out.read_text())
    assert not plain["conditioned"]
    assert plain["mean_rejected_logp"] == pytest.approx(mean_rejected_logp(model, tok, hq), rel=1e-5)
    no_scores = tmp_path / "unscored.jsonl"
    no_scores.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n" for r in rows))
    assert main(["eval", "unlearning", str(tiny_dirs["ra"]), str(no_scores), "--no-progress"]) == 2
    assert "score_rejected" in capsys.readouterr().err


def test_reward_model_scores_each_output_as_scored_by_hand(tiny_dirs, tmp_path):
    import torch

    from prefkit.toy.tiny import build_tokenizer, tiny_reward_model

    tok = build_tokenizer(template="chatml")
    rm = tiny_reward_model(tok, hidden=32, layers=1, heads=2, seed=3)
    rm_dir = tmp_path / "rm"
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    prompts = [[{"role": "user", "content": p}] for p in task.make_prompts(3, seed=23)]  # conversational
    res = evaluate_policies({"base": str(tiny_dirs["base"])}, prompts, max_new_tokens=6, temperature=1.0, n=2,
                            reward_model=str(rm_dir), progress=False)
    by_hand = []
    for i, p in enumerate(prompts):
        for text in res["outputs"]["base"][i]:
            ids = tok.apply_chat_template(p + [{"role": "assistant", "content": text}], tokenize=True,
                                          return_dict=True)["input_ids"]
            with torch.no_grad():
                by_hand.append(float(rm(input_ids=torch.tensor([ids])).logits[0, 0]))
    got = [v for row in res["scores"]["base"]["reward_model"] for v in row]
    assert got == pytest.approx(by_hand, abs=1e-4)
    assert res["policies"]["base"]["reward_model"]["mean"] == pytest.approx(sum(by_hand) / 6, abs=1e-4)
    assert res["policies"]["base"]["reward_model"]["name"] == str(rm_dir)
