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

from prefkit.errors import ConfigError, DataError
from prefkit.files import atomic_write_text
from prefkit.pipeline.schema import build_options
from prefkit.pipeline.stages import TRAIN_ENGINE_OPTIONS


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
    recipe_dir: Path | None = None   # where the recipe's relative file names are also looked up


def recipe_file(name, recipe_dir: Path | None) -> Path:
    """A file a recipe names: as given, or beside the recipe when it is not there."""
    f = Path(name)
    if not f.is_absolute() and not f.exists() and recipe_dir is not None and (recipe_dir / f).exists():
        f = recipe_dir / f
    return f


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
    backend_options = opts.pop("backend_options", None) or {}
    chunk_size = opts.pop("chunk_size", None) or STAGES["generate"].options()["chunk_size"].default
    rows = ctx.prompts
    if servers:
        outputs = _generate_served(ctx, rows, servers, served_model, opts, backend_options)
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


def _generate_served(ctx: StageContext, rows, servers, served_model, opts: dict,
                     backend_options: dict) -> list[list[str | None]]:
    from prefkit.evaluate.policy import PolicySpec, generate_outputs
    from prefkit.relabel import CONDITIONING_FILE
    from prefkit.synth.backends import SamplingParams
    from prefkit.synth.runs import Run

    n = opts.get("n", 1)
    cond = opts.get("conditioning", "auto")
    if cond == "auto":   # the policy directory's spec, sent with every request (servers do not read it)
        cond = ctx.policy if (Path(ctx.policy) / CONDITIONING_FILE).is_file() else None
    spec = PolicySpec("policy", served_model or ctx.policy, base_urls=list(servers), conditioning=cond,
                      goal=opts.get("goal"), backend_options=dict(backend_options))
    params = SamplingParams(temperature=opts.get("temperature", 1.0), top_p=opts.get("top_p", 1.0),
                            max_tokens=opts.get("max_new_tokens", 128), seed=opts.get("seed", 0))
    with Run(ctx.dir / "run", progress=ctx.progress) as run:
        got = generate_outputs([spec], rows, run, params, n=n)
    return got["policy"]["outputs"]


# -- score ------------------------------------------------------------------------------------------

def bound_reward_fn(options: dict):
    """The stage's reward_fn (a callable or MODULE:FUNCTION) with its `reward_args` bound."""
    from prefkit.evaluate.scorers import resolve_reward_fn

    fn = resolve_reward_fn(options["reward_fn"])
    return functools.partial(fn, **options["reward_args"]) if options.get("reward_args") else fn


def run_score(ctx: StageContext) -> dict:
    rows = _read_jsonl(ctx.data)
    flat = [(i, j) for i, r in enumerate(rows) for j in range(len(r["responses"]))]
    prompts = [rows[i]["prompt"] for i, _ in flat]
    texts = [rows[i]["responses"][j]["text"] for i, j in flat]
    extra: dict = {}
    if ctx.options.get("reward_fn"):
        fn = bound_reward_fn(ctx.options)
        got = [fn(p, t) if t else None for p, t in zip(prompts, texts)]
        for (i, j), g in zip(flat, got):   # a reward function may also give aspects (a judge's ratings)
            if isinstance(g, dict):
                rows[i]["responses"][j].update({k: g[k] for k in ("aspects", "fine_grained") if k in g})
        scores = [None if g is None else float(g["score"] if isinstance(g, dict) else g) for g in got]
        scorer = ctx.options["reward_fn"]
    elif ctx.options.get("judge"):
        scores, scorer, extra = _score_with_judge(ctx, flat, rows, prompts, texts)
    else:
        from prefkit.reward_model import RewardModelScorer

        rm = RewardModelScorer(ctx.options["reward_model"], batch_size=ctx.options.get("batch_size", 16),
                               **(ctx.options.get("rm_options") or {}))
        scores = rm.score(prompts, texts, progress=ctx.progress, desc=f"round {ctx.round} score")
        scorer = rm.name
    for (i, j), s in zip(flat, scores):
        rows[i]["responses"][j]["score"] = s
    out = _write_jsonl(rows, ctx.dir / "scored.jsonl")
    return {"output": str(out), "metrics": {"scorer": scorer, "scores": _summary(scores), **extra,
                                            "score_values": [s for s in scores if s is not None]}}


