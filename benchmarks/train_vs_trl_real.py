"""prefkit's DPO trainer against TRL 1.16's DPOTrainer on the real SmolLM2-135M-Instruct, at
UltraFeedback-like lengths (prompts of about 150 tokens, responses of about 300, varying widely).

Every system runs in its own subprocess on the same pairs, batch, steps, learning rate, optimizer,
max_length, torch threads and precision (fp32, CPU, gradient checkpointing off):

  prefkit          prefkit.train.train_dpo, its default: packed prefix-shared forward, reference
                   log-probs precomputed (one packed pass, cached on disk)
  prefkit_padded   the same with forward_mode=padded (the path before prefix sharing)
  prefkit_live     prefkit DPO with a live reference (precompute_ref_log_probs=false)
  prefkit_eps      eps-DPO (always a live reference)
  trl              TRL DPOTrainer, default (a live reference model next to the policy)
  trl_precompute   TRL DPOTrainer with precompute_ref_log_probs=True
  score            prefkit.logprobs.score_logps over the pairs (no gradient), as a fraction of this
                   machine's fp32 matmul rate measured in the same process

Each training child reports the wall time of the whole training call (tokenization, reference
pass, steps, final save), its mean optimizer-step time, and its peak RSS (ru_maxrss). pairs/s =
steps * batch / whole time; pairs/CPU-s the same per CPU second of the process (on a shared
machine, with one thread, CPU time is the steadier measure of the work done). The table ends with the ratios the issue sets targets for, and the
load average next to each run (the machine is shared).

    .venv/bin/python benchmarks/train_vs_trl_real.py                 # 4 steps of 4 pairs
    .venv/bin/python benchmarks/train_vs_trl_real.py --steps 2 --batch 2 --modes prefkit,trl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

MODES = ("prefkit", "prefkit_padded", "prefkit_live", "prefkit_eps", "trl", "trl_precompute", "score")

WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no what up out about who them "
         "into could time more some then than two its only other new these may first any like now my over such "
         "our man me even most made after also did many before must through back years where much your way well "
         "down should because each just those people how too little state good very make world still own see "
         "men work long get here between both life being under never day same another know while last might us "
         "great old year off come since against go came right used take three sort list numbers answer question "
         "explain reason example water energy system model data result value order method process student school "
         "history city country river garden music science market health language computer program function").split()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _text(rng: random.Random, tok, n_tokens: int) -> str:
    """Plain English-like words until the text is about n_tokens tokens long."""
    words: list[str] = []
    while True:
        words += [rng.choice(WORDS) for _ in range(max(8, (n_tokens - len(words)) // 2))]
        text = " ".join(words).capitalize() + "."
        if len(tok(text)["input_ids"]) >= n_tokens:
            return text


def build_data(path: Path, model_dir: str, n_pairs: int, seed: int = 0) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(seed)
    stats = {"prompt": [], "chosen": [], "rejected": []}
    with open(path, "w") as f:
        for i in range(n_pairs):
            p, c, r = rng.randint(80, 220), rng.randint(120, 480), rng.randint(120, 480)
            stats["prompt"].append(p), stats["chosen"].append(c), stats["rejected"].append(r)
            row = {"prompt": [{"role": "user", "content": _text(rng, tok, p)}],
                   "chosen": [{"role": "assistant", "content": _text(rng, tok, c)}],
                   "rejected": [{"role": "assistant", "content": _text(rng, tok, r)}], "pair_id": f"p{i}"}
            f.write(json.dumps(row) + "\n")
    return {k: sum(v) / len(v) for k, v in stats.items()}


# ---------------------------------------------------------------------------------------------
# children


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu: list[float] = []
            self._t = self._c = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t, self._c = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)
            self.cpu.append(time.process_time() - self._c)

    return StepTimer()


def run_prefkit(a, mode: str) -> dict:
    from prefkit.train import DPOConfig, train_dpo

    extra = {"prefkit_padded": {"forward_mode": "padded"}, "prefkit_live": {"precompute_ref_log_probs": False},
             "prefkit_eps": {"loss_type": "eps-dpo"}}.get(mode, {})
    cfg = DPOConfig(**{**dict(
        model_name_or_path=a.model, train_file=str(a.workdir / "pairs.jsonl"), output_dir=str(a.workdir / f"out_{mode}"),
        loss_type="sigmoid", beta=a.beta, learning_rate=a.lr, per_device_train_batch_size=a.batch,
        max_steps=a.steps, max_length=a.max_length, max_prompt_length=a.max_length // 2, precision="fp32", seed=0,
        logging_steps=a.steps, save_strategy="no", report_to=["none"], disable_tqdm=True,
        ref_cache_dir=str(a.workdir / f"ref_cache_{mode}_{time.time_ns()}")), **extra})
    timer = _step_timer()
    t0, c0 = time.perf_counter(), time.process_time()
    train_dpo(cfg, callbacks=[timer])
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "step_s": _steady(timer.times),
            "step_cpu_s": _steady(timer.cpu)}


def _steady(times: list[float]) -> float:
    """Mean step time, the first step left out when there are more (warm-up)."""
    xs = times[1:] if len(times) > 1 else times
    return sum(xs) / max(len(xs), 1)


def run_trl(a, precompute: bool) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    out = a.workdir / ("out_trl_precompute" if precompute else "out_trl")
    args = DPOConfig(output_dir=str(out), loss_type=["sigmoid"], beta=a.beta, learning_rate=a.lr,
                     per_device_train_batch_size=a.batch, max_steps=a.steps, max_length=a.max_length,
                     gradient_checkpointing=False, bf16=False, use_cpu=True, seed=0,
                     logging_steps=a.steps, save_strategy="no", report_to=[], disable_tqdm=True,
                     precompute_ref_log_probs=precompute, dataloader_num_workers=0)
    timer = _step_timer()
    t0, c0 = time.perf_counter(), time.process_time()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(a.model)
    data = datasets.Dataset.from_json(str(a.workdir / "pairs.jsonl"), cache_dir=str(out / "hf_cache"))
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[timer])
    trainer.train()
    trainer.save_model(str(out))
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "step_s": _steady(timer.times),
            "step_cpu_s": _steady(timer.cpu)}


def matmul_gflops(threads: int, n: int = 2048, reps: int = 6) -> float:
    """This machine's fp32 matmul rate (best of `reps` n x n x n products), GFLOP/s per CPU
    second of this process times `threads` (CPU time, not wall time: the machine is shared)."""
    import torch

    x, y = torch.randn(n, n), torch.randn(n, n)
    x @ y
    best = float("inf")
    for _ in range(reps):
        t = time.process_time()
        x @ y
        best = min(best, time.process_time() - t)
    return 2 * n ** 3 / best / 1e9 * threads


def run_score(a) -> dict:
    """score_logps over all pairs (no gradient): tokens/s and model FLOP/s against matmul rate."""
    import datasets

    from prefkit.logprobs import score_logps
    from prefkit.models import load_pretrained, load_tokenizer
    from prefkit.tokenize import encode_pairs

    tok = load_tokenizer(a.model, pad_with_eos=True)
    model = load_pretrained(a.model, dtype="float32").eval()
    enc = encode_pairs(datasets.Dataset.from_json(str(a.workdir / "pairs.jsonl")), tok, max_length=a.max_length,
                       max_prompt_length=a.max_length // 2)
    enc = enc.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    gf_before = matmul_gflops(a.threads)
    out = {}
    for forward in ("packed", "padded"):
        score_logps(model, tok, enc.select(range(min(2, len(enc)))), progress=False, forward=forward)  # warm-up
        t = time.process_time()
        score_logps(model, tok, enc, batch_size=a.batch * 4, progress=False, forward=forward)
        out[forward] = (time.process_time() - t) / a.threads  # CPU seconds per thread
    gf = max(gf_before, matmul_gflops(a.threads))
    cfg = model.config
    n_body = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)
    h, v, layers = cfg.hidden_size, cfg.vocab_size, cfg.num_hidden_layers
    p = [len(x) for x in enc["prompt_ids"]]
    c = [len(x) for x in enc["chosen_ids"]]
    r = [len(x) for x in enc["rejected_ids"]]
    # the work the unshared computation needs: every token of both sequences through the body,
    # attention over its causal context, and the LM head on every scored token
    tokens = sum(2 * pi + ci + ri for pi, ci, ri in zip(p, c, r))  # sequence tokens (prompt counted twice)
    attn = sum(4 * h * layers * (((pi + ci) ** 2 + (pi + ri) ** 2) / 2) for pi, ci, ri in zip(p, c, r))
    flops = 2 * n_body * tokens + attn + 2 * h * v * (sum(c) + sum(r))
    # the work the packed forward executes: each prompt once, attention over the allowed
    # (query, key) pairs of the shared mask, the same LM-head work
    executed = {
        "packed": 2 * n_body * sum(pi + ci + ri for pi, ci, ri in zip(p, c, r))
        + sum(4 * h * layers * (pi * pi / 2 + ci * (pi + ci / 2) + ri * (pi + ri / 2)) for pi, ci, ri in zip(p, c, r))
        + 2 * h * v * (sum(c) + sum(r)),
        "padded": flops,  # padding not counted: a lower bound of what the padded forward executes
    }
    res = {"tokens": tokens, "gflop": flops / 1e9, "matmul_gflops": gf}
    for forward, secs in out.items():
        res[forward] = {"seconds": secs, "tokens_per_s": tokens / secs, "gflops": flops / secs / 1e9,
                        "fraction_of_matmul": flops / secs / 1e9 / gf,
                        "executed_fraction_of_matmul": executed[forward] / secs / 1e9 / gf}
    return res


def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    load0 = os.getloadavg()[0]
    if a.child == "score":
        res = run_score(a)
    elif a.child.startswith("prefkit"):
        res = run_prefkit(a, a.child)
    else:
        res = run_trl(a, precompute=a.child == "trl_precompute")
    res.update(mode=a.child, pairs=a.steps * a.batch, peak_rss_mb=_peak_rss_mb(),
               load=[round(load0, 2), round(os.getloadavg()[0], 2)])
    print("RESULT " + json.dumps(res), flush=True)


# ---------------------------------------------------------------------------------------------
# parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a model name prefkit.models resolves (default: smollm2)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4, help="pairs per step")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--workdir", type=Path, default=None, help="keep the data and outputs here")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return 0

    from prefkit.models import resolve_model_path

    a.model = resolve_model_path(a.model)
    a.workdir = a.workdir or Path(tempfile.mkdtemp(prefix="prefkit_bench_real_"))
    a.workdir.mkdir(parents=True, exist_ok=True)
    means = build_data(a.workdir / "pairs.jsonl", a.model, a.steps * a.batch)
    print(f"model: {a.model}")
    print(f"data: {a.steps * a.batch} conversational pairs, mean tokens (text only) prompt {means['prompt']:.0f}, "
          f"chosen {means['chosen']:.0f}, rejected {means['rejected']:.0f} (prompt 80-220, responses 120-480); "
          f"steps {a.steps}, batch {a.batch}, max_length {a.max_length}, threads {a.threads}, fp32, CPU, "
          f"gradient checkpointing off; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    from child_runs import run_modes

    results = run_modes(__file__, a.modes.split(","), [
        "--workdir", str(a.workdir), "--model", a.model, "--steps", str(a.steps), "--batch", str(a.batch),
        "--threads", str(a.threads), "--max-length", str(a.max_length), "--beta", str(a.beta), "--lr", str(a.lr)],
        a.threads, echo=True)

    print()
    print(f"{'run':<16} {'pairs/s':>8} {'seconds':>8} {'CPU s':>7} {'pairs/CPU-s':>11} {'step s':>7} {'step CPU s':>10} "
          f"{'peak RSS MiB':>13} {'load (start, end)':>18}")
    for mode, r in results.items():
        if mode == "score":
            continue
        r["pairs_per_s"] = r["pairs"] / r["seconds"]
        r["pairs_per_cpu_s"] = r["pairs"] / r["cpu_s"]
        print(f"{mode:<16} {r['pairs_per_s']:>8.3f} {r['seconds']:>8.1f} {r['cpu_s']:>7.1f} {r['pairs_per_cpu_s']:>11.4f} "
              f"{r['step_s']:>7.2f} {r['step_cpu_s']:>10.2f} {r['peak_rss_mb']:>13.0f} {str(r['load']):>18}")
    pk = results.get("prefkit")
    if pk:
        for peer in ("trl", "trl_precompute", "prefkit_padded"):
            if peer in results:
                q = results[peer]
                print(f"prefkit vs {peer:<15} throughput x{pk['pairs_per_s'] / q['pairs_per_s']:.2f} (wall), "
                      f"x{pk['pairs_per_cpu_s'] / q['pairs_per_cpu_s']:.2f} (CPU time), "
                      f"peak RSS x{pk['peak_rss_mb'] / q['peak_rss_mb']:.2f}")
    if "prefkit_eps" in results and "prefkit_live" in results:
        e, d = results["prefkit_eps"], results["prefkit_live"]
        print(f"eps-DPO step time / DPO (live reference) step time: x{e['step_s'] / d['step_s']:.2f} (wall), "
              f"x{e['step_cpu_s'] / d['step_cpu_s']:.2f} (CPU time)")
    if "score" in results:
        s = results["score"]
        print(f"scoring (no gradient, {s['tokens']} sequence tokens, {s['gflop']:.0f} GFLOP of unshared work; "
              f"matmul rate {s['matmul_gflops']:.0f} GFLOP/s, load {s['load']}):")
        for fw in ("packed", "padded"):
            x = s[fw]
            print(f"  {fw:<7} {x['tokens_per_s']:>7.0f} tokens/s, {x['gflops']:>6.0f} GFLOP/s = "
                  f"{x['fraction_of_matmul']:.2f} of the matmul rate (work it executes: "
                  f"{x['executed_fraction_of_matmul']:.2f})")
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    print(f"(data and outputs in {a.workdir})")
    return 0 if len(results) == len(a.modes.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
