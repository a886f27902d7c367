"""The PostgreSQL store (``--state-url``): one database shared by every machine of a job.

Everything is in one schema, ``bulk_update``, created and migrated by the job (the URL's user
needs ``CREATE`` on the database the first time, then only read/write on the schema). Its tables
are declared in ``store/schema.py``; what it does as the SQLite store does is in
``store/core.py``.

**Locks** are session-level advisory locks (``pg_try_advisory_lock``) of the connection the run
holds: one run per job, or one per shard (shards share the job's lock, and all of a job's
running shards must have the same N). The server drops them when the session ends: at once when
the holder's process dies (its socket is closed by the kernel: kill -9, an OOM kill), and within
about 25 s when its machine or network vanishes (the job sets the session's TCP keepalives:
10 s idle, then 3 probes 5 s apart; ``tcp_user_timeout`` likewise bounds unacknowledged data).

**Transactions**: each write is one transaction; a sent row's outcome and its state entry
commit together, the workers' in groups (``grouped.LoopGroupWriter``, on the event loop). A
connection lost mid-run is re-established with backoff (0.2 s doubling to 5 s) and the failed
transaction run again (every write is an upsert: running one twice changes nothing); the run's
locks are taken again first. If the database stays away longer than ``--store-timeout`` (one
clock for every operation of the run: ``store/outage.py``), StoreUnavailable stops the job
(exit 3, resumable). The job's tables dropped under a run (or the database made anew) stop it
at the next write (StoreGone, exit 3).

**One writer for real**: a lock lost with its session is not a lock; beside it the holder keeps
a lease (``store/lease.py``).

The password is never shown: ``where`` and every error message name the store without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo

from bulk_update._constants import DEFAULT_STORE_TIMEOUT_S
from bulk_update.exceptions import (
    ConfigError,
    DiskFull,
    JobStopped,
    JournalError,
    RunHeld,
    RunTaken,
    StoreGone,
    Unreachable,
    first_line,
)
from bulk_update.outcome import RESULT_COLUMNS, Status
from bulk_update.store import core, schema
from bulk_update.store.core import BudgetCore, Journal, Opening, Recorded, StateView, Store, Work
from bulk_update.store.grouped import LoopGroupWriter
from bulk_update.store.lease import (
    LEASE_S,
    POLL_S,
    RENEW_EVERY_S,
    Holder,
    LocalLease,
    is_gone,
    this_process,
)
from bulk_update.store.outage import Cause, Hurry, Outage, Tries, Watchdog
from bulk_update.store.schema import STORED, STORED_TIMING
from bulk_update.store.types import RunKey, StoreLocation
from bulk_update.store.url import check_url, redact, secrets

__all__ = ["SCHEMA", "PostgresJournal", "PostgresStore", "jobs_that_wrote",
           "read_state"]  # fmt: skip

log = logging.getLogger("bulk_update")

T = TypeVar("T")
_Conn = psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None

SCHEMA = "bulk_update"
# A connection attempt waits this long at most (less when the outage is nearly given up).
_CONNECT_TIMEOUT_S = 10
# How often a connection attempt's waiter looks whether it is still waited for (a stop).
_CONNECT_POLL_S = 0.05
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
# A statement waits at most this long for a lock another session holds (a migration, a report
# with LOCK TABLE): then it fails, and is tried again on the run's outage clock, so that a
# store held by another process never freezes the job past --store-timeout.
_LOCK_TIMEOUT_MS = 2000
_SESSION = (
    f"SET search_path TO {SCHEMA}; SET tcp_keepalives_idle = 10; "
    "SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; "
    f"SET tcp_user_timeout = 25000; SET lock_timeout = {_LOCK_TIMEOUT_MS}"
)
# Errors that say the database is away for now (tried again on the outage clock): a lost or
# refused connection, a lock held too long, a server shutting down, a primary that became a
# read-only standby (after a failover the next connection may reach the new primary).
_AWAY = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction)
# Errors that say the job's tables are not there any more: dropped under the run (with their
# schema), or the database made anew (StoreGone).
_GONE = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)

# Outcomes' columns as the store keeps them (store/schema.py), and the SQL of their values from
# ``r``, a relation of the values as the results hold them (the server encodes them: no work
# per row in the job).
_WRITTEN = ", ".join((*STORED, *STORED_TIMING))
_ENCODED = schema.encoded_columns("r.")
_VALUES = ", ".join(_ENCODED[name] for name in (*STORED, *STORED_TIMING))

_ON_CONFLICT = "ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f"{name} = EXCLUDED.{name}" for name in (*STORED, *STORED_TIMING)
)
# Outcomes go to the database as one JSON array per group, unpacked by the server: adapting
# Python lists column by column cost 5x the CPU (psycopg escapes every array element). Their
# types are the values' as the results hold them.
_RECORDS = (
    "json_to_recordset(%(records)s::json) AS r("
    + ", ".join(f"{name} {kind}" for name, kind in schema.value_types("postgres").items())
    + ")"
)
# The holder's lease row, locked for the transaction (FOR SHARE): a commit goes in only while
# this process still holds the run, and a process taking the run over (which deletes the row)
# waits for the commits in progress.
_MINE = "job_id = %(job)s AND shard = %(shard)s AND holder = %(holder)s"  # _Lease.arguments
_HOLD = f"SELECT 1 FROM leases WHERE {_MINE} FOR SHARE"  # noqa: S608
# outcomes' key of a row, as SQLite's: run_id * 2**32 + row_number.
_ROW_ID = f"CAST(%(run)s AS bigint) * {schema.ROWS_PER_RUN} + r.row_number"
# A group of the writer's (or record_many's outcomes): the IDs to forget, the outcomes and the
# updated rows' state entries (each names its outcome, whose sent_metadata is the entry's
# metadata), in one statement (one round trip, its own transaction), written only if the lease
# is held (the statement's one row says whether it was). Its forgets and its outcomes never
# concern the same conversation: a row's forget commits before the row is sent.
_GROUP = (
    f"WITH h AS ({_HOLD}), "  # noqa: S608
    "f AS (DELETE FROM last_set WHERE job_id = %(job)s AND conversation_id IN "
    f"(SELECT {schema.encoded_id('conversation_id', 'x.id')} FROM "
    "json_array_elements_text(%(forget)s::json) AS x(id)) AND EXISTS (SELECT 1 FROM h)), "
    f"r AS (SELECT * FROM {_RECORDS} WHERE EXISTS (SELECT 1 FROM h)), "
    f"o AS (INSERT INTO outcomes (id, {_WRITTEN}) "
    f"SELECT {_ROW_ID}, {_VALUES} FROM r {_ON_CONFLICT}), "
    "s AS (INSERT INTO last_set (outcome, set_at, job_id, conversation_id) "
    f"SELECT {_ROW_ID}, now(), %(job)s, {_ENCODED['conversation_id']} FROM r "
    f"WHERE status IN ('{Status.UPDATED}', '{Status.UNCHANGED}') "
    "ON CONFLICT (job_id, conversation_id) DO UPDATE SET "
    "outcome = EXCLUDED.outcome, metadata = NULL, set_at = EXCLUDED.set_at) "
    "SELECT count(*) FROM h"
)

# Operators' views of outcomes and last_set with the values as the results hold them (SQLite's
# views of the same names; job_state also names the job).
_VIEWS = (
    "CREATE VIEW run_outcomes AS SELECT id >> 32 AS run_id, "  # noqa: S608
    f"CAST(id & 4294967295 AS integer) AS row_number, {schema.stored_columns('postgres')}, "
    f"{schema.timing_columns('postgres')} FROM outcomes",
    "CREATE VIEW job_state AS SELECT j.name AS job, "  # noqa: S608
    f"{schema.stored_columns('postgres', 's.').split(' AS conversation_id')[0]} "
    f"AS conversation_id, {core.entry_metadata('s.')} AS metadata, s.set_at "
    "FROM last_set AS s JOIN jobs AS j USING (job_id)",
)


# What a refusal of a schema that is no store this version can use says to do.
_START_AFRESH = (
    f"drop the schema {SCHEMA} to start afresh (the job then forgets what it set and what its "
    "runs did), or give another --state-url"
)


def _shut(conn: _Conn) -> None:
    """Make a call blocked on ``conn`` (if any) fail at once: its socket shut down (a duplicate
    of the descriptor is shut, the connection keeps its own to close)."""
    if conn is None:
        return
    with socket.fromfd(conn.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as duplicate:
        duplicate.shutdown(socket.SHUT_RDWR)


# What an outage is, when it is not a database that cannot be reached.
_STATES = {
    psycopg.errors.LockNotAvailable: "locked by another session",
    psycopg.errors.ReadOnlySqlTransaction: "read-only (a standby?)",
}


def _key(*parts: object) -> int:
    """A 64-bit advisory lock key, the same on every machine."""
    text = "\0".join(map(str, (SCHEMA, *parts)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), signed=True)


def _halves(key: int) -> tuple[int, int]:
    """``pg_locks.classid`` and ``objid`` of a 64-bit advisory lock key."""
    return (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF


def _take_lock(conn: psycopg.Connection[Any], function: str, arguments: tuple[int, ...]) -> bool:
    marks = ", ".join("%s" for _ in arguments)
    row = conn.execute(f"SELECT {function}({marks})", arguments).fetchone()
    return bool(row and row[0])


def _drops(conn: _Conn, exc: Exception, cut: bool) -> bool:
    """Must the connection of a try that failed (``cut``: by the watchdog) be closed: lost, cut,
    or a standby's (read-only: the next connection reaches the primary)?"""
    read_only = isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)
    return conn is not None and (conn.broken or conn.closed or read_only or cut)


