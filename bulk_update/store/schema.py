"""The store's tables, declared once for both backends, and their one layout history.

Each column is declared once, with its type in each dialect (``None``: the dialect has no such
column) and the layout that added it. ``create`` (a new store) and ``added_columns`` (a store of
an older layout) are both derived from the declaration, so that a new column of ``runs`` is one
line of ``RUNS`` (``since`` the next layout) and one line of ``LAYOUTS``.

**One history, one number.** Both backends count their layouts in ``LAYOUTS``; the number a
store holds (SQLite: ``PRAGMA user_version``; PostgreSQL: ``bulk_update.layout``) is
``LAYOUT_VERSION`` once the job has opened it. Before this history was one, each backend
numbered its own: the numbers the older versions wrote are read as ``unified_version`` says
(PostgreSQL's are the same; SQLite's layouts 1 and 2 are layout 1 here, its 3 and 4 are 2 and
3, and its 5 is 5: layout 5 adds nothing to a SQLite store). The current number, 5, is the one
both older versions wrote last, so a store this version made opens in them too.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

import polars as pl

from bulk_update.outcome import RESULT_COLUMNS, RESULTS_SCHEMA

__all__ = [
    "BUDGET",
    "JOBS",
    "LAST_SET",
    "LAYOUT",
    "LAYOUTS",
    "LAYOUT_VERSION",
    "LEASES",
    "OUTCOMES",
    "RUNS",
    "RUN_COLUMNS",
    "SESSIONS",
    "STORED",
    "TABLES",
    "TIMELINE",
    "TIMESTAMP_FORMAT",
    "TIMING_COLUMNS",
    "Column",
    "Dialect",
    "Table",
    "create",
    "format_timestamp",
    "parse_timestamp",
    "unified_version",
]

Dialect = Literal["sqlite", "postgres"]

# The layouts, in order: a store of layout N has what the first N lines say.
LAYOUTS = (
    "runs, outcomes, last_set and budget (PostgreSQL: and layout, jobs and sessions)",  # 1
    "outcomes gain previous_metadata and server_metadata (the before-image)",  # 2
    "runs gain what history shows: total_rows ... pid",  # 3
    "outcomes gain the row's timing, runs a heartbeat, and the timeline table",  # 4
    "the leases table (PostgreSQL)",  # 5
)
LAYOUT_VERSION = len(LAYOUTS)

# The numbers the SQLite store wrote before the history was one (1: runs, outcomes, last_set;
# 2: and budget; 3: the before-image; 4: history; 5: timing, heartbeat, timeline), as layouts of
# LAYOUTS. PostgreSQL's numbers were these already (its first layout had the budget).
_SQLITE_BEFORE = {1: 1, 2: 1, 3: 2, 4: 3}


def unified_version(dialect: Dialect, stored: int) -> int:
    """The layout (of LAYOUTS) of a store that holds the number ``stored``. This version writes
    only LAYOUT_VERSION (5 or more), so a SQLite number below 5 is one an older version wrote."""
    return _SQLITE_BEFORE.get(stored, stored) if dialect == "sqlite" else stored


# Timestamps as the store shows them (``started_at``, ``ended_at``, …): UTC, ISO 8601, ``Z``.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_timestamp(moment: dt.datetime | None = None) -> str:
    """``moment`` (now if None) in TIMESTAMP_FORMAT."""
    if moment is None:  # per row (a state entry's set_at): no more work than that
        return dt.datetime.now(dt.UTC).strftime(TIMESTAMP_FORMAT)
    return moment.astimezone(dt.UTC).strftime(TIMESTAMP_FORMAT)


def parse_timestamp(text: str) -> float:
    """A store's timestamp (TIMESTAMP_FORMAT) as Unix time."""
    return dt.datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=dt.UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Column:
    """A column: its declaration in each dialect (None: not a column there), and the layout
    that added it."""

    name: str
    sqlite: str | None
    postgres: str | None
    since: int = 1

    def declaration(self, dialect: Dialect) -> str | None:
        return self.sqlite if dialect == "sqlite" else self.postgres


