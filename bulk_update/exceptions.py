"""The exceptions bulk_update raises, each carrying what is needed to act on it.

BulkUpdateError              base of everything raised on purpose
├── ConfigError              bad options or job file: exit 2, nothing sent
│   └── Unreachable          the API or the store's database could not be reached at the start
│                            (may_pass: a scheduler retries it later)
├── InputError               unreadable input, missing or unknown column: exit 2, nothing sent
├── JournalError             the job's store refuses the run: another run holds it, the input
│   │                        changed since the run began, a file that is no store: exit 2
│   ├── RunHeld              another process holds the run or the job (may_pass)
│   └── StoreDamaged         the store's file is damaged (truncated, garbage inside)
└── JobStopped               stops a run that has started: exit 3, the rest unprocessed,
    │                        resumable once the cause is gone (``error_code`` names it)
    ├── FatalApiError        the API says every later row would fail the same way (401, 403,
    │                        insufficient_quota, a circuit breaker, a failure streak)
    ├── StoreUnavailable     the store's database stayed away (or locked by another process)
    │   │                    past --store-timeout
    │   └── RunTaken         another process took the run while this one's session was lost:
    │                        this one stops sending at once (the other goes on)
    ├── StoreGone            the store was taken away while the run went on (SQLite: its file
    │                        or its lock file removed or replaced; PostgreSQL: its tables
    │                        dropped)
    ├── DiskFull             no space left on the device of a file the job writes
    └── InputChanged         the input was changed while the run read it: its results cannot
                             be rebuilt from it
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from bulk_update.exitcodes import ExitCode

__all__ = [
    "BulkUpdateError",
    "ConfigError",
    "DiskFull",
    "FatalApiError",
    "InputChanged",
    "InputError",
    "JobStopped",
    "JournalError",
    "RunHeld",
    "RunTaken",
    "StoreDamaged",
    "StoreGone",
    "StoreUnavailable",
    "Unreachable",
    "first_line",
    "is_disk_full",
    "stop_code",
]


class BulkUpdateError(Exception):
    """Base class of the errors bulk_update raises on purpose. ``may_pass``: an error before
    anything was sent whose cause may go away by itself (a server down for a deploy, a run held
    by a process that ends): still exit 2 for the CLI (nothing was sent), but a scheduler's
    retry later may succeed (the Airflow operator retries these, and fails the rest at once)."""

    exit_code: ExitCode = ExitCode.USAGE
    may_pass: bool = False


class ConfigError(BulkUpdateError):
    """Options or a job file that cannot work."""


class Unreachable(ConfigError):
    """The API or the store's database did not answer at the start (refused, timed out, a
    server that is starting): nothing was sent."""

    may_pass = True


class InputError(BulkUpdateError):
    """The input cannot be read or does not have the columns asked for."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class JournalError(BulkUpdateError):
    """The job's store cannot be used for this run."""


class RunHeld(JournalError):
    """Another process holds the run (or the whole job, or a shard of another count): it may
    end, or its lease run out."""

    may_pass = True


class StoreDamaged(JournalError):
    """The store's file is not a whole store any more (emptied, or garbage inside)."""


class JobStopped(BulkUpdateError):
    """A run that has started cannot go on: the rows not finished stay ``unprocessed`` and the
    same command resumes once the cause is gone. ``error_code`` is what the results and the
    run's history name it by."""

    exit_code = ExitCode.FATAL
    error_code: str | None = "job_stopped"


class FatalApiError(JobStopped):
    """An API answer that stops the whole job: every later row would fail the same way."""

    def __init__(self, message: str, *, http_status: int | None, error_code: str | None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code


class StoreUnavailable(JobStopped):
    """The store's database could not be reached again in time (or stayed locked by another
    process): the job stops, resumable."""

    error_code = "store_unavailable"


class RunTaken(StoreUnavailable):
    """Another process holds the run now (this one's session with the store was lost, and the
    other took the run over once this one's lease ran out): this one sends nothing more."""

    error_code = "run_taken"


class StoreGone(JobStopped):
    """The store this run opened is not where it was any more: removed or replaced under the
    running job (SQLite's file or the run's lock file; PostgreSQL's tables dropped, or the
    database made anew). The run stops sending at once: what it records from then on would be
    seen by no later run, and another run of the job could start beside it."""

    error_code = "store_gone"


class DiskFull(JobStopped):
    """No space left on the device of ``path`` (the store, the results, a temporary file)."""

    error_code = "disk_full"

    def __init__(self, path: str, detail: str = "no space left on device") -> None:
        # Not "to resume": a dry run, stopped alike, has nothing to resume (a run resumes).
        super().__init__(
            f"{path}: the disk is full ({detail}); free space, then run the same command again"
        )
        self.path = path


def stop_code(exc: BaseException) -> str:
    """What a run's history says stopped it, for an error raised out of the run."""
    if isinstance(exc, JobStopped):
        return exc.error_code or "job_stopped"
    if isinstance(exc, ConfigError):
        return "config_error"
    if isinstance(exc, InputError):
        return "input_error"
    if isinstance(exc, JournalError):
        return "store_error"
    return "internal_error"


class InputChanged(JobStopped):
    """An input file was changed (or replaced) while the run went on: the results, rebuilt from
    the input at the end, would not match what was sent."""

    error_code = "input_changed"


# OSError numbers that mean the disk (or the user's quota on it) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """An OSError of a full disk, or a polars/pyarrow error that wraps one (their messages keep
    the OS's words, not the errno)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    text = str(exc)
    return "No space left on device" in text or "Disk quota exceeded" in text


def first_line(
    exc: BaseException, *, named: bool = False, scrub: Callable[[str], str] | None = None
) -> str:
    """An exception's message, first line only (polars' run to screens), for a one-line error;
    ``named``: after its type's name (``OSError: ...``), for a warning about a library's
    error; ``scrub``: what takes a secret out of the message first (the store's password)."""
    message = str(exc) if scrub is None else scrub(str(exc))
    text = message.strip().splitlines()
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text[0][:300]}" if named else text[0][:300]