def _score_with_judge(ctx: StageContext, flat, rows, prompts, texts):
    """UltraFeedback-style judge ratings (`prefkit.synth.judge`, as `prefkit score` gives them)
    through a durable request run in the stage's directory: a killed stage resumes with every
    finished request kept. An answer the judge's parser cannot read is a recorded failure (score
    None, `judge_failure` says why), never a made-up score. The aspects' ratings and their mean
    (`fine_grained`) go with each response, for the pair stage's fine_grained_filter."""
    from collections import Counter

    from prefkit.pipeline.backend_spec import backend_from_spec, sampling
    from prefkit.synth.judge import judge_items
    from prefkit.synth.runs import Run

    backend = backend_from_spec(ctx.options["judge"], policy=ctx.policy, key="score.judge")
    params = sampling(ctx.options.get("judge_params"), temperature=0.0, max_tokens=1024)
    asked = [k for k, t in enumerate(texts) if t]          # an empty response is not scored (as with reward_fn)
    items = [([{"role": "user", "content": prompts[k]}] if isinstance(prompts[k], str) else prompts[k], texts[k])
             for k in asked]
    with Run(ctx.dir / "run", progress=ctx.progress) as run:
        judged = judge_items(run, backend, items, params, desc=f"round {ctx.round} judge")
        stats = run.stats.to_dict()
    scores: list = [None] * len(texts)
    failures = Counter()
    for k, jd in zip(asked, judged):
        i, j = flat[k]
        resp = rows[i]["responses"][j]
        resp["aspects"], resp["fine_grained"] = jd.aspects, jd.fine_grained
        scores[k] = jd.score
        if jd.failure:
            resp["judge_failure"] = jd.failure
            failures[jd.failure if jd.failure.startswith("request failed") else jd.failure.split(":")[0]] += 1
    scorer = f"judge {backend.describe()}"
    return scores, scorer, {"judge_failures": dict(failures), "judge_run": stats}


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


# -- synth ------------------------------------------------------------------------------------------

