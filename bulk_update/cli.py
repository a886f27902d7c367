"""The ``bulk-update`` command: parses flags and calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bulk_update import __version__
from bulk_update.config import JobConfig
from bulk_update.exceptions import BulkUpdateError, ConfigError, first_line
from bulk_update.job import Progress, run_job

log = logging.getLogger("bulk_update")
# An exception the job does not expect (a bug): EX_SOFTWARE, distinct from the job's own codes.
EXIT_INTERNAL = 70
# Without a progress bar (no TTY, or --quiet), a progress log line this often.
PROGRESS_LOG_INTERVAL_S = 10.0


def _number(
    parse: Callable[[str], float], *, low: float, high: float | None = None, strict: bool = False
) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text and check ``low <= value (<= high)``;
    ``strict`` makes the low bound exclusive."""
    shown = (
        f"from {low:g} to {high:g}"
        if high is not None
        else (f"> {low:g}" if strict else f">= {low:g}")
    )
    kind = "a whole number" if parse is int else "a number"

    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind} {shown}, got {text!r}") from None
        too_low = value <= low if strict else value < low
        if too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {kind} {shown}, got {text!r}")
        return value

    return check


_fraction = _number(float, low=0.0, high=1.0)
_non_negative_int = _number(int, low=0)
_positive_int = _number(int, low=1)
_positive_float = _number(float, low=0.0, strict=True)


