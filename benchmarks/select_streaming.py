"""Memory of `prefkit select` on a memory-mapped preference set, against an in-memory peer.

Builds N pairs with ~1 KB of text each, saved with `save_to_disk` (memory-mapped when loaded),
then measures in separate processes the peak resident memory added by
  - prefkit: `select(ds, "explicit", fraction=0.4, work_dir=...)`, streaming two passes;
  - peer:    the straightforward in-memory way: rows to Python (`ds.to_list()`), margins,
             argsort, keep the top 40%.
Both keep the same rows (checked). Prints peak-RSS ratios (peer / prefkit) and wall times.

    .venv/bin/python benchmarks/select_streaming.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def build(path: str, n: int) -> None:
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over a lazy dog while sorting numbers carefully".split()

    def gen():
        for i in range(n):
            yield {"prompt": f"Question {i}: " + " ".join(rng.choice(words, 40)),
                   "chosen": " ".join(rng.choice(words, 80)), "rejected": " ".join(rng.choice(words, 80)),
                   "score_chosen": float(rng.integers(1, 11)), "score_rejected": float(rng.integers(1, 11)),
                   "pair_id": f"p{i}"}

    datasets.Dataset.from_generator(gen).save_to_disk(path)


def child(mode: str, path: str, out: str) -> None:
    import datasets
    import numpy as np

    from prefkit.select import select  # imported in both modes, before the baseline

    ds = datasets.load_from_disk(path)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if mode == "prefkit":
        with tempfile.TemporaryDirectory() as work:
            kept = select(ds, "explicit", fraction=0.4, work_dir=work, progress=False, chunk_size=4096)
            ids = kept["pair_id"]
    else:
        rows = ds.to_list()
        m = np.array([r["score_chosen"] - r["score_rejected"] for r in rows])
        k = int(0.4 * len(rows))
        idx = np.sort(np.argsort(-m, kind="stable")[:k])
        ids = [rows[i]["pair_id"] for i in idx]
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(out, "w") as f:
        json.dump({"added_peak_mib": (peak - base) / 1024, "peak_mib": peak / 1024, "base_mib": base / 1024, "wall_s": wall, "n_kept": len(ids),
                   "ids_hash": hash(tuple(ids))}, f)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pairs")
        build(path, args.rows)
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)) / 2**20
        res = {}
        for mode in ("prefkit", "peer"):
            out = os.path.join(tmp, f"{mode}.json")
            subprocess.run([sys.executable, __file__, "--child", mode, path, out], check=True,
                           env={**os.environ, "PYTHONHASHSEED": "0"})
            res[mode] = json.load(open(out))
    assert res["prefkit"]["ids_hash"] == res["peer"]["ids_hash"], "the two selections differ"
    print(f"{args.rows} pairs, {size:.0f} MiB on disk; both keep the same {res['peer']['n_kept']} rows")
    for mode in ("prefkit", "peer"):
        r = res[mode]
        print(f"  {mode:8s} RSS before {r['base_mib']:7.1f} MiB, peak {r['peak_mib']:7.1f} MiB "
              f"(added {r['added_peak_mib']:7.1f} MiB)   wall {r['wall_s']:6.2f} s")
    print(f"peak-RSS ratio peer/prefkit: {res['peer']['peak_mib'] / res['prefkit']['peak_mib']:.2f}x; "
          f"added memory: peer {res['peer']['added_peak_mib']:.0f} MiB vs prefkit {res['prefkit']['added_peak_mib']:.0f} MiB "
          f"(ru_maxrss is a high-water mark: 0 means below the post-import peak); "
          f"wall ratio peer/prefkit: {res['peer']['wall_s'] / res['prefkit']['wall_s']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
