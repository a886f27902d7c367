"""The SQLite store: one file per job, ``<state-dir>/<job-name>.sqlite`` (standard library).

Its tables are declared in ``store/schema.py`` (``PRAGMA user_version`` is the layout's
number); what it does as the PostgreSQL store does is in ``store/core.py``.

``outcomes.id`` is ``run_id * 2**32 + row_number``: the table is keyed by its rowid, so that a
run's outcomes sit together in the order of the input, a row costs no more than in a table of
one run, and an insert writes one B-tree (a composite key, or run_id and row_number stored as
columns, made journaling a batch 15-30 % slower). The ``run_outcomes`` view shows both.
A row is kept in few bytes (store/schema.py), encoded here (``_values``: SQLite 3.40 cannot
make a BLOB of hex text) and decoded by every read (``schema.stored_columns``).

WAL mode with ``synchronous=NORMAL``: a commit survives a process crash (kill -9); only a power
cut can lose the last commits. A new store is made under a temporary name and linked into place
once its tables exist, so that a store file is never empty: an empty one (truncated) is refused,
never taken for a new store. The locks are ``flock``s on files beside it (``store/locks.py``):
the kernel drops them when their holder dies.

A run's reads go through the store's connection, from threads of ``asyncio.to_thread``. Its
writes go through one thread of their own (``store/grouped.py``), except a worker's outcome,
forget or heartbeat while that thread has nothing to do: it is committed on the event loop, on
a connection that never waits (``busy_timeout`` 0), with the other such writes of the same turn
of the loop in one transaction (a commit a turn, not a row: issue 38), and handed to the thread
only if the file is busy. So nothing waits on the event loop, and a free file costs a row less
than a commit of its own (a commit awaited through a thread left the HTTP pool's connections
idle long enough for httpcore's idle checks to cost 40 % of the rate).
Shards of a job share the file and wait for each other's commits; a file another process holds
locked is waited for (``busy_timeout``, then again) until ``--store-timeout``, on one clock for
every operation of the run (``store/outage.py``), then the job stops (exit 3, resumable). A
full disk stops it at once (DiskFull, exit 3), a damaged file is StoreDamaged (exit 2), a
read-only one a JournalError (exit 2), each naming the file. A run whose store or lock file
is removed or replaced under it stops at its next heartbeat (StoreGone: ``SQLiteJournal``).

``--since-state`` (another job's store) is ATTACHed read only, so that the comparison and the
copy of its entries run inside SQLite. A file the job cannot use is refused in one line naming
it, never passed over (``_layout``, ``_check_columns``). Commands that only read a store
(``history``, ``status``, ``report``) open it read only (``open_to_read``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from bulk_update._constants import DEFAULT_STORE_TIMEOUT_S
from bulk_update.exceptions import (
    ConfigError,
    DiskFull,
    JournalError,
    StoreDamaged,
    StoreGone,
    StoreUnavailable,
    first_line,
)
from bulk_update.outcome import RowOutcome, Status
from bulk_update.store import core, schema
from bulk_update.store.core import (
    BudgetCore,
    Journal,
    Opening,
    Query,
    Recorded,
    StateView,
    Store,
    Work,
    entry_metadata,
)
from bulk_update.store.grouped import GroupWriter, tell
from bulk_update.store.locks import Opened, release_locks, take_lock
from bulk_update.store.outage import Cause, Hurry, Outage, Tries
from bulk_update.store.schema import STORED, STORED_TIMING
from bulk_update.store.types import RowTiming, RunKey, StoreLocation

__all__ = ["SQLiteJournal", "SQLiteStore", "jobs_that_wrote", "read_state"]

log = logging.getLogger("bulk_update")

T = TypeVar("T")
# How long one try waits for a lock another process holds (SQLite's busy handler); the run's
# outage clock (--store-timeout) decides how many tries.
_BUSY_MS = 1000
# A new store's tables are made under this name beside it, then linked into place.
_CREATING = ".{name}.{mark}.creating"

_INSERT = (
    f"INSERT OR REPLACE INTO outcomes (id, {', '.join((*STORED, *STORED_TIMING))}) "  # noqa: S608
    f"VALUES (?, {', '.join('?' for _ in (*STORED, *STORED_TIMING))})"
)
_NO_TIMING = (None, None, None)
# Where each of the results' columns (STORED) is in a row of _INSERT's values, after the id.
_AT = {name: index for index, name in enumerate(STORED)}
_VIEW = (
    "CREATE VIEW IF NOT EXISTS run_outcomes AS SELECT id >> 32 AS run_id, "  # noqa: S608
    f"id & 4294967295 AS row_number, {schema.stored_columns('sqlite')} FROM outcomes"
)
# The job's state (an operator's view): what the job last set.
_STATE_VIEW = (
    "CREATE VIEW IF NOT EXISTS job_state AS SELECT conversation_id, "  # noqa: S608
    f"{entry_metadata('last_set.')} AS metadata, set_at FROM last_set"
)
# The store's own tables (anything else in a new file is not a store).
_TABLES = tuple(table.name for table in schema.TABLES if table.sqlite is not None)
# The outcomes that also set the job's state entry: the server confirmed the row's values.
_CONFIRMED = (Status.UPDATED, Status.UNCHANGED)


def _hexed(text: str | None, prefix: str) -> str | bytes | None:
    """An ID of the API's form (``prefix`` and lowercase hex) as the bytes of its hex (read back
    as ``prefix || lower(hex(...))``); any other text as it is."""
    if text is None or not text.startswith(prefix):
        return text
    body = text[len(prefix) :]
    try:
        raw = bytes.fromhex(body)
    except ValueError:
        return text
    return raw if raw and raw.hex() == body else text


def _uri(path: Path, read_only: bool = False, immutable: bool = False) -> str:
    query = "?immutable=1" if immutable else "?mode=ro" if read_only else ""
    return path.resolve().as_uri() + query


def _connect(
    path: Path, read_only: bool = False, busy_ms: int = _BUSY_MS, immutable: bool = False
) -> sqlite3.Connection:
    db = sqlite3.connect(
        _uri(path, read_only, immutable), uri=True, isolation_level=None, check_same_thread=False
    )
    db.execute(f"PRAGMA busy_timeout={busy_ms}")
    # Per connection, like busy_timeout: in WAL mode a commit survives a process crash without
    # an fsync of its own (FULL, the default, would sync every row's commit).
    db.execute("PRAGMA synchronous=NORMAL")
    return db


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE: take the write lock up front, waiting (busy_timeout) for a shard's commit
    # instead of failing half way.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _is_busy(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in str(exc)


def store_error(exc: sqlite3.Error, path: Path) -> Exception:
    """What a SQLite error means for the job, naming the file: a full disk stops the run
    (resumable once there is room), a damaged or read-only file is the user's to mend (exit 2),
    an I/O error is a store that cannot be used now (exit 3). Anything else is returned as it is
    (a bug)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    detail = first_line(exc)
    # SQLite says "disk I/O error" when it cannot grow the -shm file (SQLITE_IOERR_SHMSIZE): a
    # state directory too small to make the store in.
    full = name.startswith("SQLITE_FULL") or "database or disk is full" in detail
    if full or (name.startswith("SQLITE_IOERR") and _no_room(path)):
        return DiskFull(str(path), detail)
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
        return StoreDamaged(damaged(path, detail))
    if name.startswith("SQLITE_READONLY"):
        return JournalError(
            f"{path}: the store cannot be written ({detail}): check the permissions of the file, "
            "of its -wal and -shm files and of its directory"
        )
    if name.startswith("SQLITE_CANTOPEN"):
        return JournalError(
            f"{path}: the store cannot be opened ({detail}): check the path and its permissions"
        )
    if name.startswith("SQLITE_IOERR"):
        return StoreUnavailable(f"the store {path} cannot be read or written ({detail})")
    return exc


