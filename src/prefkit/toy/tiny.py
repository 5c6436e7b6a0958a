"""Tiny but real Hugging Face parts, built locally (nothing is downloaded).

- `build_tokenizer`: a byte-level BPE `PreTrainedTokenizerFast` trained on a small corpus, with a
  real chat template in one of three styles: 'chatml' (Qwen2-like, has a system role),
  'llama3' (Llama-3-like headers, has a system role) and 'gemma' (no system role: the template
  raises on a system message, as Gemma's does).
- `tiny_causal_lm` / `tiny_reward_model`: randomly initialised Llama or Qwen2 configs of any size.

Tests, benchmarks and the toy world all use these, so the same code paths as real models run.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CHAT_TEMPLATES = {
    # Qwen2 style: <|im_start|>role\ncontent<|im_end|>\n
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    # Llama-3 style headers with a BOS token.
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    # Gemma style: no system role; the assistant is 'model'.
    "gemma": (
        "{{ bos_token }}"
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}"
        "{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
}

_SPECIALS = {
    "chatml": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>",
                   extra=["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "llama3": dict(bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>",
                   extra=["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                          "<|finetune_right_pad_id|>"]),
    "gemma": dict(bos="<bos>", eos="<end_of_turn>", pad="<pad>",
                  extra=["<bos>", "<start_of_turn>", "<end_of_turn>", "<pad>", "<eos>"]),
}

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Write a short answer to the question below, then explain your reasoning.",
    "Preference data pairs a chosen response with a rejected one for the same prompt.",
    "List the items in order: apple, banana, cherry, date, elderberry, fig, grape.",
    "Sort these numbers in ascending order: 3 1 4 1 5 9 2 6 5 3 5.",
    "The assistant answered the user's question helpfully, honestly and concisely.",
    "system user assistant model Overall score: 1 2 3 4 5 6 7 8 9 10 .",
    "You are a helpful assistant. Answer the instruction on a scale of 1 to 10.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 ,.;:!?'\"()[]{}-_/\\@#$%^&*+=<>|~`",
]


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 512, template: str = "chatml",
                    model_max_length: int = 2048):
    """Train a byte-level BPE tokenizer on `corpus` and wrap it as a PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415  heavy (transformers): lazy, so importing this module stays light

    if template not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat template style {template!r}; choose from {sorted(CHAT_TEMPLATES)}")
    spec = _SPECIALS[template]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["extra"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus) if corpus is not None else list(DEFAULT_CORPUS)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        model_max_length=model_max_length,
    )
    fast.chat_template = CHAT_TEMPLATES[template]
    return fast


def _config(arch: str, tokenizer, hidden: int, layers: int, heads: int, intermediate: int | None,
            max_position: int, **extra):
    from transformers import LlamaConfig, Qwen2Config  # noqa: PLC0415  heavy (transformers): lazy, so importing this module stays light

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    return cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def tiny_causal_lm(tokenizer, arch: str = "llama", hidden: int = 64, layers: int = 2, heads: int = 4,
                   intermediate: int | None = None, max_position: int = 2048, seed: int = 0):
    """A randomly initialised Llama/Qwen2 causal LM sized for tests (fp32, eval mode)."""
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light
    from transformers import AutoModelForCausalLM  # noqa: PLC0415  heavy (transformers): lazy, so importing this module stays light

    torch.manual_seed(seed)
    cfg = _config(arch, tokenizer, hidden, layers, heads, intermediate, max_position)
    model = AutoModelForCausalLM.from_config(cfg)
    return model.eval()


def tiny_reward_model(tokenizer, arch: str = "llama", hidden: int = 64, layers: int = 2, heads: int = 4,
                      intermediate: int | None = None, max_position: int = 2048, seed: int = 0):
    """A randomly initialised sequence-classification model with one output (a reward model)."""
    import torch  # noqa: PLC0415  heavy (torch): lazy, so importing this module stays light
    from transformers import AutoModelForSequenceClassification  # noqa: PLC0415  heavy (transformers): lazy, so importing this module stays light

    torch.manual_seed(seed)
    cfg = _config(arch, tokenizer, hidden, layers, heads, intermediate, max_position, num_labels=1)
    model = AutoModelForSequenceClassification.from_config(cfg)
    return model.eval()
