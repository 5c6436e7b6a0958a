"""The synthetic-preference baselines RMBoost is compared against (Shen et al., section 2 of
docs/methods.md), each producing canonical PAIRS with a `method` column:

- rlaif: two samples per prompt, then a pairwise LLM judge picks the better one. The two answers
  are shown in a seeded random order (position bias); `both_orders=True` asks twice, swapped, and
  keeps only consistent verdicts.
- west_of_n: N samples per prompt, scored by a reward model or an UltraFeedback-style judge; the
  best is chosen and the worst rejected (ties at the top and bottom are dropped).
- rlcd: one response under a positive-principle prompt and one under a negative-principle prompt;
  labelled by construction (positive chosen).

Rows that cannot become a pair are counted in the report by reason.
"""

from __future__ import annotations

import random
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefkit.errors import ConfigError
from prefkit.report import StageReport
from prefkit.reward_model import RewardModelScorer
from prefkit.synth import judge as J
from prefkit.synth import prompts as P
from prefkit.synth.backends import Backend, SamplingParams
from prefkit.synth.inputs import pair_row, pairs_dataset, prompt_rows
from prefkit.synth.methods import GUIDELINE_HELP, SynthOptions, options_of, register_synth_method, sampling_params
from prefkit.synth.parsing import parse_verdict
from prefkit.synth.runs import Request, Run


def _setup(prompts, report, name, run_dir):
    rep = report if report is not None else StageReport(f"synth {name}")
    rows = prompt_rows(prompts, rep)
    rep.rows_in += len(rows)
    if run_dir is None:
        run_dir = tempfile.mkdtemp(prefix=f"prefkit-{name}-")
        rep.notes["run_dir"] = str(run_dir)
    return rep, rows, run_dir


def _samples(run: Run, backend: Backend, rows, n: int, params: SamplingParams, desc: str) -> list[list[dict]]:
    """n samples per row (sample index 0..n-1 keeps them distinct requests)."""
    reqs = [Request(r.messages, params, k, "sample") for r in rows for k in range(n)]
    recs = run.generate(backend, reqs, desc=desc)
    return [recs[i * n:(i + 1) * n] for i in range(len(rows))]


def _two_usable(rep: StageReport, row, a: dict, b: dict, *, failed: str, identical: str) -> bool:
    """Whether two finished requests make a pair; if not, the row is dropped and counted with
    the first failure's reason, or as `identical`."""
    bad = [x for x in (a, b) if not x["ok"]]
    if bad:
        rep.drop(f"{failed}: {bad[0]['reason']}", 1, example=f"row {row.source_row}")
        return False
    if a["text"].strip() == b["text"].strip():
        rep.drop(identical, 1, example=f"row {row.source_row}")
        return False
    return True


@dataclass(frozen=True)
class RlaifOptions(SynthOptions):
    """RLAIF's options (and `SynthOptions`'): see `rlaif`."""

    generation: SamplingParams | None = field(default=None, metadata={
        "help": "the generator's sampling", "sampling": {"temperature": 1.0}})
    guideline: Any = field(default="ultrafeedback", metadata={"help": GUIDELINE_HELP})
    seed: int = field(default=42, metadata={"help": "seed of the order the answers are shown in (default 42)"})
    both_orders: bool = field(default=False, metadata={
        "help": "judge each pair in both orders and keep only consistent verdicts"})
    judge_params: SamplingParams | None = field(default=None, metadata={
        "help": "the judge's sampling", "sampling": {"temperature": 0.0, "max_tokens": 1024}})


@register_synth_method("rlaif", options=RlaifOptions, uses_judge=True,
                       help="two samples, a pairwise LLM judge picks the better")