# Less free space than this on the store's device, and an I/O error is a full disk: SQLite
# grows the -shm file 32 KiB at a time, the -wal a page (4 KiB) at a time.
_ROOM = 1 << 20


def _no_room(path: Path) -> bool:
    """Is the device of the store ``path`` (nearly) full?"""
    try:
        return shutil.disk_usage(path.parent).free < _ROOM
    except OSError:
        return False


def damaged(path: Path, detail: str) -> str:
    return (
        f"{path}: not a whole bulk-update store ({detail}); if it is the job's store, it is "  # noqa: S608
        "damaged and the job cannot resume from it: restore it from a backup, or remove it (with "
        "its -wal file) to start afresh (the job then forgets what it set and what its runs did)"
    )


def _retrying(outage: Outage, path: Path, work: Callable[[], T], *, reads: bool = False) -> T:
    """``work``, tried again while another process holds the store locked, on the run's one
    outage clock; other SQLite errors as ``store_error`` says. Once the outage was given up,
    writes fail at once; ``reads`` are still tried (a lock that holds writes back does not
    hold back readers of a WAL file: the results can still be written from the store)."""

    def away(exc: Exception) -> Cause | None:
        if not isinstance(exc, sqlite3.Error):
            return None
        if not _is_busy(exc):
            raise store_error(exc, path) from None
        return first_line(exc), None

    return Tries(outage, (lambda: None) if reads else outage.check).run(work, away)


