"""prefkit.models: GGUF import of the real SmolLM2, shortcuts, one loader, one model identity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefkit.errors import ConfigError


def test_identity_samples_tensors_past_two_to_the_24(monkeypatch):
    """The crash every real LLM hit: a float index grid cannot address elements past 2^24
    (IndexError in the reference cache). The sample must reach the last element of a tensor with
    more than 2^24 values, and a change there must change the identity."""
    import torch

    import prefkit.models as models

    monkeypatch.setattr(models, "FULL_HASH_NUMEL", 1000)     # force the sampled path
    n = (1 << 24) + 7
    layer = torch.nn.Linear(1, 1)
    layer.big = torch.nn.Parameter(torch.zeros(n, dtype=torch.bfloat16))
    first = models.model_identity(layer)
    assert first["weights_hashed"] == f"sample/{models.SAMPLE_PER_TENSOR}"
    with torch.no_grad():
        layer.big[-1] = 1.0
    assert models.model_identity(layer)["weights_sha"] != first["weights_sha"]


def test_identity_full_hash_sees_every_weight_and_skips_adapters():
    import torch

    from prefkit.models import model_identity

    m = torch.nn.Sequential(torch.nn.Linear(4, 4))
    a = model_identity(m)
    with torch.no_grad():
        m[0].weight[2, 1] += 1e-3
    b = model_identity(m)
    assert a["weights_sha"] != b["weights_sha"] and a["weights_hashed"] == "all"
    m.register_parameter("lora_A", torch.nn.Parameter(torch.ones(3)))
    assert model_identity(m, skip_substrings=("lora_",))["weights_sha"] == b["weights_sha"]
    assert model_identity(m)["weights_sha"] != b["weights_sha"]


def test_reference_cache_and_selection_cache_share_one_identity(tiny_llama):
    from prefkit.models import model_identity
    from prefkit.select.cache import model_identity as select_identity
    from prefkit.train.reference_cache import model_identity as reference_identity

    assert reference_identity(tiny_llama) == select_identity(tiny_llama) == model_identity(tiny_llama)


def test_missing_model_and_bad_gguf_are_one_line_errors(tmp_path):
    from prefkit.models import import_gguf, load_causal_lm

    with pytest.raises(ConfigError, match="model directory not found"):
        load_causal_lm(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="GGUF file not found"):
        import_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="cannot load this GGUF file"):
        import_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_imported_files_are_readable_like_any_other_written_file(tmp_path):
    """safetensors writes 0600; an imported model directory gets the umask's usual modes."""
    import os

    from prefkit.files import readable_by_all

    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "model.safetensors").chmod(0o600)
    old = os.umask(0o022)
    try:
        readable_by_all(tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_lora_adapter_without_a_base_model_is_a_one_line_error_naming_file_and_field(tmp_path):
    from prefkit.models import load_lora_merged

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "", "peft_type": "LORA"}))
    with pytest.raises(ConfigError, match=r"adapter_config\.json: field 'base_model_name_or_path' is empty"):
        load_lora_merged(tmp_path)


def test_unknown_bundled_name_lists_the_known_ones():
    from prefkit.models import bundled_gguf

    with pytest.raises(ConfigError, match="known: smollm2"):
        bundled_gguf("gpt5")


@pytest.mark.slow
def test_smollm2_import_is_a_plain_llama_directory(smollm2_dir):
    """The bundled GGUF becomes a normal safetensors directory that plain transformers loads
    (no GGUF config left), with SmolLM2's ChatML template and its injected system prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = Path(smollm2_dir)
    assert (d / "model.safetensors").is_file() and (d / "prefkit_import.json").is_file()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llama" and "quantization_config" not in cfg
    assert cfg["num_hidden_layers"] == 30 and cfg["vocab_size"] == 49152
    tok = AutoTokenizer.from_pretrained(d)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(d)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert json.loads((d / "prefkit_import.json").read_text())["parameters"] == 134_515_008


@pytest.mark.slow
def test_import_is_reused_and_the_cli_prints_the_directory(smollm2_dir):
    """A second import of the same file does no work: it returns the same directory (and its
    weights file is not rewritten)."""
    before = (Path(smollm2_dir) / "model.safetensors").stat().st_mtime_ns
    res = subprocess.run([sys.executable, "-m", "prefkit", "models", "import-gguf", "smollm2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(smollm2_dir)
    assert (Path(smollm2_dir) / "model.safetensors").stat().st_mtime_ns == before
    listed = subprocess.run([sys.executable, "-m", "prefkit", "models", "list"], capture_output=True, text=True)
    assert f"imported at {smollm2_dir}" in listed.stdout
