"""One store under test, whichever backend: how the CLI is pointed at it, how the store API opens
it, and how an operator reads what it holds. The ``backend`` fixture (conftest) gives one per
backend, so that a store behaviour is one test run against both."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bulk_update.store import RunRecord, Store, StoreLocation, open_store
from bulk_update.store.schema import span_rows
from tests.pg import PostgresServer

BACKENDS = ("sqlite", "postgres")


@dataclass(frozen=True)
class Backend:
    """A store of jobs: SQLite files in ``directory`` (one per job), or a PostgreSQL database."""

    name: str
    directory: Path
    url: str | None = None
    server: PostgresServer | None = None

    @property
    def args(self) -> list[str]:
        """The CLI's options that put a job's store here."""
        if self.url is None:
            return ["--state-dir", str(self.directory)]
        return ["--state-url", self.url]

    def location(self, job: str) -> StoreLocation:
        return StoreLocation(self.directory / f"{job}.sqlite", self.url, timeout=10)

    def since(self, job: str) -> str:
        """What --since-state names for another job's state: its file, or its name."""
        return job if self.url is not None else str(self.directory / f"{job}.sqlite")

    def open(self, job: str) -> Store:
        return open_store(self.location(job))

    def history(self, job: str) -> list[RunRecord]:
        with self.open(job) as store:
            return store.history(job)

    def state(self, job: str) -> dict[str, str]:
        """The job's last-set state (conversation ID -> metadata text), read with SQL."""
        if self.url is None:
            with contextlib.closing(sqlite3.connect(self.directory / f"{job}.sqlite")) as db:
                return dict(db.execute("SELECT conversation_id, metadata FROM job_state"))
        rows = self.query(
            "SELECT conversation_id, metadata FROM bulk_update.job_state WHERE job = %s", job
        )
        return {str(c): str(m) for c, m in rows}

    def jobs(self) -> list[str]:
        """The jobs the store holds runs of."""
        if self.url is None:
            return sorted(path.stem for path in self.directory.glob("*.sqlite"))
        return [str(job) for (job,) in self.query(
            "SELECT DISTINCT job FROM bulk_update.runs ORDER BY job"
        )]  # fmt: skip

    def query(self, sql: str, *arguments: object) -> list[tuple[Any, ...]]:
        """SQL on the PostgreSQL database (the backend must be PostgreSQL)."""
        assert self.server is not None
        assert self.url is not None
        return self.server.query(self.url.rsplit("/", 1)[1], sql, *arguments)

    def attempts(self, job: str, run_id: int) -> int:
        """The requests a run's committed outcomes record (the sum of their ``attempts``), read
        with SQL."""
        sql = "SELECT coalesce(sum(attempts), 0) FROM {}run_outcomes WHERE run_id = {}"
        if self.url is None:
            with contextlib.closing(sqlite3.connect(self.directory / f"{job}.sqlite")) as db:
                return int(db.execute(sql.format("", "?"), (run_id,)).fetchone()[0])
        return int(self.query(sql.format("bulk_update.", "%s"), run_id)[0][0])

    def read_rows(self, job: str, sql: str) -> list[tuple[Any, ...]]:
        """Rows of a statement on the job's store (``{}``: the schema's prefix, if any)."""
        if self.url is None:
            with contextlib.closing(sqlite3.connect(self.directory / f"{job}.sqlite")) as db:
                return list(db.execute(sql.format("")))
        return self.query(sql.format("bulk_update."))

    def outcome_rows(self, job: str) -> dict[int, set[int]]:
        """The row numbers each run of the job keeps an outcome for (``run_outcomes``; in
        PostgreSQL, every job's), read with SQL."""
        found: dict[int, set[int]] = {}
        for run, row in self.read_rows(job, "SELECT run_id, row_number FROM {}run_outcomes"):
            found.setdefault(int(run), set()).add(int(row))
        return found

    def spanned_rows(self, job: str) -> dict[int, list[int]]:
        """The row numbers each run's spans of unchanged rows hold (in PostgreSQL, every
        job's), in span order, read with SQL: a row in two spans is there twice."""
        found: dict[int, list[int]] = {}
        sql = "SELECT run_id, first_row, rows, bitmap FROM {}unchanged_spans ORDER BY 1, 2"
        for run, first, rows, bitmap in self.read_rows(job, sql):
            numbers = span_rows(int(first), bytes(bitmap))
            assert len(numbers) == rows, "a span's rows say how many it holds"
            found.setdefault(int(run), []).extend(numbers)
        return found