def _outage(path: Path, timeout: float, hurry: Hurry | None = None) -> Outage:
    return Outage(str(path), timeout, state="locked by another process", backoff=(0.05, 0.5),
                  hurry=hurry)  # fmt: skip


def _transacting(
    db: sqlite3.Connection, outage: Outage, path: Path, work: Callable[[sqlite3.Connection], T]
) -> T:
    """``work`` in one transaction on ``db``, tried again as ``_retrying`` says."""

    def transact() -> T:
        with _transaction(db):
            return work(db)

    return _retrying(outage, path, transact)


def check_store_file(path: Path) -> None:
    """A store file that exists must hold a store: an empty file is refused, never taken for a
    new store (a store emptied by accident would be, and every row sent again). The job never
    leaves one empty (a new store is linked into place once made), so an empty file was emptied
    after runs used it, or was made by another tool; the refusal says which it likely is."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        raise StoreDamaged(_empty_store(path))


def _empty_store(path: Path) -> str:
    """The refusal of an empty store file, with its likely cause. Every run of the job locks
    ``PATH.lock`` beside its store, and never removes it: with no lock file (and no -wal) beside
    it, no run ever used this file, and it is most likely what a tool left by opening the path
    before the first run (``sqlite3 PATH``: SQLite makes an empty file). That is only likely
    (a lock file can be removed too), so the file is refused either way."""
    lock, wal = Path(f"{path}.lock"), Path(f"{path}-wal")
    if lock.exists() or wal.exists():
        return damaged(path, "the file is empty: 0 bytes; runs of the job had used it")
    return (
        f"{path}: the file is empty (0 bytes), and no run of the job ever used it (there is no "
        f"{lock.name} beside it): a tool most likely made it by opening the path before the "
        "first run (`sqlite3` without -readonly does); if so, remove it and run again. If it "
        "was the job's store, it was emptied: restore it from a backup"
    )


def _connect_to_read(path: Path) -> sqlite3.Connection:
    """A connection that only reads the store ``path``: ``mode=ro``, or, where SQLite cannot
    make the -shm file it needs to read a WAL file (a read-only directory), ``immutable=1``,
    unless a -wal file holds commits that it would then not see."""
    db = _connect(path, read_only=True)
    try:
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # SQLite opens it here
    except sqlite3.OperationalError as exc:
        db.close()
        name = getattr(exc, "sqlite_errorname", "") or ""
        wal = Path(f"{path}-wal")
        if not name.startswith("SQLITE_CANTOPEN") or (wal.exists() and wal.stat().st_size):
            raise store_error(exc, path) from None
        db = _connect(path, immutable=True)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return db


def _read_only(path: Path, outage: Outage | None = None) -> tuple[sqlite3.Connection, int]:
    """The store ``path`` opened read only, and its layout (JournalError if this version cannot
    use it: ``_layout``, ``_check_columns``). ``outage``: how long to wait while another
    process holds the file locked."""
    check_store_file(path)
    try:
        if outage is None:
            db = _connect_to_read(path)
        else:
            db = _retrying(outage, path, lambda: _connect_to_read(path), reads=True)
    except sqlite3.DatabaseError as exc:
        raise JournalError(f"{path}: not a bulk-update store ({exc})") from None
    try:
        version = _layout(db, path)
        if version == schema.LAYOUT_VERSION:
            _check_columns(db, path)
    except BaseException:
        db.close()
        raise
    return db, version


def _check_since(since: str) -> Path:
    """--since-state's file, if it is a store this version can read."""
    path = Path(since)
    if not path.is_file():
        raise ConfigError(f"--since-state {since}: no such file")
    try:
        with contextlib.closing(_connect(path, read_only=True)) as db:
            db.execute("SELECT count(*) FROM last_set").fetchone()
            _layout(db, path)
    except sqlite3.DatabaseError:
        raise ConfigError(
            f"--since-state {since}: not a bulk-update state (no last_set table)"
        ) from None
    except JournalError as exc:
        raise ConfigError(f"--since-state {exc}") from None
    return path


