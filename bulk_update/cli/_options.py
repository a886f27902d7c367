"""The command's options, one group of related options each (as sqlite-utils'
``output_options`` and ``import_options``). A group adds its options to a parser and knows
nothing of which command it serves: the table in ``cli/__init__.py`` says which commands take
which groups, and a group that reads differently for one command takes that as a parameter.

The job commands' options are JobConfig's: each is declared once, beside its field in
``config.py`` (its flag, help, parser, bound and group), and ``declared_group`` adds a group's
flags from there. Their defaults are SUPPRESS, so that only the flags given override a job
file; the real defaults live in JobConfig (and the help texts show them from there, never a
copy)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from functools import partial
from typing import Any

from bulk_update._constants import STORE_SEARCH_DEPTH
from bulk_update.config import OPTIONS, JobConfig, default_of, flag_of
from bulk_update.exceptions import ConfigError

__all__ = [
    "Group",
    "add_option",
    "backup_option",
    "check_server_option",
    "compact_options",
    "declared_group",
    "defaults",
    "emulator_options",
    "json_option",
    "limits_options",
    "listing_options",
    "logging_options",
    "lookup_options",
    "mapping_options",
    "metrics_options",
    "report_options",
    "restart_option",
    "results_files",
    "retention_option",
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


fraction = number(float, low=0.0, high=1.0)
non_negative_int = number(int, low=0)
positive_int = number(int, low=1)
positive_float = number(float, low=0.0, strict=True)

# What a bound declared in JobConfig is as an argparse type, for each field type.
BOUNDED: dict[tuple[str, type], Callable[[str], Any]] = {
    ("at least 1", int): positive_int,
    ("not negative", int): non_negative_int,
    ("positive", float): positive_float,
}
HINTS = typing.get_type_hints(JobConfig)


def config_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from one of config's parsers (ConfigError -> a usage error)."""

    def check(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[-1]) from None

    return check


def _shown(default: object) -> str:
    return f"{default:g}" if isinstance(default, float) else str(default)


def add_option(parser: argparse.ArgumentParser, name: str, **override: Any) -> None:
    """JobConfig's option ``name`` as its declaration (``config.Option``) says: its flag, its
    help with its default, its parser and bound. ``override``: add_argument's, for a command
    that reads it differently."""
    declared = OPTIONS[name]
    how: dict[str, Any] = {"dest": name, "default": S, "help": declared.help}
    if "{default}" in declared.help:
        how["help"] = declared.help.replace("{default}", _shown(default_of(name)))
    kind = HINTS[name]
    kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # X | None
    if kind is bool:
        how["action"] = "store_true"
    else:
        how["metavar"] = declared.metavar
        if declared.repeatable:
            how["action"] = "append"
        if declared.parse is not None:
            how["type"] = config_type(declared.parse)
        elif declared.bound is not None:
            how["type"] = BOUNDED[declared.bound, kind]
    how.update(override)
    parser.add_argument(flag_of(name), **how)


def declared_group(group: str, **override: Any) -> Group:
    """The group of options whose declarations name ``group``, in JobConfig's order."""
    names = [name for name, declared in OPTIONS.items() if declared.group == group]

    def add(parser: argparse.ArgumentParser) -> None:
        for name in names:
            add_option(parser, name, **override)

    return add


# The job commands: run, validate (run --dry-run) and revert. Their options are JobConfig's,
# each declared there with its group; a group here adds them (``declared_group``).


def files_options(parser: argparse.ArgumentParser, *, metavar: str, about: str) -> None:
    """What the job reads (``metavar``, ``about``: a table to update, or a run's results to
    revert) and writes, and the job file."""
    parser.add_argument("input", nargs="?", default=S, metavar=metavar, help=about)
    parser.add_argument(
        "--job",
        default=None,
        metavar="FILE.toml",
        help="read options from a job file (a job's name is --job-name)",
    )
    declared_group("files")(parser)


