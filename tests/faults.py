"""Real faults for the tests: a small filesystem that fills up (tmpfs, as root), a store held by
another process, the helpers that read what a run recorded in either store."""

from __future__ import annotations

import contextlib
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
    """Rows by status of the newest run, from either store, as an operator would read it: its
    outcomes, and its unchanged rows (a count a batch: ``unchanged_spans``)."""
    sql = (
        "SELECT status, count(*) FROM {p}run_outcomes WHERE run_id = (SELECT max(run_id) FROM "
        "{p}runs) GROUP BY status UNION ALL SELECT 'unchanged', sum(rows) FROM "
        "{p}unchanged_spans WHERE run_id = (SELECT max(run_id) FROM {p}runs)"
    )
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(where)) as db:
            rows = db.execute(sql.format(p="")).fetchall()
    else:
        assert postgres is not None
        rows = postgres.query(where.rsplit("/", 1)[1], sql.format(p="bulk_update."))
    counts: dict[str, int] = {}
    for status, n in rows:
        if n is not None:
            counts[str(status)] = counts.get(str(status), 0) + int(str(n))
    return counts


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
