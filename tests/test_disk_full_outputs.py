"""A full disk while a stage writes its output (prefkit.data.write): one line naming the
directory, the earlier output left as it was, no temporary file left behind. Simulated for real
with a small tmpfs."""

from __future__ import annotations

import json

import pytest

from prefkit.cli import main


@pytest.fixture()
def small_disk(tmpfs):
    return tmpfs("64k")


def _pairs(path, n, width):
    rows = [{"prompt": [{"role": "user", "content": f"{i} " + "x" * width}],
             "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}],
             "score_chosen": 8, "score_rejected": 3} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_relabel_output_on_a_full_disk(tmp_path, small_disk, capsys, ext):
    out = small_disk / f"ra.{ext}"
    assert main(["relabel", _pairs(tmp_path / "small.jsonl", 4, 10), "-o", str(out)]) == 0
    before = out.read_bytes()
    capsys.readouterr()
    rc = main(["relabel", _pairs(tmp_path / "big.jsonl", 200, 2000), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err   # a run-time failure, not a usage error
    assert err.strip() == (f"prefkit relabel: error: {small_disk}: no space left on device while writing "
                           f"ra.{ext}; {out} is as it was before")
    assert out.read_bytes() == before
    assert not [p.name for p in small_disk.iterdir() if p.name.startswith(".")]