def rlaif(prompts, backend: Backend, options: RlaifOptions | None = None, *, judge: Backend | None = None,
          report: StageReport | None = None, **overrides):
    """Two samples per prompt; `judge` (default: the generator) picks the better one.
    options: `RlaifOptions` (its fields may be given as keywords)."""
    o = options_of(RlaifOptions, options, overrides)
    both_orders, seed = o.both_orders, o.seed
    rep, rows, run_dir = _setup(prompts, report, "rlaif", o.run_dir)
    guide = P.load_guideline(o.guideline)
    judge = judge or backend
    generation = sampling_params(o, "generation")
    judge_params = sampling_params(o, "judge_params")
    out = []
    with Run(run_dir, retry_failed=o.retry_failed, progress=o.progress) as run:
        samples = _samples(run, backend, rows, 2, generation, "rlaif samples")
        todo = []
        for r, (a, b) in zip(rows, samples):
            if not _two_usable(rep, r, a, b, failed="sample request failed", identical="the two samples are identical"):
                continue
            swap = random.Random(f"{seed}:{r.source_row}").random() < 0.5
            first, second = (b, a) if swap else (a, b)  # first is shown as A
            orders = [(first, second)] + ([(second, first)] if both_orders else [])
            reqs = [Request(P.pairwise_judge(r.messages, x["text"], y["text"], guide), judge_params, 0, "judge")
                    for x, y in orders]
            todo.append((r, orders, reqs))
        flat = [q for t in todo for q in t[2]]
        verdicts = run.generate(judge, flat, desc="rlaif judge")
        pos = 0
        for r, orders, reqs in todo:
            recs = verdicts[pos:pos + len(reqs)]
            pos += len(reqs)
            winners, raws, problem = [], [], None
            for (x, y), rec in zip(orders, recs):
                if not rec["ok"]:
                    problem = f"judge request failed: {rec['reason']}"
                    break
                v, issue = parse_verdict(rec["text"])
                raws.append(rec["text"])
                if v is None:
                    problem = f"judge verdict unreadable: {issue}"
                    break
                if v == "tie":
                    problem = "judge declared a tie"
                    break
                winners.append((x, y) if v == "A" else (y, x))
            if problem is None and len(winners) == 2 and winners[0][0] is not winners[1][0]:
                problem = "judge verdict changed when the order was swapped"
            if problem is not None:
                rep.drop(problem, 1, example=f"row {r.source_row}: {(raws[-1] if raws else '')[:200]!r}")
                continue
            chosen, rejected = winners[0]
            out.append(pair_row(r, "rlaif", chosen["text"], rejected["text"], rlaif_judge_raw=raws,
                                rlaif_chosen_sample=int(chosen["sample"]), generator=backend.model,
                                judge_model=judge.model))
        stats = run.stats
    rep.rows_out += len(out)
    rep.notes["run"] = stats.to_dict()
    return pairs_dataset(out)


@dataclass(frozen=True)
class WestOfNOptions(SynthOptions):
    """West-of-N's options (and `SynthOptions`'): see `west_of_n`."""

    generation: SamplingParams | None = field(default=None, metadata={
        "help": "the generator's sampling", "sampling": {"temperature": 1.0}})
    n: int = field(default=4, metadata={"help": "samples per prompt (default 4)", "flags": ("-n", "--num-samples")})
    reward_model: Any = field(default=None, metadata={
        "help": "score samples with this reward model directory (else the judge backend)", "metavar": "DIR"})
    judge_params: SamplingParams | None = field(default=None, metadata={
        "help": "the judge's sampling", "sampling": {"temperature": 0.0, "max_tokens": 1024}})
    batch_size: int = field(default=16, metadata={"cli": False})  # the reward model's
    max_length: int = field(default=1024, metadata={"cli": False})


@register_synth_method("west-of-n", options=WestOfNOptions, uses_judge=True,
                       help="N samples scored by a reward model or judge; best vs worst")
