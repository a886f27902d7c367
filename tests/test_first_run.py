"""A first run cannot burn a whole file: a preflight request checks the key and the base URL
before the first update, a systematic failure stops the job instead of failing every row, and
an API that looks down is named. The real CLI against the emulator (and a closed port)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import polars as pl

from tests.conftest import StartEmulator
from tests.helpers import ID, cli, results, start, wait_for_requests, write_input


def test_a_base_url_without_v1_stops_before_any_update(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 50)
    emu = start_emulator("--preload", str(source))
    output = tmp_path / "r.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.root_url)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]  # after the job's start line
    assert error.startswith(f"bulk-update: error: {emu.root_url}: the base URL does not lead")
    assert "Invalid URL (GET /conversations/" in error
    assert emu.stats()["requests"] == 0  # the unknown path is not an API request
    assert not output.exists()
    # With /v1 the same command does the whole file.
    fixed = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
                "--rpm", "60000")  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr
    assert emu.stats()["by_operation"] == {"retrieve": 1, "update": 50}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_a_refused_connection_is_exit_2_naming_the_reason(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 5)
    base_url = f"http://127.0.0.1:{_closed_port()}/v1"
    done = cli("run", str(source), "--output", str(tmp_path / "r.csv"), "--base-url", base_url)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"bulk-update: error: cannot reach {base_url}: ConnectError: ")
    assert "connection refused ([Errno 111]" in error


def test_a_systematic_failure_stops_the_job(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """Rows failing one after another with the same non-retryable code (here: conversations
    that do not exist on this server) stop the job after --stop-after-failures of them:
    exit 3, the rest unprocessed with the reason, resumable."""
    source = tmp_path / "in.csv"
    ids = write_input(source, 400)
    empty = start_emulator()
    output = tmp_path / "r.csv"
    args = ("run", str(source), "--output", str(output), "--concurrency", "4",
            "--stop-after-failures", "25", "--rpm", "60000")  # fmt: skip
    done = cli(*args, "--base-url", empty.base_url)
    assert done.returncode == 3, done.stderr
    assert "25 rows in a row failed with http_404" in done.stderr
    frame = results(output)
    failed = frame.filter(pl.col("status") == "failed")
    assert 25 <= failed.height <= 25 + 4  # and the rows that were in flight
    assert set(failed["error_code"].to_list()) == {"http_404"}
    unprocessed = frame.filter(pl.col("status") == "unprocessed")
    assert unprocessed.height == 400 - failed.height
    # Requests still in flight at the stop are abandoned: their rows stay unprocessed as
    # outcome_unknown (never "not sent": the server may have applied them) and are sent again
    # by the re-run, at most --concurrency of them.
    codes = unprocessed["error_code"].value_counts().rows()
    assert dict(codes).keys() <= {"repeated_failure", "outcome_unknown"}, codes
    assert dict(codes).get("outcome_unknown", 0) <= 4, codes
    assert failed.height <= empty.stats()["by_operation"]["update"] <= failed.height + 4
    # Resumable: against the right server the rest is sent; the failed rows stay failed
    # until --retry-failed.
    right = start_emulator("--preload", str(source))
    rest = cli(*args, "--base-url", right.base_url)
    assert rest.returncode == 1, rest.stderr
    assert right.stats()["by_operation"]["update"] == 400 - failed.height  # the unprocessed
    retried = cli(*args, "--base-url", right.base_url, "--retry-failed")
    assert retried.returncode == 0, retried.stderr
    assert set(right.stats(per_id=True)["updates_applied_by_id"]) == set(ids)
    # 0 never stops: the same 404s fail every row and the job finishes (exit 1).
    never = cli("run", str(source), "--output", str(tmp_path / "never.csv"), "--base-url",
                empty.base_url, "--stop-after-failures", "0", "--job-name", "never",
                "--rpm", "60000")  # fmt: skip
    assert never.returncode == 1
    assert set(results(tmp_path / "never.csv")["status"].to_list()) == {"failed"}


def test_the_breaker_names_a_refused_connection(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The API goes away mid-run (the emulator stops): the breaker's log and the stop say
    'connection refused', and the unprocessed rows carry it."""
    source = tmp_path / "in.csv"
    write_input(source, 400)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    output = tmp_path / "r.csv"
    # 20 rows a second: the emulator is gone long before the 400 rows are done.
    process = start(str(source), "--output", str(output), "--base-url", emu.base_url,
                    "--concurrency", "4", "--breaker-timeout", "3", "--rpm", "1200")  # fmt: skip
    wait_for_requests(emu, 30)
    emu.stop()
    started = time.monotonic()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    assert time.monotonic() - started < 60
    opened = [line for line in stderr.splitlines() if "circuit breaker open" in line]
    assert opened, stderr
    assert "refused" in opened[0].lower()
    assert "connection_error: ConnectError" in stderr.strip().splitlines()[-1]
    frame = results(output)
    untouched = frame.filter((pl.col("status") == "unprocessed") & (pl.col("attempts") == 0))
    assert untouched.height > 100
    assert set(untouched["error_code"].to_list()) == {"circuit_breaker"}
    assert all("refused" in m.lower() for m in untouched["error_message"].to_list())
    assert ID(0) in frame["conversation_id"].to_list()