def jobs_that_wrote(location: StoreLocation, results: list[str] | None) -> list[str]:
    """The stores of ``location.path``'s directory (one per job), read only."""
    jobs: set[str] = set()
    for path in sorted(location.path.parent.glob("*.sqlite")):
        try:
            # Not mode=ro: a read-only connection to a WAL database leaves its -wal and -shm
            # files behind; a plain one, the last to close, removes them. It only reads.
            with contextlib.closing(sqlite3.connect(_uri(path), uri=True)) as db:
                db.execute("PRAGMA query_only = 1")
                jobs.update(core.jobs_that_wrote("sqlite", _reading(db, threading.Lock()), results))
        except sqlite3.Error:  # not a store of this version, or not a store at all
            continue
    return sorted(jobs)


def _reading(db: sqlite3.Connection, lock: threading.Lock) -> Query:
    """Reads on ``db``, one at a time (threads may share it)."""

    def query(sql: str, parameters: dict[str, Any]) -> list[Any]:
        with lock:
            return db.execute(sql, parameters).fetchall()

    return query


@contextlib.contextmanager
def read_state(location: StoreLocation, job: str, since: str | None) -> Iterator[StateView | None]:
    """The job's own store (``location.path``), or --since-state's file, read only."""
    path = location.path
    if since is not None and (source := _check_since(since)) != path:
        try:
            db = _connect_to_read(source)
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{source}: not a bulk-update store ({exc})") from None
    elif path.is_file():
        db, version = _read_only(path)
        if version == 0:
            db.close()
            raise JournalError(f"{path}: not a bulk-update store; {_MOVE_IT_AWAY}")
    else:
        yield None
        return
    with contextlib.closing(db):
        yield StateView("sqlite", _reading(db, threading.Lock()))


def _create_new(path: Path) -> None:
    """Make the store's file with its tables under a temporary name, then link it into place:
    a store file is never seen empty (a crash leaves only the temporary file, removed by the
    next run). Another process that made it first wins: its file is used."""
    for stale in path.parent.glob(_CREATING.format(name=path.name, mark="*")):
        if time.time() - stale.stat().st_mtime > 60:  # a crashed creation, not one under way
            with contextlib.suppress(OSError):
                stale.unlink()
    temporary = path.with_name(_CREATING.format(name=path.name, mark=secrets.token_hex(4)))
    try:
        _with_tables(temporary).close()  # the last connection: SQLite folds the WAL into the file
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    except sqlite3.Error as exc:
        raise store_error(exc, path) from None
    except OSError as exc:
        raise JournalError(f"{path}: cannot create the store: {exc.strerror or exc}") from None
    finally:
        _remove_creating(temporary)


# What a refusal of a file that is no store this version can use says to do.
_MOVE_IT_AWAY = (
    "move it away to start afresh (the job then forgets what it set and what its runs did), or "
    "choose another --state-dir or --job-name"
)


