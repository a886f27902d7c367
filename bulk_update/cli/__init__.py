"""The ``bulk-update`` command: parses flags and calls the library. No logic of its own.

``COMMANDS`` is the one table of the subcommands: each one's handler and its groups of options
(``_options.py``), in the order its ``--help`` lists them; ``_help.py`` says what each is. The
drawing (progress bar, progress log lines, tables) is ``observe/draw.py``'s."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from bulk_update._version import __version__
from bulk_update.cli._help import ABOUT, DESCRIPTION, EXIT_CODES_HELP
from bulk_update.cli._options import (
    Group,
    backup_option,
    check_server_option,
    compact_options,
    defaults,
    emulator_options,
    json_option,
    limits_options,
    listing_options,
    logging_options,
    lookup_options,
    mapping_options,
    metrics_options,
    report_options,
    resource_option,
    restart_option,
    results_files,
    retention_option,
    retry_failed_option,
    revert_dry_run,
    revert_options,
    run_dry_run,
    sending_options,
    shard_option,
    stop_after_failures_option,
    store_options,
    table_files,
)
from bulk_update.config import JobConfig
from bulk_update.exceptions import (
    BulkUpdateError,
    ConfigError,
    DiskFull,
    first_line,
    is_disk_full,
)
from bulk_update.exitcodes import ExitCode
from bulk_update.observe import draw
from bulk_update.stop import Interrupt, routed

if TYPE_CHECKING:
    from bulk_update.store import StoreLocation

__all__ = ["build_parser", "main"]

log = logging.getLogger("bulk_update")

Handler = Callable[[argparse.Namespace], int]


# What each job command makes of the options: `run` takes them as they are.
Settle = Callable[[dict[str, Any]], None]


def _as_given(options: dict[str, Any]) -> None:
    pass


def _as_validate(options: dict[str, Any]) -> None:
    options["dry_run"] = True


def _as_revert(options: dict[str, Any]) -> None:
    from bulk_update.modes import reverted_pace

    options["revert"] = True
    options.update(reverted_pace(options))  # --rpm, --concurrency: the run's, unless given
    options["check_server"] = bool(options.get("dry_run"))  # a dry run reads what it would send


def _job_options(args: argparse.Namespace, settle: Settle) -> tuple[JobConfig, dict[str, Any]]:
    """JobConfig from the job file, overridden by the flags given and then ``settle``d by the
    command; plus the CLI's own settings."""
    from bulk_update.jobfile import load_job_file, overridden, split_cli_settings

    in_file: dict[str, Any] = load_job_file(args.job) if args.job else {}
    if args.job:
        in_file.setdefault("job_name", Path(args.job).stem)
    given = {k: v for k, v in vars(args).items() if k not in {"command", "job", "handler"}}
    options = overridden(in_file, given)
    settle(options)
    source = args.job or "options"
    cli = split_cli_settings(options, source)
    return JobConfig.from_options(options, source=source), cli


def _run_job(args: argparse.Namespace, *, settle: Settle) -> int:
    """``run``, ``validate`` and ``revert``: the same job, its options ``settle``d by the
    command (``validate`` is a dry run, ``revert`` a revert)."""
    from bulk_update.job import run_job  # here: the other commands need none of its 0.9 s CPU
    from bulk_update.observe import logs

    config, cli = _job_options(args, settle)
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
    interrupt = Interrupt()
    with routed(interrupt):
        try:
            summary = run_job(config, progress=reporter, interrupt=interrupt)
        finally:
            reporter.close()
        print(summary.line(), file=sys.stderr, flush=True)
    return summary.exit_code


def _lookup(args: argparse.Namespace) -> tuple[str, StoreLocation]:
    """``history``, ``status`` and ``report``: the job's name and its store, from --job-name,
    or from the job file of --job as ``run`` reads it (its name, its store, else the store
    beside its results); --job-name, --state-dir and --state-url given win over the file."""
    from bulk_update.config import given_or_environment, store_directory
    from bulk_update.jobfile import store_of
    from bulk_update.observe import history

    if args.job is None:
        if args.job_name is None:
            raise ConfigError("give --job-name NAME (the job's name) or --job FILE (its job file)")
        return args.job_name, history.job_location(args.job_name, args.state_dir, args.state_url)
    given = {"job_name": args.job_name, "state_dir": args.state_dir, "state_url": args.state_url}
    name, where = store_of(args.job, {k: v for k, v in given.items() if v is not None})
    state_dir, output = where["state_dir"], where["output"]
    if state_dir is None and output and given_or_environment("state_url", where) is None:
        state_dir = str(store_directory(output))  # where run put it: beside the results
    try:
        return name, history.job_location(name, state_dir, where["state_url"])
    except ConfigError as exc:
        raise ConfigError(f"{args.job}: {exc}") from None


def _runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def _run_history(args: argparse.Namespace) -> int:
    from bulk_update.observe import history

    job, location = _lookup(args)
    records = history.runs(job, location)
    draw.print_table(
        history.COLUMNS,
        history.rows(records),
        title=f"job {job}: {_runs(len(records))}",
        json_text=history.as_json(records) if args.json else None,
    )
    return ExitCode.OK


