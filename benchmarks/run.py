"""`make bench`: the benchmarks, each with its baseline in the same run; one table.

Each benchmark starts its own emulator (a real server on loopback), generates its own input
under benchmarks/data/ (git-ignored), and reports a ratio to a baseline measured in the same
run, because absolute numbers vary between machines.

    .venv/bin/python -m benchmarks.run                # all sixteen
    .venv/bin/python -m benchmarks.run --only 1,3     # some
    .venv/bin/python -m benchmarks.run --quick        # smaller sizes (a smoke run)
    .venv/bin/python -m benchmarks.run --only 1 --against 0a5935a --repeat 3 \
        --programs job,sdk-aiohttp,bare-aiohttp       # benchmark 1: the job then and now
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from benchmarks.memory import run_measured
from bulk_update.emulator import preload_id
from bulk_update.emulator.process import EmulatorProcess

DATA = Path(__file__).parent / "data"
KEY = "sk-bench"
ENV = {**os.environ, "OPENAI_API_KEY": KEY}


@dataclass
class Row:
    benchmark: str
    measured: str
    baseline: str
    ratio: float
    goal: str
    met: bool


def make_input(rows: int, name: str) -> Path:
    """conversation_id (= the emulator's preload_id(i)) and three metadata columns."""
    path = DATA / f"{name}-{rows}.csv"
    if path.exists():
        return path
    DATA.mkdir(exist_ok=True)
    index = pl.int_range(0, rows, eager=True)
    frame = pl.DataFrame(
        {
            "conversation_id": [preload_id(i) for i in range(rows)],
            "tier": index.map_elements(
                lambda i: ("free", "plus", "pro")[i % 3], return_dtype=pl.String
            ),
            "region": pl.Series(["emea", "amer", "apac", "emea"] * (rows // 4 + 1))[:rows],
            "account": index.cast(pl.String).str.zfill(8),
        }
    )
    frame.write_csv(path)
    return path


def updated(stats: dict[str, Any]) -> int:
    """Updates the emulator answered 200: its 200s less the job's preflight GET (one a run)."""
    return int(stats["by_status"].get("200", 0)) - int(stats["by_operation"].get("retrieve", 0))


def timed(
    args: list[str], env: dict[str, str] | None = None, **kwargs: object
) -> tuple[float, int, subprocess.CompletedProcess[str]]:
    """Wall seconds and peak RSS (KiB) of a child process (its environment: ENV by default)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    done = subprocess.run(  # type: ignore[call-overload]
        args, capture_output=True, text=True, env=env or ENV, check=False, **kwargs
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{args} failed ({done.returncode}): {done.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before), done


def job(*args: str) -> list[str]:
    return [sys.executable, "-m", "bulk_update", *args, "--quiet"]


# Benchmark 1's programs, each in its own process: the job (its transport chosen through
# BULK_UPDATE_TRANSPORT) and the peers of benchmarks/baselines.py.
EFFICIENCY_PROGRAMS = ("job", "job-httpx2", "sdk", "sdk-aiohttp", "bare-aiohttp", "bare")
# Lines printed under the table: the machine's state around a benchmark, each run's rate.
NOTES: list[str] = []
# Benchmark 1's options (main sets them): runs of each program; a commit whose job runs too,
# interleaved with the others ("job-at-REV": a before and after in one session); the programs
# (the job and some of its peers: the goals' rows need sdk-aiohttp and bare-aiohttp).
EFFICIENCY: dict[str, Any] = {"repeat": 2, "against": None, "programs": EFFICIENCY_PROGRAMS}
REPO = Path(__file__).resolve().parent.parent


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def children_cpu_s() -> float:
    """User + system CPU seconds of the children waited for so far (``timed``'s are)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def archive(commit: str) -> Path:
    """``bulk_update/`` as of ``commit`` (git archive), in a new temporary directory (not under
    benchmarks/, where the type checker would read it): run ``python -m bulk_update`` from it
    (``-m`` puts the working directory first on sys.path) or put it on PYTHONPATH."""
    tree = Path(tempfile.mkdtemp(prefix="bulk-update-at-"))
    made = subprocess.run(["git", "-C", str(REPO), "archive", commit, "bulk_update"],
                          capture_output=True, check=True)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=made.stdout, check=True)
    return tree


def client_efficiency(quick: bool) -> list[Row]:
    """The job against the loops a user would write instead (benchmarks/baselines.py), 64 in
    flight, one emulator per run; interleaved, best of ``EFFICIENCY["repeat"]`` each (two by
    default). Each run's CPU a row (the process's user + system time over the rows) is noted:
    steadier than rows/s on a shared machine, and not bound by the emulator."""
    rows = 4000 if quick else 20_000
    source = make_input(rows, "efficiency")
    against: str | None = EFFICIENCY["against"]
    programs = (*EFFICIENCY["programs"], *((f"job-at-{against}",) if against else ()))
    tree = archive(against) if against else None
    runs: dict[str, list[float]] = {kind: [] for kind in programs}
    cpu: dict[str, list[float]] = {kind: [] for kind in programs}
    before = load_average()
    for attempt, kind in enumerate(programs * EFFICIENCY["repeat"]):
        env, cwd = ENV, None
        with EmulatorProcess("--preload", str(rows)) as emu:
            if kind.startswith("job"):
                transport = "httpx2" if kind == "job-httpx2" else "aiohttp"
                env = {**ENV, "BULK_UPDATE_TRANSPORT": transport}
                cwd = tree if kind.startswith("job-at-") else None
                state = Path(tempfile.mkdtemp(dir=DATA))
                out = DATA / f"efficiency-{attempt}.parquet"
                command = job("run", str(source), "--output", str(out), "--base-url",
                              emu.base_url, "--concurrency", "64", "--rpm", "100000000",
                              "--state-dir", str(state))  # fmt: skip
            else:
                state = None
                command = [sys.executable, "-m", "benchmarks.baselines", kind, str(source),
                           emu.base_url, "64"]  # fmt: skip
            spent = children_cpu_s()
            seconds, _, done = timed(command, env=env, cwd=cwd)
            cpu[kind].append((children_cpu_s() - spent) / rows * 1e6)
            ok = updated(emu.stats())
            assert ok == rows, f"{kind}: {ok} of {rows} updated; {done.stderr[-500:]}"
            runs[kind].append(rows / seconds)
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)
    if tree is not None:
        shutil.rmtree(tree, ignore_errors=True)
    after = load_average()
    rate = {kind: max(r) for kind, r in runs.items()}
    least = {kind: min(c) for kind, c in cpu.items()}
    each = "; ".join(f"{k} {', '.join(f'{r:.0f}' for r in v)}" for k, v in runs.items())
    each_cpu = "; ".join(f"{k} {', '.join(f'{c:.0f}' for c in v)}" for k, v in cpu.items())
    NOTES.append(f"benchmark 1: {rows:,} rows, 64 in flight, {os.cpu_count()} CPUs; load average "
                 f"(1/5/15 min) before {before}, after {after}; rows/s of each run: {each}; "
                 f"CPU µs a row (user + system) of each run: {each_cpu}")  # fmt: skip
    job_rate = f"{rate['job']:.0f} rows/s"

    def versus(what: str, peer: str, goal: str, least: float | None) -> list[Row]:
        if peer not in rate:
            return []
        ratio = rate["job"] / rate[peer]
        met = True if least is None else ratio >= least
        return [Row(f"1 the job vs {what}", job_rate, f"{rate[peer]:.0f} rows/s", ratio, goal, met)]

    def cpu_versus(what: str, peer: str) -> list[Row]:
        if peer not in least:
            return []
        return [Row(f"1   CPU a row: the job vs {what}", f"{least['job']:.0f} µs",
                    f"{least[peer]:.0f} µs", least["job"] / least[peer], "(context)", True)]  # fmt: skip

    at = f"job-at-{against}"
    return [
        *versus("the SDK on aiohttp", "sdk-aiohttp", ">= 2x", 2.0),
        *versus("a bare aiohttp loop (ceiling)", "bare-aiohttp", ">= 0.5x", 0.5),
        *versus("the SDK on httpx2", "sdk", "(context)", None),
        *versus("a bare httpx2 loop", "bare", "(context)", None),
        *versus("itself on the plain httpx2 transport", "job-httpx2", "(context)", None),
        *versus(f"itself at {against}", at, "(context)", None),
        *cpu_versus("the SDK on aiohttp", "sdk-aiohttp"),
        *cpu_versus("a bare aiohttp loop", "bare-aiohttp"),
        *cpu_versus(f"itself at {against}", at),
    ]


def ride(server_rpm: int, job_rpm: int, rows: int) -> dict[str, float]:
    source = make_input(rows, "ride")
    with EmulatorProcess("--preload", str(rows), "--rpm", str(server_rpm)) as emu:
        out = DATA / "ride-results.parquet"
        timed(job("run", str(source), "--output", str(out), "--base-url", emu.base_url,
                  "--rpm", str(job_rpm), "--concurrency", "32", "--restart", "--full"))  # fmt: skip
        stats = emu.stats(timeline=True)
    ok = updated(stats)
    limited = stats["by_status"].get("429", 0)
    span = stats["last_ok_s"] - stats["first_ok_s"]
    per_second = {int(s): sum(c.values()) for s, c in stats["timeline"].items()}
    last = max(per_second)
    # Requests per minute over every full 10 s window (the first and last partial ones aside).
    windows = [sum(per_second.get(t + i, 0) for i in range(10)) * 6 for t in range(1, last - 10)]
    return {
        "goodput_rpm": (ok - 1) / span * 60 if span > 0 else 0.0,
        "rate_limited_share": limited / (ok + limited),
        "max_10s_rpm": max(windows) if windows else float("nan"),
    }


def riding_the_limit(quick: bool) -> list[Row]:
    server = 3000  # 50 a second
    rows = 1000 if quick else 3000
    over = ride(server, 2 * server, rows)
    under = ride(server, server // 2, rows // 2)
    half = server / 2
    return [
        Row("2 told 2R: goodput vs R", f"{over['goodput_rpm']:.0f} rpm", f"R = {server} rpm",
            over["goodput_rpm"] / server, ">= 0.95x", over["goodput_rpm"] >= 0.95 * server),
        Row("2 told 2R: share answered 429", f"{over['rate_limited_share']:.2%}", "all requests",
            over["rate_limited_share"], "<= 2 %", over["rate_limited_share"] <= 0.02),
        Row("2 told R/2: achieved vs R/2", f"{under['goodput_rpm']:.0f} rpm", f"{half:.0f} rpm",
            under["goodput_rpm"] / half, ">= 0.98x", under["goodput_rpm"] >= 0.98 * half),
        Row("2 told R/2: busiest 10 s window", f"{under['max_10s_rpm']:.0f} rpm", f"{half:.0f} rpm",
            under["max_10s_rpm"] / half, "<= 1.0x", under["max_10s_rpm"] <= half),
    ]  # fmt: skip


def latency_hiding(quick: bool) -> list[Row]:
    rows = 3000 if quick else 10_000
    source = make_input(rows, "latency")
    with EmulatorProcess("--preload", str(rows), "--latency-ms", "100") as emu:
        out = DATA / "latency-results.parquet"
        timed(job("run", str(source), "--output", str(out), "--base-url", emu.base_url,
                  "--concurrency", "64", "--rpm", "100000000", "--restart", "--full"))  # fmt: skip
        stats = emu.stats(timeline=True)
    rate = (updated(stats) - 1) / (stats["last_ok_s"] - stats["first_ok_s"])
    bound = 64 / 0.1
    return [
        Row(
            "3 latency hiding (100 ms, 64 in flight)",
            f"{rate:.0f} rows/s",
            f"Little's law {bound:.0f} rows/s",
            rate / bound,
            ">= 0.9x",
            rate >= 0.9 * bound,
        )
    ]


def scale(quick: bool) -> list[Row]:
    sizes = (200_000, 1_000_000) if quick else (1_000_000, 10_000_000)
    measured: dict[int, dict[str, float]] = {}
    for rows in sizes:
        source = make_input(rows, "scale")
        read = [sys.executable, "-c",
                f"import polars as pl; pl.read_csv({str(source)!r}, infer_schema=False)"]  # fmt: skip
        read_s, read_memory = run_measured(read, ENV)
        copy = [sys.executable, "-c",
                f"import polars as pl; pl.scan_csv({str(source)!r}, infer_schema=False)"
                f".sink_parquet({str(DATA / 'scale-copy.parquet')!r})"]  # fmt: skip
        _, copy_memory = run_measured(copy, ENV)
        out = DATA / "scale-plan.parquet"
        validate_s, memory = run_measured(job("validate", str(source), "--output", str(out)), ENV)
        measured[rows] = {"read_s": read_s, "validate_s": validate_s, **memory,
                          "read_total_mib": read_memory["total_mib"],
                          "copy_total_mib": copy_memory["total_mib"]}  # fmt: skip
    small, large = (measured[s] for s in sizes)
    total_ratio = large["total_mib"] / small["total_mib"]
    anon_ratio = large["anon_mib"] / small["anon_mib"]
    return [
        Row(f"4 validate {sizes[1]:,} rows: peak RSS", f"{large['total_mib']:.0f} MiB",
            f"{small['total_mib']:.0f} MiB at {sizes[0]:,}", total_ratio, "<= 1.5x and < 1 GiB",
            total_ratio <= 1.5 and large["total_mib"] < 1024),
        Row("4   of which heap (anonymous RSS)", f"{large['anon_mib']:.0f} MiB",
            f"{small['anon_mib']:.0f} MiB at {sizes[0]:,}", anon_ratio, "(context)", True),
        Row("4   polars alone streaming the file to Parquet", f"{large['copy_total_mib']:.0f} MiB",
            f"{small['copy_total_mib']:.0f} MiB at {sizes[0]:,}",
            large["copy_total_mib"] / small["copy_total_mib"], "(context)", True),
        Row(f"4   polars read_csv alone, {sizes[1]:,} rows", f"{large['read_total_mib']:.0f} MiB",
            f"validate {large['total_mib']:.0f} MiB", large["read_total_mib"] / large["total_mib"],
            "(context)", True),
        Row(f"4 validate {sizes[1]:,} rows: time", f"{large['validate_s']:.1f} s",
            f"polars read alone {large['read_s']:.1f} s", large["validate_s"] / large["read_s"],
            "<= 3x", large["validate_s"] <= 3 * large["read_s"]),
    ]  # fmt: skip


def resume_cost(quick: bool) -> list[Row]:
    rows = 200_000 if quick else 1_000_000
    source = make_input(rows, "resume")
    plan = DATA / "resume-plan.parquet"
    validate_s, _ = run_measured(job("validate", str(source), "--output", str(plan)), ENV)
    # A job 99 % done: the run's outcomes in the job's store, written as the job writes them.
    from contextlib import closing

    from bulk_update import JobConfig
    from bulk_update.job import run_fingerprint, run_options
    from bulk_update.outcome import RowOutcome, Status
    from bulk_update.store import RunKey, StoreLocation, open_store

    out = DATA / "resume-results.parquet"
    config = JobConfig(input=str(source), output=str(out))
    store_path = config.store_path()
    for stale in store_path.parent.glob(store_path.name + "*"):
        stale.unlink()
    done = rows - rows // 100
    key = RunKey(config.resolved_job_name(), config.output, None)
    with (
        open_store(StoreLocation(store_path)) as store,
        closing(store.open_run(key, run_fingerprint(config), run_options(config))) as journal,
    ):
        for start in range(0, done, 50_000):
            journal.record_many([
                RowOutcome(i + 1, preload_id(i), Status.UPDATED, 200, 1, request_id="req_x",
                           created_at=1, metadata="{}", sent_metadata="{}")
                for i in range(start, min(done, start + 50_000))
            ])  # fmt: skip
    with EmulatorProcess("--preload", str(rows)) as emu:
        resume_s, _, _ = timed(job("run", str(source), "--output", str(out), "--base-url",
                                   emu.base_url, "--rpm", "100000000", "--concurrency", "64"))  # fmt: skip
        stats = emu.stats(timeline=True)
    sent = updated(stats)
    assert sent == rows - done, sent
    overhead = resume_s - (stats["last_ok_s"] - stats["first_ok_s"])
    return [
        Row(f"5 resume {rows:,} rows 99 % done (whole run)", f"{resume_s:.1f} s",
            f"validate {validate_s:.1f} s", resume_s / validate_s, "<= 0.05x",
            resume_s <= 0.05 * validate_s),
        Row(f"5 resume: time not spent sending {rows - done:,} rows", f"{overhead:.1f} s",
            f"validate {validate_s:.1f} s", overhead / validate_s, "(context)", True),
    ]  # fmt: skip


def incremental(quick: bool) -> list[Row]:
    """A nightly re-run of the whole table with 1 % of rows edited, against the full run that
    set them (which also wrote the job's state, as any run does)."""
    rows = 100_000 if quick else 1_000_000
    source = make_input(rows, "incremental")
    edited = DATA / f"incremental-{rows}-edited.csv"
    every = 100  # 1 %
    pl.read_csv(source, infer_schema=False).with_columns(
        pl.when(pl.int_range(pl.len()) % every == 0).then(pl.lit("enterprise"))
        .otherwise(pl.col("tier")).alias("tier")
    ).write_csv(edited)  # fmt: skip
    state_dir = DATA / "incremental-state"
    for stale in state_dir.glob("*"):
        stale.unlink()
    seconds: dict[str, float] = {}
    sent: dict[str, int] = {}
    with EmulatorProcess("--preload", str(rows)) as emu:
        flags = ("--base-url", emu.base_url, "--rpm", "100000000", "--concurrency", "64",
                 "--restart", "--job-name", "nightly", "--state-dir", str(state_dir))  # fmt: skip
        for night, path, extra in (("full", source, ["--full"]), ("nightly", edited, [])):
            before = updated(emu.stats())
            out = DATA / f"incremental-{night}.parquet"
            seconds[night], _, _ = timed(
                job("run", str(path), "--output", str(out), *flags, *extra)
            )
            sent[night] = updated(emu.stats()) - before
    assert sent == {"full": rows, "nightly": rows // every}, sent
    ratio = seconds["nightly"] / seconds["full"]
    return [
        Row(f"6 nightly re-run {rows:,} rows, 1 % changed", f"{seconds['nightly']:.1f} s",
            f"full run {seconds['full']:.0f} s", ratio, "<= 0.05x", ratio <= 0.05),
        Row("6   requests sent by the nightly re-run", f"{sent['nightly']:,}",
            f"full run {sent['full']:,}", sent["nightly"] / sent["full"], "= changed rows",
            sent["nightly"] == rows // every),
        Row("6   full run's rate (state written per row)", f"{rows / seconds['full']:.0f} rows/s",
            "(context: benchmark 1)", 1.0, "(context)", True),
    ]  # fmt: skip


def input_formats(quick: bool) -> list[Row]:
    """The same rows as CSV, TSV and JSON Lines: validate reads each as text (JSON Lines with one
    extra pass to find every key)."""
    rows = 200_000 if quick else 1_000_000
    source = make_input(rows, "scale")
    frame = pl.read_csv(source, infer_schema=False)
    variants = {".csv": source, ".tsv": DATA / f"formats-{rows}.tsv",
                ".jsonl": DATA / f"formats-{rows}.jsonl"}  # fmt: skip
    if not variants[".tsv"].exists():
        frame.write_csv(variants[".tsv"], separator="\t")
    if not variants[".jsonl"].exists():
        frame.write_ndjson(variants[".jsonl"])
    measured: dict[str, tuple[float, float]] = {}
    for suffix, path in variants.items():
        out = DATA / "formats-plan.parquet"
        seconds, memory = run_measured(job("validate", str(path), "--output", str(out)), ENV)
        assert pl.read_parquet(out)["status"].to_list().count("planned") == rows, suffix
        measured[suffix] = (seconds, memory["total_mib"])
    csv_s, csv_mib = measured[".csv"]
    table = []
    for suffix in (".tsv", ".jsonl"):
        seconds, mib = measured[suffix]
        table += [
            Row(f"7 validate {rows:,} rows of {suffix}: time", f"{seconds:.1f} s",
                f"CSV {csv_s:.1f} s", seconds / csv_s, "<= 2x", seconds <= 2 * csv_s),
            Row(f"7 validate {rows:,} rows of {suffix}: peak RSS", f"{mib:.0f} MiB",
                f"CSV {csv_mib:.0f} MiB", mib / csv_mib, "<= 1.5x", mib <= 1.5 * csv_mib),
        ]  # fmt: skip
    return table


def shards(quick: bool) -> list[Row]:
    from benchmarks.shards import shards

    return shards(quick)


def stores(quick: bool) -> list[Row]:
    from benchmarks.stores import stores

    return stores(quick)


def state_bytes(quick: bool) -> list[Row]:
    from benchmarks.stores import state_bytes

    return state_bytes(quick)


def growth(quick: bool) -> list[Row]:
    from benchmarks.growth import growth

    return growth(quick)


def reading_first(quick: bool) -> list[Row]:
    """What knowing the server costs: --backup (a read and an update a row, the before-image
    committed first) and validate --check-server (a read a row) against a plain run, all at 64
    in flight with no server limit; then --backup against a server limit of R, where the reads
    must share the budget and the limiter must still ride it."""
    rows = 4000 if quick else 20_000
    source = make_input(rows, "readfirst")
    rates: dict[str, float] = {}
    for kind in ("plain", "backup", "check"):
        with EmulatorProcess("--preload", str(rows)) as emu:
            out = DATA / f"readfirst-{kind}.parquet"
            command = "validate" if kind == "check" else "run"
            extra = {"plain": ["--restart"], "backup": ["--restart", "--backup"],
                     "check": ["--check-server"]}[kind]  # fmt: skip
            seconds, _, done = timed(job(command, str(source), "--output", str(out),
                                         "--base-url", emu.base_url, "--concurrency", "64",
                                         "--rpm", "100000000", "--full", *extra))  # fmt: skip
            stats = emu.stats()
            want = 0 if kind == "check" else rows
            assert updated(stats) == want, (kind, updated(stats), done.stderr[-500:])
            rates[kind] = rows / seconds
    server = 3000
    limited_rows = 1000 if quick else 2000
    with EmulatorProcess("--preload", str(limited_rows), "--rpm", str(server)) as emu:
        source = make_input(limited_rows, "readfirst-limited")
        out = DATA / "readfirst-limited.parquet"
        timed(job("run", str(source), "--output", str(out), "--base-url", emu.base_url,
                  "--rpm", str(server), "--concurrency", "32", "--restart", "--full",
                  "--backup"))  # fmt: skip
        stats = emu.stats(timeline=True)
    answered = int(stats["by_status"].get("200", 0))
    limited = int(stats["by_status"].get("429", 0))
    span = stats["last_ok_s"] - stats["first_ok_s"]
    rpm = (answered - 1) / span * 60 if span > 0 else 0.0
    backup, check = rates["backup"] / rates["plain"], rates["check"] / rates["plain"]
    return [
        Row("10 --backup rows/s vs plain run (64 in flight)", f"{rates['backup']:.0f} rows/s",
            f"{rates['plain']:.0f} rows/s", backup, ">= 0.45x", backup >= 0.45),
        Row("10 --check-server rows/s vs plain run", f"{rates['check']:.0f} rows/s",
            f"{rates['plain']:.0f} rows/s", check, ">= 0.8x", check >= 0.8),
        Row("10 --backup at R: reads+updates vs R", f"{rpm:.0f} rpm", f"R = {server} rpm",
            rpm / server, ">= 0.95x", rpm >= 0.95 * server),
        Row("10 --backup at R: share answered 429", f"{limited / (answered + limited):.2%}",
            "all requests", limited / (answered + limited), "<= 2 %",
            limited / (answered + limited) <= 0.02),
    ]  # fmt: skip


def make_wide_input(megabytes: int, cell_chars: int) -> tuple[Path, int]:
    """About ``megabytes`` of CSV: the emulator's preloaded IDs and 16 cells of ``cell_chars``
    characters each; returns the file and its rows."""
    row_bytes = 54 + 16 * (cell_chars + 2)
    rows = megabytes * 1_000_000 // row_bytes
    path = DATA / f"width-{cell_chars}-{megabytes}mb.csv"
    if path.exists():
        return path, rows
    DATA.mkdir(exist_ok=True)
    cells = {f"k{j}": pl.repeat(f"{j % 10}" + "x" * cell_chars, rows, eager=True)
             for j in range(16)}  # fmt: skip
    pl.DataFrame({"conversation_id": [preload_id(i) for i in range(rows)], **cells}).write_csv(path)
    return path, rows


def row_width(quick: bool) -> list[Row]:
    """Peak memory of a run over a file of wide rows against one of narrow rows of the same
    size: batches are sized by bytes, so the width of a row should not matter. Each run sends
    its first rows (--limit) and writes its results and errors file (every input column of the
    rows left)."""
    megabytes, sent = (50, 1000) if quick else (200, 5000)
    peaks: dict[str, dict[str, float]] = {}
    for name, chars in (("narrow", 2), ("wide", 500)):
        source, rows = make_wide_input(megabytes, chars)
        with EmulatorProcess("--preload", str(sent)) as emu:
            command = job("run", str(source), "--output", str(DATA / f"width-{name}.parquet"),
                          "--errors-output", str(DATA / f"width-{name}-errors.csv"), "--base-url",
                          emu.base_url, "--concurrency", "64", "--rpm", "100000000", "--limit",
                          str(sent), "--restart", "--full")  # fmt: skip
            _, peaks[name] = run_measured(command, ENV)
            assert updated(emu.stats()) == sent, f"{name}: not every row of --limit sent"
        peaks[name]["rows"] = rows
    wide, narrow = peaks["wide"], peaks["narrow"]
    return [
        Row(f"11 peak RSS, {megabytes} MB of 8 KB rows", f"{wide['total_mib']:.0f} MiB",
            f"{narrow['total_mib']:.0f} MiB of 0.1 KB", wide["total_mib"] / narrow["total_mib"],
            "<= 1.1x", wide["total_mib"] <= 1.1 * narrow["total_mib"]),
        Row("11   of which heap (anonymous RSS)", f"{wide['anon_mib']:.0f} MiB",
            f"{narrow['anon_mib']:.0f} MiB", wide["anon_mib"] / narrow["anon_mib"], "(context)",
            True),
    ]  # fmt: skip


def json_lines_as_written(quick: bool) -> list[Row]:
    """Reading a JSON Lines file with every value as written (bulk_update.jsonlines: Python's C
    parser over whole chunks) against polars' own reader of the same file as text (two passes:
    the keys, then the values), in this process."""
    import tempfile

    from bulk_update import jsonlines

    rows = 100_000 if quick else 500_000
    path = DATA / f"lines-{rows}.jsonl"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        with path.open("w") as out:
            for i in range(rows):
                out.write(json.dumps({"conversation_id": preload_id(i), "tier": "pro", "n": i,
                                      "score": i / 7, "region": "emea"}) + "\n")  # fmt: skip
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        parts = jsonlines.as_text_parts(str(path), Path(directory))
        read = pl.concat([pl.scan_ipc(p) for p in parts], how="diagonal").collect().height
    ours = time.perf_counter() - started
    started = time.perf_counter()
    names = pl.scan_ndjson(path, infer_schema_length=None).collect_schema().names()
    text = pl.Schema(dict.fromkeys(names, pl.String()))
    theirs_rows = pl.scan_ndjson(path, schema=text).collect().height
    theirs = time.perf_counter() - started
    assert read == theirs_rows == rows
    return [
        Row(f"12 JSON Lines as written, {rows:,} rows", f"{rows / ours:,.0f} rows/s",
            f"{rows / theirs:,.0f} rows/s (polars)", ours / theirs, "(context: once a run)",
            True),
    ]  # fmt: skip


def unchanged_nights(quick: bool) -> list[Row]:
    from benchmarks.nights import nights

    return nights(quick)


def resources(quick: bool) -> list[Row]:
    from benchmarks.resources import per_resource

    return per_resource(quick, EFFICIENCY["repeat"], NOTES)


BENCHMARKS: dict[str, Callable[[bool], list[Row]]] = {
    "1": client_efficiency,
    "2": riding_the_limit,
    "3": latency_hiding,
    "4": scale,
    "5": resume_cost,
    "6": incremental,
    "7": input_formats,
    "8": stores,
    "9": state_bytes,
    "10": reading_first,
    "11": row_width,
    "12": json_lines_as_written,
    "13": unchanged_nights,
    "14": shards,
    "15": growth,
    "16": resources,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="e.g. 1,3")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    parser.add_argument(
        "--repeat", type=int, default=2, help="benchmark 1: runs of each program (best kept)"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="benchmark 1: also run the job as of this commit, interleaved (a before and after)",
    )
    parser.add_argument(
        "--programs",
        default=",".join(EFFICIENCY_PROGRAMS),
        help="benchmark 1: the job and the peers to run (job is always run), e.g. "
        "job,sdk-aiohttp,bare-aiohttp",
    )
    args = parser.parse_args()
    programs = [p.strip() for p in args.programs.split(",") if p.strip()]
    unknown = sorted(set(programs) - set(EFFICIENCY_PROGRAMS))
    if unknown:
        parser.error(f"--programs: not a program of benchmark 1: {', '.join(unknown)}")
    programs = ["job", *(p for p in programs if p != "job")]
    EFFICIENCY.update(repeat=args.repeat, against=args.against, programs=tuple(programs))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"polars {pl.__version__}{' (quick)' if args.quick else ''}")  # fmt: skip
    table: list[Row] = []
    for key in args.only.split(","):
        started = time.perf_counter()
        rows = BENCHMARKS[key.strip()](args.quick)
        table += rows
        print(f"  benchmark {key} took {time.perf_counter() - started:.0f} s", file=sys.stderr)
    header = f"| {'benchmark':<44} | {'measured':>14} | {'baseline (same run)':>30} | {'ratio':>6} | {'goal':>20} | met |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for row in table:
        print(f"| {row.benchmark:<44} | {row.measured:>14} | {row.baseline:>30} | {row.ratio:>6.2f} | "
              f"{row.goal:>20} | {'yes' if row.met else 'NO':>3} |")  # fmt: skip
    for note in NOTES:
        print(note)
    if args.json:
        Path(args.json).write_text(json.dumps([row.__dict__ for row in table], indent=2))


if __name__ == "__main__":
    main()
