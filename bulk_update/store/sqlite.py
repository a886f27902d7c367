"""The SQLite store: one file per job, ``<state-dir>/<job-name>.sqlite`` (standard library).

Tables (``PRAGMA user_version`` is the layout's version)::

    runs(run_id, job, results, shard, fingerprint, options, started_at, resumed_at,
         invocations, ended_at, counts, exit_code, replaced_at, <RUN_COLUMNS>)
    outcomes(id, <the results columns but row_number>, sent_at, answered_at, latency_ms)
    timeline(run_id, at, requests, rate_limited, retries, errors, rows, limit_rpm,
             announced_rpm)                  -- per second of a run (status, report)
    run_outcomes: a view of outcomes with run_id and row_number
    last_set(conversation_id PRIMARY KEY, metadata, set_at) -- the job's state
    budget(job PRIMARY KEY, next_at)   -- the rate budget its shards share (layout 2)

``outcomes.id`` is ``run_id * 2**32 + row_number``: the table is keyed by its rowid, so that a
run's outcomes sit together in the order of the input, a row costs no more than in a table of
one run, and an insert writes one B-tree (a composite key, or run_id and row_number stored as
columns, made journaling a batch 15-30 % slower). The ``run_outcomes`` view shows both.

WAL mode with ``synchronous=NORMAL``: a commit survives a process crash (kill -9); only a power
cut can lose the last commits. Shards of a job share the file and wait for each other's commits
(``busy_timeout``). The locks are ``flock``s on files beside it (``store/locks.py``): the kernel
drops them when their holder dies.

``--since-state`` (another job's store) is ATTACHed read only, so that the comparison and the
copy of its entries run inside SQLite. A state file of the older layout
(``<job>.state.sqlite``, one ``last_set`` table) is read the same way, and a new store takes its
entries over, as it takes over an unfinished journal of the older layout
(``RESULTS.journal.sqlite``) whose input and mapping are the same.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import operator
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import polars as pl

from bulk_update.exceptions import ConfigError, JournalError
from bulk_update.outcome import RESULT_COLUMNS, RESULTS_SCHEMA, RowOutcome, Status
from bulk_update.paths import is_remote
from bulk_update.read import ROW_NUMBER
from bulk_update.store import (
    REPORT_COLUMNS,
    TIMELINE_COLUMNS,
    TIMING_COLUMNS,
    RowTiming,
    RunBeat,
    RunEnd,
    RunKey,
    RunRecord,
    RunStatus,
    Second,
    changed_fields,
    fingerprint_text,
    is_unfinished,
    options_input,
    report_frame,
    run_options,
    run_statuses,
    unfinished_statuses,
)
from bulk_update.store.locks import release_lock, take_lock

log = logging.getLogger("bulk_update")

# 1: runs, outcomes, last_set; 2: and budget; 3: outcomes gain previous_metadata and
# server_metadata; 4: runs gain what history shows (RUN_COLUMNS); 5: outcomes gain
# TIMING_COLUMNS, runs a heartbeat, and the timeline table.
LAYOUT_VERSION = 5

_SQL_TYPES: dict[pl.DataType, str] = {pl.Int64(): "INTEGER", pl.String(): "TEXT"}
assert RESULT_COLUMNS[0] == "row_number"
_STORED = RESULT_COLUMNS[1:]  # row_number is in the id
_stored = operator.attrgetter(*_STORED)
_COLUMNS = ", ".join(_STORED)
_TIMING_TYPES = {"sent_at": "REAL", "answered_at": "REAL", "latency_ms": "INTEGER"}
_INSERT = (
    f"INSERT OR REPLACE INTO outcomes (id, {_COLUMNS}, {', '.join(TIMING_COLUMNS)}) "  # noqa: S608
    f"VALUES (?, {', '.join('?' for _ in (*_STORED, *TIMING_COLUMNS))})"
)
_NO_TIMING = (None, None, None)
# Row numbers are below 2**32 (polars' row index is 32-bit).
_ROWS_PER_RUN = 1 << 32
# What a run records for history (layout 4), after the columns of layout 1.
RUN_COLUMNS = (
    ("total_rows", "INTEGER"),
    ("requests", "INTEGER NOT NULL DEFAULT 0"),
    ("rate_limited", "INTEGER NOT NULL DEFAULT 0"),
    ("stopped_by", "TEXT"),
    ("host", "TEXT"),
    ("pid", "INTEGER"),
    ("heartbeat_at", "REAL"),  # layout 5: Unix time of the run's last heartbeat
    ("rows_done", "INTEGER"),
)
_VIEW = (
    "CREATE VIEW IF NOT EXISTS run_outcomes AS SELECT id >> 32 AS run_id, "  # noqa: S608
    f"id & 4294967295 AS row_number, {_COLUMNS} FROM outcomes"
)
# The outcomes that also set the job's state entry: the server confirmed the row's values.
_CONFIRMED = (Status.UPDATED, Status.UNCHANGED)
_TABLES = (
    "CREATE TABLE IF NOT EXISTS runs (run_id INTEGER PRIMARY KEY, job TEXT NOT NULL, "
    "results TEXT NOT NULL, shard TEXT NOT NULL, fingerprint TEXT NOT NULL, options TEXT NOT NULL, "
    "started_at TEXT NOT NULL, resumed_at TEXT, invocations INTEGER NOT NULL DEFAULT 1, "
    "ended_at TEXT, counts TEXT, exit_code INTEGER, replaced_at TEXT, "
    + ", ".join(f"{name} {kind}" for name, kind in RUN_COLUMNS)
    + ")",
    "CREATE INDEX IF NOT EXISTS runs_by_key ON runs (job, results, shard)",
    "CREATE TABLE IF NOT EXISTS outcomes (id INTEGER PRIMARY KEY, "
    + ", ".join(f"{name} {_SQL_TYPES[RESULTS_SCHEMA[name]]}" for name in _STORED)
    + ", "
    + ", ".join(f"{name} {kind}" for name, kind in _TIMING_TYPES.items())
    + ")",
    _VIEW,
    "CREATE TABLE IF NOT EXISTS last_set (conversation_id TEXT PRIMARY KEY, "
    "metadata TEXT NOT NULL, set_at TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS budget (job TEXT PRIMARY KEY, next_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS timeline (run_id INTEGER NOT NULL, at INTEGER NOT NULL, "
    "requests INTEGER NOT NULL, rate_limited INTEGER NOT NULL, retries INTEGER NOT NULL, "
    "errors INTEGER NOT NULL, rows INTEGER NOT NULL, limit_rpm REAL, announced_rpm REAL, "
    "PRIMARY KEY (run_id, at)) WITHOUT ROWID",
)
_ADD_SECOND = (
    f"INSERT INTO timeline ({', '.join(TIMELINE_COLUMNS)}, run_id) VALUES "  # noqa: S608
    f"({', '.join('?' for _ in TIMELINE_COLUMNS)}, ?) ON CONFLICT (run_id, at) DO UPDATE SET "
    + ", ".join(f"{n} = {n} + excluded.{n}" for n in TIMELINE_COLUMNS[1:6])
    + ", limit_rpm = excluded.limit_rpm, announced_rpm = excluded.announced_rpm"
)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _uri(path: Path, read_only: bool = False) -> str:
    return path.resolve().as_uri() + ("?mode=ro" if read_only else "")


def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    db = sqlite3.connect(
        _uri(path, read_only), uri=True, isolation_level=None, check_same_thread=False
    )
    db.execute("PRAGMA busy_timeout=30000")
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE: take the write lock up front, waiting (busy_timeout) for a shard's commit
    # instead of failing half way.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _as_json(rows: pl.DataFrame) -> str:
    """A batch's rows (``ROW_NUMBER, conversation_id, sent_metadata``) as one JSON array for
    ``json_each``: the comparison and the journaling of unchanged rows then run inside SQLite,
    with no Python object per row. Sorted by ID, so that ``last_set`` is walked in order rather
    than probed at random."""
    short = rows.select(r=ROW_NUMBER, i="conversation_id", m="sent_metadata")
    return short.sort("i").write_json()


def _changed_rows(db: sqlite3.Connection, schema: str, rows: pl.DataFrame) -> list[int]:
    if rows.is_empty():
        return []
    found = db.execute(
        "SELECT json_extract(j.value, '$.r') FROM json_each(?) AS j WHERE NOT EXISTS ("  # noqa: S608
        f"SELECT 1 FROM {schema}.last_set AS s WHERE s.conversation_id = "
        "json_extract(j.value, '$.i') AND s.metadata = json_extract(j.value, '$.m'))",
        (_as_json(rows),),
    )
    return [number for (number,) in found]


def _legacy_state(path: Path) -> Path:
    """The state file of the older layout that this store replaces."""
    return path.with_name(path.name.removesuffix(".sqlite") + ".state.sqlite")


def _has_state(path: Path) -> bool:
    """Is ``path`` a store, or a state file of the older layout (it has ``last_set``)?"""
    try:
        with contextlib.closing(_connect(path, read_only=True)) as db:
            db.execute("SELECT count(*) FROM last_set").fetchone()
    except sqlite3.DatabaseError:
        return False
    return True


def _check_since(since: str) -> Path:
    """--since-state's file, if it is a store (or a state file of the older layout)."""
    path = Path(since)
    if not path.is_file():
        raise ConfigError(f"--since-state {since}: no such file")
    if not _has_state(path):
        raise ConfigError(f"--since-state {since}: not a bulk-update state (no last_set table)")
    return path


