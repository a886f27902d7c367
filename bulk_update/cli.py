"""The ``bulk-update`` command: parses flags and calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bulk_update._version import __version__
from bulk_update.config import JobConfig, parse_columns, parse_shard
from bulk_update.exceptions import (
    BulkUpdateError,
    ConfigError,
    DiskFull,
    first_line,
    is_disk_full,
)
from bulk_update.exitcodes import ExitCode
from bulk_update.job import run_job
from bulk_update.observe import draw

if TYPE_CHECKING:
    from bulk_update.store import StoreLocation

log = logging.getLogger("bulk_update")


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


def _defaults(cls: type[Any]) -> dict[str, Any]:
    """A dataclass's field defaults: the help texts show them, never a copy."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


JOB_DEFAULTS = _defaults(JobConfig)

_fraction = _number(float, low=0.0, high=1.0)
_non_negative_int = _number(int, low=0)
_positive_int = _number(int, low=1)
_positive_float = _number(float, low=0.0, strict=True)


def _add_emulator(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from bulk_update.emulator import EmulatorConfig

    emulator = _defaults(EmulatorConfig)
    parser = _subcommand(
        commands,
        "emulator",
        help="serve a local, in-memory stand-in for the Conversations API",
        description=(
            "Serve a local, in-memory stand-in for the OpenAI Conversations API, for demos, "
            "rehearsals, tests and benchmarks. Prints 'bulk-update emulator serving "
            "http://HOST:PORT/v1' once it accepts connections. Admin routes (no key, not "
            "counted): GET /_emulator/stats, GET /_emulator/conversations/ID, "
            "POST /_emulator/reset-counters, GET/POST /_emulator/config."
        ),
        epilog="example:\n  bulk-update emulator --port 0 --rpm 600 --latency-ms 20 "
        "--error-rate 0.05 --random-seed 7 --preload 1000",
    )
    parser.set_defaults(handler=_run_emulator)
    parser.add_argument("--host", default="127.0.0.1", help="where to listen (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=_non_negative_int,
        default=8787,
        help="port; 0 picks a free one (the printed URL tells which) (default 8787)",
    )
    parser.add_argument(
        "--api-key",
        default=emulator["api_key"],
        help="accept only this bearer key (default: any non-empty key)",
    )
    # The emulator's numeric settings: (option, type, metavar, meaning); defaults from
    # EmulatorConfig.
    numbers: tuple[tuple[str, Callable[[str], Any], str, str], ...] = (
        ("rpm", _non_negative_int, "N",
         "server-side request limit per minute, enforced per second; 0: no limit"),
        ("latency_ms", float, "MS", "added to every API answer"),
        ("error_rate", _fraction, "P", "fraction of requests answered 500, 502 or 503"),
        ("reset_rate", _fraction, "P",
         "fraction whose connection is dropped with a TCP reset and no answer"),
        ("slow_rate", _fraction, "P", "fraction of answers delayed by a further --slow-ms"),
        ("slow_ms", float, "MS", "delay of a slow answer"),
    )  # fmt: skip
    for name, kind, metavar, meaning in numbers:
        default = emulator[name]
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=default,
            metavar=metavar,
            help=f"{meaning} (default {default:g})",
        )
    parser.add_argument(
        "--random-seed",
        type=int,
        default=emulator["random_seed"],
        metavar="N",
        help="the same seed gives the same faults for the same request sequence (default random)",
    )
    parser.add_argument(
        "--preload",
        metavar="FILE|N",
        default=None,
        help="create a conversation for every ID in a CSV/Parquet file's conversation_id column "
        "(with the file's metadata column, a JSON object, as its metadata, if it has one), "
        "or N conversations whose IDs are bulk_update.emulator.preload_id(0..N-1)",
    )


