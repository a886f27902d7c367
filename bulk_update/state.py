"""State: what a job last set, per conversation ID, so a re-run sends only what changed.

One SQLite database per job, ``<state dir>/<job name>.state.sqlite``, with one table::

    last_set(conversation_id PRIMARY KEY, metadata, set_at)

``metadata`` is the JSON object the job sent, verbatim (the results' ``sent_metadata``), and
``set_at`` when the API confirmed it (UTC, ISO 8601). A row whose planned metadata is the same
text is ``unchanged``: not sent.

The rules that keep it honest (the journal applies them, in its transactions):
- an entry is written only in the same transaction as the journal's ``updated`` outcome
  (the state database is ATTACHed to the journal's connection);
- an entry is deleted before its row is sent: until the API confirms, the job does not know
  what the server holds, and a row it does not know about is sent next time. So a crash, a
  timeout or a failure can cost a repeated request, never a skipped update.

It records what this job set, not what the server holds now: anyone else may have changed a
conversation since. ``--full`` sends every row regardless.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import polars as pl

from bulk_update.locks import release_lock, take_lock
from bulk_update.read import ROW_NUMBER

SCHEMA_VERSION = "1"
OWN = "state"  # the schema name of this job's state on the journal's connection
SINCE = "since"  # the schema name of --since-state (read only)


def now() -> str:
    """The ``set_at`` of an entry written now."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def create_tables(db: sqlite3.Connection, schema: str) -> None:
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.last_set (conversation_id TEXT PRIMARY KEY, "
        "metadata TEXT NOT NULL, set_at TEXT NOT NULL) WITHOUT ROWID"
    )
    db.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )
    db.execute(
        f"INSERT OR IGNORE INTO {schema}.meta VALUES ('schema', ?)",  # noqa: S608
        (SCHEMA_VERSION,),
    )


def as_json(rows: pl.DataFrame) -> str:
    """A batch's rows (``ROW_NUMBER, conversation_id, sent_metadata``) as one JSON array for
    SQLite's ``json_each``: the comparison and the journaling of unchanged rows then run inside
    SQLite, with no Python object per row. Sorted by ID, so the state's B-tree is walked in
    order rather than probed at random."""
    short = rows.select(r=ROW_NUMBER, i="conversation_id", m="sent_metadata")
    return short.sort("i").write_json()


def changed_rows(db: sqlite3.Connection, schema: str, rows: pl.DataFrame) -> list[int]:
    """The row numbers of ``rows`` whose metadata is not, verbatim, what ``schema``'s state
    says the job last set (a changed value, or no entry): the rows to send."""
    if rows.is_empty():
        return []
    found = db.execute(
        "SELECT json_extract(j.value, '$.r') FROM json_each(?) AS j WHERE NOT EXISTS ("  # noqa: S608
        f"SELECT 1 FROM {schema}.last_set AS s WHERE s.conversation_id = "
        "json_extract(j.value, '$.i') AND s.metadata = json_extract(j.value, '$.m'))",
        (as_json(rows),),
    )
    return [number for (number,) in found]


def upsert(db: sqlite3.Connection, conversation_id: str, metadata: str, set_at: str) -> None:
    db.execute(
        f"INSERT OR REPLACE INTO {OWN}.last_set VALUES (?, ?, ?)",  # noqa: S608
        (conversation_id, metadata, set_at),
    )


def forget(db: sqlite3.Connection, conversation_id: str) -> None:
    db.execute(f"DELETE FROM {OWN}.last_set WHERE conversation_id = ?", (conversation_id,))  # noqa: S608


def copy_from_since(db: sqlite3.Connection, rows_json: str) -> None:
    """Take over --since-state's entries for the rows (``as_json``) found unchanged against it."""
    db.execute(
        f"INSERT OR REPLACE INTO {OWN}.last_set SELECT s.conversation_id, s.metadata, "  # noqa: S608
        f"s.set_at FROM json_each(?) AS j JOIN {SINCE}.last_set AS s "
        "ON s.conversation_id = json_extract(j.value, '$.i')",
        (rows_json,),
    )


def entries(db: sqlite3.Connection, schema: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {schema}.last_set").fetchone()[0])  # noqa: S608


def read_only_uri(path: Path) -> str:
    return f"{path.resolve().as_uri()}?mode=ro"


@contextlib.contextmanager
def open_read_only(path: Path) -> Iterator[sqlite3.Connection | None]:
    """A state database to compare against (a dry run, which writes nothing), or None if the
    job has never set anything."""
    if not path.exists():
        yield None
        return
    db = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def job_lock(path: Path, shard: tuple[int, int] | None, job_name: str) -> Iterator[None]:
    """One run of a job at a time, or one run per shard: a whole-input run takes the job's
    lock exclusively, a shard shares it and takes its own shard's lock exclusively. Two runs
    writing the same entries at once could otherwise record them in the wrong order."""
    what = f" (job {job_name!r})"
    locks: list[IO[str] | None] = []
    try:
        locks.append(take_lock(Path(f"{path}.lock"), shared=shard is not None, what=what))
        if shard is not None:
            index, count = shard
            locks.append(take_lock(Path(f"{path}.{index}-of-{count}.lock"), what=what))
        yield
    finally:
        for lock in reversed(locks):
            release_lock(lock)