class _Reader:
    """``last_set`` of a database (``schema`` on ``db``), read only."""

    def __init__(self, db: sqlite3.Connection, schema: str = "main") -> None:
        self._db = db
        self._schema = schema

    def changed_rows(self, rows: pl.DataFrame) -> list[int]:
        return _changed_rows(self._db, self._schema, rows)


@contextlib.contextmanager
def read_state(path: Path, since: str | None = None) -> Iterator[_Reader | None]:
    """See ``bulk_update.store.read_state``."""
    if since is not None:
        source: Path | None = _check_since(since)
    else:
        source = next((p for p in (path, _legacy_state(path)) if p.is_file()), None)
        if source is not None and not _has_state(source):
            raise JournalError(
                f"{source}: not a bulk-update store; choose another --state-dir or --job-name"
            )
    if source is None:
        yield None
        return
    with contextlib.closing(_connect(source, read_only=True)) as db:
        yield _Reader(db)


class SQLiteStore:
    """Open with ``SQLiteStore.open``; use as a context manager to close it."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self.where = str(path)
        self._db = db

    @classmethod
    def open(cls, path: Path) -> SQLiteStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = _connect(path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            store = cls(path, db)
            store._create()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise JournalError(f"{path}: not a bulk-update store ({exc})") from None
        except BaseException:
            db.close()
            raise
        return store

    def _create(self) -> None:
        db = self._db
        legacy = _legacy_state(self.path)
        fresh = db.execute("PRAGMA user_version").fetchone()[0] == 0
        if fresh and legacy.is_file():
            db.execute("ATTACH DATABASE ? AS legacy", (_uri(legacy, read_only=True),))
        with _transaction(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > LAYOUT_VERSION:
                raise JournalError(
                    f"{self.path}: written by a newer bulk-update (layout {version}); upgrade"
                )
            if version == 0:
                others = db.execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                    "AND name NOT IN ('runs', 'outcomes', 'last_set', 'run_outcomes', 'budget', "
                    "'timeline')"
                ).fetchall()
                if others:
                    raise JournalError(
                        f"{self.path}: not a bulk-update store (it holds {others[0][0]!r}); "
                        "choose another --state-dir or --job-name"
                    )
            for statement in _TABLES:
                db.execute(statement)
            if 0 < version < LAYOUT_VERSION:
                self._migrate()
            if version == 0 and fresh and legacy.is_file():
                db.execute("INSERT OR IGNORE INTO last_set SELECT * FROM legacy.last_set")
                log.info("took over %s", legacy, extra={"event": "migrate", "from": str(legacy)})
            db.execute(f"PRAGMA user_version={LAYOUT_VERSION}")
        if fresh and legacy.is_file():
            db.execute("DETACH DATABASE legacy")

    def _migrate(self) -> None:
        """Bring a store of an older layout to this one: the new columns (tables are created
        by ``_TABLES``)."""
        db = self._db
        wanted = {
            "outcomes": [
                *((name, _SQL_TYPES[RESULTS_SCHEMA[name]]) for name in _STORED),
                *_TIMING_TYPES.items(),
            ],
            "runs": list(RUN_COLUMNS),
        }
        for table, columns in wanted.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns:
                if name not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        db.execute("DROP VIEW IF EXISTS run_outcomes")
        db.execute(_VIEW)

    def open_run(
        self,
        key: RunKey,
        fingerprint: Mapping[str, Any],
        options: Mapping[str, Any],
        *,
        restart: bool = False,
        retry_failed: bool = False,
        since: str | None = None,
    ) -> SQLiteJournal:
        locks = _lock_run(self.path, key)
        try:
            compare_with = "main"
            if since is not None:
                since_path = _check_since(since)
                if since_path.resolve() != self.path.resolve():
                    self._db.execute(
                        "ATTACH DATABASE ? AS since", (_uri(since_path, read_only=True),)
                    )
                    compare_with = "since"
            run_id = self._find_or_start(key, fingerprint_text(fingerprint), options, restart)
            return SQLiteJournal(
                self._db, run_id, locks, compare_with, unfinished_statuses(retry_failed)
            )
        except BaseException:
            for lock in reversed(locks):
                release_lock(lock)
            raise

    def _find_or_start(
        self, key: RunKey, fingerprint: str, options: Mapping[str, Any], restart: bool
    ) -> int:
        db = self._db
        with _transaction(db):
            found = db.execute(
                "SELECT run_id, fingerprint FROM runs WHERE job = ? AND results = ? AND shard = ? "
                "AND replaced_at IS NULL ORDER BY run_id DESC LIMIT 1",
                (key.job, key.results, key.shard_text),
            ).fetchone()
            if found is not None and restart:
                db.execute("UPDATE runs SET replaced_at = ? WHERE run_id = ?", (_now(), found[0]))
                found = None
            if found is not None:
                run_id, stored = found
                if stored != fingerprint:
                    changed = changed_fields(stored, fingerprint)
                    raise JournalError(
                        f"{self.path}: the run for {key.results} was started with another input "
                        f"or mapping (changed: {', '.join(changed)}); run with --restart to start "
                        "over (the old run is kept in the store)"
                    )
                db.execute(
                    "UPDATE runs SET resumed_at = ?, invocations = invocations + 1, "
                    "ended_at = NULL, exit_code = NULL, stopped_by = NULL, host = ?, pid = ? "
                    "WHERE run_id = ?",
                    (_now(), socket.gethostname(), os.getpid(), run_id),
                )
                return int(run_id)
            cursor = db.execute(
                "INSERT INTO runs (job, results, shard, fingerprint, options, started_at, host, "
                "pid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.job, key.results, key.shard_text, fingerprint,
                 json.dumps(dict(options), sort_keys=True, default=str), _now(),
                 socket.gethostname(), os.getpid()),
            )  # fmt: skip
            run_id = int(cursor.lastrowid or 0)
        if not restart:
            self._take_over_legacy_journal(key, fingerprint, run_id)
        return run_id

    def _take_over_legacy_journal(self, key: RunKey, fingerprint: str, run_id: int) -> None:
        """A run started by the older layout resumes here: its journal's outcomes, if the
        journal belongs to the same input and mapping."""
        legacy = Path(key.results + ".journal.sqlite")
        if is_remote(key.results) or not legacy.is_file():
            return
        db = self._db
        db.execute("ATTACH DATABASE ? AS legacy", (_uri(legacy, read_only=True),))
        try:
            with _transaction(db):
                stored = db.execute(
                    "SELECT value FROM legacy.meta WHERE key = 'fingerprint'"
                ).fetchone()
                if stored is None or stored[0] != fingerprint:
                    return
                had = {row[1] for row in db.execute("PRAGMA legacy.table_info(outcomes)")}
                columns = ", ".join(name for name in _STORED if name in had)
                db.execute(
                    f"INSERT INTO outcomes (id, {columns}) "  # noqa: S608
                    f"SELECT ? + row_number, {columns} FROM legacy.outcomes",
                    (run_id * _ROWS_PER_RUN,),
                )
            log.info("took over %s", legacy, extra={"event": "migrate", "from": str(legacy)})
        except sqlite3.DatabaseError:
            return  # not a journal after all: nothing to take over
        finally:
            db.execute("DETACH DATABASE legacy")

    def budget(self, job: str) -> SQLiteBudget:
        return SQLiteBudget(self.path, job)

    def history(self, job: str) -> list[RunRecord]:
        rows = self._db.execute(
            "SELECT run_id, results, shard, options, started_at, ended_at, invocations, counts, "
            "exit_code, total_rows, requests, rate_limited, stopped_by, host, pid, "
            "replaced_at IS NOT NULL FROM runs WHERE job = ? ORDER BY run_id DESC",
            (job,),
        )
        return [_record(*row) for row in rows]

    def status(self, job: str) -> list[RunStatus]:
        records = [r for r in self.history(job) if not r.replaced and is_unfinished(r)]
        last = "(SELECT max(at) FROM timeline WHERE run_id = r.run_id)"
        rows = self._db.execute(
            "SELECT r.run_id, r.rows_done, ? - r.heartbeat_at, "  # noqa: S608
            f"(SELECT min(at) FROM timeline WHERE run_id = r.run_id), {last}, "
            f"(SELECT sum(rows) FROM timeline WHERE run_id = r.run_id AND at > {last} - 60) "
            "FROM runs AS r WHERE r.run_id IN (SELECT value FROM json_each(?))",
            (time.time(), json.dumps([r.run_id for r in records])),
        )
        found = {row[0]: row[1:] for row in rows}
        return run_statuses(records, found)

    def timeline(self, run_id: int) -> list[Second]:
        rows = self._db.execute(
            f"SELECT {', '.join(TIMELINE_COLUMNS)} FROM timeline WHERE run_id = ? ORDER BY at",  # noqa: S608
            (run_id,),
        )
        return [Second(*row) for row in rows]

    def report_rows(self, run_id: int) -> pl.DataFrame:
        columns = ", ".join(name if name != "row_number" else "id - ?" for name in REPORT_COLUMNS)
        base = run_id * _ROWS_PER_RUN
        rows = self._db.execute(
            f"SELECT {columns} FROM outcomes WHERE id BETWEEN ? AND ? ORDER BY id",  # noqa: S608
            (base, base, base + _ROWS_PER_RUN - 1),
        ).fetchall()
        return report_frame(rows)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _record(
    run_id: int, results: str, shard: str, options: str | None, started_at: str,
    ended_at: str | None, invocations: int, counts: str | None, exit_code: int | None,
    total_rows: int | None, requests: int, rate_limited: int, stopped_by: str | None,
    host: str | None, pid: int | None, replaced: int,
) -> RunRecord:  # fmt: skip
    given = run_options(options)
    return RunRecord(
        run_id=run_id, results=results, shard=shard, input=options_input(given), options=given,
        started_at=started_at, ended_at=ended_at, invocations=invocations,
        counts=json.loads(counts) if counts else {}, exit_code=exit_code, total_rows=total_rows,
        requests=requests or 0, rate_limited=rate_limited or 0, stopped_by=stopped_by,
        host=host, pid=pid, replaced=bool(replaced),
    )  # fmt: skip


def _lock_run(path: Path, key: RunKey) -> list[IO[str] | None]:
    """One run of a job at a time, or one run per shard: a whole-input run takes the job's lock
    exclusively, a shard shares it and takes its own shard's lock exclusively. Two runs writing
    the same entries at once could otherwise record them in the wrong order."""
    what = f" (job {key.job!r})"
    locks: list[IO[str] | None] = []
    try:
        locks.append(take_lock(Path(f"{path}.lock"), shared=key.shard is not None, what=what))
        if key.shard is not None:
            index, count = key.shard
            locks.append(take_lock(Path(f"{path}.{index}-of-{count}.lock"), what=what))
    except BaseException:
        for lock in reversed(locks):
            release_lock(lock)
        raise
    return locks


class SQLiteBudget:
    """The rate budget of the shards sharing this store on one machine: one timeline of request
    slots in the ``budget`` table (wall-clock seconds: the shards share the machine's clock).
    Its own connection, so that a claim from a thread never meets a journal's transaction."""

    def __init__(self, path: Path, job: str) -> None:
        self._db = _connect(path)
        self._job = job

    def _move(self, span: float, at_least: float = 0.0) -> float:
        with _transaction(self._db):
            now = time.time()
            row = self._db.execute("SELECT next_at FROM budget WHERE job = ?", (self._job,))
            found = row.fetchone()
            start = max(found[0] if found else now, now + at_least)
            self._db.execute(
                "INSERT OR REPLACE INTO budget VALUES (?, ?)", (self._job, start + span)
            )
        return start - now

    def claim(self, count: int, interval_s: float) -> float:
        return self._move(count * interval_s)

    def hold_back(self, seconds: float) -> None:
        self._move(0.0, seconds)

    def close(self) -> None:
        self._db.close()


class SQLiteJournal(_Reader):
    """One run's outcomes in a SQLite store; see ``bulk_update.store.Journal``."""

    def __init__(
        self,
        db: sqlite3.Connection,
        run_id: int,
        locks: list[IO[str] | None],
        compare_with: str,
        unfinished: tuple[str, ...],
    ) -> None:
        super().__init__(db, compare_with)
        self.run_id = run_id
        self._base = run_id * _ROWS_PER_RUN  # outcomes.id of row 0
        self._locks = locks
        self._unfinished = unfinished
        self._unfinished_sql = f"status NOT IN ({', '.join('?' for _ in unfinished)})"
        # This invocation's requests and 429s already added to the run's (by heartbeats).
        self._counted = (0, 0)

    # Writing

    def entries_among(self, conversation_ids: list[str]) -> set[str]:
        found = self._db.execute(
            "SELECT s.conversation_id FROM json_each(?) AS j JOIN last_set AS s "
            "ON s.conversation_id = j.value",
            (json.dumps(sorted(conversation_ids)),),
        )
        return {conversation_id for (conversation_id,) in found}

    async def forget(self, conversation_id: str) -> None:
        self._db.execute("DELETE FROM last_set WHERE conversation_id = ?", (conversation_id,))

    async def record(self, outcome: RowOutcome, timing: RowTiming | None = None) -> None:
        if outcome.status not in _CONFIRMED:
            self._insert(outcome, timing)
            return
        assert outcome.sent_metadata is not None
        with _transaction(self._db):
            self._insert(outcome, timing)
            self._db.execute(
                "INSERT OR REPLACE INTO last_set VALUES (?, ?, ?)",
                (outcome.conversation_id, outcome.sent_metadata, _now()),
            )

    def _insert(self, outcome: RowOutcome, timing: RowTiming | None) -> None:
        values = self._values(outcome)
        if timing is not None:
            values = (*values[: -len(_NO_TIMING)], timing.sent_at, timing.answered_at,
                      timing.latency_ms)  # fmt: skip
        self._db.execute(_INSERT, values)

    def _values(self, outcome: RowOutcome) -> tuple[Any, ...]:
        return (self._base + outcome.row_number, *_stored(outcome), *_NO_TIMING)

    def record_many(self, outcomes: Iterable[RowOutcome]) -> None:
        with _transaction(self._db):
            self._db.executemany(_INSERT, map(self._values, outcomes))

    def record_unchanged(self, rows: pl.DataFrame) -> None:
        if rows.is_empty():
            return
        rows_json = _as_json(rows)
        with _transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO outcomes (id, conversation_id, status, attempts, "
                "sent_metadata) SELECT ? + json_extract(value, '$.r'), "
                "json_extract(value, '$.i'), ?, 0, json_extract(value, '$.m') FROM json_each(?)",
                (self._base, Status.UNCHANGED.value, rows_json),
            )
            if self._schema == "since":
                self._db.execute(
                    "INSERT OR REPLACE INTO last_set SELECT s.conversation_id, s.metadata, "
                    "s.set_at FROM json_each(?) AS j JOIN since.last_set AS s "
                    "ON s.conversation_id = json_extract(j.value, '$.i')",
                    (rows_json,),
                )

    async def beat(self, beat: RunBeat, seconds: Iterable[Second]) -> None:
        # On the event loop, as every write of the journal's connection (a local file).
        values = [(*(getattr(second, n) for n in TIMELINE_COLUMNS), self.run_id)
                  for second in seconds]  # fmt: skip
        requests, rate_limited = self._counted
        with _transaction(self._db):
            self._db.executemany(_ADD_SECOND, values)
            self._db.execute(
                "UPDATE runs SET heartbeat_at = ?, rows_done = ?, total_rows = ?, "
                "requests = requests + ?, rate_limited = rate_limited + ? WHERE run_id = ?",
                (time.time(), beat.rows_done, beat.total_rows, beat.requests - requests,
                 beat.rate_limited - rate_limited, self.run_id),
            )  # fmt: skip
        self._counted = (beat.requests, beat.rate_limited)

    def finish(self, end: RunEnd) -> None:
        self._db.execute(
            "UPDATE runs SET ended_at = ?, counts = ?, exit_code = ?, total_rows = ?, "
            "requests = requests + ?, rate_limited = rate_limited + ?, stopped_by = ? "
            "WHERE run_id = ?",
            (_now(), json.dumps(dict(end.counts), sort_keys=True), end.exit_code,
             end.total_rows, end.requests - self._counted[0],
             end.rate_limited - self._counted[1], end.stopped_by, self.run_id),
        )  # fmt: skip
        self._counted = (end.requests, end.rate_limited)

    # Reading

    def _ids(self, first: int = 0, last: int = _ROWS_PER_RUN - 1) -> tuple[int, int]:
        """The outcomes.id range of rows ``[first, last]`` of this run."""
        return self._base + first, self._base + last

    def finished_between(self, first: int, last: int) -> dict[int, Status]:
        rows = self._db.execute(
            "SELECT id - ?, status FROM outcomes WHERE id BETWEEN ? AND ? "  # noqa: S608
            f"AND {self._unfinished_sql}",
            (self._base, *self._ids(first, last), *self._unfinished),
        )
        return {number: Status(status) for number, status in rows}

    def before_images_between(self, first: int, last: int) -> dict[int, str]:
        rows = self._db.execute(
            "SELECT id - ?, previous_metadata FROM outcomes WHERE id BETWEEN ? AND ? "
            "AND status = ? AND previous_metadata IS NOT NULL",
            (self._base, *self._ids(first, last), Status.UNPROCESSED.value),
        )
        return dict(rows.fetchall())

    def finished_counts_between(self, first: int, last: int) -> dict[Status, int]:
        rows = self._db.execute(
            "SELECT status, count(*) FROM outcomes WHERE id BETWEEN ? AND ? "  # noqa: S608
            f"AND {self._unfinished_sql} GROUP BY status",
            (*self._ids(first, last), *self._unfinished),
        )
        return {Status(status): count for status, count in rows}

    def finished_count(self) -> int:
        row = self._db.execute(
            f"SELECT count(*) FROM outcomes WHERE id BETWEEN ? AND ? AND {self._unfinished_sql}",  # noqa: S608
            (*self._ids(), *self._unfinished),
        ).fetchone()
        return int(row[0])

    def rows_between(self, first: int, last: int) -> list[tuple[Any, ...]]:
        return self._db.execute(
            f"SELECT id - ?, {_COLUMNS} FROM outcomes WHERE id BETWEEN ? AND ? ORDER BY id",  # noqa: S608
            (self._base, *self._ids(first, last)),
        ).fetchall()

    def counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT status, count(*) FROM outcomes WHERE id BETWEEN ? AND ? GROUP BY status",
            self._ids(),
        )
        return dict(rows.fetchall())

    def state_entries(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM last_set").fetchone()[0])

    def close(self) -> None:
        if self._schema == "since":
            self._db.execute("DETACH DATABASE since")
        for lock in reversed(self._locks):
            release_lock(lock)
        self._locks = []

    def __enter__(self) -> SQLiteJournal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
