"""Generation engines behind `prefkit.generate.generate` and the local backend.

- `"hf"`: prefkit's decoding loop (`prefkit.hf_decode`) on the transformers model; always
  available.
- `"ort"`: ONNX Runtime GenAI (`pip install 'prefkit[engines]'`). A model is converted once with
  the package's own model builder (fp32, CPU) into `models_cache_dir()/engines/ort-<identity>`,
  keyed by `prefkit.models.model_identity`, so a loop that trains a new model each round converts
  each round's model once and reuses it for every call after.

`default_engine()` is "hf", or $PREFKIT_ENGINE when set: at the loop's shapes (64 prompts x 4
samples x 128 tokens on SmolLM2, quiet 2-core machine, docs/generate.md) "ort" ran at 0.78x HF
`generate`, because its batches hold only prompts of one token length (a prompt's n samples) while
HF batches 32 padded rows; it was 5.4x at 8 prompts x 32 tokens. "ort" is there to ask for
(`engine="ort"`, `PREFKIT_ENGINE=ort`), as it passes the same fidelity checks.

Fidelity rules this module keeps (docs/generate.md measures them):
- prefkit renders and tokenizes every prompt itself (chat template, reward conditioning), and
  the engine receives token ids, so conditioning is the same as for HF;
- batches only hold prompts of one token length (no padding), because the builder's
  attention gave different greedy text than unpadded decoding for left-padded batches;
- the engine's padding id is set to a token that no prompt contains (it masks that id);
- top-k is off (top_k = vocabulary size), as in `generate`'s HF path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from prefkit.errors import ConfigError
from prefkit.models import exclusive_lock, model_identity, models_cache_dir

ENGINES = ("ort", "hf")
CONVERT_MARKER = "prefkit_engine.json"


def engine_available(name: str) -> bool:
    if name == "hf":
        return True
    if name == "ort":
        try:
            import onnx  # noqa: F401, PLC0415  optional extra (the builder's dependencies): probed, not used
            import onnx_ir  # noqa: F401, PLC0415  optional extra
            import onnxruntime_genai  # noqa: F401, PLC0415  optional extra
        except ImportError:
            return False
        return True
    return False


def default_engine() -> str:
    """$PREFKIT_ENGINE when set, else "hf" (the faster one at loop shapes; see the module docstring)."""
    env = os.environ.get("PREFKIT_ENGINE")
    if env:
        return check_engine(env)
    return "hf"


# Under the default, smaller models stay on "hf": a conversion starts a builder process and
# writes the model twice, a fixed cost that a small model does not win back (a judgement, not a
# measurement: docs/generate.md).
ORT_MIN_PARAMS = 20_000_000
# The most sequences ONNX Runtime GenAI decodes in one Generator: 0.18 refuses more ("batch_size (64)
# must be in [1, 32]", found by benchmarks/generate.py at 64 prompts x 4 samples); larger batches are split.
ORT_MAX_BATCH = 32
_WARNED: set[str] = set()


def auto_engine_for(model) -> str:
    """The engine for a loaded model when the default is "ort" ($PREFKIT_ENGINE=ort): "ort" for
    a merged model of at least ORT_MIN_PARAMS parameters, else "hf"."""
    if not engine_available("ort") or hasattr(model, "merge_and_unload"):
        return "hf"
    return "ort" if sum(p.numel() for p in model.parameters()) >= ORT_MIN_PARAMS else "hf"


def warn_fallback(model, exc: Exception) -> None:
    """One line on stderr (once per model class) when the default engine falls back to "hf"."""
    name = type(model).__name__
    if name not in _WARNED:
        _WARNED.add(name)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"prefkit: onnxruntime-genai cannot run {name} ({first}); sampling with transformers",
              file=sys.stderr)


def check_engine(name: str | None) -> str:
    """`name` validated (None: the default); a ConfigError for an unknown or missing engine."""
    if name is None or name == "auto":
        return default_engine()
    if name not in ENGINES:
        raise ConfigError(f"engine: unknown engine {name!r} (choose from {', '.join(ENGINES)}, auto)")
    if not engine_available(name):
        raise ConfigError(f"engine {name!r} is not installed: pip install 'prefkit[engines]'")
    return name


# ---------------------------------------------------------------------------------------------
# Conversion (ONNX Runtime GenAI)
# ---------------------------------------------------------------------------------------------

def engine_cache_dir() -> Path:
    return models_cache_dir() / "engines"


def _identity_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _unused_token_id(tokenizer) -> int:
    """A token id for the engine's padding that prompts do not contain: the unknown token, else
    the last id of the vocabulary."""
    for tid in (tokenizer.unk_token_id, len(tokenizer) - 1):
        if tid is not None and tid not in (tokenizer.eos_token_id, tokenizer.bos_token_id):
            return int(tid)
    return int(len(tokenizer) - 1)


def convert_ort(model, tokenizer, *, log=None) -> Path:
    """The ONNX Runtime GenAI directory for a loaded (merged, non-PEFT) causal LM, converted on
    first use and cached by the model's identity."""
    if hasattr(model, "merge_and_unload"):
        raise ConfigError("convert a LoRA model after merging it (prefkit.models.load_lora_merged)")
    identity = model_identity(model)
    out = engine_cache_dir() / f"ort-{_identity_key(identity)}"
    marker = out / CONVERT_MARKER
    if marker.is_file():
        return out
    with exclusive_lock(engine_cache_dir() / f".{out.name}.lock"):
        if marker.is_file():
            return out
        with tempfile.TemporaryDirectory(dir=engine_cache_dir(), prefix=".convert-") as tmp:
            src, dst = Path(tmp) / "hf", Path(tmp) / "ort"
            model.save_pretrained(src)
            tokenizer.save_pretrained(src)
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", src.name, "-i", str(src),
                   "-o", str(dst), "-p", "fp32", "-e", "cpu", "-c", str(Path(tmp) / "cache")]
            env = dict(os.environ, TQDM_DISABLE="1")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0 or not (dst / "genai_config.json").is_file():
                tail = (proc.stderr or proc.stdout)[-1500:]
                raise ConfigError(f"onnxruntime-genai could not convert {identity['name_or_path'] or 'the model'} "
                                  f"({identity['class']}):\n{tail}")
            cfg_path = dst / "genai_config.json"
            cfg = json.loads(cfg_path.read_text())
            cfg["model"]["pad_token_id"] = _unused_token_id(tokenizer)
            cfg_path.write_text(json.dumps(cfg, indent=1))
            (dst / CONVERT_MARKER).write_text(json.dumps({"identity": identity}, indent=1))
            if out.exists():
                shutil.rmtree(out)
            shutil.move(str(dst), str(out))
        _prune(keep=out)
    if log:
        log(f"converted {identity['name_or_path'] or identity['class']} for onnxruntime-genai: {out}")
    return out


