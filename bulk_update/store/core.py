"""What both stores do alike, written once over a small dialect.

The run's lifecycle (find it, resume it, set it aside on ``--restart``, refuse a changed
fingerprint, start it), the journal's reads, the run record (``history``, ``status``,
``timeline``, ``report_rows``) and the heartbeat's bookkeeping are the same steps in SQLite and
in PostgreSQL: they live here, in ``Store`` and ``Journal``, as httpx's ``BaseClient``
holds what its sync and async clients share. A backend subclasses them and says only how a
piece of work reaches its database (a transaction retried on its outage clock, a read) and
what is its own: its locks, its writer, its budget, PostgreSQL's reconnection and lease.

The statements are written once, with named parameters (``:name``) and the ``Dialect``'s
fragments in braces (``{now}``, ``{rows}`` …); ``Dialect.prepare`` turns one into the backend's
SQL, once. The hot path's statements (an outcome's commit, ``last_set``, a batch's comparison)
are not here: the journal's writes are, but each backend commits them with its own statements,
tuned to its database.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Self, TypeVar

import polars as pl

from bulk_update.exceptions import JobStopped, JournalError
from bulk_update.outcome import ROW_NUMBER, RowOutcome, Status
from bulk_update.store import schema
from bulk_update.store.lease import Holder, this_process
from bulk_update.store.schema import TIMELINE, TIMING_COLUMNS, format_timestamp
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
    StateReader,
    report_frame,
    run_options,
)

__all__ = [
    "BudgetCore",
    "Connection",
    "Dialect",
    "Journal",
    "Opening",
    "Recorded",
    "Store",
    "Work",
    "batch_json",
    "changed_fields",
    "changed_rows",
    "entry_metadata",
    "fingerprint_text",
    "jobs_that_wrote",
    "unfinished_statuses",
]

T = TypeVar("T")
log = logging.getLogger("bulk_update")


class Connection(Protocol):
    """What the core asks of a connection (``sqlite3.Connection``, ``psycopg.Connection``)."""

    def execute(self, sql: str, parameters: dict[str, Any], /) -> Any: ...


# A piece of work on a connection: a backend runs it in one transaction (or as one read).
Work = Callable[[Connection], T]
# A sent (or read) row's outcome for the run's writer, with its timing if it was sent.
Recorded = tuple[RowOutcome, RowTiming | None]

assert TIMELINE.names("sqlite") == ("run_id", *TIMELINE_COLUMNS)


# What a run is, and how it changes: the same rules in both backends.


def is_unfinished(record: RunRecord) -> bool:
    """Is the run going on, or did it stop before its rows were done?"""
    return record.ended_at is None or record.counts.get(Status.UNPROCESSED.value, 0) > 0


# ``status``'s rate: rows per second over the last minute of a run's timeline.
RATE_WINDOW_S = 60


def recent_rate(first: int | None, last: int | None, recent_rows: int | None) -> float | None:
    """Rows per second over the last RATE_WINDOW_S seconds of a timeline that spans
    ``[first, last]`` (its own clock: machines' clocks need not agree)."""
    if first is None or last is None:
        return None
    return (recent_rows or 0) / min(RATE_WINDOW_S, last - first + 1)


def run_statuses(
    records: list[RunRecord], details: Mapping[int, tuple[Any, ...]]
) -> list[RunStatus]:
    """``status``'s answer from a store's details per run ID: rows done, seconds since the
    heartbeat, and the timeline's first and last second and rows over its last minute."""
    statuses = []
    for record in records:
        done, age, first, last, recent = details[record.run_id]
        statuses.append(
            RunStatus(
                record,
                None if done is None else int(done),
                None if age is None else max(0.0, float(age)),
                recent_rate(first, last, None if recent is None else int(recent)),
            )
        )
    return statuses


# Rows that a resumed run processes again; with --retry-failed, failed rows too.
_NOT_FINISHED = (Status.UNPROCESSED.value, Status.PLANNED.value)


def unfinished_statuses(retry_failed: bool) -> tuple[str, ...]:
    return (*_NOT_FINISHED, Status.FAILED.value) if retry_failed else _NOT_FINISHED


# The form of a run's fingerprint, marked in it (the first release's is "1").
FINGERPRINT_FORM = "1"


def fingerprint_text(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps({"schema": FINGERPRINT_FORM, **fingerprint}, sort_keys=True)


def changed_fields(stored: str, given: str) -> list[str]:
    """The names that differ between two fingerprints (``fingerprint_text``). The input is
    compared by content (``same_files``): a copy of the file under another path, on another
    machine, is the same input."""
    old, new = json.loads(stored), json.loads(given)
    changed = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if name == "input" and isinstance(before, list) and isinstance(after, list):
            if not same_files(before, after):
                changed.append(name)
        elif before != after:
            changed.append(name)
    return changed


# What says a file's content: its size and a hash of all of it (``read.file_fingerprint``).
CONTENT_KEYS = ("size", "blake2b")


def same_files(before: list[Any], after: list[Any]) -> bool:
    """Do two inputs' fingerprints (one per file, in order) name the same content? Files
    fingerprinted by content compare by content only (a copy under another path is the same
    file); others (object storage: only the path) by what both have."""
    if len(before) != len(after):
        return False
    for old, new in zip(before, after, strict=True):
        if not (isinstance(old, dict) and isinstance(new, dict)):
            return False
        if all(key in old and key in new for key in CONTENT_KEYS):
            keys: Iterable[str] = CONTENT_KEYS
        else:
            keys = old.keys() & new.keys()
        if any(old[key] != new[key] for key in keys):
            return False
    return True


def resumed_options(stored: str | None, given: Mapping[str, Any]) -> str:
    """A resumed run's options (JSON text): this invocation's, shown by ``history``, ``status``
    and ``report``, with every invocation's in order under ``invocations`` (a run resumed with
    another --rpm draws each)."""
    before = run_options(stored)
    earlier = before.pop("invocations", None) or [before]
    current = {key: value for key, value in given.items() if key != "invocations"}
    return json.dumps({**current, "invocations": [*earlier, current]}, sort_keys=True, default=str)


def options_input(options: dict[str, Any]) -> str | None:
    """The input a run's options name."""
    value = options.get("input")
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends in the statements they share: SQL fragments (with
    named parameters of their own) and how a run's rows are numbered."""

    name: schema.Dialect
    # This moment, as a timestamp column holds it (``now``: bound to TIMESTAMP_FORMAT text),
    # and as ``heartbeat_at`` holds it (``clock``: bound to Unix time).
    now: str
    clock: str
    # Seconds since the run ``r``'s last heartbeat.
    age: str
    # Outcomes of the run's rows [first, last]; of all its rows; a row's number; their order.
    rows: str
    run_rows: str
    row: str
    order: str
    # The predicate on the rows of ``last_set`` that are the job's (``job``), if it has one.
    state: str
    # The values of a JSON array parameter: texts (``ids``, a column ``id``), run IDs (``runs``).
    ids: str
    runs: str
    # What follows the insert of a run so that ``inserted`` finds its ID.
    returning: str
    # The budget's clock (Unix seconds: bound as ``clock`` in SQLite, the database's in
    # PostgreSQL), the larger of two values, and the key of a job's budget (``job``).
    budget_clock: str = ":clock"
    greatest: str = "max"
    budget_key: str = "job"
    # A batch's rows (``batch_json``) as a relation ``t(r, i, m)``, and last_set's key of its
    # conversation ID ``t.i``.
    batch: str = ""
    batch_key: str = "t.i"
    # outcomes' key of a run's row 0 (SQLite numbers rows across runs).
    rows_per_run: int = 0
    # The results' columns but row_number, and the timing, as a reader gets them from what
    # outcomes keep (schema.stored_columns, schema.timing_columns).
    stored: str = ""
    timing: str = ""
    # ``last_set``'s key of the conversation ID ``t.id``.
    state_key: str = "t.id"
    # A row's status (its text) from what outcomes keep.
    status: str = "status"

    def prepare(self, template: str) -> str:
        """The backend's SQL for a statement written with ``:name`` parameters and this
        dialect's fragments (once per statement: cached)."""
        return _prepare(self, template)

    def span(self, run_id: int, first: int = 0, last: int = (1 << 32) - 1) -> dict[str, int]:
        """The parameters that select rows ``[first, last]`` of a run (``rows``, ``row``)."""
        base = run_id * self.rows_per_run
        return {"run": run_id, "base": base, "first": base + first, "last": base + last}

    def json_rows(self, parameter: str, table: schema.Table, names: Iterable[str]) -> str:
        """A relation ``t`` with columns ``names`` of ``table``, from a JSON array of objects."""
        if self.name == "sqlite":
            columns = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name in names)
            return f"(SELECT {columns} FROM json_each(:{parameter})) AS t"  # noqa: S608
        types = table.types("postgres")
        declared = ", ".join(f"{name} {types[name]}" for name in names)
        return f"json_to_recordset(CAST(:{parameter} AS json)) AS t({declared})"

    def inserted(self, cursor: Any) -> int:
        """The ID of the run an insert (ending in ``returning``) made."""
        if self.returning:
            return int(cursor.fetchone()[0])
        return int(cursor.lastrowid or 0)


@functools.cache
def _prepare(dialect: Dialect, template: str) -> str:
    fragments = {
        name: getattr(dialect, name)
        for name in (
            "now",
            "clock",
            "age",
            "rows",
            "run_rows",
            "row",
            "order",
            "ids",
            "runs",
            "stored",
            "timing",
            "state_key",
            "status",
            "budget_clock",
            "greatest",
            "budget_key",
            "batch",
            "batch_key",
        )
    }
    state = dialect.state
    text = template.format(
        **fragments,
        where_state=f" WHERE {state}" if state else "",
        and_state=f" AND {state}" if state else "",
    )
    if dialect.name == "postgres":
        text = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", text)
    return text


def _moment(value: Any) -> str:
    """A timestamp as the store shows it: SQLite holds the text, PostgreSQL a datetime."""
    return value if isinstance(value, str) else format_timestamp(value)


def _stamp() -> dict[str, Any]:
    """The parameters of this moment (``{now}``, ``{clock}``)."""
    return {"now": format_timestamp(), "clock": time.time()}


_FIND = (
    "SELECT run_id, fingerprint, options FROM runs WHERE job = :job AND results = :results "
    "AND shard = :shard AND replaced_at IS NULL ORDER BY run_id DESC LIMIT 1"
)
# The run's holder: its host and pid, and what tells it apart from another process that has
# the pid later (lease.Holder). A resumed run whose last invocation never recorded its end
# counts it as interrupted (the expressions read the row as it was).
_RESUME = (
    "UPDATE runs SET resumed_at = {now}, invocations = invocations + 1, ended_at = NULL, "
    "interrupted = interrupted + CASE WHEN ended_at IS NULL THEN 1 ELSE 0 END, "
    "exit_code = NULL, stopped_by = NULL, host = :host, pid = :pid, boot = :boot, "
    "pid_namespace = :pid_namespace, pid_started = :pid_started, options = :options "
    "WHERE run_id = :run"
)
# RunRecord's fields that are the runs table's columns, and what its others are made of: the
# holder (lease.Holder), whether every invocation recorded its end, and whether it was set aside.
_AS_STORED = tuple(f for f in RunRecord.__dataclass_fields__ if f in schema.RUNS.names("sqlite"))
_HISTORY = (
    f"SELECT {', '.join(_AS_STORED)}, boot, pid_namespace, pid_started, interrupted, "  # noqa: S608
    "replaced_at IS NOT NULL AS replaced FROM runs WHERE job = :job ORDER BY run_id DESC"
)
# The requests a run's committed outcomes prove it sent.
_PROVEN = "SELECT sum(attempts) FROM outcomes WHERE {run_rows}"
_LAST = "(SELECT max(at) FROM timeline WHERE run_id = r.run_id)"
_STATUS = (
    "SELECT r.run_id, r.rows_done, {age}, "  # noqa: S608
    f"(SELECT min(at) FROM timeline WHERE run_id = r.run_id), {_LAST}, "
    "(SELECT sum(rows) FROM timeline WHERE run_id = r.run_id "
    f"AND at > {_LAST} - {RATE_WINDOW_S}) FROM runs AS r WHERE r.run_id IN ({{runs}})"
)
_TIMELINE = f"SELECT {', '.join(TIMELINE_COLUMNS)} FROM timeline WHERE run_id = :run ORDER BY at"  # noqa: S608
assert REPORT_COLUMNS[1:6] == ("status", "http_status", "attempts", "error_code", "error_message")
assert REPORT_COLUMNS[6:] == TIMING_COLUMNS
_REPORT = (
    "SELECT {row}, {status}, http_status, attempts, error_code, error_message, {timing} "
    "FROM outcomes WHERE {rows} ORDER BY {order}"
)


@dataclass(frozen=True, slots=True)
class Opening:
    """What ``open_run`` was asked for: the run, its fingerprint (``fingerprint_text``) and
    options, whether to set the run aside (--restart), the statuses a resumed run processes
    again, and the job whose state to compare with (--since-state)."""

    key: RunKey
    fingerprint: str
    options: Mapping[str, Any]
    restart: bool
    unfinished: tuple[str, ...]
    since: str | None


def _holding() -> dict[str, Any]:
    """The columns of runs that say who holds a run: this process."""
    holder = this_process()
    return {"host": holder.host, "pid": holder.pid, "boot": holder.boot,
            "pid_namespace": holder.pid_namespace, "pid_started": holder.started}  # fmt: skip


def _starting(opening: Opening) -> dict[str, Any]:
    """What a run records as it starts, by column of runs (``started_at`` is the store's
    clock)."""
    key = opening.key
    options = json.dumps(dict(opening.options), sort_keys=True, default=str)
    return {"job": key.job, "results": key.results, "shard": key.shard_text,
            "fingerprint": opening.fingerprint, "options": options, **_holding()}  # fmt: skip


def _find_or_start(dialect: Dialect, opening: Opening, conn: Connection) -> int | str:
    """The run's ID, found (and resumed) or started; or, if its input or mapping changed, the
    names that did."""
    key, fingerprint, options = opening.key, opening.fingerprint, opening.options
    given = {"job": key.job, "results": key.results, "shard": key.shard_text, **_stamp()}
    found = conn.execute(dialect.prepare(_FIND), given).fetchone()
    if found is not None and opening.restart:
        conn.execute(
            dialect.prepare("UPDATE runs SET replaced_at = {now} WHERE run_id = :run"),
            {**given, "run": found[0]},
        )
        found = None
    if found is None:
        values = _starting(opening)
        start = (
            f"INSERT INTO runs ({', '.join(values)}, started_at) "  # noqa: S608
            f"VALUES ({', '.join(f':{name}' for name in values)}, {{now}}){dialect.returning}"
        )
        return dialect.inserted(conn.execute(dialect.prepare(start), {**values, **_stamp()}))
    run_id, stored, stored_options = found
    changed = changed_fields(stored, fingerprint) if stored != fingerprint else []
    if changed:
        return ", ".join(changed)
    resumed = resumed_options(stored_options, options)
    resuming = {**given, **_holding(), "options": resumed, "run": run_id}
    conn.execute(dialect.prepare(_RESUME), resuming)
    return int(run_id)


def _holder(row: Mapping[str, Any]) -> Holder | None:
    """Who holds a run (a row of runs), if it told enough."""
    host, pid, boot, namespace, started = (
        row[name] for name in ("host", "pid", "boot", "pid_namespace", "pid_started")
    )
    if host is None or pid is None or not (boot and namespace and started):
        return None
    return Holder(host, boot, namespace, int(pid), started)


def _record(row: Mapping[str, Any]) -> RunRecord:
    """A run as ``history`` shows it, from its row of runs (``_HISTORY``), read by name."""
    options, ended_at, counts = run_options(row["options"]), row["ended_at"], row["counts"]
    made = {
        "run_id": int(row["run_id"]), "options": options, "input": options_input(options),
        "started_at": _moment(row["started_at"]),
        "ended_at": _moment(ended_at) if ended_at else None,
        "counts": json.loads(counts) if counts else {}, "requests": int(row["requests"] or 0),
        "rate_limited": int(row["rate_limited"] or 0), "replaced": bool(row["replaced"]),
        "requests_exact": ended_at is not None and not row["interrupted"], "holder": _holder(row),
    }  # fmt: skip
    return RunRecord(**{**{name: row[name] for name in _AS_STORED}, **made})


class _Closing:
    """Closed after use, as a ``with`` block closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Store(_Closing):
    """A job's store, what the job sees of either backend: the run's lifecycle and its record
    are done here alike. ``where`` names it for logs and summaries (never with a password). A
    backend sets ``where`` and ``_dialect`` and says how work reaches its database
    (``_transact``, ``_read``), how it locks and opens a run (``_open_run``), its budget."""

    where: str
    _dialect: Dialect

    def _transact(self, work: Work[T]) -> T:
        """``work`` in one transaction, tried again as the backend does."""
        raise NotImplementedError

    def _read(self, work: Work[T]) -> T:
        """``work``, which only reads."""
        raise NotImplementedError

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
        job's store whose state this run compares with (ConfigError if it is not one). The
        backend locks the run, finds or starts it (``_find_or_start``) and opens its journal
        (``_open_run``)."""
        unfinished = unfinished_statuses(retry_failed)
        opening = Opening(key, fingerprint_text(fingerprint), options, restart, unfinished, since)
        return self._open_run(opening)

    def _open_run(self, opening: Opening) -> Journal:
        raise NotImplementedError

    def _find_or_start(self, opening: Opening) -> int:
        """The run's ID, found or started."""
        key = opening.key
        found = self._transact(functools.partial(_find_or_start, self._dialect, opening))
        if isinstance(found, str):
            raise JournalError(
                f"{self.where}: the run for {key.results} was started with another input or "
                f"mapping (changed: {found}); run with --restart to start over (the old run is "
                "kept in the store)"
            )
        return found

    def _fetch(self, template: str, parameters: dict[str, Any]) -> list[Any]:
        sql = self._dialect.prepare(template)
        return self._read(lambda conn: conn.execute(sql, parameters).fetchall())

    def _fetch_named(self, template: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows a read finds, each by column name."""
        sql = self._dialect.prepare(template)

        def read(conn: Connection) -> list[dict[str, Any]]:
            cursor = conn.execute(sql, parameters)
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        return self._read(read)

    def history(self, job: str) -> list[RunRecord]:
        """The job's runs, newest first."""
        return [_record(row) for row in self._fetch_named(_HISTORY, {"job": job})]

    def proven_requests(self, run_id: int) -> int:
        """The requests a run's committed outcomes prove it sent (the sum of their attempts):
        what its count is at least, when an invocation did not record its end. Reads all the
        run's outcomes."""
        rows = self._fetch(_PROVEN, self._dialect.span(run_id))
        return int(rows[0][0] or 0)

    def status(self, job: str) -> list[RunStatus]:
        """The job's runs that are going on or stopped before their end (not replaced), newest
        first."""
        records = [r for r in self.history(job) if not r.replaced and is_unfinished(r)]
        if not records:
            return []
        runs = json.dumps([r.run_id for r in records])
        rows = self._fetch(_STATUS, {"runs": runs, **_stamp()})
        return run_statuses(records, {row[0]: row[1:] for row in rows})

    def timeline(self, run_id: int) -> list[Second]:
        """A run's timeline, every invocation's, in order."""
        return [Second(*row) for row in self._fetch(_TIMELINE, {"run": run_id})]

    def report_rows(self, run_id: int) -> pl.DataFrame:
        """A run's outcomes, REPORT_COLUMNS, by row number."""
        return report_frame(self._fetch(_REPORT, self._dialect.span(run_id)))

    def budget(self, job: str) -> Budget:
        """The job's rate budget, shared by its running shards."""
        raise NotImplementedError


_ADD_SECONDS = (
    f"INSERT INTO timeline (run_id, {', '.join(TIMELINE_COLUMNS)}) "  # noqa: S608
    f"SELECT :run, {', '.join(TIMELINE_COLUMNS)} FROM {{seconds}} WHERE TRUE "
    "ON CONFLICT (run_id, at) DO UPDATE SET "
    + ", ".join(f"{n} = timeline.{n} + excluded.{n}" for n in TIMELINE_COLUMNS[1:6])
    + ", limit_rpm = excluded.limit_rpm, announced_rpm = excluded.announced_rpm"
)
_BEAT = (
    "UPDATE runs SET heartbeat_at = {clock}, rows_done = :rows_done, total_rows = :total_rows, "
    "counts = :counts, requests = requests + :requests, "
    "rate_limited = rate_limited + :rate_limited WHERE run_id = :run"
)
_END = (
    "UPDATE runs SET ended_at = {now}, counts = :counts, exit_code = :exit_code, "
    "total_rows = :total_rows, requests = requests + :requests, "
    "rate_limited = rate_limited + :rate_limited, stopped_by = :stopped_by WHERE run_id = :run"
)
_FINISHED_BETWEEN = "SELECT {row}, {status} FROM outcomes WHERE {rows} AND {status} NOT IN (%U)"
_BEFORE_IMAGES = (
    "SELECT {row}, previous_metadata FROM outcomes WHERE {rows} AND {status} = :unprocessed "
    "AND previous_metadata IS NOT NULL"
)
_FINISHED_COUNTS = (
    "SELECT {status}, count(*) FROM outcomes WHERE {rows} AND {status} NOT IN (%U) GROUP BY 1"
)
_FINISHED_COUNT = "SELECT count(*) FROM outcomes WHERE {run_rows} AND {status} NOT IN (%U)"
_ROWS = "SELECT {row}, {stored} FROM outcomes WHERE {rows} ORDER BY {order}"
_COUNTS = "SELECT {status}, count(*) FROM outcomes WHERE {run_rows} GROUP BY 1"
_ENTRIES = "SELECT count(*) FROM last_set{where_state}"
_ENTRIES_AMONG = (
    "SELECT t.id FROM ({ids}) AS t WHERE EXISTS "
    "(SELECT 1 FROM last_set WHERE conversation_id = {state_key}{and_state})"
)


class Journal(_Closing, StateReader):
    """One run's outcomes, and the job's state as the run changes it. Opened by
    ``Store.open_run``, which holds the run's locks until the journal is closed.

    The plain methods may wait for the store (a file locked by another process, a database that
    is away, up to --store-timeout): call them off the event loop (``asyncio.to_thread``). The
    async ones never block the loop.

    Its reads and the bookkeeping of its heartbeats and its end are done here alike. A backend
    sets ``run_id``, ``_dialect`` and ``_job`` (its state's key: PostgreSQL's job ID), calls
    ``_unfinished_are``, says how work reaches its database, and commits outcomes its way
    (``_submit`` to its grouping writer, ``_commit_outcomes``, ``_commit_unchanged``)."""

    run_id: int
    _dialect: Dialect
    _job: int | None = None
    # This invocation's requests and 429s already added to the run's (by heartbeats).
    _counted = (0, 0)

    def _unfinished_are(self, unfinished: tuple[str, ...]) -> None:
        """The statuses a resumed run processes again (``status NOT IN`` them: ``%U``)."""
        names = [f"u{n}" for n in range(len(unfinished))]
        self._unfinished = dict(zip(names, unfinished, strict=True))
        marks = ", ".join(f":{name}" for name in names)
        self._sql = {
            template: self._dialect.prepare(template.replace("%U", marks))
            for template in (_FINISHED_BETWEEN, _FINISHED_COUNTS, _FINISHED_COUNT)
        }

    def _query(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        """The rows a read of the run's store finds (as the backend reads)."""
        raise NotImplementedError

    async def _commit_beat(self, work: Work[object]) -> None:
        """Commit a heartbeat's work (as the backend writes on the event loop)."""
        raise NotImplementedError

    def _commit_end(self, work: Work[object]) -> None:
        """Commit the run's end (blocking the calling thread)."""
        raise NotImplementedError

    # Writing

    async def beat(self, beat: RunBeat, seconds: Iterable[Second]) -> None:
        """The run's heartbeat (every few seconds while it runs): how far it is, and the
        timeline's seconds since the last one. The run's requests and 429s count what this
        invocation sent up to now (``finish`` adds the rest), so that a run killed -9 shows
        them. Never blocks the event loop for long (a database that is away is waited for off
        the loop)."""
        dialect = self._dialect
        timeline = json.dumps([asdict(second) for second in seconds])
        add = dialect.prepare(
            _ADD_SECONDS.replace("{seconds}", dialect.json_rows("t", TIMELINE, TIMELINE_COLUMNS))
        )
        beat_sql = dialect.prepare(_BEAT)
        requests, rate_limited = self._counted
        parameters = {
            "run": self.run_id, "t": timeline, "rows_done": beat.rows_done,
            "total_rows": beat.total_rows, "counts": json.dumps(dict(beat.counts), sort_keys=True),
            "requests": beat.requests - requests,
            "rate_limited": beat.rate_limited - rate_limited, **_stamp(),
        }  # fmt: skip

        def write(conn: Connection) -> None:
            if timeline != "[]":
                conn.execute(add, parameters)
            conn.execute(beat_sql, parameters)

        await self._commit_beat(write)
        self._counted = (beat.requests, beat.rate_limited)

    def finish(self, end: RunEnd) -> None:
        """Record how this invocation of the run ended."""
        sql = self._dialect.prepare(_END)
        parameters = {
            "run": self.run_id, "counts": json.dumps(dict(end.counts), sort_keys=True),
            "exit_code": end.exit_code, "total_rows": end.total_rows,
            "requests": end.requests - self._counted[0],
            "rate_limited": end.rate_limited - self._counted[1], "stopped_by": end.stopped_by,
            **_stamp(),
        }  # fmt: skip
        self._commit_end(lambda conn: conn.execute(sql, parameters))
        self._counted = (end.requests, end.rate_limited)

    # Reading

    def _rows(self, template: str, first: int, last: int, **more: Any) -> list[Any]:
        sql = self._sql.get(template) or self._dialect.prepare(template)
        span = self._dialect.span(self.run_id, first, last)
        return self._query(sql, {**span, **self._unfinished, **more})

    def entries_among(self, conversation_ids: list[str]) -> set[str]:
        """Which of these conversations the job's state has an entry for (the ones ``forget``
        must be called for before they are sent: only this run writes their entries)."""
        rows = self._query(
            self._dialect.prepare(_ENTRIES_AMONG),
            {"job": self._job, "ids": json.dumps(sorted(conversation_ids))},
        )
        return {conversation_id for (conversation_id,) in rows}

    def finished_between(self, first: int, last: int) -> dict[int, Status]:
        """Rows in ``[first, last]`` that a resumed run must not process again."""
        rows = self._rows(_FINISHED_BETWEEN, first, last)
        return {number: Status(status) for number, status in rows}

    def before_images_between(self, first: int, last: int) -> dict[int, str]:
        """Rows in ``[first, last]`` not finished, whose before-image (``--backup``) an earlier
        invocation kept before it sent them: row number -> the image (JSON text)."""
        rows = self._rows(_BEFORE_IMAGES, first, last, unprocessed=Status.UNPROCESSED.value)
        return dict(rows)

    def finished_counts_between(self, first: int, last: int) -> dict[Status, int]:
        """How many rows in ``[first, last]`` are finished, by status."""
        rows = self._rows(_FINISHED_COUNTS, first, last)
        return {Status(status): count for status, count in rows}

    def finished_count(self) -> int:
        """Rows finished by earlier runs: a resumed run does not process them again."""
        return int(self._rows(_FINISHED_COUNT, 0, (1 << 32) - 1)[0][0])

    def rows_between(self, first: int, last: int) -> list[tuple[Any, ...]]:
        """Outcomes in ``[first, last]`` as tuples in RESULT_COLUMNS order, by row number."""
        return self._rows(_ROWS, first, last)

    def counts(self) -> dict[str, int]:
        """The run's outcomes by status (rows never journaled are not counted)."""
        rows = self._rows(_COUNTS, 0, (1 << 32) - 1)
        return {status: int(count) for status, count in rows}

    def state_entries(self) -> int:
        """How many conversations the job's state holds."""
        return int(self._query(self._dialect.prepare(_ENTRIES), {"job": self._job})[0][0])

    async def fence(self) -> None:
        """Before each request of the run: return once this process may send it; raise
        RunTaken (or StoreUnavailable, StoreGone) if it may not any more. The one writer of a
        run is sure of it only while it holds the run's lock; a lock held through a database
        session can be lost with the session, and another process may then take the run over
        (once this one's lease has run out): from then on this one must send nothing. A lock
        file, or the store itself, can be removed under the run (StoreGone): what it records
        from then on no later run would see."""
        raise NotImplementedError

    def gone(self) -> JobStopped | None:
        """What took the store away from this run since it opened it, looked at now: its file
        or a lock file removed or replaced (SQLite), its tables dropped or the run taken by
        another process (PostgreSQL); None while the run still holds it. The run stops on it,
        and its results are written from what it still has."""
        raise NotImplementedError

    async def seal(self) -> None:
        """The run's sending is over: wait for the writes in progress, and refuse every later
        write of an outcome, so that the counts, the results and the store agree."""
        raise NotImplementedError

    def hurry(self, seconds: float) -> None:
        """The job is stopping (a signal): no wait for the store goes on more than ``seconds``
        from now (a row whose outcome cannot be committed by then stays unprocessed: the
        re-run sends it again, as after a kill -9)."""
        raise NotImplementedError

    async def forget(self, conversation_id: str) -> None:
        """Before a row is sent: from now until the API confirms, its state is unknown. Returns
        once that is committed."""
        await self._submit(conversation_id)

    async def record(self, outcome: RowOutcome, timing: RowTiming | None = None) -> None:
        """Commit one sent (or read) row's outcome, with its state entry if the server
        confirmed its values (``updated``, or ``unchanged`` after a read); return once it is
        committed."""
        await self._submit((outcome, timing))

    def record_many(self, outcomes: Iterable[RowOutcome]) -> None:
        """Commit the outcomes of rows that were not sent (invalid), in one transaction."""
        rows: list[Recorded] = [(outcome, None) for outcome in outcomes]
        if rows:
            self._commit_outcomes(rows)

    def record_unchanged(self, rows: pl.DataFrame) -> None:
        """Commit a batch's ``unchanged`` rows (``ROW_NUMBER, conversation_id,
        sent_metadata``); found unchanged against --since-state, their entries are copied into
        this job's state in the same transaction."""
        if not rows.is_empty():
            self._commit_unchanged(rows)

    async def _submit(self, item: Recorded | str) -> None:
        """Give the run's writer an outcome or a forget (a conversation ID): it commits them in
        groups (store/grouped.py), each what came while the last one was committed. Return
        once this one is committed."""
        raise NotImplementedError

    def _commit_outcomes(self, rows: list[Recorded]) -> None:
        """``record_many``'s outcomes (some), committed in one transaction."""
        raise NotImplementedError

    def _commit_unchanged(self, rows: pl.DataFrame) -> None:
        """``record_unchanged``'s rows (some), committed in one transaction."""
        raise NotImplementedError


# The budget: the end of the job's timeline of request slots, moved by each claim (``span``) or
# hold-back (``at_least``); a claim's slots that have not begun go back if nothing came after.
_CLAIM = (
    "UPDATE budget SET next_at = {greatest}(next_at, {budget_clock} + :at_least) + :span "
    "WHERE {budget_key} = :job RETURNING next_at, {budget_clock}"
)
_BUDGET_ROW = "INSERT INTO budget ({budget_key}, next_at) VALUES (:job, 0) ON CONFLICT DO NOTHING"
_GIVE_BACK = (
    "UPDATE budget SET next_at = {greatest}({budget_clock}, :start) WHERE {budget_key} = :job "
    "AND next_at = :end AND {budget_clock} < :end"
)


class BudgetCore(Budget):
    """The job's rate budget (``types.Budget``): one timeline of request slots in the
    ``budget`` table that the job's running shards take their slots from, on one clock (the
    machine's in SQLite, where the shards share it; the database's in PostgreSQL, so that
    machines' clocks need not agree). ``transact`` runs a piece of work in one transaction, as
    the backend retries it; ``job``: the job's key in the table (its budget row exists)."""

    def __init__(
        self,
        dialect: Dialect,
        transact: Callable[[Work[Any]], Any],
        job: int | str,
        closing: Callable[[], None] = lambda: None,
    ) -> None:
        self._claim, self._give = dialect.prepare(_CLAIM), dialect.prepare(_GIVE_BACK)
        self._transact = transact
        self._job = job
        self._closing = closing
        transact(lambda conn: conn.execute(dialect.prepare(_BUDGET_ROW), {"job": job}))
        # This shard's last claim: where it began and where the timeline ended after it.
        self._claimed: tuple[float, float] | None = None

    def _move(self, span: float, at_least: float = 0.0) -> float:
        parameters = {"job": self._job, "span": span, "at_least": at_least}
        end, now = self._transact(
            lambda conn: conn.execute(self._claim, {**parameters, "clock": time.time()}).fetchone()
        )
        start = float(end) - span
        if span:
            self._claimed = (start, float(end))
        return start - float(now)

    def claim(self, count: int, interval_s: float) -> float:
        return self._move(count * interval_s)

    def hold_back(self, seconds: float) -> None:
        self._move(0.0, seconds)

    def close(self) -> None:
        """This shard claims no more: the slots of its last claim that have not begun go back to
        the timeline if no claim (nor hold-back) came after it, best effort (a store that fails
        here loses those slots, never more)."""
        try:
            if self._claimed is not None:
                start, end = self._claimed
                parameters = {"job": self._job, "start": start, "end": end}
                self._transact(
                    lambda conn: conn.execute(self._give, {**parameters, "clock": time.time()})
                )
        except Exception as exc:  # the run's own error, if any, is the news
            log.debug("budget not given back: %s", exc)
        finally:
            self._closing()


def batch_json(rows: pl.DataFrame) -> str:
    """A batch's valid rows (``ROW_NUMBER, conversation_id, sent_metadata``) as one JSON array
    (the dialect's ``batch``: ``t(r, i, m)``): the comparison and the journaling of unchanged
    rows run inside the database, with no Python object per row. Sorted by ID, so that
    ``last_set`` is walked in order rather than probed at random."""
    short = rows.select(r=ROW_NUMBER, i="conversation_id", m="sent_metadata")
    return short.sort("i").write_json()


def entry_metadata(entry: str, schema: str = "") -> str:
    """The SQL of a state entry's metadata (``entry``: last_set's alias and dot; ``schema``:
    the database's, with its dot): its own, else the sent_metadata of the outcome that set it
    (the same transaction wrote both; an outcome that set an entry is never written again: a
    row's entry is forgotten before the row is sent)."""
    return (
        f"coalesce({entry}metadata, (SELECT o.sent_metadata FROM {schema}outcomes AS o "  # noqa: S608
        f"WHERE o.id = {entry}outcome))"
    )


# The rows of a batch whose metadata is not, verbatim, what the job's state (in the database
# ``{schema}``) says was last set.
_CHANGED = (
    "SELECT t.r FROM {batch} WHERE NOT EXISTS (SELECT 1 FROM {schema}last_set AS s "
    "WHERE s.conversation_id = {batch_key}{and_state} AND %M = t.m)"
)


def changed_rows(
    dialect: Dialect, conn: Connection, rows: pl.DataFrame, job: int | None, schema: str = ""
) -> list[int]:
    """``StateReader.changed_rows`` on ``conn``: the state of ``job`` (PostgreSQL's job ID),
    in the database ``schema`` (SQLite's ``main.``, or ``since.`` for another job's file)."""
    if rows.is_empty():
        return []
    template = _CHANGED.replace("%M", entry_metadata("s.", schema)).replace("{schema}", schema)
    sql = dialect.prepare(template)
    found = conn.execute(sql, {"batch": batch_json(rows), "job": job})
    return [int(number) for (number,) in found]


_WROTE = "SELECT DISTINCT job FROM runs WHERE results IN ({ids}) ORDER BY job"


def jobs_that_wrote(dialect: Dialect, conn: Connection, results: list[str]) -> list[str]:
    """The jobs with a run in this store whose results path (as given) is one of ``results``."""
    found = conn.execute(dialect.prepare(_WROTE), {"ids": json.dumps(results)}).fetchall()
    return [str(job) for (job,) in found]
