"""Policy evaluation: generate with one or more policies on a prompt set, score what they wrote.

    from prefkit.evaluate.policy import evaluate_policies
    from prefkit.toy.task import gold_reward
    res = evaluate_policies({"base": "runs/base", "ra": "runs/ra"}, prompts, reward_fn=gold_reward,
                            n=4, temperature=1.0, max_new_tokens=64, output_dir="eval/toy")
    res["policies"]["ra"]["reward_fn"]["mean"]                      # mean gold reward
    res["policies"]["ra"]["pairwise"]["win_rate"]                   # with judge=..., reference=...

Policies (`PolicySpec`, or the strings `parse_policy` reads): a model directory, hub id,
`.gguf` file or bundled shortcut (`smollm2`), generated locally in batches through
`prefkit.synth.backends.LocalBackend`, which applies a trained model's
`prefkit_conditioning.json` (reward-augmented models are conditioned on the best score unless
`goal` says otherwise); a LoRA adapter directory (merged into its base model for generation);
or a model behind an OpenAI-compatible server (vLLM, `transformers serve`, ...), written
`MODEL@http://HOST:PORT/v1`. Every generation and every judge request goes through a durable
`prefkit.synth.runs.Run` in `run_dir`: a killed evaluation resumes where it stopped.

Scorers, any combination: `reward_fn(prompt, response) -> float` (a Python function such as
the toy world's gold reward), `reward_model` (a sequence-classification reward model), `judge`
with single-answer grading (1-10) and/or pairwise comparison against reference outputs in both
orders (win rate, its standard error, ties, parse failures, and the length-controlled win rate
of `prefkit.evaluate.winrate`). With `output_dir`, writes `results.json`, `report.md`,
`per_prompt.jsonl`, a length plot and each policy's outputs in AlpacaEval's format
(`outputs/NAME.alpaca_eval.json`: instruction, output, generator) and prefkit's
(`outputs/NAME.jsonl`). See docs/evaluate.md.
"""

from __future__ import annotations

import importlib
import json
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from prefkit.errors import ConfigError, DataError
from prefkit.evaluate.report import instruction_text, write_report
from prefkit.evaluate.winrate import LC_LABELS, length_controlled_win_rates, mean_and_se, win_rate
from prefkit.synth.backends import Backend, LocalBackend, OpenAIBackend, SamplingParams
from prefkit.synth.runs import Request, Run


# -- policies ---------------------------------------------------------------------------------------

@dataclass
class PolicySpec:
    """One policy to evaluate. `model`: a directory / hub id / .gguf / shortcut / loaded model, or
    the served model's name when `base_urls` is set. `conditioning`: 'auto' (the model directory's
    prefkit_conditioning.json), None (off), a spec or a path holding one (also for servers)."""

    name: str
    model: Any
    base_urls: list[str] | None = None
    tokenizer: Any = None
    conditioning: Any = "auto"
    goal: float | None = None
    backend_options: dict = field(default_factory=dict)

    @property
    def served(self) -> bool:
        return bool(self.base_urls)


def parse_policy(text: str) -> PolicySpec:
    """`[NAME=]MODEL` or `[NAME=]MODEL@URL[,URL...]` (a model served by OpenAI-compatible servers)."""
    name, sep, rest = text.partition("=")
    if not sep or "/" in name or not name or "@" in name:
        name, rest = "", text
    model, at, urls = rest.partition("@http")
    base_urls = [u if u.startswith("http") else "http" + u for u in ("http" + urls).split(",")] if at else None
    if not model:
        raise ConfigError(f"--policy {text!r}: expected [NAME=]MODEL or [NAME=]MODEL@http://HOST:PORT/v1")
    if not name:
        name = Path(str(model).rstrip("/")).name or str(model)
    return PolicySpec(name=name, model=model, base_urls=base_urls)


def _as_spec(name, value) -> PolicySpec:
    if isinstance(value, PolicySpec):
        return value
    if isinstance(value, str):
        spec = parse_policy(value)
        spec.name = name if name is not None else spec.name
        return spec
    if name is None:
        raise ConfigError("a loaded model needs a name: pass policies as {name: model}")
    return PolicySpec(name=name, model=value)


