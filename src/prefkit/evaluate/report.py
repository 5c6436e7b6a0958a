"""The files of a policy evaluation (`prefkit.evaluate.policy.evaluate_policies(output_dir=...)`).

    results.json                 every metric (no outputs), the generation settings, request stats
    report.md                    a Markdown table per scorer and the length plot
    per_prompt.jsonl             one row per (policy, prompt, sample): output, length, every score,
                                 the pairwise verdicts in both orders and why any failed
    length.png                   each policy's score / win rate against its mean output length
    outputs/NAME.alpaca_eval.json  sample 0 of each prompt in AlpacaEval's format
                                 [{instruction, output, generator, dataset}]
    outputs/NAME.jsonl           every sample in prefkit's format
                                 {prompt, prompt_id, policy, sample, response}
"""

from __future__ import annotations

import json
from pathlib import Path

from prefkit.evaluate.winrate import LC_LABELS


def instruction_text(prompt) -> str:
    """AlpacaEval's `instruction` for a prompt: the string, or the last user turn of a message list."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _fmt(v, pct=False, digits=3) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}" if pct else f"{v:.{digits}f}"


def _pm(d: dict, key="mean", pct=False) -> str:
    m, se = d.get(key), d.get("standard_error")
    return _fmt(m, pct) + ("" if se is None else f" ± {_fmt(se, pct)}")


#: table titles of the built-in per-output scorers (others are titled by their name)
PER_OUTPUT_TITLES = {"reward_fn": "reward function", "reward_model": "reward model",
                     "judge_single": "LLM judge, single-answer grade (1-10)"}


def markdown_tables(res: dict) -> str:
    pol = res["policies"]
    lines = [f"{res['prompts']} prompts, {res['n']} sample(s) each; generation {json.dumps(res['generation'])}.", ""]
    lines += ["| policy | conditioned (goal) | outputs | generation failed | mean length (chars) |", "|---|---|---|---|---|"]
    for name, r in pol.items():
        cond = f"yes ({r['goal']:g})" if r.get("conditioned") else "no"
        lines.append(f"| {name} | {cond} | {r['outputs']} | {r['generation_failed']} | {_fmt(r['mean_length'], digits=1)} |")
    per_output = list(dict.fromkeys(k for by_scorer in res.get("scores", {}).values() for k in by_scorer))
    for key in per_output:  # every per-output scorer, built in or from a plugin
        title = PER_OUTPUT_TITLES.get(key, f"scorer {key.replace('_', '-')}")
        rows = [(n, r[key]) for n, r in pol.items() if key in r]
        if not rows:
            continue
        who = rows[0][1].get("name") or rows[0][1].get("judge") or ""
        lines += ["", f"**{title}** {('`' + who + '`') if who else ''}", "",
                  "| policy | mean ± standard error | std | n | failed |", "|---|---|---|---|---|"]
        for name, d in rows:
            failed = d["failed"]
            if d.get("failures"):
                failed = f"{failed} ({', '.join(f'{k}: {v}' for k, v in d['failures'].items())})"
            lines.append(f"| {name} | {_pm(d)} | {_fmt(d['std'])} | {d['n']} | {failed} |")
    rows = [(n, r) for n, r in pol.items() if "pairwise" in r]
    if rows:
        ref = rows[0][1]["pairwise"]["reference"]
        lines += ["", f"**Pairwise win rate against `{ref}`** (judge asked in both orders; %, ± standard error over "
                      "prompts; a tie counts one half)", "",
                  "| policy | win rate | wins / ties / losses | unjudged prompts | verdicts read / asked | "
                  "unreadable | order-consistent | first-shown preferred | length-controlled | official LC |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in rows:
            w = r["pairwise"]
            lc = r.get("length_controlled", {})
            off = r.get("length_controlled_official", {})
            off_txt = _fmt(off["length_controlled_winrate"] / 100, pct=True) if "length_controlled_winrate" in off \
                else "n/a"
            fails = ", ".join(f"{k}: {v}" for k, v in w["failures"].items()) or "0"
            first = _fmt(w["first_shown_preferred"], pct=True)
            lines.append(f"| {name} | {_pm(w, 'win_rate', pct=True)} | {w['wins']} / {w['ties']} / {w['losses']} | "
                         f"{w['unjudged']} | {w['verdicts_read']} / {w['orders_asked']} | {fails} | "
                         f"{w['position_consistent']} / {w['both_orders_read']} | {first} | "
                         f"{_fmt(lc.get('length_controlled_win_rate'), pct=True)} | {off_txt} |")
        variants = sorted({r["length_controlled"]["variant"] for _, r in rows if "length_controlled" in r})
        for v in variants:
            lines.append("")
            lines.append(f"Length-controlled column: **{LC_LABELS[v]}**. It is not the AlpacaEval 2 leaderboard "
                         "figure (that needs AlpacaEval's instruction difficulties and its judge).")
        if any("length_controlled_winrate" in r.get("length_controlled_official", {}) for _, r in rows):
            lines.append("")
            lines.append(f"Official LC column: **{LC_LABELS['official']}**, with the judge used here.")
        for name, r in rows:
            off = r.get("length_controlled_official")
            if off and not off.get("available", True):
                lines.append("")
                lines.append(f"Official LC for {name}: not computed: {off['why']}.")
                break
    return "\n".join(lines)


def plot_lengths(res: dict, path: Path) -> Path | None:
    """One panel per metric: each policy's value against its mean output length."""
    import matplotlib  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  heavy (matplotlib): lazy, so importing this module stays light

    pol = res["policies"]
    panels = []
    def stat(key, scale=1.0):
        def get(r):
            d = r[key]
            m = d.get("win_rate", d.get("mean"))
            return None if m is None else (scale * m, scale * (d.get("standard_error") or 0))
        return get

    for key, label, get in (("pairwise", "win rate (%)", stat("pairwise", 100.0)),
                            ("judge_single", "judge grade (1-10)", stat("judge_single")),
                            ("reward_model", "reward model score", stat("reward_model")),
                            ("reward_fn", "reward function", stat("reward_fn"))):
        pts = [(n, r["mean_length"], get(r)) for n, r in pol.items() if key in r and r["mean_length"] is not None]
        pts = [(n, x, v) for n, x, v in pts if v is not None and v[0] is not None]
        if pts:
            panels.append((label, pts))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (label, pts) in zip(axes[0], panels):
        for name, x, (y, se) in pts:
            ax.errorbar([x], [y], yerr=[se], fmt="o", capsize=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("mean output length (characters)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(res: dict, rows: list, output_dir: Path) -> dict:
    """Write every file of the module docstring; returns {kind: path}."""

    output_dir = Path(output_dir)
    (output_dir / "outputs").mkdir(parents=True, exist_ok=True)
    files = {}
    for name, outs in res["outputs"].items():
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        alp = output_dir / "outputs" / f"{safe}.alpaca_eval.json"
        alp.write_text(json.dumps([{"instruction": instruction_text(r.prompt), "output": o[0] if o[0] is not None else "",
                                    "generator": name, "dataset": r.source or "prefkit"}
                                   for r, o in zip(rows, outs)], indent=2, ensure_ascii=False))
        pk = output_dir / "outputs" / f"{safe}.jsonl"
        with pk.open("w") as fh:
            for r, o in zip(rows, outs):
                for j, text in enumerate(o):
                    fh.write(json.dumps({"prompt": r.prompt, "prompt_id": r.prompt_id, "policy": name, "sample": j,
                                         "response": text}, ensure_ascii=False) + "\n")
        files[f"outputs/{name}"] = [str(alp), str(pk)]
    per = output_dir / "per_prompt.jsonl"
    with per.open("w") as fh:
        for rec in res["per_prompt"]:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    files["per_prompt"] = str(per)
    plot = plot_lengths(res, output_dir / "length.png")
    if plot is not None:
        files["plot"] = str(plot)
    md = ["# Policy evaluation", "", markdown_tables(res), ""]
    if plot is not None:
        md += ["![score against output length](length.png)", ""]
    md += ["Per-prompt results: `per_prompt.jsonl`; outputs: `outputs/` (AlpacaEval format: `*.alpaca_eval.json`).",
           f"Requests: {json.dumps(res['run'])}", ""]
    (output_dir / "report.md").write_text("\n".join(md))
    files["report"] = str(output_dir / "report.md")
    files["results"] = str(output_dir / "results.json")
    slim = {k: v for k, v in res.items() if k not in ("per_prompt", "outputs", "scores")}
    slim["files"] = files
    (output_dir / "results.json").write_text(json.dumps(slim, indent=2, default=str))
    return files
