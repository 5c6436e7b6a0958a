"""prefkit's DPO trainer against TRL 1.16's DPOTrainer: throughput and peak memory, same run.

The same model (a Llama config of ~20M parameters with a 32k-token BPE vocabulary built here, so the
logits matter), the same conversational pairs, beta, batch size, number of steps, learning rate,
optimizer, max_length, gradient-checkpointing setting and torch threads, for:

  prefkit          prefkit.train.train_dpo (its defaults: packed forward, reference log-probs precomputed)
  prefkit_padded   the same with forward_mode="padded" (chosen and rejected rows padded, no prefix sharing)
  trl              TRL DPOTrainer, default (a live reference model next to the policy)
  trl_precompute   TRL DPOTrainer with precompute_ref_log_probs=True

Each runs in a fresh subprocess, which reports its own peak RSS (ru_maxrss) and the wall time of
the whole training call (tokenization, reference pass, training steps, final save): pairs/s =
steps * batch / that time. The table ends with prefkit's ratios against both TRL modes
(targets: >= 1.5x TRL default throughput, <= 0.6x its peak RSS).

    .venv/bin/python benchmarks/train_vs_trl.py            # 10 steps of 4 pairs
    .venv/bin/python benchmarks/train_vs_trl.py --quick    # 4 steps of 2 pairs
    .venv/bin/python benchmarks/train_vs_trl.py --model smollm2   # the real model (docs/models.md)

`--model` (a prefkit model name: a directory, a `.gguf` file or a shortcut such as `smollm2`,
SmolLM2-135M-Instruct) replaces the built model with a real one; its defaults are then
UltraFeedback-like lengths (prompts of 30-60 words, responses of 100-200 words, max_length 1024).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

MODES = ("prefkit", "prefkit_padded", "trl", "trl_precompute")


# ---------------------------------------------------------------------------------------------
# the shared setup: tokenizer, model, data (built once, in the parent)


def _words(rng: random.Random, n: int) -> list[str]:
    onsets = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "cl", "st", "tr", "ch", "sh", "th", "gr", "pl", "qu"]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "ie", "oo"]
    codas = ["", "n", "r", "s", "t", "l", "m", "ck", "nd", "st", "ng"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas)
                          for _ in range(rng.randint(1, 4))))
    return sorted(words)


def build_setup(workdir: Path, n_pairs: int, prompt_words: int, response_words: int, seed: int = 0,
                model: str | None = None) -> dict:
    """Write tokenizer + model to workdir/model (unless `model` names a real one) and pairs to
    workdir/pairs.jsonl."""
    rng = random.Random(seed)
    words = _words(rng, 60000)
    if model is not None:
        from transformers import AutoConfig

        from prefkit.models import resolve_model_path

        path = resolve_model_path(model)
        cfg = AutoConfig.from_pretrained(path)
        from safetensors import safe_open

        n_params = 0   # from the saved tensors' shapes, without loading the weights
        for f in Path(path).glob("*.safetensors"):
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    n_params += math.prod(st.get_slice(k).get_shape())
        print(f"model: {model} ({path}): {cfg.model_type}, {cfg.num_hidden_layers} layers, hidden "
              f"{cfg.hidden_size}, vocab {cfg.vocab_size}: {n_params / 1e6:.1f}M parameters")
        _write_pairs(workdir, rng, words, n_pairs, prompt_words, response_words)
        return {"n_params": n_params, "vocab": cfg.vocab_size, "model_dir": str(path)}

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefkit.toy.tiny import DEFAULT_CORPUS, build_tokenizer

    corpus = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(40000)]
    corpus += [" ".join(words[i:i + 10]) for i in range(0, len(words), 10)] * 3
    t0 = time.time()
    tok = build_tokenizer(corpus=list(DEFAULT_CORPUS) + corpus, vocab_size=32000, template="llama3",
                          model_max_length=4096)
    print(f"tokenizer: {len(tok)} tokens (byte-level BPE, llama3 template), built in {time.time() - t0:.1f}s")
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama, hidden 256, 4 layers, vocab {cfg.vocab_size}: {n_params / 1e6:.1f}M parameters")
    model.save_pretrained(workdir / "model")
    tok.save_pretrained(workdir / "model")
    _write_pairs(workdir, rng, words, n_pairs, prompt_words, response_words)
    return {"n_params": n_params, "vocab": cfg.vocab_size, "model_dir": str(workdir / "model")}


def _write_pairs(workdir: Path, rng: random.Random, words: list[str], n_pairs: int, prompt_words: int,
                 response_words: int) -> None:
    def text(n):
        return " ".join(rng.choice(words) for _ in range(n))

    with open(workdir / "pairs.jsonl", "w") as f:
        for i in range(n_pairs):
            n_p = rng.randint(prompt_words // 2, prompt_words)
            row = {"prompt": [{"role": "user", "content": text(n_p)}],
                   "chosen": [{"role": "assistant", "content": text(rng.randint(response_words // 2, response_words))}],
                   "rejected": [{"role": "assistant", "content": text(rng.randint(response_words // 2, response_words))}],
                   "pair_id": f"p{i}"}
            f.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------
# children: one training run each


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_prefkit(a, forward_mode: str = "packed") -> dict:
    from prefkit.train import DPOConfig, train_dpo

    cfg = DPOConfig(model_name_or_path=str(a.model_dir), train_file=str(a.workdir / "pairs.jsonl"),
                    output_dir=str(a.workdir / f"out_{a.child}"), loss_type="sigmoid", beta=a.beta,
                    learning_rate=a.lr, per_device_train_batch_size=a.batch, max_steps=a.steps,
                    max_length=a.max_length, max_prompt_length=a.max_length // 2,
                    gradient_checkpointing=a.gradient_checkpointing, precision="fp32", seed=0,
                    logging_steps=a.steps, save_strategy="no", report_to=["none"], disable_tqdm=True,
                    ref_cache_dir=str(a.workdir / f"ref_cache_{a.child}"), forward_mode=forward_mode)
    t0 = time.perf_counter()
    train_dpo(cfg)
    return {"seconds": time.perf_counter() - t0}


def run_trl(a, precompute: bool) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    out = a.workdir / ("out_trl_precompute" if precompute else "out_trl")
    args = DPOConfig(output_dir=str(out), loss_type=["sigmoid"], beta=a.beta, learning_rate=a.lr,
                     per_device_train_batch_size=a.batch, max_steps=a.steps, max_length=a.max_length,
                     gradient_checkpointing=a.gradient_checkpointing, bf16=False, use_cpu=True, seed=0,
                     logging_steps=a.steps, save_strategy="no", report_to=[], disable_tqdm=True,
                     precompute_ref_log_probs=precompute, dataloader_num_workers=0)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    data = datasets.Dataset.from_json(str(a.workdir / "pairs.jsonl"), cache_dir=str(out / "hf_cache"))
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    trainer.save_model(str(out))
    return {"seconds": time.perf_counter() - t0}


def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    if a.child.startswith("prefkit"):
        res = run_prefkit(a, forward_mode="padded" if a.child == "prefkit_padded" else "packed")
    else:
        res = run_trl(a, precompute=a.child == "trl_precompute")
    res.update(mode=a.child, pairs=a.steps * a.batch, peak_rss_mb=_peak_rss_mb())
    print("RESULT " + json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------
# parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 steps of 2 pairs (a smoke run)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="pairs per step")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    p.add_argument("--model", default=None,
                   help="a real model instead of the built one: a directory, a .gguf file or a shortcut "
                        "(smollm2); defaults then follow UltraFeedback-like lengths")
    p.add_argument("--prompt-words", type=int, default=None, help="longest prompt in words (default 40; 60 with --model)")
    p.add_argument("--response-words", type=int, default=None,
                   help="longest response in words (default 110; 200 with --model)")
    p.add_argument("--max-length", type=int, default=None, help="default 512 (1024 with --model)")
    p.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="turn it on in every run (TRL's DPOConfig defaults to on, prefkit to off; "
                        "the benchmark uses the same setting for all)")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--workdir", type=Path, default=None, help="keep the setup and outputs here")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.steps = a.steps or (4 if a.quick else 10)
    a.batch = a.batch or (2 if a.quick else 4)
    real = a.model is not None
    a.prompt_words = a.prompt_words or (60 if real else 40)
    a.response_words = a.response_words or (200 if real else 110)
    a.max_length = a.max_length or (1024 if real else 512)
    if a.child:
        child(a)
        return 0

    a.workdir = a.workdir or Path(tempfile.mkdtemp(prefix="prefkit_bench_"))
    a.workdir.mkdir(parents=True, exist_ok=True)
    marker = a.workdir / "setup.json"
    wanted = {"n_pairs": a.steps * a.batch, "prompt_words": a.prompt_words, "response_words": a.response_words,
              "model": a.model}
    if marker.exists() and json.loads(marker.read_text()).get("wanted") == wanted:
        info = json.loads(marker.read_text())  # same setup already in --workdir: reuse it
        print(f"reusing the setup in {a.workdir}")
    else:
        info = build_setup(a.workdir, **wanted)   # `model` None: build the small Llama
        marker.write_text(json.dumps(dict(info, wanted=wanted)))
    print(f"data: {a.steps * a.batch} conversational pairs (prompts <= {a.prompt_words} words, responses <= "
          f"{a.response_words} words); steps {a.steps}, batch {a.batch}, beta {a.beta}, "
          f"lr {a.lr}, max_length {a.max_length}, threads {a.threads}, "
          f"gradient checkpointing {'on' if a.gradient_checkpointing else 'off'}, fp32, CPU")
    from child_runs import run_modes

    results = run_modes(__file__, a.modes.split(","), [
        "--workdir", str(a.workdir), "--model-dir", info["model_dir"], "--steps", str(a.steps),
        "--batch", str(a.batch), "--threads", str(a.threads), "--max-length", str(a.max_length),
        "--beta", str(a.beta), "--lr", str(a.lr)] + (["--gradient-checkpointing"] if a.gradient_checkpointing else []),
        a.threads)

    print()
    print(f"{'run':<16} {'pairs/s':>9} {'seconds':>9} {'peak RSS MiB':>13}")
    for mode, r in results.items():
        r["pairs_per_s"] = r["pairs"] / r["seconds"]
        print(f"{mode:<16} {r['pairs_per_s']:>9.2f} {r['seconds']:>9.1f} {r['peak_rss_mb']:>13.0f}")
    if "prefkit" in results:
        pk = results["prefkit"]
        for peer in ("trl", "trl_precompute", "prefkit_padded"):
            if peer in results:
                q = results[peer]
                print(f"prefkit vs {peer:<15} throughput x{pk['pairs_per_s'] / q['pairs_per_s']:.2f}, "
                      f"peak RSS x{pk['peak_rss_mb'] / q['peak_rss_mb']:.2f}")
    print(f"(setup and outputs in {a.workdir}; {info['n_params'] / 1e6:.1f}M parameters, vocab {info['vocab']})")
    return 0 if len(results) == len(a.modes.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