def _connect(conninfo: str, outage: Outage) -> psycopg.Connection[Any]:
    """``psycopg.connect``, given up at the outage's deadline (a stop hurries it): a connection
    under way cannot be cut (the watchdog has no socket to shut down until it returns), so it is
    made in a thread of its own, which closes what it got if nobody waits for it any more. A
    server that never answers (frozen) would otherwise hold a stop for its connect timeout."""
    made: concurrent.futures.Future[psycopg.Connection[Any]] = concurrent.futures.Future()

    def attempt() -> None:
        try:
            conn = psycopg.connect(conninfo, autocommit=True)
        except BaseException as exc:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                made.set_exception(exc)
            return
        try:
            made.set_result(conn)
        except concurrent.futures.InvalidStateError:  # given up meanwhile
            conn.close()

    threading.Thread(target=attempt, name="bulk-update-store-connect", daemon=True).start()
    started = outage.now()
    left = outage.remaining()  # before the store is given up (libpq waits at least 2 s)
    while True:
        try:
            return made.result(timeout=_CONNECT_POLL_S)
        except TimeoutError:
            now = outage.now()
            if now >= min(started + left, outage.deadline(started)) and made.cancel():
                raise psycopg.errors.ConnectionTimeout(
                    "connection timeout expired (no answer in the time left)"
                ) from None


