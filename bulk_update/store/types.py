"""The store's types: what the job hands it and gets back (runs, their records, a timeline's
seconds, a row's timing, where a store is) and the interface every backend gives (``Store``,
``Journal``, ``Budget``, ``StateReader``). A module of its own, importing nothing of the store
but its schema's names, so that the package, its core and its backends all import it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from bulk_update._constants import DEFAULT_STORE_TIMEOUT_S
from bulk_update.exceptions import JobStopped
from bulk_update.outcome import RowOutcome, Status
from bulk_update.store.lease import Holder
from bulk_update.store.schema import TIMING_COLUMNS

__all__ = [
    "REPORT_COLUMNS",
    "TIMELINE_COLUMNS",
    "Budget",
    "Journal",
    "RowTiming",
    "RunBeat",
    "RunEnd",
    "RunKey",
    "RunRecord",
    "RunStatus",
    "Second",
    "StateReader",
    "Store",
    "StoreLocation",
    "report_frame",
    "run_options",
]


@dataclass(frozen=True, slots=True)
class RunKey:
    """What identifies a run: the same key resumes it."""

    job: str
    results: str  # the results path as given
    shard: tuple[int, int] | None

    @property
    def shard_text(self) -> str:
        return "" if self.shard is None else f"{self.shard[0]}/{self.shard[1]}"


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How one invocation of a run ended: what ``Journal.finish`` records."""

    counts: Mapping[str, int]
    exit_code: int
    total_rows: int = 0
    requests: int = 0  # sent by this invocation
    rate_limited: int = 0  # of them, answered 429
    stopped_by: str | None = None  # SIGTERM, SIGINT, or the fatal error's code