def policy_specs(policies) -> list[PolicySpec]:
    """PolicySpecs from a mapping {name: model/spec}, a list of specs/strings, or one of them."""
    if isinstance(policies, dict):
        specs = [_as_spec(k, v) for k, v in policies.items()]
    elif isinstance(policies, (list, tuple)):
        specs = [_as_spec(None, v) for v in policies]
    else:
        specs = [_as_spec(None, policies)]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"policy names must be unique; repeated: {', '.join(dup)} (name them NAME=MODEL)")
    return specs


def policy_backend(spec: PolicySpec, *, batch_size: int = 16) -> tuple[Backend, Any, Any]:
    """(backend, conditioning spec or None, tokenizer or None) for a policy. Local models are
    loaded here, and the backend's identity carries a hash of the weights, so a retrained model
    in the same directory is never answered from an older run's records. The caller conditions
    the messages (`condition_messages`), so the goal is part of every request's key."""
    from prefkit.generate import resolve_conditioning
    from prefkit.relabel import load_conditioning

    if spec.served:
        cond = spec.conditioning
        if cond == "auto":
            cond = None  # a server's directory is not ours to read; pass conditioning= explicitly
        elif isinstance(cond, (str, Path)):
            cond = load_conditioning(cond)
            if cond is None:
                raise ConfigError(f"{spec.conditioning}: no prefkit_conditioning.json there")
        opts = {"concurrency": 16, "timeout": 300.0, **spec.backend_options}
        return OpenAIBackend(model=str(spec.model), base_urls=list(spec.base_urls), **opts), cond, None
    from prefkit.models import load_causal_lm, load_lora_merged, model_identity, resolve_model_path

    model, tok = spec.model, spec.tokenizer
    source = model
    if isinstance(model, (str, Path)):
        path = Path(resolve_model_path(model))
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            model, loaded_tok = load_lora_merged(path)
            tok = tok if tok is not None else loaded_tok
        else:
            model, tok = load_causal_lm(str(path), tok)
        source = path
    else:
        model, tok = load_causal_lm(model, tok)
    cond = spec.conditioning
    if cond == "auto":
        cond = resolve_conditioning(source, "auto")
    elif isinstance(cond, (str, Path)):
        cond = load_conditioning(cond)
        if cond is None:
            raise ConfigError(f"{spec.conditioning}: no prefkit_conditioning.json there")
    ident = model_identity(model)
    # The requests' identity is the weights (and the model's source), not the policy's name: two
    # names for the same model (the base policy with and without a goal) share every request whose
    # messages and sampling are equal, and a renamed policy keeps its finished requests.
    name = f"{source if isinstance(source, Path) else spec.name}|weights={ident['weights_sha']}"
    backend = LocalBackend(model, tok, batch_size=batch_size, name=name, conditioning=None)
    return backend, cond, tok


def _goal_for(spec: PolicySpec, cond) -> float | None:
    if cond is None:
        return None
    return spec.goal if spec.goal is not None else cond.best_goal


# -- prompts ----------------------------------------------------------------------------------------

def load_prompts(prompts, *, split=None, subset=None, revision=None, format: str = "auto",
                 on_invalid: str = "error", report=None) -> list:
    """`prefkit.synth.inputs.PromptRow`s from any source `read_prompts` takes (a prompts file with
    a prompt or instruction column, a preference dataset, a hub id, a Dataset, a list)."""
    from prefkit.synth.inputs import PromptRow, read_prompts

    if isinstance(prompts, list) and prompts and all(isinstance(p, PromptRow) for p in prompts):
        return prompts
    return read_prompts(prompts, split=split, subset=subset, revision=revision, format=format,
                        on_invalid=on_invalid, report=report)


# -- generation -------------------------------------------------------------------------------------