def _layout(db: sqlite3.Connection, path: Path) -> int:
    """The layout of the store ``db`` (0: a database with none of the job's tables yet, a new
    store), if this version can use it; JournalError, naming it, if it cannot: a number no
    version wrote, a development or a newer layout, or a table or view that is no store's."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    refusal = version and schema.layout_refusal(str(path), version, _MOVE_IT_AWAY)
    if refusal:
        raise JournalError(refusal)
    ours = ", ".join(f"'{name}'" for name in (*_TABLES, "run_outcomes", "job_state"))
    others = db.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "  # noqa: S608
        f"AND name NOT IN ({ours}) AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ).fetchall()
    if others:
        raise JournalError(
            f"{path}: not a bulk-update store (it holds {others[0][0]!r}, no table of a "
            "store's); choose another --state-dir or --job-name"
        )
    return version


def _check_columns(db: sqlite3.Connection, path: Path) -> None:
    """Each of the job's tables the file has has the columns this layout declares
    (JournalError naming the file if not)."""
    found: dict[str, list[str]] = {}
    for name in _TABLES:
        if columns := [row[1] for row in db.execute(f"PRAGMA main.table_info({name})")]:
            found[name] = columns
    if refusal := schema.wrong_tables("sqlite", found, str(path), _MOVE_IT_AWAY):
        raise JournalError(refusal)


def _with_tables(path: Path) -> sqlite3.Connection:
    """A connection to the store ``path``, in WAL mode, its tables made (``_make_tables``)."""
    db = _connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        _make_tables(db, path)
    except BaseException:
        db.close()
        raise
    return db


def _make_tables(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or bring a store of an older released layout to this one; refuse
    (JournalError) a file this version cannot use."""
    with _transaction(db):
        version = _layout(db, path)
        if version in (0, schema.LAYOUT_VERSION):  # tables of this layout (or another program's)
            _check_columns(db, path)
        for statement in schema.create("sqlite"):
            db.execute(statement)
        for statement in schema.upgrade("sqlite", version) if version else ():
            db.execute(statement)
        db.execute(_VIEW)
        db.execute(_STATE_VIEW)
        _check_columns(db, path)  # and once made or brought to this layout
        db.execute(f"PRAGMA user_version={schema.LAYOUT_VERSION}")


