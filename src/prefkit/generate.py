"""Batched local sampling from any Hugging Face causal LM.

    from prefkit.generate import generate
    samples = generate("out/ra-model", ["Sort these words alphabetically: fig apple"], n=4,
                       temperature=1.0, top_p=1.0, max_new_tokens=64, seed=0)
    # -> [["apple fig", "apple fig", "fig apple", "apple"]]   one list of n strings per prompt

- `model` is a directory (model + tokenizer) or a loaded `PreTrainedModel` (then pass
  `tokenizer`, or its `name_or_path` must hold one).
- Prompts are strings (sent as one user turn) or TRL message lists (the turns before the
  answer). The tokenizer's chat template is applied with the generation prompt, and each prompt
  is tokenized once. Batches are left-padded, formed in prompt-length order so that padding stays
  small, and hold whole prompts' samples; the answers come back in the prompts' order.
- `batch_size` counts rows (samples); None (the default) picks it from memory
  (`hf_decode.batch_rows`: the KV cache of one batch within a quarter of the free memory, at
  most 256 rows) on "hf", and ONNX Runtime GenAI's largest batch on "ort".
- Reward conditioning: when the model directory holds `prefkit_conditioning.json` (written by
  the trainer for a model trained on reward-augmented data), every prompt is conditioned with
  `prefkit.relabel.condition` on `goal` (default: the spec's best score) before the template
  is applied. `conditioning=None` switches that off; a spec object overrides the file.
- Sampling is seeded: the same call gives the same samples (for one engine and batch size).
  "hf" decodes with prefkit's own loop (`prefkit.hf_decode`: one prefill per prompt, finished rows
  leave the batch); its greedy text is HF `generate`'s, its sampled draws for a seed are not.
- `engine` picks what decodes (`prefkit.engines`): "hf" (prefkit.hf_decode on the transformers model, always
  there), "ort" (ONNX Runtime GenAI, the `engines` extra; the model is converted once per
  identity and cached), or None/"auto" for the default: "hf", or $PREFKIT_ENGINE (at the loop's
  shapes "ort" measured 0.78x HF here: docs/generate.md). Greedy decoding (temperature=0) gives
  HF's text on either. With PREFKIT_ENGINE=ort, "hf" still decodes models below
  `engines.ORT_MIN_PARAMS` parameters (conversion costs more than it saves), PEFT model objects,
  models the converter cannot convert, and prompts holding the engine's padding token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from prefkit import engines, hf_decode
from prefkit.errors import ConfigError
from prefkit.models import base_chat_template, load_causal_lm
from prefkit.relabel import condition, load_conditioning
from prefkit.report import progress_enabled


def resolve_conditioning(model, conditioning: Any = "auto"):
    """The conditioning spec to apply for `model`: 'auto' reads the model directory's file."""
    if conditioning is None or conditioning is False:
        return None
    if conditioning != "auto":
        return conditioning
    path = model if isinstance(model, (str, Path)) else getattr(model, "name_or_path", None)
    if not path or not Path(path).is_dir():
        return None
    if not (Path(path) / "prefkit_conditioning.json").exists():
        return None
    return load_conditioning(path)


def render_prompts(prompts: Sequence, tokenizer, spec=None, goal=None) -> list[str]:
    """Chat-templated prompt texts (generation prompt added), conditioned when `spec` is given."""
    # A string prompt is one user turn; conditioning is applied to the message list, so that a
    # system placement gives a system message, as in the (conversational) training data.
    conversations = [[{"role": "user", "content": p}] if isinstance(p, str) else list(p) for p in prompts]
    if spec is not None:
        g = spec.best_goal if goal is None else goal
        conversations = [condition(m, goal=g, spec=spec, tokenizer=tokenizer) for m in conversations]
    # the model's own template (an exported one conditions by itself, for servers)
    template = base_chat_template(getattr(tokenizer, "chat_template", None))
    texts = []
    for messages in conversations:
        texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                   chat_template=template))
    return texts