def generate_outputs(specs: Sequence[PolicySpec], rows: list, run: Run, params: SamplingParams, *, n: int = 1,
                     batch_size: int = 16) -> dict[str, dict]:
    """For each policy: {"outputs": [[text or None] * n per prompt], "failures": [[reason or None]],
    "backend": description, "goal": conditioning goal or None}. Sample j uses seed params.seed + j."""
    from prefkit.relabel import condition

    out = {}
    for spec in specs:
        backend, cond, tok = policy_backend(spec, batch_size=batch_size)
        goal = _goal_for(spec, cond)
        reqs = []
        for row in rows:
            messages = row.messages
            if cond is not None:  # the same insertion as relabeling and prefkit.generate
                messages = condition(messages, goal=goal, spec=cond, tokenizer=tok)
            for j in range(n):
                p = params if params.seed is None else params.replace(seed=params.seed + j)
                reqs.append(Request(messages, p, j, f"generate {spec.name}"))
        recs = run.generate(backend, reqs, desc=f"generate {spec.name}")
        texts = [[None] * n for _ in rows]
        fails = [[None] * n for _ in rows]
        for k, rec in enumerate(recs):
            i, j = divmod(k, n)
            if rec["ok"]:
                texts[i][j] = rec["text"].strip()
            else:
                fails[i][j] = f"request failed: {rec['reason']}"
        out[spec.name] = {"outputs": texts, "failures": fails, "backend": backend.describe().split("|")[0],
                          "goal": goal, "conditioned": cond is not None}
        del backend
    return out


# -- scoring ----------------------------------------------------------------------------------------

def resolve_reward_fn(fn) -> Callable:
    """A callable, or 'module:function' (e.g. 'prefkit.toy.task:gold_reward')."""
    if callable(fn):
        return fn
    mod, sep, attr = str(fn).partition(":")
    if not sep:
        raise ConfigError(f"--reward-fn {fn!r}: expected MODULE:FUNCTION, e.g. prefkit.toy.task:gold_reward")
    try:
        f = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--reward-fn {fn!r}: cannot import it ({exc})") from None
    if not callable(f):
        raise ConfigError(f"--reward-fn {fn!r} is not callable")
    return f