class _Session:
    """One connection to the database, re-established (with its locks) when lost."""

    def __init__(self, url: str, timeout: float, hurry: Hurry | None = None) -> None:
        self.url = url
        self.where = redact(url)
        # One outage clock for every operation of the session and of its run's writer.
        self.outage = Outage(self.where, timeout, hurry=hurry)
        # A call the database never answers (a frozen server, a stalled proxy) is cut once it
        # has lasted the timeout: TCP keepalives cannot tell, the server's kernel answers them.
        self.watchdog = Watchdog(self.outage)
        self._secrets = secrets(url)
        self._mutex = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._locks: list[tuple[str, tuple[int, ...]]] = []  # (function, arguments) to retake
        # The run was taken by another process, or the job's tables dropped: every later
        # operation fails at once with this.
        self.lost: JobStopped | None = None

    def scrub(self, text: str) -> str:
        """The text without the password: each of its occurrences that stands alone (not
        inside a longer word), so that a short password never masks letters of the message."""
        for secret in self._secrets:
            text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
        return text

    def conninfo(self) -> str:
        given = psycopg.conninfo.conninfo_to_dict(self.url)
        extra = {k: v for k, v in _KEEPALIVES.items() if k not in given}
        extra["application_name"] = str(given.get("application_name") or "bulk-update")
        if "connect_timeout" not in given:
            # A host that does not answer must not outlast the outage's own deadline.
            left = int(min(_CONNECT_TIMEOUT_S, self.outage.remaining()))
            extra["connect_timeout"] = str(max(2, left))
        return psycopg.conninfo.make_conninfo(self.url, **extra)

    def connect(self) -> psycopg.Connection[Any]:
        conn = _connect(self.conninfo(), self.outage)
        self._conn = conn  # from now on, the watchdog can cut what it waits for
        try:
            conn.execute(_SESSION)
        except BaseException:
            self.close()
            raise
        return conn

    def open(self) -> None:
        """The first connection: a database that cannot be reached, or that refuses the job (a
        password, a permission), is the user's to fix (exit 2; ``Unreachable`` may pass), named
        plainly. Once reached, it is waited for as the run waits for it: tables another session
        holds locked, or a server that stops answering, are a store away (StoreUnavailable
        after --store-timeout, sooner at a signal), as they are later in the run."""
        try:
            self.connect()
            self.run(self._create, transaction=False)
        except BaseException as exc:
            self.close()
            if isinstance(exc, psycopg.Error):
                raise _unusable(self, exc) from None
            raise

    def first_line(self, exc: BaseException) -> str:
        return first_line(exc, scrub=self.scrub)

    def _create(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # One job creates or migrates the schema at a time.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key("layout"),))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            for statement in schema.create("postgres", f"{SCHEMA}."):
                conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM layout").fetchone()
            stored = row[0] if row else None
            if stored is None:
                conn.execute("INSERT INTO layout VALUES (%s)", (schema.LAYOUT_VERSION,))
            elif (refusal := schema.layout_refusal(self.where, stored, _START_AFRESH)) is not None:
                raise JournalError(refusal)
            elif stored < schema.LAYOUT_VERSION:
                for statement in schema.upgrade("postgres", stored, f"{SCHEMA}."):
                    conn.execute(statement)
                conn.execute("UPDATE layout SET version = %s", (schema.LAYOUT_VERSION,))
            found = conn.execute("SELECT to_regclass('job_state')").fetchone()
            if found is None or found[0] is None:
                for view in _VIEWS:
                    conn.execute(view)
            self._check_columns(conn)
        self._register(conn)

    def _check_columns(self, conn: psycopg.Connection[Any]) -> None:
        """Each table has the columns this layout declares (JournalError if not)."""
        found: dict[str, list[str]] = {t.name: [] for t in schema.TABLES if t.postgres}
        for table, column in conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = %s",
            (SCHEMA,),
        ):
            found.setdefault(table, []).append(column)
        if refusal := schema.wrong_tables("postgres", found, self.where, _START_AFRESH):
            raise JournalError(refusal)

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(
            "INSERT INTO sessions VALUES (pg_backend_pid(), %s, %s, now()) "
            "ON CONFLICT (backend_pid) DO UPDATE SET host = EXCLUDED.host, "
            "pid = EXCLUDED.pid, since = EXCLUDED.since",
            (socket.gethostname(), os.getpid()),
        )

    def run(self, work: Callable[[psycopg.Connection[Any]], T], transaction: bool = True) -> T:
        """``work`` in one transaction; run again on a new connection if the old one is lost,
        on the session's outage clock (``tries``)."""
        tries = self.tries(lambda: _shut(self._conn))

        def attempt() -> T:
            conn = self._conn or self._reconnect()
            if not transaction:
                return work(conn)
            with conn.transaction():
                return work(conn)

        def away(exc: Exception) -> Cause | None:
            cause = self.away(exc)
            if cause is not None and _drops(self._conn, exc, tries.cut):
                self.close()
            return cause

        with self._mutex:
            return tries.run(attempt, away)

    def tries(self, interrupt: Callable[[], None]) -> Tries:
        """A call's tries through the session (or its run's writer): none once the run was
        taken or the store given up; each cut by the watchdog (``interrupt``) if it does not
        return in time."""
        return Tries(self.outage, self.check_open, self.watchdog, interrupt)

    def check_open(self) -> None:
        """Raise at once once nothing more is done through the session: the run lost, or the
        store given up."""
        if self.lost is not None:
            raise self.lost
        self.outage.check()

    def away(self, exc: Exception) -> Cause | None:
        """The outage ``exc`` says the database is in (``_AWAY``), or None (no outage); raises
        what no retry mends: the job's tables gone, the database's disk full."""
        if isinstance(exc, _GONE):
            raise self.gone(exc) from None
        if not isinstance(exc, _AWAY):
            return None
        line = self.first_line(exc)
        if isinstance(exc, psycopg.errors.DiskFull):
            raise DiskFull(f"the store {self.where}", line) from None
        return line, next((said for kind, said in _STATES.items() if isinstance(exc, kind)), None)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds``; False, sooner, once the job is stopping (a signal's hurry): a wait
        for another holder's lease must not hold the stop either."""
        outage = self.outage
        end = outage.now() + seconds
        while (now := outage.now()) < end:
            if outage.remaining() <= 0:
                return False
            time.sleep(min(POLL_S, end - now))
        return True

    def abandon(self, lost: JobStopped) -> JobStopped:
        """Another process holds the run now (or the job's tables are gone): nothing more is
        done through this session. Returns what it was lost to first."""
        if self.lost is None:
            self.lost = lost
        return self.lost

    def gone(self, exc: psycopg.Error) -> JobStopped:
        """The job's tables are not in the database any more (``exc`` says so): dropped while
        the run went on, or the database made anew under it. Nothing more is done through this
        session; what they held is gone with them."""
        return self.abandon(
            StoreGone(
                f"the store {self.where}: the job's tables were dropped while the run went on "
                f"({self.first_line(exc)}); the run stopped, and what they held is gone: restore "
                "them from a backup to resume (else the same command starts the run afresh and "
                "sends every row again)"
            )
        )

    def _reconnect(self) -> psycopg.Connection[Any]:
        conn = self.connect()
        self._register(conn)
        for function, arguments in self._locks:
            if not _take_lock(conn, function, arguments):
                conn.close()
                self._conn = None
                raise self.abandon(
                    RunTaken(
                        f"the run's session with the store {self.where} was lost and another "
                        "process took the run meanwhile; this one stops (the other goes on)"
                    )
                )
        return conn

    def fetch(self, sql: str, arguments: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The first row of one statement, outside a transaction."""
        return self.run(lambda conn: conn.execute(sql, arguments).fetchone(), transaction=False)

    def try_lock(self, function: str, *arguments: int) -> bool:
        """Take a session-level advisory lock now, or say it is held; held until ``unlock``
        (and taken again after a reconnection)."""
        taken = self.run(lambda conn: _take_lock(conn, function, arguments), transaction=False)
        if taken:
            self._locks.append((function, arguments))
        return taken

    def unlock_all(self, lease: str | None = None) -> None:
        """Release the session's locks (and end the lease ``lease``, if it is still there: a
        run that ended, even badly, lets the next one start at once). Not once the store was
        given up: closing the session releases its locks, and a lease table held locked would
        make the stop wait; the lease then runs out on its own (the next run on this machine
        sees its holder gone at once)."""
        with self._mutex:  # not in the middle of another thread's transaction
            self._locks = []
            conn = self._conn
            if conn is None or conn.broken or self.lost is not None or self.outage.given_up:
                return
            with contextlib.suppress(psycopg.Error), self.watchdog.guard(lambda: _shut(self._conn)):
                if lease is not None:
                    conn.execute("DELETE FROM leases WHERE holder = %s", (lease,))
                conn.execute("SELECT pg_advisory_unlock_all()")

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


# Who holds an advisory lock (``sessions``: what each session that takes one says it is), other
# than this session, in this database: objsubid 1 for a 64-bit key, 2 for the two-key form.
_HOLDER = (
    "SELECT s.host, s.pid, s.since FROM pg_locks l LEFT JOIN sessions s "
    "ON s.backend_pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.objsubid = %s AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid "
    "AND l.pid <> pg_backend_pid() AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) LIMIT 1"
)


# The leases that conflict with a run: a whole-input run's, every lease of its job; a shard's,
# the whole input's and its own.
_CONFLICT = "job_id = %(job)s AND (%(shard)s = '' OR shard IN ('', %(shard)s))"


def _already(key: RunKey) -> str:
    """The start of a refusal of a run another process holds."""
    shard = f", shard {key.shard_text}" if key.shard else ""
    return f"already running (job {key.job!r}{shard})"


class PostgresStore(Store):
    """Open with ``PostgresStore.open(url)``; use as a context manager to close it."""

    _dialect = "postgres"

    def __init__(self, session: _Session) -> None:
        self._session = session
        self.where = session.where

    def _transact(self, work: Work[T]) -> T:
        return self._session.run(work)

    def _query(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        return self._session.run(lambda conn: conn.execute(sql, parameters).fetchall())

    @classmethod
    def open(
        cls, url: str, *, timeout: float = DEFAULT_STORE_TIMEOUT_S, hurry: Hurry | None = None
    ) -> PostgresStore:
        session = _Session(check_url(url), timeout, hurry)
        session.open()
        return cls(session)

    def _job_id(self, job: str) -> int:
        def find(conn: psycopg.Connection[Any]) -> int:
            conn.execute(
                "INSERT INTO jobs (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (job,)
            )
            row = conn.execute("SELECT job_id FROM jobs WHERE name = %s", (job,)).fetchone()
            assert row is not None
            return int(row[0])

        return self._session.run(find)

    def _since_job(self, since: str) -> int:
        found = self._fetch(
            "SELECT j.job_id FROM jobs j WHERE j.name = :since AND EXISTS "
            "(SELECT 1 FROM last_set s WHERE s.job_id = j.job_id)",
            {"since": since},
        )
        if not found:
            raise ConfigError(
                f"--since-state {since}: no job of that name has a state in {self.where}"
            )
        return int(found[0][0])

    def _lock_run(self, key: RunKey) -> None:
        """One run of a job at a time, or one run per shard, all with the same N."""
        session = self._session
        refused: str | None = None
        job_key = _key("job", key.job)
        if not session.try_lock(
            "pg_try_advisory_lock_shared" if key.shard else "pg_try_advisory_lock", job_key
        ):
            refused = self._holder(1, *_halves(job_key))
        elif key.shard is not None:
            index, count = key.shard
            shard_key = _key("shard", key.job, index, count)
            if not session.try_lock("pg_try_advisory_lock", shard_key):
                refused = self._holder(1, *_halves(shard_key))
            else:
                refused = self._other_shard_count(key.job, count)
        if refused is not None:
            session.unlock_all()
            raise RunHeld(
                f"{_already(key)}: held by {refused} in {self.where}; wait for it to finish"
            )

    def _holder(self, objsubid: int, classid: int, objid: int) -> str:
        row = self._session.fetch(_HOLDER, (objsubid, classid, objid))
        if row is None or row[0] is None:
            return "another process"
        host, pid, since = row
        return f"pid {pid} on {host} since {since:%Y-%m-%dT%H:%M:%S%z}"

    def _other_shard_count(self, job: str, count: int) -> str | None:
        """Shards of one job must agree on N: 0/2 and 0/4 would send some rows twice."""
        family = _key("shards-of", job) >> 32  # a signed 32-bit key for the two-key form
        self._session.try_lock("pg_try_advisory_lock_shared", family, count)
        row = self._session.fetch(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND objsubid = 2 AND classid = %s::bigint::oid AND objid <> %s::bigint::oid "
            "LIMIT 1",
            (family & 0xFFFFFFFF, count),
        )
        if row is None:
            return None
        return f"a shard of {row[0]} (not {count}), {self._holder(2, family & 0xFFFFFFFF, row[0])}"

    def _open_run(self, opening: Opening) -> PostgresJournal:
        key = opening.key
        job_id = self._job_id(key.job)
        self._lock_run(key)
        lease: _Lease | None = None
        try:
            compare_with = job_id if opening.since is None else self._since_job(opening.since)
            run_id = self._find_or_start(opening)
            lease = self._take_lease(job_id, key)
            return PostgresJournal(
                self._session, run_id, job_id, compare_with, opening.unfinished, lease
            )
        except BaseException:
            self._session.unlock_all(None if lease is None else lease.token)
            raise

    def _live_lease(self, job_id: int, key: RunKey, me: Holder) -> tuple[float, Holder] | None:
        """The lease that conflicts with this run and lasts longest (seconds left, its holder),
        of those whose holder is not known to be gone; None if there is none."""
        rows = self._query(
            "SELECT extract(epoch FROM until - now()), host, boot, pid_namespace, pid, "  # noqa: S608
            f"started FROM leases WHERE {_CONFLICT} AND until > now()",
            {"job": job_id, "shard": key.shard_text},
        )
        live = [
            (float(left), holder)
            for left, host, boot, namespace, pid, started in rows
            if not is_gone(holder := Holder(host, boot, namespace, int(pid), started), me)
        ]
        return max(live, key=lambda found: found[0], default=None)

    def _take_lease(self, job_id: int, key: RunKey) -> _Lease:
        """Once the run's lock is held: wait until no lease that conflicts with this run lasts
        any more (a holder whose session was lost may still be sending until its lease ends,
        unless it is known to be gone), then replace them with this process's lease."""
        token, me = uuid.uuid4().hex, this_process()
        said = False
        while (live := self._live_lease(job_id, key, me)) is not None:
            left, holder = live
            if not said:
                said = True
                log.warning(
                    "the run's last holder, %s, may still be sending (its session with the store "
                    "was lost, or it was killed): waiting %.1f s for its lease to end",
                    holder.text(), left,
                    extra={"event": "lease_wait", "holder": holder.text(), "seconds": left},
                )  # fmt: skip
            if not self._session.wait(min(left, LEASE_S) + POLL_S):
                raise RunHeld(
                    f"{_already(key)}: its last holder, {holder.text()}, may still be sending "
                    f"until its lease ends in {self.where}; the job stopped before it did"
                )
        asked = time.monotonic()

        def take(conn: psycopg.Connection[Any]) -> None:
            arguments = {"job": job_id, "shard": key.shard_text}
            conn.execute(f"DELETE FROM leases WHERE {_CONFLICT}", arguments)  # noqa: S608
            conn.execute(
                "INSERT INTO leases VALUES (%s, %s, %s, now() + make_interval(secs => %s), "
                "%s, %s, %s, %s, %s)",
                (job_id, key.shard_text, token, LEASE_S, me.host, me.pid, me.boot,
                 me.pid_namespace, me.started),
            )  # fmt: skip

        self._session.run(take)
        return _Lease(job_id, key.shard_text, token, asked)

    @contextlib.contextmanager
    def _holding_job(self, job: str) -> Iterator[None]:
        self._lock_run(RunKey(job, "", None))
        try:
            yield
        finally:
            self._session.unlock_all()

    def _reclaim(self) -> None:
        """Plain VACUUM: the deleted outcomes' space is reusable by the next runs' rows (of
        every job in the database), the table's files keep their size; it takes no lock that
        stops a run (VACUUM FULL would shrink them, holding the table for every job while it
        rewrites it: an operator's choice, by hand). The spans of unchanged rows too."""
        self._session.run(
            lambda conn: conn.execute("VACUUM (ANALYZE) outcomes, unchanged_spans"),
            transaction=False,
        )

    def budget(self, job: str) -> BudgetCore:
        return BudgetCore("postgres", self._session.run, self._job_id(job))

    def close(self) -> None:
        self._session.close()


# What libpq says of a server it did not reach, or that cannot serve now (a connection's
# failure carries no SQLSTATE: only its message tells a refused password from a refused port).
_NOT_REACHED = (
    "connection refused", "timeout expired", "no route to host", "network is unreachable",
    "connection reset", "server closed the connection", "is starting up", "shutting down",
    "in recovery mode", "too many clients", "remaining connection slots",
)  # fmt: skip


def _unusable(session: _Session, exc: psycopg.Error) -> ConfigError:
    """A store that cannot be used at the start: Unreachable (it may pass: a retry later may
    succeed) when the server did not answer or said it cannot serve now (SQLSTATE classes 08
    connection, 53 resources, 57 shutting down), else the user's to fix (a password, a
    database that does not exist, a host name that does not resolve)."""
    if exc.sqlstate is not None:
        away = exc.sqlstate[:2] in {"08", "53", "57"}
    else:
        away = any(mark in str(exc).lower() for mark in _NOT_REACHED)
    text = f"--state-url {session.where}: cannot use the store: {session.first_line(exc)}"
    return (Unreachable if away else ConfigError)(text)


@contextlib.contextmanager
def _to_read(
    location: StoreLocation, table: str
) -> Iterator[tuple[_Session, psycopg.Connection[Any] | None]]:
    """A session with the store that only reads, and its connection if the store has ``table``
    (None: not yet)."""
    session = _Session(check_url(location.url or ""), location.timeout)
    try:
        try:
            conn = session.connect()
            row = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{table}",)).fetchone()
        except psycopg.Error as exc:
            raise _unusable(session, exc) from None
        yield session, None if row is None or row[0] is None else conn
    finally:
        session.close()


@contextlib.contextmanager
def read_state(location: StoreLocation, job: str, since: str | None) -> Iterator[StateView | None]:
    """The job's state, or --since-state's job's: reads only, creates nothing."""
    with _to_read(location, "last_set") as (session, conn):
        if conn is None:
            if since is not None:
                raise ConfigError(f"--since-state {since}: {session.where} holds no job's state")
            yield None
            return
        name = since if since is not None else job
        found = conn.execute("SELECT job_id FROM jobs WHERE name = %s", (name,)).fetchone()
        if found is None and since is not None:
            raise ConfigError(
                f"--since-state {since}: no job of that name has a state in {session.where}"
            )

        def query(sql: str, parameters: dict[str, Any]) -> list[Any]:
            return session.run(lambda conn: conn.execute(sql, parameters).fetchall())

        yield None if found is None else StateView("postgres", query, int(found[0]))


def jobs_that_wrote(location: StoreLocation, results: list[str] | None) -> list[str]:
    with _to_read(location, "runs") as (session, conn):
        if conn is None:
            return []
        try:
            return core.jobs_that_wrote(
                "postgres", lambda sql, p: conn.execute(sql, p).fetchall(), results
            )
        except psycopg.Error as exc:
            raise _unusable(session, exc) from None


@dataclasses.dataclass(frozen=True, slots=True)
class _Lease:
    """The run's lease (``store/lease.py``): the row ``(job_id, shard)`` of ``leases`` whose
    holder is ``token``, asked for at ``asked`` (this process's monotonic clock)."""

    job_id: int
    shard: str
    token: str
    asked: float

    def arguments(self) -> dict[str, Any]:
        return {"job": self.job_id, "shard": self.shard, "holder": self.token}


class PostgresJournal(Journal):
    """One run's outcomes in the PostgreSQL store; see ``bulk_update.store.Journal``. A thread
    renews the run's lease every RENEW_EVERY_S; ``fence`` lets a request go only while it
    lasts."""

    _dialect = "postgres"

    def __init__(
        self,
        session: _Session,
        run_id: int,
        job_id: int,
        compare_with: int,
        unfinished: tuple[str, ...],
        lease: _Lease,
    ) -> None:
        self._session = session
        self._outage = session.outage
        self._compare_with = compare_with
        self.run_id = run_id
        self._job = job_id
        self._unfinished_are(unfinished)
        self._lease = lease
        self._local = LocalLease()
        self._local.renewed(lease.asked)
        self._writer_conn: psycopg.AsyncConnection[Any] | None = None
        self._writer_connected_before = False
        self._writer: LoopGroupWriter[Recorded | str] = LoopGroupWriter(
            self._commit_group, self._close_writer, "store-writer"
        )
        self._ending = threading.Event()
        self._renewing = threading.Thread(target=self._renew, name="bulk-update-lease", daemon=True)
        self._renewing.start()

    # The lease

    def _taken(self) -> JobStopped:
        """The run is another process's now: say so once, and use the session no more."""
        return self._session.abandon(
            RunTaken(
                f"another process took the run over in {self._session.where} (this one's "
                "lease on it had ended: its session with the store was lost); this one sends "
                "nothing more (the other goes on)"
            )
        )

    def _renew(self) -> None:
        """The lease's thread: renew it every RENEW_EVERY_S, through the session that holds the
        run's lock (a lost session takes the lock again first, or learns the run is taken)."""
        lease = self._lease
        while not self._ending.wait(RENEW_EVERY_S):
            asked = time.monotonic()
            try:
                held = self._session.run(
                    lambda conn: conn.execute(
                        "UPDATE leases SET until = now() + make_interval(secs => %(seconds)s) "  # noqa: S608
                        f"WHERE {_MINE} RETURNING 1",
                        {**lease.arguments(), "seconds": LEASE_S},
                    ).fetchone()
                )
            except JobStopped:  # the store given up, or the run taken: fence() says which
                self._local.ended()
                return
            except Exception:  # pragma: no cover - a bug: stop sending rather than guess
                log.exception("the run's lease could not be renewed")
                self._local.ended()
                return
            if held is None:
                if not self._ending.is_set():
                    self._taken()
                self._local.ended()
                return
            self._local.renewed(asked)

    def gone(self) -> JobStopped | None:
        return self._session.lost

    async def fence(self) -> None:
        while not self._local.may_send():
            self._session.check_open()
            if not self._renewing.is_alive():
                raise self._taken()
            await asyncio.sleep(POLL_S)

    def _commit_batch(self, work: Callable[[psycopg.Connection[Any]], object]) -> None:
        """``work`` in a transaction that first finds this process still holding the run (its
        lease row, locked until the commit), or RunTaken."""

        def write(conn: psycopg.Connection[Any]) -> None:
            if conn.execute(_HOLD, self._lease.arguments()).fetchone() is None:
                raise self._taken()
            work(conn)

        self._session.run(write)

    async def seal(self) -> None:
        await self._writer.stop()
        self._ending.set()
        lease = self._lease
        # The lease's row goes: any commit of this run still under way finishes first (it
        # holds the row), and none can follow.
        await asyncio.to_thread(
            self._session.run,
            lambda conn: conn.execute(f"DELETE FROM leases WHERE {_MINE}", lease.arguments()),  # noqa: S608
        )

    # The run's writer: a connection of its own that commits what the workers wait for (IDs to
    # forget, outcomes) on the event loop, a group of them (``grouped.LoopGroupWriter``) in one
    # statement (so one transaction) and one round trip, whose one value is 0 when this process
    # no longer holds the run.

    async def _commit_group(self, items: list[Recorded | str]) -> None:
        group = self._group(items)
        tries = self._session.tries(lambda: _shut(self._writer_conn))

        async def attempt() -> tuple[Any, ...] | None:
            conn = self._writer_conn or await self._connect_writer()
            return await (await conn.execute(_GROUP, group)).fetchone()

        async def away(exc: Exception) -> Cause | None:
            cause = self._session.away(exc)
            if cause is not None and _drops(self._writer_conn, exc, tries.cut):
                await self._close_writer()
            return cause

        row = await tries.arun(attempt, away)
        if not (row and row[0]):
            raise self._taken()

    async def _close_writer(self) -> None:
        if self._writer_conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self._writer_conn.close()
            self._writer_conn = None

    async def _connect_writer(self) -> psycopg.AsyncConnection[Any]:
        if self._writer_connected_before:
            # Back after an outage: the run's session (and its locks) must be too, or another
            # process may have taken the run meanwhile (RunTaken, and the job stops).
            await asyncio.to_thread(self._session.fetch, "SELECT 1", ())
        conn = await psycopg.AsyncConnection.connect(self._session.conninfo(), autocommit=True)
        await conn.execute(_SESSION)
        self._writer_conn = conn
        self._writer_connected_before = True
        return conn

    # Writing

    async def _submit(self, item: Recorded | str) -> None:
        await self._writer.submit(item)

    def _group(self, items: Sequence[Recorded | str]) -> dict[str, Any]:
        forget = [item for item in items if isinstance(item, str)]
        records = [
            {
                **dict(zip(RESULT_COLUMNS, o.as_row(), strict=True)),
                **({} if t is None else dataclasses.asdict(t)),
            }
            for o, t in (item for item in items if not isinstance(item, str))
        ]
        return {
            **self._lease.arguments(),
            "run": self.run_id,
            "forget": json.dumps(forget),
            "records": json.dumps(records),
        }

    def _commit_outcomes(self, rows: list[Recorded]) -> None:
        group = self._group(rows)
        self._commit_batch(lambda conn: conn.execute(_GROUP, group))

    def _query(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        return self._session.run(lambda conn: conn.execute(sql, parameters).fetchall())

    async def _commit_beat(self, work: Work[object]) -> None:
        # Off the event loop: a database that is away is retried for --store-timeout.
        await asyncio.to_thread(self._commit_batch, work)

    def _commit_end(self, work: Work[object]) -> None:
        """After ``seal``: not fenced by the lease (it is gone) but by the run's lock: a session
        lost meanwhile must take the lock again first."""
        self._session.run(work)

    def close(self) -> None:
        self._ending.set()
        self._writer.cancel()
        self._session.unlock_all(self._lease.token)
