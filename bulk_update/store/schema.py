"""The store's tables, declared once for both backends, and their layout.

Each column is declared once, with its type in each dialect (``None``: the dialect has no such
column) and the layout that added it. ``create`` (a new store) and ``upgrade`` (a store of an
older released layout) are both derived from the declaration.

**Layouts.** The number a store holds (SQLite: ``PRAGMA user_version``; PostgreSQL:
``bulk_update.layout``) is ``LAYOUT_VERSION`` once the job has opened it. ``FIRST_LAYOUT`` (7)
is the first released one: the development layouts before it are not read (a store of one is
refused in one line, ``older_layout``). A later layout that only adds columns is one line of
``LAYOUTS`` and its columns declared ``since`` it: ``upgrade`` adds them to a store of an older
layout when the job opens it. A layout that changes what a table keeps in another way takes a
rebuild written for it, from the older layout's DDL frozen as literal text (never derived from
today's declaration, which later edits change).

**How outcomes keep a row.** The values a reader gets are the results' (``stored_columns``,
``timing_columns``); what is kept takes fewer bytes:

- ``metadata`` is ``''`` when it is the ``sent_metadata`` (most rows: the server answers the map it
  was sent; JSON text is never empty);
- ``conversation_id`` and ``request_id`` of the API's form (``conv_`` / ``req_`` and lowercase hex)
  keep the hex's bytes: a BLOB in SQLite (a TEXT value is kept as it is), in PostgreSQL a
  ``bytea`` that starts with a 0 byte (else the text's UTF-8 bytes);
- the timing is integer milliseconds: ``sent_ms`` (Unix time), ``answer_ms`` (after ``sent_ms``);
- in PostgreSQL fixed-width columns come first, ``http_status`` and ``attempts`` are ``smallint``,
  ``status`` a ``smallint`` code (``STATUS_CODES``), and outcomes are keyed as in SQLite, by
  ``id = run_id * 2**32 + row_number`` (one ``bigint``);
- an entry of ``last_set`` the job set names the outcome that set it (``outcome``, its ``id``)
  instead of holding its metadata: the ``sent_metadata`` of that outcome (in SQLite an entry read
  from another job's file keeps its text). The views ``run_outcomes`` and ``job_state`` show both
  tables with the values as the results hold them (in PostgreSQL, ``job_state`` names the job);
- SQLite's ``last_set.set_at`` is Unix seconds (an integer);
- PostgreSQL's ``last_set`` keys the conversation ID as outcomes keep it (``encoded_id``: half
  the bytes in its primary key), its fixed-width columns first.

**A batch's unchanged rows** (layout 10) are not outcomes: one row of ``unchanged_spans`` per
batch says which they are (a bitmap of their row numbers). The results rebuild each from the
input (its row number and conversation ID) and the job's state (its metadata, verbatim what the
row maps: that is what made it unchanged); an entry copied from another job's state
(--since-state) keeps its text. A store of an older layout keeps its runs' ``unchanged``
outcomes, read as before.
"""

from __future__ import annotations

import datetime as dt
import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import polars as pl

from bulk_update.outcome import RESULT_COLUMNS, RESULTS_SCHEMA, Status

Dialect = Literal["sqlite", "postgres"]

# The released layouts, by number: a store of layout N has what the lines up to N say.
FIRST_LAYOUT = 7
LAYOUTS = {
    FIRST_LAYOUT: "the first released layout: runs, outcomes, last_set, budget, timeline "
    "(PostgreSQL: and layout, jobs, sessions and leases)",
    8: "runs gain settled_in and announced_at: a sharded job's run ends once (Store.settle)",
    9: "runs gain compacted_at: a run whose outcomes the retention dropped (Store.compact)",
    10: "unchanged_spans: a batch's unchanged rows, one row for the batch (not an outcome each)",
}
LAYOUT_VERSION = max(LAYOUTS)


