"""Goal-conditioned supervised rows: every judged response, its prompt conditioned on its own
judged overall score (the conditioning-only control of the regime map, docs/regimes.md `cond-sft`).

    rows, spec = sft_rows(multi)      # prompt S(score) + x, completion y, goal_score = score

The conditioning is reward-augmented relabeling's (`prefkit.relabel.augment`): the same
`RelabelOptions` (placement, template, scale, round_scores, tokenizer), the same spec
(`make_spec`), the same rendering once per distinct goal (`goal_texts`) and the same insertion
into the prompt (`condition_column`), so a response scored r gets exactly the prompt RA's D^w or
D^l row of goal r has. Where RA makes two rows per pair, this makes one row per judged response:
no pairs, so the pair options (ties, fine_grained_filter, half) do not apply; `ties` is ignored
(there is nothing to tie) and the others are errors, as are goals other than the judge's overall
score (attributes, goal_from='implicit') and the TruthfulQA drop (drop it when reading).

Output columns (TRL's prompt-completion format): prompt (conditioned), completion (an assistant
message list for conversational prompts, else the text), goal_score, prompt_id, source_row
(when the input has them) and response_index (the response's place in its row's responses).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa

from prefkit.data import read
from prefkit.data import records as R
from prefkit.errors import ConfigError, DataError
from prefkit.relabel.augment import GOAL_SCORE, RelabelOptions, conditioned_file, goal_texts
from prefkit.relabel.columns import condition_column, prompt_format
from prefkit.relabel.conditioning import OVERALL, make_spec, parse_attributes
from prefkit.report import StageReport

COMPLETION = "completion"
RESPONSE_INDEX = "response_index"
NO_SCORE = "response without an overall score"
EMPTY = "empty response"


def _check_options(o: RelabelOptions) -> None:
    for name, value, default in (("fine_grained_filter", o.fine_grained_filter, False), ("half", o.half, False),
                                 ("drop_truthfulqa", o.drop_truthfulqa, False),
                                 ("truthfulqa_prompts", o.truthfulqa_prompts, None)):
        if value != default:
            raise ConfigError(f"{name}: does not apply to SFT rows (every judged response is a row; there are no "
                              "pairs to filter or halve)")
    if o.goal_from != "scores":
        raise ConfigError("goal_from: SFT rows are conditioned on the judge's own overall score (goal_from: scores)")
    if parse_attributes(o.attributes) != [OVERALL]:
        raise ConfigError("attributes: SFT rows are conditioned on the overall score only")


def sft_rows(dataset, options: RelabelOptions | None = None, *, report: StageReport | None = None, **overrides):
    """(rows, spec): every judged response of a multi-response dataset (prefkit MULTI, or what
    `prefkit.data.read` turns into it: UltraFeedback raw rows, the engine's score-stage output) as
    a prompt-completion row whose prompt is conditioned on the response's own overall score.
    Responses without a score or with an empty text are dropped and counted in `report`."""
    import datasets  # noqa: PLC0415  heavy (datasets): lazy, so importing this module stays light
    from datasets.table import InMemoryTable  # noqa: PLC0415  heavy (datasets): lazy

    o = RelabelOptions.of(options, **overrides)
    _check_options(o)
    report = report if report is not None else StageReport("sft rows")
    if not isinstance(dataset, datasets.Dataset):
        raise ConfigError(f"sft_rows expects a datasets.Dataset, got {type(dataset).__name__}")
    cols = set(dataset.column_names)
    if {R.CHOSEN, R.REJECTED} <= cols:
        raise DataError("SFT rows are made from every judged response (multi-response rows: prompt, responses); "
                        "this dataset holds pairs", field=R.RESPONSES)
    if R.RESPONSES not in cols:
        sub = StageReport("read")
        dataset = read(dataset, report=sub)
        report.merge(sub)
    report.rows_in = report.rows_in or len(dataset)
    table = dataset.with_format("arrow")[:]
    fmt = prompt_format(table.schema.field(R.PROMPT).type)
    responses = table[R.RESPONSES].to_pylist()
    idx, texts, scores, resp_index = [], [], [], []
    for i, resps in enumerate(responses):
        for j, r in enumerate(resps or []):
            text, score = (r or {}).get("text"), (r or {}).get("score")
            if score is None or (isinstance(score, float) and math.isnan(score)):
                report.drop(NO_SCORE, 1, example=f"row {i} response {j}")
            elif not text or not str(text).strip():
                report.drop(EMPTY, 1, example=f"row {i} response {j}")
            else:
                idx.append(i)
                texts.append(str(text))
                scores.append(float(score))
                resp_index.append(j)
    spec = make_spec(placement=o.placement, tokenizer=o.tokenizer, template=o.template, attributes=None,
                     scale=o.scale, round_scores=o.round_scores, prompt_format=fmt)
    goals = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    if spec.round_scores is not None:    # as RA rounds its goals before rendering them
        goals = np.round(goals, spec.round_scores)
    rendered, n_goals = goal_texts(spec, goals)
    take = pa.array(np.asarray(idx, dtype=np.int64))
    prompts = table[R.PROMPT].take(take).combine_chunks() if len(idx) else table[R.PROMPT].slice(0, 0).combine_chunks()
    columns = {R.PROMPT: condition_column(prompts, rendered, spec.placement)}
    if fmt == "conversational":
        columns[COMPLETION] = pa.array([[{"role": "assistant", "content": t}] for t in texts],
                                       type=pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
    else:
        columns[COMPLETION] = pa.array(texts, type=pa.string())
    columns[GOAL_SCORE] = pa.array(goals[:, 0], type=pa.float64())
    for name in (R.PROMPT_ID, R.SOURCE_ROW, R.SOURCE):
        if name in table.column_names:
            columns[name] = table[name].take(take)
    columns[RESPONSE_INDEX] = pa.array(resp_index, type=pa.int64())
    out = datasets.Dataset(InMemoryTable(pa.table(columns)))
    report.rows_out = out.num_rows
    report.notes.update({"responses_conditioned": out.num_rows, "placement": spec.placement, "prompt_format": fmt,
                         "distinct_goals": n_goals})
    return out, spec


def sft_rows_file(input: str | os.PathLike, output: str | os.PathLike, options: RelabelOptions | None = None, *,
                  split=None, subset=None, revision=None, input_format: str = "auto", on_invalid: str = "error",
                  allow_empty: bool = False, **overrides) -> StageReport:
    """Read INPUT (multi-response rows), write its SFT rows to OUTPUT, and beside it the
    conditioning spec (OUTPUT.conditioning.json, which `prefkit.train.train_sft` copies into the
    model) and the report. Returns the StageReport."""
    options = RelabelOptions.of(options, **overrides)
    _check_options(options)   # a bad option fails before anything is read
    return conditioned_file(sft_rows, "sft rows", input, output, options, split=split, subset=subset,
                            revision=revision, input_format=input_format, on_invalid=on_invalid,
                            allow_empty=allow_empty)
