"""Monitoring, for real: the metrics textfile parsed with prometheus_client's parser and checked
against the results and the emulator's counters, a real Pushgateway scraped after sharded runs,
and ``bulk-update status`` from another process while a run goes on, is killed, is stopped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import ID, cli, results, start, write_input
from tests.monitoring import Pushgateway, free_port, samples, total, value
from tests.pg import PASSWORD

JOB = "nightly"


def _input_with_bad_rows(path: Path, n: int) -> None:
    """``n`` good rows (preloaded), then 2 invalid IDs and 1 valid ID the server does not know."""
    write_input(path, n)
    with path.open("a") as f:
        f.write("not an id!,v,0\n,v,0\n" + ID(10**6) + ",v,0\n")


def _counts(path: Path) -> dict[str, int]:
    frame = results(path).group_by("status").len()
    return {status: int(n) for status, n in frame.iter_rows()}


def _wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> str:
    """The metrics file's text as soon as it exists (the run still going on)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return path.read_text()


def test_metrics_file_agrees_with_the_results_and_the_server(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 100)
    emu = start_emulator("--preload", str(source), "--api-key", TEST_KEY, "--latency-ms", "40",
                         "--error-rate", "0.08", "--reset-rate", "0.04", "--random-seed", "7")  # fmt: skip
    _input_with_bad_rows(source, 100)
    prom = tmp_path / "textfile" / "bulk_update.prom"
    common = ("--base-url", emu.base_url, "--job-name", JOB, "--state-dir", str(tmp_path),
              "--metrics-file", str(prom), "--metrics-interval", "0.3", "--concurrency", "2",
              "--rpm", "30000")  # fmt: skip
    output = tmp_path / "1.csv"
    process = start(str(source), "--output", str(output), *common)
    # Written at the start: the run has begun, it has not ended.
    early = samples(_wait_for(prom, process))
    assert process.poll() is None
    assert value(early, "bulk_update_run_start_timestamp_seconds", job=JOB) > 0
    assert not [s for s in early if s.name == "bulk_update_run_end_timestamp_seconds"]
    assert value(early, "bulk_update_input_rows", job=JOB) == 103
    # Rewritten every --metrics-interval while it runs: rows appear before the end does.
    seen_mid_run = False
    while not seen_mid_run and process.poll() is None:
        now = samples(prom.read_text())
        ended = [s for s in now if s.name == "bulk_update_run_end_timestamp_seconds"]
        seen_mid_run = not ended and total(now, "bulk_update_rows", status="updated") > 0
        time.sleep(0.01)
    assert seen_mid_run
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr  # invalid rows and a 404

    found = samples(prom.read_text())
    counts = _counts(output)
    assert counts["invalid"] == 2
    assert counts["failed"] == 1
    for status, n in counts.items():
        assert value(found, "bulk_update_rows", job=JOB, status=status) == n
    server = emu.stats()
    by_status: dict[str, int] = server["by_status"]
    five = sum(n for code, n in by_status.items() if code.startswith("5"))
    assert five > 0
    assert by_status.get("reset", 0) > 0
    assert total(found, "bulk_update_requests_total", job=JOB) == server["requests"]
    assert total(found, "bulk_update_requests_total", outcome="ok") == by_status["200"]
    assert total(found, "bulk_update_requests_total", code_class="2xx") == by_status["200"]
    assert total(found, "bulk_update_requests_total", outcome="server_error") == five
    assert total(found, "bulk_update_requests_total", code_class="5xx") == five
    assert (
        total(found, "bulk_update_requests_total", outcome="connection_error") == by_status["reset"]
    )
    assert total(found, "bulk_update_requests_total", outcome="client_error") == by_status["404"]
    assert total(found, "bulk_update_requests_total", outcome="rate_limited") == by_status.get(
        "429", 0
    )
    histogram = value(found, "bulk_update_request_duration_seconds_count", job=JOB)
    assert histogram == server["requests"]
    # The emulator takes 40 ms an answer: the latency histogram saw it.
    assert value(found, "bulk_update_request_duration_seconds_bucket", job=JOB, le="0.025") == 0
    assert value(found, "bulk_update_configured_rpm", job=JOB) == 30000
    assert value(found, "bulk_update_rate_limit_rpm", job=JOB) > 0
    assert value(found, "bulk_update_in_flight_requests", job=JOB) == 0
    assert value(found, "bulk_update_run_exit_code", job=JOB) == 1
    start_at = value(found, "bulk_update_run_start_timestamp_seconds", job=JOB)
    end_at = value(found, "bulk_update_run_end_timestamp_seconds", job=JOB)
    assert value(found, "bulk_update_run_duration_seconds", job=JOB) == pytest.approx(
        end_at - start_at
    )
    # Exit 1 finished its rows: a success for the alert.
    first_success = value(found, "bulk_update_last_success_timestamp_seconds", job=JOB)
    assert first_success == end_at
    assert all(s.labels["job"] == JOB and "shard" not in s.labels for s in found)
    assert not list(prom.parent.glob("*.prom.*"))  # no temporary file left behind

    # A later run that stops (the quota): its own end and exit code, the last success kept.
    emu.admin("config", {"quota_exhausted": True})
    stopped = cli("run", str(source), "--output", str(tmp_path / "2.csv"), *common, "--full")
    assert stopped.returncode == 3, stopped.stderr
    later = samples(prom.read_text())
    assert value(later, "bulk_update_run_exit_code", job=JOB) == 3
    kept = value(later, "bulk_update_last_success_timestamp_seconds", job=JOB)
    # From the store: the first run's end as it recorded it, a moment before its metric's.
    assert kept == pytest.approx(first_success, abs=1.0)
    assert kept < value(later, "bulk_update_run_start_timestamp_seconds", job=JOB)
    assert TEST_KEY not in prom.read_text()


