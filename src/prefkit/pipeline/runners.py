"""Runners: each calls one stage's public function with the recipe's options and writes its
output in the stage's directory. No method logic lives here; `prefkit.pipeline.stages` says
which runner serves which stage.

A runner takes a `StageContext` and returns {"output": path, "metrics": {...}}. What a runner
writes before it returns is resumable by the stage function's own mechanism: generation writes
each chunk of prompts as it finishes (a kill loses at most the chunk in flight; chunk c is
sampled with seed + c, so a resumed stage writes what an uninterrupted one would), requests to
servers go through a durable `prefkit.synth.runs.Run`, training resumes from its latest complete
checkpoint (`resume_from_checkpoint: auto`), evaluation's requests go through a `Run`.
"""

from __future__ import annotations

import functools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from prefkit.errors import ConfigError
from prefkit.files import atomic_write_text


@dataclass
class StageContext:
    round: int
    stage: str
    dir: Path                    # the stage's keyed directory (exists)
    options: dict                # the recipe's options for the stage (checked; defaults not filled in)
    policy: str                  # the policy this round starts from (initial or the previous round's)
    initial: str                 # the initial policy
    data: str | None = None      # the latest dataset of this round (the previous data stage's output)
    pairs: str | None = None     # this round's pair-stage output (before relabeling and selection)
    prompts: list = field(default_factory=list)   # this round's PromptRows (generate)
    eval_prompts: list = field(default_factory=list)
    run_dir: Path | None = None
    progress: bool = True


