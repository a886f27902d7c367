"""Benchmarks 8 and 9: the store in PostgreSQL against the SQLite file, in the same run.

8: throughput (20,000 rows, concurrency 64, an emulator with no limit, the database on
   loopback), and the rate pooling of 4 of a job's 8 shards against an emulator that allows R.
9: bytes of durable state per row, each backend, at 1M rows: the outcomes (with their timing)
   and the state entries a run leaves, written through the store's own interface (as the job
   writes them, without the HTTP), against the input CSV's bytes per row. Goal: <= 250 B/row in
   SQLite, <= 350 in PostgreSQL (issue 26).

A PostgreSQL server is started for the run (tests/pg.py: initdb in a temp dir, fsync on).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.run import DATA, ENV, KEY, Row, make_input, timed, updated
from bulk_update.emulator import preload_id
from bulk_update.emulator.app import key_id
from bulk_update.emulator.process import EmulatorProcess
from bulk_update.outcome import RowOutcome, Status
from bulk_update.store import RowTiming, RunKey, StoreLocation, open_store
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
    name = "8 PostgreSQL store vs SQLite, 64 in flight"
    if latency_ms:
        name = f"8 the same, API latency {latency_ms} ms"
    return [
        Row(name, f"{runs} rows/s", f"SQLite {baseline} rows/s", postgres / sqlite, ">= 0.9x",
            postgres / sqlite >= 0.9),
    ]  # fmt: skip


POOL_SHARDS = (0, 2, 4, 6)  # 4 of a job's 8 shards, running at once


@dataclass
class Pooled:
    """What an emulator saw of one pooled run of 4 of 8 shards."""

    requests: int  # every request the shards sent, preflights included
    first_s: float  # the first request's arrival, seconds since the emulator started
    last_s: float  # the last one's
    wall_s: float  # from launching the shards to the last one ending
    rate_limited: int  # answered 429
    shards: list[tuple[int, float, float]]  # per shard: requests, first, last
    seconds: dict[int, int]  # requests answered in each second since the emulator started

    def rate(self) -> float:
        """Requests a minute over the run: all requests / (last request - first request)."""
        return self.requests / (self.last_s - self.first_s) * 60

    def wall_rate(self) -> float:
        """Requests a minute over the wall time from launch to the last shard's end."""
        return self.requests / self.wall_s * 60

    def shown(self) -> str:
        """Each shard's first and last request and its count, for the log."""
        return ", ".join(f"{n}@{a:.2f}-{b:.2f}" for n, a, b in self.shards)


def pooled_run(rpm: int, rows: int, store: Callable[[str], list[str]]) -> Pooled:
    """4 of 8 shards of ``rows`` rows at once, each told ``--rpm rpm``, against an emulator
    allowing ``rpm``; ``store(tag)`` gives the shards' store options. Each shard sends with its
    own key, so that the emulator's per-key stats time each shard's first and last request."""
    source = make_input(rows, "pooling")
    tag = f"pool_{rpm}_{rows}_{time.monotonic_ns()}"
    options = store(tag)
    with EmulatorProcess("--preload", str(rows), "--rpm", str(rpm)) as emu:
        commands = {
            k: _job("run", str(source), "--output", str(DATA / f"{tag}-{k}.csv"),
                    "--shard", f"{k}/8", "--base-url", emu.base_url, "--rpm", str(rpm),
                    "--concurrency", "8", "--job-name", "pooled", "--restart", *options)
            for k in POOL_SHARDS
        }  # fmt: skip
        launched = time.perf_counter()
        jobs = [
            subprocess.Popen(
                command,
                env={**ENV, "OPENAI_API_KEY": f"{KEY}-shard-{k}"},
                stderr=subprocess.PIPE,
                text=True,
            )
            for k, command in commands.items()
        ]
        for process in jobs:
            _, stderr = process.communicate(timeout=900)
            assert process.returncode == 0, stderr
        wall = time.perf_counter() - launched
        stats = emu.stats(timeline=True)
    keys = [stats["by_key"][key_id(f"{KEY}-shard-{k}")] for k in POOL_SHARDS]
    return Pooled(
        requests=sum(int(k["requests"]) for k in keys),
        first_s=min(float(k["first_s"]) for k in keys),
        last_s=max(float(k["last_s"]) for k in keys),
        wall_s=wall,
        rate_limited=int(stats["by_status"].get("429", 0)),
        shards=[(int(k["requests"]), float(k["first_s"]), float(k["last_s"])) for k in keys],
        seconds={int(s): sum(c.values()) for s, c in stats["timeline"].items()},
    )


