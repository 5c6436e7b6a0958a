"""The conditioning as a chat template (prefkit.relabel.export_chat_template): the template a
server applies to plain messages renders exactly the text prefkit.generate renders."""

from __future__ import annotations

import warnings

import pytest
from helpers import save_tiny

from prefkit.generate import render_prompts
from prefkit.relabel import condition, export_chat_template, load_conditioning, make_spec
from prefkit.relabel.serving import base_chat_template, conditioned_chat_template

CONVERSATIONS = [
    [{"role": "user", "content": "Sort these words: fig, apple."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Now \"quote\" {braces} and a\nnew line."}],
    [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "Count to 3."}],
]


def _served(tokenizer, template, messages):
    """What a server renders: the tokenizer's (exported) template over the client's messages."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, chat_template=template)


@pytest.mark.parametrize("fixture", ["chatml_tokenizer", "llama3_tokenizer", "gemma_tokenizer"])
@pytest.mark.parametrize("template, attributes", [
    (None, None),
    ("Targets ({scale_min}-{scale_max}), answer accordingly:\n{goal_lines}", "helpfulness,honesty"),
    ("Rate: {goal}/10 {{exactly}}", None),                 # short fixed text: no mark, still exact
])
def test_exported_template_renders_what_generate_renders(request, fixture, template, attributes):
    tok = request.getfixturevalue(fixture)
    spec = make_spec(placement="auto", tokenizer=tok, template=template, attributes=attributes)
    exported = conditioned_chat_template(spec, tok.chat_template)
    convs = [c for c in CONVERSATIONS if spec.placement == "system" or c[0]["role"] != "system"]
    for messages in convs:
        want = render_prompts([messages], tok, spec=spec)[0]
        assert _served(tok, exported, messages) == want
        assert spec.render() in want
    # prompts that prefkit already conditioned (any goal) are not conditioned twice
    if template is None:
        for messages in convs:
            conditioned = condition(messages, goal=4, spec=spec, tokenizer=tok)
            assert _served(tok, exported, conditioned) == _served(tok, tok.chat_template, conditioned)
    # the model's own template is kept inside, and exporting again replaces the header
    assert base_chat_template(exported) == tok.chat_template
    assert conditioned_chat_template(spec, exported, goal=7) == conditioned_chat_template(spec, tok.chat_template, 7)


def test_user_placement_without_a_user_turn_is_an_error_as_in_condition(gemma_tokenizer):
    from jinja2.exceptions import TemplateError

    spec = make_spec(placement="user", tokenizer=gemma_tokenizer)
    exported = conditioned_chat_template(spec, gemma_tokenizer.chat_template)
    with pytest.raises(TemplateError, match="user placement needs a user turn"):
        _served(gemma_tokenizer, exported, [{"role": "assistant", "content": "x"}])


def test_real_smollm2_template(smollm2_dir, tmp_path):
    import shutil

    from prefkit.models import load_tokenizer

    d = tmp_path / "smol"
    shutil.copytree(smollm2_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))   # the tokenizer's files
    tok = load_tokenizer(str(d))
    spec = make_spec(placement="auto", tokenizer=tok)
    spec.save(d)
    want = render_prompts(CONVERSATIONS, tok, spec=spec)
    export_chat_template(d)
    from transformers import AutoTokenizer

    served = AutoTokenizer.from_pretrained(d)     # what transformers serve and vLLM load
    assert [_served(served, served.chat_template, m) for m in CONVERSATIONS] == want
    # prefkit itself reads the model's own template and conditions from the spec, as before
    assert load_tokenizer(str(d)).chat_template == tok.chat_template
    assert render_prompts(CONVERSATIONS, served, spec=load_conditioning(d)) == want


def test_export_needs_a_spec(tmp_path, chatml_tokenizer):
    from prefkit.errors import ConfigError

    chatml_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no prefkit_conditioning.json"):
        export_chat_template(tmp_path)


def _relabeled(n=8):
    import datasets

    from prefkit.relabel import relabel_with_spec

    rows = [{"prompt": [{"role": "user", "content": f"Sort {i} 3 1"}],
             "chosen": [{"role": "assistant", "content": "1 3"}], "rejected": [{"role": "assistant", "content": "3 1"}],
             "score_chosen": 8.0, "score_rejected": 3.0} for i in range(n)]
    return relabel_with_spec(datasets.Dataset.from_list(rows), placement="system")


def _cfg(tiny_model_dir, out, **kw):
    from prefkit.train import DPOConfig

    return DPOConfig(model_name_or_path=tiny_model_dir, output_dir=str(out), max_steps=1, per_device_train_batch_size=4,
                     max_length=64, max_prompt_length=48, precision="fp32", disable_tqdm=True, report_to=["none"],
                     ref_cache_dir=str(out) + "_cache", logging_steps=1, save_strategy="no", **kw)


@pytest.fixture()
def tiny_model_dir(tmp_path, chatml_tokenizer):
    return save_tiny(tmp_path / "tiny", chatml_tokenizer, layers=1)


def test_training_on_in_memory_relabeled_data_without_a_spec_warns(tiny_model_dir, tmp_path):
    from prefkit.train import train_dpo

    ra, spec = _relabeled()
    with pytest.warns(UserWarning, match="looks relabeled .* but no conditioning spec goes with it"):
        train_dpo(_cfg(tiny_model_dir, tmp_path / "a"), train_dataset=ra)
    assert not (tmp_path / "a" / "prefkit_conditioning.json").exists()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*looks relabeled.*")
        train_dpo(_cfg(tiny_model_dir, tmp_path / "b", export_chat_template=True), train_dataset=ra,
                  conditioning=spec)
        train_dpo(_cfg(tiny_model_dir, tmp_path / "c", conditioning="none"), train_dataset=ra)
    from transformers import AutoTokenizer

    served = AutoTokenizer.from_pretrained(tmp_path / "b")
    msgs = [{"role": "user", "content": "Sort 9 3 1"}]
    assert _served(served, served.chat_template, msgs) == render_prompts([msgs], served, spec=spec)[0]


def test_export_switch_without_a_spec_fails_before_training(tiny_model_dir, tmp_path):
    from prefkit.errors import ConfigError
    from prefkit.train import train_dpo

    ra, _ = _relabeled()
    with pytest.raises(ConfigError, match="export_chat_template: the training data has no conditioning spec"):
        train_dpo(_cfg(tiny_model_dir, tmp_path / "a", export_chat_template=True), train_dataset=ra)


def test_models_export_chat_template_command(tmp_path, chatml_tokenizer, capsys):
    from transformers import AutoTokenizer

    from prefkit.cli import main

    chatml_tokenizer.save_pretrained(tmp_path)
    spec = make_spec(placement="user", template="Aim for {goal} of {scale_max}.")
    spec.save(tmp_path)
    assert main(["models", "export-chat-template", str(tmp_path), "--goal", "8"]) == 0
    assert "Aim for 8 of 10." in capsys.readouterr().out
    served = AutoTokenizer.from_pretrained(tmp_path)
    msgs = [{"role": "user", "content": "Sort 2 1"}]
    assert _served(served, served.chat_template, msgs) == render_prompts([msgs], chatml_tokenizer, spec=spec,
                                                                         goal=8)[0]
