"""Benchmark 13: many shards of one job on one PostgreSQL store (issue 38, point 3).

Unlimited: the same rows through one process (no ``--shard``: it paces itself, no budget) and
through 1, 2, 4 and 8 shards at once (the shared budget in the store), the total in flight the
same (32, split between the shards), against an emulator answering in 100 ms: the API's latency,
not the CPU, bounds them, so the shards' rows/s over one process's shows what sharing the budget
costs. Goal: 8 shards >= 0.9x, rows/s between the first and the last second the emulator saw a
request (the wall time, with 8 processes starting on 2 cores, beside it). The budget's writes per request: the ``budget`` table's updates
(``pg_stat_user_tables``) over the emulator's requests.

Limited: 4 shards, each told ``--rpm R``, against an emulator that allows R (50 ms latency):
their goodput over R in the steady middle (the first and last two seconds left out), the share
answered 429, the busiest 10 s window the server saw against R's 10 s.

``BENCH_JOB_CODE=/path/to/a/checkout`` runs the shards (and the one process) from that checkout's
``bulk_update`` (the "before" of BENCHMARKS.md; the emulator stays this checkout's).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg

from benchmarks.run import DATA, ENV, Row, make_input, updated
from bulk_update.emulator.process import EmulatorProcess
from tests.pg import PostgresServer

LATENCY_MS = 100
IN_FLIGHT = 32  # in all, split between the shards
SHARDS = (1, 2, 4, 8)
UNLIMITED = "100000000"


def _run_all(commands: list[list[str]]) -> float:
    """Start every command at once; the wall seconds until the last one ends. With
    BENCH_JOB_CODE, they run in that checkout (``-m`` imports from the working directory)."""
    code = os.environ.get("BENCH_JOB_CODE")
    env = {**ENV, "PYTHONDONTWRITEBYTECODE": "1"} if code else ENV
    started = time.perf_counter()
    processes = [
        subprocess.Popen(command, env=env, cwd=code, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=1800)
        assert process.returncode == 0, stderr[-2000:]
    return time.perf_counter() - started


def _job(*args: str) -> list[str]:
    return [sys.executable, "-m", "bulk_update", *args, "--quiet"]


def _budget_writes(url: str) -> int:
    """Updates of the ``budget`` table (claims, hold-backs, give-backs) since the database was
    made. The shards' sessions have ended: their statistics are flushed."""
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(50):
            row = conn.execute(
                "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'budget'"
            ).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.1)
    return 0


def _unlimited(pg: PostgresServer, shards: int, rows: int, tag: str) -> tuple[float, float, float]:
    """Rows/s of ``shards`` shards (0: one process without --shard) over the wall time (the
    processes' start and end included) and between the emulator's first and last second with a
    request; budget writes per request."""
    source = make_input(rows, "shards")
    url = pg.create_database(f"shards_{tag}_{shards}_{time.monotonic_ns()}")
    common = ["--rpm", UNLIMITED, "--state-url", url, "--job-name", "sharded", "--restart"]
    with EmulatorProcess("--preload", str(rows), "--latency-ms", str(LATENCY_MS)) as emu:
        if shards == 0:
            commands = [
                _job("run", str(source), "--output", str(DATA / f"shards-{tag}-all.csv"),
                     "--base-url", emu.base_url, "--concurrency", str(IN_FLIGHT), *common)
            ]  # fmt: skip
        else:
            commands = [
                _job("run", str(source), "--output", str(DATA / f"shards-{tag}-{k}.csv"),
                     "--shard", f"{k}/{shards}", "--base-url", emu.base_url,
                     "--concurrency", str(IN_FLIGHT // shards), *common)
                for k in range(shards)
            ]  # fmt: skip
        seconds = _run_all(commands)
        stats = emu.stats(timeline=True)
    assert updated(stats) == rows, stats["by_status"]
    requests = sum(int(n) for n in stats["by_status"].values())
    busy = [int(s) for s in stats["timeline"]]
    sending = rows / (max(busy) - min(busy) + 1)
    return rows / seconds, sending, _budget_writes(url) / requests


def _limited(pg: PostgresServer, rpm: int, rows: int, tag: str) -> list[Row]:
    source = make_input(rows, "shards-limited")
    url = pg.create_database(f"shards_limited_{time.monotonic_ns()}")
    with EmulatorProcess("--preload", str(rows), "--rpm", str(rpm), "--latency-ms", "50") as emu:
        options = ["--base-url", emu.base_url, "--rpm", str(rpm), "--concurrency", "16",
                   "--state-url", url, "--job-name", "limited", "--restart"]  # fmt: skip
        outputs = [str(DATA / f"shards-lim-{k}.csv") for k in range(4)]
        _run_all(
            [
                _job("run", str(source), "--output", outputs[k], "--shard", f"{k}/4", *options)
                for k in range(4)
            ]
        )
        stats = emu.stats(timeline=True)
    seconds = {int(s): sum(c.values()) for s, c in stats["timeline"].items()}
    first, last = min(seconds), max(seconds)
    steady = [seconds.get(s, 0) for s in range(first + 2, last - 1)]
    rate = sum(steady) / len(steady) * 60
    every = [seconds.get(s, 0) for s in range(first, last + 1)]
    busiest = max(sum(every[i : i + 10]) for i in range(max(1, len(every) - 9)))
    limited = stats["by_status"].get("429", 0) / sum(stats["by_status"].values())
    writes = _budget_writes(url) / sum(stats["by_status"].values())
    name = f"14 4 shards share R{tag}"
    return [
        Row(f"{name}: goodput", f"{rate:.0f} rpm", f"R = {rpm} rpm", rate / rpm, ">= 0.95x",
            rate >= 0.95 * rpm),
        Row(f"{name}: 429", f"{limited:.2%}", "all requests", limited, "<= 2 %",
            limited <= 0.02),
        Row(f"{name}: busiest 10 s", f"{busiest} requests", f"R allows {rpm // 6}",
            busiest / (rpm / 6), "<= 1.0x", busiest <= rpm // 6),
        Row(f"{name}: budget writes", f"{writes:.3f} /request", "(context)", writes,
            "(context)", True),
    ]  # fmt: skip


def shards(quick: bool) -> list[Row]:
    rows = 4000 if quick else 8000
    tag = " (BENCH_JOB_CODE)" if os.environ.get("BENCH_JOB_CODE") else ""
    table: list[Row] = []
    with PostgresServer() as pg:
        alone, alone_sending, _ = _unlimited(pg, 0, rows, "x")
        for count in SHARDS:
            rate, sending, writes = _unlimited(pg, count, rows, "x")
            goal = count != 8 or sending >= 0.9 * alone_sending
            table.append(
                Row(f"14 {count} shard(s), no limit, {LATENCY_MS} ms{tag}",
                    f"{sending:.0f} rows/s", f"one process {alone_sending:.0f} rows/s",
                    sending / alone_sending, ">= 0.9x" if count == 8 else "(report)", goal)
            )  # fmt: skip
            table.append(
                Row(f"14   the same, wall (processes' start in){tag}", f"{rate:.0f} rows/s",
                    f"one process {alone:.0f} rows/s", rate / alone, "(report)", True)
            )  # fmt: skip
            table.append(
                Row(f"14   budget writes, {count} shard(s){tag}", f"{writes:.3f} /request",
                    "(context)", writes, "<= 0.05" if count > 1 else "(report)",
                    count == 1 or writes <= 0.05)
            )  # fmt: skip
        table += _limited(pg, 6000, 2000 if quick else 4000, tag)
    return table
