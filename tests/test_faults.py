"""Under faults, with the real CLI, the real emulator, real signals, a real full filesystem
(tmpfs) and a real PostgreSQL: one writer for real, no hang on a full disk, no silent worker
death, a signal in any phase, a bounded stop when the store is away, a copy of the input
elsewhere, an emptied store. Each store behaviour runs on both stores."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bulk_update.store import StoreLocation, open_store, schema
from bulk_update.store.sqlite import SQLiteStore
from bulk_update.store.url import redact
from tests.conftest import StartEmulator
from tests.faults import (
    Tmpfs,
    holding_postgres,
    holding_sqlite,
    store_counts,
    store_run,
    summary_counts,
)
from tests.helpers import ID, cli, results, start, wait_for_requests, warm, write_input
from tests.pg import PostgresServer, wait_until_up
from tests.stores import Backend

README = Path(__file__).resolve().parent.parent / "README.md"
DOCS = Path(__file__).resolve().parent.parent / "docs"


@dataclass(frozen=True)
class Store:
    """The job's store for a test: SQLite in ``state`` (job ``j``) or a PostgreSQL database."""

    backend: str
    args: tuple[str, ...]
    where: str  # the SQLite file, or the PostgreSQL URL
    postgres: PostgresServer | None = None


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        state = tmp_path / "state"
        return Store(
            "sqlite", ("--state-dir", str(state), "--job-name", "j"), str(state / "j.sqlite")
        )
    url = request.getfixturevalue("state_url")
    postgres = request.getfixturevalue("postgres")
    return Store("postgres", ("--state-url", url, "--job-name", "j"), url, postgres)