table_files = partial(
    files_options,
    metavar="INPUT",
    about="the table to read: CSV, TSV, JSON Lines or Parquet, by its extension (.csv, .tsv, "
    ".jsonl or .ndjson, .parquet), or a quoted glob ('exports/*.parquet') read as one table in "
    "sorted order; none with --list (the rows from the API's listing)",
)
results_files = partial(
    files_options, metavar="RESULTS", about="the results file of a run with --backup"
)
store_options = declared_group("store")  # the job's name and its store
resource_option = declared_group("resource")  # which objects the job updates
mapping_options = declared_group("mapping")  # how a table maps to updates (not for a revert)
sending_options = declared_group("sending")  # where requests go, how many, how fast, how long
check_server_option = declared_group("check_server")
run_dry_run = declared_group("dry_run")
revert_dry_run = declared_group(
    "dry_run", help="read each conversation and show what the revert would send (GET only)"
)
restart_option = declared_group("restart")
listing_options = declared_group("listing")  # rows from the API's listing instead of INPUT
shard_option = declared_group("shard")
# When the job gives up on the API, on a drain, and after how many rows.
limits_options = declared_group("limits")
retry_failed_option = declared_group("retry_failed")
stop_after_failures_option = declared_group("stop_after_failures")
backup_option = declared_group("backup")
retention_option = declared_group("retention")  # how many runs keep their outcomes
metrics_options = declared_group("metrics")  # the run's Prometheus metrics and heartbeats
revert_options = declared_group("revert")  # what a revert may touch beyond what the run changed


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
    """Which job ``history``, ``status`` and ``report`` read, and where its store is: as the
    job commands name them, --job a job file and --job-name a job's name."""
    parser.add_argument(
        "--job",
        default=None,
        metavar="FILE.toml",
        help="the job file run took: the job's name and store from it, as run reads them "
        "(its job-name, else the file's name; its state-dir or state-url, else beside its "
        "output)",
    )
    parser.add_argument(
        "--job-name",
        default=None,
        metavar="NAME",
        help="the job's name (with --job: instead of the file's); one of the two is needed",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the job's NAME.sqlite is (default: the one NAME.sqlite in the current "
        f"directory or up to {STORE_SEARCH_DEPTH} levels below it, as run puts it beside the "
        "results; two found: give --state-dir)",
    )
    parser.add_argument(
        "--state-url",
        metavar="URL",
        help="the job's store in PostgreSQL (default $BULK_UPDATE_STATE_URL unless --state-dir "
        "is given)",
    )


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="a JSON array, for scripts")


def compact_options(parser: argparse.ArgumentParser) -> None:
    """``compact``'s retention: run's --keep-runs, of at least 1 (the job's last run keeps its
    outcomes); not given, the job file's, else the default."""
    add_option(parser, "keep_runs", type=positive_int, default=None)


def report_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=int, metavar="ID", help="the run (default: the newest)")
    parser.add_argument("--output", required=True, metavar="PATH.html", help="where to write it")


# The emulator.


def emulator_options(parser: argparse.ArgumentParser) -> None:
    from bulk_update.emulator import EmulatorConfig
    from bulk_update.emulator.objects import KINDS

    emulator = defaults(EmulatorConfig)
    resources = tuple(KINDS)
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
        "--resource",
        choices=resources,
        default=resources[0],
        metavar="NAME",
        help="which objects --preload creates: " + ", ".join(resources)
        + " (a file's vector stores too); all four are served either way "
        f"(default {resources[0]})",
    )  # fmt: skip
    parser.add_argument(
        "--preload",
        metavar="FILE|N",
        default=None,
        help="create an object of --resource for every ID in a file's --id-column, the file "
        "Parquet (.parquet), JSON Lines (.jsonl, .ndjson), TSV (.tsv) or else CSV, with its "
        "metadata column (a JSON object; a file's: attributes) as each one's metadata if it has "
        "one and, for chat.completions, its model column; or N objects whose IDs are "
        "bulk_update.emulator.preload_ids(RESOURCE, 0..N-1) (for conversations, preload_id)",
    )
    parser.add_argument(
        "--id-column",
        default=None,
        metavar="NAME",
        help="the --preload file's ID column, as run's --id-column; for vector_stores.files "
        "two, comma-separated; another --resource's default is its own: completion_id, "
        "vector_store_id, vector_store_id,file_id (default conversation_id)",
    )
    parser.add_argument(
        "--quoting",
        choices=("csv", "none"),
        default="csv",
        help="whether the --preload CSV or TSV file's cells may be quoted, as run's --quoting: "
        "csv (RFC 4180) or none (a quote is text, as warehouses write TSV) (default csv)",
    )
