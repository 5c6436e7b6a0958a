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

Scorers, any combination (`EvaluateOptions.scorers`; the registry is `prefkit.evaluate.scorers`,
where `register_scorer` adds one): 'reward-fn' (`reward_fn(prompt, response) -> float`, a Python
function such as the toy world's gold reward), 'reward-model' (a sequence-classification reward
model), 'judge-single' (a `judge`'s 1-10 grade) and 'pairwise' (`prefkit.evaluate.pairwise`:
comparison against reference outputs in both orders: win rate, its standard error, ties, parse
failures, and the length-controlled win rate of `prefkit.evaluate.winrate`). With `output_dir`, writes `results.json`, `report.md`,
`per_prompt.jsonl`, a length plot and each policy's outputs in AlpacaEval's format
(`outputs/NAME.alpaca_eval.json`: instruction, output, generator) and prefkit's
(`outputs/NAME.jsonl`). See docs/evaluate.md.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from prefkit.errors import ConfigError
from prefkit.evaluate.options import EvaluateOptions
from prefkit.evaluate.report import instruction_text, write_report
from prefkit.evaluate.scorers import NEEDS, Scorer, ScoringContext, available_scorers, get_scorer, summary_of
from prefkit.generate import resolve_conditioning
from prefkit.models import load_causal_lm, load_lora_merged, model_identity, resolve_model_path
from prefkit.relabel import condition, load_conditioning
from prefkit.synth.backends import Backend, LocalBackend, OpenAIBackend, SamplingParams
from prefkit.synth.inputs import PromptRow, read_prompts
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

    if isinstance(prompts, list) and prompts and all(isinstance(p, PromptRow) for p in prompts):
        return prompts
    return read_prompts(prompts, split=split, subset=subset, revision=revision, format=format,
                        on_invalid=on_invalid, report=report)


# -- generation -------------------------------------------------------------------------------------

def generate_outputs(specs: Sequence[PolicySpec], rows: list, run: Run, params: SamplingParams, *, n: int = 1,
                     batch_size: int = 16) -> dict[str, dict]:
    """For each policy: {"outputs": [[text or None] * n per prompt], "failures": [[reason or None]],
    "backend": description, "goal": conditioning goal or None}. Sample j uses seed params.seed + j."""

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


# -- the whole evaluation ---------------------------------------------------------------------------

def evaluate_policies(policies, prompts, options: EvaluateOptions | None = None, **overrides) -> dict:
    """Generate with every policy on `prompts`, score with the chosen scorers, and (with
    `options.output_dir`) write the report.

    policies: {name: model or PolicySpec}, a list of PolicySpecs / `parse_policy` strings, or one.
    prompts: anything `load_prompts` reads. options: an `EvaluateOptions` (scorers and their
    inputs, generation, files); its fields may also be given as keywords, which override it.

    Returns {"prompts", "n", "generation", "scorers", "policies": {name: {scorer key: summary}},
    "per_prompt": [rows], "outputs": {name: [[text] * n per prompt]}, "scores": {name: {scorer
    key: [[value] * n per prompt]}} (per-output scorers), "run": request stats}.
    """
    o = EvaluateOptions.of(options, **overrides)
    specs = policy_specs(policies)
    rows = load_prompts(prompts, **(o.prompt_options or {}))
    if not rows:
        raise ConfigError("no prompts to evaluate")
    scorers = [get_scorer(name) for name in o.chosen_scorers()]
    if not scorers:
        raise ConfigError("nothing to score with: give a reward function, a reward model or a judge, or name a "
                          f"scorer ({', '.join(available_scorers())})")
    for sc in scorers:
        for need in sc.missing(o):
            raise ConfigError(f"scorer {sc.name!r} needs {NEEDS[need]}")
    if o.reference is not None and o.reference not in [s.name for s in specs]:
        raise ConfigError(f"reference {o.reference!r} is not one of the policies ({', '.join(s.name for s in specs)})")
    if o.judge_params is None:
        o = replace(o, judge_params=SamplingParams(temperature=0.0, max_tokens=512, seed=0))
    output_dir, run_dir, scratch = o.output_dir, o.run_dir, None
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
    if run_dir is None and output_dir is not None:
        run_dir = output_dir / "run"
    elif run_dir is None:  # nowhere to keep the records: a scratch run, removed when done
        scratch = tempfile.TemporaryDirectory(prefix="prefkit-eval-")
        run_dir = Path(scratch.name)

    n = o.n
    with Run(run_dir, retry_failed=o.retry_failed, progress=o.progress) as run:
        gen = generate_outputs(specs, rows, run, o.generation, n=n, batch_size=o.batch_size)
        ctx = ScoringContext(options=o, rows=rows, run=run)
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
            for sc in scorers:
                if not sc.compares:
                    _score_outputs(sc, ctx, spec.name, [(rows[flat[k][0]], texts[k]) for k in ok], ok, recs, res)
            results[spec.name] = res
            per_prompt.extend(recs)
        by_key = {(r["policy"], r["prompt_index"], r["sample"]): r for r in per_prompt}
        for sc in scorers:
            if sc.compares:
                for name, entries in sc.score(ctx, {k: g["outputs"] for k, g in gen.items()}, by_key).items():
                    results[name].update(entries)
        run_stats = run.stats.to_dict()

    reference_outputs = o.reference_outputs
    out = {"prompts": len(rows), "n": n,
           "generation": {"temperature": o.temperature, "top_p": o.top_p, "max_new_tokens": o.max_new_tokens,
                          "seed": o.seed},
           "scorers": [sc.name for sc in scorers],
           "judge": o.judge.describe() if o.judge is not None else None,
           "reference": o.reference if o.reference is not None else (
               str(reference_outputs) if isinstance(reference_outputs, (str, Path))
               else ("outputs given" if reference_outputs else None)),
           "policies": results, "per_prompt": per_prompt,
           "outputs": {name: g["outputs"] for name, g in gen.items()},
           "scores": {spec.name: {sc.key: [[by_key[(spec.name, i, j)].get(sc.column or sc.key) for j in range(n)]
                                           for i in range(len(rows))]
                                  for sc in scorers if not sc.compares} for spec in specs},
           "run": run_stats, "run_dir": None if scratch is not None else str(run_dir)}
    if scratch is not None:
        scratch.cleanup()
    if output_dir is not None:
        out["files"] = write_report(out, rows, output_dir)
    return out


def _score_outputs(scorer: Scorer, ctx: ScoringContext, policy: str, items: list, ok: list[int], recs: list[dict],
                   res: dict) -> None:
    """Run a per-output scorer on one policy's outputs; its summary goes to res[key], its values
    and details to the outputs' records."""
    got = scorer.score(ctx, policy, items)
    if len(got.values) != len(items) or (got.details is not None and len(got.details) != len(items)):
        raise ConfigError(f"scorer {scorer.name!r} returned {len(got.values)} values for {len(items)} outputs")
    values = [None] * len(recs)
    for n_item, (k, v) in enumerate(zip(ok, got.values)):
        values[k] = None if v is None else float(v)
        if got.details is not None:
            recs[k].update(got.details[n_item])
    res[scorer.key] = {**summary_of(values), **got.summary}
    for r, v in zip(recs, values):
        r[scorer.column or scorer.key] = v
