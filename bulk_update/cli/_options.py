"""The command's options, one function per group of related options (as sqlite-utils'
``output_options`` and ``import_options``). A group adds its options to a parser and knows
nothing of which command it serves: the table in ``cli/__init__.py`` says which commands take
which groups, and a group that reads differently for one command takes that as a parameter.

The job commands' defaults are SUPPRESS, so that only the flags given override a job file; the
real defaults live in JobConfig (and the help texts show them from there, never a copy)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

from bulk_update.config import JobConfig, parse_columns, parse_shard
from bulk_update.exceptions import ConfigError

__all__ = [
    "Group",
    "backup_option",
    "check_server_option",
    "defaults",
    "emulator_options",
    "json_option",
    "limits_options",
    "logging_options",
    "lookup_options",
    "mapping_options",
    "metrics_options",
    "report_options",
    "restart_option",
    "results_files",
    "retry_failed_option",
    "revert_dry_run",
    "revert_options",
    "run_dry_run",
    "sending_options",
    "shard_option",
    "stop_after_failures_option",
    "store_options",
    "table_files",
]

Group = Callable[[argparse.ArgumentParser], None]
S = argparse.SUPPRESS


def number(
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


def defaults(cls: type[Any]) -> dict[str, Any]:
    """A dataclass's field defaults: the help texts show them, never a copy."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


JOB_DEFAULTS = defaults(JobConfig)

fraction = number(float, low=0.0, high=1.0)
non_negative_int = number(int, low=0)
positive_int = number(int, low=1)
positive_float = number(float, low=0.0, strict=True)


def config_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from one of config's parsers (ConfigError -> a usage error)."""

    def check(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    return check


def storage_option(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text.split('=')[0]!r}")
    return key.strip(), value


# The job commands: run, validate (run --dry-run) and revert.


def files_options(parser: argparse.ArgumentParser, *, metavar: str, about: str) -> None:
    """What the job reads (``metavar``, ``about``: a table to update, or a run's results to
    revert) and writes, and the job file."""
    parser.add_argument("input", nargs="?", default=S, metavar=metavar, help=about)
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
        type=storage_option,
        action="append",
        default=S,
        metavar="KEY=VALUE",
        help="for s3://, gs://, az:// paths (repeatable), e.g. aws_region=eu-west-1; "
        "default: the usual environment variables",
    )


table_files = partial(
    files_options,
    metavar="INPUT",
    about="the CSV or Parquet file to read, or a quoted glob ('exports/*.parquet') read as "
    "one table in sorted order",
)
results_files = partial(
    files_options, metavar="RESULTS", about="the results file of a run with --backup"
)


def store_options(parser: argparse.ArgumentParser) -> None:
    """The job's name and its store."""
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
        help="where job stores live, as NAME.sqlite: runs, outcomes and state; given, it "
        "beats $BULK_UPDATE_STATE_URL (default: the results' directory)",
    )
    parser.add_argument(
        "--state-url",
        default=S,
        metavar="URL",
        help="the job's store in PostgreSQL, postgresql://USER:PASSWORD@HOST:PORT/DB: runs, "
        "outcomes, state, locks and rate budget shared by every machine "
        "(default $BULK_UPDATE_STATE_URL unless --state-dir is given, else the SQLite file)",
    )
    parser.add_argument(
        "--store-timeout",
        type=positive_float,
        default=S,
        metavar="S",
        help="how long the store may stay away (a database) or locked by another process (a "
        "file) before the job stops, resumable; one clock for the whole stop "
        f"(default {JOB_DEFAULTS['store_timeout']:g})",
    )


def mapping_options(parser: argparse.ArgumentParser) -> None:
    """How a table maps to updates (not for a revert, which reads a results file)."""
    parser.add_argument(
        "--id-column",
        default=S,
        metavar="NAME",
        help=f"the conversation ID column (default {JOB_DEFAULTS['id_column']})",
    )
    parser.add_argument(
        "--columns",
        type=config_type(parse_columns),
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


def sending_options(parser: argparse.ArgumentParser) -> None:
    """Where requests go and how many, how fast, how often, how long."""
    parser.add_argument(
        "--base-url",
        default=S,
        metavar="URL",
        help="API base URL (default $OPENAI_BASE_URL, else https://api.openai.com/v1)",
    )
    parser.add_argument(
        "--rpm",
        type=positive_int,
        default=S,
        metavar="N",
        help=f"requests per minute for the whole job (default {JOB_DEFAULTS['rpm']})",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=S,
        metavar="N",
        help=f"requests in flight at most (default {JOB_DEFAULTS['concurrency']})",
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_int,
        default=S,
        metavar="N",
        help="attempts per row for transient failures; 429 waits excluded "
        f"(default {JOB_DEFAULTS['max_attempts']})",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=S,
        metavar="S",
        help=f"per-request timeout in seconds (default {JOB_DEFAULTS['timeout']:g})",
    )


def check_server_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check-server",
        action="store_true",
        default=S,
        help="also read each valid row's conversation (GET only; rate limited like a run): "
        "rows past 16 merged keys invalid, rows the server holds unchanged, unknown IDs "
        "invalid; the keys the run would add, per key",
    )


