"""Evolve then select: templates, parsing, the runaway filter, merging, and the whole loop
through a real local OpenAI-compatible server, a tiny reward model and a tiny policy."""

import itertools
import re

import datasets
import pytest

from prefkit.errors import ConfigError
from prefkit.report import StageReport
from prefkit.select.evolve import (OPERATIONS, check_rewrite, evolve_messages, evolve_then_select, merge,
                                   parse_evolved, prompt_text, with_text)


def test_every_operation_renders_an_instruction_with_the_prompt_inside():
    for op in OPERATIONS:
        msgs = evolve_messages("Sort these numbers: 3 1 2", op)
        text = msgs[0]["content"]
        assert msgs[0]["role"] == "user"
        assert "<instruction>\nSort these numbers: 3 1 2\n</instruction>" in text
        assert OPERATIONS[op] in text and "<prompt>" in text
    with pytest.raises(ConfigError, match="unknown evolve operation"):
        evolve_messages("x", "harder")


def test_parse_and_filter_rewrites():
    assert parse_evolved("Sure!\n<prompt>\nSort 3 1 2, then explain.\n</prompt>") == "Sort 3 1 2, then explain."
    assert parse_evolved("no tags here") is None
    assert parse_evolved("<prompt>  </prompt>") is None
    orig = "Sort these numbers: 3 1 2"
    assert check_rewrite(orig, "Sort these numbers: 3 1 2, descending, and explain each step.") is None
    assert check_rewrite(orig, None) == "rewrite missing its <prompt> tags"
    assert check_rewrite(orig, "  sort these NUMBERS: 3 1 2 ") == "rewrite unchanged"
    assert check_rewrite(orig, orig + " " + "and more " * 20, max_ratio=3.0) == "runaway rewrite (length ratio > 3)"
    assert check_rewrite("Sort: 9 2 6", "Sort: 9 2 6. Answer in exactly three numbered steps.") is None  # floor
    assert check_rewrite(orig, "Sort.", min_ratio=0.5) == "rewrite too short (length ratio < 0.5)"
    assert check_rewrite(orig, "Rewritten instruction: sort them all now") == "rewrite leaks the instruction template"


def test_conversational_prompts_evolve_their_last_user_turn():
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort 3 1 2"}]
    assert prompt_text(conv) == "Sort 3 1 2"
    new = with_text(conv, "Sort 3 1 2 descending")
    assert new[0] == conv[0] and new[1] == {"role": "user", "content": "Sort 3 1 2 descending"}
    assert conv[1]["content"] == "Sort 3 1 2"  # not modified in place


def test_merge_aligns_columns_and_drops_duplicate_prompts():
    base = datasets.Dataset.from_list([{"prompt": "a", "chosen": "x", "rejected": "y", "score_chosen": 2.0,
                                        "score_rejected": 1.0, "explicit_margin": 1.0}])
    new = datasets.Dataset.from_list([
        {"prompt": "a", "chosen": "x2", "rejected": "y2", "score_chosen": 3.0, "score_rejected": 1.0,
         "evolved_from": "p0"},
        {"prompt": "b", "chosen": "x3", "rejected": "y3", "score_chosen": 3.0, "score_rejected": 2.0,
         "evolved_from": "p0"},
    ])
    rep = StageReport("t")
    out = merge(base, new, rep)
    assert out["prompt"] == ["a", "b"]
    assert out["evolved_from"] == [None, "p0"] and out["explicit_margin"] == [1.0, None]
    assert rep.dropped["evolved prompt duplicates a base prompt"] == 1


def _responder():
    counter = itertools.count()

    def respond(body):
        last = body["messages"][-1]["content"]
        m = re.search(r"<instruction>\n(.*?)\n</instruction>", last, re.DOTALL)
        if m:  # an evolve request
            instruction = m.group(1)
            if "fruit" in instruction:
                return "<prompt>" + (instruction + " ") * 10 + "</prompt>"  # runaway
            if "briefly" in instruction:
                return "Here is a harder instruction, without tags."
            return f"Thinking...\n<prompt>{instruction} Answer in exactly three numbered steps.</prompt>"
        k = next(counter)
        return f"Step {k}: " + "sorted list " * (k % 4 + 1)

    return respond


