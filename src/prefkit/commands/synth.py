"""`prefkit synth METHOD INPUT -o OUTPUT`: every synth method of the registry
(`prefkit.synth.methods`): RMBoost and its baselines (RLAIF, West-of-N, RLCD), and plugins'.

Also home of the backend options shared with `prefkit score` (`add_backend_arguments`,
`backend_from_args`)."""

from __future__ import annotations

import argparse
import sys

from prefkit.commands import add_io_arguments


def add_backend_arguments(p: argparse.ArgumentParser, prefix: str = "", what: str = "generator") -> None:
    """--base-url/--model/--local and sampling options (with `prefix`, e.g. 'judge-', for a second backend)."""
    dash = f"--{prefix}"
    g = p.add_argument_group(f"{what} backend" if not prefix else f"{what} backend (default: the generator's)")
    g.add_argument(f"{dash}base-url", action="append", default=None, metavar="URL",
                   help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1; repeat to spread requests "
                        "over several servers (least-loaded first)")
    g.add_argument(f"{dash}model", default=None, help="model name the server knows")
    g.add_argument(f"{dash}local", default=None, metavar="DIR",
                   help="run a local transformers model directory instead of a server")
    if not prefix:
        g.add_argument("--api-key-env", default="OPENAI_API_KEY",
                       help="environment variable holding the API key (default OPENAI_API_KEY; never logged)")
        g.add_argument("--api-key", default=None,
                       help="API key (prefer --api-key-env: command lines are visible to other users)")
        g.add_argument("--concurrency", type=int, default=64, help="requests in flight at once (default 64)")
        g.add_argument("--timeout", type=float, default=120.0, help="seconds per request try (default 120)")
        g.add_argument("--connect-timeout", type=float, default=10.0,
                       help="seconds to open a connection, TLS included (default 10)")
        g.add_argument("--header", action="append", default=None, metavar="'NAME: VALUE'",
                       help="extra HTTP header for every request (repeatable; values of secret-looking "
                            "headers are redacted from errors)")
        g.add_argument("--auth", choices=["auto", "bearer", "api-key", "none"], default="auto",
                       help="how the key is sent: 'Authorization: Bearer' or Azure's 'api-key' header "
                            "(auto: api-key for *.openai.azure.com hosts)")
        g.add_argument("--api-version", default=None,
                       help="Azure OpenAI api-version query (kept as well when it is in the base URL)")
        g.add_argument("--ca-bundle", default=None, metavar="PEM",
                       help="CA certificates to verify the server with (default: system store or SSL_CERT_FILE); "
                            "proxies come from HTTP_PROXY/HTTPS_PROXY/NO_PROXY")
        g.add_argument("--max-retries", type=int, default=6,
                       help="retries per request on 429/5xx/timeouts/connection errors (default 6)")
        g.add_argument("--batch-size", type=int, default=16, help="local backend: generation batch size")
    g.add_argument(f"{dash}temperature", type=float, default=None, help="sampling temperature")
    g.add_argument(f"{dash}top-p", type=float, default=None, help="nucleus sampling top-p")
    g.add_argument(f"{dash}max-tokens", type=int, default=None, help="maximum new tokens per request")


def backend_from_args(args, prefix: str = ""):
    """The backend the options describe; with a prefix, None when none of its options was given."""
    from prefkit.errors import ConfigError
    from prefkit.synth.backends import LocalBackend, OpenAIBackend

    attr = prefix.replace("-", "_")
    urls, model, local = (getattr(args, f"{attr}base_url"), getattr(args, f"{attr}model"),
                          getattr(args, f"{attr}local"))
    if prefix and not (urls or model or local):
        return None
    if local and (urls or model):
        raise ConfigError(f"give either --{prefix}local or --{prefix}base-url/--{prefix}model, not both")
    if local:
        return LocalBackend(local, batch_size=args.batch_size)
    if not model:
        raise ConfigError(f"--{prefix}model is required with an HTTP backend (or use --{prefix}local DIR)")
    if prefix and not urls:
        urls = args.base_url  # a judge on the generator's servers unless told otherwise
    headers = {}
    for h in getattr(args, "header", None) or []:  # `prefkit select evolve` has no transport options
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"--header {h!r}: expected 'NAME: VALUE'")
        headers[name.strip()] = value.strip()
    return OpenAIBackend(model=model, base_urls=urls or ["http://127.0.0.1:8000/v1"], api_key=args.api_key,
                         api_key_env=args.api_key_env, concurrency=args.concurrency, timeout=args.timeout,
                         connect_timeout=getattr(args, "connect_timeout", 10.0), max_retries=args.max_retries,
                         headers=headers or None, auth=getattr(args, "auth", "auto"),
                         api_version=getattr(args, "api_version", None), ca_bundle=getattr(args, "ca_bundle", None))


