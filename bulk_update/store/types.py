"""The store's types: what the job hands it and gets back (runs, their records, a timeline's
seconds, a row's timing, where a store is), and the protocols of a store's parts (``Budget``,
``StateReader``; the store and its journal are ``core.Store`` and ``core.Journal``). A module
of its own, importing of the store only its schema and lease (leaves), so that the package, its
core and its backends all import it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from bulk_update._constants import DEFAULT_STORE_TIMEOUT_S
from bulk_update.store.lease import Holder
from bulk_update.store.schema import TIMING_COLUMNS


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
    this invocation so far; the store adds what is new since the last beat to the run's).
    ``counts``: the run's finished rows by status (earlier invocations' too), whose sum is
    ``rows_done``: ``status`` and ``history`` show them while the run goes on."""

    total_rows: int
    rows_done: int
    requests: int = 0
    rate_limited: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a job, as ``history`` shows it (requests and 429s summed over its
    invocations).

    ``requests_exact``: every invocation recorded its end, so ``requests`` and ``rate_limited``
    count all it sent; else (a run going on, or one killed -9 on the way) they count what its
    heartbeats recorded, a lower bound. ``holder``: who last ran it, told well enough that
    ``status`` on its host can say it is gone (None: an older version's run).
    ``compacted_at``: when the job's retention dropped its outcomes (``Store.compact``)."""

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
    # When the retention dropped its outcomes (None: it has them): its counts stay.
    compacted_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Its fields for JSON (the holder is told by ``host`` and ``pid``)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "holder"}


@dataclass(frozen=True, slots=True)
class Settled:
    """What ``Store.settle`` found of a sharded job's run (its ``shards`` shards): the shards
    whose run has not settled in it yet (``waiting``); and ``runs``, each shard's run in shard
    order, when this settle ended the job's run (empty otherwise: it is not over, or another
    shard announced it)."""

    shards: int
    waiting: tuple[str, ...]
    runs: tuple[RunRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class RowTiming:
    """When a worker took a row and when its last answer came (Unix time), and how long that
    last request took: kept per row in the store (not in the results) for ``report``."""

    sent_at: float
    answered_at: float
    latency_ms: int | None


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


# What ``report`` reads of a run's outcomes, per row, and its types.
_REPORT_SCHEMA = {
    "row_number": pl.Int64, "status": pl.String, "http_status": pl.Int64,
    "attempts": pl.Int64, "error_code": pl.String, "error_message": pl.String,
    "sent_at": pl.Float64, "answered_at": pl.Float64, "latency_ms": pl.Int64,
}  # fmt: skip
REPORT_COLUMNS = tuple(_REPORT_SCHEMA)
assert REPORT_COLUMNS[6:] == TIMING_COLUMNS


class StateReader(Protocol):
    """The job's last-set state, read only (a dry run, which writes nothing)."""

    def changed_rows(self, rows: pl.DataFrame) -> list[int]:
        """Of a batch's valid rows (``ROW_NUMBER, conversation_id, sent_metadata``), the row
        numbers whose metadata is not, verbatim, what the job last set: the rows to send."""
        ...


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


def report_frame(rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    """``report_rows``' frame from its rows (REPORT_COLUMNS order)."""
    return pl.DataFrame(rows, schema=_REPORT_SCHEMA, orient="row")


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