def test_evolve_then_select_through_a_real_local_server(tiny_llama, llama3_tokenizer, pairs, tmp_path):
    from prefkit.select import select
    from prefkit.synth import OpenAIBackend
    from prefkit.testing import FakeServer
    from prefkit.reward_model import RewardModelScorer
    from prefkit.toy.tiny import tiny_reward_model

    base = select(pairs, "explicit", fraction=0.75, progress=False)  # 6 rows incl. the 'fruit' and 'briefly' prompts
    assert {"List the fruit in order.", "Answer the question briefly."} <= set(base["prompt"])
    scorer = RewardModelScorer(tiny_reward_model(llama3_tokenizer, seed=5), llama3_tokenizer, batch_size=8)
    with FakeServer(_responder()) as srv:
        backend = OpenAIBackend(model="fake-model", base_urls=[srv.base_url], api_key="test")
        rep = StageReport("select evolve")
        res = evolve_then_select(base, backend, reward_model=scorer, n_responses=3, metric="alignment-potential",
                                 fraction=0.5, model=tiny_llama, tokenizer=llama3_tokenizer, run_dir=tmp_path / "run",
                                 progress=False, report=rep)
        served = sum(srv.served.values())
        # a second run over the same run directory redoes no request
        backend2 = OpenAIBackend(model="fake-model", base_urls=[srv.base_url], api_key="test")
        again = evolve_then_select(base, backend2, reward_model=scorer, n_responses=3, fraction=0.5,
                                   model=tiny_llama, tokenizer=llama3_tokenizer, run_dir=tmp_path / "run",
                                   progress=False)
        assert sum(srv.served.values()) == served
    assert rep.dropped["runaway rewrite (length ratio > 3)"] == 1
    assert rep.dropped["rewrite missing its <prompt> tags"] == 1
    assert len(res.evolved_prompts) == 4
    assert all(p.endswith("Answer in exactly three numbered steps.") for p in res.evolved_prompts["prompt"])
    assert set(res.evolved_prompts["evolve_operation"]) <= set(OPERATIONS)
    n_pairs = len(res.evolved_pairs)
    assert 1 <= n_pairs <= 4 and len(res.evolved_selected) == int(0.5 * n_pairs)
    merged = res.merged
    assert len(merged) == len(base) + len(res.evolved_selected)
    assert merged["prompt"][:len(base)] == base["prompt"]
    new = merged.select(range(len(base), len(merged)))
    assert set(new["evolved_from"]) <= set(base["pair_id"])
    assert all(s.startswith("evolve:") for s in new["source"])
    assert again.merged["prompt"] == merged["prompt"]


def test_cli_select_evolve_end_to_end(tiny_llama, llama3_tokenizer, pairs, tmp_path, capsys):
    import json

    from prefkit.cli import main
    from prefkit.testing import FakeServer
    from prefkit.toy.tiny import tiny_reward_model

    policy, rm = tmp_path / "policy", tmp_path / "rm"
    tiny_llama.save_pretrained(policy)
    llama3_tokenizer.save_pretrained(policy)
    tiny_reward_model(llama3_tokenizer, seed=5).save_pretrained(rm)
    llama3_tokenizer.save_pretrained(rm)
    src = tmp_path / "selected.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in pairs.select(range(4))))
    out = tmp_path / "evolved.jsonl"
    with FakeServer(_responder()) as srv:
        rc = main(["select", "evolve", str(src), "-o", str(out), "--model", str(policy),
                   "--generator-base-url", srv.base_url, "--generator-model", "fake-model", "--api-key", "test",
                   "--reward-model", str(rm), "--n-responses", "3", "--fraction", "0.5", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "runaway rewrite (length ratio > 3)" in printed and "rewrite missing its <prompt> tags" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    evolved = [r for r in rows if r.get("evolved_from")]
    assert len(rows) == 4 + len(evolved) and len(evolved) == 1  # 2 evolved prompts -> 2 pairs -> keep 1
    assert evolved[0]["source"].startswith("evolve:") and (tmp_path / "evolved.jsonl.run").is_dir()
