"""Journal: every row's outcome, durably, as it arrives (SQLite in WAL mode, standard library).

One journal per results path. It remembers what it belongs to (a fingerprint of the input and
the mapping) and refuses a run whose input or mapping changed. A sent row's outcome is committed
on its own the moment it is known, so a crash can only lose the rows that were in flight; rows
that were not sent (invalid, unprocessed) are committed a batch at a time. The results file is
produced from the journal, in row order.

A second run on the same journal is refused while the first holds its lock (``flock`` on
``<journal>.lock``, released by the kernel even after ``kill -9``).

The job's state (``state.py``, incremental runs) is ATTACHed to the same connection: an
``updated`` outcome and the state entry it proves commit in one transaction, and ``forget``
clears a row's entry before the row is sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import polars as pl

from bulk_update import state
from bulk_update.exceptions import JournalError
from bulk_update.locks import release_lock, take_lock
from bulk_update.outcome import RESULT_COLUMNS, RowOutcome, Status

SCHEMA_VERSION = "1"
# Rows that a resumed run processes again; with --retry-failed, failed rows too.
_NOT_FINISHED = (Status.UNPROCESSED.value, Status.PLANNED.value)
_NOT_FINISHED_RETRYING = (*_NOT_FINISHED, Status.FAILED.value)

_COLUMNS = ", ".join(RESULT_COLUMNS)
_PLACEHOLDERS = ", ".join("?" for _ in RESULT_COLUMNS)
_INSERT = f"INSERT OR REPLACE INTO outcomes ({_COLUMNS}) VALUES ({_PLACEHOLDERS})"  # noqa: S608


def file_fingerprint(path: str) -> dict[str, Any]:
    """Size, mtime and a hash of the first and last 1 MiB: cheap, and any edit changes it."""
    if "://" in path:
        return {"path": path}
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if stat.st_size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
    return {
        "path": str(Path(path).resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256_ends": digest.hexdigest(),
    }


def _row(outcome: RowOutcome) -> tuple[Any, ...]:
    return (
        outcome.row_number,
        outcome.conversation_id,
        outcome.status.value,
        outcome.http_status,
        outcome.attempts,
        outcome.error_type,
        outcome.error_code,
        outcome.error_message,
        outcome.request_id,
        outcome.created_at,
        outcome.metadata,
        outcome.sent_metadata,
    )


class Journal:
    """Open with ``Journal.open``; use as a context manager to release the lock."""

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        lock: IO[str] | None,
        retry_failed: bool = False,
    ):
        self.path = path
        self._db = connection
        self._lock = lock
        self.has_state = False
        self._compare_with = state.OWN
        self._unfinished = _NOT_FINISHED_RETRYING if retry_failed else _NOT_FINISHED
        self._unfinished_sql = ", ".join("?" for _ in self._unfinished)

    @classmethod
    def open(
        cls,
        path: Path,
        fingerprint: Mapping[str, Any],
        *,
        restart: bool = False,
        retry_failed: bool = False,
    ) -> Journal:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = take_lock(Path(str(path) + ".lock"))
        try:
            if restart and path.exists():
                _set_aside(path)
            connection = sqlite3.connect(
                path.resolve().as_uri(), uri=True, isolation_level=None, check_same_thread=False
            )
            # Shards of one job share its state database: wait for each other's commits.
            connection.execute("PRAGMA busy_timeout=30000")
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives a process crash (kill -9); only a power cut
            # can lose the last commits.
            connection.execute("PRAGMA synchronous=NORMAL")
            journal = cls(path, connection, lock, retry_failed)
            journal._check_fingerprint(dict(fingerprint))
        except BaseException:
            release_lock(lock)
            raise
        return journal

    def _check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute(
            "CREATE TABLE IF NOT EXISTS outcomes (row_number INTEGER PRIMARY KEY, "
            "conversation_id TEXT, status TEXT NOT NULL, http_status INTEGER, attempts INTEGER, "
            "error_type TEXT, error_code TEXT, error_message TEXT, request_id TEXT, "
            "created_at INTEGER, metadata TEXT, sent_metadata TEXT)"
        )
        wanted = json.dumps({"schema": SCHEMA_VERSION, **fingerprint}, sort_keys=True)
        stored = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        if stored is None:
            db.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (wanted,))
        elif stored[0] != wanted:
            old, new = json.loads(stored[0]), json.loads(wanted)
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise JournalError(
                f"{self.path}: this journal belongs to another input or mapping "
                f"(changed: {', '.join(changed)}); run with --restart to start over "
                "(the old journal is kept aside)"
            )

    # The job's state (incremental runs), on this connection so that both commit together

    def attach_state(self, path: Path, since: Path | None = None) -> None:
        """Attach the job's state database (created if new) and, read only, the one named by
        --since-state to compare against instead."""
        db = self._db
        path.parent.mkdir(parents=True, exist_ok=True)
        db.execute(f"ATTACH DATABASE ? AS {state.OWN}", (path.resolve().as_uri(),))
        db.execute(f"PRAGMA {state.OWN}.journal_mode=WAL")
        db.execute(f"PRAGMA {state.OWN}.synchronous=NORMAL")
        with self.transaction():
            state.create_tables(db, state.OWN)
        self._compare_with = state.OWN
        if since is not None:
            db.execute(f"ATTACH DATABASE ? AS {state.SINCE}", (state.read_only_uri(since),))
            self._compare_with = state.SINCE
        self.has_state = True

    def changed_rows(self, rows: pl.DataFrame) -> list[int]:
        """Of a batch's valid rows (``ROW_NUMBER, conversation_id, sent_metadata``), the row
        numbers that differ from what the state says was last set."""
        return state.changed_rows(self._db, self._compare_with, rows)

    def forget(self, conversation_id: str) -> None:
        """Before a row is sent: from now until the API confirms, its state is unknown."""
        if self.has_state:
            state.forget(self._db, conversation_id)

    def state_entries(self) -> int:
        return state.entries(self._db, state.OWN) if self.has_state else 0

    # Writing

    def record(self, outcome: RowOutcome) -> None:
        """Commit one outcome now (a sent row: it must survive a crash), with its state."""
        if not (self.has_state and outcome.status is Status.UPDATED):
            self._insert(outcome)
            return
        assert outcome.sent_metadata is not None
        with self.transaction():
            self._insert(outcome)
            state.upsert(self._db, outcome.conversation_id, outcome.sent_metadata, state.now())

    def _insert(self, outcome: RowOutcome) -> None:
        self._db.execute(_INSERT, _row(outcome))

    def record_many(self, outcomes: Iterable[RowOutcome]) -> None:
        """Commit many outcomes in one transaction (rows that were not sent)."""
        with self.transaction():
            self._db.executemany(_INSERT, (_row(o) for o in outcomes))

    def record_unchanged(self, rows: pl.DataFrame) -> None:
        """Commit a batch's ``unchanged`` rows (``ROW_NUMBER, conversation_id,
        sent_metadata``) in one statement. Found unchanged against --since-state, they take
        its entries over into this job's state, in the same transaction."""
        if rows.is_empty():
            return
        rows_json = state.as_json(rows)
        with self.transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO outcomes (row_number, conversation_id, status, attempts, "
                "sent_metadata) SELECT json_extract(value, '$.r'), json_extract(value, '$.i'), "
                "?, 0, json_extract(value, '$.m') FROM json_each(?)",
                (Status.UNCHANGED.value, rows_json),
            )
            if self._compare_with == state.SINCE:
                state.copy_from_since(self._db, rows_json)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        # IMMEDIATE: take the write locks up front, waiting (busy_timeout) for a shard's commit
        # instead of failing half way.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # Reading

    def finished_between(self, first: int, last: int) -> dict[int, Status]:
        """Rows in ``[first, last]`` that a resumed run must not process again."""
        rows = self._db.execute(
            "SELECT row_number, status FROM outcomes WHERE row_number BETWEEN ? AND ? "  # noqa: S608
            f"AND status NOT IN ({self._unfinished_sql})",
            (first, last, *self._unfinished),
        )
        return {number: Status(status) for number, status in rows}

    def rows_between(self, first: int, last: int) -> list[tuple[Any, ...]]:
        """Outcomes in ``[first, last]`` as tuples in RESULT_COLUMNS order, by row number."""
        return self._db.execute(
            f"SELECT {_COLUMNS} FROM outcomes WHERE row_number BETWEEN ? AND ? "  # noqa: S608
            "ORDER BY row_number",
            (first, last),
        ).fetchall()

    def finished_counts_between(self, first: int, last: int) -> dict[Status, int]:
        """How many rows in ``[first, last]`` are finished, by status (one indexed query)."""
        rows = self._db.execute(
            "SELECT status, count(*) FROM outcomes WHERE row_number BETWEEN ? AND ? "  # noqa: S608
            f"AND status NOT IN ({self._unfinished_sql}) GROUP BY status",
            (first, last, *self._unfinished),
        )
        return {Status(status): count for status, count in rows}

    def finished_count(self) -> int:
        """Rows finished by earlier runs: a resumed run does not process them again."""
        row = self._db.execute(
            f"SELECT count(*) FROM outcomes WHERE status NOT IN ({self._unfinished_sql})",  # noqa: S608
            self._unfinished,
        ).fetchone()
        return int(row[0])

    def counts(self) -> dict[str, int]:
        """Journaled outcomes by status (rows never journaled are not counted here)."""
        rows = self._db.execute("SELECT status, count(*) FROM outcomes GROUP BY status")
        return dict(rows.fetchall())

    def close(self) -> None:
        self._db.close()
        release_lock(self._lock)
        self._lock = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _set_aside(path: Path) -> Path:
    """Move a journal (and its WAL files) aside for --restart; never delete it."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.{stamp}.old")
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(path) + suffix)
        if source.exists():
            source.rename(Path(str(aside) + suffix))
    return aside
