"""AI-feedback scoring: an UltraFeedback-style LLM judge, or a reward model, over a dataset.

The judge rates each response on UltraFeedback's four aspects (1-5, with a rationale each) and
gives an overall score (1-10), through any backend. Results are written in UltraFeedback's
schema as prefkit holds it: for MULTI rows each response gets `score` (overall), `aspects`
({aspect: rating}), `fine_grained` (mean of the four ratings, only when all four were read);
for PAIRS rows the same go to score_/aspects_/fine_grained_ chosen and rejected. Rationales and
the judge's raw output travel in `judge_rationales` / `judge_raw` columns.

An answer the parser cannot read is a recorded failure (`judge_failures` names the reason), never
a made-up score: its `score` stays None. Failed requests are kept the same way.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

from prefkit.data import records as R
from prefkit.data.io import build_dataset
from prefkit.errors import ConfigError
from prefkit.report import StageReport
from prefkit.reward_model import RewardModelScorer
from prefkit.synth import prompts as P
from prefkit.synth.backends import Backend, SamplingParams
from prefkit.synth.parsing import Ratings, parse_ratings
from prefkit.synth.runs import Request, Run

ASPECTS = list(P.ULTRAFEEDBACK_JUDGE_ASPECTS)


@dataclass
class Judgement:
    score: float | None
    aspects: dict[str, float | None]
    fine_grained: float | None
    rationales: dict[str, str | None]
    raw: str | None
    failure: str | None  # None when the overall score was read


def _judgement(rec: dict) -> Judgement:
    empty = {a: None for a in ASPECTS}
    if not rec["ok"]:
        return Judgement(None, empty, None, dict(empty), None, f"request failed: {rec['reason']}")
    r: Ratings = parse_ratings(rec["text"], ASPECTS)
    rated = [v for v in r.aspects.values() if v is not None]
    fg = sum(rated) / len(rated) if len(rated) == len(ASPECTS) else None
    failure = None
    if r.overall is None:
        failure = "unparseable judge output: " + "; ".join(i for i in r.issues if i.startswith("overall"))
    return Judgement(r.overall, r.aspects, fg, r.rationales, rec["text"], failure)


def judge_messages(messages: list[dict], response: str) -> list[dict]:
    return P.ultrafeedback_judge(messages, response)


async def ajudge(run: Run, backend: Backend, items: list[tuple[list[dict], str]], params: SamplingParams,
                 desc: str = "judge") -> list[Judgement]:
    reqs = [Request(judge_messages(m, t), params, 0, "judge") for m, t in items]
    recs = await run.agenerate(backend, reqs, desc=desc)
    return [_judgement(rec) for rec in recs]


def judge_items(run: Run, backend: Backend, items: list[tuple[list[dict], str]], params: SamplingParams,
                desc: str = "judge") -> list[Judgement]:
    recs = run.generate(backend, [Request(judge_messages(m, t), params, 0, "judge") for m, t in items], desc=desc)
    return [_judgement(rec) for rec in recs]


def _msgs(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _text(response) -> str:
    if isinstance(response, str):
        return response
    if isinstance(response, list):
        return "".join(str(m.get("content") or "") for m in response)
    return str(response.get("text", "")) if isinstance(response, dict) else str(response)


@dataclass(frozen=True)
class ScoreOptions:
    """The `score` stage's options (also `prefkit score`'s): run_dir (finished judge requests;
    re-running resumes), params (the judge's sampling; default temperature 0, 1024 tokens),
    retry_failed, progress; batch_size and max_length of a reward model."""

    run_dir: Any = None
    params: SamplingParams | None = None
    retry_failed: bool = False
    batch_size: int = 16
    max_length: int = 1024
    progress: bool = True


def score(dataset, options: ScoreOptions | None = None, *, judge: Backend | None = None, reward_model=None,
          report: StageReport | None = None, **overrides):
    """Score every response of a canonical PAIRS or MULTI dataset.

    judge: a backend used as an UltraFeedback-style judge; or reward_model: a directory (or a
    `RewardModelScorer`) of a sequence-classification reward model. options: a `ScoreOptions`
    (its fields may also be given as keywords, which override it). Returns the dataset with
    scores filled in (see the module docstring); nothing is dropped.
    """
    o = replace(options if options is not None else ScoreOptions(), **overrides)
    run_dir, params, retry_failed, progress = o.run_dir, o.params, o.retry_failed, o.progress
    batch_size, max_length = o.batch_size, o.max_length

    if (judge is None) == (reward_model is None):
        raise ConfigError("score needs exactly one of a judge backend or a reward model")
    rep = report if report is not None else StageReport("score")
    kind = R.kind_of(dataset.column_names)
    if kind == "unknown":
        raise ConfigError("score expects canonical PAIRS (prompt, chosen, rejected) or MULTI (prompt, responses)")
    rows = dataset.to_list()
    rep.rows_in += len(rows)
    # flatten: (row index, slot) -> (prompt, response)
    slots: list[tuple[int, object]] = []
    for i, row in enumerate(rows):
        if kind == "pairs":
            slots += [(i, R.CHOSEN), (i, R.REJECTED)]
        else:
            slots += [(i, j) for j in range(len(row[R.RESPONSES] or []))]

    def response_of(i, slot):
        return rows[i][slot] if kind == "pairs" else rows[i][R.RESPONSES][slot]["text"]

    failures = Counter()
    if reward_model is not None:

        scorer = reward_model if isinstance(reward_model, RewardModelScorer) else \
            RewardModelScorer(reward_model, batch_size=batch_size, max_length=max_length)
        prompts = [rows[i][R.PROMPT] for i, _ in slots]
        resps = [response_of(i, s) for i, s in slots]
        values = scorer.score(prompts, resps, progress=progress)
        results = [Judgement(v, {}, None, {}, None, None if v is not None else "not scorable by the reward model")
                   for v in values]
        rep.notes["scorer"] = f"reward model {scorer.name}"
        if scorer.truncated:
            rep.notes["truncated_inputs"] = scorer.truncated
    else:
        params = params or SamplingParams(temperature=0.0, max_tokens=1024)
        if run_dir is None:
            run_dir = tempfile.mkdtemp(prefix="prefkit-score-")
            rep.notes["run_dir"] = str(run_dir)
        items = [(_msgs(rows[i][R.PROMPT]), _text(response_of(i, s))) for i, s in slots]
        with Run(run_dir, retry_failed=retry_failed, progress=progress) as run:
            results = judge_items(run, judge, items, params, desc="judge")
            rep.notes["run"] = run.stats.to_dict()
        rep.notes["scorer"] = f"judge {judge.model}"

    by_row: dict[int, dict] = {}
    for (i, s), jd in zip(slots, results):
        by_row.setdefault(i, {})[s] = jd
        if jd.failure:
            failures[jd.failure if jd.failure.startswith("request failed") else jd.failure.split(":")[0]] += 1
    for i, row in enumerate(rows):
        got = by_row.get(i, {})
        if kind == "pairs":
            for slot, sc, asp, fg in ((R.CHOSEN, R.SCORE_CHOSEN, R.ASPECTS_CHOSEN, R.FINE_GRAINED_CHOSEN),
                                      (R.REJECTED, R.SCORE_REJECTED, R.ASPECTS_REJECTED, R.FINE_GRAINED_REJECTED)):
                jd = got[slot]
                row[sc] = jd.score
                if judge is not None:
                    row[asp] = jd.aspects
                    row[fg] = jd.fine_grained
            if judge is not None:
                row["judge_rationales_chosen"] = got[R.CHOSEN].rationales
                row["judge_rationales_rejected"] = got[R.REJECTED].rationales
                row["judge_raw_chosen"] = got[R.CHOSEN].raw
                row["judge_raw_rejected"] = got[R.REJECTED].raw
            row["judge_failures"] = [f for f in (got[R.CHOSEN].failure, got[R.REJECTED].failure)]
        else:
            responses = [dict(r) for r in row[R.RESPONSES] or []]
            for j, resp in enumerate(responses):
                jd = got[j]
                resp["score"] = jd.score
                if judge is not None:
                    resp["aspects"] = jd.aspects
                    resp["fine_grained"] = jd.fine_grained
            row[R.RESPONSES] = responses
            if judge is not None:
                row["judge_rationales"] = [got[j].rationales for j in range(len(responses))]
                row["judge_raw"] = [got[j].raw for j in range(len(responses))]
            row["judge_failures"] = [got[j].failure for j in range(len(responses))]
    rep.rows_out += len(rows)
    n_resp = len(slots)
    n_fail = sum(failures.values())
    rep.notes.update({"responses_scored": n_resp - n_fail, "responses_failed": n_fail,
                      "failure_reasons": dict(failures)})
    return build_dataset(rows, kind)
