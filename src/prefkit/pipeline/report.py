"""Reports across rounds: RUN_DIR/report.md, results.json and plots/, from the manifest and the
stages' done markers; and the text of `--dry-run` and `--status`."""

from __future__ import annotations

import json
from pathlib import Path

from prefkit.code_version import describe
from prefkit.files import atomic_write_text

SCORERS = ("reward_fn", "reward_model")


def _marker(run_dir: Path, entry: dict) -> dict:
    if not entry.get("dir"):
        return {}
    try:
        return json.loads((run_dir / entry["dir"] / "done").read_text())
    except (OSError, ValueError):
        return {}


def collect(run_dir: Path) -> dict:
    """Per arm and round, each stage's metrics (with the per-row values of scores and margins).
    A recipe without arms has one arm, None; its rounds are also under "rounds"."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    arms: dict = {}
    for entry in manifest.get("stages", {}).values():
        if entry.get("status") != "done":
            continue
        m = _marker(run_dir, entry).get("metrics", entry.get("metrics", {}))
        rounds = arms.setdefault(entry.get("arm"), {})
        rounds.setdefault(entry["round"], {})[entry["stage"]] = {**m, "seconds": entry.get("seconds"),
                                                                  "dir": entry.get("dir")}
    reward = []
    for arm, rounds in arms.items():
        for k in sorted(rounds):
            ev = rounds[k].get("evaluate")
            if ev:
                for s in SCORERS:
                    if s in ev:
                        reward.append({"arm": arm, "round": k, "scorer": s, "mean": ev[s].get("mean"),
                                       "standard_error": ev[s].get("standard_error"), "n": ev[s].get("n")})
    by_arm = {arm: {str(k): rounds[k] for k in sorted(rounds)} for arm, rounds in arms.items()}
    out = {"recipe": manifest.get("recipe_file"), "name": manifest["recipe"]["name"],
           "versions": manifest.get("versions"), "initial_policy": manifest.get("initial_policy"),
           "reward_per_round": reward, "history": manifest.get("history", [])}
    if list(by_arm) in ([None], []):
        out["rounds"] = by_arm.get(None, {})
    else:
        out["arms"] = by_arm
    return out


def _fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _without_values(rounds: dict) -> dict:
    return {k: {s: {m: v for m, v in met.items() if not m.endswith("_values")} for s, met in st.items()}
            for k, st in rounds.items()}


def write_report(run_dir) -> Path:
    run_dir = Path(run_dir)
    res = collect(run_dir)
    plots = _plots(run_dir, res)
    light = dict(res)
    if "rounds" in res:
        light["rounds"] = _without_values(res["rounds"])
    else:
        light["arms"] = {arm: _without_values(rounds) for arm, rounds in res["arms"].items()}
    atomic_write_text(run_dir / "results.json", json.dumps(light, indent=2, default=str))
    arms = {None: res["rounds"]} if "rounds" in res else res["arms"]
    with_arms = "arms" in res
    lines = [f"# {res['name']}: report across rounds" + (" and arms" if with_arms else ""), "",
             f"Recipe `{res['recipe']}`; initial policy `{(res['initial_policy'] or {}).get('path')}`.", ""]
    if res["reward_per_round"]:
        arm_col = "arm | " if with_arms else ""
        lines += ["## Reward per round (held-out prompts)", "", f"| {arm_col}round | scorer | mean | s.e. | n |",
                  "|---" * (5 + with_arms) + "|"]
        for r in res["reward_per_round"]:
            arm_cell = f"{r['arm']} | " if with_arms else ""
            lines.append(f"| {arm_cell}{r['round']} | {r['scorer']} | {_fmt(r['mean'])} | {_fmt(r['standard_error'])} "
                         f"| {r['n']} |")
        lines.append("")
    arm_col = "arm | " if with_arms else ""
    rms = [(arm, k, st["reward_model"], st.get("synth", {})) for arm, rounds in arms.items()
           for k, st in rounds.items() if "reward_model" in st]
    if rms:
        lines += ["## Reward models", "", f"| {arm_col}round | pairs from | pairs | train loss | held-out accuracy "
                  "| held-out pairs | seconds |", "|---" * (7 + with_arms) + "|"]
        for arm, k, rm, sy in rms:
            acc = rm.get("eval_accuracy") or {}
            lines.append(f"| {f'{arm} | ' if with_arms else ''}{k} | {sy.get('method', 'pair')} | {_fmt(rm.get('pairs'))} "
                         f"| {_fmt(rm.get('train_loss'))} | {_fmt(acc.get('accuracy'))} | {_fmt(acc.get('n'))} "
                         f"| {_fmt(rm.get('seconds'), 1)} |")
        lines.append("")
    lines += ["## Data per round", "", f"| {arm_col}round | responses | mean score | pairs "
              "| mean margin | relabeled rows | selected | train loss | reference | seconds |",
              "|---" * (10 + with_arms) + "|"]
    for arm, rounds in arms.items():
        for k, st in rounds.items():
            if k == "0":
                continue
            g, sc, pr = st.get("generate", {}), st.get("score", {}), st.get("pair", st.get("synth", {}))
            rl, se, tr = st.get("relabel", {}), st.get("select", {}), st.get("train", {})
            secs = sum(v.get("seconds") or 0 for v in st.values())
            lines.append(f"| {f'{arm} | ' if with_arms else ''}{k} | {_fmt(g.get('responses'))} "
                         f"| {_fmt((sc.get('scores') or {}).get('mean'))} "
                         f"| {_fmt(pr.get('pairs'))} | {_fmt((pr.get('margins') or {}).get('mean'))} "
                         f"| {_fmt(rl.get('rows_out'))} | {_fmt(se.get('kept'))} | {_fmt(tr.get('train_loss'))} "
                         f"| {_fmt(tr.get('reference'))} | {secs:.1f} |")
    lines.append("")
    drops = {}
    for rounds in arms.values():   # arms share stages: each stage directory's drops once
        for k, st in rounds.items():
            for s, met in st.items():
                for reason, n in (met.get("dropped") or {}).items():
                    drops[(met.get("dir"), k, s, reason)] = n
    if drops:
        lines += ["## Dropped rows by reason", "", "| round | stage | reason | rows |", "|---|---|---|---|"]
        lines += [f"| {k} | {s} | {reason} | {n} |" for (_, k, s, reason), n in drops.items()]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    lines += ["## Runs", ""] + [f"- {h['finished']}: {h['seconds']} s, ran {', '.join(h['ran']) or 'nothing'}"
                                for h in res["history"]] + [""]
    lines += ["Package versions: " + ", ".join(f"{k} {v}" for k, v in (res["versions"] or {}).items() if v), ""]
    return atomic_write_text(run_dir / "report.md", "\n".join(lines))


def _plots(run_dir: Path, res: dict) -> list[Path]:
    import matplotlib  # noqa: PLC0415 -- heavy (matplotlib): loaded only when a report is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    made = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=100)
        plt.close(fig)
        made.append(out / f"{name}.png")

    arms = {None: res["rounds"]} if "rounds" in res else res["arms"]
    if res["reward_per_round"]:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for arm in arms:
            for scorer in SCORERS:
                pts = [r for r in res["reward_per_round"]
                       if r["arm"] == arm and r["scorer"] == scorer and r["mean"] is not None]
                if pts:
                    ax.errorbar([p["round"] for p in pts], [p["mean"] for p in pts],
                                yerr=[p["standard_error"] or 0 for p in pts], marker="o", capsize=3,
                                label=scorer if arm is None else f"{arm} ({scorer})")
        ax.set_xlabel("round (0: initial policy)")
        ax.set_ylabel("mean reward on held-out prompts")
        ax.legend()
        save(fig, "reward_per_round")
    for stage, key, label, name in (("score", "score_values", "score of each response", "score_distribution"),
                                    ("pair", "margin_values", "score margin of each pair", "margin_distribution")):
        seen, series = set(), []
        for rounds in arms.values():   # a stage shared by arms once
            for k, st in rounds.items():
                if stage in st and st[stage].get(key) and st[stage].get("dir") not in seen:
                    seen.add(st[stage].get("dir"))
                    series.append((k, st[stage][key]))
        if series:
            fig, ax = plt.subplots(figsize=(5, 3.5))
            for k, vals in series:
                ax.hist(vals, bins=20, alpha=0.5, label=f"round {k}")
            ax.set_xlabel(label)
            ax.set_ylabel("count")
            ax.legend()
            save(fig, name)
    counts, seen = [], set()
    for arm, rounds in arms.items():
        for k, st in rounds.items():
            for s in ("pair", "synth", "relabel", "select", "evolve"):
                if s in st and st[s].get("dir") not in seen:
                    seen.add(st[s].get("dir"))
                    kept = st[s].get("pairs", st[s].get("rows_out", st[s].get("kept", st[s].get("merged"))))
                    counts.append((f"{arm + ' ' if arm else ''}r{k} {s}", kept or 0,
                                   sum((st[s].get("dropped") or {}).values())))
    if counts:
        fig, ax = plt.subplots(figsize=(max(5, len(counts) * 0.8), 3.5))
        xs = range(len(counts))
        ax.bar(xs, [c[1] for c in counts], label="kept")
        ax.bar(xs, [c[2] for c in counts], bottom=[c[1] for c in counts], label="dropped")
        ax.set_xticks(list(xs), [c[0] for c in counts], rotation=45, ha="right")
        ax.set_ylabel("rows")
        ax.legend()
        save(fig, "kept_dropped")
    return made


# -- text for the command line ----------------------------------------------------------------------

def format_plan(result: dict, title: str = "plan") -> str:
    lines = [f"{title}: {result['run_dir']}"]
    for e in result["steps"]:
        where = e.get("dir") or "(its key waits on the steps before it)"
        status = e["status"] + (" (ran now, resuming other code's work)" if e.get("ran") and e.get("stale") else
                                " (ran now)" if e.get("ran") else " (other code)" if e.get("stale") else "")
        ins = ", ".join(f"{k}={(v or '?')[:8]}" for k, v in e["inputs"].items())
        label = (f"{e['arm']}/" if e.get("arm") is not None else "") + f"round-{e['round']}/{e['stage']}"
        lines.append(f"  {label:<24} {status:<16} {where}  [{ins}]")
    return "\n".join(lines)


def format_status(st: dict) -> str:
    lines = [f"run {st['run_dir']} (recipe {st['recipe']}, {st['rounds']} rounds; started {st['started']}, "
             f"updated {st['updated']})"]
    for r in st["steps"]:
        extra = f" {r['seconds']} s" if r.get("seconds") is not None else ""
        detail = f" ({r['detail']})" if r.get("detail") else ""
        other = f"  [other code: {describe(r.get('code'))}]" if r.get("stale") else ""
        lines.append(f"  {r['step']:<20} {r['status']}{extra}{detail}  {r.get('dir') or ''}{other}")
    n = sum(1 for r in st["steps"] if r.get("stale"))
    if n and st.get("code"):
        lines.append(f"{n} step(s) were made by other prefkit code than this ({describe(st['code'])}); "
                     "`prefkit run` refuses to build on them until told --rerun-stale or --keep-stale (docs/loop.md)")
    return "\n".join(lines)