def layout_refusal(where: str, found: int, what_to_do: str) -> str | None:
    """Why a store that holds the layout number ``found`` cannot be used (one line naming it,
    ``where``, and what to do); None if it can."""
    if found > LAYOUT_VERSION:
        return (
            f"{where}: written by a newer bulk-update (layout {found}); upgrade bulk-update "
            f"(this one reads layouts up to {LAYOUT_VERSION})"
        )
    if found < 1:
        return (
            f"{where}: not a bulk-update store (layout {found}, which no version wrote); "
            f"{what_to_do}"
        )
    if found < FIRST_LAYOUT:
        return (
            f"{where}: a store of layout {found}, from a development version of bulk-update "
            f"before its first release (layout {FIRST_LAYOUT}), which this one does not read: "
            f"finish its runs with the version that made it, or {what_to_do}"
        )
    return None


# Timestamps as the store shows them (``started_at``, ``ended_at``, …): UTC, ISO 8601, ``Z``.
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_timestamp(moment: dt.datetime | None = None) -> str:
    """``moment`` (now if None) in TIMESTAMP_FORMAT."""
    if moment is None:  # per row (a state entry's set_at): no more work than that
        return dt.datetime.now(dt.UTC).strftime(TIMESTAMP_FORMAT)
    return moment.astimezone(dt.UTC).strftime(TIMESTAMP_FORMAT)


@dataclass(frozen=True, slots=True)
class Column:
    """A column: its declaration in each dialect (None: not a column there), and the layout
    that added it."""

    name: str
    sqlite: str | None
    postgres: str | None
    since: int = FIRST_LAYOUT

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


def _column(name: str, kind: str, constraint: str = "", *, since: int = FIRST_LAYOUT) -> Column:
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
    since: int = FIRST_LAYOUT  # the layout that added it (``create`` makes it in an older store)

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
    _column("total_rows", "bigint"),
    _column("requests", "bigint", " NOT NULL DEFAULT 0"),
    _column("rate_limited", "bigint", " NOT NULL DEFAULT 0"),
    _column("stopped_by", "text"),
    _column("host", "text"),
    _column("pid", "integer"),
    # The run's last heartbeat: Unix time in SQLite (the machine's clock), the database's clock
    # in PostgreSQL.
    Column("heartbeat_at", "REAL", "timestamptz"),
    _column("rows_done", "bigint"),
    # Who holds the run beyond host and pid (store/lease.py's Holder): the kernel's boot, the PID
    # namespace and the process's start, so that ``status`` on its host can tell it is gone.
    _column("boot", "text"),
    _column("pid_namespace", "text"),
    _column("pid_started", "text"),
    # Invocations that never recorded their end (killed -9, their machine or store lost): their
    # requests were counted up to their last heartbeat only.
    _column("interrupted", "integer", " NOT NULL DEFAULT 0"),
    # A shard's run that ended for good (Store.settle): the job's run it ended in (an Airflow DAG
    # run), and whether its end was the last of the job's shards there (it announced the job's
    # run). Both cleared when the run is resumed.
    _column("settled_in", "text", since=8),
    _column("announced_at", "time", since=8),
    # When the run's outcomes were dropped by the job's retention (--keep-runs, ``bulk-update
    # compact``): its row here stays (history's counts), its outcomes are gone but those that
    # an entry of the job's state names.
    _column("compacted_at", "time", since=9),
))  # fmt: skip
# The results' columns that outcomes keep (row_number is in the key).
assert RESULT_COLUMNS[0] == "row_number"
STORED = RESULT_COLUMNS[1:]
# When a worker took the row, when its last answer came (Unix time), how long that took: what
# a reader gets (``timing_columns``) of what outcomes keep (STORED_TIMING).
TIMING_COLUMNS = ("sent_at", "answered_at", "latency_ms")
_KINDS = {pl.Int64(): "bigint", pl.String(): "text"}


def value_types(dialect: Dialect) -> dict[str, str]:
    """The types of an outcome's values as the results hold them (RESULT_COLUMNS) and of its
    timing (TIMING_COLUMNS), as a writer hands them to the database."""
    kinds = {name: _KINDS[RESULTS_SCHEMA[name]] for name in RESULT_COLUMNS}
    kinds.update(sent_at="real", answered_at="real", latency_ms="integer")
    return {name: _TYPES[kind][dialect == "postgres"] for name, kind in kinds.items()}


