"""What both stores do alike, written once over a small dialect.

The run's lifecycle (find it, resume it, set it aside on ``--restart``, refuse an unfinished
run's changed fingerprint, start it, or the next after a finished one), the journal's reads,
the run record (``history``, ``status``, ``timeline``, ``report_rows``) and the heartbeat's
bookkeeping are the same steps in SQLite and in PostgreSQL: they live here, in ``Store`` and
``Journal``, as httpx's ``BaseClient`` holds what its sync and async clients share. A backend
subclasses them and says only how a piece of work reaches its database (a transaction retried
on its outage clock, a read) and what is its own: its locks, its writer, its budget,
PostgreSQL's reconnection and lease.

The statements are written once, with named parameters (``:name``) and the dialect's
fragments in braces (``{now}``, ``{status}`` …); ``prepare`` turns one into the backend's SQL,
once. The hot path's statements (a sent row's outcome and its ``last_set`` entry, a forget,
a batch of invalid rows) are not here: each backend commits them with its own statements,
tuned to its database (a batch's unchanged rows are here: the same in both).

A batch's ``unchanged`` rows are one row of ``unchanged_spans`` (layout 10; store/schema.py), not
an outcome each: the reads that tell which rows a run has done (``finished_between``,
``finished_counts_between``, ``counts``, ``report_rows``) read the spans as well as the
outcomes, and the results rebuild an unchanged row (``unchanged_rows``) from the input and the
job's state. A store of an older layout keeps its ``unchanged`` outcomes, read as before.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, Self, TypeVar

import polars as pl

from bulk_update.exceptions import JobStopped, JournalError
from bulk_update.outcome import RESULT_COLUMNS, ROW_NUMBER, RowOutcome, Status
from bulk_update.store import schema
from bulk_update.store.lease import Holder, this_process
from bulk_update.store.outage import Outage
from bulk_update.store.schema import TIMELINE, Dialect, format_timestamp
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
    report_frame,
    run_options,
)

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
_SECOND_TYPES = {
    name: kind for name, kind in TIMELINE.types("postgres").items() if name != "run_id"
}


# ``status``'s rate: rows per second over the last minute of a run's timeline.
RATE_WINDOW_S = 60
# Rows that a resumed run processes again; with --retry-failed, failed rows too.
_NOT_FINISHED = (Status.UNPROCESSED.value, Status.PLANNED.value)


def unfinished_statuses(retry_failed: bool) -> tuple[str, ...]:
    """The statuses of the rows a resumed run processes again."""
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


# The last row number a run can have.
ROWS_MAX = (1 << 32) - 1


def _span(run_id: int, first: int = 0, last: int = ROWS_MAX) -> dict[str, int]:
    """The parameters that select rows ``[first, last]`` of a run (both backends key outcomes
    by ``run_id * ROWS_PER_RUN + row_number``; ``unchanged_spans`` by run and row numbers)."""
    base = run_id * schema.ROWS_PER_RUN
    return {"run": run_id, "base": base, "first": base + first, "last": base + last,
            "first_row": first, "last_row": last}  # fmt: skip


# A run's spans of unchanged rows that reach into rows ``[first_row, last_row]``.
_SPANS = (
    "SELECT first_row, last_row, rows, bitmap FROM unchanged_spans WHERE run_id = :run "
    "AND first_row <= :last_row AND last_row >= :first_row ORDER BY first_row"
)


def _in_spans(spans: Iterable[Any], first: int, last: int) -> list[int]:
    """The row numbers in ``[first, last]`` that spans (``_SPANS``' rows) hold, in order (the
    spans of two invocations may interleave: their rows never meet)."""
    found: list[int] = []
    for first_row, last_row, _, bitmap in spans:
        numbers = schema.span_rows(int(first_row), bytes(bitmap))
        if first_row < first or last_row > last:
            numbers = [number for number in numbers if first <= number <= last]
        found.extend(numbers)
    found.sort()  # in order already unless spans interleave (Timsort: one pass then)
    return found


def _counted_in_spans(spans: Iterable[Any], first: int, last: int) -> int:
    """How many rows in ``[first, last]`` spans (``_SPANS``' rows) hold: a span all inside
    says it (``rows``), with no decoding."""
    inside, across = 0, []
    for span in spans:
        if span[0] >= first and span[1] <= last:
            inside += int(span[2])
        else:
            across.append(span)
    return inside + len(_in_spans(across, first, last))


def json_rows(dialect: Dialect, parameter: str, types: Mapping[str, str]) -> str:
    """A relation ``t`` from a JSON array of objects, with the columns ``types`` (name ->
    PostgreSQL's type)."""
    if dialect == "sqlite":
        columns = ", ".join(f"json_extract(value, '$.{name}') AS {name}" for name in types)
        return f"(SELECT {columns} FROM json_each(:{parameter})) AS t"  # noqa: S608
    declared = ", ".join(f"{name} {kind}" for name, kind in types.items())
    return f"json_to_recordset(CAST(:{parameter} AS json)) AS t({declared})"


# What differs between the backends in the statements they share, by the name a template gives
# it in braces: (SQLite's, PostgreSQL's). SQLite's clock is this machine's, bound as a parameter
# (``now``: TIMESTAMP_FORMAT text, ``clock``: Unix time); PostgreSQL's is the database's, so that
# machines' clocks need not agree. One SQLite file holds one job's state and budget.
_DIALECTS = {
    "now": (":now", "now()"),
    "clock": (":clock", "now()"),
    # Seconds since the run r's last heartbeat.
    "age": (":clock - r.heartbeat_at", "extract(epoch FROM now() - r.heartbeat_at)"),
    "budget_clock": (":clock", "CAST(extract(epoch FROM clock_timestamp()) AS double precision)"),
    "greatest": ("max", "greatest"),
    "budget_key": ("job", "job_id"),
    "where_state": ("", " WHERE job_id = :job"),
    "and_state": ("", " AND job_id = :job"),
    # last_set's key, and the job column an entry has (SQLite: none, one job per file).
    "state_pk": ("conversation_id", "job_id, conversation_id"),
    "job_column": ("", ", job_id"),
    "job_value": ("", ", :into"),
    # last_set's key of the conversation ID t.id (of ``ids``), t.i (of ``batch``).
    "state_key": ("t.id", schema.encoded_id("conversation_id", "t.id")),
    "batch_key": ("t.i", schema.encoded_id("conversation_id", "t.i")),
    # The values of a JSON array parameter: texts (``ids``, as ``id``), run IDs.
    "ids": (
        "SELECT value AS id FROM json_each(:ids)",
        "SELECT json_array_elements_text(CAST(:ids AS json)) AS id",
    ),
    # A read that locks the rows it finds until the transaction ends (SQLite's writer holds
    # the whole file from its BEGIN IMMEDIATE).
    "for_update": ("", " FOR UPDATE"),
    "runs": (
        "SELECT value FROM json_each(:runs)",
        "SELECT CAST(json_array_elements_text(CAST(:runs AS json)) AS bigint)",
    ),
    # The values of a JSON array of row numbers (``numbers``).
    "numbers": (
        "SELECT value FROM json_each(:numbers)",
        "SELECT CAST(json_array_elements_text(CAST(:numbers AS json)) AS bigint)",
    ),
    # Outcomes no entry of a job's state names (``Store.compact`` keeps those): SQLite makes the
    # list once (last_set has no index on outcome), PostgreSQL an anti-join.
    "unnamed": (
        "id NOT IN (SELECT outcome FROM last_set WHERE outcome IS NOT NULL)",
        "NOT EXISTS (SELECT 1 FROM last_set AS s WHERE s.outcome = outcomes.id)",
    ),
}


def _fragments(dialect: Dialect) -> dict[str, str]:
    """``_DIALECTS`` of ``dialect``, and the fragments made from the schema."""
    return {
        **{name: pair[dialect == "postgres"] for name, pair in _DIALECTS.items()},
        # A row's status (its text), the results' columns but row_number, and the timing, as a
        # reader gets them from what outcomes keep.
        "status": schema.status_text(dialect),
        "stored": schema.stored_columns(dialect),
        "timing": schema.timing_columns(dialect),
        # A batch's rows (``batch_json``) as the relation ``t(r, i, m)``.
        "batch": json_rows(dialect, "batch", {"r": "integer", "i": "text", "m": "text"}),
        # A heartbeat's seconds of the timeline (``Second``'s fields).
        "seconds": json_rows(dialect, "t", _SECOND_TYPES),
    }


@functools.cache
def prepare(dialect: Dialect, template: str) -> str:
    """The backend's SQL for a statement written with ``:name`` parameters and the dialect's
    fragments in braces (once per statement: cached)."""
    text = template.format(**_fragments(dialect))
    if dialect == "postgres":
        text = re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", text)
    return text


def _moment(value: Any) -> str:
    """A timestamp as the store shows it: SQLite holds the text, PostgreSQL a datetime."""
    return value if isinstance(value, str) else format_timestamp(value)


def _stamp() -> dict[str, Any]:
    """The parameters of this moment (``{now}``, ``{clock}``)."""
    return {"now": format_timestamp(), "clock": time.time()}


# The run of a job + results path + shard: its newest not set aside (a finished run is followed
# by the next one at the same path: a nightly job over each night's export).
_FIND = (
    "SELECT run_id, fingerprint, options, ended_at, counts, stopped_by, compacted_at FROM runs "
    "WHERE job = :job AND results = :results AND shard = :shard AND replaced_at IS NULL "
    "ORDER BY run_id DESC LIMIT 1"
)
# The run's holder: its host and pid, and what tells it apart from another process that has
# the pid later (lease.Holder). A resumed run whose last invocation never recorded its end
# counts it as interrupted (the expressions read the row as it was).
_RESUME = (
    "UPDATE runs SET resumed_at = {now}, invocations = invocations + 1, ended_at = NULL, "
    "interrupted = interrupted + CASE WHEN ended_at IS NULL THEN 1 ELSE 0 END, "
    "exit_code = NULL, stopped_by = NULL, host = :host, pid = :pid, boot = :boot, "
    "pid_namespace = :pid_namespace, pid_started = :pid_started, options = :options, "
    "settled_in = NULL, announced_at = NULL WHERE run_id = :run"
)
# The runs of a job's shards (``ids``: their texts), locked until the transaction ends
# (``Store.settle``: the settles of one job's shards go one at a time); those settled in a wave.
_SHARD_RUNS = (
    "SELECT run_id FROM runs WHERE job = :job AND shard IN ({ids}) AND replaced_at IS NULL "
    "ORDER BY run_id{for_update}"
)
_SETTLED = (
    "SELECT run_id, announced_at, shard FROM runs WHERE job = :job AND shard IN ({ids}) "
    "AND replaced_at IS NULL AND settled_in = :wave ORDER BY run_id"
)
_SETTLE = "UPDATE runs SET settled_in = :wave, announced_at = NULL WHERE run_id = :run"
_ANNOUNCE = "UPDATE runs SET announced_at = {now} WHERE run_id = :run"
# RunRecord's fields that are the runs table's columns, and what its others are made of: the
# holder (lease.Holder), whether every invocation recorded its end, and whether it was set aside.
_AS_STORED = tuple(f for f in RunRecord.__dataclass_fields__ if f in schema.RUNS.names("sqlite"))
_HISTORY_NAMES = (*_AS_STORED, "boot", "pid_namespace", "pid_started", "interrupted", "replaced")
_HISTORY = (
    f"SELECT {', '.join(_HISTORY_NAMES[:-1])}, replaced_at IS NOT NULL AS replaced "  # noqa: S608
    "FROM runs WHERE job = :job ORDER BY run_id DESC"
)
# The requests a run's committed outcomes prove it sent.
_PROVEN = "SELECT sum(attempts) FROM outcomes WHERE id BETWEEN :first AND :last"
_LAST = "(SELECT max(at) FROM timeline WHERE run_id = r.run_id)"
_STATUS = (
    "SELECT r.run_id, r.rows_done, r.counts, {age}, "  # noqa: S608
    f"(SELECT min(at) FROM timeline WHERE run_id = r.run_id), {_LAST}, "
    "(SELECT sum(rows) FROM timeline WHERE run_id = r.run_id "
    f"AND at > {_LAST} - {RATE_WINDOW_S}) FROM runs AS r WHERE r.run_id IN ({{runs}})"
)
_TIMELINE = f"SELECT {', '.join(TIMELINE_COLUMNS)} FROM timeline WHERE run_id = :run ORDER BY at"  # noqa: S608
assert REPORT_COLUMNS[1:6] == ("status", "http_status", "attempts", "error_code", "error_message")
_REPORT = (
    "SELECT id - :base, {status}, http_status, attempts, error_code, error_message, {timing} "
    "FROM outcomes WHERE id BETWEEN :first AND :last ORDER BY id"
)
# A report row of an unchanged row of a span (REPORT_COLUMNS but row_number): never sent.
_UNSENT = (Status.UNCHANGED.value, None, 0, None, None, None, None, None)


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


# The columns of runs that say who holds a run (lease.Holder's fields).
_HOLDER = ("host", "pid", "boot", "pid_namespace", "pid_started")


def _holding() -> dict[str, Any]:
    """The columns of runs that say who holds a run: this process."""
    me = this_process()
    return dict(zip(_HOLDER, (me.host, me.pid, me.boot, me.pid_namespace, me.started), strict=True))


def _starting(opening: Opening) -> dict[str, Any]:
    """What a run records as it starts, by column of runs (``started_at`` is the store's
    clock)."""
    key = opening.key
    options = json.dumps(dict(opening.options), sort_keys=True, default=str)
    return {"job": key.job, "results": key.results, "shard": key.shard_text,
            "fingerprint": opening.fingerprint, "options": options, **_holding()}  # fmt: skip


def unfinished_because(
    ended_at: object, counts: Mapping[str, int], stopped_by: str | None, left: tuple[str, ...]
) -> str | None:
    """How a run stands, if it is unfinished: its end never recorded (killed), something
    stopped it (a signal, a fatal answer, its input changed under it: its results may not be
    written), or rows the same command would process again (``left``: ``unfinished_statuses``;
    with --retry-failed, failed rows too). None: it finished, and has nothing to resume."""
    reasons = []
    if ended_at is None:
        reasons.append("its end was never recorded")
    if stopped_by:
        reasons.append(f"stopped by {stopped_by}")
    rows = " ".join(f"{status}={counts[status]}" for status in left if counts.get(status))
    if rows:
        reasons.append(f"rows left: {rows}")
    return "; ".join(reasons) or None


def _find_or_start(dialect: Dialect, where: str, opening: Opening, conn: Connection) -> int:
    """The run's ID, found (and resumed) or started; JournalError (naming the store, ``where``)
    if it is unfinished and its input or mapping changed. A finished run with another input or
    mapping is followed by a new run (the job's next: it sends what changed since the state);
    the finished one is kept as it is."""
    key, fingerprint, options = opening.key, opening.fingerprint, opening.options
    given = {"job": key.job, "results": key.results, "shard": key.shard_text, **_stamp()}
    found = conn.execute(prepare(dialect, _FIND), given).fetchone()
    if found is not None and opening.restart:
        conn.execute(
            prepare(dialect, "UPDATE runs SET replaced_at = {now} WHERE run_id = :run"),
            {**given, "run": found[0]},
        )
        found = None
    if found is not None and found[6] is not None:
        _after_compacted(where, opening, int(found[0]), found[6])
        found = None  # the job's next run
    if found is not None:
        run_id, stored, stored_options, ended_at, counts, stopped_by, _ = found
        changed = changed_fields(stored, fingerprint) if stored != fingerprint else []
        if changed:
            counted = json.loads(counts) if counts else {}
            unfinished = unfinished_because(ended_at, counted, stopped_by, opening.unfinished)
            if unfinished is not None:
                raise JournalError(
                    f"{where}: the run for {key.results} is unfinished ({unfinished}) and was "
                    f"started with another input or mapping (changed: {', '.join(changed)}); "
                    "finish it first with the input and mapping it started with (the same "
                    "command resumes it), or run with --restart to start over (the old run is "
                    "kept in the store)"
                )
            found = None  # finished: the job's next run
    if found is None:
        values = _starting(opening)
        start = (
            f"INSERT INTO runs ({', '.join(values)}, started_at) "  # noqa: S608
            f"VALUES ({', '.join(f':{name}' for name in values)}, {{now}}) RETURNING run_id"
        )
        return int(conn.execute(prepare(dialect, start), {**values, **_stamp()}).fetchone()[0])
    resumed = resumed_options(stored_options, options)
    resuming = {**given, **_holding(), "options": resumed, "run": run_id}
    conn.execute(prepare(dialect, _RESUME), resuming)
    return int(run_id)


def _after_compacted(where: str, opening: Opening, run_id: int, compacted_at: object) -> None:
    """A finished run found for the key whose outcomes were compacted is never resumed (it no
    longer knows its rows): the job's next run starts instead. --retry-failed, which would send
    that run's failed rows again, is refused (JournalError: exit 2)."""
    if Status.FAILED.value in opening.unfinished:
        raise JournalError(
            f"{where}: run {run_id} for {opening.key.results} was compacted at "
            f"{_moment(compacted_at)} (the job keeps the outcomes of each shard's last "
            "--keep-runs runs): its failed rows are no longer known, so --retry-failed cannot "
            "send them again; run without it (the job's next run sends what changed)"
        )


def _record(row: Mapping[str, Any]) -> RunRecord:
    """A run as ``history`` shows it, from its row of runs (``_HISTORY``), read by name; its
    holder if it told enough to be told apart (``lease.Holder``)."""
    options, ended_at, counts = run_options(row["options"]), row["ended_at"], row["counts"]
    given = options.get("input")
    host, pid, boot, namespace, started = (row[name] for name in _HOLDER)
    told = host is not None and pid is not None and boot and namespace and started
    made = {
        "run_id": int(row["run_id"]), "options": options,
        "input": None if given is None else str(given), "started_at": _moment(row["started_at"]),
        "ended_at": _moment(ended_at) if ended_at else None,
        "counts": json.loads(counts) if counts else {}, "requests": int(row["requests"] or 0),
        "rate_limited": int(row["rate_limited"] or 0), "replaced": bool(row["replaced"]),
        "requests_exact": ended_at is not None and not row["interrupted"],
        "holder": Holder(host, boot, namespace, int(pid), started) if told else None,
        "compacted_at": _moment(row["compacted_at"]) if row["compacted_at"] else None,
    }  # fmt: skip
    return RunRecord(**{**{name: row[name] for name in _AS_STORED}, **made})


@dataclass(frozen=True, slots=True)
class Compacted:
    """What a compaction did (``Store.compact``, ``Journal.retain``): the runs whose outcomes it
    dropped, and how many outcomes went (those an entry of the job's state names stay: the
    state's metadata is theirs)."""

    runs: tuple[int, ...] = ()
    rows: int = 0


# A job's runs, newest first, as the retention sees them (locked until the transaction ends);
# the job and shard of the run :run; a run compacted; its outcomes dropped.
_RETAINED = (
    "SELECT run_id, shard, ended_at, counts, stopped_by, replaced_at, compacted_at FROM runs "
    "WHERE job = :job ORDER BY run_id DESC{for_update}"
)
_RUN_KEY = "SELECT job, shard FROM runs WHERE run_id = :run"
_COMPACTED = "UPDATE runs SET compacted_at = {now} WHERE run_id = :run"
_DROP = "DELETE FROM outcomes WHERE id BETWEEN :first AND :last AND {unnamed}"
# The outcomes of runs compacted before that no entry names any more (the state moved on: a
# later run set their conversations again), in one statement: ``:runs`` between ``:first`` and
# ``:last``.
_SWEEP = (
    "DELETE FROM outcomes WHERE id BETWEEN :first AND :last AND (id >> 32) IN ({runs}) "
    "AND {unnamed}"
)
# Its spans of unchanged rows (no entry of the state names them: their entries hold the text).
_SPANNED = "SELECT count(*), coalesce(sum(rows), 0) FROM unchanged_spans WHERE run_id = :run"
_DROP_SPANS = "DELETE FROM unchanged_spans WHERE run_id = :run"


def to_compact(runs: list[Any], keep_runs: int, shard: str | None = None) -> list[int]:
    """Of a job's runs (``_RETAINED``'s rows, newest first), those whose outcomes the retention
    drops: in each shard (``shard``: that one only), the runs older than its last
    ``keep_runs``, not compacted yet, and finished (nothing a re-run would resume) or set aside
    by --restart. Never the job's last run, nor one that is going on or unfinished."""
    assert keep_runs >= 1, "the job's last run keeps its outcomes"
    seen: dict[str, int] = {}
    chosen = []
    for run_id, in_shard, ended_at, counts, stopped_by, replaced_at, compacted_at in runs:
        if shard is not None and in_shard != shard:
            continue
        seen[in_shard] = seen.get(in_shard, 0) + 1
        if seen[in_shard] <= keep_runs or compacted_at is not None or run_id == runs[0][0]:
            continue
        counted = json.loads(counts) if counts else {}
        finished = unfinished_because(ended_at, counted, stopped_by, _NOT_FINISHED) is None
        if finished or replaced_at is not None:
            chosen.append(int(run_id))
    return chosen


def _compact(
    dialect: Dialect, keep_runs: int, conn: Connection, *, job: str | None = None,
    shard: str | None = None, run: int | None = None,
) -> Compacted:  # fmt: skip
    """Compact the job's runs that the retention drops (``to_compact``): each one marked
    (``compacted_at``: history keeps its row and counts), its outcomes deleted but those an
    entry of the job's state names (the job's state is never touched), and its spans of
    unchanged rows (counted with the outcomes dropped). The runs compacted before (in the
    shard) lose the outcomes no entry names any more: an old run keeps what the state names,
    nothing else. ``run``: the job and shard are that run's (a run's own retention, as it
    ends)."""
    if run is not None:
        job, shard = conn.execute(prepare(dialect, _RUN_KEY), {"run": run}).fetchone()
    runs = conn.execute(prepare(dialect, _RETAINED), {"job": job}).fetchall()
    chosen = to_compact(runs, keep_runs, shard)
    before = [int(r[0]) for r in runs if r[6] is not None and shard in (None, r[1])]
    mark, drop = prepare(dialect, _COMPACTED), prepare(dialect, _DROP)
    spanned, drop_spans = prepare(dialect, _SPANNED), prepare(dialect, _DROP_SPANS)
    dropped = 0
    for run_id in chosen:
        conn.execute(mark, {"run": run_id, **_stamp()})
        dropped += int(conn.execute(drop, _span(run_id)).rowcount)
        spans, rows = conn.execute(spanned, {"run": run_id}).fetchone()
        if spans:
            conn.execute(drop_spans, {"run": run_id})
            dropped += int(rows)
    if before:
        swept = {**_span(min(before)), "last": _span(max(before))["last"],
                 "runs": json.dumps(before)}  # fmt: skip
        dropped += int(conn.execute(prepare(dialect, _SWEEP), swept).rowcount)
    return Compacted(tuple(chosen), dropped)


class _Closing(ABC):
    """Closed after use, as a ``with`` block closes it."""

    @abstractmethod
    def close(self) -> None:
        """Release what it holds (its connections, its locks)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Store(_Closing):
    """A job's store, what the job sees of either backend: the run's lifecycle and its record
    are done here alike. ``where`` names it for logs and summaries (never with a password). A
    backend sets ``where`` and ``_dialect`` and gives the abstract methods: how work reaches
    its database (``_transact``, ``_query``), how it opens a run (``_open_run``), its budget."""

    where: str
    _dialect: Dialect

    @abstractmethod
    def _transact(self, work: Work[T]) -> T:
        """``work`` in one transaction, tried again as the backend does."""

    @abstractmethod
    def _query(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        """The rows a read finds."""

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
        A finished run is followed by a new one if the fingerprint changed (a new export at the
        same results path: the job's next run), resumed if not; an unfinished run whose
        fingerprint changed is refused (JournalError) unless ``restart``, which sets the old
        run aside (kept, never deleted) and starts a new one. ``since`` names another
        job's store whose state this run compares with (ConfigError if it is not one)."""
        unfinished = unfinished_statuses(retry_failed)
        opening = Opening(key, fingerprint_text(fingerprint), options, restart, unfinished, since)
        return self._open_run(opening)

    @abstractmethod
    def _open_run(self, opening: Opening) -> Journal:
        """Lock the run, find or start it (``_find_or_start``), open its journal."""

    def _find_or_start(self, opening: Opening) -> int:
        """The run's ID, found or started (JournalError if it is refused)."""
        found = functools.partial(_find_or_start, self._dialect, self.where, opening)
        return self._transact(found)

    def _fetch(self, template: str, parameters: dict[str, Any]) -> list[Any]:
        return self._query(prepare(self._dialect, template), parameters)

    def compact(self, job: str, keep_runs: int) -> Compacted:
        """Compact the job's runs now, keeping the outcomes of each shard's last ``keep_runs``
        runs (``to_compact``), then reclaim the space (``_reclaim``): with the job's lock, as a
        whole-input run takes it (RunHeld while one of its runs goes on)."""
        with self._holding_job(job):
            done = self._transact(functools.partial(_compact, self._dialect, keep_runs, job=job))
            self._reclaim()
        return done

    @abstractmethod
    def _holding_job(self, job: str) -> contextlib.AbstractContextManager[None]:
        """The job's lock, held as a whole-input run holds it (RunHeld if a run holds it)."""

    @abstractmethod
    def _reclaim(self) -> None:
        """Make the space of deleted outcomes the store's again (SQLite: VACUUM; PostgreSQL:
        VACUUM, which makes it reusable without shrinking the table)."""

    def history(self, job: str) -> list[RunRecord]:
        """The job's runs, newest first."""
        rows = self._fetch(_HISTORY, {"job": job})
        return [_record(dict(zip(_HISTORY_NAMES, row, strict=True))) for row in rows]

    def settle(self, key: RunKey, wave: str) -> Settled:
        """The shard ``key``'s run ended for good (its task succeeded) in ``wave``, the job's run
        it is a part of (an Airflow DAG run): record it, and say whether that ends the job's run
        there: every shard has a run settled in ``wave``, and none of them announced it (this
        one then does: ``Settled.runs``, each shard's run). One transaction, the job's shards'
        runs locked first: of two shards that settle at once the second sees the first, so
        one of them announces, never both or none. A resumed run (a retry, a re-run) is
        unsettled until it settles again; so the announcer's retry announces again."""
        assert key.shard is not None, "settle is for a shard's run"
        count = key.shard[1]
        shards = [f"{index}/{count}" for index in range(count)]
        given = {"job": key.job, "results": key.results, "shard": key.shard_text,
                 "ids": json.dumps(shards), "wave": wave, **_stamp()}  # fmt: skip
        lock, find, settled = (
            prepare(self._dialect, sql) for sql in (_SHARD_RUNS, _FIND, _SETTLED)
        )
        settle, announce = prepare(self._dialect, _SETTLE), prepare(self._dialect, _ANNOUNCE)

        def work(conn: Connection) -> tuple[list[str], list[int]]:
            conn.execute(lock, given).fetchall()  # before this run's row is written
            found = conn.execute(find, given).fetchone()
            if found is None or found[3] is None:
                raise JournalError(
                    f"{self.where}: job {key.job!r}, shard {key.shard_text}: no run for "
                    f"{key.results} has ended"
                )
            mine = {**given, "run": found[0]}
            conn.execute(settle, mine)
            runs = {shard: (run_id, announced) for run_id, announced, shard in
                    conn.execute(settled, given).fetchall()}  # fmt: skip
            waiting = [shard for shard in shards if shard not in runs]
            if waiting or any(announced is not None for _, announced in runs.values()):
                return waiting, []
            conn.execute(announce, mine)
            return [], [int(runs[shard][0]) for shard in shards]

        waiting, run_ids = self._transact(work)
        records = {r.run_id: r for r in self.history(key.job)} if run_ids else {}
        return Settled(count, tuple(waiting), tuple(records[run_id] for run_id in run_ids))

    def proven_requests(self, run_id: int) -> int:
        """The requests a run's committed outcomes prove it sent (the sum of their attempts):
        what its count is at least, when an invocation did not record its end. Reads all the
        run's outcomes."""
        rows = self._fetch(_PROVEN, _span(run_id))
        return int(rows[0][0] or 0)

    def status(self, job: str) -> list[RunStatus]:
        """The job's runs that are going on or stopped before their rows were done (not
        replaced), newest first."""
        unfinished = Status.UNPROCESSED.value
        records = [
            r
            for r in self.history(job)
            if not r.replaced and (r.ended_at is None or r.counts.get(unfinished, 0) > 0)
        ]
        if not records:
            return []
        runs = json.dumps([r.run_id for r in records])
        found = {row[0]: row[1:] for row in self._fetch(_STATUS, {"runs": runs, **_stamp()})}
        statuses = []
        for record in records:
            done, counts, age, first, last, recent = found[record.run_id]
            # The counts and rows_done of one read of the run's row (one heartbeat wrote both):
            # history's, read before, may be a heartbeat older.
            record = replace(record, counts=json.loads(counts) if counts else {})
            # Over the last RATE_WINDOW_S seconds of its timeline: on the timeline's own clock
            # (machines' clocks need not agree).
            rate = (
                None if first is None else int(recent or 0) / min(RATE_WINDOW_S, last - first + 1)
            )
            done = None if done is None else int(done)
            age = None if age is None else max(0.0, float(age))
            statuses.append(RunStatus(record, done, age, rate))
        return statuses

    def timeline(self, run_id: int) -> list[Second]:
        """A run's timeline, every invocation's, in order."""
        return [Second(*row) for row in self._fetch(_TIMELINE, {"run": run_id})]

    def report_rows(self, run_id: int) -> pl.DataFrame:
        """A run's outcomes, REPORT_COLUMNS, by row number (its spans' unchanged rows too)."""
        span = _span(run_id)
        rows = self._fetch(_REPORT, span)
        unchanged = _in_spans(self._fetch(_SPANS, span), 0, ROWS_MAX)
        if not unchanged:
            return report_frame(rows)
        frame = report_frame([*rows, *((number, *_UNSENT) for number in unchanged)])
        return frame.sort("row_number")

    @abstractmethod
    def budget(self, job: str) -> Budget:
        """The job's rate budget, shared by its running shards."""


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


class StateRows(StateReader):
    """The job's last-set state, read (``StateReader``) as the backend reads (``_query``): the
    state of the job ``_compare_with`` (PostgreSQL's job ID: a SQLite file holds one job's), in
    the database ``_state_in`` (SQLite's ``since.``: another job's file, attached)."""

    _dialect: Dialect
    _compare_with: int | None = None
    _state_in = ""

    @abstractmethod
    def _query(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        """The rows a read of the store finds."""

    def changed_rows(self, rows: pl.DataFrame) -> list[int]:
        if rows.is_empty():
            return []
        where = self._state_in
        template = _CHANGED.replace("%M", entry_metadata("s.", where)).replace("{schema}", where)
        parameters = {"batch": batch_json(rows), "job": self._compare_with}
        return [
            int(number) for (number,) in self._query(prepare(self._dialect, template), parameters)
        ]


def _with_unchanged(
    counts: dict[T, int], unchanged: T, spans: list[Any], first: int = 0, last: int = ROWS_MAX
) -> dict[T, int]:
    """``counts`` (by status) with the rows in ``[first, last]`` of ``spans`` (``_SPANS``'
    rows) added to ``unchanged``'s."""
    spanned = _counted_in_spans(spans, first, last)
    if spanned:
        counts[unchanged] = counts.get(unchanged, 0) + spanned
    return counts


# A read of a store: the rows a statement (with its parameters) finds.
Query = Callable[[str, dict[str, Any]], list[Any]]


class StateView(StateRows):
    """A job's state that only a dry run reads (``store.read_state``), through ``query``."""

    def __init__(self, dialect: Dialect, query: Query, job: int | None = None) -> None:
        self._dialect, self._read, self._compare_with = dialect, query, job

    def _query(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        return self._read(sql, parameters)


_WROTE = "SELECT DISTINCT job FROM runs WHERE results IN ({ids}) ORDER BY job"
_JOBS = "SELECT DISTINCT job FROM runs ORDER BY job"


def jobs_that_wrote(dialect: Dialect, query: Query, results: list[str] | None) -> list[str]:
    """The jobs with a run in a store whose results path (as given) is one of ``results``
    (None: every job with a run)."""
    sql = prepare(dialect, _JOBS if results is None else _WROTE)
    found = query(sql, {"ids": json.dumps(results)})
    return [str(job) for (job,) in found]


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
_FINISHED_BETWEEN = (
    "SELECT id - :base, {status} FROM outcomes WHERE id BETWEEN :first AND :last "
    "AND {status} NOT IN (%U)"
)
_BEFORE_IMAGES = (
    "SELECT id - :base, previous_metadata FROM outcomes WHERE id BETWEEN :first AND :last "
    "AND {status} = :unprocessed AND previous_metadata IS NOT NULL"
)
_FINISHED_COUNTS = (
    "SELECT {status}, count(*) FROM outcomes WHERE id BETWEEN :first AND :last "
    "AND {status} NOT IN (%U) GROUP BY 1"
)
_ROWS = "SELECT id - :base, {stored} FROM outcomes WHERE id BETWEEN :first AND :last ORDER BY id"
_COUNTS = "SELECT {status}, count(*) FROM outcomes WHERE id BETWEEN :first AND :last GROUP BY 1"
# A batch's unchanged rows: the outcomes an invocation that did not finish them left (a row
# sent, its answer never read; a failed row, with --retry-failed) go, and one span says which
# they are (store/schema.py's UNCHANGED_SPANS).
_UNSPANNED = "DELETE FROM outcomes WHERE id BETWEEN :first AND :last AND id - :base IN ({numbers})"
_SPAN_ROW = (
    "INSERT INTO unchanged_spans (run_id, first_row, last_row, rows, bitmap) "
    "VALUES (:run, :first_row, :last_row, :rows, :bitmap)"
)
# Their entries of the state they were compared with (--since-state: in ``{schema}``, of the
# job ``:job``), copied into this job's (``:into``) with their text: no outcome of this store
# holds it (an unchanged row has none). WHERE: not SQLite's join's ON.
_COPY_ENTRIES = (
    "INSERT INTO last_set (conversation_id, set_at, metadata{job_column}) "
    "SELECT s.conversation_id, s.set_at, t.m{job_value} FROM {batch} "
    "JOIN {schema}last_set AS s ON s.conversation_id = {batch_key} WHERE TRUE{and_state} "
    "ON CONFLICT ({state_pk}) DO UPDATE SET outcome = NULL, metadata = excluded.metadata, "
    "set_at = excluded.set_at"
)
# The job's state's metadata of conversations (``ids``): an unchanged row's, as it was sent.
_STATE_OF = (
    "SELECT t.id, %M FROM ({ids}) AS t "
    "JOIN last_set AS s ON s.conversation_id = {state_key}{and_state}"
)
# An unchanged row's values but row_number, conversation_id and sent_metadata, as the results
# hold them (RESULT_COLUMNS): never sent, so never answered.
_UNCHANGED_VALUES = {"status": Status.UNCHANGED.value, "attempts": 0}
_ENTRIES = "SELECT count(*) FROM last_set{where_state}"
_ENTRIES_AMONG = (
    "SELECT t.id FROM ({ids}) AS t WHERE EXISTS "
    "(SELECT 1 FROM last_set WHERE conversation_id = {state_key}{and_state})"
)


class Journal(_Closing, StateRows):
    """One run's outcomes, and the job's state as the run changes it. Opened by
    ``Store.open_run``, which holds the run's locks until the journal is closed.

    The plain methods may wait for the store (a file locked by another process, a database that
    is away, up to --store-timeout): call them off the event loop (``asyncio.to_thread``). The
    async ones never block the loop.

    Its reads and the bookkeeping of its heartbeats and its end are done here alike. A backend
    sets ``run_id``, ``_dialect``, ``_outage`` (its clock for a store away), ``_job`` (its
    state's key: PostgreSQL's job ID) and what ``StateRows`` reads, calls ``_unfinished_are``,
    and gives the abstract methods: how work reaches its database, and how it commits outcomes
    (``_submit`` to its grouping writer, ``_commit_outcomes``, ``_commit_batch``)."""

    run_id: int
    _dialect: Dialect
    _outage: Outage
    _job: int | None = None
    # This invocation's requests and 429s already added to the run's (by heartbeats).
    _counted = (0, 0)

    def _unfinished_are(self, unfinished: tuple[str, ...]) -> None:
        """The statuses a resumed run processes again (``status NOT IN`` them: ``%U``)."""
        names = [f"u{n}" for n in range(len(unfinished))]
        self._unfinished = dict(zip(names, unfinished, strict=True))
        marks = ", ".join(f":{name}" for name in names)
        self._sql = {
            template: prepare(self._dialect, template.replace("%U", marks))
            for template in (_FINISHED_BETWEEN, _FINISHED_COUNTS)
        }

    @abstractmethod
    async def _commit_beat(self, work: Work[object]) -> None:
        """Commit a heartbeat's work (as the backend writes on the event loop)."""

    @abstractmethod
    def _commit_end(self, work: Work[object]) -> None:
        """Commit the run's end (blocking the calling thread)."""

    # Writing

    def _tally(self, said: RunBeat | RunEnd) -> dict[str, Any]:
        """What a heartbeat or the end records alike: the counts, and the requests and 429s
        this invocation sent since the last heartbeat."""
        requests, rate_limited = self._counted
        return {
            "run": self.run_id,
            "counts": json.dumps(dict(said.counts), sort_keys=True),
            "total_rows": said.total_rows,
            "requests": said.requests - requests,
            "rate_limited": said.rate_limited - rate_limited,
            **_stamp(),
        }

    async def beat(self, beat: RunBeat, seconds: Iterable[Second]) -> None:
        """The run's heartbeat (every few seconds while it runs): how far it is, and the
        timeline's seconds since the last one. The run's requests and 429s count what this
        invocation sent up to now (``finish`` adds the rest), so that a run killed -9 shows
        them. Never blocks the event loop for long (a database that is away is waited for off
        the loop)."""
        timeline = json.dumps([asdict(second) for second in seconds])
        add = prepare(self._dialect, _ADD_SECONDS)
        beat_sql = prepare(self._dialect, _BEAT)
        parameters = {**self._tally(beat), "t": timeline, "rows_done": beat.rows_done}

        def write(conn: Connection) -> None:
            if timeline != "[]":
                conn.execute(add, parameters)
            conn.execute(beat_sql, parameters)

        await self._commit_beat(write)
        self._counted = (beat.requests, beat.rate_limited)

    def finish(self, end: RunEnd) -> None:
        """Record how this invocation of the run ended."""
        sql = prepare(self._dialect, _END)
        parameters = {**self._tally(end), "exit_code": end.exit_code, "stopped_by": end.stopped_by}
        self._commit_end(lambda conn: conn.execute(sql, parameters))
        self._counted = (end.requests, end.rate_limited)

    def retain(self, keep_runs: int) -> Compacted:
        """Once the run has ended: compact its job's runs in its shard beyond the last
        ``keep_runs`` (``to_compact``), under the run's own locks. The space is reused by later
        runs (no VACUUM here: ``Store.compact`` reclaims it)."""
        done: list[Compacted] = []
        self._commit_end(
            lambda conn: done.append(_compact(self._dialect, keep_runs, conn, run=self.run_id))
        )
        return done[-1]

    # Reading

    def _rows(self, template: str, first: int = 0, last: int = ROWS_MAX, **more: Any) -> list[Any]:
        sql = self._sql.get(template) or prepare(self._dialect, template)
        span = _span(self.run_id, first, last)
        return self._query(sql, {**span, **self._unfinished, **more})

    def entries_among(self, conversation_ids: list[str]) -> set[str]:
        """Which of these conversations the job's state has an entry for (the ones ``forget``
        must be called for before they are sent: only this run writes their entries)."""
        rows = self._query(
            prepare(self._dialect, _ENTRIES_AMONG),
            {"job": self._job, "ids": json.dumps(sorted(conversation_ids))},
        )
        return {conversation_id for (conversation_id,) in rows}

    def _spans(self, first: int, last: int) -> list[Any]:
        """The run's spans of unchanged rows that reach into ``[first, last]``."""
        return self._rows(_SPANS, first, last)

    def unchanged_between(self, first: int, last: int) -> list[int]:
        """Rows in ``[first, last]`` that the run's spans say are unchanged, in order."""
        return _in_spans(self._spans(first, last), first, last)

    def finished_between(self, first: int, last: int) -> dict[int, Status]:
        """Rows in ``[first, last]`` that a resumed run must not process again."""
        rows = self._rows(_FINISHED_BETWEEN, first, last)
        finished = {number: Status(status) for number, status in rows}
        finished.update(dict.fromkeys(self.unchanged_between(first, last), Status.UNCHANGED))
        return finished

    def before_images_between(self, first: int, last: int) -> dict[int, str]:
        """Rows in ``[first, last]`` not finished, whose before-image (``--backup``) an earlier
        invocation kept before it sent them: row number -> the image (JSON text)."""
        rows = self._rows(_BEFORE_IMAGES, first, last, unprocessed=Status.UNPROCESSED.value)
        return dict(rows)

    def finished_counts_between(self, first: int, last: int) -> dict[Status, int]:
        """How many rows in ``[first, last]`` are finished, by status."""
        rows = self._rows(_FINISHED_COUNTS, first, last)
        counts = {Status(status): int(count) for status, count in rows}
        return _with_unchanged(counts, Status.UNCHANGED, self._spans(first, last), first, last)

    def rows_between(self, first: int, last: int) -> list[tuple[Any, ...]]:
        """Outcomes in ``[first, last]`` as tuples in RESULT_COLUMNS order, by row number
        (not the spans' unchanged rows: ``unchanged_rows``)."""
        return self._rows(_ROWS, first, last)

    def unchanged_rows(
        self, first: int, last: int, ids: Mapping[int, str]
    ) -> list[tuple[Any, ...]]:
        """The spans' unchanged rows in ``[first, last]`` as tuples in RESULT_COLUMNS order, by
        row number, rebuilt as their outcomes were: the conversation ID the input gives the row
        (``ids``: row number -> ID, trimmed), its ``sent_metadata`` the job's state's metadata
        (what the row maps, verbatim: it was found unchanged against it), nothing else but
        ``status`` and ``attempts`` (0)."""
        numbers = [number for number in self.unchanged_between(first, last) if number in ids]
        if not numbers:
            return []
        conversations = [ids[number] for number in numbers]
        template = _STATE_OF.replace("%M", entry_metadata("s."))
        parameters = {"job": self._job, "ids": json.dumps(conversations)}
        metadata = dict(self._query(prepare(self._dialect, template), parameters))
        rows = []
        for number, conversation_id in zip(numbers, conversations, strict=True):
            values = {**_UNCHANGED_VALUES, "row_number": number,
                      "conversation_id": conversation_id,
                      "sent_metadata": metadata.get(conversation_id)}  # fmt: skip
            rows.append(tuple(values.get(name) for name in RESULT_COLUMNS))
        return rows

    def counts(self) -> dict[str, int]:
        """The run's rows by status (rows never journaled are not counted)."""
        rows = self._rows(_COUNTS)
        counts = {str(status): int(count) for status, count in rows}
        return _with_unchanged(counts, Status.UNCHANGED.value, self._spans(0, ROWS_MAX))

    def state_entries(self) -> int:
        """How many conversations the job's state holds."""
        return int(self._query(prepare(self._dialect, _ENTRIES), {"job": self._job})[0][0])

    @abstractmethod
    async def fence(self) -> None:
        """Before each request of the run: return once this process may send it; raise
        RunTaken (or StoreUnavailable, StoreGone) if it may not any more. The one writer of a
        run is sure of it only while it holds the run's lock; a lock held through a database
        session can be lost with the session, and another process may then take the run over
        (once this one's lease has run out): from then on this one must send nothing. A lock
        file, or the store itself, can be removed under the run (StoreGone): what it records
        from then on no later run would see."""

    @abstractmethod
    def gone(self) -> JobStopped | None:
        """What took the store away from this run since it opened it, looked at now: its file
        or a lock file removed or replaced (SQLite), its tables dropped or the run taken by
        another process (PostgreSQL); None while the run still holds it. The run stops on it,
        and its results are written from what it still has."""

    @abstractmethod
    async def seal(self) -> None:
        """The run's sending is over: wait for the writes in progress, and refuse every later
        write of an outcome, so that the counts, the results and the store agree."""

    def hurry(self, seconds: float) -> None:
        """The job is stopping (a signal): no wait for the store goes on more than ``seconds``
        from now (a row whose outcome cannot be committed by then stays unprocessed: the
        re-run sends it again, as after a kill -9)."""
        self._outage.hurry(seconds)  # a watchdog looks again

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
        sent_metadata``; none finished by the run yet) as one span (``unchanged_spans``), in one
        transaction with the removal of what an earlier invocation left of them; found unchanged
        against --since-state, their entries are copied into this job's state in it too."""
        if rows.is_empty():
            return
        copying = bool(self._state_in) or self._compare_with != self._job
        templates = (_UNSPANNED, _SPAN_ROW, *((_COPY_ENTRIES,) if copying else ()))
        statements = [
            prepare(self._dialect, t.replace("{schema}", self._state_in)) for t in templates
        ]
        numbers = rows.get_column(ROW_NUMBER).sort().to_list()
        first, last = int(numbers[0]), int(numbers[-1])
        parameters = {
            **_span(self.run_id, first, last),
            "numbers": json.dumps(numbers),
            "rows": len(numbers),
            "bitmap": schema.span_bitmap(first, numbers),
            "batch": batch_json(rows) if copying else None,
            "job": self._compare_with,
            "into": self._job,
        }

        def write(conn: Connection) -> None:
            for statement in statements:
                conn.execute(statement, parameters)

        self._commit_batch(write)

    @abstractmethod
    async def _submit(self, item: Recorded | str) -> None:
        """Give the run's writer an outcome or a forget (a conversation ID): it commits them in
        groups (store/grouped.py), each what came while the last one was committed. Return
        once this one is committed."""

    @abstractmethod
    def _commit_outcomes(self, rows: list[Recorded]) -> None:
        """``record_many``'s outcomes (some), committed in one transaction."""

    @abstractmethod
    def _commit_batch(self, work: Work[object]) -> None:
        """``record_unchanged``'s work, committed in one transaction (blocking the calling
        thread)."""


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
        self._claim, self._give = prepare(dialect, _CLAIM), prepare(dialect, _GIVE_BACK)
        self._transact = transact
        self._job = job
        self._closing = closing
        transact(lambda conn: conn.execute(prepare(dialect, _BUDGET_ROW), {"job": job}))
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