# The types both dialects have, by name: (SQLite, PostgreSQL).
_TYPES = {
    "integer": ("INTEGER", "integer"),
    "bigint": ("INTEGER", "bigint"),
    "text": ("TEXT", "text"),
    "real": ("REAL", "double precision"),
    "time": ("TEXT", "timestamptz"),  # TIMESTAMP_FORMAT text in SQLite
}


def _column(name: str, kind: str, constraint: str = "", *, since: int = 1) -> Column:
    sqlite, postgres = _TYPES[kind]
    return Column(name, f"{sqlite}{constraint}", f"{postgres}{constraint}", since)


@dataclass(frozen=True, slots=True)
class Table:
    """A table: its columns, and what closes its CREATE statement in each dialect (a table
    key, ``WITHOUT ROWID``; None: not a table there)."""

    name: str
    columns: tuple[Column, ...]
    sqlite: str | None = ")"
    postgres: str | None = ")"

    def names(self, dialect: Dialect) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.declaration(dialect) is not None)

    def create(self, dialect: Dialect, schema: str = "") -> str | None:
        """The table's CREATE statement (None: the dialect has no such table)."""
        tail = self.sqlite if dialect == "sqlite" else self.postgres
        if tail is None:
            return None
        columns = ", ".join(
            f"{c.name} {declared}" for c in self.columns
            if (declared := c.declaration(dialect)) is not None
        )  # fmt: skip
        return f"CREATE TABLE IF NOT EXISTS {schema}{self.name} ({columns}{tail}"

    def types(self, dialect: Dialect) -> dict[str, str]:
        """The columns' types (their declarations without constraints), by name."""
        return {
            c.name: re.split(r" (?:NOT NULL|PRIMARY KEY|DEFAULT|UNIQUE)", declared)[0]
            for c in self.columns if (declared := c.declaration(dialect)) is not None
        }  # fmt: skip

    def added_columns(self, dialect: Dialect, version: int) -> list[tuple[str, str]]:
        """(name, declaration) of the columns that layouts after ``version`` added."""
        return [
            (c.name, declared) for c in self.columns
            if c.since > version and (declared := c.declaration(dialect)) is not None
        ]  # fmt: skip


RUNS = Table("runs", (
    Column("run_id", "INTEGER PRIMARY KEY", "bigserial PRIMARY KEY"),
    _column("job", "text", " NOT NULL"),
    _column("results", "text", " NOT NULL"),  # the results path as given
    _column("shard", "text", " NOT NULL"),  # "K/N", or ""
    _column("fingerprint", "text", " NOT NULL"),
    _column("options", "text", " NOT NULL"),
    Column("started_at", "TEXT NOT NULL", "timestamptz NOT NULL DEFAULT now()"),
    _column("resumed_at", "time"),
    _column("invocations", "integer", " NOT NULL DEFAULT 1"),
    _column("ended_at", "time"),
    _column("counts", "text"),
    _column("exit_code", "integer"),
    _column("replaced_at", "time"),  # set aside by --restart
    _column("total_rows", "bigint", since=3),
    _column("requests", "bigint", " NOT NULL DEFAULT 0", since=3),
    _column("rate_limited", "bigint", " NOT NULL DEFAULT 0", since=3),
    _column("stopped_by", "text", since=3),
    _column("host", "text", since=3),
    _column("pid", "integer", since=3),
    # The run's last heartbeat: Unix time in SQLite (the machine's clock), the database's clock
    # in PostgreSQL.
    Column("heartbeat_at", "REAL", "timestamptz", since=4),
    _column("rows_done", "bigint", since=4),
))  # fmt: skip
# What a run records beyond its first layout (history, the heartbeat): (name, column).
RUN_COLUMNS = tuple((c.name, c) for c in RUNS.columns if c.since > 1)

# The results' columns that outcomes keep (row_number is in the key), and the layouts that
# added them after the first.
assert RESULT_COLUMNS[0] == "row_number"
STORED = RESULT_COLUMNS[1:]
_STORED_SINCE = {"previous_metadata": 2, "server_metadata": 2}
_KINDS = {pl.Int64(): "bigint", pl.String(): "text"}
# When a worker took the row, when its last answer came (Unix time), how long that took.
TIMING = (_column("sent_at", "real", since=4), _column("answered_at", "real", since=4),
          _column("latency_ms", "integer", since=4))  # fmt: skip
