"""Scoring (prompt, response) with a Hugging Face sequence-classification reward model.

It sits below both stages that use it (synth and evaluate), next to `prefkit.logprobs`.

Used by West-of-N, `prefkit score --reward-model` and `prefkit eval rm`. Each (prompt, response)
is tokenized by `prefkit.tokenize.encode_pair`, the same layout the trainers use (chat template
for message lists; prompt + response + EOS for strings; the same truncation), so a reward model
is scored on exactly the token sequences it was trained on. Batches are built from
length-sorted inputs to waste little padding.
"""

from __future__ import annotations

import os
from collections import Counter

from tqdm.auto import tqdm

from prefkit.errors import ConfigError
from prefkit.models import load_pretrained, load_tokenizer, resolve_model_path
from prefkit.report import progress_enabled
from prefkit.tokenize import SkipPair, encode_pair


class RewardModelScorer:
    def __init__(self, model, tokenizer=None, *, batch_size: int = 16, max_length: int = 1024,
                 max_prompt_length: int | None = 512,
                 device: str | None = None):
        import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light

        if isinstance(model, (str, os.PathLike)):
            self.name = str(model)

            path = resolve_model_path(model)
            tokenizer = load_tokenizer(tokenizer if tokenizer is not None else path)
            model = load_pretrained(path, kind="sequence-classification")
        else:
            if tokenizer is None:

                raise ConfigError("RewardModelScorer with a loaded model needs its tokenizer")
            self.name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        if getattr(model.config, "num_labels", 1) != 1:

            raise ConfigError(f"{self.name}: a reward model has one output (num_labels=1), "
                              f"this one has {model.config.num_labels}")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.truncated = 0
        self.skipped: Counter = Counter()

    def encode(self, prompt, response) -> list[int] | None:
        """Token ids exactly as `prefkit.tokenize` lays out a pair for training (prompt then
        response, same chat-template rendering and truncation); None for an unscorable input."""

        if isinstance(prompt, list) and isinstance(response, str):
            response = [{"role": "assistant", "content": response}]
        try:
            enc = encode_pair(prompt, response, response, self.tokenizer, max_length=self.max_length,
                              max_prompt_length=self.max_prompt_length)
        except SkipPair as exc:
            self.skipped[str(exc.args[0]) if exc.args else "unscorable"] += 1
            return None
        if enc["truncated"]:
            self.truncated += 1
        return enc["prompt_ids"] + enc["chosen_ids"]

    def score(self, prompts: list, responses: list, *, progress: bool = True,
              desc: str = "reward model") -> list[float | None]:
        """One scalar reward per (prompt, response); None where it cannot be encoded (counted in
        `self.skipped`, e.g. an empty response)."""
        import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in length")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses)]
        order = sorted((i for i in range(len(encoded)) if encoded[i] is not None), key=lambda i: len(encoded[i]))
        out: list[float | None] = [None] * len(encoded)
        pad = self.tokenizer.pad_token_id
        bar = tqdm(total=len(order), desc=desc, unit="seq", disable=not progress_enabled(progress))
        with bar, torch.no_grad():
            for s in range(0, len(order), self.batch_size):
                idx = order[s:s + self.batch_size]
                width = max(len(encoded[i]) for i in idx)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):  # right padding; the model reads the last real token
                    ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                    mask[row, :len(encoded[i])] = 1
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                for row, i in enumerate(idx):
                    out[i] = float(logits[row, 0])
                bar.update(len(idx))
        return out