def dry_run_option(parser: argparse.ArgumentParser, *, about: str) -> None:
    parser.add_argument("--dry-run", action="store_true", default=S, help=about)


run_dry_run = partial(
    dry_run_option, about="read, validate and plan; send nothing; still write the results"
)
revert_dry_run = partial(
    dry_run_option, about="read each conversation and show what the revert would send (GET only)"
)


def restart_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--restart",
        action="store_true",
        default=S,
        help="ignore saved progress and start over (the old run is kept in the store)",
    )


def shard_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard",
        type=config_type(parse_shard),
        default=S,
        metavar="K/N",
        help="only rows whose ID hashes (CRC-32) to K modulo N (0-based); the running "
        "shards of a job share its --rpm; --concurrency is each shard's",
    )


def limits_options(parser: argparse.ArgumentParser) -> None:
    """When the job gives up on the API, on a drain, and after how many rows."""
    parser.add_argument(
        "--breaker-timeout",
        type=positive_float,
        default=S,
        metavar="S",
        help="stop (exit 3, resumable) once the API has failed every probe this long "
        f"(default {JOB_DEFAULTS['breaker_timeout']:g})",
    )
    parser.add_argument(
        "--drain-timeout",
        type=positive_float,
        default=S,
        metavar="S",
        help="after SIGTERM/SIGINT, how long in-flight requests may take "
        f"(default {JOB_DEFAULTS['drain_timeout']:g})",
    )
    parser.add_argument(
        "--limit",
        type=non_negative_int,
        default=S,
        metavar="N",
        help="only the first N rows to send (a canary run); the rest unprocessed (no "
        "failure): exit 0 if those N went through and no row before them was invalid, else 1",
    )


def retry_failed_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        default=S,
        help="send again the rows this run has as failed; the results are rewritten",
    )


def stop_after_failures_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stop-after-failures",
        type=non_negative_int,
        default=S,
        metavar="N",
        help="stop (exit 3, resumable) after N rows in a row failed with the same "
        f"non-retryable error code; 0: never (default {JOB_DEFAULTS['stop_after_failures']})",
    )


def backup_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backup",
        action="store_true",
        default=S,
        help="read each conversation before its update: keep its before-image "
        "(previous_metadata, for bulk-update revert), skip rows the server already holds, "
        "refuse rows that would exceed 16 merged keys",
    )


def metrics_options(parser: argparse.ArgumentParser) -> None:
    """The run's Prometheus metrics and heartbeats."""
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
        type=positive_float,
        default=S,
        metavar="S",
        help="seconds between metrics writes and the run's heartbeats in its store "
        f"(default {JOB_DEFAULTS['metrics_interval']:g})",
    )


def revert_options(parser: argparse.ArgumentParser) -> None:
    """What a revert may touch beyond what the run changed."""
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


def logging_options(parser: argparse.ArgumentParser) -> None:
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


# history, status and report: a job's store, read.


def lookup_options(parser: argparse.ArgumentParser) -> None:
    """Where ``history``, ``status`` and ``report`` find a job's store."""
    parser.add_argument("--job", required=True, metavar="NAME", help="the job's name")
    parser.add_argument(
        "--state-dir", metavar="DIR", help="where the job's NAME.sqlite is (default: here)"
    )
    parser.add_argument(
        "--state-url",
        metavar="URL",
        help="the job's store in PostgreSQL (default $BULK_UPDATE_STATE_URL unless --state-dir "
        "is given)",
    )


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="a JSON array, for scripts")


def report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=int, metavar="ID", help="the run (default: the newest)")
    parser.add_argument("--output", required=True, metavar="PATH.html", help="where to write it")


# The emulator.


def emulator_options(parser: argparse.ArgumentParser) -> None:
    from bulk_update.emulator import EmulatorConfig

    emulator = defaults(EmulatorConfig)
    parser.add_argument("--host", default="127.0.0.1", help="where to listen (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=non_negative_int,
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
        ("rpm", non_negative_int, "N",
         "server-side request limit per minute, enforced per second; 0: no limit"),
        ("latency_ms", float, "MS", "added to every API answer"),
        ("error_rate", fraction, "P", "fraction of requests answered 500, 502 or 503"),
        ("reset_rate", fraction, "P",
         "fraction whose connection is dropped with a TCP reset and no answer"),
        ("slow_rate", fraction, "P", "fraction of answers delayed by a further --slow-ms"),
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