def test_sharded_runs_push_to_a_real_pushgateway(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 80)
    emu = start_emulator("--preload", str(source))
    with Pushgateway() as gateway:
        counts = {}
        for shard in ("0/2", "1/2"):
            output = tmp_path / f"shard{shard[0]}.csv"
            done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
                       "--job-name", JOB, "--state-dir", str(tmp_path), "--shard", shard,
                       "--pushgateway", gateway.url, "--metrics-interval", "0.5",
                       "--rpm", "30000")  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "pushgateway" not in done.stderr
            counts[shard] = _counts(output)
        scraped = samples(gateway.scrape())
    assert sum(n for c in counts.values() for n in c.values()) == 80
    for shard, shard_counts in counts.items():
        # Grouped by job name and shard: the second shard's push did not replace the first's.
        assert value(scraped, "push_time_seconds", job=JOB, shard=shard) > 0
        for status, n in shard_counts.items():
            assert value(scraped, "bulk_update_rows", job=JOB, shard=shard, status=status) == n
        assert value(scraped, "bulk_update_run_exit_code", job=JOB, shard=shard) == 0
        assert value(scraped, "bulk_update_last_success_timestamp_seconds", job=JOB,
                     shard=shard) > 0  # fmt: skip
    sent = total(scraped, "bulk_update_requests_total", job=JOB)
    assert sent == emu.stats()["requests"]

    # A Pushgateway that is down: a warning, once, and the job does its work.
    dead = f"http://127.0.0.1:{free_port()}"
    done = cli("run", str(source), "--output", str(tmp_path / "all.csv"), "--base-url",
               emu.base_url, "--job-name", "other", "--state-dir", str(tmp_path), "--pushgateway",
               dead, "--metrics-interval", "0.2", "--full", "--rpm", "30000")  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "pushgateway" in line]
    assert len(warnings) == 1, done.stderr
    assert "WARNING" in warnings[0]
    assert dead in warnings[0]
    assert "the job goes on" in warnings[0]
    assert _counts(tmp_path / "all.csv") == {"updated": 80}


def _status(*args: str, started: bool = True) -> list[dict[str, Any]]:
    """``status --json``; with ``started`` False, a job whose store (or first run) is not there
    yet has none."""
    done = cli("status", *args, "--json")
    if (
        not started
        and done.returncode == 2
        and ("no store of job" in done.stderr or "no run of job" in done.stderr)
    ):
        return []
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def _until(check: Any, what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


def test_status_while_a_run_goes_on_then_is_killed(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 400)
    emu = start_emulator("--preload", str(source), "--latency-ms", "100")
    where = ("--job-name", JOB, "--state-dir", str(tmp_path))
    idle = cli("status", *where)
    assert idle.returncode == 2
    assert "no store of job" in idle.stderr
    output = tmp_path / "out.csv"
    process = start(str(source), "--output", str(output), "--base-url", emu.base_url,
                    "--job-name", JOB, "--state-dir", str(tmp_path), "--concurrency", "1",
                    "--metrics-interval", "0.5")  # fmt: skip
    try:
        # From another process: going on, how far, how fast, who holds it.
        running = _until(
            lambda: [
                s
                for s in _status(*where, started=False)
                if (s["rows_done"] or 0) >= 10 and s["rows_per_s"]
            ],
            "the run never reported 10 rows done",
        )[0]
        assert running["state"] == "running"
        assert running["total_rows"] == 400
        assert running["host"] == socket.gethostname()
        assert running["pid"] == process.pid
        assert 0 < running["rows_per_s"] <= 10.5  # one worker, 100 ms an answer
        assert running["seconds_left"] == pytest.approx(
            (400 - running["rows_done"]) / running["rows_per_s"]
        )
        text = cli("status", *where).stdout
        assert "running" in text
        assert "/400" in text
        assert str(process.pid) in text
    finally:
        process.kill()  # kill -9: no word to the store
        process.wait()
    # On its host, its process is looked at: not running, at once.
    (gone,) = _status(*where)
    assert gone["state"] == "stopped"
    assert gone["ended_at"] is None
    assert gone["pid"] == process.pid
    assert gone["seconds_left"] is None
    text = cli("status", *where).stdout
    assert f"interrupted: its process {process.pid} on this host is gone" in text
    assert "command again to resume it" in text
    # Held on another machine, it is judged by its heartbeat only.
    with contextlib.closing(sqlite3.connect(tmp_path / f"{JOB}.sqlite")) as db, db:
        db.execute("UPDATE runs SET host = 'another-host'")
    _until(
        lambda: [s for s in _status(*where) if s["state"] == "stopped"],
        "a killed run was shown as running for over 120 s",
    )
    text = cli("status", *where).stdout
    assert "gone: no heartbeat for" in text
    assert "judged by its heartbeat only" in text
    assert "command again to resume it" in text
    # Its requests were counted up to its last heartbeat (those since died with it).
    (killed,) = json.loads(cli("history", *where, "--json").stdout)
    assert 10 <= killed["requests"] <= emu.stats()["requests"]

    emu.admin("config", {"latency_ms": 0})
    resumed = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
                  "--job-name", JOB, "--state-dir", str(tmp_path), "--rpm", "30000")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _status(*where) == []
    assert "no run going on or unfinished" in cli("status", *where).stdout


