"""Loading models and tokenizers given as local directories or as objects: one way for every stage.

A path is loaded with transformers (local files only, so nothing is ever downloaded at run time);
an object passes through. A directory that is missing or does not hold a model is a ConfigError
naming it, which the CLI prints as one line.
"""

from __future__ import annotations

from pathlib import Path

from prefkit.errors import ConfigError


def _is_path(x) -> bool:
    return isinstance(x, (str, Path))


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def load_tokenizer(tokenizer):
    """A tokenizer object, or one loaded from a local directory; None stays None."""
    if tokenizer is None or not _is_path(tokenizer):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - reported as a user error
        raise ConfigError(f"tokenizer {tokenizer}: cannot load a tokenizer from it ({_first_line(exc)})") from None


def load_causal_lm(model, tokenizer=None, *, need_tokenizer: bool = True):
    """(model in eval mode, tokenizer) from a directory or objects.

    With a model directory and no tokenizer, the tokenizer saved beside the model is used; with a
    model object and no tokenizer, the directory it was loaded from (if any)."""
    if model is None:
        return None, load_tokenizer(tokenizer)
    if _is_path(model):
        path = str(model)
        if not Path(path).is_dir():
            raise ConfigError(f"model directory not found: {path}")
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - reported as a user error
            raise ConfigError(f"model {path}: cannot load a causal LM from it ({_first_line(exc)})") from None
        if tokenizer is None and need_tokenizer:
            tokenizer = path
    elif tokenizer is None and need_tokenizer:
        saved = getattr(model, "name_or_path", None)
        if saved and Path(saved).is_dir():
            tokenizer = saved
        else:
            raise ConfigError("pass `tokenizer` with a model object that has no saved directory")
    return model.eval(), load_tokenizer(tokenizer)
