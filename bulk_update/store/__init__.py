"""The store: everything a job must remember between runs, behind one small interface.

A job's store holds

- its **runs**: one per job name + results path (as given) + shard, with the fingerprint of its
  input and mapping, its options, when it started and ended, its counts and exit code. A re-run
  of the same command finds its run and resumes it; a new results path starts a new run, and
  so does a new input after a run that finished (one that did not is refused it);
- each run's **outcomes** (the journal): one row per input row the run has sent, tried or
  found invalid; its ``unchanged`` rows are a count, one row per batch (``unchanged_spans``: which
  rows they are), from which the results rebuild them;
- the job's **last-set state**: per conversation ID, the metadata the job last set and when
  the API confirmed it (incremental runs);
- its **locks**: one writer per run, shards of a job side by side but never one shard twice;
- its **rate budget**: one timeline of request slots that the job's running shards share, so
  that together they never exceed ``--rpm`` and a shard left alone gets all of it.

Two rules keep it honest, whatever stops a run (kill -9 included):

- an ``updated`` outcome and its state entry commit in one transaction;
- a row's state entry is deleted before the row is sent: until the API confirms, the job does
  not know what the server holds, and a row it does not know about is sent next time.

The job sees only what this module exports (``__all__``): the interface is ``core.Store`` and
``core.Journal``, over one of two backends: ``sqlite.py`` (one file per job,
``<state-dir>/<job-name>.sqlite``) or ``postgres.py`` (``--state-url``, for many machines).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from bulk_update._lazy import lazy

if TYPE_CHECKING:
    from bulk_update.store.core import (
        Journal,
        Store,
        unfinished_because,
        unfinished_statuses,
    )
    from bulk_update.store.outage import Hurry
    from bulk_update.store.schema import TIMESTAMP_FORMAT, TIMING_COLUMNS, format_timestamp
    from bulk_update.store.types import (
        REPORT_COLUMNS,
        TIMELINE_COLUMNS,
        Budget,
        RowTiming,
        RunBeat,
        RunEnd,
        RunKey,
        RunRecord,
        RunStatus,
        Second,
        Settled,
        StateReader,
        StoreLocation,
        report_frame,
        run_options,
    )

__all__ = [
    "POSTGRES_HINT",
    "REPORT_COLUMNS",
    "TIMELINE_COLUMNS",
    "TIMESTAMP_FORMAT",
    "TIMING_COLUMNS",
    "Budget",
    "Hurry",
    "Journal",
    "RowTiming",
    "RunBeat",
    "RunEnd",
    "RunKey",
    "RunRecord",
    "RunStatus",
    "Second",
    "Settled",
    "StateReader",
    "Store",
    "StoreLocation",
    "format_timestamp",
    "jobs_that_wrote",
    "open_existing_store",
    "open_store",
    "read_state",
    "report_frame",
    "run_options",
    "unfinished_because",
    "unfinished_statuses",
]

# Where each name lives (the imports above, for type checkers, say the same). Loaded when first
# asked for (PEP 562): ``bulk_update.config`` imports ``store.url`` (a submodule loads its
# package first), and the operator's module imports the config in every process that parses a
# DAG; the backends, and polars, load when a job opens its store.
_HOMES = {
    **dict.fromkeys(("Journal", "Store", "unfinished_because", "unfinished_statuses"), "core"),
    "Hurry": "outage",
    **dict.fromkeys(("TIMESTAMP_FORMAT", "TIMING_COLUMNS", "format_timestamp"), "schema"),
    **dict.fromkeys(
        ("REPORT_COLUMNS", "TIMELINE_COLUMNS", "Budget", "RowTiming", "RunBeat", "RunEnd",
         "RunKey", "RunRecord", "RunStatus", "Second", "Settled", "StateReader", "StoreLocation",
         "report_frame", "run_options"),
        "types",
    ),
}  # fmt: skip

__getattr__ = lazy(__name__, _HOMES)


POSTGRES_HINT = "the store in PostgreSQL needs psycopg: pip install 'bulk-update[postgres]'"


def _backend(location: StoreLocation) -> Any:
    """The module of the location's backend (PostgreSQL's is imported only when used)."""
    if location.url is None:
        from bulk_update.store import sqlite

        return sqlite
    try:
        from bulk_update.store import postgres
    except ImportError as exc:
        from bulk_update.exceptions import ConfigError

        raise ConfigError(f"--state-url: {POSTGRES_HINT} ({exc})") from None
    return postgres


def open_store(location: StoreLocation, hurry: Hurry | None = None) -> Store:
    """The job's store, created if need be. ``hurry``: the job's, made before the store is
    opened: a signal while it opens (held by another process, or frozen) ends its waits, as
    it ends them later in the run."""
    if location.url is not None:
        store: Store = _backend(location).PostgresStore.open(
            location.url, timeout=location.timeout, hurry=hurry
        )
        return store
    from bulk_update.store.sqlite import SQLiteStore

    return SQLiteStore.open(location.path, timeout=location.timeout, hurry=hurry)


def open_existing_store(location: StoreLocation, job: str, *, write: bool = False) -> Store:
    """A job's store that must exist already, for a command that only reads it (``history``,
    ``status``, ``report``): ConfigError if there is none. A SQLite store is opened read only,
    unless the command writes it (``write``: ``compact``)."""
    if location.url is not None:
        return open_store(location)
    if not location.path.is_file():
        from bulk_update.exceptions import ConfigError

        raise ConfigError(
            f"{location.path}: no store of job {job!r} (give --state-dir or --state-url as its "
            "runs had them)"
        )
    if write:
        return open_store(location)
    from bulk_update.store.sqlite import SQLiteStore

    return SQLiteStore.open_to_read(location.path, timeout=location.timeout)


def jobs_that_wrote(location: StoreLocation, results: list[str] | None = None) -> list[str]:
    """The jobs with a run whose results path (as given) is one of ``results`` (None: any):
    in the PostgreSQL store, or in the SQLite stores of ``location.path``'s directory (one per
    job). Reads only, creates nothing: how a revert finds the job of the results it reverts,
    and a new job the jobs beside it."""
    found: list[str] = _backend(location).jobs_that_wrote(location, results)
    return found


def read_state(
    location: StoreLocation, job: str, since: str | None = None
) -> contextlib.AbstractContextManager[StateReader | None]:
    """The state a dry run compares with: ``since``'s if given, else the job's own; None if the
    job has never set anything. Reads only, creates nothing."""
    reading: contextlib.AbstractContextManager[StateReader | None]
    reading = _backend(location).read_state(location, job, since)
    return reading