def test_status_and_report_from_the_store_in_postgres(
    start_emulator: StartEmulator, tmp_path: Path, state_url: str
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 300)
    emu = start_emulator("--preload", str(source), "--latency-ms", "100")
    where = ("--job-name", JOB, "--state-url", state_url)
    process = start(str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
                    emu.base_url, "--job-name", JOB, "--state-url", state_url, "--concurrency",
                    "1", "--metrics-interval", "0.5")  # fmt: skip
    try:
        running = _until(
            lambda: [
                s
                for s in _status(*where, started=False)
                if (s["rows_done"] or 0) >= 5 and s["rows_per_s"]
            ],
            "the run never reported 5 rows done",
        )[0]
        assert running["state"] == "running"
        assert running["pid"] == process.pid
        assert running["total_rows"] == 300
    finally:
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    stopped = _status(*where)
    assert [s["state"] for s in stopped] == ["stopped"]
    assert stopped[0]["stopped_by"] == "SIGTERM"
    assert stopped[0]["exit_code"] == 143
    text = cli("status", *where)
    assert "stopped by SIGTERM (exit 143)" in text.stdout
    assert PASSWORD not in text.stdout + text.stderr

    page = tmp_path / "report.html"
    done = cli("report", *where, "--output", str(page))
    assert done.returncode == 0, done.stderr
    written = page.read_text()
    assert "unprocessed" in written
    assert "SIGTERM" in written
    assert PASSWORD not in written
    assert TEST_KEY not in written
    rows = pl.read_csv(tmp_path / "out.csv")
    assert rows.height == 300


def test_two_jobs_over_one_limit_meet_429s_and_every_count_agrees(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Two jobs on one server limit, each told 5x of it: each rides the limit the server
    announces, and together they meet 429s. The metrics, the history and the report count
    every one of them as the server does."""
    everything = tmp_path / "all.csv"
    write_input(everything, 240)
    emu = start_emulator("--preload", str(everything), "--rpm", "1200")
    lines = everything.read_text().splitlines(keepends=True)
    processes = {}
    for name, part in (("a", lines[1:121]), ("b", lines[121:])):
        (tmp_path / f"{name}.csv").write_text(lines[0] + "".join(part))
        processes[name] = start(str(tmp_path / f"{name}.csv"), "--output",
                                str(tmp_path / f"{name}-out.csv"), "--base-url", emu.base_url,
                                "--job-name", name, "--state-dir", str(tmp_path), "--rpm", "6000",
                                "--metrics-file", str(tmp_path / f"{name}.prom"),
                                "--metrics-interval", "0.5")  # fmt: skip
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, (name, stderr)
    served = emu.stats()["by_status"]
    assert served.get("429", 0) > 0  # the two together went over the limit
    found = {name: samples((tmp_path / f"{name}.prom").read_text()) for name in processes}
    limited = {
        name: total(found[name], "bulk_update_requests_total", outcome="rate_limited")
        for name in processes
    }
    assert sum(limited.values()) == served["429"]
    for name in processes:
        assert value(found[name], "bulk_update_server_limit_rpm", job=name) == 1200
        assert value(found[name], "bulk_update_configured_rpm", job=name) == 6000
        (run,) = json.loads(cli("history", "--job-name", name, "--state-dir", str(tmp_path),
                                "--json").stdout)  # fmt: skip
        assert run["rate_limited"] == limited[name]
        assert run["counts"] == {"updated": 120}
    # The report marks them on the time axis: the page's data has 429s where the timeline had.
    most = max(limited, key=lambda name: limited[name])
    page = tmp_path / "report.html"
    assert cli("report", "--job-name", most, "--state-dir", str(tmp_path), "--output",
               str(page)).returncode == 0  # fmt: skip
    data = json.loads(page.read_text().split('id="report-data">')[1].split("</script>")[0])
    marked = sum(v for v in data["requests"]["rate_limited"] if v) * data["requests"]["bucket_s"][0]
    assert marked == pytest.approx(limited[most], abs=0.01)
