"""Data preparation for a training run: the run's own copy of the config, precision and
TrainingArguments, the tokenizer, and the train/eval pairs read and encoded with every drop and
truncation counted (`prepare_run` -> `PreparedRun`)."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass

from datasets import Dataset
from transformers import PreTrainedTokenizerBase, TrainingArguments, set_seed

from prefkit.data import read
from prefkit.data.records import kind_of
from prefkit.errors import DataError, EmptyResultError
from prefkit.report import StageReport
from prefkit.tokenize import encode_pairs
from prefkit.train.config import BaseTrainConfig, resolve_precision, training_arguments
from prefkit.train.loading import load_tokenizer


def read_pairs(source, *, split=None, on_invalid: str = "drop", report: StageReport | None = None):
    """PAIRS dataset from a path/hub id/in-memory Dataset via prefkit.data.read."""
    ds = read(source, split=split, on_invalid=on_invalid, report=report)
    if kind_of(ds.column_names) != "pairs":
        raise DataError(f"expected preference pairs (prompt, chosen, rejected); got columns {ds.column_names}. "
                        "Binarize multi-response data first: prefkit data binarize",
                        file=str(source) if isinstance(source, (str, os.PathLike)) else None)
    return ds


def load_splits(cfg: BaseTrainConfig, train_dataset=None, eval_dataset=None,
                report: StageReport | None = None, reader=read_pairs) -> tuple[Dataset, Dataset | None]:
    """(train, eval | None) PAIRS datasets per the config (eval_file, or eval_split_ratio of train),
    each read by `reader` (SFT: prompt-completion rows as pairs, prefkit.train.sft_trainer)."""
    train = reader(train_dataset if train_dataset is not None else cfg.train_file, split=cfg.train_split,
                   on_invalid=cfg.on_invalid, report=report)
    if eval_dataset is not None or cfg.eval_file:
        ev = reader(eval_dataset if eval_dataset is not None else cfg.eval_file, split=cfg.eval_split,
                    on_invalid=cfg.on_invalid)
    elif cfg.eval_split_ratio > 0:
        if len(train) < 2:
            raise DataError(f"cannot hold out {cfg.eval_split_ratio:.0%} of {len(train)} pair(s) for evaluation")
        parts = train.train_test_split(test_size=cfg.eval_split_ratio, seed=cfg.seed)
        train, ev = parts["train"], parts["test"]
    else:
        ev = None
    return train, ev


def encode(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, cfg: BaseTrainConfig, report: StageReport, *,
           max_prompt_length="config") -> Dataset:
    """Tokenise pairs with prefkit.tokenize.encode_pairs; on_long='drop' drops (instead of
    truncating) pairs over the limits. Every truncation and drop is counted in `report`."""
    mpl = cfg.max_prompt_length if max_prompt_length == "config" else max_prompt_length
    if cfg.on_long == "truncate":
        return encode_pairs(dataset, tokenizer, max_length=cfg.max_length, max_prompt_length=mpl,
                            prompt_truncation=cfg.truncation_mode, on_invalid=cfg.on_invalid, report=report)
    enc = encode_pairs(dataset, tokenizer, max_length=None, max_prompt_length=None,
                       prompt_truncation=cfg.truncation_mode, on_invalid=cfg.on_invalid, report=report)
    lens = enc.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()
    keep = []
    for i, (p, c, r) in enumerate(zip(lens["prompt_ids"], lens["chosen_ids"], lens["rejected_ids"])):
        if mpl is not None and len(p) > mpl:
            report.drop("prompt over max_prompt_length (on_long=drop)", 1, example=f"pair_index {enc[i]['pair_index']}")
        elif cfg.max_length is not None and len(p) + max(len(c), len(r)) > cfg.max_length:
            report.drop("pair over max_length (on_long=drop)", 1, example=f"pair_index {enc[i]['pair_index']}")
        else:
            keep.append(i)
    report.rows_out -= len(enc) - len(keep)
    return enc.select(keep) if len(keep) < len(enc) else enc


def data_summary(report: StageReport, eval_pairs: int | None = None) -> str:
    """The data lines of a run's summary: pairs read, trained on, held out, dropped (by reason), truncated."""
    n = report.notes
    trunc = ", ".join(f"{k.replace('truncated_', '')} {n.get(k, 0)}"
                      for k in ("truncated_prompts", "truncated_chosen", "truncated_rejected"))
    held = f", {eval_pairs} for evaluation" if eval_pairs else ""
    lines = [f"pairs: {report.rows_in} read, {report.rows_out} trained on{held}, {report.n_dropped} dropped; "
             f"truncated: {trunc}"]
    for reason, k in sorted(report.dropped.items(), key=lambda kv: -kv[1]):
        lines.append(f"  dropped {k:>6}  {reason}")
    return "\n".join(lines)


@dataclass
class PreparedRun:
    """What both trainers set up before a model is loaded: the run's own copy of the config
    (in-memory inputs named), settings, tokenizer, encoded splits and their reports."""

    cfg: BaseTrainConfig
    precision: str                       # 'bf16', 'fp16' or 'fp32' on this machine
    args: TrainingArguments
    tokenizer: PreTrainedTokenizerBase
    train_enc: Dataset
    eval_enc: Dataset | None
    read_report: StageReport             # rows dropped while reading
    data_report: StageReport             # the training split's encoding
    eval_report: StageReport             # the evaluation split's encoding
    t0: float                            # time.time() when the run started


def prepare_run(cfg: BaseTrainConfig, *, model=None, tokenizer=None, train_dataset=None, eval_dataset=None,
                renames: dict[str, str] | None = None, reader=read_pairs) -> PreparedRun:
    """Check the config, fix precision and TrainingArguments, seed, load the tokenizer, read the
    train/eval splits (renaming `renames` columns in both) and encode them, counting drops.

    reader: reads a split (default read_pairs).
    The caller's config is left as it is: the run works on (and reports) a copy that names in-memory inputs."""
    cfg = copy.copy(cfg)
    if model is not None and not cfg.model_name_or_path:
        cfg.model_name_or_path = getattr(getattr(model, "config", None), "_name_or_path", "") or "<in-memory model>"
    if train_dataset is not None and not cfg.train_file:
        cfg.train_file = "<in-memory dataset>"
    cfg.check()
    t0 = time.time()
    precision = resolve_precision(cfg)
    args = training_arguments(cfg)
    set_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg, tokenizer)
    read_report = StageReport("read")
    train_raw, eval_raw = load_splits(cfg, train_dataset, eval_dataset, report=read_report, reader=reader)
    for old, new in (renames or {}).items():
        if old == new:
            continue
        if old in train_raw.column_names:
            train_raw = train_raw.rename_column(old, new)
        if eval_raw is not None and old in eval_raw.column_names:
            eval_raw = eval_raw.rename_column(old, new)
    # no pair left: a run-time failure (EmptyResultError, exit 1), not a usage error
    if len(train_raw) == 0:  # every row dropped on reading (encoding an empty table fails in datasets.map)
        raise EmptyResultError(f"no training pairs left after reading {cfg.train_file}:\n"
                               f"{data_summary(read_report)}")
    data_report = StageReport("train data")
    train_enc = encode(train_raw, tokenizer, cfg, data_report)
    if len(train_enc) == 0:
        raise EmptyResultError(f"no training pairs left after tokenisation:\n{data_summary(data_report)}")
    eval_report = StageReport("eval data")
    eval_enc = encode(eval_raw, tokenizer, cfg, eval_report) if eval_raw is not None else None
    return PreparedRun(cfg, precision, args, tokenizer, train_enc, eval_enc, read_report, data_report, eval_report, t0)
