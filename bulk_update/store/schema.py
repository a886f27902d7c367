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
3, and its 5 is 5: layout 5 adds nothing to a SQLite store).

**Layout 6 keeps fewer bytes a row.** ``outcomes`` and ``last_set`` are rebuilt (``REBUILT``:
their layout-5 forms are ``OUTCOMES_5`` and ``LAST_SET_5``); what a reader gets is unchanged,
through ``stored_columns`` (the results' columns) and ``timing_columns``:

- ``metadata`` is ``''`` when it is the ``sent_metadata`` (most rows: the server answers the map it
  was sent; JSON text is never empty);
- ``conversation_id`` and ``request_id`` of the API's form (``conv_`` / ``req_`` and lowercase hex)
  keep the hex's bytes: a BLOB in SQLite (a TEXT value is kept as it is), in PostgreSQL a
  ``bytea`` that starts with a 0 byte (else the text's UTF-8 bytes);
- the timing is integer milliseconds: ``sent_ms`` (Unix time), ``answer_ms`` (after ``sent_ms``);
- in PostgreSQL fixed-width columns come first, ``http_status`` and ``attempts`` are ``smallint``,
  ``status`` a ``smallint`` code (``STATUS_CODES``), and outcomes are keyed as in SQLite, by
  ``id = run_id * 2**32 + row_number`` (one ``bigint``: 8 bytes less a row and its index entry);
- an entry of ``last_set`` the job set names the outcome that set it (``outcome``, its ``id``)
  instead of holding its metadata: the ``sent_metadata`` of that outcome (an older store's
  entries, and in SQLite an entry read from another job's file, keep their text). The views
  ``run_outcomes`` and ``job_state`` show both tables with the values as the results hold them
  (in PostgreSQL, ``job_state`` names the job);
- SQLite's ``last_set.set_at`` is Unix seconds (an integer);
- PostgreSQL's ``last_set`` keys the conversation ID as outcomes keep it (``encoded_id``: half
  the bytes in its primary key), its fixed-width columns first.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import polars as pl

from bulk_update.outcome import RESULT_COLUMNS, RESULTS_SCHEMA, Status

__all__ = [
    "BUDGET",
    "ID_PREFIXES",
    "JOBS",
    "LAST_SET",
    "LAST_SET_5",
    "LAYOUT",
    "LAYOUTS",
    "LAYOUT_VERSION",
    "LEASES",
    "OUTCOMES",
    "OUTCOMES_5",
    "REBUILT",
    "ROWS_PER_RUN",
    "RUNS",
    "RUN_COLUMNS",
    "SESSIONS",
    "STATUS_CODES",
    "STORED",
    "STORED_TIMING",
    "TABLES",
    "TIMELINE",
    "TIMESTAMP_FORMAT",
    "TIMING_COLUMNS",
    "Column",
    "Dialect",
    "Table",
    "create",
    "encoded_columns",
    "encoded_id",
    "format_timestamp",
    "parse_timestamp",
    "status_code",
    "status_text",
    "stored_columns",
    "timing_columns",
    "unified_version",
    "wrong_columns",
]

Dialect = Literal["sqlite", "postgres"]

# The layouts, in order: a store of layout N has what the first N lines say.
LAYOUTS = (
    "runs, outcomes, last_set and budget (PostgreSQL: and layout, jobs and sessions)",  # 1
    "outcomes gain previous_metadata and server_metadata (the before-image)",  # 2
    "runs gain what history shows: total_rows ... pid",  # 3
    "outcomes gain the row's timing, runs a heartbeat, and the timeline table",  # 4
    "the leases table (PostgreSQL)",  # 5
    "outcomes and last_set rebuilt to keep fewer bytes a row (see OUTCOMES)",  # 6
    "runs gain who holds them (boot, pid_namespace, pid_started) and interrupted",  # 7
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
    # Who holds the run beyond host and pid (store/lease.py's Holder): the kernel's boot, the PID
    # namespace and the process's start, so that ``status`` on its host can tell it is gone.
    _column("boot", "text", since=7),
    _column("pid_namespace", "text", since=7),
    _column("pid_started", "text", since=7),
    # Invocations that never recorded their end (killed -9, their machine or store lost): their
    # requests were counted up to their last heartbeat only.
    _column("interrupted", "integer", " NOT NULL DEFAULT 0", since=7),
))  # fmt: skip
# What a run records beyond its first layout (history, the heartbeat): (name, column).
RUN_COLUMNS = tuple((c.name, c) for c in RUNS.columns if c.since > 1)

# The results' columns that outcomes keep (row_number is in the key), and the layouts that
# added them after the first.
assert RESULT_COLUMNS[0] == "row_number"
STORED = RESULT_COLUMNS[1:]
_STORED_SINCE = {"previous_metadata": 2, "server_metadata": 2}
_KINDS = {pl.Int64(): "bigint", pl.String(): "text"}
# When a worker took the row, when its last answer came (Unix time), how long that took: what
# a reader gets (``timing_columns``). Layout 5 kept them so (TIMING); layout 6 keeps integer
# milliseconds (STORED_TIMING).
TIMING = (_column("sent_at", "real", since=4), _column("answered_at", "real", since=4),
          _column("latency_ms", "integer", since=4))  # fmt: skip
TIMING_COLUMNS = tuple(c.name for c in TIMING)

# Layout 5's outcomes (and the layouts before it: ``since``), as the migration to layout 6 reads
# them. Keyed by ``id = run_id * 2**32 + row_number`` in SQLite (its rowid: see store/sqlite.py),
# by (run_id, row_number) in PostgreSQL.
OUTCOMES_5 = Table(
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
LAST_SET_5 = Table("last_set", (
    Column("job_id", None, "integer NOT NULL"),
    Column("conversation_id", "TEXT PRIMARY KEY", "text NOT NULL"),
    _column("metadata", "text", " NOT NULL"),
    _column("set_at", "time", " NOT NULL"),
), sqlite=") WITHOUT ROWID", postgres=", PRIMARY KEY (job_id, conversation_id))")  # fmt: skip


def _sqlite_only(name: str, declared: str) -> Column:
    return Column(name, declared, None)


def _postgres_only(name: str, declared: str) -> Column:
    return Column(name, None, declared)


# Layout 6's outcomes: the same values in fewer bytes (see the module's docstring). In
# PostgreSQL the fixed-width columns come first, widest first (no padding between them), then
# the variable-width ones; SQLite keeps the results' order.
_TEXTS = ("error_type", "error_code", "error_message")
_MAPS = ("metadata", "sent_metadata", "previous_metadata", "server_metadata")
OUTCOMES = Table(
    "outcomes",
    (
        Column("id", "INTEGER PRIMARY KEY", "bigint PRIMARY KEY"),
        _postgres_only("created_at", "bigint"),
        _postgres_only("sent_ms", "bigint"),
        _postgres_only("answer_ms", "integer"),
        _postgres_only("latency_ms", "integer"),
        _postgres_only("http_status", "smallint"),
        _postgres_only("attempts", "smallint"),
        _postgres_only("status", "smallint"),  # STATUS_CODES
        Column("conversation_id", "TEXT", "bytea"),  # SQLite: BLOB or TEXT
        _sqlite_only("status", "TEXT"),
        _sqlite_only("http_status", "INTEGER"),
        _sqlite_only("attempts", "INTEGER"),
        *(_column(name, "text") for name in _TEXTS[:3]),
        Column("request_id", "TEXT", "bytea"),  # SQLite: BLOB or TEXT
        _sqlite_only("created_at", "INTEGER"),
        *(_column(name, "text") for name in _MAPS),
        _sqlite_only("sent_ms", "INTEGER"),
        _sqlite_only("answer_ms", "INTEGER"),
        _sqlite_only("latency_ms", "INTEGER"),
    ),
)  # fmt: skip
assert set(OUTCOMES.names("sqlite")) == set(OUTCOMES.names("postgres"))
assert OUTCOMES.names("sqlite")[1:14] == STORED, "SQLite keeps the results' order"
# outcomes' key of a run's row 0 is run_id * ROWS_PER_RUN (row numbers are below 2**32).
ROWS_PER_RUN = 1 << 32
# PostgreSQL's outcomes.status: a status's code (never renumbered: a store keeps them).
STATUS_CODES = {"updated": 1, "unchanged": 2, "failed": 3, "invalid": 4, "unprocessed": 5,
                "planned": 6}  # fmt: skip
assert set(STATUS_CODES) == {status.value for status in Status}
STORED_TIMING = ("sent_ms", "answer_ms", "latency_ms")
# The job's state: per conversation, what the job last set (one job per SQLite file).
LAST_SET = Table("last_set", (
    Column("outcome", None, "bigint"),  # PostgreSQL: here, fixed-width columns first
    Column("set_at", None, "timestamptz NOT NULL"),
    Column("job_id", None, "integer NOT NULL"),
    Column("conversation_id", "TEXT PRIMARY KEY", "bytea NOT NULL"),  # PostgreSQL: as outcomes'
    Column("metadata", "TEXT", "text"),  # NULL when ``outcome`` says it
    Column("set_at", "INTEGER NOT NULL", None),  # SQLite: Unix seconds
    Column("outcome", "INTEGER", None),  # the outcomes.id whose sent_metadata it is
), sqlite=") WITHOUT ROWID", postgres=", PRIMARY KEY (job_id, conversation_id))")  # fmt: skip
# The tables layout 6 rebuilt, with their layout-5 forms.
REBUILT = ((OUTCOMES_5, OUTCOMES), (LAST_SET_5, LAST_SET))

# The API's IDs, kept as the bytes of their hex (``conversation_id``, ``request_id``).
ID_PREFIXES = {"conversation_id": "conv_", "request_id": "req_"}


def _decoded(dialect: Dialect, name: str, table: str) -> str:
    """The SQL of a stored column's value as the results hold it."""
    column = f"{table}{name}"
    prefix = ID_PREFIXES.get(name)
    if name == "metadata":
        return f"CASE WHEN {column} = '' THEN {table}sent_metadata ELSE {column} END"
    if prefix is not None and dialect == "sqlite":
        return f"CASE WHEN typeof({column}) = 'blob' THEN '{prefix}' || lower(hex({column})) ELSE {column} END"  # noqa: E501
    if prefix is not None:
        return (f"CASE WHEN substr({column}, 1, 1) = '\\x00'::bytea THEN '{prefix}' || "
                f"encode(substr({column}, 2), 'hex') "
                f"ELSE convert_from({column}, 'UTF8') END")  # fmt: skip
    if dialect == "postgres" and name == "status":
        return _status_text(column)
    if dialect == "postgres" and name in ("http_status", "attempts"):
        return f"CAST({column} AS bigint)"
    return column


def _status_text(column: str) -> str:
    whens = " ".join(f"WHEN {code} THEN '{name}'" for name, code in STATUS_CODES.items())
    return f"CASE {column} {whens} END"


def status_code(value: str) -> str:
    """PostgreSQL's SQL of a status's code (STATUS_CODES) from the SQL of its text."""
    whens = " ".join(f"WHEN '{name}' THEN {code}" for name, code in STATUS_CODES.items())
    return f"CAST(CASE {value} {whens} END AS smallint)"


def status_text(dialect: Dialect, column: str = "status") -> str:
    """The SQL of a status's text from outcomes' ``column``."""
    return column if dialect == "sqlite" else _status_text(column)


def stored_columns(dialect: Dialect, table: str = "") -> str:
    """The SQL of the results' columns but ``row_number`` (STORED), as the results hold them,
    from layout 6's outcomes (``table``: its alias and dot, if any)."""
    return ", ".join(f"{_decoded(dialect, name, table)} AS {name}" for name in STORED)


def timing_columns(dialect: Dialect, table: str = "") -> str:
    """The SQL of TIMING_COLUMNS (Unix time, floats; latency in ms) from layout 6's outcomes."""
    real = "REAL" if dialect == "sqlite" else "double precision"
    return (f"CAST({table}sent_ms / 1000.0 AS {real}) AS sent_at, "
            f"CAST(({table}sent_ms + {table}answer_ms) / 1000.0 AS {real}) AS answered_at, "
            f"{table}latency_ms AS latency_ms")  # fmt: skip


def encoded_id(name: str, value: str) -> str:
    """PostgreSQL's SQL of an ID (``name``: conversation_id, request_id) as outcomes keep it,
    from the SQL of its text: the bytes of its hex after a 0 byte if it has the API's form, else
    its UTF-8 bytes (text never holds a 0 byte)."""
    prefix = ID_PREFIXES[name]
    return (
        f"CASE WHEN {value} ~ '^{prefix}([0-9a-f][0-9a-f])+$' THEN '\\x00'::bytea || "
        f"decode(substr({value}, {len(prefix) + 1}), 'hex') ELSE convert_to({value}, 'UTF8') END"
    )


def encoded_columns(dialect: Dialect, source: str = "") -> dict[str, str]:
    """PostgreSQL's SQL of layout 6's stored values from the values as the results hold them
    (STORED, TIMING_COLUMNS, columns of ``source``: its alias and dot). SQLite's are encoded by
    the job (store/sqlite.py: the server cannot make a BLOB of hex, nor needs to)."""
    assert dialect == "postgres"
    encoded = {name: f"{source}{name}" for name in STORED}
    for name in ID_PREFIXES:
        encoded[name] = encoded_id(name, f"{source}{name}")
    metadata = f"{source}metadata"
    encoded["metadata"] = (
        f"CASE WHEN {metadata} = {source}sent_metadata THEN '' ELSE {metadata} END"
    )
    for name in ("http_status", "attempts"):
        encoded[name] = f"CAST({source}{name} AS smallint)"
    encoded["status"] = status_code(f"{source}status")
    encoded["sent_ms"] = f"CAST(floor({source}sent_at * 1000) AS bigint)"
    encoded["answer_ms"] = (
        f"CAST(floor({source}answered_at * 1000) - floor({source}sent_at * 1000) AS integer)"
    )
    encoded["latency_ms"] = f"{source}latency_ms"
    return encoded


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
assert all(c.since <= LAYOUT_VERSION for t in (*TABLES, OUTCOMES_5, LAST_SET_5) for c in t.columns)


def wrong_columns(table: Table, dialect: Dialect, found: Iterable[str]) -> str | None:
    """What is wrong with a store's ``table`` whose columns are ``found``, once it has this
    layout; None if they are the ones ``table`` declares. A table of one of the job's names
    with other columns (made by another program, or by a version whose layout no number says)
    would be read wrong, or fail half way through a run."""
    declared, have = set(table.names(dialect)), set(found)
    missing, extra = sorted(declared - have), sorted(have - declared)
    if not (missing or extra):
        return None
    said = [f"lacks {', '.join(missing)}"] if missing else []
    said += [f"has {', '.join(extra)}"] if extra else []
    return f"its table {table.name} {' and '.join(said)}"


def create(dialect: Dialect, schema: str = "") -> list[str]:
    """The statements that make the tables a store lacks (``schema``: their schema, with its
    dot), in order."""
    made = [table.create(dialect, schema) for table in TABLES]
    return [
        *(statement for statement in made if statement is not None),
        f"CREATE INDEX IF NOT EXISTS runs_by_key ON {schema}runs (job, results, shard)",
    ]