def west_of_n(prompts, backend: Backend, options: WestOfNOptions | None = None, *, judge: Backend | None = None,
              report: StageReport | None = None, **overrides):
    """N samples per prompt; best vs worst by a reward model (directory or RewardModelScorer;
    `options.reward_model`) or by an UltraFeedback-style judge's overall score (`judge`).
    options: `WestOfNOptions` (its fields may be given as keywords)."""

    o = options_of(WestOfNOptions, options, overrides)
    n, reward_model, progress = o.n, o.reward_model, o.progress
    if n < 2:
        raise ConfigError("west-of-n needs n >= 2 samples per prompt")
    if (reward_model is None) == (judge is None):
        raise ConfigError("west-of-n needs exactly one scorer: a reward model (--reward-model DIR) or a judge "
                          "backend (--judge-model / --judge-local)")
    rep, rows, run_dir = _setup(prompts, report, "west-of-n", o.run_dir)
    generation = sampling_params(o, "generation")
    out = []
    skipped = Counter()  # samples (not rows) left out, by reason
    with Run(run_dir, retry_failed=o.retry_failed, progress=progress) as run:
        samples = _samples(run, backend, rows, n, generation, f"west-of-{n} samples")
        items = []  # (row index, sample record)
        for i, recs in enumerate(samples):
            for rec in recs:
                if rec["ok"]:
                    items.append((i, rec))
                else:
                    skipped[f"sample request failed: {rec['reason']}"] += 1
        if reward_model is not None:

            scorer = reward_model if isinstance(reward_model, RewardModelScorer) else \
                RewardModelScorer(reward_model, batch_size=o.batch_size, max_length=o.max_length)
            scores = scorer.score([rows[i].prompt for i, _ in items], [rec["text"] for _, rec in items],
                                  progress=progress)
            scorer_name = f"reward model {scorer.name}"
            skipped["sample not scorable by the reward model"] += sum(1 for v in scores if v is None)
        else:
            jds = J.judge_items(run, judge, [(rows[i].messages, rec["text"]) for i, rec in items],
                                sampling_params(o, "judge_params"),
                                desc="west-of-n judge")
            for jd in jds:
                if jd.failure:
                    skipped["sample not scored: " + (jd.failure if jd.failure.startswith("request failed")
                                                      else jd.failure.split(":")[0])] += 1
            scores = [jd.score for jd in jds]
            scorer_name = f"judge {judge.model}"
        stats = run.stats
    scored: dict[int, list[tuple[float, dict]]] = {}
    for (i, rec), s in zip(items, scores):
        if s is not None:
            scored.setdefault(i, []).append((s, rec))
    for i, r in enumerate(rows):
        cand = scored.get(i, [])
        if len(cand) < 2:
            rep.drop("fewer than two scored samples", 1, example=f"row {r.source_row}")
            continue
        cand.sort(key=lambda t: t[0])
        (lo, worst), (hi, best) = cand[0], cand[-1]
        if hi == lo:
            rep.drop("best and worst samples score the same", 1, example=f"row {r.source_row}")
            continue
        out.append(pair_row(r, "west-of-n", best["text"], worst["text"], score_chosen=float(hi),
                            score_rejected=float(lo), won_n=n, won_scored=len(cand),
                            won_scores=[float(s) for s, _ in cand], generator=backend.model, scorer=scorer_name))
    rep.rows_out += len(out)
    rep.notes["run"] = stats.to_dict()
    rep.notes["scorer"] = scorer_name
    rep.notes["samples_skipped"] = sum(skipped.values())
    rep.notes["samples_skipped_by_reason"] = {k: v for k, v in skipped.items() if v}
    return pairs_dataset(out)


@dataclass(frozen=True)
class RlcdOptions(SynthOptions):
    """RLCD's options (and `SynthOptions`'): see `rlcd`."""

    guideline: Any = field(default="ultrafeedback", metadata={"help": GUIDELINE_HELP})
    principle_role: str = field(default="user", metadata={
        "help": "put the principle before the user turn (default, any template) or in a system message",
        "choices": ("user", "system")})


@register_synth_method("rlcd", options=RlcdOptions,
                       help="positive- vs negative-principle prompts, labelled by construction")
def rlcd(prompts, backend: Backend, options: RlcdOptions | None = None, *, report: StageReport | None = None,
         **overrides):
    """Positive- and negative-principle responses; chosen = positive, by construction.
    options: `RlcdOptions` (its fields may be given as keywords)."""
    o = options_of(RlcdOptions, options, overrides)
    principle_role = o.principle_role
    if principle_role not in ("user", "system"):
        raise ConfigError(f"principle_role must be 'user' or 'system', not {principle_role!r}")
    rep, rows, run_dir = _setup(prompts, report, "rlcd", o.run_dir)
    guide = P.load_guideline(o.guideline)
    generation = sampling_params(o, "generation")
    pos_p, neg_p = P.rlcd_principle(guide, True), P.rlcd_principle(guide, False)
    out = []
    with Run(run_dir, retry_failed=o.retry_failed, progress=o.progress) as run:
        reqs = []
        for r in rows:
            reqs.append(Request(P.with_principle(r.messages, pos_p, principle_role), generation, 0, "positive"))
            reqs.append(Request(P.with_principle(r.messages, neg_p, principle_role), generation, 0, "negative"))
        recs = run.generate(backend, reqs, desc="rlcd")
        stats = run.stats
    for k, r in enumerate(rows):
        pos, neg = recs[2 * k], recs[2 * k + 1]
        if not _two_usable(rep, r, pos, neg, failed="request failed",
                           identical="positive and negative responses are identical"):
            continue
        out.append(pair_row(r, "rlcd", pos["text"], neg["text"], generator=backend.model,
                            rlcd_principle_role=principle_role))
    rep.rows_out += len(out)
    rep.notes["run"] = stats.to_dict()
    return pairs_dataset(out)