def _write_jsonl(rows, path: Path) -> Path:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def _read_jsonl(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _summary(values) -> dict:
    got = [v for v in values if v is not None]
    if not got:
        return {"n": 0}
    return {"n": len(got), "mean": statistics.fmean(got), "min": min(got), "max": max(got),
            "std": statistics.pstdev(got)}


# -- generate ---------------------------------------------------------------------------------------

def run_generate(ctx: StageContext) -> dict:
    from prefkit.pipeline.stages import STAGES

    opts = dict(ctx.options)
    servers = opts.pop("servers", None)
    served_model = opts.pop("served_model", None)
    chunk_size = opts.pop("chunk_size", None) or STAGES["generate"].options()["chunk_size"].default
    rows = ctx.prompts
    if servers:
        outputs = _generate_served(ctx, rows, servers, served_model, opts)
    else:
        outputs = _generate_local(ctx, rows, chunk_size, opts)
    records = []
    for row, texts in zip(rows, outputs):
        # the conversation that was sampled: a string prompt is one user turn (prefkit.generate
        # renders it through the chat template, and the servers take chat messages), so the pairs
        # built from these rows train the policy on the text it was sampled from
        prompt = [{"role": "user", "content": row.prompt}] if isinstance(row.prompt, str) else row.prompt
        records.append({"prompt": prompt, "prompt_id": row.prompt_id, "source_row": row.source_row,
                        "source": row.source,
                        "responses": [{"text": t, "model": f"round-{ctx.round}-policy"} for t in texts if t is not None]})
    out = _write_jsonl(records, ctx.dir / "responses.jsonl")
    n = sum(len(r["responses"]) for r in records)
    return {"output": str(out), "metrics": {"prompts": len(records), "responses": n,
                                            "failed": sum(len(t) for t in outputs) - n}}


def _generate_local(ctx: StageContext, rows, chunk_size: int, opts: dict) -> list[list[str]]:
    from prefkit.generate import generate, resolve_conditioning
    from prefkit.models import load_causal_lm

    parts = ctx.dir / "chunks"
    parts.mkdir(exist_ok=True)
    seed = opts.pop("seed", 0)
    conditioning = resolve_conditioning(ctx.policy, opts.pop("conditioning", "auto"))
    loaded = None
    out: list[list[str]] = []
    n_chunks = max(1, -(-len(rows) // chunk_size))
    for c in range(n_chunks):
        path = parts / f"chunk-{c:05d}.json"
        chunk = rows[c * chunk_size:(c + 1) * chunk_size]
        if path.exists():
            got = json.loads(path.read_text())
            if len(got) == len(chunk):
                out.extend(got)
                continue
        if loaded is None:
            loaded = load_causal_lm(ctx.policy)
        texts = generate(loaded[0], [r.prompt for r in chunk], tokenizer=loaded[1], seed=seed + c,
                         conditioning=conditioning, progress=ctx.progress,
                         desc=f"round {ctx.round} generate {c + 1}/{n_chunks}", **opts)
        atomic_write_text(path, json.dumps(texts))
        out.extend(texts)
    return out


def _generate_served(ctx: StageContext, rows, servers, served_model, opts: dict) -> list[list[str | None]]:
    from prefkit.evaluate.policy import PolicySpec, generate_outputs
    from prefkit.relabel import CONDITIONING_FILE
    from prefkit.synth.backends import SamplingParams
    from prefkit.synth.runs import Run

    n = opts.get("n", 1)
    cond = opts.get("conditioning", "auto")
    if cond == "auto":   # the policy directory's spec, sent with every request (servers do not read it)
        cond = ctx.policy if (Path(ctx.policy) / CONDITIONING_FILE).is_file() else None
    spec = PolicySpec("policy", served_model or ctx.policy, base_urls=list(servers), conditioning=cond,
                      goal=opts.get("goal"))
    params = SamplingParams(temperature=opts.get("temperature", 1.0), top_p=opts.get("top_p", 1.0),
                            max_tokens=opts.get("max_new_tokens", 128), seed=opts.get("seed", 0))
    with Run(ctx.dir / "run", progress=ctx.progress) as run:
        got = generate_outputs([spec], rows, run, params, n=n)
    return got["policy"]["outputs"]


# -- score ------------------------------------------------------------------------------------------

def run_score(ctx: StageContext) -> dict:
    rows = _read_jsonl(ctx.data)
    flat = [(i, j) for i, r in enumerate(rows) for j in range(len(r["responses"]))]
    prompts = [rows[i]["prompt"] for i, _ in flat]
    texts = [rows[i]["responses"][j]["text"] for i, j in flat]
    if ctx.options.get("reward_fn"):
        from prefkit.evaluate.scorers import resolve_reward_fn

        fn = resolve_reward_fn(ctx.options["reward_fn"])
        kwargs = ctx.options.get("reward_args") or {}
        got = [fn(p, t, **kwargs) if t else None for p, t in zip(prompts, texts)]
        for (i, j), g in zip(flat, got):   # a reward function may also give aspects (a judge's ratings)
            if isinstance(g, dict):
                rows[i]["responses"][j].update({k: g[k] for k in ("aspects", "fine_grained") if k in g})
        scores = [None if g is None else float(g["score"] if isinstance(g, dict) else g) for g in got]
        scorer = ctx.options["reward_fn"]
    else:
        from prefkit.reward_model import RewardModelScorer

        rm = RewardModelScorer(ctx.options["reward_model"], batch_size=ctx.options.get("batch_size", 16),
                               **(ctx.options.get("rm_options") or {}))
        scores = rm.score(prompts, texts, progress=ctx.progress, desc=f"round {ctx.round} score")
        scorer = rm.name
    for (i, j), s in zip(flat, scores):
        rows[i]["responses"][j]["score"] = s
    out = _write_jsonl(rows, ctx.dir / "scored.jsonl")
    return {"output": str(out), "metrics": {"scorer": scorer, "scores": _summary(scores),
                                            "score_values": [s for s in scores if s is not None]}}


# -- pair -------------------------------------------------------------------------------------------

def run_pair(ctx: StageContext) -> dict:
    from prefkit import data
    from prefkit.report import StageReport

    report = StageReport("pair")
    # a row that cannot be read (an empty sample, say) is dropped and counted by reason, not fatal
    multi = data.read(str(ctx.data), format="multi", on_invalid="drop", report=report)
    pairs = data.binarize(multi, report=report, **ctx.options)
    out = data.write(pairs, str(ctx.dir / "pairs.jsonl"))
    margins = [c - r for c, r in zip(pairs["score_chosen"], pairs["score_rejected"])] if len(pairs) else []
    return {"output": str(out), "metrics": {"pairs": len(pairs), "dropped": dict(report.dropped),
                                            "margins": _summary(margins), "margin_values": margins}}


# -- relabel ----------------------------------------------------------------------------------------

def run_relabel(ctx: StageContext) -> dict:
    from prefkit.relabel import RelabelOptions, relabel_file

    opts = dict(ctx.options)
    if not opts.pop("enabled", True):
        return {"output": str(ctx.data), "metrics": {"relabeled": False}}
    opts.setdefault("tokenizer", ctx.policy)
    report = relabel_file(ctx.data, ctx.dir / "pairs.jsonl", RelabelOptions(**opts))
    return {"output": str(ctx.dir / "pairs.jsonl"),
            "metrics": {"relabeled": True, "rows_in": report.rows_in, "rows_out": report.rows_out,
                        "dropped": dict(report.dropped)}}


# -- select -----------------------------------------------------------------------------------------

def _reference(ctx: StageContext, which: str | None):
    if which in (None, "none"):
        return None
    return ctx.initial if which == "initial" else ctx.policy


def run_select(ctx: StageContext) -> dict:
    from prefkit import data
    from prefkit.report import StageReport
    from prefkit.select import SelectOptions, get_metric, select

    opts = dict(ctx.options)
    reference = _reference(ctx, opts.pop("reference", "initial"))
    options = SelectOptions(progress=ctx.progress, cache_dir=str(ctx.dir / "cache"), **opts)
    report = StageReport("select")
    pairs = data.read(str(ctx.data), report=report)
    needs_model = "policy" in get_metric(options.metric).needs
    kept = select(pairs, options=options, model=ctx.policy if needs_model else None,
                  tokenizer=ctx.policy if needs_model else None,
                  reference=reference if "reference" in get_metric(options.metric).needs else None, report=report)
    out = data.write(kept, str(ctx.dir / "pairs.jsonl"))
    return {"output": str(out), "metrics": {"pairs_in": len(pairs), "kept": len(kept),
                                            "dropped": dict(report.dropped)}}


# -- evolve -----------------------------------------------------------------------------------------

def _backend(spec: dict):
    from prefkit.refs import call_ref
    from prefkit.synth.backends import OpenAIBackend

    if spec.get("build"):
        return call_ref(spec["build"], spec.get("args") or {})
    if spec.get("model") and spec.get("base_urls"):
        return OpenAIBackend(model=spec["model"], base_urls=list(spec["base_urls"]))
    raise ConfigError("evolve.backend: give {build: MODULE:FUNCTION} or {model: NAME, base_urls: [URL, ...]}")


def run_evolve(ctx: StageContext) -> dict:
    from prefkit import data
    from prefkit.report import StageReport
    from prefkit.select import SelectOptions
    from prefkit.select.evolve import EvolveOptions, evolve_then_select

    opts = dict(ctx.options)
    backend = _backend(opts.pop("backend", None) or {})
    reward_model = opts.pop("reward_model", None)
    if reward_model is None:
        raise ConfigError("evolve: set reward_model (it scores the responses to the evolved prompts)")
    sel = SelectOptions(progress=ctx.progress, **(opts.pop("select", None) or {}))
    report = StageReport("evolve")
    selected = data.read(str(ctx.data), report=report)
    res = evolve_then_select(selected, backend, EvolveOptions(run_dir=str(ctx.dir / "run"), progress=ctx.progress,
                                                              **opts),
                             sel, model=ctx.policy, tokenizer=ctx.policy, report=report,
                             reward_model=reward_model)
    out = data.write(res.merged, str(ctx.dir / "pairs.jsonl"))
    return {"output": str(out), "metrics": {"evolved_prompts": len(res.evolved_prompts),
                                            "evolved_pairs": len(res.evolved_pairs),
                                            "evolved_kept": len(res.evolved_selected), "merged": len(res.merged),
                                            "dropped": dict(res.report.dropped)}}


# -- train ------------------------------------------------------------------------------------------

def train_config(ctx: StageContext):
    """The DPOConfig of this round's training: the recipe's fields, the engine's paths."""
    from prefkit.train import DPOConfig, load_config

    fields = {k: v for k, v in ctx.options.items() if k not in ("reference", "launch", "unlearning_probe")}
    which = ctx.options.get("reference") or "initial"
    reference = ctx.initial if which == "initial" else None   # None: the policy being trained (the previous round's)
    if not ctx.progress:
        fields.setdefault("disable_tqdm", True)
    if ctx.run_dir is not None:
        fields.setdefault("ref_cache_dir", str(ctx.run_dir / "ref_cache"))
    cfg = load_config(DPOConfig, overrides=fields, model_name_or_path=ctx.policy, train_file=str(ctx.data),
                      output_dir=str(ctx.dir / "model"), reference_model_name_or_path=reference,
                      resume_from_checkpoint="auto")
    return cfg, which, reference or ctx.policy


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")


def check_resumable(output_dir: Path) -> None:
    """The latest finished checkpoint must hold its weights: one line naming it, never the
    trainer's traceback, when they have gone missing."""
    from prefkit.errors import DataError
    from prefkit.train.integrity import checkpoints

    for ckpt in checkpoints(output_dir):
        if not (ckpt / "trainer_state.json").is_file():
            continue   # an unfinished save: the trainer skips it
        has_weights = any((ckpt / f).is_file() for f in WEIGHT_FILES) or any(
            p.is_dir() for p in ckpt.iterdir() if p.name.startswith(("pytorch_model_fsdp", "global_step")))
        if not has_weights:
            raise DataError(f"{ckpt}: cannot resume from this checkpoint: its weights file "
                            f"({' or '.join(WEIGHT_FILES[:2])}) is missing; delete {ckpt} to resume from the one "
                            "before it")
        return


def unlearning_probes(ctx: StageContext, cfg, settings: dict) -> tuple[dict, dict]:
    """The unlearning probe of the train stage (`unlearning_probe: {threshold, pairs}`): probe
    functions for `train_dpo(probes=...)` on this round's pairs whose rejected response scored >=
    threshold, and their values under the policy before training. On relabeled data (a
    conditioning spec) the rejected responses are conditioned on their own score and on the best
    goal; otherwise they are scored as they are."""
    from transformers import AutoTokenizer

    from prefkit import data
    from prefkit.evaluate.unlearning import high_quality_rejected, rejected_logp_probe
    from prefkit.models import load_causal_lm
    from prefkit.relabel import find_conditioning

    unknown = set(settings) - {"threshold", "pairs"}
    if unknown:
        raise ConfigError(f"train.unlearning_probe: unknown {', '.join(sorted(unknown))}; valid: threshold, pairs")
    if not ctx.pairs:
        raise ConfigError("train.unlearning_probe needs this round's pairs (the pair stage)")
    hq = high_quality_rejected(data.read(ctx.pairs), threshold=float(settings.get("threshold", 5.0)),
                               limit=int(settings.get("pairs", 48)), seed=cfg.seed)
    if not len(hq):
        return {}, {"probe_pairs": 0}
    tok = AutoTokenizer.from_pretrained(str(ctx.policy))
    spec = find_conditioning(ctx.data) if ctx.data else None
    if spec is not None:
        probes = {"probe/hq_rejected_logp": rejected_logp_probe(hq, tok, spec=spec, goal="own"),
                  "probe/hq_rejected_logp_best_goal": rejected_logp_probe(hq, tok, spec=spec, goal=spec.best_goal)}
    else:
        probes = {"probe/hq_rejected_logp": rejected_logp_probe(hq, tok)}
    model = load_causal_lm(ctx.policy, need_tokenizer=False)[0]
    initial = {name: fn(model) for name, fn in probes.items()}
    del model
    return probes, {"probe_pairs": len(hq), "initial": initial}


def run_train(ctx: StageContext) -> dict:
    cfg, which, reference = train_config(ctx)
    check_resumable(Path(cfg.output_dir))
    launch = ctx.options.get("launch")
    probe_settings = ctx.options.get("unlearning_probe")
    probes, probe_info = unlearning_probes(ctx, cfg, probe_settings) if probe_settings is not None else ({}, {})
    if launch:
        if probes:
            raise ConfigError("train: unlearning_probe runs in this process; it cannot be combined with launch")
        from prefkit.pipeline.launch import train_in_processes

        train_in_processes(cfg, launch, ctx.dir)
    else:
        from prefkit.train import train_dpo

        train_dpo(cfg, probes=probes or None)
    out = Path(cfg.output_dir)
    if cfg.use_peft:   # later rounds and the evaluation load a whole model
        from prefkit.models import merge_lora

        out = merge_lora(out, ctx.dir / "merged", base=ctx.policy)
    report = json.loads((Path(cfg.output_dir) / "prefkit_train_report.json").read_text())
    history = report.get("log_history", [])
    last = next((h for h in reversed(history) if "loss" in h), {})
    summary = next((h for h in reversed(history) if "train_loss" in h), {})
    return {"output": str(out),
            "metrics": {"reference": which, "reference_model": str(reference), "policy": ctx.policy,
                        "last_log": {k: v for k, v in last.items()
                                     if k in ("loss", "rewards/accuracies", "rewards/margins", "step", "epoch")},
                        "train_loss": summary.get("train_loss"), "steps": summary.get("step"),
                        "loss_values": [[h["step"], h["loss"]] for h in history if "loss" in h],
                        **({"probes": {name: [[0, v]] + [[h["step"], h[name]] for h in history if name in h]
                                       for name, v in probe_info.get("initial", {}).items()},
                            "probe_pairs": probe_info.get("probe_pairs")} if probe_settings is not None else {})}}


# -- evaluate ---------------------------------------------------------------------------------------

def _evaluate_spec(ctx: StageContext, which: str):
    """The conditioning of `conditioning: which` (evaluate stage): a spec, a path holding one,
    'auto' or None."""
    if which in ("auto", None):
        return "auto"
    if which == "none":
        return None
    if which == "data":
        from prefkit.relabel import find_conditioning

        spec = find_conditioning(ctx.data) if ctx.data else None
        if spec is None:
            raise ConfigError(f"round {ctx.round} evaluate: conditioning: data, but this round's data "
                              f"({ctx.data or 'none'}) carries no conditioning spec; relabel it first, or use "
                              "conditioning: system")
        return spec
    from prefkit.relabel import make_spec

    return make_spec(placement=which, tokenizer=ctx.policy)


def run_evaluate(ctx: StageContext) -> dict:
    from prefkit.evaluate.goal_curve import goal_following_curve
    from prefkit.evaluate.policy import PolicySpec, evaluate_policies
    from prefkit.evaluate.scorers import resolve_reward_fn

    opts = {k: v for k, v in ctx.options.items() if k not in ("baseline", "goal", "conditioning", "curve_goals",
                                                              "curve_samples", "reward_args")}
    if ctx.options.get("reward_args") and opts.get("reward_fn"):
        opts["reward_fn"] = functools.partial(resolve_reward_fn(opts["reward_fn"]), **ctx.options["reward_args"])
    name = f"round-{ctx.round}"
    goal = ctx.options.get("goal")
    cond = _evaluate_spec(ctx, ctx.options.get("conditioning") or "auto")
    policy = PolicySpec(name, ctx.policy, conditioning=cond, goal=goal)
    run = ctx.dir / "run"   # the evaluation and the curve share finished requests
    res = evaluate_policies({name: policy}, ctx.eval_prompts, output_dir=str(ctx.dir), run_dir=str(run),
                            progress=ctx.progress, **opts)
    pol = res["policies"][name]
    metrics = {"policy": ctx.policy, "goal": goal}
    for key in ("reward_fn", "reward_model"):
        if key in pol:
            metrics[key] = {k: pol[key].get(k) for k in ("mean", "std", "standard_error", "n", "failed")}
    metrics["mean_length"] = pol.get("mean_length")
    first = next(iter(res["scores"].get(name, {}).values()), None)   # the first per-output scorer's values
    metrics["examples"] = [[row.prompt if isinstance(row.prompt, str) else str(row.prompt), outs[0],
                            first[i][0] if first else None]
                           for i, (row, outs) in enumerate(list(zip(ctx.eval_prompts, res["outputs"][name]))[:3])]
    goals = ctx.options.get("curve_goals")
    if goals:
        if cond is None:
            raise ConfigError(f"round {ctx.round} evaluate: curve_goals needs a conditioning spec "
                              "(conditioning: auto, data, system or user)")
        spec = cond
        if spec == "auto":
            from prefkit.relabel import load_conditioning, make_spec

            spec = load_conditioning(ctx.policy) or make_spec(placement="system", tokenizer=ctx.policy)
        curve_opts = {**opts, "n": ctx.options.get("curve_samples") or opts.get("n", 1)}
        metrics["curve"] = goal_following_curve(ctx.policy, ctx.eval_prompts, [float(g) for g in goals], spec=spec,
                                                run_dir=str(run), progress=ctx.progress, **curve_opts)
    return {"output": str(ctx.dir / "results.json"), "metrics": metrics}


RUNNERS = {name: globals()[name] for name in ("run_generate", "run_score", "run_pair", "run_relabel", "run_select",
                                               "run_evolve", "run_train", "run_evaluate")}

