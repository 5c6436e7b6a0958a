"""Thin CLI front-ends. Each module: `register(subparsers, name, help)`; no stage logic here."""

from __future__ import annotations

import argparse


def add_io_arguments(p: argparse.ArgumentParser, output: bool = True) -> None:
    """The stage convention: INPUT -o OUTPUT plus hub and format options."""
    p.add_argument("input", help="file (.jsonl .json .parquet .csv), saved `datasets` directory, or hub id")
    if output:
        p.add_argument("-o", "--output", required=True,
                       help="output path; its extension picks the format (.jsonl, .parquet, or a directory)")
    p.add_argument("--split", default=None, help="split to read (hub ids and saved DatasetDicts)")
    p.add_argument("--subset", default=None, help="hub dataset configuration name")
    p.add_argument("--revision", default=None, help="hub dataset revision (commit, tag or branch)")
    p.add_argument("--format", dest="input_format", default="auto",
                   choices=["auto", "ultrafeedback", "ultrafeedback-binarized", "trl", "multi"],
                   help="input schema (default: detected from the columns)")
    p.add_argument("--on-invalid", choices=["error", "skip"], default="error",
                   help="invalid rows: stop with an error naming file, row and field (default), "
                        "or skip them and count them in the summary")