def _run_emulator(args: argparse.Namespace) -> int:
    from bulk_update.emulator import EXTRA_HINT, EmulatorConfig, missing_dependency

    missing = missing_dependency()
    if missing is not None:
        raise ConfigError(f"{EXTRA_HINT} ({missing} is not installed)")
    from bulk_update.emulator.server import serve

    try:
        settings = {name: getattr(args, name, None) for name in _defaults(EmulatorConfig)}
        config = EmulatorConfig(**{k: v for k, v in settings.items() if v is not None})
        serve(config, host=args.host, port=args.port, preload=args.preload)
    except (OSError, ValueError) as exc:
        print(f"bulk-update emulator: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.SIGINT
    return ExitCode.OK


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from one of config's parsers (ConfigError -> a usage error)."""

    def check(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    return check


def _storage_option(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text.split('=')[0]!r}")
    return key.strip(), value


Command = Literal["run", "validate", "revert"]


def _add_job_options(parser: argparse.ArgumentParser, command: Command) -> None:
    """The options of `run`, `validate` (which is `run --dry-run`) and `revert`.

    Defaults are SUPPRESS so that only the flags given override a job file; the real defaults
    live in JobConfig.
    """
    S = argparse.SUPPRESS
    parser.add_argument(
        "input",
        nargs="?",
        default=S,
        metavar="RESULTS" if command == "revert" else "INPUT",
        help="the results file of a run with --backup"
        if command == "revert"
        else "the CSV or Parquet file to read, or a quoted glob ('exports/*.parquet') read as "
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
        help="where job stores live, as NAME.sqlite: runs, outcomes and state "
        "(default: the results' directory)",
    )
    parser.add_argument(
        "--state-url",
        default=S,
        metavar="URL",
        help="the job's store in PostgreSQL, postgresql://USER:PASSWORD@HOST:PORT/DB: runs, "
        "outcomes, state, locks and rate budget shared by every machine "
        "(default $BULK_UPDATE_STATE_URL, else the SQLite file)",
    )
    parser.add_argument(
        "--store-timeout",
        type=_positive_float,
        default=S,
        metavar="S",
        help="how long the store may stay away (a database) or locked by another process (a "
        "file) before the job stops, resumable; one clock for the whole stop "
        f"(default {JOB_DEFAULTS['store_timeout']:g})",
    )
    if command != "revert":
        _add_mapping_options(parser)
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
        help=f"requests per minute for the whole job (default {JOB_DEFAULTS['rpm']})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=S,
        metavar="N",
        help=f"requests in flight at most (default {JOB_DEFAULTS['concurrency']})",
    )
    parser.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=S,
        metavar="N",
        help="attempts per row for transient failures; 429 waits excluded "
        f"(default {JOB_DEFAULTS['max_attempts']})",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=S,
        metavar="S",
        help=f"per-request timeout in seconds (default {JOB_DEFAULTS['timeout']:g})",
    )
    if command == "validate":
        parser.add_argument(
            "--check-server",
            action="store_true",
            default=S,
            help="also read each valid row's conversation (GET only; rate limited like a run): "
            "rows past 16 merged keys invalid, rows the server holds unchanged, unknown IDs "
            "invalid; the keys the run would add, per key",
        )
    else:
        parser.add_argument(
            "--dry-run",
            action="store_true",
            default=S,
            help="read, validate and plan; send nothing; still write the results"
            if command == "run"
            else "read each conversation and show what the revert would send (GET only)",
        )
    if command != "validate":
        parser.add_argument(
            "--restart",
            action="store_true",
            default=S,
            help="ignore saved progress and start over (the old run is kept in the store)",
        )
    if command != "revert":
        parser.add_argument(
            "--shard",
            type=_argparse_type(parse_shard),
            default=S,
            metavar="K/N",
            help="only rows whose ID hashes (CRC-32) to K modulo N (0-based); the running "
            "shards of a job share its --rpm; --concurrency is each shard's",
        )
    parser.add_argument(
        "--breaker-timeout",
        type=_positive_float,
        default=S,
        metavar="S",
        help="stop (exit 3, resumable) once the API has failed every probe this long "
        f"(default {JOB_DEFAULTS['breaker_timeout']:g})",
    )
    parser.add_argument(
        "--drain-timeout",
        type=_positive_float,
        default=S,
        metavar="S",
        help="after SIGTERM/SIGINT, how long in-flight requests may take "
        f"(default {JOB_DEFAULTS['drain_timeout']:g})",
    )
    parser.add_argument(
        "--limit",
        type=_non_negative_int,
        default=S,
        metavar="N",
        help="only the first N rows to send (a canary run); the rest unprocessed (no "
        "failure): exit 0 if those N went through and no row before them was invalid, else 1",
    )
    if command == "run":
        parser.add_argument(
            "--retry-failed",
            action="store_true",
            default=S,
            help="send again the rows this run has as failed; the results are rewritten",
        )
    if command != "validate":
        parser.add_argument(
            "--stop-after-failures",
            type=_non_negative_int,
            default=S,
            metavar="N",
            help="stop (exit 3, resumable) after N rows in a row failed with the same "
            f"non-retryable error code; 0: never (default {JOB_DEFAULTS['stop_after_failures']})",
        )
    if command == "run":
        parser.add_argument(
            "--backup",
            action="store_true",
            default=S,
            help="read each conversation before its update: keep its before-image "
            "(previous_metadata, for bulk-update revert), skip rows the server already holds, "
            "refuse rows that would exceed 16 merged keys",
        )
    if command != "validate":
        parser.add_argument(
            "--metrics-file",
            default=S,
            metavar="PATH.prom",
            help="write the run's Prometheus metrics here (replaced atomically at the start, "
            "every --metrics-interval and at the end): a node_exporter textfile directory",
        )
        parser.add_argument(
            "--pushgateway",
            default=S,
            metavar="URL",
            help="push the same to this Prometheus Pushgateway (push-add, grouped by job name "
            "and shard); one that is down is a warning, never the job's failure",
        )
        parser.add_argument(
            "--metrics-interval",
            type=_positive_float,
            default=S,
            metavar="S",
            help="seconds between metrics writes and the run's heartbeats in its store "
            f"(default {JOB_DEFAULTS['metrics_interval']:g})",
        )
    if command == "revert":
        parser.add_argument(
            "--force",
            action="store_true",
            default=S,
            help="revert keys changed on the server since the run, too",
        )
        parser.add_argument(
            "--blank-added-keys",
            action="store_true",
            default=S,
            help="set the keys the run added (which the API cannot remove) to ''",
        )


