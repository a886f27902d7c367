"""Real faults for the tests: a small filesystem that fills up (tmpfs, as root), a store held by
another process, the helpers that read what a run recorded in either store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import PostgresServer


class Tmpfs:
    """A tmpfs of ``size`` mounted at ``path`` (``resize`` it, ``read_only`` it); unmounted on
    exit. Skips the test, saying why, where a filesystem cannot be mounted (not root)."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        self.size = size

    def __enter__(self) -> Tmpfs:
        self.path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        return self

    def remount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.path)], check=True)

    def resize(self, size: str) -> None:
        self.remount(f"size={size}")

    def __exit__(self, *exc_info: object) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def summary_counts(stderr: str) -> dict[str, int]:
    """The counts of the one-line summary that ends a run's stderr."""
    line = next(line for line in reversed(stderr.splitlines()) if line.startswith("bulk-update:"))
    found = re.search(r"rows: ([^;]*);", line)
    assert found is not None, line
    return {k: int(v) for k, v in (pair.split("=") for pair in found.group(1).split())}


def store_counts(backend: str, where: str, postgres: PostgresServer | None) -> dict[str, int]:
    """Outcomes by status of the newest run, from either store, as an operator would read it."""
    sql = (
        "SELECT status, count(*) FROM {outcomes} WHERE {run} = (SELECT max(run_id) FROM {runs}) "
        "GROUP BY status"
    )
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(where)) as db:
            rows = db.execute(
                sql.format(outcomes="run_outcomes", run="run_id", runs="runs")
            ).fetchall()
    else:
        assert postgres is not None
        rows = postgres.query(
            where.rsplit("/", 1)[1],
            sql.format(outcomes="bulk_update.run_outcomes", run="run_id", runs="bulk_update.runs"),
        )
    return {str(status): int(str(n)) for status, n in rows}


def store_run(backend: str, where: str, postgres: PostgresServer | None) -> dict[str, Any]:
    """The newest run's end as its store recorded it."""
    sql = "SELECT exit_code, stopped_by, ended_at IS NOT NULL FROM {runs} ORDER BY run_id DESC"
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(where)) as db:
            row = db.execute(sql.format(runs="runs")).fetchone()
    else:
        assert postgres is not None
        row = postgres.query(where.rsplit("/", 1)[1], sql.format(runs="bulk_update.runs"))[0]
    return {"exit_code": row[0], "stopped_by": row[1], "ended": bool(row[2])}


@contextlib.contextmanager
def holding_sqlite(path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the SQLite store's write lock (an open write transaction) until
    the block ends: as a `sqlite3` shell left in a transaction, or a backup tool, would."""
    code = (
        "import sqlite3, sys\n"
        f"db = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "print('held', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    try:
        yield holder
    finally:
        holder.kill()
        holder.wait()


@contextlib.contextmanager
def holding_postgres(url: str, tables: tuple[str, ...] = ("outcomes",)) -> Iterator[None]:
    """Another session holds the store's ``tables`` locked (a migration, a report with LOCK
    TABLE) until the block ends. By default the outcomes table only: the run's other tables
    stay free (its heartbeat and its lease go through: a stuck commit must not hide behind
    them)."""
    import psycopg

    with psycopg.connect(url) as conn:
        names = ", ".join(f"bulk_update.{table}" for table in tables)
        conn.execute(f"LOCK TABLE {names} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            conn.rollback()


# Files as older versions left them, built with the SQL those versions ran.

# The journal the first versions kept beside the results, RESULTS.journal.sqlite
# (bulk_update/journal.py from d373d66 to a850326, before globs and shards).
FIRST_JOURNAL = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS outcomes (row_number INTEGER PRIMARY KEY, "
    "conversation_id TEXT, status TEXT NOT NULL, http_status INTEGER, attempts INTEGER, "
    "error_type TEXT, error_code TEXT, error_message TEXT, request_id TEXT, "
    "created_at INTEGER, metadata TEXT, sent_metadata TEXT)",
)
# The first store of one file per job (27f5cdf, PRAGMA user_version 1): outcomes keyed by
# (run_id, row_number), a layout the numbers never told apart from the next one's.
FIRST_STORE = (
    "CREATE TABLE IF NOT EXISTS runs (run_id INTEGER PRIMARY KEY, job TEXT NOT NULL, "
    "results TEXT NOT NULL, shard TEXT NOT NULL, fingerprint TEXT NOT NULL, options TEXT NOT "
    "NULL, started_at TEXT NOT NULL, resumed_at TEXT, invocations INTEGER NOT NULL DEFAULT 1, "
    "ended_at TEXT, counts TEXT, exit_code INTEGER, replaced_at TEXT)",
    "CREATE INDEX IF NOT EXISTS runs_by_key ON runs (job, results, shard)",
    "CREATE TABLE IF NOT EXISTS outcomes (run_id INTEGER NOT NULL, row_number INTEGER, "
    "conversation_id TEXT, status TEXT, http_status INTEGER, attempts INTEGER, error_type TEXT, "
    "error_code TEXT, error_message TEXT, request_id TEXT, created_at INTEGER, metadata TEXT, "
    "sent_metadata TEXT, PRIMARY KEY (run_id, row_number)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS last_set (conversation_id TEXT PRIMARY KEY, "
    "metadata TEXT NOT NULL, set_at TEXT NOT NULL) WITHOUT ROWID",
)


def first_version_file_fingerprint(path: Path) -> dict[str, Any]:
    """An input file's fingerprint as the first versions computed it (journal.py, d373d66)."""
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        if stat.st_size > 2 << 20:
            handle.seek(-(1 << 20), os.SEEK_END)
            digest.update(handle.read(1 << 20))
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "sha256_ends": digest.hexdigest()}  # fmt: skip


def first_version_journal(results: Path, source: Path, updated: dict[int, tuple[str, str]]) -> Path:
    """The journal a run of the first versions left beside ``results`` for the input ``source``
    (default mapping), with the rows ``updated`` (row number: conversation ID, sent metadata);
    its fingerprint holds the one input file's as an object."""
    fingerprint = {"schema": "1", "input": first_version_file_fingerprint(source),
                   "id_column": "conversation_id", "columns": None, "metadata_column": None}  # fmt: skip
    journal = Path(f"{results}.journal.sqlite")
    with contextlib.closing(sqlite3.connect(journal, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for statement in FIRST_JOURNAL:
            db.execute(statement)
        db.execute(
            "INSERT INTO meta VALUES ('fingerprint', ?)",
            (json.dumps(fingerprint, sort_keys=True),),
        )
        db.executemany(
            "INSERT INTO outcomes VALUES (?, ?, 'updated', 200, 1, NULL, NULL, NULL, 'req_1', 1, "
            "?, ?)",
            [(row, conversation, sent, sent) for row, (conversation, sent) in updated.items()],
        )
    return journal
