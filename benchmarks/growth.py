"""Benchmark 15: how the store grows, night after night (issue 38, point 1).

A nightly job over an export of N rows, 1 % of them changed each night (night 1 sets every
row), run through the real CLI against the emulator (2 ms a request, no rate limit), at the
same results path each night (the job's next run), on both stores. Per store: its size after
night 1 and after the last night, their ratio, bytes per input row; and how long ``history``,
``status`` and the night's run take on night 1 and on the last night.

The size is what the store holds on disk: SQLite, the file and its -wal after a checkpoint;
PostgreSQL, ``pg_total_relation_size`` of the store's tables (indexes and TOAST included),
measured without a VACUUM (what a nightly job leaves, autovacuum aside).

    .venv/bin/python -m benchmarks.growth                 # 40,000 rows, 30 nights
    .venv/bin/python -m benchmarks.growth --quick         # 4,000 rows, 6 nights
    .venv/bin/python -m benchmarks.growth --rows 40000 --nights 10 --keep-runs 0
    .venv/bin/python -m benchmarks.run --only 15          # in make bench's table

``--keep-runs N`` is passed to every night's run (the store's retention); not given, the
job's default applies.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from benchmarks.run import DATA, Row, job, make_input, timed, updated
from benchmarks.stores import postgres_bytes
from bulk_update.emulator.process import EmulatorProcess
from tests.pg import PostgresServer

JOB = "growth"
CHANGED_EVERY = 100  # 1 % a night


@dataclass
class Night:
    """One night of the job: what it sent, how long it and the reads took, the store's size."""

    night: int
    sent: int
    run_s: float
    history_s: float
    status_s: float
    store_bytes: int


@dataclass
class Growth:
    """A store's nights."""

    store: str
    rows: int
    nights: list[Night] = field(default_factory=list)


def night_input(rows: int, night: int) -> Path:
    """Night ``night``'s export: the base table with 1 % more of its rows edited than the night
    before (rows with ``i % 100 < night - 1``: none on night 1), so that each night after the
    first changes 1 % of the rows."""
    path = DATA / f"growth-{rows}-night-{night}.csv"
    if path.exists():
        return path
    base = pl.read_csv(make_input(rows, "growth"), infer_schema=False)
    edited = pl.int_range(pl.len()) % CHANGED_EVERY < night - 1
    base.with_columns(
        pl.when(edited).then(pl.col("account") + "-edited").otherwise(pl.col("account"))
        .alias("account")
    ).write_csv(path)  # fmt: skip
    return path


def _read(command: str, *args: str) -> list[str]:
    """``history`` or ``status`` (as JSON: the whole record, not a terminal's table)."""
    return [sys.executable, "-m", "bulk_update", command, *args, "--json"]


def _sqlite_bytes(directory: Path) -> int:
    path = directory / f"{JOB}.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in directory.glob(f"{JOB}.sqlite*"))


def grow(
    name: str, store: list[str], size: Callable[[], int], rows: int, nights: int,
    keep_runs: int | None,
) -> Growth:  # fmt: skip
    """``nights`` nights of the job on the store ``store`` (its options)."""
    grown = Growth(name, rows)
    out = DATA / f"growth-{name}.parquet"
    retention = [] if keep_runs is None else ["--keep-runs", str(keep_runs)]
    lookup = ["--job-name", JOB, *store]
    with EmulatorProcess("--preload", str(rows), "--latency-ms", "2") as emu:
        flags = ("--base-url", emu.base_url, "--rpm", "100000000", "--concurrency", "64",
                 "--job-name", JOB, *store, *retention)  # fmt: skip
        for night in range(1, nights + 1):
            before = updated(emu.stats())
            run_s, _, done = timed(job("run", str(night_input(rows, night)), "--output",
                                       str(out), *flags))  # fmt: skip
            assert done.returncode == 0, done.stderr[-2000:]
            sent = updated(emu.stats()) - before
            assert sent == (rows if night == 1 else rows // CHANGED_EVERY), (night, sent)
            history_s, _, _ = timed(_read("history", *lookup))
            status_s, _, _ = timed(_read("status", *lookup))
            grown.nights.append(Night(night, sent, run_s, history_s, status_s, size()))
            print(f"  {name} night {night}: sent {sent}, run {run_s:.1f} s, "
                  f"store {grown.nights[-1].store_bytes / 1e6:.1f} MB", file=sys.stderr)  # fmt: skip
    return grown


def measure(rows: int, nights: int, keep_runs: int | None = None) -> list[Growth]:
    with PostgresServer() as pg:
        url = pg.create_database(f"bench_growth_{time.monotonic_ns()}")
        postgres = grow("PostgreSQL", ["--state-url", url], lambda: postgres_bytes(url, vacuum=False),
                        rows, nights, keep_runs)  # fmt: skip
    directory = Path(tempfile.mkdtemp(dir=DATA))
    sqlite = grow("SQLite", ["--state-dir", str(directory)], lambda: _sqlite_bytes(directory),
                  rows, nights, keep_runs)  # fmt: skip
    return [sqlite, postgres]


def table(grown: list[Growth]) -> list[str]:
    """One line per store (markdown): sizes, ratio, bytes a row, times on the first and last
    night."""
    lines = [
        "| store | rows x nights | night 1 | last night | ratio | B/row night 1 → last | "
        "run s 1 → last | history s 1 → last | status s 1 → last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in grown:
        first, last = g.nights[0], g.nights[-1]
        lines.append(
            f"| {g.store} | {g.rows:,} x {len(g.nights)} | {first.store_bytes / 1e6:.1f} MB | "
            f"{last.store_bytes / 1e6:.1f} MB | {last.store_bytes / first.store_bytes:.2f}x | "
            f"{first.store_bytes / g.rows:.0f} → {last.store_bytes / g.rows:.0f} | "
            f"{first.run_s:.1f} → {last.run_s:.1f} | {first.history_s:.2f} → "
            f"{last.history_s:.2f} | {first.status_s:.2f} → {last.status_s:.2f} |"
        )
    return lines


def rows_of(grown: list[Growth]) -> list[Row]:
    """``make bench``'s rows: the ratio of the last night's store to night 1's (goal, issue 38:
    <= 1.5x after 30 nights of 1 %)."""
    made = []
    for g in grown:
        first, last = g.nights[0], g.nights[-1]
        ratio = last.store_bytes / first.store_bytes
        made.append(
            Row(f"15 store after {len(g.nights)} nights of 1 %, {g.store}",
                f"{last.store_bytes / 1e6:.1f} MB", f"night 1 {first.store_bytes / 1e6:.1f} MB",
                ratio, "<= 1.5x", ratio <= 1.5)
        )  # fmt: skip
    return made


def growth(quick: bool) -> list[Row]:
    """Benchmark 15 in ``benchmarks.run``'s table (the job's default retention)."""
    grown = measure(4000 if quick else 40_000, 6 if quick else 30)
    for line in table(grown):
        print(line, file=sys.stderr)
    return rows_of(grown)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="4,000 rows, 6 nights")
    parser.add_argument("--rows", type=int, help="rows of the export (default 40,000)")
    parser.add_argument("--nights", type=int, help="nights (default 30)")
    parser.add_argument("--keep-runs", type=int, help="the retention passed to every night")
    args = parser.parse_args()
    rows = args.rows or (4000 if args.quick else 40_000)
    nights = args.nights or (6 if args.quick else 30)
    for line in table(measure(rows, nights, args.keep_runs)):
        print(line)


if __name__ == "__main__":
    main()