def _add_mapping_options(parser: argparse.ArgumentParser) -> None:
    """How a table maps to updates (not for a revert, which reads a results file)."""
    S = argparse.SUPPRESS
    parser.add_argument(
        "--id-column",
        default=S,
        metavar="NAME",
        help=f"the conversation ID column (default {JOB_DEFAULTS['id_column']})",
    )
    parser.add_argument(
        "--columns",
        type=_argparse_type(parse_columns),
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
        "--full",
        action="store_true",
        default=S,
        help="send every row, even those unchanged since the job last set them",
    )
    parser.add_argument(
        "--since-state",
        default=S,
        metavar="PATH",
        help="compare with the state in this store (another job's NAME.sqlite; with --state-url, "
        "another job's name) instead of this job's own",
    )
    parser.add_argument(
        "--delimiter",
        default=S,
        metavar="CHAR",
        help="field separator of a text input (default: ',' for .csv, a tab for .tsv)",
    )


def _add_log_options(parser: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    parser.add_argument(
        "--quiet",
        action="store_true",
        default=S,
        help="no progress bar and no INFO lines on stderr (--log-file still gets them)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=S,
        help="INFO lines on a terminal too (without it, a terminal gets the progress bar, "
        "warnings and the summary; a pipe, a log file or --log-format json get every line)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=S,
        help="text (default) or one JSON object per log line",
    )
    parser.add_argument(
        "--log-file", default=S, metavar="PATH", help="append logs to this file instead of stderr"
    )


def _job_options(args: argparse.Namespace, command: Command) -> tuple[JobConfig, dict[str, Any]]:
    """JobConfig from the job file, overridden by the flags given; plus the CLI's own settings."""
    from bulk_update.jobfile import load_job_file, split_cli_settings

    options: dict[str, Any] = load_job_file(args.job) if args.job else {}
    if args.job:
        options.setdefault("job_name", Path(args.job).stem)
    given = {k: v for k, v in vars(args).items() if k not in {"command", "job", "handler"}}
    options.update(given)
    if command == "validate":
        options["dry_run"] = True
    if command == "revert":
        options["revert"] = True
        options["check_server"] = bool(options.get("dry_run"))
    source = args.job or "options"
    cli = split_cli_settings(options, source)
    return JobConfig.from_options(options, source=source), cli


def _run(args: argparse.Namespace, *, command: Command) -> int:
    from bulk_update.observe import logs

    config, cli = _job_options(args, command)
    quiet = bool(cli.get("quiet"))
    log_file = cli.get("log_file")
    log_format = cli.get("log_format", "text")
    # On a terminal the bar and the summary say it all; the structured INFO lines are for
    # logs (a pipe, --log-file, --log-format json) or -v.
    terse = (
        sys.stderr.isatty() and log_format == "text" and log_file is None
        and not cli.get("verbose")
    )  # fmt: skip
    try:
        logs.configure(log_format, log_file, quiet=quiet, terse=terse)
    except OSError as exc:
        raise ConfigError(f"--log-file {log_file}: {exc.strerror or exc}") from None
    reporter = draw.progress_reporter(quiet=quiet)
    try:
        summary = run_job(config, progress=reporter)
    finally:
        reporter.close()
    print(summary.line(), file=sys.stderr, flush=True)
    return summary.exit_code


def _location(args: argparse.Namespace) -> StoreLocation:
    from bulk_update.observe import history

    return history.job_location(args.job, args.state_dir, args.state_url)


def _run_history(args: argparse.Namespace) -> int:
    from bulk_update.observe import history

    records = history.runs(args.job, _location(args))
    draw.print_table(
        history.COLUMNS,
        history.rows(records),
        title=f"job {args.job}: {len(records)} runs",
        json_text=history.as_json(records) if args.json else None,
    )
    return ExitCode.OK


def _run_status(args: argparse.Namespace) -> int:
    from bulk_update.observe import history

    found = history.statuses(args.job, _location(args))
    draw.print_table(
        history.STATUS_COLUMNS,
        history.status_rows(found),
        title=f"job {args.job}: {len(found)} runs going on or unfinished",
        json_text=history.status_as_json(found) if args.json else None,
        hint=history.status_hint(found),
        empty=f"job {args.job}: no run going on or unfinished",
    )
    return ExitCode.OK


def _run_report(args: argparse.Namespace) -> int:
    from bulk_update.observe import report

    data = report.write(args.job, _location(args), args.run, args.output)
    print(f"bulk-update: report of job {args.job} run {data.record.run_id}: {args.output}",
          file=sys.stderr)  # fmt: skip
    return ExitCode.OK


def _run_demo(args: argparse.Namespace) -> int:
    from bulk_update.demo import run_demo

    return run_demo()


EXIT_CODES_HELP = """exit codes:
  0    every row updated or unchanged (rows left unprocessed by --limit are no failure)
  1    finished; some rows failed or invalid (see the results or --errors-output)
  2    bad usage, config, input or store, or another run holds the job: nothing sent
  3    stopped: 401/403, insufficient_quota, the API down (circuit breaker),
       --stop-after-failures rows in a row failed alike, or a server that replaced a map
       (--backup); the rest unprocessed: re-run to resume
  130  stopped by SIGINT (Ctrl-C) / 143 by SIGTERM, after a drain: re-run to resume
  70   an internal error (a bug): the traceback is in the log; re-run to resume"""

RUN_EPILOG = f"""example:
  export OPENAI_API_KEY=sk-...
  bulk-update validate exports/conversations.csv --output out/plan.csv --job-name conversations
  bulk-update run exports/conversations.csv --output out/results.parquet \\
      --job-name conversations --errors-output out/errors.csv --rpm 3000 --concurrency 32

{EXIT_CODES_HELP}"""

VALIDATE_EPILOG = f"""Every row ends planned (would be sent), unchanged (the same as the job last
set: would not be sent) or invalid (with the reason); the summary ends with "would send N".

example:
  bulk-update validate exports/conversations.csv --output out/plan.csv --job-name conversations

{EXIT_CODES_HELP}"""


REVERT_EPILOG = f"""example:
  bulk-update run exports/fix.csv --output out/fix.parquet --backup
  bulk-update revert out/fix.parquet --output out/fix-revert.parquet --dry-run
  bulk-update revert out/fix.parquet --output out/fix-revert.parquet

{EXIT_CODES_HELP}"""


def _add_store_options(parser: argparse.ArgumentParser, *, json_output: bool = True) -> None:
    """Where ``history``, ``status`` and ``report`` find a job's store (and --json)."""
    parser.add_argument("--job", required=True, metavar="NAME", help="the job's name")
    parser.add_argument(
        "--state-dir", metavar="DIR", help="where the job's NAME.sqlite is (default: here)"
    )
    parser.add_argument(
        "--state-url",
        metavar="URL",
        help="the job's store in PostgreSQL (default $BULK_UPDATE_STATE_URL)",
    )
    if json_output:
        parser.add_argument("--json", action="store_true", help="a JSON array, for scripts")


def _subcommand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, **kwargs: Any
) -> argparse.ArgumentParser:
    return commands.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bulk-update",
        description="Bulk-update the metadata of OpenAI conversations from a CSV, TSV, JSON "
        "Lines or Parquet table.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bulk-update {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = _subcommand(
        commands,
        "run",
        help="update conversations' metadata from a table",
        description="Update the metadata of one conversation per input row (CSV, TSV, JSON "
        "Lines or Parquet). Resumes where the last run on the same --output stopped; sends only "
        "the rows changed since the job last set them. The API key comes from $OPENAI_API_KEY.",
        epilog=RUN_EPILOG,
    )
    _add_job_options(run, "run")
    _add_log_options(run)
    run.set_defaults(handler=partial(_run, command="run"))
    validate = _subcommand(
        commands,
        "validate",
        help="validate and plan only (= run --dry-run): send nothing",
        description="Read, validate and plan every row; send nothing; need no API key. With "
        "--check-server, also read each valid row's conversation (GET only, with the API key): "
        "what the server holds decides.",
        epilog=VALIDATE_EPILOG,
    )
    _add_job_options(validate, "validate")
    _add_log_options(validate)
    validate.set_defaults(handler=partial(_run, command="validate"))
    revert = _subcommand(
        commands,
        "revert",
        help="undo a --backup run, never over others' changes",
        description="Put back what a run with --backup changed, from its results file: each "
        "updated row's keys go back to their before-image values. A key changed on the server "
        "since the run is left alone (the row is invalid, drifted) unless --force. Keys the run "
        "added cannot be removed through the API: the summary names them. A revert is a run of "
        "the same job (its store beside RESULTS, or give --job-name/--state-dir as the run had "
        "them): journaled, resumable, rate limited.",
        epilog=REVERT_EPILOG,
    )
    _add_job_options(revert, "revert")
    _add_log_options(revert)
    revert.set_defaults(handler=partial(_run, command="revert"))
    history = _subcommand(
        commands,
        "history",
        help="a job's runs, newest first, from its store",
        description="One line per run of the job, newest first: when it started and ended, its "
        "results path and shard, how many invocations, its exit code and what stopped it, the "
        "requests it sent and how many were answered 429, and its rows by status. Reads the "
        "job's store: STATE_DIR/JOB.sqlite, or the PostgreSQL store of --state-url.",
        epilog="example:\n  bulk-update history --job nightly --state-dir state/\n"
        "  bulk-update history --job nightly --json | jq '.[0].exit_code'",
    )
    _add_store_options(history)
    history.set_defaults(handler=_run_history)
    status = _subcommand(
        commands,
        "status",
        help="a job's runs going on or unfinished now: done/total, rate, time left, holder",
        description="The job's runs that are going on now, or stopped before their end (killed, "
        "signalled, or stopped by the API): rows done of the total, the rate over the last "
        "minute, the time left at that rate, and the host and pid that hold the run. Works from "
        "any shell or machine that reaches the job's store. A run that beats no heartbeat for "
        "3 x --metrics-interval + 5 s (20 s by default) is shown as gone.",
        epilog="example:\n  bulk-update status --job nightly --state-dir state/\n"
        "  bulk-update status --job nightly --state-url postgresql://... --json",
    )
    _add_store_options(status)
    status.set_defaults(handler=_run_status)
    report = _subcommand(
        commands,
        "report",
        help="one self-contained HTML page of a run: its rate, latency, errors, options",
        description="Write one HTML file (no network needed to open it) showing a run of the "
        "job: requests per second against --rpm and the server's announced limit, with 429s, "
        "retries and errors marked; latency percentiles; rows by status and error code; the top "
        "error messages with example rows; the run's summary and options. The newest run "
        "unless --run.",
        epilog="example:\n  bulk-update report --job nightly --state-dir state/ --output "
        "nightly.html\n  bulk-update history --job nightly   # the run IDs for --run",
    )
    _add_store_options(report, json_output=False)
    report.add_argument("--run", type=int, metavar="ID", help="the run (default: the newest)")
    report.add_argument("--output", required=True, metavar="PATH.html", help="where to write it")
    report.set_defaults(handler=_run_report)
    _add_emulator(commands)
    demo = _subcommand(
        commands,
        "demo",
        help="what `make demo` runs",
        description="Start the emulator on a free loopback port and run jobs/demo.toml against "
        "it twice: every row, then again incrementally (only the rows changed since are sent).",
    )
    demo.set_defaults(handler=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        message = f"unrecognized arguments: {' '.join(extra)}"
        if getattr(args, "input", None) and all(
            not item.startswith("-") and Path(item).suffix for item in extra
        ):
            message += (
                " (more input files: was a glob expanded by the shell? quote it, as in "
                "'exports/part-*.csv', and bulk-update reads every file it matches)"
            )
        parser.error(message)
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except BulkUpdateError as exc:
        print(f"bulk-update: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bulk-update: interrupted", file=sys.stderr, flush=True)
        return ExitCode.SIGINT
    except Exception as exc:  # a bug: say so in one line, keep the traceback for the report
        if is_disk_full(exc):  # not a bug: a disk the job writes on is full
            where = getattr(exc, "filename", None) or "a file the job writes"
            print(f"bulk-update: error: {DiskFull(str(where), first_line(exc))}", file=sys.stderr)
            return ExitCode.FATAL
        log.error("internal error", exc_info=True, extra={"event": "internal_error"})
        print(
            f"bulk-update: internal error ({type(exc).__name__}: {first_line(exc)}); the "
            "traceback is in the log; a re-run resumes. Please report it.",
            file=sys.stderr,
            flush=True,
        )
        return ExitCode.INTERNAL