def run_synth(ctx: StageContext) -> dict:
    """The round's prompts through a registered synth method (`prefkit.synth.methods`), in chunks
    of `chunk_size` prompts: chunk c keeps its requests in the durable run STAGE/run/chunk-c and
    its pairs in STAGE/chunks/chunk-c.json once finished. A resumed stage reads the finished chunks;
    the unfinished one resumes its request run when the backend is a server (each request is
    sampled on its own), and is sampled again from its start when the model is local (a local
    sample depends on the batch it was drawn in), so a killed stage writes what an uninterrupted
    one would. The backend is built afresh for each chunk (a local sampler's seed stream starts
    over), and chunk c's method seed (where it has one) is seed + c."""
    import shutil

    from prefkit import data
    from prefkit.pipeline.backend_spec import backend_from_spec
    from prefkit.pipeline.stages import STAGES
    from prefkit.report import StageReport
    from prefkit.synth.backends import OpenAIBackend
    from prefkit.synth.inputs import pairs_dataset
    from prefkit.synth.methods import get_synth_method

    opts = dict(ctx.options)
    method = get_synth_method(opts.pop("method"))
    backend_spec, judge_spec = opts.pop("backend"), opts.pop("judge", None)
    chunk_size = opts.pop("chunk_size", None) or STAGES["synth"].options({"method": method.name})["chunk_size"].default
    seed = opts.get("seed", getattr(method.options(), "seed", None))
    rows = ctx.prompts
    parts = ctx.dir / "chunks"
    parts.mkdir(exist_ok=True)
    n_chunks = max(1, -(-len(rows) // chunk_size))
    pairs: list[dict] = []
    dropped: dict[str, int] = {}
    notes: list[dict] = []
    for c in range(n_chunks):
        path = parts / f"chunk-{c:05d}.json"
        if not path.exists():
            run_dir = ctx.dir / "run" / f"chunk-{c:05d}"
            backend = backend_from_spec(backend_spec, policy=ctx.policy, key="synth.backend")
            if run_dir.exists() and not isinstance(backend, OpenAIBackend):
                shutil.rmtree(run_dir)
            extra = {}
            if method.uses_judge:
                # the judge defaults to the backend itself (one LLM writes and judges)
                extra["judge"] = backend_from_spec(judge_spec, policy=ctx.policy, key="synth.judge") \
                    if judge_spec else backend
            chunk_opts = dict(opts, **({"seed": seed + c} if seed is not None else {}))
            options = build_options(method.options, chunk_opts, run_dir=str(run_dir), progress=ctx.progress)
            report = StageReport(f"synth {method.name}")
            ds = method.run(rows[c * chunk_size:(c + 1) * chunk_size], backend, options, report=report, **extra)
            atomic_write_text(path, json.dumps({"pairs": ds.to_list(), "dropped": dict(report.dropped),
                                                "notes": report.notes}, default=str))
        got = json.loads(path.read_text())
        pairs.extend(got["pairs"])
        for reason, n in got["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
        notes.append(got["notes"])
    if not pairs:
        raise DataError(f"synth {method.name} made no pairs from {len(rows)} prompts; dropped: "
                        + "; ".join(f"{r} x{n}" for r, n in dropped.items()))
    out = data.write(pairs_dataset(pairs), str(ctx.dir / "pairs.jsonl"))
    metrics = {"method": method.name, "prompts": len(rows), "pairs": len(pairs), "dropped": dropped}
    labels: dict[str, int] = {}
    for note in notes:
        for k, n in (note.get("labels") or {}).items():
            labels[k] = labels.get(k, 0) + n
    if labels:
        metrics["labels"] = labels
    returned = sum(n.get("rewrites_returned", 0) for n in notes)
    if returned:
        metrics["failed_rewrite_rate"] = sum(n.get("failed_rewrites", 0) for n in notes) / returned
    return {"output": str(out), "metrics": metrics}


# -- relabel ----------------------------------------------------------------------------------------

def run_relabel(ctx: StageContext) -> dict:
    """Reward-augmented pairs (`rows: pairs`, prefkit.relabel.relabel_file) or, with `rows: sft`,
    every judged sample of the score stage's output conditioned on its own score
    (prefkit.relabel.sft_rows_file; its rows read as the pair stage reads them)."""
    from prefkit.relabel import RelabelOptions, relabel_file, sft_rows_file

    opts = dict(ctx.options)
    if not opts.pop("enabled", True):
        return {"output": str(ctx.data), "metrics": {"relabeled": False}}
    rows = opts.pop("rows", "pairs")
    opts.setdefault("tokenizer", ctx.policy)
    if rows == "sft":
        out = ctx.dir / "sft_rows.jsonl"
        report = sft_rows_file(ctx.data, out, RelabelOptions(**opts), input_format="multi", on_invalid="drop")
    else:
        out = ctx.dir / "pairs.jsonl"
        report = relabel_file(ctx.data, out, RelabelOptions(**opts))
    return {"output": str(out),
            "metrics": {"relabeled": True, "rows": rows, "rows_in": report.rows_in, "rows_out": report.rows_out,
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

def run_evolve(ctx: StageContext) -> dict:
    """`prefkit.select.evolve.evolve_then_select` on the round's selected pairs: `backend` rewrites
    their prompts and answers the rewrites (durable request runs under the stage's `run/`, so a
    killed stage resumes), `reward_model` or `judge` scores the answers, the second selection
    (`select`: SelectOptions, plus `reference` as the select stage has it) runs under the round's
    policy, and the kept pairs are merged with the selected ones."""
    from prefkit import data
    from prefkit.pipeline.backend_spec import backend_from_spec, sampling
    from prefkit.report import StageReport
    from prefkit.select import SelectOptions, get_metric
    from prefkit.select.evolve import EvolveOptions, evolve_then_select

    opts = dict(ctx.options)
    backend = backend_from_spec(opts.pop("backend", None) or {}, policy=ctx.policy, key="evolve.backend")
    scorer = {"reward_model": opts.pop("reward_model", None), "judge": opts.pop("judge", None)}
    if sum(v is not None for v in scorer.values()) != 1:
        raise ConfigError("evolve: set one of reward_model or judge (it scores the answers to the evolved prompts)")
    if scorer["judge"] is not None:
        scorer["judge"] = backend_from_spec(scorer["judge"], policy=ctx.policy, key="evolve.judge")
    for name in ("rewrite_params", "generation", "judge_params"):   # EvolveOptions types them as Any
        opts[name] = sampling(opts.get(name))
    sel_opts = dict(opts.pop("select", None) or {})
    reference = _reference(ctx, sel_opts.pop("reference", "initial"))
    sel = SelectOptions(progress=ctx.progress, cache_dir=str(ctx.dir / "cache"), **sel_opts)
    needs = get_metric(sel.metric).needs
    report = StageReport("evolve")
    selected = data.read(str(ctx.data), report=report)
    res = evolve_then_select(selected, backend, build_options(EvolveOptions, opts, run_dir=str(ctx.dir / "run"),
                                                              progress=ctx.progress),
                             sel, model=ctx.policy if "policy" in needs else None,
                             tokenizer=ctx.policy if "policy" in needs else None,
                             reference=reference if "reference" in needs else None, report=report, **scorer)
    out = data.write(res.merged, str(ctx.dir / "pairs.jsonl"))
    return {"output": str(out), "metrics": {"pairs_in": len(selected), "evolved_prompts": len(res.evolved_prompts),
                                            "evolved_pairs": len(res.evolved_pairs),
                                            "evolved_kept": len(res.evolved_selected), "merged": len(res.merged),
                                            "dropped": dict(res.report.dropped)}}


# -- train ------------------------------------------------------------------------------------------

def train_report(output_dir) -> dict:
    """A training run's prefkit_train_report.json."""
    return json.loads((Path(output_dir) / "prefkit_train_report.json").read_text())


def train_metrics(history: list) -> dict:
    """What a training step's marker keeps of its log history (train, sft, reward_model): the
    final loss, the optimiser steps, the loss curve."""
    summary = next((h for h in reversed(history) if "train_loss" in h), {})
    return {"train_loss": summary.get("train_loss"), "steps": summary.get("step"),
            "loss_values": [[h["step"], h["loss"]] for h in history if "loss" in h]}

def train_config(ctx: StageContext):
    """The DPOConfig of this round's training: the recipe's fields, the engine's paths."""
    from prefkit.train import DPOConfig, load_config

    fields = {k: v for k, v in ctx.options.items() if k not in TRAIN_ENGINE_OPTIONS}
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


HALF_PROBE = "half"   # the half probe's name in the train logs: half/w/reward_chosen, ..., half/grad_cosine


def half_probes(ctx: StageContext, cfg, reference: str, settings: dict) -> tuple[dict, dict]:
    """The half probe of the train stage (`half_probe: {rows, seed}`, prefkit.train.half_probe) on
    this step's relabeled data, its reference log-probs from the stage's reference model, and its
    values under the policy before training (step 0; not with LoRA, whose trainable parameters
    exist only once training starts)."""
    from prefkit import data
    from prefkit.train.half_probe import half_probe
    from prefkit.train.loading import load_model, load_tokenizer

    pairs = data.read(str(ctx.data))
    tok = load_tokenizer(cfg)
    ref_model = load_model("causal-lm", str(reference), cfg)
    probe = half_probe(pairs, tok, cfg, ref_model, **{"seed": cfg.seed, **{k: int(v) for k, v in settings.items()}})
    initial = None
    if not cfg.use_peft:
        model = ref_model if str(reference) == str(ctx.policy) else load_model("causal-lm", str(ctx.policy), cfg)
        initial = probe(model)
        del model
    del ref_model
    return {HALF_PROBE: probe}, {"rows": probe.rows, "initial": initial}


def run_train(ctx: StageContext) -> dict:
    cfg, which, reference = train_config(ctx)
    check_resumable(Path(cfg.output_dir))
    launch = ctx.options.get("launch")
    probe_settings = ctx.options.get("unlearning_probe")
    probes, probe_info = unlearning_probes(ctx, cfg, probe_settings) if probe_settings is not None else ({}, {})
    half_settings = ctx.options.get("half_probe")
    half, half_info = half_probes(ctx, cfg, reference, half_settings) if half_settings is not None else ({}, {})
    probes = {**probes, **half}
    if launch:
        if probes:
            raise ConfigError("train: unlearning_probe and half_probe run in this process; they cannot be combined "
                              "with launch")
        from prefkit.pipeline.launch import train_in_processes

        train_in_processes(cfg, launch, ctx.dir)
    else:
        from prefkit.train import train_dpo

        train_dpo(cfg, probes=probes or None)
    out = Path(cfg.output_dir)
    if cfg.use_peft:   # later rounds and the evaluation load a whole model
        from prefkit.models import merge_lora

        out = merge_lora(out, ctx.dir / "merged", base=ctx.policy)
    history = train_report(cfg.output_dir).get("log_history", [])
    last = next((h for h in reversed(history) if "loss" in h), {})
    return {"output": str(out),
            "metrics": {"reference": which, "reference_model": str(reference), "policy": ctx.policy,
                        "last_log": {k: v for k, v in last.items()
                                     if k in ("loss", "rewards/accuracies", "rewards/margins", "step", "epoch")},
                        **train_metrics(history),
                        **({"probes": {name: [[0, v]] + [[h["step"], h[name]] for h in history if name in h]
                                       for name, v in probe_info.get("initial", {}).items()},
                            "probe_pairs": probe_info.get("probe_pairs")} if probe_settings is not None else {}),
                        **({"half_probe": half_probe_metrics(history, half_info)} if half_settings is not None
                           else {})}}


def half_probe_metrics(history: list[dict], info: dict) -> dict:
    """The half probe's values per logging step, {key: [[step, value], ...]} (step 0: before
    training, when measured), and the rows it used per half."""
    prefix = HALF_PROBE + "/"
    keys = sorted({k[len(prefix):] for h in history for k in h if k.startswith(prefix)} | set(info.get("initial") or {}))
    values = {k: ([[0, info["initial"][k]]] if info.get("initial") else [])
              + [[h["step"], h[prefix + k]] for h in history if prefix + k in h] for k in keys}
    return {"rows": info.get("rows"), "values": values}


# -- sft ----------------------------------------------------------------------------------------------

def sft_config(ctx: StageContext):
    """The SFTConfig of this round's supervised training: the recipe's fields, the engine's paths."""
    from prefkit.train import SFTConfig, load_config

    fields = dict(ctx.options)
    if not ctx.progress:
        fields.setdefault("disable_tqdm", True)
    return load_config(SFTConfig, overrides=fields, model_name_or_path=ctx.policy, train_file=str(ctx.data),
                       output_dir=str(ctx.dir / "model"), resume_from_checkpoint="auto")




def run_sft(ctx: StageContext) -> dict:
    """Supervised fine-tuning of the round's policy on the relabel stage's goal-conditioned rows
    (`prefkit.train.train_sft`), resumed from its latest complete checkpoint; the model keeps the
    rows' conditioning spec, so evaluate's `conditioning: auto` conditions as trained."""
    from prefkit.train import train_sft

    cfg = sft_config(ctx)
    check_resumable(Path(cfg.output_dir))
    train_sft(cfg)
    out = Path(cfg.output_dir)
    if cfg.use_peft:   # later rounds and the evaluation load a whole model
        from prefkit.models import merge_lora

        out = merge_lora(out, ctx.dir / "merged", base=ctx.policy)
    return {"output": str(out), "metrics": {"policy": ctx.policy, "rows": sum(1 for _ in open(ctx.data) if _.strip()),
                                            **train_metrics(train_report(cfg.output_dir).get("log_history", []))}}


# -- reward_model -----------------------------------------------------------------------------------

def rm_config(ctx: StageContext):
    """The RMConfig of this round's reward model: the recipe's fields, the engine's paths; the base
    model is the round's policy unless `model` names one."""
    from prefkit.models import resolve_model_path
    from prefkit.train import RMConfig, load_config

    fields = {k: v for k, v in ctx.options.items() if k not in ("model", "eval_pairs")}
    if not ctx.progress:
        fields.setdefault("disable_tqdm", True)
    base = str(resolve_model_path(ctx.options["model"])) if ctx.options.get("model") else ctx.policy
    return load_config(RMConfig, overrides=fields, model_name_or_path=base, train_file=str(ctx.data),
                       output_dir=str(ctx.dir / "model"), resume_from_checkpoint="auto")


def eval_pairs(spec: dict, recipe_dir: Path | None):
    """Held-out labelled pairs: a preference dataset file, or what a MODULE:FUNCTION returns (a
    Dataset, a list of pair rows, or a path)."""
    from prefkit import data
    from prefkit.refs import call_ref

    if spec.get("file"):
        return data.read(str(recipe_file(spec["file"], recipe_dir)), split=spec.get("split"))
    got = call_ref(spec["build"], spec.get("args") or {})
    if isinstance(got, list):
        import datasets

        got = datasets.Dataset.from_list(got)
    return data.read(got if hasattr(got, "column_names") else str(got))


def run_reward_model(ctx: StageContext) -> dict:
    """A Bradley-Terry reward model on the round's pairs (`prefkit.train.train_rm`), resumed from
    its latest complete checkpoint; with `eval_pairs`, its accuracy on them
    (`prefkit.evaluate.rm_accuracy`)."""
    from prefkit import data
    from prefkit.evaluate.rm_accuracy import rm_accuracy
    from prefkit.train import train_rm

    cfg = rm_config(ctx)
    check_resumable(Path(cfg.output_dir))
    train_rm(cfg)
    report = train_report(cfg.output_dir)
    metrics = {"base_model": cfg.model_name_or_path, "pairs": sum(1 for _ in open(ctx.data) if _.strip()),
               **train_metrics(report.get("log_history", [])), "split_accuracy": report.get("eval_accuracy")}
    spec = ctx.options.get("eval_pairs")
    if spec:
        pairs = eval_pairs(spec, ctx.recipe_dir)
        data.write(pairs, str(ctx.dir / "eval_pairs.jsonl"))
        acc = rm_accuracy(cfg.output_dir, pairs, batch_size=cfg.per_device_eval_batch_size,
                          max_length=cfg.max_length or 1024, max_prompt_length=cfg.max_prompt_length,
                          progress=ctx.progress)
        metrics["eval_accuracy"] = {k: acc[k] for k in ("accuracy", "n", "correct", "ties", "skipped", "mean_margin")}
    return {"output": cfg.output_dir, "metrics": metrics}


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

    opts = {k: v for k, v in ctx.options.items() if k not in ("baseline", "goal", "conditioning", "curve_goals",
                                                              "curve_samples", "reward_args")}
    if opts.get("reward_fn"):
        opts["reward_fn"] = bound_reward_fn(ctx.options)
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


RUNNERS = {name: globals()[name] for name in ("run_generate", "run_score", "run_pair", "run_synth", "run_relabel",
                                               "run_select", "run_evolve", "run_reward_model", "run_train", "run_sft",
                                               "run_evaluate")}