def partials(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.partial"))


def wait_for_partial(directory: Path, process: object) -> None:
    """Until the results are being written (their temporary file exists)."""
    import subprocess

    assert isinstance(process, subprocess.Popen)
    deadline = time.monotonic() + 120
    while not partials(directory):
        assert process.poll() is None, "finished before its results were being written"
        assert time.monotonic() < deadline, "the results were never written"
        time.sleep(0.002)


def test_a_signal_while_the_results_are_written(store: Store, tmp_path: Path) -> None:
    """The results are the last phase of a run, and the longest for a big file: a signal there
    ends the run the way the README says, and a write cut short leaves nothing behind."""
    source = tmp_path / "in.csv"
    # Rows with no metadata: all invalid, nothing to send, a big results file to write.
    with source.open("w") as handle:
        handle.write("conversation_id,tier\n")
        handle.writelines(f"{ID(i)},\n" for i in range(150_000))
    out = tmp_path / "out"
    args = (str(source), "--output", str(out / "r.csv"), "--errors-output", str(out / "e.csv"),
            "--base-url", "http://127.0.0.1:9/v1", *store.args)  # fmt: skip

    # A first signal: the results are finished, the run ends as stopped by it.
    process = start(*args)
    wait_for_partial(out, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "SIGTERM: writing the results first" in stderr
    assert "stopped by SIGTERM" in stderr.strip().splitlines()[-1]
    assert results(out / "r.csv").height == 150_000
    assert partials(out) == []
    assert store_run(store.backend, store.where, store.postgres) == {
        "exit_code": 143, "stopped_by": "SIGTERM", "ended": True,
    }  # fmt: skip

    # A second signal: at once; the complete file of the last run stays, nothing is left behind.
    before = (out / "r.csv").read_bytes()
    process = start(*args)
    wait_for_partial(out, process)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "second signal: stopping at once" in stderr
    assert "the results were not written" in stderr
    assert (out / "r.csv").read_bytes() == before
    assert partials(out) == []
    assert store_run(store.backend, store.where, store.postgres)["ended"]

    # kill -9 mid-write leaves the temporary files: the next run removes them.
    process = start(*args)
    wait_for_partial(out, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert partials(out)
    again = cli("run", *args)
    assert again.returncode == 1, again.stderr
    assert partials(out) == []
    assert results(out / "r.csv").height == 150_000


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_full_disk_stops_the_run_and_it_resumes(
    start_emulator: StartEmulator, tmp_path: Path, backend: str
) -> None:
    """The store's disk fills up mid-run (SQLite: its directory on a small filesystem;
    PostgreSQL: the server's data directory on one, all but 600 kB taken): the run stops (exit
    3, resumable) in one line naming the store; with room again it finishes, every row once."""
    n, concurrency = 3000, 8
    source = tmp_path / "in.csv"
    ids = write_input(source, n)
    emu = start_emulator("--preload", str(source))
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            small = stack.enter_context(Tmpfs(tmp_path / "small", "3m"))
            store = ("--state-dir", str(small.path))
            named = f"{small.path / 'j.sqlite'}: the disk is full"

            def make_room() -> None:
                small.resize("64m")
        else:
            # Outside tmp_path: the server's user must reach it (pytest's directories are 0700).
            mount = Path(tempfile.mkdtemp(prefix="bulk-update-pgdisk-"))
            stack.callback(mount.rmdir)
            small = stack.enter_context(Tmpfs(mount, "100m"))
            postgres = stack.enter_context(PostgresServer(small.path / "cluster"))
            url = postgres.create_database("full")
            store = ("--state-url", url)
            named = f"the store {redact(url)}: the disk is full"
            filler = small.path / "filler"
            filler.write_bytes(b"\0" * (shutil.disk_usage(small.path).free - 600_000))

            def make_room() -> None:
                filler.unlink()

        args = ("run", str(source), "--output", str(tmp_path / "out.csv"), *store, "--job-name",
                "j", "--base-url", emu.base_url, "--rpm", "600000", "--concurrency",
                str(concurrency))  # fmt: skip
        stopped = cli(*args, timeout=180)  # it used to hang for ever here (SQLite)
        assert stopped.returncode == 3, stopped.stderr
        assert "Traceback" not in stopped.stderr
        assert named in stopped.stderr.strip().splitlines()[-1]
        frame = results(tmp_path / "out.csv")
        assert frame["row_number"].to_list() == list(range(1, n + 1))
        assert set(frame["status"].to_list()) == {"updated", "unprocessed"}
        left = frame.filter(pl.col("status") == "unprocessed")
        # The rows in flight at the stop are outcome_unknown where the store could still
        # record them (at most --concurrency).
        assert set(left["error_code"].to_list()) <= {"disk_full", "outcome_unknown"}
        assert (left["error_code"] == "outcome_unknown").sum() <= concurrency
        make_room()
        resumed = cli(*args)
        assert resumed.returncode == 0, resumed.stderr
    frame = results(tmp_path / "out.csv")
    assert set(frame["status"].to_list()) == {"updated"}
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert set(applied) == set(ids)
    print(f"{backend}: {sum(applied.values()) - n} rows sent again after the disk filled")
    assert sum(applied.values()) - n <= concurrency  # in flight when the disk filled


def test_a_full_disk_under_the_results(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """Every row sent, then no room for the results file: exit 3 naming it, no temporary file
    left; with room, the same command writes them and sends nothing."""
    source = tmp_path / "in.csv"
    write_input(source, 3000)
    emu = start_emulator("--preload", str(source))
    with Tmpfs(tmp_path / "small", "256k") as small:
        out = small.path / "out.csv"
        args = ("run", str(source), "--output", str(out), "--state-dir", str(tmp_path / "state"),
                "--base-url", emu.base_url, "--rpm", "600000", "--concurrency", "16")  # fmt: skip
        stopped = cli(*args)
        assert stopped.returncode == 3, stopped.stderr
        line = stopped.stderr.strip().splitlines()[-1]
        assert f"{out}: the disk is full" in line
        assert "the results were not written" in line
        assert not out.exists()
        assert partials(small.path) == []
        small.resize("8m")
        sent = emu.stats()["requests"]
        again = cli(*args)
        assert again.returncode == 0, again.stderr
        assert emu.stats()["requests"] == sent
        assert set(results(out)["status"].to_list()) == {"updated"}


def test_a_full_disk_under_the_results_and_the_errors_file(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The results and the errors file on one small disk, with room for the results and half
    the errors file: one line names the file that could not be written, the cause once, the
    advice once (it was "res.csv: the disk is full (err.csv: the disk is full (...); free
    space, then ...); free space, then ..."). With room, the same command writes both."""
    source = tmp_path / "in.csv"
    note = "n" * 600  # every row invalid (too long): the errors file is the bigger one
    source.write_text("conversation_id,note\n" + "".join(f"{ID(i)},{note}\n" for i in range(400)))
    emu = start_emulator()
    roomy = tmp_path / "roomy"
    args = ("run", str(source), "--state-dir", str(tmp_path / "state"), "--base-url",
            emu.base_url)  # fmt: skip
    sized = cli(*args, "--output", str(roomy / "res.csv"), "--errors-output",
                str(roomy / "err.csv"))  # fmt: skip
    assert sized.returncode == 1, sized.stderr
    res_size, err_size = ((roomy / name).stat().st_size for name in ("res.csv", "err.csv"))
    assert err_size > 4 * res_size
    with Tmpfs(tmp_path / "small", "4m") as small:
        res, err = small.path / "res.csv", small.path / "err.csv"
        outputs = ("--output", str(res), "--errors-output", str(err))
        filler = small.path / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(small.path).free - res_size - err_size // 2))
        stopped = cli(*args, *outputs)
        assert stopped.returncode == 3, stopped.stderr
        assert "Traceback" not in stopped.stderr
        line = stopped.stderr.strip().splitlines()[-1]
        assert f"{err}: the disk is full (" in line, line
        assert line.count("the disk is full") == 1, line
        assert line.count("free space") == 1, line
        assert str(res) not in line, line
        assert not res.exists()
        assert not err.exists()
        assert partials(small.path) == []
        filler.unlink()
        again = cli(*args, *outputs)
        assert again.returncode == 1, again.stderr
        assert results(res)["status"].to_list() == ["invalid"] * 400
        assert pl.read_csv(err, infer_schema=False).height == 400
    assert emu.stats()["by_operation"].get("update", 0) == 0


def test_a_store_held_by_another_process(
    store: Store, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Another process holds the store (SQLite: a write transaction; PostgreSQL: a table lock)
    longer than --store-timeout: the job does not freeze meanwhile (its metrics go on, a
    signal is heard at once), no worker dies silently, and it stops (exit 3) saying why."""
    # Enough rows that the run is still sending once the holder (a new Python process: seconds
    # on a loaded machine) has the store: 20 s of rows at 20 ms and 4 at once. (With 1,000 the
    # run could end before the hold, exit 0: seen once beside other work.)
    n, concurrency = 4000, 4
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    metrics, log_file = tmp_path / "m.prom", tmp_path / "job.log"
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--rpm", "600000", "--concurrency", str(concurrency), "--metrics-file", str(metrics),
            "--metrics-interval", str(METRICS_INTERVAL_S), "--log-format", "json",
            "--log-file", str(log_file), *store.args)  # fmt: skip

    def held() -> object:
        if store.backend == "sqlite":
            return holding_sqlite(Path(store.where))
        return holding_postgres(store.where)

    # Held longer than --store-timeout: the run stops on its own, exit 3; its metrics go on.
    process = start(*args, "--store-timeout", "4")
    wait_for_requests(emu, 200)
    with held():  # type: ignore[attr-defined]
        stderr = _metrics_go_on(process, metrics, log_file)
    assert process.returncode == 3, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    state = (
        "locked by another process" if store.backend == "sqlite" else "locked by another session"
    )
    assert f"has been {state}" in last, last
    if store.backend == "sqlite":  # readers are not held back by SQLite's write lock
        frame = results(tmp_path / "out.csv")
        assert frame["row_number"].to_list() == list(range(1, n + 1))
        left = frame.filter(pl.col("status") == "unprocessed")
        assert set(left["error_code"].to_list()) == {"store_unavailable"}
    else:
        assert "the results were not written" in last
    emu.admin("config", {"latency_ms": 0})  # the rest at once
    resumed = cli("run", *args)
    assert resumed.returncode == 0, resumed.stderr
    frame = results(tmp_path / "out.csv")
    assert set(frame["status"].to_list()) == {"updated"}
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert len(applied) == n
    assert sum(applied.values()) - n <= concurrency

    # Held while a SIGTERM comes (--store-timeout 60): it is heard at once, and the store gets
    # no longer than the drain (--drain-timeout 1): the run ends while the store is still held,
    # exit 143, its uncommitted rows unprocessed, resumable.
    log_file.unlink()
    emu.admin("reset-counters", {})
    emu.admin("config", {"latency_ms": 20})
    process = start(*args, "--restart", "--full", "--drain-timeout", "1")
    wait_for_requests(emu, 200)
    with held():  # type: ignore[attr-defined]
        time.sleep(0.5)  # the workers are waiting for their commits
        process.send_signal(signal.SIGTERM)
        signalled = time.time()
        _, stderr = process.communicate(timeout=30)  # the hold would last for ever
        ended = time.time()
    assert process.returncode == 143, stderr
    print(f"ended {ended - signalled:.1f} s after SIGTERM, the store still held")
    assert ended - signalled < 10, stderr
    heard = [
        json.loads(line)
        for line in log_file.read_text().splitlines()
        if '"event": "stopping"' in line
    ]
    assert heard, log_file.read_text()[-2000:]
    at = dt.datetime.fromisoformat(heard[0]["time"]).timestamp()
    assert signalled - 1 < at < signalled + 2, (signalled, at)  # heard at once
    emu.admin("config", {"latency_ms": 0})
    again = cli("run", *args)
    assert again.returncode == 0, again.stderr


# --metrics-interval of the tests of a store held: a store held for --store-timeout (4-6 s)
# spans 8-12 metrics writes.
METRICS_INTERVAL_S = 0.5
# Metrics written while the store was held, at least: fewer is not a loop late under load but
# metrics that wait for the store (they did: at most one write, the tick whose heartbeat then
# waited, and none until the store was given up).
METRICS_WHILE_HELD = 3


def _metrics_go_on(process: subprocess.Popen[str], metrics: Path, log_file: Path) -> str:
    """Until the job ends (called once the store is held; --metrics-interval METRICS_INTERVAL_S,
    JSON logs): its metrics are written again and again from now until it gives the store up,
    as it logs it. The writes are counted by the file's mtimes, the job's clock: a test
    process starved by a loaded machine may see the hold late (a shorter span), never a
    pause that was not. Its stderr."""
    start = time.time()  # the store is held from here at the latest
    seen: set[int] = set()  # the metrics file's mtimes (each write replaces it)
    deadline = time.monotonic() + 120
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"still running 120 s later: {process.communicate()[1]}")
        with contextlib.suppress(FileNotFoundError):
            seen.add(metrics.stat().st_mtime_ns)
        time.sleep(0.02)
    _, stderr = process.communicate()
    end = _first_time(log_file, "fatal", stderr)  # the store given up: the run stops
    held = sorted(t / 1e9 - start for t in seen if start < t / 1e9 < end)
    print(f"metrics written at {[round(t, 2) for t in held]} s of the {end - start:.1f} s "
          f"the store was held (every {METRICS_INTERVAL_S} s)")  # fmt: skip
    assert len(held) >= METRICS_WHILE_HELD, (
        f"the metrics were written {len(held)} times in the {end - start:.1f} s the store was "
        f"held (at {[round(t, 2) for t in held]} s), not every {METRICS_INTERVAL_S} s"
    )
    return stderr


def _hold_whole(store: Store) -> contextlib.AbstractContextManager[object]:
    """Another process holds the whole store: a SQLite write transaction; every table of the
    PostgreSQL store locked by another session (a migration, a dump taking ACCESS EXCLUSIVE)."""
    if store.backend == "sqlite":
        return holding_sqlite(Path(store.where))
    return holding_postgres(store.where, tables=_ALL_TABLES)


# Every table of the PostgreSQL store.
_ALL_TABLES = tuple(table.name for table in schema.TABLES)


def _make_store(store: Store) -> None:
    """The job's store with its tables, as a first run leaves it (so that it can be held)."""
    if store.backend == "sqlite":
        location = StoreLocation(Path(store.where))
    else:
        location = StoreLocation(Path("unused"), store.where)
    open_store(location).close()


def _events(log_file: Path, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of ``event``, in order."""
    if not log_file.exists():
        return []
    lines = log_file.read_text().splitlines()
    return [json.loads(line) for line in lines if f'"event": "{event}"' in line]


def _first_time(log_file: Path, event: str, stderr: str) -> float:
    """When the job first logged ``event`` (Unix time)."""
    found = _events(log_file, event)
    assert found, f"no {event} logged: {stderr}"
    return dt.datetime.fromisoformat(found[0]["time"]).timestamp()


def _wait_for_event(process: subprocess.Popen[str], log_file: Path, event: str) -> float:
    """Until the job logs ``event`` (JSON logs); its time (Unix)."""
    deadline = time.monotonic() + 120
    while not (found := _events(log_file, event)):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"no {event} logged"
        time.sleep(0.02)
    return dt.datetime.fromisoformat(found[0]["time"]).timestamp()


def _ended(process: subprocess.Popen[str], timeout: float) -> tuple[str, float]:
    """The job's stderr and when it ended (Unix time); killed if it has not ended by then."""
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"still running {timeout} s later") from None
    return stderr, time.time()


def test_a_store_held_at_the_start_is_waited_for_as_mid_run(
    store: Store, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Another process holds the whole store as the run starts (SQLite: a write transaction;
    PostgreSQL: every table locked): the start waits for it on the run's one clock, from its
    first try, for --store-timeout and no longer, and stops as a run stopped by a held store
    mid-way does: exit 3, the same line on both stores, nothing sent. Released, the same
    command runs. (It used to be exit 2 at PostgreSQL's first lock timeout, 2.9 s, and on
    SQLite exit 2 after the timeout plus its first busy wait.)"""
    n, timeout_s = 40, 5
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source))
    log_file = tmp_path / "job.log"
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--log-format", "json", "--log-file", str(log_file), *store.args)  # fmt: skip
    _make_store(store)
    with _hold_whole(store):
        started = time.time()
        process = start(*args, "--store-timeout", str(timeout_s))
        lost = _wait_for_event(process, log_file, "store_lost")  # its first try failed
        stderr, ended = _ended(process, 120)
    print(f"{store.backend}: exit {process.returncode} {ended - lost:.1f} s after the first "
          f"failure ({ended - started:.1f} s after the start), --store-timeout {timeout_s}")  # fmt: skip
    assert process.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    state = "process" if store.backend == "sqlite" else "session"
    found = re.search(rf"has been locked by another {state} for (\d+) s", last)
    assert found is not None, last
    assert int(found.group(1)) >= timeout_s, last
    assert "resumes when run again" in last
    assert "Traceback" not in stderr
    # One clock from the first try (a lock waited for before it failed counts): the start is
    # given up --store-timeout after it, plus one try's wait (SQLite's busy wait, 1 s).
    assert ended - started >= timeout_s
    assert ended - lost < timeout_s + 5, (lost, ended)
    assert emu.stats()["requests"] == 0
    assert not (tmp_path / "out.csv").exists()

    done = cli("run", *args)
    assert done.returncode == 0, done.stderr
    assert set(results(tmp_path / "out.csv")["status"].to_list()) == {"updated"}


def test_a_signal_at_the_start_while_the_store_is_held(
    store: Store, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A SIGTERM while the run waits for a store held at its start (--store-timeout 60): the
    wait gets no longer than the drain (--drain-timeout 1), the run ends as stopped by the
    signal (exit 143), nothing sent, the results not written. A second signal stops it at once
    (SIGINT twice: 130, with a drain of 60 s). The same command then runs. (A SIGTERM there
    used to be ignored until the store was free: exit 143 35-38 s later.)"""
    n = 40
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source))
    log_file = tmp_path / "job.log"
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--log-format", "json", "--log-file", str(log_file), "--store-timeout", "60",
            *store.args)  # fmt: skip
    _make_store(store)
    with _hold_whole(store):
        process = start(*args, "--drain-timeout", "1")
        _wait_for_event(process, log_file, "store_lost")  # waiting for the store
        process.send_signal(signal.SIGTERM)
        signalled = time.time()
        stderr, ended = _ended(process, 60)
        print(f"{store.backend}: exit {process.returncode} {ended - signalled:.1f} s after "
              "SIGTERM, the store still held (--drain-timeout 1)")  # fmt: skip
        assert process.returncode == 143, stderr
        assert ended - signalled < 6, stderr
        heard = _events(log_file, "stopping")
        assert heard, log_file.read_text()[-2000:]
        assert "stopping before the run starts" in heard[0]["message"], heard
        last = stderr.strip().splitlines()[-1]
        assert "stopped by SIGTERM" in last, last
        assert "nothing was sent" in last, last
        assert "Traceback" not in stderr

        log_file.unlink()
        process = start(*args, "--drain-timeout", "60")
        _wait_for_event(process, log_file, "store_lost")
        process.send_signal(signal.SIGINT)
        _wait_for_event(process, log_file, "stopping")
        process.send_signal(signal.SIGINT)
        again = time.time()
        stderr, ended = _ended(process, 60)
        print(f"{store.backend}: exit {process.returncode} {ended - again:.1f} s after the "
              "second SIGINT (--drain-timeout 60)")  # fmt: skip
        assert process.returncode == 130, stderr
        assert ended - again < 5, stderr
        assert "stopped by SIGINT" in stderr.strip().splitlines()[-1]
    assert emu.stats()["requests"] == 0
    assert not (tmp_path / "out.csv").exists()

    done = cli("run", *args)
    assert done.returncode == 0, done.stderr
    assert set(results(tmp_path / "out.csv")["status"].to_list()) == {"updated"}
    assert sum(emu.stats(per_id=True)["updates_applied_by_id"].values()) == n


def test_a_store_held_mid_run_stops_it_on_the_timeout(
    store: Store, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The whole store held mid-run (PostgreSQL: every table locked, the heartbeat's and the
    lease's too): the stop takes --store-timeout once, from the hold, plus a moment; not the
    timeout after a first lock timeout, then a lock timeout each for the heartbeat and the end
    (13.6 s with --store-timeout 6; now 6.6 s, 7.7 s on SQLite: a try's busy wait, 1 s at
    most, then the results written from the store)."""
    n, timeout_s = 3000, 6
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    metrics, log_file = tmp_path / "m.prom", tmp_path / "job.log"
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--rpm", "600000", "--concurrency", "4", "--metrics-file", str(metrics),
            "--metrics-interval", str(METRICS_INTERVAL_S), "--log-format", "json",
            "--log-file", str(log_file), *store.args)  # fmt: skip
    process = start(*args, "--store-timeout", str(timeout_s))
    wait_for_requests(emu, 200)
    with _hold_whole(store):
        held = time.time()
        stderr = _metrics_go_on(process, metrics, log_file)  # the heartbeat's table held too
        ended = time.time()
    print(f"{store.backend}: stopped {ended - held:.1f} s after the whole store was held "
          f"(--store-timeout {timeout_s})")  # fmt: skip
    assert process.returncode == 3, stderr
    assert "has been locked by another" in stderr.strip().splitlines()[-1]
    assert timeout_s - 1 < ended - held < timeout_s + 5, stderr
    resumed = cli("run", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert set(results(tmp_path / "out.csv")["status"].to_list()) == {"updated"}


def test_a_signal_while_the_start_waits_for_a_lease(
    start_emulator: StartEmulator, postgres: PostgresServer, state_url: str, tmp_path: Path
) -> None:
    """The run's last holder was killed on another machine: its lease lasts 30 s more, and the
    start waits for it (it may still be sending). A SIGTERM there stops the run within the
    drain (exit 143), nothing sent; it used to wait the lease out (29.6 s). With the lease
    ended, the same command runs."""
    n = 40
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source))
    log_file = tmp_path / "job.log"
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--state-url", state_url, "--job-name", "j", "--log-format", "json", "--log-file",
            str(log_file))  # fmt: skip
    _make_store(Store("postgres", (), state_url, postgres))
    database = state_url.rsplit("/", 1)[1]
    postgres.execute(database, "INSERT INTO bulk_update.jobs (name) VALUES ('j')")
    postgres.execute(
        database,
        "INSERT INTO bulk_update.leases SELECT job_id, '', 'killed', now() + interval '30 s', "
        "'another-host', 4242, 'another-boot', 'pid:[1]', '1' FROM bulk_update.jobs",
    )
    process = start(*args, "--drain-timeout", "1")
    _wait_for_event(process, log_file, "lease_wait")
    process.send_signal(signal.SIGTERM)
    signalled = time.time()
    stderr, ended = _ended(process, 60)
    print(f"exit {process.returncode} {ended - signalled:.1f} s after SIGTERM, waiting for a "
          "lease of 30 s more (--drain-timeout 1)")  # fmt: skip
    assert process.returncode == 143, stderr
    assert ended - signalled < 6, stderr
    last = stderr.strip().splitlines()[-1]
    assert "pid 4242 on another-host, may still be sending" in last, last
    assert "stopped by SIGTERM" in last, last
    assert emu.stats()["requests"] == 0
    postgres.execute(database, "DELETE FROM bulk_update.leases")
    done = cli("run", *args)
    assert done.returncode == 0, done.stderr
    assert set(results(tmp_path / "out.csv")["status"].to_list()) == {"updated"}


def _connected_to(pid: int, port: int) -> bool:
    """Has the process a TCP connection to ``port`` (the kernel of a frozen server accepts
    it; nobody answers)?"""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                sockets.add(target[8:-1])
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rpartition(":")[2], 16) == port and fields[9] in sockets:
            return True
    return False


def test_a_signal_while_a_frozen_database_is_first_reached(
    start_emulator: StartEmulator, postgres: PostgresServer, state_url: str, tmp_path: Path
) -> None:
    """The database is frozen (SIGSTOP) as the run starts: its kernel accepts the connection,
    nothing answers. A SIGTERM then stops the run within the drain (exit 143), nothing sent;
    it used to wait for the connection's timeout and give exit 2 (7.7 s later). Unfrozen, the
    same command runs."""
    n = 40
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source))
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--state-url", state_url, "--store-timeout", "60")  # fmt: skip
    frozen = _postgres_processes(postgres)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        process = start(*args, "--drain-timeout", "1")
        deadline = time.monotonic() + 120
        while not _connected_to(process.pid, postgres.port):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the job never reached the database"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        signalled = time.time()
        stderr, ended = _ended(process, 60)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):  # a backend that ended meanwhile
                os.kill(pid, signal.SIGCONT)
    print(f"exit {process.returncode} {ended - signalled:.1f} s after SIGTERM, the database "
          "frozen (--drain-timeout 1)")  # fmt: skip
    assert process.returncode == 143, stderr
    assert ended - signalled < 6, stderr
    last = stderr.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in last, last
    assert "nothing was sent" in last, last
    assert redact(state_url) in last
    assert state_url not in stderr  # never the password
    assert emu.stats()["requests"] == 0
    wait_until_up(state_url)
    done = cli("run", *args)
    assert done.returncode == 0, done.stderr
    assert set(results(tmp_path / "out.csv")["status"].to_list()) == {"updated"}


def test_a_copy_of_the_input_elsewhere_resumes_the_run(
    store: Store, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The same command on another machine, with a copy of the input under another path,
    resumes the run; a copy whose content changed is refused (the run is unfinished)."""
    n, concurrency = 600, 4
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    machine_a.mkdir()
    (machine_b / "exports").mkdir(parents=True)
    write_input(machine_a / "in.csv", n)
    emu = start_emulator("--preload", str(machine_a / "in.csv"), "--latency-ms", "20")
    common = ("--output", "out.csv", "--base-url", emu.base_url, "--rpm", "600000",
              "--concurrency", str(concurrency), *store.args)  # fmt: skip
    first = start("in.csv", *common, cwd=machine_a)
    wait_for_requests(emu, 100)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode == 143, stderr
    time.sleep(0.1)
    copy = machine_b / "exports" / "conversations.csv"
    # One character changed in the middle, the size and both ends the same: another input.
    text = (machine_a / "in.csv").read_text()
    middle = text.index(",v,", len(text) // 2)
    copy.write_text(text[:middle] + ",w," + text[middle + 3 :])
    refused = cli("run", str(copy), *common, cwd=machine_b)
    assert refused.returncode == 2, refused.stderr
    assert "changed: input" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    shutil.copyfile(machine_a / "in.csv", copy)  # another path, another mtime
    resumed = cli("run", str(copy), *common, cwd=machine_b)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming:" in resumed.stderr
    frame = results(machine_b / "out.csv")
    assert frame["row_number"].to_list() == list(range(1, n + 1))
    assert set(frame["status"].to_list()) == {"updated"}
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert sum(applied.values()) - n <= concurrency


def test_an_emptied_store_is_refused(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """A store file truncated to nothing is not a new store: it would send every row again."""
    source = tmp_path / "in.csv"
    write_input(source, 20)
    emu = start_emulator("--preload", str(source))
    args = ("run", str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
            emu.base_url)  # fmt: skip
    assert cli(*args).returncode == 0
    store = tmp_path / "out.sqlite"
    os.truncate(store, 0)
    sent = emu.stats()["requests"]
    refused = cli(*args)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert str(store) in lines[0]
    assert "the file is empty" in lines[0]
    assert "remove it" in lines[0]
    assert emu.stats()["requests"] == sent
    history = cli("history", "--job-name", "out", "--state-dir", str(tmp_path))
    assert history.returncode == 2
    assert "the file is empty" in history.stderr
    dry = cli("validate", str(source), "--output", str(tmp_path / "plan.csv"), "--job-name", "out")
    assert dry.returncode == 2
    assert "the file is empty" in dry.stderr


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a database, " * 512)
    return path


def _database(path: Path, *statements: str) -> Path:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        for statement in statements:
            db.execute(statement)
    return path


def _store_with(tmp_path: Path, *statements: str) -> Path:
    """Job ``j``'s store as this version makes it, then ``statements`` run in it."""
    store = tmp_path / "j.sqlite"
    with SQLiteStore.open(store):
        pass
    return _database(store, *statements)


# A file the job finds and cannot use, as (what makes it, words its refusal must say): each is
# refused in one line naming it, exit 2, nothing sent.
UNUSABLE: dict[str, tuple[Callable[[Path, Path], Path], tuple[str, ...]]] = {
    "a store holding another program's table too": (
        lambda tmp, source: _store_with(tmp, "CREATE TABLE notes (line TEXT)"),
        ("not a bulk-update store", "'notes'"),
    ),
    "another program's database with a runs table": (
        lambda tmp, source: _database(tmp / "j.sqlite", "CREATE TABLE runs (id INTEGER, who TEXT)"),
        ("its table runs lacks", "has id, who", "move it away"),
    ),
    "a store of a layout number no version wrote": (
        lambda tmp, source: _store_with(tmp, "PRAGMA user_version=-3"),
        ("layout -3, which no version wrote",),
    ),
}


# The stores that even a dry run, which only reads, cannot read.
READ_REFUSED = {
    "a store holding another program's table too",
    "another program's database with a runs table",
    "a store of a layout number no version wrote",
}


@pytest.mark.parametrize("case", sorted(UNUSABLE))
def test_a_file_the_job_cannot_use_is_refused_in_one_line(
    start_emulator: StartEmulator, tmp_path: Path, case: str
) -> None:
    """Whatever the job finds where it looks for its store, one it cannot use is refused: exit
    2, one line naming it and what to do, nothing sent; never passed over (the run would start
    afresh and send again what the file says was done)."""
    make, words = UNUSABLE[case]
    source = tmp_path / "in.csv"
    write_input(source, 20)
    write_input(tmp_path / "other.csv", 21)
    made = make(tmp_path, source)
    emulator = start_emulator("--preload", str(source))
    before = emulator.stats()["requests"]
    args = ("run", str(source), "--output", str(tmp_path / "out.csv"), "--state-dir",
            str(tmp_path), "--job-name", "j", "--base-url", emulator.base_url)  # fmt: skip
    refused = cli(*args)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2, refused.stderr
    assert len(lines) == 1, lines
    for word in (str(made), *words):
        assert word in lines[0], lines[0]
    assert emulator.stats()["requests"] == before
    if case in READ_REFUSED:  # a dry run, which only reads the store, cannot read it either
        dry = cli("validate", *args[1:])
        assert dry.returncode == 2, dry.stderr
        assert str(made) in dry.stderr.strip().splitlines()[-1], dry.stderr


def test_a_store_of_a_layout_this_version_cannot_read_is_refused(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A store whose tables have other columns than its layout says, whose layout is a
    development one before the first release, or whose layout number no version wrote, is
    refused in one line naming it (both stores), nothing sent."""
    source = tmp_path / "in.csv"
    write_input(source, 20)
    emulator = start_emulator("--preload", str(source))
    args = ("run", str(source), "--output", str(tmp_path / "out.csv"), "--job-name", "j",
            "--base-url", emulator.base_url, *backend.args)  # fmt: skip
    assert cli(*args).returncode == 0
    named = str(backend.directory / "j.sqlite") if backend.url is None else redact(backend.url)
    development = (f"a store of layout {schema.FIRST_LAYOUT - 1}, from a development version",
                   "finish its runs with the version that made it")  # fmt: skip

    def refused(*words: str) -> None:
        before = emulator.stats()["requests"]
        done = cli(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1, lines
        for word in (named, *words):
            assert word in lines[0], lines[0]
        assert emulator.stats()["requests"] == before

    if backend.url is None:
        _database(backend.directory / "j.sqlite", "ALTER TABLE runs DROP COLUMN pid")
        refused("its table runs lacks pid", "move it away")
        _database(backend.directory / "j.sqlite", "ALTER TABLE runs ADD COLUMN pid INTEGER",
                  f"PRAGMA user_version={schema.FIRST_LAYOUT - 1}")  # fmt: skip
        refused(*development, "move it away")
        _database(backend.directory / "j.sqlite",
                  f"PRAGMA user_version={schema.LAYOUT_VERSION + 1}")  # fmt: skip
    else:
        import psycopg

        def pg(sql: str, *arguments: object) -> None:
            with psycopg.connect(str(backend.url), autocommit=True) as conn:
                conn.execute(sql, arguments)

        pg("ALTER TABLE bulk_update.runs DROP COLUMN pid")
        refused("its table runs lacks pid", "drop the schema bulk_update")
        pg("ALTER TABLE bulk_update.runs ADD COLUMN pid integer")
        pg("UPDATE bulk_update.layout SET version = %s", schema.FIRST_LAYOUT - 1)
        refused(*development, "drop the schema bulk_update")
        pg("UPDATE bulk_update.layout SET version = 0")
        refused("layout 0, which no version wrote")
        pg("UPDATE bulk_update.layout SET version = %s", schema.LAYOUT_VERSION + 1)
    refused(f"newer bulk-update (layout {schema.LAYOUT_VERSION + 1})", "upgrade")


def take_the_store_away(store: Store) -> None:
    """The store deleted under the run: SQLite's file with its -wal and -shm (as `rm` would);
    PostgreSQL's tables, with their schema (as `DROP SCHEMA ... CASCADE` would)."""
    if store.backend == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(store.where + suffix).unlink(missing_ok=True)
        return
    import psycopg

    with psycopg.connect(store.where, autocommit=True) as conn:
        conn.execute("DROP SCHEMA bulk_update CASCADE")


def test_a_store_taken_away_mid_run_stops_the_run(
    store: Store, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The store deleted while the run goes on: the run notices at its next heartbeat, stops
    sending (exit 3, ``store_gone``, one line naming the store) and writes its results from
    what it knows. SQLite: the file the run still had open is written back where it was, so
    that the same command resumes (at most --concurrency rows sent twice); PostgreSQL: the
    tables and what they held are gone, the results cannot be written."""
    n, concurrency = 3000, 4
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    out = tmp_path / "out.csv"
    args = (str(source), "--output", str(out), "--base-url", emu.base_url, "--rpm", "600000",
            "--concurrency", str(concurrency), "--metrics-interval", "0.5", *store.args)  # fmt: skip
    process = start(*args)
    wait_for_requests(emu, 200)
    take_the_store_away(store)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    sent = emu.stats()["requests"]
    print(f"{store.backend}: {sent} of {n} rows sent; {last}")
    assert sent < n, "the run went on to its end"
    if store.backend == "postgres":
        assert f"the store {redact(store.where)}" in last, last
        assert "dropped" in last, last
        assert "the results were not written" in last, last
        return
    assert f"{store.where}: the store was removed while the run went on" in last, last
    frame = results(out)
    assert frame["row_number"].to_list() == list(range(1, n + 1))
    assert set(frame["status"].to_list()) == {"updated", "unprocessed"}
    left = frame.filter(pl.col("status") == "unprocessed")
    # The rows whose updates were on their way at the stop: their answers never read.
    assert set(left["error_code"].to_list()) <= {"store_gone", "outcome_unknown"}
    assert (left["error_code"] == "store_gone").sum() > 0
    assert (left["error_code"] == "outcome_unknown").sum() <= concurrency
    assert Path(store.where).is_file(), "written back where it was"
    resumed = cli("run", *args)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming:" in resumed.stderr
    assert set(results(out)["status"].to_list()) == {"updated"}
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert len(applied) == n
    assert sum(applied.values()) - n <= concurrency


def test_a_database_made_anew_mid_run_stops_the_run(
    start_emulator: StartEmulator, postgres: PostgresServer, state_url: str, tmp_path: Path
) -> None:
    """The run's PostgreSQL database dropped (its sessions cut) and made anew, empty, while the
    run goes on: the run's session comes back to a database without the job's tables and
    stops (exit 3, ``store_gone``, one line naming the store), never taking the empty
    database for its store."""
    n, concurrency = 3000, 4
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    process = start(str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
                    emu.base_url, "--rpm", "600000", "--concurrency", str(concurrency),
                    "--state-url", state_url, "--job-name", "j")  # fmt: skip
    wait_for_requests(emu, 200)
    postgres.create_database(state_url.rsplit("/", 1)[1])  # DROP ... WITH (FORCE), CREATE
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert f"the store {redact(state_url)}: the job's tables were dropped" in last, last
    assert emu.stats()["requests"] < n


def test_a_store_and_its_lock_removed_never_leave_two_runs(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The SQLite store and its lock file removed mid-run, and the same command started again:
    the second run makes a new store and takes a new lock; the first notices at its next
    heartbeat that neither is the file it opened and stops (exit 3), one line naming it."""
    n, concurrency = 3000, 4
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    state = tmp_path / "state"
    common = (str(source), "--base-url", emu.base_url, "--rpm", "600000", "--concurrency",
              str(concurrency), "--metrics-interval", "0.5", "--state-dir", str(state),
              "--job-name", "j")  # fmt: skip
    first = start(*common, "--output", str(tmp_path / "first.csv"))
    wait_for_requests(emu, 200)
    for name in ("j.sqlite", "j.sqlite-wal", "j.sqlite-shm", "j.sqlite.lock"):
        (state / name).unlink(missing_ok=True)
    # Only the lock removed: the first run must not go on either (another could start).
    second = start(*common, "--output", str(tmp_path / "second.csv"))
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    assert f"{state / 'j.sqlite'}" in last, last
    assert "replaced" in last or "removed" in last, last
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr


def test_a_lock_file_removed_mid_run_stops_the_run(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Only the run's lock file removed: another run of the job could start beside it, so
    the run stops (exit 3, one line naming the lock file); the same command resumes."""
    n, concurrency = 3000, 4
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    state = tmp_path / "state"
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--rpm", "600000", "--concurrency", str(concurrency), "--metrics-interval", "0.5",
            "--state-dir", str(state), "--job-name", "j")  # fmt: skip
    process = start(*args)
    wait_for_requests(emu, 200)
    (state / "j.sqlite.lock").unlink()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    assert f"{state / 'j.sqlite.lock'}: the run's lock file was removed" in last, last
    resumed = cli("run", *args)
    assert resumed.returncode == 0, resumed.stderr
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert len(applied) == n
    assert sum(applied.values()) - n <= concurrency


def test_an_empty_file_no_run_used_is_refused_saying_so(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """`sqlite3 PATH "select ..."` before the first run (the docs' inspection command as it
    was, without -readonly) leaves an empty file where the store goes. It is refused as an
    emptied store is (the job cannot tell them apart for sure), but its one line says what it
    most likely is and what to do; the docs' commands are read-only and leave nothing."""
    if shutil.which("sqlite3") is None:
        pytest.skip("no sqlite3 command here")
    import subprocess

    source = tmp_path / "in.csv"
    write_input(source, 20)
    emu = start_emulator("--preload", str(source))
    out = tmp_path / "out"
    out.mkdir()
    store = out / "nightly.sqlite"
    inspect = "select count(*), max(set_at) from last_set"
    docs = "\n".join(page.read_text() for page in (README, *sorted(DOCS.glob("*.md"))))
    commands = re.findall(r"`(sqlite3 [^`]*\.sqlite[^`]*)`", docs)
    assert commands, "the docs show how to inspect a store"
    for command in (" ".join(found.split()) for found in commands):  # read only, or a write
        writes = re.search(r"\b(delete|update|insert)\b", command, re.IGNORECASE)
        assert writes or command.startswith("sqlite3 -readonly "), command
    subprocess.run(["sqlite3", "-readonly", str(store), inspect], capture_output=True)
    assert not store.exists(), "a read-only inspection makes no file"
    subprocess.run(["sqlite3", str(store), inspect], capture_output=True)
    assert store.stat().st_size == 0
    args = ("run", str(source), "--output", str(out / "r.csv"), "--job-name", "nightly",
            "--base-url", emu.base_url)  # fmt: skip
    refused = cli(*args)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2, refused.stderr
    assert len(lines) == 1, lines
    for words in (str(store), "the file is empty", "no run of the job ever used it",
                  "remove it and run again", "restore it from a backup"):  # fmt: skip
        assert words in lines[0], lines[0]
    assert emu.stats()["requests"] == 0
    store.unlink()
    assert cli(*args).returncode == 0


def test_a_state_directory_too_small_for_the_store_says_the_disk_is_full(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A state directory with room for the store's file but not for its -shm: SQLite says
    "disk I/O error"; the job says the disk is full (exit 3, one line naming the store), leaves
    no file behind (no empty store to refuse later), and with room the same command runs."""
    source = tmp_path / "in.csv"
    write_input(source, 20)
    emu = start_emulator("--preload", str(source))
    with Tmpfs(tmp_path / "small", "16k") as small:
        args = ("run", str(source), "--output", str(tmp_path / "out.csv"), "--state-dir",
                str(small.path), "--base-url", emu.base_url)  # fmt: skip
        full = cli(*args)
        lines = full.stderr.strip().splitlines()
        assert full.returncode == 3, full.stderr
        assert len(lines) == 1, lines
        assert f"{small.path / 'out.sqlite'}: the disk is full" in lines[0], lines[0]
        assert sorted(os.listdir(small.path)) == []
        assert emu.stats()["requests"] == 0
        small.resize("8m")
        assert cli(*args).returncode == 0


def test_history_status_and_report_read_a_read_only_store(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The commands that only read a store open it read only: they read it where its file is
    read-only (a read-only bind mount) and where its whole directory is (a read-only
    filesystem); it used to be exit 2, "check the path and its permissions". The store is left
    as it was."""
    import subprocess

    source = tmp_path / "in.csv"
    write_input(source, 50)
    emu = start_emulator("--preload", str(source))
    with Tmpfs(tmp_path / "state", "16m") as state:
        store = state.path / "j.sqlite"
        where = ("--job-name", "j", "--state-dir", str(state.path))
        ran = cli("run", str(source), "--output", str(tmp_path / "out.csv"), "--job-name", "j",
                  "--state-dir", str(state.path), "--base-url", emu.base_url, "--limit", "10")  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        before = store.read_bytes()

        def read() -> None:
            history = cli("history", *where)
            assert history.returncode == 0, history.stderr
            assert "updated=10" in history.stdout, history.stdout
            status = cli("status", *where, "--json")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)[0]["total_rows"] == 50, status.stdout
            report = cli("report", *where, "--output", str(tmp_path / "r.html"))
            assert report.returncode == 0, report.stderr
            assert (tmp_path / "r.html").stat().st_size > 0

        bound = subprocess.run(["mount", "--bind", str(store), str(store)],
                               capture_output=True, text=True)  # fmt: skip
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount here (needs root): {bound.stderr.strip()}")
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(store)], check=True)
            read()
        finally:
            subprocess.run(["umount", str(store)], check=True)
        state.remount("ro")
        try:
            read()
        finally:
            state.remount("rw")
        assert store.read_bytes() == before


def test_a_lost_session_never_leaves_two_writers(
    start_emulator: StartEmulator, postgres: PostgresServer, state_url: str, tmp_path: Path
) -> None:
    """The lock holder's database session is lost (a failover, a network cut) and it cannot
    come back at once; the same command on another machine takes the run over. The two never
    send at once: the first stops sending before its lease ends, the second starts after."""
    from bulk_update.emulator.app import key_id

    n, concurrency = 3000, 8
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    database = state_url.rsplit("/", 1)[1]
    role = f"holder_{os.getpid()}"
    postgres.execute(database, f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD 'holder-pw'")
    holder_url = f"postgresql://{role}:holder-pw@127.0.0.1:{postgres.port}/{database}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = ("--output", "out.csv", "--base-url", emu.base_url, "--rpm", "600000",
              "--concurrency", str(concurrency), "--job-name", "j", "--store-timeout", "20")  # fmt: skip
    holder = start(str(source), *common, "--state-url", holder_url, cwd=tmp_path / "a",
                   key="sk-holder-a")  # fmt: skip
    # The taker is loaded before the holder's session is lost: what it meets at once is the
    # holder's lease (LEASE_S, renewed every few seconds), not a lease that ended while its
    # libraries loaded on a loaded machine (seen at a load of 20: no wait to see).
    taker_run = warm(str(source), *common, "--state-url", state_url, cwd=tmp_path / "b",
                     key="sk-taker-b")  # fmt: skip
    try:
        wait_for_requests(emu, 300)
        # The holder's session ends, and the holder cannot log in again for now.
        postgres.execute("postgres", f"ALTER ROLE {role} NOLOGIN")
        postgres.query(
            database,
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND granted AND pid <> pg_backend_pid()",
        )
        taker = taker_run()
        _, holder_err = holder.communicate(timeout=120)
    finally:
        postgres.execute("postgres", f"ALTER ROLE {role} LOGIN")
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert taker.returncode == 0, taker.stderr
    assert "for its lease to end" in taker.stderr
    assert holder.returncode == 3, holder_err
    assert "Traceback" not in holder_err
    by_key = emu.stats()["by_key"]
    first, second = by_key[key_id("sk-holder-a")], by_key[key_id("sk-taker-b")]
    assert first["last_s"] < second["first_s"], (first, second)  # never both at once
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    print(f"holder's last request at {first['last_s']:.2f} s, the taker's first at "
          f"{second['first_s']:.2f} s; {sum(applied.values()) - n} rows applied twice")  # fmt: skip
    assert len(applied) == n
    assert sum(applied.values()) - n <= concurrency  # only what was in flight
    frame = results(tmp_path / "b" / "out.csv")
    assert frame["row_number"].to_list() == list(range(1, n + 1))
    assert set(frame["status"].to_list()) == {"updated"}


def _postgres_processes(postgres: PostgresServer) -> list[int]:
    """The server's postmaster and every process it started."""
    postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
    children = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        and (entry / "stat").exists()
        and int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == postmaster
    ]
    return [postmaster, *children]


@pytest.mark.parametrize("how", ["stopped", "frozen"])
def test_a_database_away_stops_the_run_within_the_timeout(
    start_emulator: StartEmulator,
    postgres: PostgresServer,
    state_url: str,
    tmp_path: Path,
    how: str,
) -> None:
    """The database goes away mid-run for longer than --store-timeout: stopped (connections
    refused), or frozen (SIGSTOP: its kernel still answers TCP, so nothing ever fails, calls
    just never return). The whole stop takes the timeout once, not once per operation (nor for
    ever), and the summary says what the store holds."""
    n, timeout_s = 1500, 6
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    job = start(str(source), "--output", "out.csv", "--base-url", emu.base_url, "--rpm",
                "600000", "--concurrency", "8", "--state-url", state_url, "--store-timeout",
                str(timeout_s), cwd=tmp_path)  # fmt: skip
    wait_for_requests(emu, 300)
    frozen = _postgres_processes(postgres) if how == "frozen" else []
    if how == "frozen":
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
    else:
        postgres.stop()
    away = time.monotonic()
    try:
        _, stderr = job.communicate(timeout=180)
        stopped_after = time.monotonic() - away
    finally:
        if job.poll() is None:
            job.kill()
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        if how == "stopped":
            postgres.start()
    assert job.returncode == 3, stderr
    assert "has been unreachable for" in stderr
    assert "Traceback" not in stderr
    # One clock for the writer, the heartbeat, the counts and the run's end: the stop takes
    # the timeout, plus the moment it takes to say so (each used to wait a timeout of its own;
    # a frozen server held the run for ever).
    print(f"{how}: the run stopped {stopped_after:.1f} s after the database went away "
          f"(--store-timeout {timeout_s})")  # fmt: skip
    assert stopped_after < timeout_s + 6, stopped_after
    assert "the results were not written" in stderr.strip().splitlines()[-1]
    wait_until_up(state_url)
    told = {k: v for k, v in summary_counts(stderr).items() if k != "unprocessed"}
    held = {k: v for k, v in store_counts("postgres", state_url, postgres).items()
            if k != "unprocessed"}  # fmt: skip
    if how == "stopped":
        assert told == held  # the summary is what the store holds
    else:
        # A commit on the wire when the server froze is applied once it thaws: like an update
        # whose answer timed out, the client cannot know. At most one group (the rows of the
        # workers waiting for it, --concurrency) more than the summary said.
        assert set(told) == set(held)
        assert all(0 <= held[k] - told[k] <= 8 for k in told), (told, held)
    resumed = cli("run", str(source), "--output", "out.csv", "--base-url", emu.base_url,
                  "--rpm", "600000", "--concurrency", "8", "--state-url", state_url,
                  cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert set(results(tmp_path / "out.csv")["status"].to_list()) == {"updated"}


def test_an_input_changed_during_the_run(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """The input is replaced while the run reads it (another export renamed into place): the
    results, rebuilt from the input at the end, would not say what was sent. The run stops
    (exit 3) without them; with the input put back, the same command writes them."""
    n = 2000
    source = tmp_path / "in.csv"
    write_input(source, n)
    original = source.read_bytes()
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--rpm", "600000", "--concurrency", "8")  # fmt: skip
    job = start(*args)
    wait_for_requests(emu, 200)
    other = tmp_path / "next.csv"
    write_input(other, n + 500, tag="next")
    other.replace(source)
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 3, stderr
    last = stderr.strip().splitlines()[-1]
    assert f"{source}: the input was changed during the run" in last
    assert "the results were not written" in last
    assert not (tmp_path / "out.csv").exists()
    source.write_bytes(original)  # put back as it was (another mtime: the content decides)
    again = cli("run", *args)
    assert again.returncode == 0, again.stderr
    frame = results(tmp_path / "out.csv")
    assert frame["row_number"].to_list() == list(range(1, n + 1))
    assert set(frame["status"].to_list()) == {"updated"}
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert sum(applied.values()) - n <= 8


def every_type() -> dict[str, pl.Series]:
    """A column of every type polars reads (from Parquet, or from Python: Object), three rows."""
    import datetime as dt_
    import decimal
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"m": pa.array([[("k", "v")], None, []],
                                           type=pa.map_(pa.string(), pa.string()))}), buffer)  # fmt: skip
    buffer.seek(0)
    three = [0, 1, 2]
    return {
        "int8": pl.Series(three, dtype=pl.Int8),
        "int16": pl.Series(three, dtype=pl.Int16),
        "int32": pl.Series(three, dtype=pl.Int32),
        "int64": pl.Series(three, dtype=pl.Int64),
        "int128": pl.Series([0, -(2**100), None], dtype=pl.Int128),
        "uint8": pl.Series(three, dtype=pl.UInt8),
        "uint16": pl.Series(three, dtype=pl.UInt16),
        "uint32": pl.Series(three, dtype=pl.UInt32),
        "uint64": pl.Series(three, dtype=pl.UInt64),
        "uint128": pl.Series([0, 2**127, None], dtype=pl.UInt128),
        "float16": pl.Series([0.5, None, 1.0], dtype=pl.Float16),
        "float32": pl.Series([0.5, None, 1.0], dtype=pl.Float32),
        "float64": pl.Series([0.1, None, 1e300], dtype=pl.Float64),
        "decimal": pl.Series(
            [decimal.Decimal("1.50"), None, decimal.Decimal("-2.00")], dtype=pl.Decimal(10, 2)
        ),
        "boolean": pl.Series([True, None, False]),
        "string": pl.Series(["=1+1", None, "é"]),
        "binary": pl.Series([b"\x00\xff", None, b""]),
        "date": pl.Series([dt_.date(2026, 1, 2), None, dt_.date(1970, 1, 1)]),
        "datetime": pl.Series([dt_.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt_.UTC), None, None]),
        "duration": pl.Series([dt_.timedelta(seconds=5), None, dt_.timedelta(days=-1)]),
        "time": pl.Series([dt_.time(1, 2, 3), None, dt_.time(0)]),
        "categorical": pl.Series(["a", None, "b"], dtype=pl.Categorical),
        "enum": pl.Series(["a", None, "b"], dtype=pl.Enum(["a", "b"])),
        "null": pl.Series([None, None, None], dtype=pl.Null),
        "list": pl.Series([[1, 2], None, []]),
        "array": pl.Series([[1, 2], None, [3, 4]], dtype=pl.Array(pl.Int64, 2)),
        "struct": pl.Series([{"a": 1, "b": "x"}, None, {"a": None, "b": None}]),
        "struct_of_binary": pl.Series([{"a": b"\x01"}, None, {"a": None}]),
        "map": pl.read_parquet(buffer)["m"],
        "object": pl.Series([object(), None, "x"], dtype=pl.Object),
    }


def test_every_type_has_a_form_in_every_results_format(tmp_path: Path) -> None:
    """An errors file holds the input's own columns: whatever their type, every format writes
    them (as they are where it can, as text where it cannot), and this list is every type."""
    from bulk_update.formats import FORMATS

    columns = every_type()
    abstract = {"DataType", "NumericType", "IntegerType", "SignedIntegerType", "FloatType",
                "UnsignedIntegerType", "TemporalType", "NestedType", "ObjectType", "Unknown",
                "BaseExtension", "Extension", "Utf8"}  # fmt: skip
    every = {
        name for name in dir(pl.datatypes)
        if isinstance(getattr(pl.datatypes, name), type)
        and issubclass(getattr(pl.datatypes, name), pl.DataType) and name not in abstract
    }  # fmt: skip
    covered = {type(series.dtype).__name__ for series in columns.values()}
    assert every <= covered, f"types without a test: {sorted(every - covered)}"
    frame = pl.DataFrame(columns)
    for suffix, fmt in FORMATS.items():
        path = tmp_path / f"all{suffix}"
        appender = fmt.append(path)
        appender.write(fmt.prepare(frame))
        appender.close()
        written = fmt.scan(path, fmt.prepare_schema(frame.schema), None).collect()
        assert written.height == 3, suffix
        assert written.columns == frame.columns, suffix
    text = pl.read_csv(tmp_path / "all.csv", infer_schema=False)
    assert text["map"].to_list() == ['{"k":"v"}', None, "{}"]
    assert text["duration"].to_list() == [
        "PT5S",
        None,
        "'-P1D",
    ]  # escaped: a spreadsheet would run it
    assert text["binary"].to_list() == ["00ff", None, ""]
    assert text["uint128"].to_list() == ["0", str(2**127), None]
    assert text["string"].to_list() == ["'=1+1", None, "é"]  # a spreadsheet never runs it


def test_a_parquet_input_of_every_type_gives_its_errors_in_any_format(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A Parquet input with maps, durations, 128-bit integers ... beside its metadata column:
    its errors file is written in CSV, JSON Lines and Parquet alike (it was exit 70 after every
    row had been sent, on every run)."""
    known, unknown = ID(0), ID(1)
    columns = {k: v for k, v in every_type().items() if k != "object"}
    frame = pl.DataFrame({"conversation_id": [known, unknown, "not-an-id"],
                          "tier": ["gold", "gold", "gold"], **columns})  # fmt: skip
    source = tmp_path / "in.parquet"
    frame.write_parquet(source)
    server = tmp_path / "server.csv"
    server.write_text(f"conversation_id\n{known}\n")
    emu = start_emulator("--preload", str(server))
    for suffix in (".csv", ".jsonl", ".parquet"):
        done = cli("run", str(source), "--output", str(tmp_path / f"r{suffix}"), "--columns",
                   "tier", "--errors-output", str(tmp_path / f"e{suffix}"), "--base-url",
                   emu.base_url, "--full")  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert results(tmp_path / f"r{suffix}")["status"].to_list() == [
            "updated", "failed", "invalid",
        ]  # fmt: skip
        errors = (
            pl.read_csv(tmp_path / "e.csv", infer_schema=False) if suffix == ".csv"
            else results(tmp_path / f"e{suffix}")
        )  # fmt: skip
        assert errors["conversation_id"].to_list() == [unknown, "not-an-id"]
        assert set(columns) <= set(errors.columns)


def test_mistakes_with_the_store_or_the_input_say_so_in_one_line(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A read-only store, a store with garbage inside, a list-typed ID column, a full temporary
    directory: one line each, the exit code the README gives, never exit 70."""
    source = tmp_path / "in.csv"
    write_input(source, 1000)
    emu = start_emulator("--preload", str(source))
    args = ("run", str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
            emu.base_url, "--rpm", "600000")  # fmt: skip
    assert cli(*args).returncode == 0
    store = tmp_path / "out.sqlite"

    def one_line(done: object, code: int, *words: str) -> None:
        import subprocess

        assert isinstance(done, subprocess.CompletedProcess)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == code, done.stderr
        assert len(lines) == 1, lines
        for word in words:
            assert word in lines[0], lines[0]

    # The store file read-only (its directory writable): a bind mount, as root.
    bound = __import__("subprocess").run(["mount", "--bind", str(store), str(store)],
                                         capture_output=True, text=True)  # fmt: skip
    if bound.returncode == 0:
        try:
            __import__("subprocess").run(["mount", "-o", "remount,ro,bind", str(store)],
                                         check=True)  # fmt: skip
            one_line(cli(*args), 2, str(store), "the store cannot be written", "readonly")
        finally:
            __import__("subprocess").run(["umount", str(store)], check=True)

    # Garbage inside the store: damaged, and no promise that a re-run resumes.
    clean = store.read_bytes()
    for offset in (0, 4096, len(clean) // 2):
        with store.open("r+b") as handle:
            handle.seek(offset)
            handle.write(b"\xde\xad" * 1500)
        damaged = cli(*args)
        one_line(damaged, 2, str(store), "damaged", "restore it from a backup")
        assert "resumes" not in damaged.stderr
        store.write_bytes(clean)
    assert cli(*args).returncode == 0

    # A list-typed ID column.
    listed = tmp_path / "listed.parquet"
    pl.DataFrame({"conversation_id": [[ID(0)], [ID(1)]], "tier": ["a", "b"]}).write_parquet(listed)
    one_line(cli("run", str(listed), "--output", str(tmp_path / "l.csv"), "--base-url",
                 emu.base_url), 2, "listed.parquet", "ID column", "holds a list, not text")  # fmt: skip

    # No room for the temporary file the duplicate check writes.
    with Tmpfs(tmp_path / "tmp", "4k") as small:
        full = cli(*args, TMPDIR=str(small.path))
        assert full.returncode == 3, full.stderr
        assert "Traceback" not in full.stderr
        assert f"{small.path}/" in full.stderr.strip().splitlines()[-1]
        assert "the disk is full" in full.stderr.strip().splitlines()[-1]


def test_a_batch_holds_about_the_same_bytes_however_wide_the_rows(tmp_path: Path) -> None:
    """Batches are sized by bytes (about 8 MiB of input), not by a fixed count of rows: a file
    of wide rows is read a few hundred rows at a time, a narrow one 20,000 at a time (the
    memory this saves is measured by benchmark 11)."""
    from bulk_update.read import BATCH_BYTES, open_input

    def table(name: str, rows: int, width: int, suffix: str = ".csv") -> int:
        frame = pl.DataFrame(
            {"conversation_id": [ID(i) for i in range(rows)],
             **{f"k{j}": [f"{j}" + "x" * width] * rows for j in range(16)}}
        )  # fmt: skip
        path = tmp_path / f"{name}{suffix}"
        frame.write_csv(path) if suffix == ".csv" else frame.write_parquet(path)
        opened = open_input(str(path), id_column="conversation_id")
        return opened.rows_per_batch(20_000, opened.check_readable())

    wide = table("wide", 3000, 500)  # 16 cells of 500 characters: 8 KB a row
    assert 0.8 * BATCH_BYTES / 8100 <= wide <= 1.2 * BATCH_BYTES / 8000
    assert table("wide", 3000, 500, ".parquet") <= 1.2 * BATCH_BYTES / 8000  # compressed, too
    assert table("narrow", 3000, 2) == 20_000  # at most --batch-rows' 20,000


def _handles_sigterm(pid: int) -> bool:
    """Has the process installed its own SIGTERM handler yet (the kernel's SigCgt mask)?"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def _reads(pid: int, path: Path) -> bool:
    """Has the process the file open, or mapped (polars maps what it reads)?"""
    with contextlib.suppress(OSError):
        if str(path) in Path(f"/proc/{pid}/maps").read_text():
            return True
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    return True
    return False


def test_a_signal_while_the_input_is_read(store: Store, tmp_path: Path) -> None:
    """A SIGTERM before anything is sent (the input still being read): the run ends as
    stopped by it (exit 143), every row in the results (unprocessed), its end recorded;
    nothing is sent."""
    source = tmp_path / "in.csv"
    with source.open("w") as handle:
        handle.write("conversation_id,tier\n")
        handle.writelines(f"{ID(i)},t{i}\n" for i in range(1_000_000))
    output = tmp_path / "out.csv"
    process = start(str(source), "--output", str(output), "--base-url",
                    "http://127.0.0.1:9/v1", *store.args)  # fmt: skip
    deadline = time.monotonic() + 60
    # The job reads its input under its own signal handling (the start-up's, before the
    # libraries load, ends the process with nothing written: tests/test_startup_signals.py).
    while not (_handles_sigterm(process.pid) and _reads(process.pid, source)):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.002)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr.strip().splitlines()[-1]
    frame = results(output)
    assert frame.height == 1_000_000
    assert frame["status"].unique().to_list() == ["unprocessed"]
    assert frame["error_code"].unique().to_list() == ["interrupted"]
    assert store_run(store.backend, store.where, store.postgres) == {
        "exit_code": 143, "stopped_by": "SIGTERM", "ended": True,
    }  # fmt: skip