def _run_status(args: argparse.Namespace) -> int:
    from bulk_update.observe import history

    job, location = _lookup(args)
    found = history.statuses(job, location)
    draw.print_table(
        history.STATUS_COLUMNS,
        history.status_rows(found),
        title=f"job {job}: {_runs(len(found))} going on or unfinished",
        json_text=history.status_as_json(found) if args.json else None,
        hint=history.status_hint(found),
        empty=f"job {job}: no run going on or unfinished",
    )
    return ExitCode.OK


def _run_report(args: argparse.Namespace) -> int:
    from bulk_update.observe import report

    job, location = _lookup(args)
    data = report.write(job, location, args.run, args.output)
    print(f"bulk-update: report of job {job} run {data.record.run_id}: {args.output}",
          file=sys.stderr)  # fmt: skip
    return ExitCode.OK


def _keep_runs(args: argparse.Namespace) -> int:
    """``compact``'s --keep-runs: given, else the job file's keep-runs, else the default; at
    least 1 (the job's last run keeps its outcomes)."""
    from bulk_update.config import default_of
    from bulk_update.jobfile import load_job_file

    keep = args.keep_runs
    source = "--keep-runs"
    if keep is None and args.job:
        in_file = {k.replace("-", "_"): v for k, v in load_job_file(args.job).items()}
        keep, source = in_file.get("keep_runs"), f"{args.job}: keep-runs"
    if keep is None:
        return int(default_of("keep_runs"))
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise ConfigError(
            f"{source} = {keep!r}: compact keeps the outcomes of each shard's last N runs, N at "
            "least 1 (keep-runs 0 means a run compacts nothing): give --keep-runs N"
        )
    return keep


def _run_compact(args: argparse.Namespace) -> int:
    from bulk_update.observe import history

    job, location = _lookup(args)
    keep = _keep_runs(args)
    done = history.compact(job, location, keep)
    runs = ", ".join(str(run_id) for run_id in done.runs) or "none"
    space = (
        "the file vacuumed" if location.url is None
        else "the outcomes table vacuumed: its space is reused by later runs"
    )  # fmt: skip
    print(f"bulk-update: job {job}: compacted {_runs(len(done.runs))} ({runs}), "
          f"{done.rows} outcomes dropped, keeping each shard's last {keep} runs' outcomes; "
          f"{space}", file=sys.stderr)  # fmt: skip
    return ExitCode.OK


def _run_emulator(args: argparse.Namespace) -> int:
    from bulk_update.emulator import EXTRA_HINT, EmulatorConfig, missing_dependency

    missing = missing_dependency()
    if missing is not None:
        raise ConfigError(f"{EXTRA_HINT} ({missing} is not installed)")
    from bulk_update.emulator.server import serve

    try:
        settings = {name: getattr(args, name, None) for name in defaults(EmulatorConfig)}
        config = EmulatorConfig(**{k: v for k, v in settings.items() if v is not None})
        serve(
            config,
            host=args.host,
            port=args.port,
            preload=args.preload,
            id_column=args.id_column,
            quoting=args.quoting,
            resource=args.resource,
        )
    except (OSError, ValueError) as exc:
        print(f"bulk-update emulator: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.SIGINT
    return ExitCode.OK


def _run_demo(args: argparse.Namespace) -> int:
    from bulk_update.demo import run_demo

    return run_demo()


class Command(NamedTuple):
    """A subcommand: what runs it, and its groups of options in the order --help lists them."""

    handler: Handler
    groups: tuple[Group, ...] = ()


# The one table of which command takes which options.
COMMANDS: dict[str, Command] = {
    "run": Command(
        partial(_run_job, settle=_as_given),
        (table_files, store_options, resource_option, listing_options, mapping_options,
         sending_options, run_dry_run, restart_option, shard_option, limits_options,
         retry_failed_option, stop_after_failures_option, backup_option, retention_option,
         metrics_options, logging_options),
    ),
    "validate": Command(
        partial(_run_job, settle=_as_validate),
        (table_files, store_options, resource_option, listing_options, mapping_options,
         sending_options, check_server_option, shard_option, limits_options, logging_options),
    ),
    "revert": Command(
        partial(_run_job, settle=_as_revert),
        (results_files, store_options, resource_option, sending_options, revert_dry_run,
         restart_option, limits_options, stop_after_failures_option, metrics_options,
         revert_options, logging_options),
    ),
    "history": Command(_run_history, (lookup_options, json_option)),
    "status": Command(_run_status, (lookup_options, json_option)),
    "report": Command(_run_report, (lookup_options, report_options)),
    "compact": Command(_run_compact, (lookup_options, compact_options)),
    "emulator": Command(_run_emulator, (emulator_options,)),
    "demo": Command(_run_demo),
}  # fmt: skip


class Parser(argparse.ArgumentParser):
    """argparse's parser, but a mistake on the command line is one line, as every other usage
    error is (exit 2): what is wrong, and where to read more, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"bulk-update: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="bulk-update",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bulk-update {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        about = ABOUT[name]
        subparser = commands.add_parser(
            name,
            help=about.help,
            description=about.description,
            epilog=about.epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for group in command.groups:
            group(subparser)
        subparser.set_defaults(handler=command.handler)
    return parser


def console() -> None:
    """The ``bulk-update`` command (and ``python -m bulk_update``), once ``__main__`` has taken
    the signals over and loaded this: ``main``, then its exit code, which a signal arriving as
    the process ends no longer changes."""
    code = main()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)


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
        handler: Handler = args.handler
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
