"""Reward-augmented relabeling: hand-built pairs checked field by field (docs/methods.md section 1)."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from prefkit.errors import ConfigError, DataError
from prefkit.relabel import (
    DEFAULT_TEMPLATE,
    ConditioningSpec,
    condition,
    find_conditioning,
    format_goal,
    load_conditioning,
    make_spec,
    relabel,
)
from prefkit.report import StageReport

# A short template keeps the expected strings readable; the default wording is tested separately.
T = "Target {goal_lines}"


def S(goal) -> str:
    return f"Target Overall score: {goal}."


def u(text):
    return [{"role": "user", "content": text}]


def a(text):
    return [{"role": "assistant", "content": text}]


def string_pairs():
    return Dataset.from_list([
        dict(prompt="Sort 3 1 2", chosen="1 2 3", rejected="3 2 1", score_chosen=8.0, score_rejected=3.5,
             pair_id="p0", prompt_id="x0", source="evol"),
        dict(prompt="Name a fruit", chosen="apple", rejected="a car", score_chosen=9.0, score_rejected=2.0,
             pair_id="p1", prompt_id="x1", source="sharegpt"),
    ])


def conv_pairs():
    return Dataset.from_list([
        dict(prompt=u("Sort 3 1 2"), chosen=a("1 2 3"), rejected=a("3 2 1"), score_chosen=8.0,
             score_rejected=3.5, pair_id="p0"),
        dict(prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello?"}, {"role": "user", "content": "Name a fruit"}],
             chosen=a("apple"), rejected=a("a car"), score_chosen=9.0, score_rejected=2.0, pair_id="p1"),
    ])


def count_s(prompt) -> int:
    """Occurrences of a conditioning text anywhere in the prompt (any goal)."""
    texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    return sum(t.count("Target ") for t in texts)


# -- string prompts ------------------------------------------------------------------------------

@pytest.mark.parametrize("placement", ["system", "user"])
def test_string_prompts_field_by_field(placement):
    out = relabel(string_pairs(), placement=placement, template=T)
    rows = out.to_list()
    assert [r["pair_id"] for r in rows] == ["p0:w", "p1:w", "p0:l", "p1:l"]
    assert [r["source_pair_id"] for r in rows] == ["p0", "p1", "p0", "p1"]
    assert [r["relabel_half"] for r in rows] == ["w", "w", "l", "l"]
    # D^w: goal r_w, chosen y_w, rejected y_l
    assert rows[0]["prompt"] == S(8) + "\n\nSort 3 1 2"
    assert (rows[0]["chosen"], rows[0]["rejected"], rows[0]["goal_score"]) == ("1 2 3", "3 2 1", 8.0)
    assert rows[1]["prompt"] == S(9) + "\n\nName a fruit"
    # D^l: goal r_l, chosen y_l, rejected y_w; score columns follow their responses
    assert rows[2]["prompt"] == S(3.5) + "\n\nSort 3 1 2"
    assert (rows[2]["chosen"], rows[2]["rejected"], rows[2]["goal_score"]) == ("3 2 1", "1 2 3", 3.5)
    assert (rows[2]["score_chosen"], rows[2]["score_rejected"]) == (3.5, 8.0)
    assert rows[3]["prompt"] == S(2) + "\n\nName a fruit"
    assert (rows[3]["chosen"], rows[3]["rejected"]) == ("a car", "apple")
    # other columns kept, per source pair
    assert [r["prompt_id"] for r in rows] == ["x0", "x1", "x0", "x1"]
    assert [r["source"] for r in rows] == ["evol", "sharegpt", "evol", "sharegpt"]
    assert all(r["goal_score"] == r["score_chosen"] for r in rows)
    assert all(count_s(r["prompt"]) == 1 for r in rows)


def test_default_wording_and_goal_formatting():
    assert format_goal(8.0) == "8" and format_goal(8) == "8" and format_goal(8.5) == "8.5"
    assert format_goal(7.25) == "7.25" and format_goal(-1.5) == "-1.5"
    out = relabel(string_pairs())
    text = out[2]["prompt"].split("\n\nSort 3 1 2")[0]
    assert text == make_spec().render(3.5)
    assert text.endswith("\nOverall score: 3.5.")
    assert "1 (lowest)" in text and "10 (highest)" in text
    assert out[0]["prompt"].split("\n\n")[0].endswith("\nOverall score: 8.")


def test_round_scores_rounds_goals_before_ties_and_text():
    ds = Dataset.from_list([dict(prompt="q", chosen="c", rejected="r", score_chosen=7.66, score_rejected=3.21),
                            dict(prompt="q2", chosen="c", rejected="r", score_chosen=7.04, score_rejected=6.96)])
    rep = StageReport("relabel")
    out = relabel(ds, round_scores=0, template=T, report=rep)
    assert out["prompt"] == [S(8) + "\n\nq", S(3) + "\n\nq"]
    assert out["goal_score"] == [8.0, 3.0]
    assert rep.dropped["tie: goal of chosen == goal of rejected"] == 1  # 7.04 vs 6.96 -> 7 vs 7
    out1 = relabel(ds, round_scores=1, template=T)
    assert out1["prompt"][0] == S(7.7) + "\n\nq"


# -- conversational prompts ----------------------------------------------------------------------

def test_conversational_system_placement_field_by_field():
    out = relabel(conv_pairs(), placement="system", template=T).to_list()
    # no system message yet: a new one is inserted first
    assert out[0]["prompt"] == [{"role": "system", "content": S(8)}, {"role": "user", "content": "Sort 3 1 2"}]
    assert out[0]["chosen"] == a("1 2 3") and out[0]["rejected"] == a("3 2 1")
    # an existing system message gets S(g) + blank line prefixed (S(g) exactly once; no second system)
    assert out[1]["prompt"] == [
        {"role": "system", "content": S(9) + "\n\nBe brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello?"}, {"role": "user", "content": "Name a fruit"}]
    assert out[2]["prompt"] == [{"role": "system", "content": S(3.5)}, {"role": "user", "content": "Sort 3 1 2"}]
    assert out[2]["chosen"] == a("3 2 1") and out[2]["rejected"] == a("1 2 3")
    assert out[3]["prompt"][0] == {"role": "system", "content": S(2) + "\n\nBe brief."}
    assert out[3]["chosen"] == a("a car") and out[3]["rejected"] == a("apple")
    assert all(count_s(r["prompt"]) == 1 for r in out)


def test_conversational_user_placement_field_by_field():
    out = relabel(conv_pairs(), placement="user", template=T).to_list()
    assert out[0]["prompt"] == u(S(8) + "\n\nSort 3 1 2")
    # the FIRST user turn is conditioned; system and later turns untouched
    assert out[1]["prompt"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": S(9) + "\n\nHi"},
        {"role": "assistant", "content": "Hello?"}, {"role": "user", "content": "Name a fruit"}]
    assert out[2]["prompt"] == u(S(3.5) + "\n\nSort 3 1 2")
    assert out[3]["prompt"][1] == {"role": "user", "content": S(2) + "\n\nHi"}


def test_user_placement_swaps_in_D_l_and_inserts_S_once():
    """The authors' public code gets both wrong in this placement: D^l kept chosen/rejected and
    prefixed S(g) a second time. Check every D^l row against its D^w row explicitly."""
    src = conv_pairs()
    out = relabel(src, placement="user", template=T)
    half = len(src)
    for i in range(half):
        w, l = out[i], out[half + i]
        assert w["relabel_half"] == "w" and l["relabel_half"] == "l"
        assert w["source_pair_id"] == l["source_pair_id"] == src[i]["pair_id"]
        assert l["chosen"] == src[i]["rejected"] and l["rejected"] == src[i]["chosen"]
        assert w["chosen"] == src[i]["chosen"] and w["rejected"] == src[i]["rejected"]
        for row, goal in ((w, src[i]["score_chosen"]), (l, src[i]["score_rejected"])):
            assert count_s(row["prompt"]) == 1
            first_user = next(m for m in row["prompt"] if m["role"] == "user")
            assert first_user["content"].count(S(format_goal(goal))) == 1
            assert len(row["prompt"]) == len(src[i]["prompt"])
    # the source is not modified
    assert src[0]["prompt"] == u("Sort 3 1 2")


def test_user_placement_without_user_turn_is_a_clear_error():
    ds = Dataset.from_list([dict(prompt=u("fine"), chosen=a("c"), rejected=a("r"), score_chosen=5, score_rejected=1),
                            dict(prompt=[{"role": "system", "content": "only"}], chosen=a("c"), rejected=a("r"),
                                 score_chosen=5, score_rejected=1)])
    with pytest.raises(DataError, match="row 1.*field 'prompt'.*user turn"):
        relabel(ds, placement="user")
    assert len(relabel(ds, placement="system")) == 4


# -- auto placement with real chat templates -----------------------------------------------------

def test_auto_placement_follows_the_chat_template(gemma_tokenizer, chatml_tokenizer):
    from prefkit.relabel import accepts_system_role

    assert accepts_system_role(chatml_tokenizer) is True
    assert accepts_system_role(gemma_tokenizer) is False
    gem = relabel(conv_pairs().select([0]), placement="auto", tokenizer=gemma_tokenizer, template=T)
    assert gem[1]["prompt"] == u(S(3.5) + "\n\nSort 3 1 2")
    chat = relabel(conv_pairs().select([0]), placement="auto", tokenizer=chatml_tokenizer, template=T)
    assert chat[1]["prompt"][0] == {"role": "system", "content": S(3.5)}
    # Both render through their own template with S(g) exactly once.
    for tok, ds in ((gemma_tokenizer, gem), (chatml_tokenizer, chat)):
        for row in ds:
            text = tok.apply_chat_template(row["prompt"] + row["chosen"], tokenize=False)
            assert text.count("Target Overall score:") == 1
    with pytest.raises(ConfigError, match="auto.*tokenizer"):
        relabel(conv_pairs(), placement="auto")


def test_auto_placement_loads_a_tokenizer_directory(tmp_path, gemma_tokenizer):
    gemma_tokenizer.save_pretrained(tmp_path / "tok")
    spec = make_spec(placement="auto", tokenizer=str(tmp_path / "tok"))
    assert spec.placement == "user"


# -- options -------------------------------------------------------------------------------------

def test_ties_drop_is_counted_and_keep_keeps_both_rows():
    ds = Dataset.from_list([dict(prompt="q0", chosen="c", rejected="r", score_chosen=7, score_rejected=7,
                                 pair_id="t"),
                            dict(prompt="q1", chosen="c", rejected="r", score_chosen=9, score_rejected=4,
                                 pair_id="n")])
    rep = StageReport("relabel")
    out = relabel(ds, report=rep, template=T)
    assert out["source_pair_id"] == ["n", "n"]
    assert rep.rows_in == 2 and rep.rows_out == 2
    assert rep.dropped == {"tie: goal of chosen == goal of rejected": 1}
    assert rep.examples["tie: goal of chosen == goal of rejected"] == ["pair_id=t"]
    rep2 = StageReport("relabel")
    kept = relabel(ds, ties="keep", report=rep2, template=T)
    assert kept["source_pair_id"] == ["t", "n", "t", "n"]
    assert kept[0]["prompt"] == kept[2]["prompt"] == S(7) + "\n\nq0"
    assert (kept[0]["chosen"], kept[2]["chosen"]) == ("c", "r")  # same goal, opposite labels
    assert rep2.notes["ties_kept"] == 1 and not rep2.dropped
    with pytest.raises(ConfigError, match="ties"):
        relabel(ds, ties="maybe")


def test_missing_scores_are_dropped_and_counted():
    ds = Dataset.from_list([dict(prompt="q0", chosen="c", rejected="r", score_chosen=None, score_rejected=2.0),
                            dict(prompt="q1", chosen="c", rejected="r", score_chosen=9.0, score_rejected=4.0)])
    rep = StageReport("relabel")
    out = relabel(ds, report=rep)
    assert len(out) == 2 and rep.dropped["missing score (overall)"] == 1
    with pytest.raises(DataError, match="score_chosen"):
        relabel(ds.remove_columns(["score_chosen"]))


def _many(n=400):
    return Dataset.from_list([dict(prompt=f"q{i}", chosen=f"c{i}", rejected=f"r{i}", score_chosen=float(i % 9 + 2),
                                   score_rejected=1.0, pair_id=f"p{i}") for i in range(n)])


def test_half_keeps_the_input_size_with_one_row_per_pair():
    ds = _many()
    out = relabel(ds, half=True, seed=7)
    assert len(out) == len(ds)
    assert sorted(out["source_pair_id"]) == sorted(ds["pair_id"])  # each pair exactly once
    halves = out["relabel_half"]
    n_w = halves.count("w")
    assert halves == ["w"] * n_w + ["l"] * (len(ds) - n_w)  # D^w rows first, then D^l
    assert 150 < n_w < 250  # a fair coin over 400 pairs
    by_id = {r["pair_id"]: r for r in ds}
    for r in out:
        src = by_id[r["source_pair_id"]]
        if r["relabel_half"] == "w":
            assert (r["chosen"], r["goal_score"]) == (src["chosen"], src["score_chosen"])
        else:
            assert (r["chosen"], r["goal_score"]) == (src["rejected"], src["score_rejected"])
    assert relabel(ds, half=True, seed=7)["pair_id"] == out["pair_id"]  # seeded
    assert relabel(ds, half=True, seed=8)["pair_id"] != out["pair_id"]


def test_fine_grained_prefilter():
    ds = Dataset.from_list([
        dict(prompt="q0", chosen="c", rejected="r", score_chosen=9, score_rejected=4,
             fine_grained_chosen=4.5, fine_grained_rejected=3.0, pair_id="keep"),
        dict(prompt="q1", chosen="c", rejected="r", score_chosen=9, score_rejected=4,
             fine_grained_chosen=2.0, fine_grained_rejected=3.0, pair_id="worse"),
        dict(prompt="q2", chosen="c", rejected="r", score_chosen=9, score_rejected=4,
             fine_grained_chosen=3.0, fine_grained_rejected=3.0, pair_id="equal"),
        dict(prompt="q3", chosen="c", rejected="r", score_chosen=9, score_rejected=4,
             fine_grained_chosen=None, fine_grained_rejected=3.0, pair_id="na"),
    ])
    rep = StageReport("relabel")
    out = relabel(ds, fine_grained_filter=True, report=rep)
    assert out["source_pair_id"] == ["keep", "equal", "keep", "equal"]
    assert rep.dropped == {"fine-grained chosen < rejected (pre-filter)": 1,
                           "fine-grained rating missing (pre-filter)": 1}
    # D^l swaps the fine-grained columns with their responses
    assert (out[2]["fine_grained_chosen"], out[2]["fine_grained_rejected"]) == (3.0, 4.5)
    assert len(relabel(ds)) == 8  # off by default
    with pytest.raises(ConfigError, match="fine_grained_chosen"):
        relabel(string_pairs(), fine_grained_filter=True)


def test_template_file_override(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("Aim for {goal} out of {scale_max}. Literal {{braces}}.\n")
    out = relabel(string_pairs(), template=str(f))
    assert out[0]["prompt"] == "Aim for 8 out of 10. Literal {braces}.\n\nSort 3 1 2"
    assert out[2]["prompt"] == "Aim for 3.5 out of 10. Literal {braces}.\n\nSort 3 1 2"
    # the same works inline, and the spec keeps the template text (not the path)
    spec = make_spec(template=f)
    assert spec.template == "Aim for {goal} out of {scale_max}. Literal {{braces}}."
    bad = tmp_path / "bad.txt"
    bad.write_text("Aim for {gaol}.")
    with pytest.raises(ConfigError, match=r"bad.txt: unknown placeholder \{gaol\}"):
        relabel(string_pairs(), template=str(bad))
    with pytest.raises(ConfigError, match="no goal placeholder.*does not exist"):
        relabel(string_pairs(), template=str(tmp_path / "missing.txt"))


def test_multi_attribute_goals_from_aspects_and_columns():
    ds = Dataset.from_list([
        dict(prompt="q", chosen="c", rejected="r", score_chosen=8.0, score_rejected=4.0,
             aspects_chosen={"helpfulness": 5.0, "honesty": 4.0}, aspects_rejected={"helpfulness": 2.0, "honesty": 4.5},
             verbosity_chosen=3, verbosity_rejected=1, pair_id="m"),
    ])
    out = relabel(ds, attributes="helpfulness,honesty,verbosity", template="Targets:\n{goal_lines}")
    w, l = out[0], out[1]
    assert w["prompt"] == ("Targets:\nHelpfulness score: 5.\nHonesty score: 4.\nVerbosity score: 3.\n\nq")
    assert l["prompt"] == ("Targets:\nHelpfulness score: 2.\nHonesty score: 4.5.\nVerbosity score: 1.\n\nq")
    assert w["goal_scores"] == {"helpfulness": 5.0, "honesty": 4.0, "verbosity": 3.0}
    assert l["goal_scores"] == {"helpfulness": 2.0, "honesty": 4.5, "verbosity": 1.0}
    assert "goal_score" not in out.column_names  # no overall attribute chosen
    assert l["aspects_chosen"] == {"helpfulness": 2.0, "honesty": 4.5}  # swapped with the responses
    assert (l["chosen"], l["rejected"]) == ("r", "c")
    # per-attribute placeholders, and 'overall' mixed in
    both = relabel(ds, attributes=["overall", "helpfulness"], template="{goal}/{helpfulness}")
    assert both["prompt"] == ["8/5\n\nq", "4/2\n\nq"]
    assert both["goal_score"] == [8.0, 4.0]
    with pytest.raises(ConfigError, match="attribute 'style'.*available"):
        relabel(ds, attributes=["style"])
    with pytest.raises(ConfigError, match=r"\{goal\}"):
        relabel(ds, attributes=["helpfulness", "honesty"], template="{goal}")


def test_multi_attribute_tie_needs_all_attributes_equal():
    ds = Dataset.from_list([
        dict(prompt="q", chosen="c", rejected="r", aspects_chosen={"h": 3.0, "k": 2.0},
             aspects_rejected={"h": 3.0, "k": 1.0}),
        dict(prompt="q", chosen="c", rejected="r", aspects_chosen={"h": 3.0, "k": 2.0},
             aspects_rejected={"h": 3.0, "k": 2.0}),
    ])
    rep = StageReport("relabel")
    assert len(relabel(ds, attributes="h,k", report=rep)) == 2
    assert rep.n_dropped == 1


def test_ids_columns_and_errors():
    ds = Dataset.from_list([dict(prompt="q", chosen="c", rejected="r", score_chosen=3, score_rejected=1)])
    out = relabel(ds)
    assert out["pair_id"] == ["0:w", "0:l"] and out["source_pair_id"] == ["0", "0"]
    with pytest.raises(DataError, match="already relabeled"):
        relabel(out)
    with pytest.raises(ConfigError, match="implicit.*model="):
        relabel(ds, goal_from="implicit")
    with pytest.raises(DataError, match="missing.*rejected"):
        relabel(ds.remove_columns(["rejected"]))
    with pytest.raises(ConfigError, match="placement"):
        relabel(ds, placement="side")


def test_empty_input_gives_empty_output():
    ds = Dataset.from_list([dict(prompt="q", chosen="c", rejected="r", score_chosen=3.0, score_rejected=3.0)])
    out = relabel(ds)
    assert len(out) == 0 and "goal_score" in out.column_names


# -- inference: condition() and the saved spec ---------------------------------------------------

def test_condition_matches_training_prompts_and_defaults_to_best_goal():
    spec = make_spec(template=T)
    out = relabel(conv_pairs(), template=T)
    assert condition(u("Sort 3 1 2"), goal=3.5, spec=spec) == out[2]["prompt"]
    assert condition(conv_pairs()[1]["prompt"], goal=9, spec=spec) == out[1]["prompt"]
    assert condition("Sort 3 1 2", goal=8, spec=spec) == S(8) + "\n\nSort 3 1 2"
    assert condition("hi", spec=spec) == S(10) + "\n\nhi"  # best goal = top of the scale
    assert condition("hi").startswith(DEFAULT_TEMPLATE.split("{")[0])
    msgs = [{"role": "user", "content": "hi", "name": "bob"}]
    got = condition(msgs, spec=make_spec(template=T, placement="user"))
    assert got == [{"role": "user", "content": S(10) + "\n\nhi", "name": "bob"}]
    assert msgs == [{"role": "user", "content": "hi", "name": "bob"}]  # input untouched


def test_condition_with_tokenizer_picks_placement(gemma_tokenizer):
    assert condition(u("hi"), goal=7, spec=make_spec(template=T, placement="auto", tokenizer=gemma_tokenizer)) \
        == u(S(7) + "\n\nhi")
    assert condition(u("hi"), goal=7, tokenizer=gemma_tokenizer)[0]["role"] == "user"


def test_spec_save_load_round_trip_and_find_beside_data(tmp_path):
    spec = make_spec(template=T, attributes="helpfulness,honesty", scale=(1, 5), round_scores=1,
                     placement="user", prompt_format="conversational")
    path = spec.save(tmp_path / "model")
    assert path.name == "prefkit_conditioning.json"
    assert json.loads(path.read_text())["attributes"] == ["helpfulness", "honesty"]
    back = load_conditioning(tmp_path / "model")
    assert back == spec
    assert back.best_goal == 5.0
    assert back.render(None) == "Target Helpfulness score: 5.\nHonesty score: 5."
    assert back.render({"helpfulness": 4.25, "honesty": 3}) == "Target Helpfulness score: 4.2.\nHonesty score: 3."
    assert load_conditioning(tmp_path) is None
    data = tmp_path / "ra.jsonl"
    data.write_text("")
    assert find_conditioning(data) is None
    spec.write_beside(data)
    assert (tmp_path / "ra.jsonl.conditioning.json").is_file()
    assert find_conditioning(data) == spec
    (tmp_path / "dsdir").mkdir()
    spec.write_beside(tmp_path / "dsdir")
    assert find_conditioning(tmp_path / "dsdir") == spec
    assert condition("x", spec=str(tmp_path / "model")) == "Target Helpfulness score: 5.\nHonesty score: 5.\n\nx"
    (tmp_path / "model" / "prefkit_conditioning.json").write_text('{"placement": "system", "colour": 1}')
    with pytest.raises(ConfigError, match="unknown fields"):
        load_conditioning(tmp_path / "model")
    with pytest.raises(ConfigError, match="placement"):
        ConditioningSpec(placement="middle")


# -- property: the columnar code agrees with a plain per-row reference ---------------------------

def _reference(rows, placement, text_of):
    """The method written row by row, as in docs/methods.md section 1 (ties dropped)."""
    import copy

    def cond(prompt, goal):
        s = text_of(goal)
        if isinstance(prompt, str):
            return s + "\n\n" + prompt
        p = copy.deepcopy(prompt)
        if placement == "system":
            if p[0]["role"] == "system":
                p[0]["content"] = s + "\n\n" + p[0]["content"]
            else:
                p.insert(0, {"role": "system", "content": s})
        else:
            first = next(m for m in p if m["role"] == "user")
            first["content"] = s + "\n\n" + first["content"]
        return p

    kept = [r for r in rows if r["score_chosen"] != r["score_rejected"]]
    w = [(cond(r["prompt"], r["score_chosen"]), r["chosen"], r["rejected"]) for r in kept]
    l_ = [(cond(r["prompt"], r["score_rejected"]), r["rejected"], r["chosen"]) for r in kept]
    return w + l_


@pytest.mark.parametrize("placement", ["system", "user"])
def test_matches_per_row_reference(placement):
    from hypothesis import given, settings
    from hypothesis import strategies as st

    role = st.sampled_from(["system", "user", "assistant"])
    text = st.text(alphabet="ab \n{}", max_size=6)
    msgs = st.lists(st.fixed_dictionaries({"role": role, "content": text}), min_size=1, max_size=4).map(
        lambda ms: ms if any(m["role"] == "user" for m in ms) else ms + [{"role": "user", "content": "u"}])
    score = st.integers(2, 20).map(lambda k: k / 2)
    row = st.fixed_dictionaries({"prompt": msgs, "chosen": text, "rejected": text, "score_chosen": score,
                                 "score_rejected": score})

    spec = make_spec(template=T)

    @settings(max_examples=25, deadline=None, database=None)
    @given(st.lists(row, min_size=1, max_size=6))
    def check(rows):
        ds = Dataset.from_list(rows)
        out = relabel(ds, placement=placement, template=T)
        got = list(zip(out["prompt"], out["chosen"], out["rejected"]))
        assert got == _reference(rows, placement, spec.render)

    check()


def test_example_templates_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples" / "templates"
    uses = {"overall.txt": None,
            "ultrafeedback_aspects.txt": "helpfulness,honesty,instruction_following,truthfulness",
            "helpsteer_attributes.txt": "helpfulness,correctness,coherence,complexity,verbosity"}
    assert sorted(p.name for p in root.glob("*.txt")) == sorted(uses)
    for name, attrs in uses.items():
        text = make_spec(template=str(root / name), attributes=attrs).render(7)
        assert "{" not in text and "7" in text


def test_goals_from_implicit_rewards(chatml_tokenizer):
    """Ablation (c): goals from a model's implicit rewards beta*(log pi - log pi_ref), mapped onto 1-10."""
    import numpy as np

    from prefkit.logprobs import score_logps
    from prefkit.toy.tiny import tiny_causal_lm

    policy = tiny_causal_lm(chatml_tokenizer, arch="qwen2", hidden=32, layers=1, heads=2, seed=1)
    ref = tiny_causal_lm(chatml_tokenizer, arch="qwen2", hidden=32, layers=1, heads=2, seed=2)
    ds = Dataset.from_list([dict(prompt=u(f"List {i}"), chosen=a("apple banana" * (i + 1)), rejected=a("fig"),
                                 pair_id=f"p{i}") for i in range(3)])
    rep = StageReport("relabel")
    out = relabel(ds, goal_from="implicit", model=policy, reference=ref, tokenizer=chatml_tokenizer, beta=0.5,
                  template=T, report=rep)
    assert len(out) == 6 and not rep.dropped
    # independent recomputation of the rewards and the linear map (lowest -> 1, highest -> 10)
    sc = score_logps(policy, chatml_tokenizer, ds, reference=ref, progress=False)
    rw = 0.5 * (np.array(sc["logps_chosen"]) - np.array(sc["ref_logps_chosen"]))
    rl = 0.5 * (np.array(sc["logps_rejected"]) - np.array(sc["ref_logps_rejected"]))
    lo, hi = min(rw.min(), rl.min()), max(rw.max(), rl.max())
    goal = lambda r: np.round(1 + 9 * (r - lo) / (hi - lo), 1)  # noqa: E731
    assert np.allclose(out["goal_score"], np.concatenate([goal(rw), goal(rl)]))
    assert max(out["goal_score"]) == 10.0 and min(out["goal_score"]) == 1.0
    assert np.allclose(out["implicit_reward_chosen"][:3], rw) and np.allclose(out["implicit_reward_chosen"][3:], rl)
    assert out[3]["prompt"][0]["content"] == S(format_goal(goal(rl)[0]))
    assert out[3]["chosen"] == a("fig")
    with pytest.raises(ConfigError, match="attributes"):
        relabel(ds, goal_from="implicit", model=policy, tokenizer=chatml_tokenizer, attributes="a,b")
