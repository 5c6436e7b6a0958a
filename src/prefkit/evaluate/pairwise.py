"""The built-in comparing scorer 'pairwise': an LLM judge compares each policy output with its
reference output in both orders (AlpacaEval's protocol; Dubois et al. 2024), giving win rates,
position-bias statistics and the length-controlled win rate of `prefkit.evaluate.winrate`.

The reference is one of the policies (`EvaluateOptions.reference`, its sample 0) or outputs
given with the prompts (`reference_outputs`: a list, or a file read by `read_reference_outputs`).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefkit.errors import ConfigError, DataError
from prefkit.evaluate.judging import compare_pairwise
from prefkit.evaluate.report import instruction_text
from prefkit.evaluate.scorers import ScoringContext, register_scorer
from prefkit.evaluate.winrate import LC_LABELS, length_controlled_win_rates, official_length_controlled, win_rate


def read_reference_outputs(source, rows: list) -> list[str]:
    """Reference outputs aligned with `rows`: a list of strings, or a file in AlpacaEval's format
    (JSON list or JSONL of {instruction, output}) or prefkit's (prompt_id or prompt, plus output or
    response; sample 0 is taken). Matched by prompt_id, else by instruction text."""
    if isinstance(source, (list, tuple)):
        if len(source) != len(rows):
            raise ConfigError(f"reference outputs: {len(source)} given for {len(rows)} prompts")
        return [str(s) for s in source]
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"reference outputs file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise DataError(f"not valid JSON ({exc})", file=str(path)) from None
    by_id, by_text = {}, {}
    for k, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError("expected an object with an output", file=str(path), row=k)
        if rec.get("sample", 0) not in (0, None):
            continue
        out = rec.get("output", rec.get("response"))
        if not isinstance(out, str):
            raise DataError("missing; expected the reference output text", file=str(path), row=k, field="output")
        if rec.get("prompt_id") is not None:
            by_id.setdefault(str(rec["prompt_id"]), out)
        instr = rec.get("instruction", rec.get("prompt"))
        if instr is not None:
            by_text.setdefault(instruction_text(instr) if not isinstance(instr, str) else instr, out)
    refs = []
    for i, row in enumerate(rows):
        ref = by_id.get(str(row.prompt_id))
        if ref is None:
            ref = by_text.get(instruction_text(row.prompt))
        if ref is None:
            raise DataError(f"no reference output for prompt {i} ({instruction_text(row.prompt)[:60]!r})",
                            file=str(path), field="instruction")
        refs.append(ref)
    return refs


@register_scorer("pairwise", needs=("judge", "reference"), compares=True,
                 help="an LLM judge compares each output with the reference in both orders (win rates, "
                      "length-controlled win rate)")
def score_pairwise(ctx: ScoringContext, outputs: dict, by_key: dict) -> dict:
    """{policy: {"pairwise": win rate and judge statistics, "length_controlled": ...,
    "length_controlled_official": ...}} for every policy but the reference."""
    o, rows, run = ctx.options, ctx.rows, ctx.run
    judge, judge_params, reference, n = o.judge, o.judge_params, o.reference, o.n
    if reference is not None:
        refs = [r[0] for r in outputs[reference]]
        ref_name = reference
    else:
        refs = read_reference_outputs(o.reference_outputs, rows)
        ref_name = "reference"
    results: dict[str, dict] = {}
    comparisons, prompt_prefs, all_cmp = {}, {}, {}
    for name, outs in outputs.items():
        if name == reference:
            continue
        items, where = [], []
        unpaired = 0
        for i in range(len(rows)):
            for j in range(n):
                if outs[i][j] is None or refs[i] is None:
                    unpaired += 1
                    continue
                items.append((rows[i].messages, outs[i][j], refs[i]))
                where.append((i, j))
        cmps = compare_pairwise(run, judge, items, judge_params, desc=f"judge {name} vs {ref_name}",
                                explain=o.judge_explain)
        per_prompt_pref: list[list[float]] = [[] for _ in rows]
        rows_glm = []
        fails: dict[str, int] = {}
        orders_asked = orders_read = consistent = both_read = first_shown_wins = decisive = 0
        for (i, j), c in zip(where, cmps):
            rec = by_key[(name, i, j)]
            rec["pairwise"] = {"verdicts": dict(zip(("policy_first", "policy_second"), c.verdicts)),
                               "preferences": c.preferences, "preference": c.preference,
                               "failures": c.failures, "reference_length": len(refs[i]),
                               "judge_raw": dict(zip(("policy_first", "policy_second"), c.raw))}
            for v, f in zip(c.verdicts, c.failures):
                orders_asked += 1
                if f:
                    key = f.split(":")[0]
                    fails[key] = fails.get(key, 0) + 1
                else:
                    orders_read += 1
                    if v in ("A", "B"):
                        decisive += 1
                        first_shown_wins += v == "A"
            if all(p is not None for p in c.preferences):
                both_read += 1
                consistent += c.preferences[0] == c.preferences[1]
            if c.preference is not None:
                per_prompt_pref[i].append(c.preference)
                rows_glm.append({"prompt_index": i, "sample": j, "preference": c.preference,
                                 "policy_length": len(outs[i][j]), "reference_length": len(refs[i]),
                                 "policy_output": outs[i][j], "reference_output": refs[i]})
        prefs = [sum(p) / len(p) if p else None for p in per_prompt_pref]
        wr = win_rate(prefs)
        wr.update({"reference": ref_name, "comparisons": len(items), "unpaired_outputs": unpaired,
                   "orders_asked": orders_asked, "verdicts_read": orders_read, "failures": fails,
                   "both_orders_read": both_read, "position_consistent": consistent,
                   "first_shown_preferred": (first_shown_wins / decisive) if decisive else None,
                   "judge": judge.describe()})
        results[name] = {"pairwise": wr}
        comparisons[name] = rows_glm
        prompt_prefs[name] = prefs
        all_cmp[name] = rows_glm
    if not comparisons:
        return results
    lc = length_controlled_win_rates({k: v for k, v in comparisons.items()}, prompt_prefs)
    for name, r in lc.items():
        results[name]["length_controlled"] = r.to_dict()
        if not o.official_lc:
            continue
        if n == 1:
            metrics, why = official_length_controlled([instruction_text(r_.prompt) for r_ in rows], all_cmp[name],
                                                      policy=name, reference=ref_name)
        else:
            metrics, why = None, "AlpacaEval's GLM takes one output per instruction (n = 1)"
        results[name]["length_controlled_official"] = (
            {"label": LC_LABELS["official"], **metrics} if metrics is not None else {"available": False, "why": why})
    return results