# Outcomes: the results' values in fewer bytes (see the module's docstring). In
# PostgreSQL the fixed-width columns come first, widest first (no padding between them), then
# the variable-width ones; SQLite keeps the results' order.
_TEXTS = ("error_type", "error_code", "error_message")
_MAPS = ("metadata", "sent_metadata", "previous_metadata", "server_metadata")
OUTCOMES = Table(
    "outcomes",
    (
        Column("id", "INTEGER PRIMARY KEY", "bigint PRIMARY KEY"),
        Column("created_at", None, "bigint"),
        Column("sent_ms", None, "bigint"),
        Column("answer_ms", None, "integer"),
        Column("latency_ms", None, "integer"),
        Column("http_status", None, "smallint"),
        Column("attempts", None, "smallint"),
        Column("status", None, "smallint"),  # STATUS_CODES
        Column("conversation_id", "TEXT", "bytea"),  # SQLite: BLOB or TEXT
        Column("status", "TEXT", None),
        Column("http_status", "INTEGER", None),
        Column("attempts", "INTEGER", None),
        *(_column(name, "text") for name in _TEXTS),
        Column("request_id", "TEXT", "bytea"),  # SQLite: BLOB or TEXT
        Column("created_at", "INTEGER", None),
        *(_column(name, "text") for name in _MAPS),
        Column("sent_ms", "INTEGER", None),
        Column("answer_ms", "INTEGER", None),
        Column("latency_ms", "INTEGER", None),
    ),
)  # fmt: skip
assert set(OUTCOMES.names("sqlite")) == set(OUTCOMES.names("postgres"))
assert tuple(n for n in OUTCOMES.names("sqlite") if n in STORED) == STORED, "the results' order"
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
        return status_text(dialect, column)
    if dialect == "postgres" and name in ("http_status", "attempts"):
        return f"CAST({column} AS bigint)"
    return column


def status_text(dialect: Dialect, column: str = "status") -> str:
    """The SQL of a status's text from outcomes' ``column`` (PostgreSQL: its STATUS_CODES)."""
    if dialect == "sqlite":
        return column
    whens = " ".join(f"WHEN {code} THEN '{name}'" for name, code in STATUS_CODES.items())
    return f"CASE {column} {whens} END"


def stored_columns(dialect: Dialect, table: str = "") -> str:
    """The SQL of the results' columns but ``row_number`` (STORED), as the results hold them,
    from outcomes (``table``: its alias and dot, if any)."""
    return ", ".join(f"{_decoded(dialect, name, table)} AS {name}" for name in STORED)


def timing_columns(dialect: Dialect, table: str = "") -> str:
    """The SQL of TIMING_COLUMNS (Unix time, floats; latency in ms) from outcomes."""
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


def encoded_columns(source: str = "") -> dict[str, str]:
    """PostgreSQL's SQL of the stored values from the values as the results hold them
    (STORED, TIMING_COLUMNS, columns of ``source``: its alias and dot). SQLite's are encoded by
    the job (store/sqlite.py: the server cannot make a BLOB of hex, nor needs to)."""
    encoded = {name: f"{source}{name}" for name in STORED}
    for name in ID_PREFIXES:
        encoded[name] = encoded_id(name, f"{source}{name}")
    metadata = f"{source}metadata"
    encoded["metadata"] = (
        f"CASE WHEN {metadata} = {source}sent_metadata THEN '' ELSE {metadata} END"
    )
    for name in ("http_status", "attempts"):
        encoded[name] = f"CAST({source}{name} AS smallint)"
    whens = " ".join(f"WHEN '{name}' THEN {code}" for name, code in STATUS_CODES.items())
    encoded["status"] = f"CAST(CASE {source}status {whens} END AS smallint)"
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
# A batch's ``unchanged`` rows (``Journal.record_unchanged``): one row for the batch, not an
# outcome each (the results rebuild them: ``Journal.unchanged_rows``). ``first_row`` and
# ``last_row`` are the first and last of them, ``rows`` how many they are, ``bitmap`` which they
# are: bit ``n - first_row`` (of byte ``(n - first_row) // 8``, least significant bit first) is set
# for each of them, the bytes compressed by zlib (``span_bitmap``). The rows of a run's spans and
# of its outcomes are disjoint: a row found unchanged loses the outcome an earlier invocation left
# it (``unprocessed``, ``failed`` with --retry-failed).
UNCHANGED_SPANS = Table("unchanged_spans", (
    _column("run_id", "bigint", " NOT NULL", since=10),
    _column("first_row", "bigint", " NOT NULL", since=10),
    _column("last_row", "bigint", " NOT NULL", since=10),
    _column("rows", "integer", " NOT NULL", since=10),
    Column("bitmap", "BLOB NOT NULL", "bytea NOT NULL", since=10),
), sqlite=", PRIMARY KEY (run_id, first_row)) WITHOUT ROWID",
   postgres=", PRIMARY KEY (run_id, first_row))", since=10)  # fmt: skip
