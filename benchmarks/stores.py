"""Benchmarks 8 and 9: the store in PostgreSQL against the SQLite file, in the same run.

8: throughput (20,000 rows, concurrency 64, an emulator with no limit, the database on
   loopback), and the rate pooling of 4 of a job's 8 shards against an emulator that allows R.
9: bytes of durable state per row, each backend, at 1M rows: the outcomes and the state entries
   a run leaves, written through the store's own interface (as the job writes them, without the
   HTTP), against the input CSV's bytes per row.

A PostgreSQL server is started for the run (tests/pg.py: initdb in a temp dir, fsync on).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from benchmarks.run import DATA, ENV, Row, make_input, timed, updated
from bulk_update.emulator import preload_id
from bulk_update.emulator.process import EmulatorProcess
from bulk_update.outcome import RowOutcome, Status
from bulk_update.store import RunKey, StoreLocation, open_store
from tests.pg import PostgresServer


def _job(*args: str) -> list[str]:
    return [sys.executable, "-m", "bulk_update", *args, "--quiet"]


def throughput(pg: PostgresServer, quick: bool, latency_ms: int = 0) -> list[Row]:
    """Interleaved S, P, S, P: the best of two each (the machine is shared and noisy)."""
    rows = 4000 if quick else 20_000
    source = make_input(rows, "efficiency")
    rates: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    for attempt, backend in enumerate(["sqlite", "postgres"] * 2):
        with EmulatorProcess("--preload", str(rows), "--latency-ms", str(latency_ms)) as emu:
            out = DATA / f"store-{backend}-{attempt}.parquet"
            if backend == "postgres":
                store = ["--state-url", pg.create_database(f"bench_{latency_ms}_{attempt}")]
            else:
                state = Path(tempfile.mkdtemp(dir=DATA))
                store = ["--state-dir", str(state)]
            command = _job("run", str(source), "--output", str(out), "--base-url", emu.base_url,
                           "--concurrency", "64", "--rpm", "100000000", *store)  # fmt: skip
            seconds, _, _ = timed(command)
            assert updated(emu.stats()) == rows
            rates[backend].append(rows / seconds)
    sqlite, postgres = max(rates["sqlite"]), max(rates["postgres"])
    runs = ", ".join(f"{r:.0f}" for r in rates["postgres"])
    baseline = ", ".join(f"{r:.0f}" for r in rates["sqlite"])
    if latency_ms:
        return [
            Row(f"8 the same, API latency {latency_ms} ms", f"{runs} rows/s",
                f"SQLite {baseline} rows/s", postgres / sqlite, "(context)", True),
        ]  # fmt: skip
    return [
        Row("8 PostgreSQL store vs SQLite, 64 in flight", f"{runs} rows/s",
            f"SQLite {baseline} rows/s", postgres / sqlite, ">= 0.8x", postgres / sqlite >= 0.8),
    ]  # fmt: skip


def pooling(pg: PostgresServer, quick: bool) -> list[Row]:
    rpm = 3000  # 50 a second
    rows = 2000 if quick else 4000  # half of them in shards 0, 2, 4, 6 of 8
    source = make_input(rows, "pooling")
    url = pg.create_database("bench_pool")
    with EmulatorProcess("--preload", str(rows), "--rpm", str(rpm)) as emu:
        env = {**ENV}
        jobs = [
            subprocess.Popen(
                _job(
                    "run",
                    str(source),
                    "--output",
                    str(DATA / f"pool-{k}.csv"),
                    "--shard",
                    f"{k}/8",
                    "--base-url",
                    emu.base_url,
                    "--rpm",
                    str(rpm),
                    "--concurrency",
                    "8",
                    "--state-url",
                    url,
                    "--job-name",
                    "pooled",
                    "--restart",
                ),
                env=env,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in (0, 2, 4, 6)
        ]
        for process in jobs:
            _, stderr = process.communicate(timeout=900)
            assert process.returncode == 0, stderr
        stats = emu.stats(timeline=True)
    seconds = {int(s): sum(c.values()) for s, c in stats["timeline"].items()}
    first, last = min(seconds), max(seconds)
    steady = [seconds.get(s, 0) for s in range(first + 2, last - 1)]
    rate = sum(steady) / len(steady) * 60
    limited = stats["by_status"].get("429", 0) / sum(stats["by_status"].values())
    return [
        Row("8 4 of 8 shards, each --rpm R: together", f"{rate:.0f} rpm", f"R = {rpm} rpm",
            rate / rpm, ">= 0.95x", rate >= 0.95 * rpm),
        Row("8 4 of 8 shards: answered 429", f"{limited:.2%}", f"R = {rpm} rpm", limited,
            "<= 2 %", limited <= 0.02),
    ]  # fmt: skip


async def _write(location: StoreLocation, rows: int) -> None:
    """A finished run's outcomes and state, as the job's workers write them (64 at a time)."""
    with open_store(location) as store:
        journal = store.open_run(RunKey("bytes", "results.parquet", None), {}, {})
        try:
            for start in range(0, rows, 64 * 16):
                outcomes = [_outcome(i) for i in range(start, min(rows, start + 64 * 16))]
                await asyncio.gather(*(journal.record(o) for o in outcomes))
        finally:
            journal.close()


def _outcome(i: int) -> RowOutcome:
    """What the emulator answers for a row of make_input's table."""
    sent = (f'{{"tier":"{("free", "plus", "pro")[i % 3]}","region":'
            f'"{("emea", "amer", "apac", "emea")[i % 4]}","account":"{i:08d}"}}')  # fmt: skip
    return RowOutcome(i + 1, preload_id(i), Status.UPDATED, 200, 1,
                      request_id=f"req_{i:032x}", created_at=1_700_000_000 + i,
                      metadata=sent, sent_metadata=sent)  # fmt: skip


def _postgres_bytes(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'bulk_update' AND c.relkind = 'r'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def bytes_per_row(pg: PostgresServer, quick: bool) -> list[Row]:
    rows = 100_000 if quick else 1_000_000
    source = make_input(rows, "bytes")
    csv_per_row = (source.stat().st_size - len(source.read_text().split("\n", 1)[0])) / rows
    directory = Path(tempfile.mkdtemp(dir=DATA))
    sqlite_path = directory / "bytes.sqlite"
    started = time.perf_counter()
    asyncio.run(_write(StoreLocation(sqlite_path), rows))
    sqlite_s = time.perf_counter() - started
    # Closed, the store checkpointed its WAL into the file.
    sqlite_bytes = sum(p.stat().st_size for p in directory.glob("bytes.sqlite*"))
    url = pg.create_database("bench_bytes")
    started = time.perf_counter()
    asyncio.run(_write(StoreLocation(directory / "unused", url), rows))
    postgres_s = time.perf_counter() - started
    postgres_bytes = _postgres_bytes(url)
    table = []
    for name, size, seconds in (("SQLite", sqlite_bytes, sqlite_s),
                                ("PostgreSQL", postgres_bytes, postgres_s)):  # fmt: skip
        per_row = size / rows
        table.append(
            Row(
                f"9 durable state per row, {name}, {rows:,} rows",
                f"{per_row:.0f} B/row",
                f"input CSV {csv_per_row:.0f} B/row",
                per_row / csv_per_row,
                f"(report; {seconds:.0f} s)",
                True,
            )
        )
    return table


def stores(quick: bool) -> list[Row]:
    with PostgresServer() as pg:
        return throughput(pg, quick) + throughput(pg, quick, latency_ms=50) + pooling(pg, quick)


def state_bytes(quick: bool) -> list[Row]:
    with PostgresServer() as pg:
        return bytes_per_row(pg, quick)
