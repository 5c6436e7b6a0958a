"""Data layer speed, against peers measured in the same run.

1. binarize (published recipe) of N synthetic UltraFeedback-shaped prompts: prefkit's Arrow-column
   implementation vs the usual per-row Python function applied with `Dataset.map` (the shape of the
   public binarization scripts).
2. read of the same data as an UltraFeedback-raw JSONL file: prefkit.data.read (row-by-row JSON
   parsing + validation + canonical columns) vs `datasets.load_dataset("json")` (Arrow's JSON
   reader, no validation, no conversion).

    python benchmarks/data_binarize.py [--prompts 60000]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")


def synth_rows(n: int, seed: int = 0):
    rnd = random.Random(seed)
    for i in range(n):
        comps = []
        for j in range(4):
            ratings = [str(rnd.randint(1, 5)) if rnd.random() > 0.03 else "N/A" for _ in ASPECTS]
            comps.append({"annotations": {a: {"Rating": r, "Rationale": "because"} for a, r in zip(ASPECTS, ratings)},
                          "critique": "critique", "custom_system_prompt": "", "fine-grained_score": None,
                          "model": f"model-{j}", "overall_score": rnd.randint(2, 20) / 2, "principle": "helpfulness",
                          "response": f"response {j} to prompt {i} " * 20})
        yield {"source": rnd.choice(["evol_instruct", "sharegpt", "truthful_qa"]), "instruction": f"prompt {i} " * 8,
               "models": [c["model"] for c in comps], "completions": comps, "correct_answers": [],
               "incorrect_answers": []}


def naive_binarize(multi, seed=42):
    """The per-row peer: Python dicts through Dataset.map, one random draw per prompt."""
    rng = random.Random(seed)

    def one(row):
        ok = [r for r in row["responses"] if r["score"] is not None
              and not any(v is None for v in (r["aspects"] or {}).values())]
        if len(ok) < 2:
            return {"chosen": None, "rejected": None}
        best = max(range(len(ok)), key=lambda k: ok[k]["score"])
        rej = rng.choice([r for k, r in enumerate(ok) if k != best])
        return {"chosen": [{"role": "assistant", "content": ok[best]["text"]}],
                "rejected": [{"role": "assistant", "content": rej["text"]}]}

    out = multi.map(one, remove_columns=["responses"], load_from_cache_file=False, desc="naive binarize")
    return out.filter(lambda r: r["chosen"] is not None, load_from_cache_file=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=60000)
    args = ap.parse_args()

    import datasets

    from prefkit.data import binarize, read

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "uf.jsonl"
        with open(path, "w") as f:
            for row in synth_rows(args.prompts):
                f.write(json.dumps(row) + "\n")
        size_mb = path.stat().st_size / 2**20

        t = time.perf_counter()
        multi = read(path)
        t_read = time.perf_counter() - t
        t = time.perf_counter()
        peer = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(Path(tmp) / "c"))
        t_peer_read = time.perf_counter() - t
        assert len(peer) == len(multi)

        t = time.perf_counter()
        pairs = binarize(multi, ties="keep")  # the peer keeps ties too
        t_bin = time.perf_counter() - t
        t = time.perf_counter()
        naive = naive_binarize(multi)
        t_naive = time.perf_counter() - t
        assert len(naive) == len(pairs), (len(naive), len(pairs))
        assert naive["rejected"] == pairs["rejected"], "the peer drew different rejected responses"

    print(f"{args.prompts} prompts x 4 responses ({size_mb:.0f} MiB JSONL)")
    print(f"read      prefkit.data.read {t_read:7.2f} s   load_dataset('json') {t_peer_read:7.2f} s   "
          f"ratio {t_read / t_peer_read:5.2f}x (prefkit also validates every row and converts)")
    print(f"binarize  prefkit            {t_bin:7.2f} s   per-row Dataset.map  {t_naive:7.2f} s   "
          f"speed-up {t_naive / t_bin:5.1f}x ({len(pairs)} pairs, identical to the peer)")


if __name__ == "__main__":
    main()
