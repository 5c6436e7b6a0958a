"""A synth method added from outside the package (a plugin module in tmp_path) becomes
`prefkit synth NAME` with flags from its options class, and its pairs are what it decided."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import read_jsonl, run_prefkit, save_tiny, write_jsonl, write_plugin

from prefkit.toy import task
from prefkit.toy.tiny import build_tokenizer

PLUGIN = '''
from dataclasses import dataclass, field

from prefkit.report import StageReport
from prefkit.synth.inputs import pair_row, pairs_dataset, prompt_rows
from prefkit.synth.methods import SynthOptions, options_of, register_synth_method, sampling_params
from prefkit.synth.runs import Request, Run


@dataclass(frozen=True)
class BrevityOptions(SynthOptions):
    k: int = field(default=2, metadata={"help": "samples per prompt"})
    prefer: str = field(default="shorter", metadata={"help": "which sample is chosen",
                                                     "choices": ("shorter", "longer")})


@register_synth_method("brevity", options=BrevityOptions, help="k samples; the shortest is chosen over the longest")
def brevity(prompts, backend, options=None, *, report=None, **overrides):
    o = options_of(BrevityOptions, options, overrides)
    rep = report if report is not None else StageReport("synth brevity")
    rows = prompt_rows(prompts, rep)
    rep.rows_in += len(rows)
    gen = sampling_params(o, "generation")
    with Run(o.run_dir, progress=o.progress) as run:
        recs = run.generate(backend, [Request(r.messages, gen, j, "sample") for r in rows for j in range(o.k)])
    out = []
    for i, r in enumerate(rows):
        texts = sorted({rec["text"] for rec in recs[i * o.k:(i + 1) * o.k] if rec["ok"]}, key=len)
        if len(texts) < 2 or len(texts[0]) == len(texts[-1]):
            rep.drop("no two samples of different length", 1)
            continue
        chosen, rejected = (texts[0], texts[-1]) if o.prefer == "shorter" else (texts[-1], texts[0])
        out.append(pair_row(r, "brevity", chosen, rejected, brevity_k=o.k, brevity_prefer=o.prefer))
    rep.rows_out += len(out)
    return pairs_dataset(out)
'''


def test_a_plugin_synth_method_runs_through_the_cli(tmp_path):
    env = write_plugin(tmp_path, "my_synth", PLUGIN)
    model = save_tiny(tmp_path / "tiny", build_tokenizer(template="chatml"), layers=1)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in task.make_prompts(4, seed=3)])

    listed = run_prefkit("synth", "--help", env=env)
    assert listed.returncode == 0 and "brevity" in listed.stdout
    helped = run_prefkit("synth", "brevity", "--help", env=env)
    assert "--prefer {shorter,longer}" in helped.stdout and "--k K" in helped.stdout

    for prefer in ("shorter", "longer"):
        out = tmp_path / f"{prefer}.jsonl"
        res = run_prefkit("synth", "brevity", prompts, "-o", out, "--local", model, "--k", "4", "--prefer", prefer,
                          "--temperature", "1.0", "--max-tokens", "16", "--no-progress", env=env)
        assert res.returncode == 0, res.stderr
        rows = read_jsonl(out)
        report = json.loads(Path(str(out) + ".report.json").read_text())
        assert len(rows) + sum(report["dropped"].values()) == 4 and rows
        for r in rows:
            assert r["method"] == "brevity" and r["brevity_k"] == 4 and r["brevity_prefer"] == prefer
            shorter, longer = sorted((r["chosen"], r["rejected"]), key=len)
            assert len(shorter) < len(longer)
            assert (r["chosen"] == shorter) == (prefer == "shorter")


def test_a_method_is_offered_only_with_its_plugin(tmp_path):
    res = run_prefkit("synth", "brevity", "x.jsonl", "-o", tmp_path / "o.jsonl")
    assert res.returncode == 2 and "invalid choice: 'brevity'" in res.stderr