# Per byte value, the bits it has set (span_rows).
_BITS = tuple(tuple(bit for bit in range(8) if value >> bit & 1) for value in range(256))


def span_bitmap(first: int, numbers: Iterable[int]) -> bytes:
    """``bitmap`` of the rows ``numbers`` (none below ``first``) of a span starting at
    ``first`` (UNCHANGED_SPANS)."""
    bits = bytearray()
    for number in numbers:
        offset = number - first
        at = offset >> 3
        if at >= len(bits):
            bits.extend(bytes(at + 1 - len(bits)))
        bits[at] |= 1 << (offset & 7)
    return zlib.compress(bytes(bits), 1)


def span_rows(first: int, bitmap: bytes) -> list[int]:
    """The row numbers a span starting at ``first`` holds, in order (``span_bitmap``'s)."""
    return [
        first + (at << 3) + bit
        for at, value in enumerate(zlib.decompress(bitmap)) if value
        for bit in _BITS[value]
    ]  # fmt: skip


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
TABLES = (LAYOUT, JOBS, RUNS, OUTCOMES, LAST_SET, BUDGET, SESSIONS, LEASES, TIMELINE,
          UNCHANGED_SPANS)  # fmt: skip
assert all(c.since in LAYOUTS and c.since >= t.since for t in TABLES for c in t.columns)


def wrong_tables(
    dialect: Dialect, found: Mapping[str, Iterable[str]], where: str, what_to_do: str
) -> str | None:
    """Why a store of this layout whose tables have the columns ``found`` (by table; a table
    not in it is not looked at) cannot be used: one line naming it (``where``) and what to do;
    None if each has the columns this layout declares. A table of one of the job's names with
    other columns (made by another program, or by a version whose layout no number says) would
    be read wrong, or fail half way through a run."""
    for table in TABLES:
        declared, have = set(table.names(dialect)), set(found.get(table.name, ()))
        missing, extra = sorted(declared - have), sorted(have - declared)
        if table.name in found and (missing or extra):
            said = [f"lacks {', '.join(missing)}"] if missing else []
            said += [f"has {', '.join(extra)}"] if extra else []
            wrong = f"its table {table.name} {' and '.join(said)}"
            return f"{where}: not a store this version can read ({wrong}); {what_to_do}"
    return None


def create(dialect: Dialect, schema: str = "") -> list[str]:
    """The statements that make the tables a store lacks (``schema``: their schema, with its
    dot), in order."""
    made = [table.create(dialect, schema) for table in TABLES]
    return [
        *(statement for statement in made if statement is not None),
        f"CREATE INDEX IF NOT EXISTS runs_by_key ON {schema}runs (job, results, shard)",
    ]


def upgrade(dialect: Dialect, version: int, schema: str = "") -> list[str]:
    """The statements that bring a store of the released layout ``version`` to this one: the
    columns added since to its tables (the tables added since are made whole by ``create``)."""
    return [
        f"ALTER TABLE {schema}{table.name} ADD COLUMN {c.name} {declared}"
        for table in TABLES if table.since <= version for c in table.columns
        if c.since > version and (declared := c.declaration(dialect)) is not None
    ]  # fmt: skip
