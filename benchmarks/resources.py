"""Benchmark 16: the engine's cost a row on each resource against conversations.

Benchmark 1's setup (20,000 rows, 4,000 with --quick; three metadata columns of CSV text; 64 in
flight; no rate limit; one emulator a run, preloaded with the resource's objects), the job run
on ``conversations``, ``chat.completions`` and ``vector_stores.files`` in turn, interleaved,
best of ``--repeat`` each (two by default). The measure is the job's CPU a row (its process's
user + system time over the rows): the machine is shared, and CPU is what a resource could add
(its ID checks, its path, its body field, a file's two IDs). Goal: at most 1.1x a conversation.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import polars as pl

from benchmarks.run import DATA, Row, children_cpu_s, job, load_average, timed
from bulk_update.emulator import preload_ids
from bulk_update.emulator.process import EmulatorProcess
from bulk_update.resources import RESOURCES

__all__ = ["MEASURED", "per_resource"]

MEASURED = ("conversations", "chat.completions", "vector_stores.files")
GOAL = 1.1


def make_resource_input(name: str, rows: int) -> Path:
    """Benchmark 1's input (its three metadata columns) with ``name``'s ID columns: the
    emulator's ``preload_ids(name, i)``."""
    path = DATA / f"resource-{name}-{rows}.csv"
    if path.exists():
        return path
    DATA.mkdir(exist_ok=True)
    resource = RESOURCES[name]
    objects = [preload_ids(name, i) for i in range(rows)]
    columns: dict[str, list[str]] = {
        column: [ids[at] for ids in objects] for at, column in enumerate(resource.id_columns)
    }
    columns["tier"] = [("free", "plus", "pro")[i % 3] for i in range(rows)]
    columns["region"] = [("emea", "amer", "apac", "emea")[i % 4] for i in range(rows)]
    columns["account"] = [f"{i:08d}" for i in range(rows)]
    pl.DataFrame(columns).write_csv(path)
    return path


def per_resource(quick: bool, repeat: int, notes: list[str]) -> list[Row]:
    """The rows of benchmark 16 (``repeat`` runs of each resource; its line into ``notes``:
    ``benchmarks.run``'s, which runs as ``__main__``)."""
    rows = 4000 if quick else 20_000
    cpu: dict[str, list[float]] = {name: [] for name in MEASURED}
    before = load_average()
    for attempt, name in enumerate(MEASURED * repeat):
        source = make_resource_input(name, rows)
        state = Path(tempfile.mkdtemp(dir=DATA))
        out = DATA / f"resource-{attempt}.parquet"
        with EmulatorProcess("--resource", name, "--preload", str(rows)) as emu:
            command = job("run", str(source), "--output", str(out), "--base-url", emu.base_url,
                          "--concurrency", "64", "--rpm", "100000000", "--state-dir",
                          str(state), "--resource", name)  # fmt: skip
            spent = children_cpu_s()
            _, _, done = timed(command)
            cpu[name].append((children_cpu_s() - spent) / rows * 1e6)
            updates = emu.stats()["by_resource"][name]["update"]
            assert updates == rows, f"{name}: {updates} of {rows} updated; {done.stderr[-500:]}"
        shutil.rmtree(state, ignore_errors=True)
    after = load_average()
    least = {name: min(c) for name, c in cpu.items()}
    each = "; ".join(f"{k} {', '.join(f'{c:.0f}' for c in v)}" for k, v in cpu.items())
    notes.append(f"benchmark 16: {rows:,} rows, 64 in flight, {os.cpu_count()} CPUs; load "
                 f"average (1/5/15 min) before {before}, after {after}; CPU µs a row (user + "
                 f"system) of each run: {each}")  # fmt: skip
    base = least["conversations"]
    table = []
    for name in MEASURED[1:]:
        ratio = least[name] / base
        what = f"16 CPU a row: {name} vs conversations"
        table.append(Row(what, f"{least[name]:.0f} µs", f"{base:.0f} µs", ratio, f"<= {GOAL}x",
                         ratio <= GOAL))  # fmt: skip
    return table