def sampling_from_args(args, prefix: str = "", **defaults):
    from prefkit.synth.backends import SamplingParams

    attr = prefix.replace("-", "_")
    kw = dict(defaults)
    for name in ("temperature", "top_p", "max_tokens"):
        v = getattr(args, f"{attr}{name}", None)
        if v is not None:
            kw[name] = v
    return SamplingParams(**kw)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run directory")
    g.add_argument("--run-dir", default=None,
                   help="where finished requests are kept (default: OUTPUT.run); re-running the same command "
                        "resumes from it")
    g.add_argument("--retry-failed", action="store_true",
                   help="retry the requests recorded as failed (finished ones are never redone)")
    g.add_argument("--fresh", action="store_true",
                   help="discard the run directory's recorded results first and ask for everything again")
    g.add_argument("--strict", action="store_true",
                   help="exit 1 when any request failed (the output is still written; default: only when "
                        "every request failed)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_dir_of(args, default: str) -> str:
    """--run-dir, else `default`; with --fresh its recorded results are discarded first."""
    from prefkit.synth.runs import discard_run_dir

    run_dir = args.run_dir or default
    if getattr(args, "fresh", False) and discard_run_dir(run_dir):
        print(f"--fresh: discarded the recorded results in {run_dir}", file=sys.stderr)
    return run_dir


def strict_failure(args, stats) -> int:
    """0, or 1 (said on stderr) when --strict is given and some requests failed."""
    if getattr(args, "strict", False) and stats is not None and stats.n_failed:
        print(f"prefkit {args.command}: error: {stats.n_failed} of {stats.requested} requests failed (--strict); "
              "the output was written; re-run with --retry-failed to retry only those", file=sys.stderr)
        return 1
    return 0


def register(sub, name, help_text):
    from prefkit.synth.methods import available_synth_methods, get_synth_method

    p = sub.add_parser(name, help=help_text, description=help_text,
                       epilog="Every method writes canonical pairs plus method columns; see docs/synth.md. "
                              "Methods from plugins appear here too.")
    methods = p.add_subparsers(dest="method", metavar="METHOD")
    for method in available_synth_methods():
        entry = get_synth_method(method)
        m = methods.add_parser(method, help=entry.help, description=entry.help)
        add_io_arguments(m)
        add_backend_arguments(m)
        if entry.uses_judge:
            add_backend_arguments(m, prefix="judge-", what="judge")
        add_run_arguments(m)
        _add_option_arguments(m.add_argument_group(method), entry.options)
        m.set_defaults(func=run, _parser=m)
    p.set_defaults(func=None, _parser=p)


def _option_fields(options_cls):
    """The option fields the CLI offers: (field, is sampling) for fields not marked cli=False."""
    import dataclasses

    return [(f, "sampling" in f.metadata) for f in dataclasses.fields(options_cls) if f.metadata.get("cli", True)]


def _add_option_arguments(g, options_cls) -> None:
    """One flag per option field of a synth method (see prefkit.synth.methods); sampling fields
    are set by the backend's sampling flags instead."""
    defaults = options_cls()
    for f, sampling in _option_fields(options_cls):
        if sampling:
            continue
        flags = f.metadata.get("flags", ("--" + f.name.replace("_", "-"),))
        default = getattr(defaults, f.name)
        kw = {"help": f.metadata["help"], "dest": f.name}
        if isinstance(default, bool):
            kw["action"] = "store_true"
        else:
            kw.update(default=default, type=type(default) if isinstance(default, (int, float)) else str)
            for key in ("choices", "metavar"):
                if key in f.metadata:
                    kw[key] = list(f.metadata[key]) if key == "choices" else f.metadata[key]
        g.add_argument(*flags, **kw)


def options_from_args(args, options_cls):
    """The method's options object from the parsed flags."""
    run_dir = run_dir_of(args, str(args.output).rstrip("/") + ".run")
    kw = {"run_dir": run_dir, "retry_failed": args.retry_failed, "progress": not args.no_progress}
    for f, sampling in _option_fields(options_cls):
        if sampling:
            kw[f.name] = sampling_from_args(args, "judge-" if f.name == "judge_params" else "", **f.metadata["sampling"])
        else:
            kw[f.name] = getattr(args, f.name)
    return options_cls(**kw)


def run(args) -> int:
    from prefkit.report import StageReport
    from prefkit.synth.inputs import read_prompts
    from prefkit.synth.methods import get_synth_method

    entry = get_synth_method(args.method)
    report = StageReport(f"synth {args.method}")
    prompts = read_prompts(args.input, split=args.split, subset=args.subset, revision=args.revision,
                           format=args.input_format, on_invalid=args.on_invalid, report=report)
    # rows of the input (a preference dataset's read counts them; a prompts file's are the prompts
    # kept plus those dropped); the method counts its own rows in and out from here
    n_in = report.rows_in or len(prompts) + report.n_dropped
    report.rows_in = report.rows_out = 0
    backend = backend_from_args(args)
    options = options_from_args(args, entry.options)
    extra = {"judge": backend_from_args(args, "judge-")} if entry.uses_judge else {}
    ds = entry.run(prompts, backend, options, report=report, **extra)
    report.rows_in = max(report.rows_in, n_in)
    return finish(ds, args.output, report, args)


def finish(ds, output, report, args) -> int:
    """Write the output and its report (refusing an all-failed or empty result unless
    --allow-empty); print the report and the run's request summary on stdout."""
    from prefkit.commands import write_result
    from prefkit.errors import EmptyResultError
    from prefkit.synth.runs import RunStats

    run_notes = report.notes.get("run")
    stats = RunStats.from_dict(run_notes) if isinstance(run_notes, dict) else None

    def run_summary() -> str | None:
        return stats.summary() if stats is not None else None

    try:
        out, path = write_result(ds, output, report, args)
    except EmptyResultError:
        # the error line says what happened; the request summary (to stderr: a diagnostic now)
        # names the failure reasons
        for text in (report.summary(), run_summary()):
            if text:
                print(text, file=sys.stderr)
        raise
    print(report.summary())
    if run_summary():
        print(run_summary())
    print(f"wrote {len(ds)} rows to {out} (report: {path})")
    return strict_failure(args, stats)