@dataclass(frozen=True, slots=True)
class RunBeat:
    """How far an invocation of a run is, at one of its heartbeats (requests and 429s: sent by
    this invocation so far; the store adds what is new since the last beat to the run's)."""

    total_rows: int
    rows_done: int
    requests: int = 0
    rate_limited: int = 0


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a job, as ``history`` shows it (requests and 429s summed over its
    invocations).

    ``requests_exact``: every invocation recorded its end, so ``requests`` and ``rate_limited``
    count all it sent; else (a run going on, or one killed -9 on the way) they count what its
    heartbeats recorded, a lower bound. ``holder``: who last ran it, told well enough that
    ``status`` on its host can say it is gone (None: an older version's run)."""

    run_id: int
    results: str
    shard: str
    input: str | None
    started_at: str
    ended_at: str | None
    invocations: int
    counts: dict[str, int]
    exit_code: int | None
    total_rows: int | None
    requests: int
    rate_limited: int
    stopped_by: str | None
    host: str | None
    pid: int | None
    replaced: bool
    options: dict[str, Any] = field(default_factory=dict)  # as given (never a secret)
    requests_exact: bool = True
    holder: Holder | None = None

    def as_dict(self) -> dict[str, Any]:
        """Its fields for JSON (the holder is told by ``host`` and ``pid``)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "holder"}


@dataclass(frozen=True, slots=True)
class RowTiming:
    """When a worker took a row and when its last answer came (Unix time), and how long that
    last request took: kept per row in the store (not in the results) for ``report``."""

    sent_at: float
    answered_at: float
    latency_ms: int | None


# The outcomes' columns that the store keeps beside the results' own (RowTiming's):
# TIMING_COLUMNS, declared with the tables in store/schema.py.


@dataclass(slots=True)
class Second:
    """One second of a run's timeline (``at``: Unix time, whole seconds): what its requests
    got, and the rate the limiter allowed. Kept per run in the store for ``status`` and
    ``report``."""

    at: int
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    errors: int = 0  # answers that were neither a success nor a 429 (4xx, 5xx, no answer)
    rows: int = 0  # rows finished by a worker (sent or read); not invalid or unchanged ones
    limit_rpm: float | None = None  # the rate the limiter allowed
    announced_rpm: float | None = None  # the limit the server announced, if it did


TIMELINE_COLUMNS = tuple(Second.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A run that is going on, or stopped before its end, as ``status`` shows it.

    ``heartbeat_age_s``: seconds since the run's last heartbeat (None: it never beat, as a run
    of an older version); ``rows_per_s``: rows its workers finished per second over the last
    minute of its timeline."""

    record: RunRecord
    rows_done: int | None
    heartbeat_age_s: float | None
    rows_per_s: float | None


# What ``report`` reads of a run's outcomes, per row.
REPORT_COLUMNS = ("row_number", "status", "http_status", "attempts", "error_code",
                  "error_message", *TIMING_COLUMNS)  # fmt: skip


class StateReader(Protocol):
    """The job's last-set state, read only (a dry run, which writes nothing)."""

    def changed_rows(self, rows: pl.DataFrame) -> list[int]:
        """Of a batch's valid rows (``ROW_NUMBER, conversation_id, sent_metadata``), the row
        numbers whose metadata is not, verbatim, what the job last set: the rows to send."""
        ...


class Journal(StateReader, Protocol):
    """One run's outcomes, and the job's state as the run changes it. Opened by
    ``Store.open_run``, which holds the run's locks until the journal is closed.

    The plain methods may wait for the store (a file locked by another process, a database that
    is away, up to --store-timeout): call them off the event loop (``asyncio.to_thread``). The
    async ones never block the loop."""

    run_id: int

    def entries_among(self, conversation_ids: list[str]) -> set[str]:
        """Which of these conversations the job's state has an entry for (the ones ``forget``
        must be called for before they are sent: only this run writes their entries)."""
        ...

    async def fence(self) -> None:
        """Before each request of the run: return once this process may send it; raise
        RunTaken (or StoreUnavailable, StoreGone) if it may not any more. The one writer of a
        run is sure of it only while it holds the run's lock; a lock held through a database
        session can be lost with the session, and another process may then take the run over
        (once this one's lease has run out): from then on this one must send nothing. A lock
        file, or the store itself, can be removed under the run (StoreGone): what it records
        from then on no later run would see."""
        ...

    def gone(self) -> JobStopped | None:
        """What took the store away from this run since it opened it, looked at now: its file
        or a lock file removed or replaced (SQLite), its tables dropped or the run taken by
        another process (PostgreSQL); None while the run still holds it. The run stops on it,
        and its results are written from what it still has."""
        ...

    async def seal(self) -> None:
        """The run's sending is over: wait for the writes in progress, and refuse every later
        write of an outcome, so that the counts, the results and the store agree."""
        ...

    def hurry(self, seconds: float) -> None:
        """The job is stopping (a signal): no wait for the store goes on more than ``seconds``
        from now (a row whose outcome cannot be committed by then stays unprocessed: the
        re-run sends it again, as after a kill -9)."""
        ...

    async def forget(self, conversation_id: str) -> None:
        """Before a row is sent: from now until the API confirms, its state is unknown. Returns
        once that is committed."""
        ...

    async def record(self, outcome: RowOutcome, timing: RowTiming | None = None) -> None:
        """Commit one sent (or read) row's outcome, with its state entry if the server
        confirmed its values (``updated``, or ``unchanged`` after a read); return once it is
        committed."""
        ...

    async def beat(self, beat: RunBeat, seconds: Iterable[Second]) -> None:
        """The run's heartbeat (every few seconds while it runs): how far it is, and the
        timeline's seconds since the last one. The run's requests and 429s count what this
        invocation sent up to now (``finish`` adds the rest), so that a run killed -9 shows
        them. Never blocks the event loop for long (a database that is away is waited for off
        the loop)."""
        ...

    def record_many(self, outcomes: Iterable[RowOutcome]) -> None:
        """Commit the outcomes of rows that were not sent (invalid), in one transaction."""
        ...

    def record_unchanged(self, rows: pl.DataFrame) -> None:
        """Commit a batch's ``unchanged`` rows (``ROW_NUMBER, conversation_id,
        sent_metadata``); found unchanged against --since-state, their entries are copied into
        this job's state in the same transaction."""
        ...

    def finished_between(self, first: int, last: int) -> dict[int, Status]:
        """Rows in ``[first, last]`` that a resumed run must not process again."""
        ...

    def before_images_between(self, first: int, last: int) -> dict[int, str]:
        """Rows in ``[first, last]`` not finished, whose before-image (``--backup``) an earlier
        invocation kept before it sent them: row number -> the image (JSON text)."""
        ...

    def finished_counts_between(self, first: int, last: int) -> dict[Status, int]:
        """How many rows in ``[first, last]`` are finished, by status."""
        ...

    def finished_count(self) -> int:
        """Rows finished by earlier runs: a resumed run does not process them again."""
        ...

    def rows_between(self, first: int, last: int) -> list[tuple[Any, ...]]:
        """Outcomes in ``[first, last]`` as tuples in RESULT_COLUMNS order, by row number."""
        ...

    def counts(self) -> dict[str, int]:
        """The run's outcomes by status (rows never journaled are not counted)."""
        ...

    def state_entries(self) -> int:
        """How many conversations the job's state holds."""
        ...

    def finish(self, end: RunEnd) -> None:
        """Record how this invocation of the run ended."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Journal: ...

    def __exit__(self, *exc_info: object) -> None: ...


class Budget(Protocol):
    """The job's shared rate budget: a timeline of request slots (see ``ratelimit``)."""

    def claim(self, count: int, interval_s: float) -> float:
        """Take the next ``count`` slots, ``interval_s`` apart; return how many seconds from
        now the first one is."""
        ...

    def hold_back(self, seconds: float) -> None:
        """No slot of the job's starts before ``seconds`` from now (a 429's retry-after)."""
        ...

    def close(self) -> None: ...


class Store(Protocol):
    """A job's store. ``where`` names it for logs and summaries (never with a password)."""

    where: str

    def open_run(
        self,
        key: RunKey,
        fingerprint: Mapping[str, Any],
        options: Mapping[str, Any],
        *,
        restart: bool = False,
        retry_failed: bool = False,
        since: str | None = None,
    ) -> Journal:
        """Lock the run (JournalError if another process holds it), then find it or start it.
        A run whose fingerprint changed is refused (JournalError) unless ``restart``, which sets
        the old run aside (kept, never deleted) and starts a new one. ``since`` names another
        job's store whose state this run compares with (ConfigError if it is not one)."""
        ...

    def budget(self, job: str) -> Budget:
        """The job's rate budget, shared by its running shards."""
        ...

    def history(self, job: str) -> list[RunRecord]:
        """The job's runs, newest first."""
        ...

    def status(self, job: str) -> list[RunStatus]:
        """The job's runs that are going on or stopped before their end (not replaced), newest
        first."""
        ...

    def proven_requests(self, run_id: int) -> int:
        """The requests a run's committed outcomes prove it sent (the sum of their attempts):
        what its count is at least, when an invocation did not record its end. Reads all the
        run's outcomes."""
        ...

    def timeline(self, run_id: int) -> list[Second]:
        """A run's timeline, every invocation's, in order."""
        ...

    def report_rows(self, run_id: int) -> pl.DataFrame:
        """A run's outcomes, REPORT_COLUMNS, by row number."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc_info: object) -> None: ...


def report_frame(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    """``report_rows``' frame from its rows (REPORT_COLUMNS order)."""
    schema = {
        "row_number": pl.Int64, "status": pl.String, "http_status": pl.Int64,
        "attempts": pl.Int64, "error_code": pl.String, "error_message": pl.String,
        "sent_at": pl.Float64, "answered_at": pl.Float64, "latency_ms": pl.Int64,
    }  # fmt: skip
    assert tuple(schema) == REPORT_COLUMNS
    return pl.DataFrame(rows, schema=schema, orient="row")


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """Where a job's store is: a PostgreSQL URL (``url``), else the SQLite file ``path``."""

    path: Path
    url: str | None = field(default=None, repr=False)
    # How long the store may stay away (a database) or locked by another process (a file).
    timeout: float = DEFAULT_STORE_TIMEOUT_S


def run_options(options: str | None) -> dict[str, Any]:
    """A run's stored options (JSON text)."""
    found = json.loads(options) if options else {}
    return found if isinstance(found, dict) else {}