def _pooled_rows(name: str, rpm: int, pooled: Pooled) -> list[Row]:
    """The short run's rows: the goal is on the rate between the first and the last request;
    the rate over the wall time (process start and end included) is reported beside it."""
    rate, wall = pooled.rate(), pooled.wall_rate()
    limited = pooled.rate_limited / pooled.requests
    print(f"  pooled {name}: {pooled.requests} requests in {pooled.last_s - pooled.first_s:.2f} s "
          f"(wall {pooled.wall_s:.2f} s); shards: {pooled.shown()}", file=sys.stderr)  # fmt: skip
    return [
        Row(f"8 4 of 8 shards, ~20 s run, {name}: first-last", f"{rate:.0f} rpm",
            f"R = {rpm} rpm", rate / rpm, ">= 0.95x", rate >= 0.95 * rpm),
        Row(f"8 4 of 8 shards, ~20 s run, {name}: wall", f"{wall:.0f} rpm",
            f"R = {rpm} rpm", wall / rpm, "(report)", True),
        Row(f"8 4 of 8 shards, ~20 s run, {name}: 429", f"{limited:.2%}",
            f"R = {rpm} rpm", limited, "<= 2 %", limited <= 0.02),
    ]  # fmt: skip


def pooling(pg: PostgresServer, quick: bool) -> list[Row]:
    table = _steady_pooling(pg, quick)
    # The short run: 500 rows a shard at R = 6000 (100 a second: 2000 requests, about 20 s),
    # on both stores (the SQLite file is shared by shards on one machine).
    rpm, rows = 6000, 4000  # half of the rows in shards 0, 2, 4, 6 of 8
    postgres = pooled_run(rpm, rows, lambda tag: ["--state-url", pg.create_database(tag)])
    table += _pooled_rows("PostgreSQL", rpm, postgres)
    state = Path(tempfile.mkdtemp(dir=DATA))
    sqlite = pooled_run(rpm, rows, lambda tag: ["--state-dir", str(state / tag)])
    return table + _pooled_rows("SQLite", rpm, sqlite)


def _steady_pooling(pg: PostgresServer, quick: bool) -> list[Row]:
    """The long run's steady middle (its first two seconds and last two left out)."""
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
            for k in POOL_SHARDS
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
                numbers = range(start, min(rows, start + 64 * 16))
                await asyncio.gather(*(journal.record(_outcome(i), _timing(i)) for i in numbers))
        finally:
            journal.close()


def _outcome(i: int) -> RowOutcome:
    """What the emulator answers for a row of make_input's table."""
    sent = (f'{{"tier":"{("free", "plus", "pro")[i % 3]}","region":'
            f'"{("emea", "amer", "apac", "emea")[i % 4]}","account":"{i:08d}"}}')  # fmt: skip
    return RowOutcome(i + 1, preload_id(i), Status.UPDATED, 200, 1,
                      request_id=f"req_{i:032x}", created_at=1_700_000_000 + i,
                      metadata=sent, sent_metadata=sent)  # fmt: skip


def _timing(i: int) -> RowTiming:
    """When the job took the row and its answer came, as pipeline.py times it (Unix time)."""
    sent_at = 1_764_000_000.0 + i / 1000 + (i % 7) / 7000
    return RowTiming(sent_at, sent_at + 0.05 + (i % 13) / 1000, 50 + i % 13)


def postgres_bytes(url: str, *, vacuum: bool = True) -> int:
    """The store's tables' bytes on disk (indexes and TOAST included), after a VACUUM unless
    ``vacuum`` is False (what a job leaves, autovacuum aside)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if vacuum:
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
    pg_bytes = postgres_bytes(url)
    table = []
    for name, size, seconds, goal in (("SQLite", sqlite_bytes, sqlite_s, 250),
                                      ("PostgreSQL", pg_bytes, postgres_s, 350)):  # fmt: skip
        per_row = size / rows
        table.append(
            Row(
                f"9 durable state per row, {name}, {rows:,} rows",
                f"{per_row:.0f} B/row",
                f"input CSV {csv_per_row:.0f} B/row",
                per_row / csv_per_row,
                f"<= {goal} ({seconds:.0f} s)",
                per_row <= goal,
            )
        )
    return table


def stores(quick: bool) -> list[Row]:
    with PostgresServer() as pg:
        return throughput(pg, quick) + throughput(pg, quick, latency_ms=50) + pooling(pg, quick)


def state_bytes(quick: bool) -> list[Row]:
    with PostgresServer() as pg:
        return bytes_per_row(pg, quick)