def _summary(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    m, se = mean_and_se(got)
    return {"mean": m, "std": statistics.pstdev(got) if len(got) > 1 else (0.0 if got else None),
            "standard_error": se, "n": len(got), "failed": len(values) - len(got)}


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


# -- the whole evaluation ---------------------------------------------------------------------------

def evaluate_policies(policies, prompts, *, output_dir=None, run_dir=None, n: int = 1,
                      temperature: float = 0.7, top_p: float = 1.0, max_new_tokens: int = 512, seed: int = 0,
                      batch_size: int = 16, reward_fn=None, reward_model=None, judge: Backend | None = None,
                      judge_modes: Sequence[str] = ("single",), reference: str | None = None,
                      reference_outputs=None, judge_params: SamplingParams | None = None,
                      judge_explain: bool = True, official_lc: bool | str = "auto", retry_failed: bool = False,
                      progress: bool = True,
                      prompt_options: dict | None = None, rm_options: dict | None = None) -> dict:
    """Generate with every policy on `prompts`, score, and (with `output_dir`) write the report.

    judge_modes: any of 'single' (1-10 grading) and 'pairwise' (against `reference`, the name of
    one of the policies, whose sample 0 is the reference, or `reference_outputs`, a file or a list
    aligned with the prompts). judge_explain=False asks the judge for the verdict / rating alone.
    official_lc: 'auto' calls AlpacaEval's own length-controlled GLM
    when its inputs are present (see `prefkit.evaluate.winrate`), False never.

    Returns {"prompts", "n", "generation", "policies": {name: metrics}, "per_prompt": [rows],
    "outputs": {name: [[text] * n per prompt]}, "scores": {name: {"reward_fn" | "reward_model" |
    "judge_single": [[value] * n per prompt]}}, "run": request stats}.
    """
    specs = policy_specs(policies)
    rows = load_prompts(prompts, **(prompt_options or {}))
    if not rows:
        raise ConfigError("no prompts to evaluate")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    modes = [m for m in judge_modes] if judge is not None else []
    for m in modes:
        if m not in ("single", "pairwise"):
            raise ConfigError(f"judge mode must be 'single' or 'pairwise', not {m!r}")
    if "pairwise" in modes and (reference is None) == (reference_outputs is None):
        raise ConfigError("pairwise judging needs exactly one of a reference policy or reference outputs")
    if reference is not None and reference not in [s.name for s in specs]:
        raise ConfigError(f"reference {reference!r} is not one of the policies ({', '.join(s.name for s in specs)})")
    if reward_fn is None and reward_model is None and judge is None:
        raise ConfigError("nothing to score with: give a reward function, a reward model or a judge")
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    scratch = None
    if run_dir is None and output_dir is not None:
        run_dir = output_dir / "run"
    elif run_dir is None:  # nowhere to keep the records: a scratch run, removed when done
        scratch = tempfile.TemporaryDirectory(prefix="prefkit-eval-")
        run_dir = Path(scratch.name)
    gen_params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
    judge_params = judge_params or SamplingParams(temperature=0.0, max_tokens=512, seed=0)

    with Run(run_dir, retry_failed=retry_failed, progress=progress) as run:
        gen = generate_outputs(specs, rows, run, gen_params, n=n, batch_size=batch_size)
        results: dict[str, dict] = {}
        per_prompt = []
        for spec in specs:
            g = gen[spec.name]
            flat = [(i, j) for i in range(len(rows)) for j in range(n)]
            texts = [g["outputs"][i][j] for i, j in flat]
            lengths = [len(t) for t in texts if t is not None]
            res = {"backend": g["backend"], "conditioned": g["conditioned"], "goal": g["goal"],
                   "outputs": len(texts), "generation_failed": sum(t is None for t in texts),
                   "mean_length": statistics.fmean(lengths) if lengths else None}
            recs = [{"policy": spec.name, "prompt_index": i, "prompt_id": rows[i].prompt_id, "sample": j,
                     "instruction": instruction_text(rows[i].prompt), "output": texts[k],
                     "length": None if texts[k] is None else len(texts[k]),
                     "generation_failure": g["failures"][i][j]} for k, (i, j) in enumerate(flat)]
            ok = [k for k, t in enumerate(texts) if t is not None]
            if reward_fn is not None:
                fn = resolve_reward_fn(reward_fn)
                vals = [None] * len(texts)
                for k in ok:
                    vals[k] = float(fn(rows[flat[k][0]].prompt, texts[k]))
                res["reward_fn"] = _summary(vals)
                res["reward_fn"]["name"] = getattr(fn, "__module__", "") + "." + getattr(fn, "__qualname__", str(fn))
                for r, v in zip(recs, vals):
                    r["reward_fn"] = v
            if reward_model is not None:
                from prefkit.reward_model import RewardModelScorer

                scorer = reward_model if isinstance(reward_model, RewardModelScorer) else \
                    RewardModelScorer(reward_model, **(rm_options or {}))
                got = scorer.score([rows[flat[k][0]].prompt for k in ok], [texts[k] for k in ok],
                                   progress=progress, desc=f"reward model {spec.name}")
                vals = [None] * len(texts)
                for k, v in zip(ok, got):
                    vals[k] = v
                res["reward_model"] = _summary(vals)
                res["reward_model"]["name"] = scorer.name
                for r, v in zip(recs, vals):
                    r["reward_model"] = v
            if "single" in modes:
                from prefkit.evaluate.judging import grade_single

                grades = grade_single(
                    run, judge, [(rows[flat[k][0]].messages, texts[k]) for k in ok], judge_params,
                    desc=f"judge {spec.name}", explain=judge_explain)
                vals = [None] * len(texts)
                fails = {}
                for k, gr in zip(ok, grades):
                    vals[k] = gr.score
                    recs[k]["judge_score"] = gr.score
                    recs[k]["judge_failure"] = gr.failure
                    recs[k]["judge_raw"] = gr.raw
                    if gr.failure:
                        key = gr.failure.split(":")[0]
                        fails[key] = fails.get(key, 0) + 1
                res["judge_single"] = _summary(vals)
                res["judge_single"]["failures"] = fails
                res["judge_single"]["judge"] = judge.describe()
            results[spec.name] = res
            per_prompt.extend(recs)

        if "pairwise" in modes:
            _pairwise(specs, rows, n, gen, run, judge, judge_params, reference, reference_outputs, results,
                      per_prompt, official_lc, judge_explain)
        run_stats = run.stats.to_dict()
    by_key = {(r["policy"], r["prompt_index"], r["sample"]): r for r in per_prompt}

    out = {"prompts": len(rows), "n": n,
           "generation": {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed},
           "judge": judge.describe() if judge is not None else None, "judge_modes": modes,
           "reference": reference if reference is not None else (str(reference_outputs)
                                                                 if isinstance(reference_outputs, (str, Path))
                                                                 else ("outputs given" if reference_outputs else None)),
           "policies": results, "per_prompt": per_prompt,
           "outputs": {name: g["outputs"] for name, g in gen.items()},
           "scores": {spec.name: {m: [[by_key[(spec.name, i, j)].get(k) for j in range(n)] for i in range(len(rows))]
                                  for m, k in (("reward_fn", "reward_fn"), ("reward_model", "reward_model"),
                                               ("judge_single", "judge_score"))
                                  if m in results[spec.name]} for spec in specs},
           "run": run_stats, "run_dir": None if scratch is not None else str(run_dir)}
    if scratch is not None:
        scratch.cleanup()
    if output_dir is not None:

        out["files"] = write_report(out, rows, output_dir)
    return out


def _pairwise(specs, rows, n, gen, run, judge, judge_params, reference, reference_outputs, results, per_prompt,
              official_lc, judge_explain=True) -> None:
    from prefkit.evaluate.judging import compare_pairwise
    from prefkit.evaluate.winrate import official_length_controlled

    if reference is not None:
        refs = gen[reference]["outputs"]
        refs = [r[0] for r in refs]
        ref_name = reference
    else:
        refs = read_reference_outputs(reference_outputs, rows)
        ref_name = "reference"
    comparisons, prompt_prefs, all_cmp = {}, {}, {}
    by_key = {(r["policy"], r["prompt_index"], r["sample"]): r for r in per_prompt}
    for spec in specs:
        if spec.name == reference:
            continue
        outs = gen[spec.name]["outputs"]
        items, where = [], []
        unpaired = 0
        for i in range(len(rows)):
            for j in range(n):
                if outs[i][j] is None or refs[i] is None:
                    unpaired += 1
                    continue
                items.append((rows[i].messages, outs[i][j], refs[i]))
                where.append((i, j))
        cmps = compare_pairwise(run, judge, items, judge_params, desc=f"judge {spec.name} vs {ref_name}",
                                explain=judge_explain)
        per_prompt_pref: list[list[float]] = [[] for _ in rows]
        rows_glm = []
        fails: dict[str, int] = {}
        orders_asked = orders_read = consistent = both_read = first_shown_wins = decisive = 0
        for (i, j), c in zip(where, cmps):
            rec = by_key[(spec.name, i, j)]
            rec["pairwise"] = {"verdicts": dict(zip(("policy_first", "policy_second"), c.verdicts)),
                               "preferences": c.preferences, "preference": c.preference,
                               "failures": c.failures, "reference_length": len(refs[i]),
                               "judge_raw": dict(zip(("policy_first", "policy_second"), c.raw))}
            for order, (v, f) in enumerate(zip(c.verdicts, c.failures)):
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
        results[spec.name]["pairwise"] = wr
        comparisons[spec.name] = rows_glm
        prompt_prefs[spec.name] = prefs
        all_cmp[spec.name] = rows_glm
    if not comparisons:
        return
    lc = length_controlled_win_rates({k: v for k, v in comparisons.items()}, prompt_prefs)
    for name, r in lc.items():
        results[name]["length_controlled"] = r.to_dict()
        if not official_lc:
            continue
        if n == 1:
            metrics, why = official_length_controlled([instruction_text(r_.prompt) for r_ in rows], all_cmp[name],
                                                      policy=name, reference=ref_name)
        else:
            metrics, why = None, "AlpacaEval's GLM takes one output per instruction (n = 1)"
        results[name]["length_controlled_official"] = (
            {"label": LC_LABELS["official"], **metrics} if metrics is not None else {"available": False, "why": why})