def _add_emulator(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "emulator",
        help="serve a local, in-memory stand-in for the Conversations API",
        description=(
            "Serve a local, in-memory stand-in for the OpenAI Conversations API, for demos, "
            "rehearsals, tests and benchmarks. Prints the base URL once it serves."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_non_negative_int, default=8787, help="port; 0 picks a free one"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="accept only this bearer key (default: any non-empty key)",
    )
    parser.add_argument(
        "--rpm",
        type=_non_negative_int,
        default=0,
        help="server-side limit in requests per minute, enforced per second (0: none)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="added to every API response")
    parser.add_argument(
        "--error-rate", type=_fraction, default=0.0, help="fraction answered 500/502/503"
    )
    parser.add_argument(
        "--reset-rate",
        type=_fraction,
        default=0.0,
        help="fraction whose connection is dropped without an answer",
    )
    parser.add_argument(
        "--slow-rate", type=_fraction, default=0.0, help="fraction delayed by --slow-ms"
    )
    parser.add_argument(
        "--slow-ms", type=float, default=5000.0, help="delay of a slow response (default 5000)"
    )
    parser.add_argument(
        "--random-seed", type=int, default=None, help="same seed, same faults for same requests"
    )
    parser.add_argument(
        "--preload",
        metavar="FILE|N",
        default=None,
        help="create conversations for a CSV/Parquet file's conversation_id column, or N of them",
    )


def _run_emulator(args: argparse.Namespace) -> int:
    from bulk_update.emulator import EmulatorConfig, serve

    try:
        config = EmulatorConfig(
            api_key=args.api_key,
            rpm=args.rpm,
            latency_ms=args.latency_ms,
            error_rate=args.error_rate,
            reset_rate=args.reset_rate,
            slow_rate=args.slow_rate,
            slow_ms=args.slow_ms,
            random_seed=args.random_seed,
        )
        serve(config, host=args.host, port=args.port, preload=args.preload)
    except (OSError, ValueError) as exc:
        print(f"bulk-update emulator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _shard(text: str) -> tuple[int, int]:
    index, slash, count = text.partition("/")
    try:
        parsed = (int(index), int(count))
    except ValueError:
        parsed = (-1, 0)
    if not slash or parsed[1] < 1 or not 0 <= parsed[0] < parsed[1]:
        raise argparse.ArgumentTypeError(f"expected K/N with 0 <= K < N, got {text!r}")
    return parsed


def _storage_option(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text.split('=')[0]!r}")
    return key.strip(), value


def _column_list(text: str) -> tuple[str, ...]:
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    if not columns:
        raise argparse.ArgumentTypeError("expected column names separated by commas")
    return columns


def _add_job_options(parser: argparse.ArgumentParser, *, validate: bool) -> None:
    """The options of `run` (and of `validate`, which is `run --dry-run`).

    Defaults are SUPPRESS so that only the flags given override a job file; the real defaults
    live in JobConfig.
    """
    S = argparse.SUPPRESS
    parser.add_argument(
        "input",
        nargs="?",
        default=S,
        help="the CSV or Parquet file to read, or a quoted glob ('exports/*.parquet') read as "
        "one table in sorted order",
    )
    parser.add_argument(
        "--job", default=None, metavar="FILE.toml", help="read options from a job file"
    )
    parser.add_argument(
        "--output",
        default=S,
        metavar="PATH",
        help="results file: .parquet, .csv or .jsonl (required)",
    )
    parser.add_argument(
        "--errors-output",
        default=S,
        metavar="PATH",
        help="failed, invalid and unprocessed rows in the input's own columns, "
        "plus status, error_code, error_message: fix and feed back",
    )
    parser.add_argument(
        "--id-column",
        default=S,
        metavar="NAME",
        help="the conversation ID column (default conversation_id)",
    )
    parser.add_argument(
        "--columns",
        type=_column_list,
        default=S,
        metavar="A,B,...",
        help="the metadata columns (default: every column but the ID column)",
    )
    parser.add_argument(
        "--metadata-column",
        default=S,
        metavar="NAME",
        help="instead: one column holding a JSON object of key/value pairs",
    )
    parser.add_argument(
        "--storage-option",
        dest="storage_options",
        type=_storage_option,
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="for s3://, gs://, az:// paths (repeatable), e.g. aws_region=eu-west-1; "
        "default: the usual environment variables",
    )
    parser.add_argument(
        "--job-name",
        default=S,
        metavar="NAME",
        help="the job whose state of what it last set this run compares with and updates "
        "(default: the job file's name, else the results file's name)",
    )
    parser.add_argument(
        "--state-dir",
        default=S,
        metavar="DIR",
        help="where job states live, as NAME.state.sqlite (default: the results' directory)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        default=S,
        help="send every row, even those unchanged since the job last set them",
    )
    parser.add_argument(
        "--since-state",
        default=S,
        metavar="PATH",
        help="compare with this state database (another job's) instead of this job's own",
    )
    if validate:
        return
    parser.add_argument(
        "--base-url",
        default=S,
        metavar="URL",
        help="API base URL (default $OPENAI_BASE_URL, else https://api.openai.com/v1)",
    )
    parser.add_argument(
        "--rpm",
        type=_positive_int,
        default=S,
        metavar="N",
        help="requests per minute for the whole job (default 500)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=S,
        metavar="N",
        help="requests in flight at most (default 16)",
    )
    parser.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=S,
        metavar="N",
        help="attempts per row for transient failures; 429 waits excluded (default 6)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=S,
        metavar="S",
        help="per-request timeout in seconds (default 60)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=S,
        help="read, validate and plan; send nothing; still write the results",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        default=S,
        help="ignore saved progress and start over (the old journal is kept aside)",
    )
    parser.add_argument(
        "--shard",
        type=_shard,
        default=S,
        metavar="K/N",
        help="only rows whose ID hashes (CRC-32) to K modulo N (0-based); --rpm and "
        "--concurrency are divided by N",
    )
    parser.add_argument(
        "--breaker-timeout",
        type=_positive_float,
        default=S,
        metavar="S",
        help="stop (exit 3, resumable) once the API has failed every probe this long (default 300)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=S,
        metavar="S",
        help="after SIGTERM/SIGINT, how long in-flight requests may take (default 10)",
    )
    parser.add_argument(
        "--limit",
        type=_non_negative_int,
        default=S,
        metavar="N",
        help="only the first N valid rows (a canary run); the rest unprocessed",
    )


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    parser.add_argument("--quiet", action="store_true", default=S, help="no progress bar")
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=S,
        help="text (default) or one JSON object per log line",
    )
    parser.add_argument(
        "--log-file", default=S, metavar="PATH", help="append logs to this file instead of stderr"
    )


def _job_options(args: argparse.Namespace, validate: bool) -> tuple[JobConfig, dict[str, Any]]:
    """JobConfig from the job file, overridden by the flags given; plus the CLI's own settings."""
    from bulk_update.jobfile import CLI_KEYS, load_job_file

    fields = frozenset(JobConfig.__dataclass_fields__)
    options: dict[str, Any] = load_job_file(args.job, fields) if args.job else {}
    if args.job:
        options.setdefault("job_name", Path(args.job).stem)
    given = {k: v for k, v in vars(args).items() if k not in {"command", "job"}}
    options.update(given)
    if validate:
        options["dry_run"] = True
    if "storage_options" in options:
        options["storage_options"] = tuple(tuple(pair) for pair in options["storage_options"])
    cli = {key: options.pop(key) for key in list(options) if key in CLI_KEYS}
    for required in ("input", "output"):
        if not options.get(required):
            name = "INPUT" if required == "input" else "--output"
            raise ConfigError(f"{name} is required (on the command line or in the job file)")
    return JobConfig(**options), cli


def _progress_reporter(quiet: bool) -> tuple[Callable[[Progress], None] | None, Any]:
    """A rich progress bar on a TTY (unless quiet); else periodic log lines for schedulers."""
    if not quiet and sys.stderr.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        bar = Bar(
            TextColumn("[bold]bulk-update"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"), transient=False,
        )  # fmt: skip
        task = bar.add_task("rows", total=None, rate="", counts="")

        def show(progress: Progress) -> None:
            rate = progress.done / progress.elapsed_s if progress.elapsed_s else 0.0
            counts = " ".join(f"{k}={v}" for k, v in sorted(progress.counts.items()))
            bar.update(task, completed=progress.done, total=progress.total,
                       rate=f"{rate:.0f} rows/s", counts=counts)  # fmt: skip

        return show, bar
    last = [0.0]

    def log_progress(progress: Progress) -> None:
        if progress.elapsed_s - last[0] >= PROGRESS_LOG_INTERVAL_S:
            last[0] = progress.elapsed_s
            log.info(
                "progress %d/%d",
                progress.done,
                progress.total,
                extra={"event": "progress", "done": progress.done, "total": progress.total,
                       "counts": progress.counts, "requests": progress.requests},
            )  # fmt: skip

    return log_progress, None


def _run(args: argparse.Namespace, validate: bool) -> int:
    from bulk_update import logs

    config, cli = _job_options(args, validate)
    logs.configure(cli.get("log_format", "text"), cli.get("log_file"))
    reporter, bar = _progress_reporter(bool(cli.get("quiet")))
    if bar is not None:
        bar.start()
    try:
        summary = run_job(config, progress=reporter)
    finally:
        if bar is not None:
            bar.stop()
    print(summary.line(), file=sys.stderr, flush=True)
    return summary.exit_code


def _run_demo(args: argparse.Namespace) -> int:
    from bulk_update.demo import run_demo

    return run_demo()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulk-update",
        description="Bulk-update the metadata of OpenAI conversations from a CSV or Parquet table.",
    )
    parser.add_argument("--version", action="version", version=f"bulk-update {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="update conversations' metadata from a CSV or Parquet file",
        description="Update the metadata of one conversation per input row. Resumes where the "
        "last run on the same --output stopped. The API key comes from $OPENAI_API_KEY.",
    )
    _add_job_options(run, validate=False)
    _add_log_options(run)
    validate = commands.add_parser(
        "validate",
        help="validate and plan only (= run --dry-run): send nothing",
        description="Read, validate and plan every row; send nothing. The results say "
        "planned or invalid for every row. Needs no API key.",
    )
    _add_job_options(validate, validate=True)
    _add_log_options(validate)
    _add_emulator(commands)
    commands.add_parser(
        "demo",
        help="what `make demo` runs",
        description="Start the emulator on a free loopback port and run a short session on it.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in {"run", "validate"}:
            return _run(args, validate=args.command == "validate")
        if args.command == "emulator":
            return _run_emulator(args)
        return _run_demo(args)
    except BulkUpdateError as exc:
        print(f"bulk-update: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bulk-update: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # a bug: say so in one line, keep the traceback for the report
        log.error("internal error", exc_info=True, extra={"event": "internal_error"})
        print(
            f"bulk-update: internal error ({type(exc).__name__}: {first_line(exc)}); the "
            "traceback is in the log; a re-run resumes. Please report it.",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_INTERNAL