KEEP_CONVERSIONS = 3  # a conversion is as large as the model: a loop keeps the latest rounds' only


def _prune(keep: Path) -> None:
    """Remove all but the KEEP_CONVERSIONS most recently converted models (never `keep`)."""
    done = sorted((d for d in engine_cache_dir().glob("ort-*") if (d / CONVERT_MARKER).is_file()),
                  key=lambda d: (d / CONVERT_MARKER).stat().st_mtime, reverse=True)
    for old in [d for d in done if d != keep][KEEP_CONVERSIONS - 1:]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Generation (ONNX Runtime GenAI)
# ---------------------------------------------------------------------------------------------

_ORT_MODELS: dict[str, object] = {}
_ORT_LOCK = threading.Lock()


def ort_model(path: Path):
    """The loaded engine model, running on as many threads as torch in this process."""
    import onnxruntime_genai as og  # noqa: PLC0415  optional extra
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    threads = torch.get_num_threads()
    key = f"{path}:{threads}"
    with _ORT_LOCK:
        if key not in _ORT_MODELS:
            _ORT_MODELS.clear()  # one converted model at a time: a loop moves on to the next round's
            config = og.Config(str(path))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
            _ORT_MODELS[key] = og.Model(config)
        return _ORT_MODELS[key]


def ort_pad_id(path: Path) -> int:
    return int(json.loads((Path(path) / "genai_config.json").read_text())["model"]["pad_token_id"])


def ort_next_token_logits(path: Path, ids: list[int]):
    """The engine's logits (a 1-D numpy array over the vocabulary) for the token after `ids`: what
    the fidelity checks compare with HF's (tests/test_generate_engines.py, benchmarks/generate.py)."""
    import numpy as np  # noqa: PLC0415  heavy (numpy): only with the optional engine
    import onnxruntime_genai as og  # noqa: PLC0415  optional extra

    model = ort_model(path)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, batch_size=1)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray([ids], dtype=np.int32))
    return np.asarray(gen.get_logits()).reshape(-1)


def ort_generate(path: Path, batch: list[list[int]], *, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int, eos_ids: list[int], vocab_size: int) -> list[list[int]]:
    """New token ids for a batch of prompts of one length (each row its own sample)."""
    import numpy as np  # noqa: PLC0415  heavy (numpy): only with the optional engine
    import onnxruntime_genai as og  # noqa: PLC0415  optional extra

    width = len(batch[0])
    if any(len(b) != width for b in batch):
        raise ValueError("ort_generate: a batch holds prompts of one length")
    model = ort_model(path)
    params = og.GeneratorParams(model)
    opts = dict(max_length=width + max_new_tokens, batch_size=len(batch))
    if temperature > 0:
        opts.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=int(vocab_size),
                    random_seed=int(seed) % (2**31))
    else:
        opts.update(do_sample=False)
    params.set_search_options(**opts)
    gen = og.Generator(model, params)
    gen.append_tokens(np.asarray(batch, dtype=np.int32))
    eos = set(eos_ids)
    while not gen.is_done():
        gen.generate_next_token()
    out = []
    for i in range(len(batch)):
        seq = [int(t) for t in gen.get_sequence(i)[width:]]
        for k, t in enumerate(seq):  # up to the first end token (the engine pads finished rows)
            if t in eos:
                seq = seq[:k]
                break
        out.append(seq)
    return out
