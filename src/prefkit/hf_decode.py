"""The "hf" engine's decoding loop: a transformers causal LM with its own KV cache, written for
sampling many answers per prompt (docs/generate.md measures it against HF `generate`).

- Each prompt is prefilled once and its cache rows are repeated for its samples (HF `generate`
  prefills every sample's copy of the prompt).
- A row leaves the batch when it emits an end token (`DynamicCache.batch_select_indices`), so
  a batch's later steps compute only the rows still decoding (HF `generate` keeps decoding
  finished rows as padding until the batch's longest row ends).
- Sampling applies transformers' own temperature and top-p warpers and draws with
  `torch.multinomial`, as `generate` does; greedy decoding takes the argmax. Greedy text is
  HF's (tests/toy/test_generate.py, tests/test_generate_engines.py); sampled draws differ from
  `generate`'s for one seed, as the rows drawn at each step differ.
- `batch_rows` picks the batch size from the memory its KV cache needs.
"""

from __future__ import annotations

import os

import torch
from transformers import DynamicCache
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

# Batches are capped at this many rows: at 64 -> 256 rows a decoding step's cost per row still
# fell on SmolLM2 (docs/generate.md), and a larger batch only adds left padding.
MAX_AUTO_ROWS = 256
# The share of free memory that one batch's KV cache may take.
KV_MEMORY_SHARE = 0.25


def kv_bytes_per_token(model) -> int:
    """Bytes of KV cache one token of one row takes (all layers, keys and values)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = cfg.num_hidden_layers
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    return 2 * layers * heads * head_dim * itemsize


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on `device`: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def batch_rows(model, max_tokens: int) -> int:
    """Rows per batch chosen by memory: as many as let one batch's KV cache (`max_tokens` =
    longest prompt + new tokens per row) take at most KV_MEMORY_SHARE of the free memory,
    between 1 and MAX_AUTO_ROWS."""
    per_row = kv_bytes_per_token(model) * max(1, max_tokens)
    fit = int(KV_MEMORY_SHARE * free_memory_bytes(next(model.parameters()).device) // per_row)
    return max(1, min(MAX_AUTO_ROWS, fit))


def decode(model, prompts: list[list[int]], repeats: list[int], *, pad_id: int, eos_ids: list[int],
           max_new_tokens: int, temperature: float, top_p: float) -> list[list[int]]:
    """New token ids (up to and with the first end token, as `generate` returns them) for `repeats[k]` samples of each
    prompt `prompts[k]`, in order: prompt 0's samples, then prompt 1's, ... One batch: the caller
    sizes it."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, seq in enumerate(prompts):
        ids[b, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[b, width - len(seq):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    warpers = []
    if temperature > 0:
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    # one row per sample: the prompt's cache rows repeated
    rows = torch.repeat_interleave(torch.arange(len(prompts), device=device),
                                   torch.tensor(repeats, device=device))
    cache.batch_select_indices(rows)
    logits = out.logits[:, -1].float()[rows]
    mask, position = mask[rows], positions[rows, -1]
    alive = torch.arange(len(rows), device=device)  # each live row's sample index
    eos = torch.tensor(sorted(set(eos_ids)), device=device)
    new: list[list[int]] = [[] for _ in range(len(rows))]
    for step in range(max_new_tokens):
        if temperature > 0:
            scores = logits
            for w in warpers:
                scores = w(None, scores)
            token = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        else:
            token = logits.argmax(-1)
        done = torch.isin(token, eos)
        for r, t in zip(alive.tolist(), token.tolist()):
            new[r].append(t)
        if step == max_new_tokens - 1:
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            cache.batch_select_indices(keep)
            token, mask, position, alive = token[keep], mask[keep], position[keep], alive[keep]
        position = position + 1
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None],
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1].float()
    return new