class SQLiteStore(Store):
    """Open with ``SQLiteStore.open``; use as a context manager to close it. ``timeout``: how
    long the file may stay locked by another process (--store-timeout)."""

    _dialect = "sqlite"

    def __init__(self, path: Path, db: sqlite3.Connection, outage: Outage, opened: Opened) -> None:
        self.path = path
        self.where = str(path)
        self._db = db
        self._outage = outage
        # The file the store's connection opened: a run stops once another is at its path.
        self._opened = opened

    @classmethod
    def open(
        cls, path: Path, timeout: float = DEFAULT_STORE_TIMEOUT_S, hurry: Hurry | None = None
    ) -> SQLiteStore:
        """``hurry``: the job's (``outage.Hurry``): a signal while the store opens ends its
        waits too. A file another process holds locked is waited for as the run waits for it
        (StoreUnavailable after --store-timeout, exit 3)."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"{path}: cannot create its directory: {exc.strerror}") from None
        check_store_file(path)
        if not path.exists():
            _create_new(path)
        outage = _outage(path, timeout, hurry)
        try:
            db = _retrying(outage, path, lambda: _with_tables(path))
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"{path}: not a bulk-update store ({exc})") from None
        return cls(path, db, outage, Opened.at(path))

    @classmethod
    def open_to_read(cls, path: Path, timeout: float = DEFAULT_STORE_TIMEOUT_S) -> SQLiteStore:
        """A store that a command only reads (``history``, ``status``, ``report``), opened read
        only: a read-only file, or one in a read-only directory, can be read, and nothing in it
        changes. A store of an older released layout is brought to this one first, as a run
        would (``open``): that takes a file that can be written."""
        outage = _outage(path, timeout)
        db, version = _read_only(path, outage)
        if version == schema.LAYOUT_VERSION:
            return cls(path, db, outage, Opened.at(path))
        db.close()
        if version == 0:
            raise JournalError(
                f"{path}: holds no bulk-update store (no run of a job has used it); give "
                "--state-dir or --state-url as the job's runs had them"
            )
        return cls.open(path, timeout)

    def _transact(self, work: Work[T]) -> T:
        return _transacting(self._db, self._outage, self.path, work)

    def _query(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        return _retrying(
            self._outage, self.path, lambda: self._db.execute(sql, parameters).fetchall()
        )

    def _open_run(self, opening: Opening) -> SQLiteJournal:
        key = opening.key
        locks = _lock_run(self.path, key)
        try:
            since_path: Path | None = None
            if opening.since is not None:
                found = _check_since(opening.since)
                if found.resolve() != self.path.resolve():  # its own state: nothing to attach
                    since_path = found
                    self._db.execute("ATTACH DATABASE ? AS since", (_uri(found, read_only=True),))
            run_id = self._find_or_start(opening)
            return SQLiteJournal(
                self._opened, self._db, self._outage, run_id, locks, since_path,
                opening.unfinished,
            )  # fmt: skip
        except BaseException:
            release_locks(locks)
            raise

    @contextlib.contextmanager
    def _holding_job(self, job: str) -> Iterator[None]:
        locks = _lock_run(self.path, RunKey(job, "", None))
        try:
            yield
        finally:
            release_locks(locks)

    def _reclaim(self) -> None:
        """VACUUM rewrites the file without its free pages; the -wal it wrote is emptied."""

        def vacuum() -> None:
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        _retrying(self._outage, self.path, vacuum)

    def budget(self, job: str) -> BudgetCore:
        """Its own connection, so that a claim from a thread never meets a journal's
        transaction."""
        db = _connect(self.path)
        return BudgetCore(
            "sqlite", functools.partial(_transacting, db, self._outage, self.path), job, db.close
        )

    def close(self) -> None:
        self._db.close()


# What a run says of the store, or a lock file, removed or replaced while it went on.
_GONE = {
    "store removed": "the store was removed while the run went on; the run stopped, and writes "
    "it back where it was as it ends (from the file it still has open), so that the same "
    "command resumes",
    "store replaced": "the store was replaced by another file while the run went on; the run "
    "stopped: what it did is in its results, not in the file there now (the same command would "
    "send those rows again)",
    "lock": "the run's lock file was {became} while the run went on (another run of the job "
    "could start beside it); the run stopped: run the same command to resume",
}


def _remove_creating(temporary: Path) -> None:
    """A store made (or copied) under a temporary name, and its -wal and -shm, removed."""
    for leftover in (temporary, Path(f"{temporary}-wal"), Path(f"{temporary}-shm")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


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
        release_locks(locks)
        raise
    return locks


# What a run's writer commits: a function of its connection, run inside the group's transaction.
Write = Callable[[sqlite3.Connection], object]


class SQLiteJournal(Journal):
    """One run's outcomes in a SQLite store; see ``bulk_update.store.Journal`` (and this
    module's docstring: how its reads and writes reach the file).

    Every heartbeat looks whether the store's file and the run's lock files are still the
    files the run opened (a ``stat`` of each): one removed or replaced stops the run's requests
    (``fence``: StoreGone). A store removed is still open here, whole: the run records what its
    requests in flight did, its results are written from it, and it is written back where it
    was with the run's end (``finish``), so that the same command resumes."""

    def __init__(
        self,
        opened: Opened,
        db: sqlite3.Connection,
        outage: Outage,
        run_id: int,
        locks: list[IO[str] | None],
        since: Path | None,
        unfinished: tuple[str, ...],
    ) -> None:
        path = self.path = opened.path
        self._db = db
        self._read_lock = threading.Lock()  # one read at a time on the store's connection
        self._state_in = "" if since is None else "since."
        self.run_id = run_id
        self._outage = outage
        self._base = run_id * schema.ROWS_PER_RUN  # outcomes.id of row 0
        self._locks = locks
        self._dialect = "sqlite"
        self._unfinished_are(unfinished)
        self._write_db = _connect(path)
        self._now_db = _connect(path, busy_ms=0)  # on the event loop: never waits
        if since is not None:
            for db in (self._write_db, self._now_db):
                db.execute("ATTACH DATABASE ? AS since", (_uri(since, read_only=True),))
        self._writer: GroupWriter[Write] = GroupWriter(self._commit, "bulk-update-store-writer")
        # This turn of the event loop's writes, committed together (``_commit_turn``), and the
        # groups handed to the writer thread for a busy file.
        self._turn: list[tuple[Write, asyncio.Future[None]]] = []
        self._handing: set[asyncio.Future[None]] = set()
        # A full disk or a damaged file: every later write fails alike, at once.
        self._broken: Exception | None = None
        # The files the run holds (the store first), and what became of one (the run stops).
        self._held = (opened, *(Opened.at(Path(lock.name), lock) for lock in locks if lock))
        self._gone: StoreGone | None = None

    def _commit(self, works: list[Write]) -> None:
        if self._broken is not None:
            raise self._broken

        def commit(db: sqlite3.Connection) -> None:
            for work in works:
                work(db)

        try:
            _transacting(self._write_db, self._outage, self.path, commit)
        except (DiskFull, StoreDamaged, JournalError) as exc:
            self._broken = exc
            raise

    async def _write(self, work: Write) -> None:
        """Committed on the event loop if the writer thread is idle and the file free, with
        the other writes of the same turn of the loop in one transaction (``_commit_turn``);
        else through the thread, which waits for the file (up to --store-timeout) off the
        event loop. Returns once committed."""
        if self._broken is not None:
            raise self._broken
        if not self._writer.idle():
            await self._writer.submit(work)
            return
        loop = asyncio.get_running_loop()
        if not self._turn:
            loop.call_soon(self._commit_turn)
        done: asyncio.Future[None] = loop.create_future()
        self._turn.append((work, done))
        await done

    def _commit_turn(self) -> None:
        """The writes of one turn of the event loop (each a worker's outcome, forget or
        heartbeat, the workers whose answers came together), committed in one transaction on
        the spot: a commit (and its write to the WAL) a turn, not a row. Each write is still
        committed before its worker goes on; a write whose worker was cancelled meanwhile is
        left out (``Pipeline.settle`` commits what it had in hand). A busy file: the group goes
        to the writer thread, whole."""
        turn = [(work, done) for work, done in self._turn if not done.done()]
        self._turn = []
        if not turn:
            return
        error: BaseException | None = self._broken
        if error is None:
            try:
                with _transaction(self._now_db):
                    for work, _ in turn:
                        work(self._now_db)
            except sqlite3.Error as exc:
                if _is_busy(exc):
                    handing = asyncio.ensure_future(self._hand_over(turn))
                    self._handing.add(handing)
                    handing.add_done_callback(self._handing.discard)
                    return
                error = store_error(exc, self.path)
                if isinstance(error, DiskFull | StoreDamaged | JournalError):
                    self._broken = error
            except Exception as exc:  # a bug: its worker stops the run with it
                error = exc
        for _, done in turn:
            tell(done, error)

    async def _hand_over(self, turn: list[tuple[Write, asyncio.Future[None]]]) -> None:
        """A turn's writes the file was busy for, through the writer thread in one commit."""

        def work(db: sqlite3.Connection) -> None:
            for each, _ in turn:
                each(db)

        error: BaseException | None = None
        try:
            await self._writer.submit(work)
        except Exception as exc:
            error = exc
        for _, done in turn:
            tell(done, error)

    def _query(self, sql: str, parameters: dict[str, Any]) -> list[Any]:
        read = _reading(self._db, self._read_lock)
        return _retrying(self._outage, self.path, lambda: read(sql, parameters), reads=True)

    async def _commit_beat(self, work: Work[object]) -> None:
        self.gone()
        await self._write(work)

    def _commit_end(self, work: Work[object]) -> None:
        """The run's end, committed; a store removed meanwhile is written back, with it."""
        self._writer.run(work)
        if self.gone() is not None and self._held[0].became() == "removed":
            self._write_back()

    # The files the run holds

    def gone(self) -> StoreGone | None:
        if self._gone is None:
            for opened in self._held:
                became = opened.became()
                if became is not None:
                    what = f"store {became}" if opened is self._held[0] else "lock"
                    said = _GONE[what].format(became=became)
                    self._gone = StoreGone(f"{opened.path}: {said}")
                    break
        return self._gone

    def _write_back(self) -> None:
        """The store as this run sees it (the file it still has open, whole), copied under a
        temporary name and linked where it was, as a new store is made: never seen half
        written, and never over a file another process put there meanwhile. The run's own
        connections to the removed file then close without touching the copy's -wal and -shm
        (SQLite checkpoints and removes them on close only for a file still at its path)."""
        path = self.path
        copy = path.with_name(_CREATING.format(name=path.name, mark=secrets.token_hex(4)))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(copy)) as target, self._read_lock:
                self._db.backup(target)
            os.link(copy, path)
        except (OSError, sqlite3.Error) as exc:
            found = isinstance(exc, FileExistsError)
            log.error(
                "%s: the store was not written back (%s): what this run did is in its "
                "results only", path, "another file is there now" if found else first_line(exc),
                extra={"event": "store_not_written_back"},
            )  # fmt: skip
        else:
            log.warning(
                "%s: the store, removed while the run went on, is written back: the same "
                "command resumes", path, extra={"event": "store_written_back"},
            )  # fmt: skip
        finally:
            _remove_creating(copy)

    # Writing

    async def fence(self) -> None:
        """A request goes only while the run's store and locks are the files it opened (the
        flocks cannot be lost while the process lives, but their files can be removed)."""
        if self._gone is not None:
            raise self._gone

    async def _submit(self, item: Recorded | str) -> None:
        if isinstance(item, str):
            await self._write(
                lambda db: db.execute("DELETE FROM last_set WHERE conversation_id = ?", (item,))
            )
            return
        outcome, timing = item
        values = self._values(outcome, timing)
        confirmed = outcome.status in _CONFIRMED
        assert not confirmed or outcome.sent_metadata is not None
        # The metadata is the outcome's sent_metadata: the entry names the outcome instead.
        entry = (outcome.conversation_id, int(time.time()), values[0])

        def write(db: sqlite3.Connection) -> None:
            db.execute(_INSERT, values)
            if confirmed:
                db.execute(
                    "INSERT OR REPLACE INTO last_set (conversation_id, set_at, outcome) "
                    "VALUES (?, ?, ?)",
                    entry,
                )

        await self._write(write)

    def _values(self, outcome: RowOutcome, timing: RowTiming | None = None) -> tuple[Any, ...]:
        """The row of outcomes (_INSERT's columns), as it keeps the values (store/schema.py)."""
        values = list(outcome.as_row()[1:])
        for name, prefix in schema.ID_PREFIXES.items():
            values[_AT[name]] = _hexed(values[_AT[name]], prefix)
        if values[_AT["metadata"]] == values[_AT["sent_metadata"]] is not None:
            values[_AT["metadata"]] = ""
        if timing is None:
            return (self._base + outcome.row_number, *values, *_NO_TIMING)
        sent_ms = math.floor(timing.sent_at * 1000)
        answer_ms = math.floor(timing.answered_at * 1000) - sent_ms
        return (self._base + outcome.row_number, *values, sent_ms, answer_ms, timing.latency_ms)

    def _commit_batch(self, write: Write) -> None:
        if self._gone is not None:  # the run stops: no more batches
            raise self._gone
        self._writer.run(write)

    def _commit_outcomes(self, rows: list[Recorded]) -> None:
        values = [self._values(outcome) for outcome, _ in rows]
        self._commit_batch(lambda db: db.executemany(_INSERT, values))

    async def seal(self) -> None:
        """The writes submitted so far are committed (or failed): the run's outcomes no longer
        change (this process is the only writer: its flocks say so)."""
        await self._writer.barrier()

    def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(sqlite3.Error):
            self._write_db.close()
            self._now_db.close()
        if self._state_in:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("DETACH DATABASE since")
        release_locks(self._locks)
        self._locks = []