def generate(model, prompts: Sequence, *, tokenizer=None, n: int = 1, temperature: float = 1.0,
             top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int | None = None, seed: int = 0,
             goal: float | None = None, conditioning: Any = "auto", progress: bool = True,
             desc: str = "generate", engine: str | None = None) -> list[list[str]]:
    """Sample `n` responses for each prompt; returns one list of `n` strings per prompt.

    temperature=0 decodes greedily (then the n responses are identical).
    """
    if n < 1:
        raise ConfigError(f"generate: n must be >= 1, got {n}")
    explicit = engine not in (None, "auto")
    engine = engines.check_engine(engine)
    spec = resolve_conditioning(model, conditioning)
    model, tokenizer = load_causal_lm(model, tokenizer)
    texts = render_prompts(prompts, tokenizer, spec=spec, goal=goal)
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    # One job per sample; sorted by prompt length so each batch pads little.
    jobs = sorted(((i, j) for i in range(len(texts)) for j in range(n)), key=lambda ij: len(encoded[ij[0]]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = [tokenizer.eos_token_id]
    cfg_eos = getattr(model.generation_config, "eos_token_id", None)
    if cfg_eos is not None:
        eos_ids += cfg_eos if isinstance(cfg_eos, list) else [cfg_eos]
    eos_ids = sorted({e for e in eos_ids if e is not None})
    if engine == "ort" and not explicit:
        engine = engines.auto_engine_for(model)
    if engine == "ort":
        try:
            path = engines.convert_ort(model, tokenizer)
        except ConfigError as exc:
            if explicit:
                raise
            engines.warn_fallback(model, exc)
            path, engine = None, "hf"
    if engine == "ort":
        unused = engines.ort_pad_id(path)
        if not any(unused in e for e in encoded):
            return _generate_ort(path, encoded, jobs, n, tokenizer, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                 eos_ids=eos_ids, progress=progress, desc=desc)
        if explicit:
            raise ConfigError(f"generate: a prompt holds token {unused}, the ort engine's padding id; "
                              "use engine='hf'")
    rows = batch_size or hf_decode.batch_rows(model, max(map(len, encoded), default=0) + max_new_tokens)
    # Units of one prompt's samples (at most `rows`), in prompt-length order; batches of whole units.
    units = [(i, list(range(j, min(n, j + rows)))) for i in sorted(range(len(texts)), key=lambda i: len(encoded[i]))
             for j in range(0, n, rows)]
    batches, cur = [], []
    for unit in units:
        if cur and sum(len(u[1]) for u in cur) + len(unit[1]) > rows:
            batches.append(cur)
            cur = []
        cur.append(unit)
    if cur:
        batches.append(cur)
    out: list[list[str]] = [[""] * n for _ in texts]
    torch.manual_seed(seed)
    bar = tqdm(total=len(jobs), desc=desc, unit="sample", disable=not progress_enabled(progress))
    with torch.inference_mode():
        for chunk in batches:
            new = hf_decode.decode(model, [encoded[i] for i, _ in chunk], [len(js) for _, js in chunk],
                                   pad_id=pad_id, eos_ids=eos_ids, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p)
            decoded = iter(tokenizer.batch_decode(new, skip_special_tokens=True))
            for i, js in chunk:
                for j in js:
                    out[i][j] = next(decoded).strip()
            bar.update(len(new))
    bar.close()
    return out


def _generate_ort(path, encoded, jobs, n, tokenizer, *, temperature, top_p, max_new_tokens, batch_size, seed,
                  eos_ids, progress, desc) -> list[list[str]]:
    """`generate` through ONNX Runtime GenAI: batches of prompts of one token length (no
    padding), each batch seeded with `seed` + its index."""
    out: list[list[str]] = [[""] * n for _ in encoded]
    batch_size = min(batch_size or engines.ORT_MAX_BATCH, engines.ORT_MAX_BATCH)
    batches, cur = [], []
    for job in jobs:  # jobs are sorted by prompt length
        if cur and (len(cur) == batch_size or len(encoded[job[0]]) != len(encoded[cur[0][0]])):
            batches.append(cur)
            cur = []
        cur.append(job)
    if cur:
        batches.append(cur)
    bar = tqdm(total=len(jobs), desc=desc, unit="sample", disable=not progress_enabled(progress))
    for k, chunk in enumerate(batches):
        new = engines.ort_generate(path, [encoded[i] for i, _ in chunk], temperature=temperature, top_p=top_p,
                                   max_new_tokens=max_new_tokens, seed=seed + k, eos_ids=eos_ids,
                                   vocab_size=len(tokenizer))
        for (i, j), text in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True)):
            out[i][j] = text.strip()
        bar.update(len(chunk))
    bar.close()
    return out