TIMING_COLUMNS = tuple(c.name for c in TIMING)

# Outcomes are keyed by ``id = run_id * 2**32 + row_number`` in SQLite (its rowid: see
# store/sqlite.py), by (run_id, row_number) in PostgreSQL.
OUTCOMES = Table(
    "outcomes",
    (
        Column("id", "INTEGER PRIMARY KEY", None),
        Column("run_id", None, "bigint NOT NULL"),
        Column("row_number", None, "integer NOT NULL"),
        *(_column(name, _KINDS[RESULTS_SCHEMA[name]], since=_STORED_SINCE.get(name, 1))
          for name in STORED),
        *TIMING,
    ),
    postgres=", PRIMARY KEY (run_id, row_number))",
)  # fmt: skip
# The job's state: per conversation, what the job last set (one job per SQLite file).
LAST_SET = Table("last_set", (
    Column("job_id", None, "integer NOT NULL"),
    Column("conversation_id", "TEXT PRIMARY KEY", "text NOT NULL"),
    _column("metadata", "text", " NOT NULL"),
    _column("set_at", "time", " NOT NULL"),
), sqlite=") WITHOUT ROWID", postgres=", PRIMARY KEY (job_id, conversation_id))")  # fmt: skip
# The end of the job's timeline of request slots (seconds: the machine's clock in SQLite, the
# database's in PostgreSQL).
BUDGET = Table("budget", (
    Column("job", "TEXT PRIMARY KEY", None),
    Column("job_id", None, "integer PRIMARY KEY"),
    _column("next_at", "real", " NOT NULL"),
))  # fmt: skip
# Per second of a run (``Second``), for status and report.
TIMELINE = Table("timeline", (
    _column("run_id", "bigint", " NOT NULL"),
    _column("at", "bigint", " NOT NULL"),
    *(_column(name, "integer", " NOT NULL")
      for name in ("requests", "rate_limited", "retries", "errors", "rows")),
    _column("limit_rpm", "real"),
    _column("announced_rpm", "real"),
), sqlite=", PRIMARY KEY (run_id, at)) WITHOUT ROWID",
   postgres=", PRIMARY KEY (run_id, at))")  # fmt: skip
# PostgreSQL's own: the layout's number, job names numbered once, who holds a lock (for the
# refusal's message), and the lock holder's lease (store/lease.py).
LAYOUT = Table("layout", (Column("version", None, "integer NOT NULL"),), sqlite=None)
JOBS = Table("jobs", (
    Column("job_id", None, "serial PRIMARY KEY"),
    Column("name", None, "text NOT NULL UNIQUE"),
), sqlite=None)  # fmt: skip
SESSIONS = Table("sessions", (
    Column("backend_pid", None, "integer PRIMARY KEY"),
    Column("host", None, "text NOT NULL"),
    Column("pid", None, "integer NOT NULL"),
    Column("since", None, "timestamptz NOT NULL"),
), sqlite=None)  # fmt: skip
LEASES = Table("leases", tuple(
    Column(name, None, declared) for name, declared in (
        ("job_id", "integer NOT NULL"), ("shard", "text NOT NULL"), ("holder", "text NOT NULL"),
        ("until", "timestamptz NOT NULL"), ("host", "text NOT NULL"), ("pid", "integer NOT NULL"),
        ("boot", "text NOT NULL"), ("pid_namespace", "text NOT NULL"),
        ("started", "text NOT NULL"),
    )
), sqlite=None, postgres=", PRIMARY KEY (job_id, shard))")  # fmt: skip

# In the order they are created.
TABLES = (LAYOUT, JOBS, RUNS, OUTCOMES, LAST_SET, BUDGET, SESSIONS, LEASES, TIMELINE)
assert all(c.since <= LAYOUT_VERSION for t in TABLES for c in t.columns)


def create(dialect: Dialect, schema: str = "") -> list[str]:
    """The statements that make the tables a store lacks (``schema``: their schema, with its
    dot), in order."""
    made = [table.create(dialect, schema) for table in TABLES]
    return [
        *(statement for statement in made if statement is not None),
        f"CREATE INDEX IF NOT EXISTS runs_by_key ON {schema}runs (job, results, shard)",
    ]
