"""Crash safety with the real CLI and the real emulator: kill -9 at random moments, SIGTERM,
SIGINT, a second signal, one writer at a time, a changed input, the circuit breaker, and a crash
while the results are being written."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import polars as pl

from tests.conftest import StartEmulator
from tests.helpers import ID, by_row, cli, results, start, wait_for_requests, write_input


def test_kill_9_at_random_moments_loses_nothing(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    ids = write_input(source, 1500)
    emu = start_emulator("--preload", str(source), "--latency-ms", "25")
    output = tmp_path / "out.csv"
    concurrency = 8
    args = (str(source), "--output", str(output), "--base-url", emu.base_url,
            "--concurrency", str(concurrency), "--rpm", "1000000")  # fmt: skip
    rng = random.Random(20261125)
    kills = 0
    for _ in range(5):
        process = start(*args)
        # Kill while rows are being sent: once this run has sent one, at a random moment after.
        wait_for_requests(emu, emu.stats()["requests"] + 1)
        time.sleep(rng.uniform(0.0, 0.8))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills >= 3  # the run really was cut several times
    final = cli("run", *args)
    assert final.returncode == 0, final.stderr
    rows = by_row(output)
    assert sorted(rows) == list(range(1, 1501))  # every row exactly once
    assert {r["status"] for r in rows.values()} == {"updated"}
    stats = emu.stats(per_id=True)
    applied = stats["updates_applied_by_id"]
    assert set(applied) == set(ids)  # every valid row reached the server
    for i, conversation_id in enumerate(ids[::50]):
        stored = emu.admin(f"conversations/{conversation_id}")["metadata"]
        assert stored == {"tier": "v", "n": str(i * 50)}
    sent_twice = sum(n - 1 for n in applied.values())
    assert sent_twice <= concurrency * kills, (sent_twice, kills)


def test_sigterm_drains_writes_results_and_resumes(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 200)
    emu = start_emulator("--preload", str(source), "--latency-ms", "200")
    output = tmp_path / "out.parquet"
    args = (str(source), "--output", str(output), "--base-url", emu.base_url, "--concurrency", "4")
    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        process = start(*args)
        wait_for_requests(emu, emu.stats()["requests"] + 8)
        sent_at = time.monotonic()
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == code, stderr
        assert time.monotonic() - sent_at < 5  # in-flight requests only: ~200 ms each
        assert f"stopped by {signum.name}" in stderr
        frame = results(output)
        assert frame["row_number"].to_list() == list(range(1, 201))
        statuses = set(frame["status"].to_list())
        assert statuses == {"updated", "unprocessed"}
        # Everything the server applied is in the results as updated: nothing was lost.
        applied = emu.stats(per_id=True)["updates_applied_by_id"]
        updated = set(frame.filter(pl.col("status") == "updated")["conversation_id"].to_list())
        assert set(applied) == updated
    final = cli("run", *args, "--concurrency", "32", "--rpm", "6000")
    assert final.returncode == 0
    assert set(results(output)["status"].to_list()) == {"updated"}
    assert max(emu.stats(per_id=True)["updates_applied_by_id"].values()) == 1


def test_a_second_signal_stops_at_once(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 50)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20000")  # requests hang
    output = tmp_path / "out.csv"
    process = start(str(source), "--output", str(output), "--base-url", emu.base_url,
                    "--drain-timeout", "60")  # fmt: skip
    wait_for_requests(emu, 1)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None  # draining: waiting for the hanging requests
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 143
    assert "second signal" in stderr
    assert not output.exists()  # cut short: no results written, the store says what was done
    emu.admin("config", {"latency_ms": 0})
    resumed = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    assert resumed.returncode == 0
    assert len(results(output)) == 50


def test_one_writer_at_a_time(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 20)
    emu = start_emulator("--preload", str(source), "--latency-ms", "3000")
    output = tmp_path / "out.csv"
    # One row at a time: the first run holds its lock for a minute, however slowly the machine
    # starts the second.
    args = (str(source), "--output", str(output), "--base-url", emu.base_url, "--concurrency", "1")
    first = start(*args)
    try:
        wait_for_requests(emu, 1)  # the first run holds the lock once it sends
        second = cli("run", *args)
        assert second.returncode == 2
        message = second.stderr.strip().splitlines()[-1]
        assert "already running" in message
        assert f"{tmp_path / 'out.sqlite'}.lock" in message
        assert f"pid {first.pid}" in message
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


def test_changed_input_is_refused_until_restart(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """An unfinished run (here a --limit canary's: rows left) with another input or mapping is
    refused; --restart starts over. (A finished run's new input is the job's next run:
    tests/test_cron_nights.py.)"""
    source = tmp_path / "in.csv"
    write_input(source, 10)
    emu = start_emulator("--preload", str(source))
    output = tmp_path / "out.csv"
    args = ("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    assert cli(*args, "--limit", "5").returncode == 0
    write_input(source, 10, tag="changed")
    refused = cli(*args)
    assert refused.returncode == 2
    assert "--restart" in refused.stderr
    assert "changed: input" in refused.stderr
    assert "rows left: unprocessed=5" in refused.stderr
    other_mapping = cli(*args, "--columns", "tier")
    assert other_mapping.returncode == 2
    assert emu.stats()["by_operation"]["update"] == 5  # nothing sent by the refused runs
    restarted = cli(*args, "--restart")
    assert restarted.returncode == 0
    assert emu.admin(f"conversations/{ID(3)}")["metadata"]["tier"] == "changed"


def test_circuit_breaker_stops_instead_of_burning_attempts(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 300)
    emu = start_emulator("--preload", str(source), "--error-rate", "1", "--random-seed", "1")
    output = tmp_path / "out.csv"
    args = ("run", str(source), "--output", str(output), "--base-url", emu.base_url,
            "--concurrency", "8", "--breaker-timeout", "4", "--rpm", "6000")  # fmt: skip
    started = time.monotonic()
    down = cli(*args)
    assert down.returncode == 3, down.stderr
    assert time.monotonic() - started < 30
    assert "circuit breaker" in down.stderr
    # It says why the API looks down: the last cause, with its status and code.
    assert "(the last: HTTP 50" in down.stderr
    frame = results(output)
    assert frame.height == 300
    assert "failed" not in frame["status"].to_list()  # no row burned its attempts
    # The rows it never reached carry that reason.
    untouched = frame.filter(pl.col("attempts") == 0)
    assert untouched.height > 200
    assert set(untouched["error_code"].to_list()) == {"circuit_breaker"}
    assert all("the last: HTTP 50" in m for m in untouched["error_message"].to_list())
    # A handful of probes, not 300 rows x 6 attempts.
    assert emu.stats()["requests"] < 60
    emu.admin("config", {"error_rate": 0.0})
    up = cli(*args)
    assert up.returncode == 0
    assert set(results(output)["status"].to_list()) == {"updated"}


def test_breaker_rides_out_a_short_outage(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 200)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    output = tmp_path / "out.csv"
    process = start(str(source), "--output", str(output), "--base-url", emu.base_url,
                    "--concurrency", "4", "--max-attempts", "4", "--rpm", "1200",
                    "--log-format", "json")  # fmt: skip
    wait_for_requests(emu, 10)
    emu.admin("config", {"error_rate": 1.0, "random_seed": 3})
    time.sleep(6.0)
    emu.admin("config", {"error_rate": 0.0})
    _, stderr = process.communicate(timeout=120)
    # --max-attempts 4 gives a row 0.5 + 1 + 2 = 3.5 s of backoff: a 6-second outage would fail
    # rows; the breaker held them instead.
    assert process.returncode == 0, stderr
    assert '"event": "breaker_open"' in stderr
    assert '"event": "breaker_closed"' in stderr
    assert set(results(output)["status"].to_list()) == {"updated"}


def test_crash_while_writing_results_leaves_the_old_file(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 300_000)
    output = tmp_path / "plan.csv"
    first = cli("validate", str(source), "--output", str(output))
    assert first.returncode == 0
    before = output.read_bytes()
    process = start(str(source), "--output", str(output), command="validate")
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".plan.csv.*.partial")):
        assert process.poll() is None, "finished before the write was caught"
        assert time.monotonic() < deadline, "write never started"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert output.read_bytes() == before  # the complete old file, never a half-written one


def test_a_signal_as_a_finished_run_exits_leaves_its_exit_code(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A scheduler's SIGTERM that lands after the job ended, while the process exits (it used
    to find the default action there: the finished run reported as killed, -15), changes
    nothing: the run's own exit code stands. The signal is sent from inside the command, just
    after ``run_job`` returned, so the moment is exact; and before the job is under way it
    stops it at its start (exit 143, nothing sent)."""
    import os
    import subprocess
    import sys

    from tests.conftest import TEST_KEY

    source = tmp_path / "in.csv"
    write_input(source, 10)
    emu = start_emulator("--preload", str(source))
    code = (
        "import os, signal, sys\n"
        "import bulk_update.cli as cli, bulk_update.job as job\n"
        "real, when = job.run_job, sys.argv.pop(1)\n"
        "def late(*args, **kwargs):\n"
        "    if when == 'before':\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    summary = real(*args, **kwargs)\n"
        "    if when == 'after':\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return summary\n"
        "job.run_job = late\n"
        "cli.console()\n"
    )
    for when, output, expected in (("after", "a.csv", 0), ("before", "b.csv", 143)):
        done = subprocess.run(
            [sys.executable, "-c", code, when, "run", str(source), "--output",
             str(tmp_path / output), "--base-url", emu.base_url],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "OPENAI_API_KEY": TEST_KEY},
        )  # fmt: skip
        assert done.returncode == expected, (when, done.stderr[-2000:])
    assert results(tmp_path / "a.csv")["status"].to_list() == ["updated"] * 10
    assert results(tmp_path / "b.csv")["status"].to_list() == ["unprocessed"] * 10
    assert emu.stats()["by_operation"].get("update") == 10  # none from the stopped one
