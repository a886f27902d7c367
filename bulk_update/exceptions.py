"""The exceptions bulk_update raises, each carrying what is needed to act on it.

BulkUpdateError              base of everything raised on purpose
├── ConfigError              bad options or job file: exit 2, nothing sent
├── InputError               unreadable input, missing or unknown column: exit 2, nothing sent
├── JournalError             the job's store refuses the run: another run holds it, or
│                            the input changed since the run began: exit 2, nothing sent
├── StoreUnavailable         the store's database stayed away past --store-timeout: exit 3,
│                            resumable
└── FatalApiError            the API says every later row would fail the same way
                             (401, 403, insufficient_quota, a circuit breaker): exit 3
"""

from __future__ import annotations

from bulk_update.exitcodes import ExitCode


class BulkUpdateError(Exception):
    """Base class of the errors bulk_update raises on purpose."""

    exit_code: ExitCode = ExitCode.USAGE


class ConfigError(BulkUpdateError):
    """Options or a job file that cannot work."""


class InputError(BulkUpdateError):
    """The input cannot be read or does not have the columns asked for."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class JournalError(BulkUpdateError):
    """The job's store cannot be used for this run."""


class StoreUnavailable(BulkUpdateError):
    """The store's database could not be reached again in time (or the run's lock was lost
    while it was away): the job stops as on a fatal API error, resumable."""

    exit_code = ExitCode.FATAL


class FatalApiError(BulkUpdateError):
    """An API answer that stops the whole job: every later row would fail the same way."""

    exit_code = ExitCode.FATAL

    def __init__(self, message: str, *, http_status: int | None, error_code: str | None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (polars' run to screens), for a one-line error."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
