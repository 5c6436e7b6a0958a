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
    add_on_invalid_argument(p, default="error")
    if output:
        add_allow_empty_argument(p)


def add_on_invalid_argument(p: argparse.ArgumentParser, default: str) -> None:
    """--on-invalid error|drop, the one spelling in every stage ('skip', the old word for drop,
    is still accepted: prefkit.cli turns it into 'drop' with a note)."""
    p.add_argument("--on-invalid", choices=["error", "drop", "skip"], default=default, metavar="{error,drop}",
                   help="invalid rows: stop with an error naming file, line (or row index) and field, or drop "
                        "them and count them in the summary (default: %(default)s)")


def add_allow_empty_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-empty", action="store_true",
                   help="write the output and exit 0 even when it holds 0 rows from a non-empty input, or when "
                        "every request failed (partial results); without it such a run exits 1")


def write_result(ds, output, report, args):
    """The end of every stage that writes rows: refuse an empty or all-failed result (the report is
    still written beside OUTPUT, so the drops can be read), else write the output and the report.
    A conditioning spec beside the input (reward-augmented data) is written beside the output
    (prefkit.relabel.carry)."""
    from prefkit.data import write
    from prefkit.errors import EmptyResultError
    from prefkit.relabel.carry import carry_conditioning
    from prefkit.report import check_result

    try:
        check_result(report, allow_empty=getattr(args, "allow_empty", False), output=output)
    except EmptyResultError:
        report.write_beside(output)
        raise
    out = write(ds, output)
    spec_path = carry_conditioning(getattr(args, "input", None), out)
    if spec_path is not None:
        report.notes["conditioning_spec"] = str(spec_path)
    return out, report.write_beside(out)

