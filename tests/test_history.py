"""`bulk-update history`: a job's runs from its store, newest first, as the emulator counted
them, with the real CLI (both backends)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from tests.conftest import StartEmulator
from tests.helpers import cli, start, wait_for_requests, write_input
from tests.stores import Backend


def history(*args: str) -> list[dict[str, Any]]:
    done = cli("history", *args, "--json")
    assert done.returncode == 0, done.stderr
    records: list[dict[str, Any]] = json.loads(done.stdout)
    return records


def test_history_shows_each_run_as_the_server_saw_it(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 120)
    emu = start_emulator("--preload", str(source), "--rpm", "3000")
    common = ("--base-url", emu.base_url, "--job-name", "nightly", "--state-dir", str(tmp_path))
    first = cli("run", str(source), "--output", str(tmp_path / "1.csv"), "--rpm", "30000", *common)
    assert first.returncode == 0, first.stderr
    served = emu.stats()
    emu.admin("config", {"quota_exhausted": True})
    write_input(source, 120, dict.fromkeys(range(120), "t1"))
    second = cli("run", str(source), "--output", str(tmp_path / "2.csv"), *common)
    assert second.returncode == 3

    runs = history("--job-name", "nightly", "--state-dir", str(tmp_path))
    assert [Path(r["results"]).name for r in runs] == ["2.csv", "1.csv"]  # newest first
    latest, earliest = runs
    assert earliest["exit_code"] == 0
    assert earliest["counts"] == {"updated": 120}
    assert earliest["total_rows"] == 120
    assert earliest["requests"] == served["requests"]
    assert earliest["requests_exact"] is True  # it recorded its end: shown as is, no "≥"
    # Told 10x the server's limit, the job takes the limit the server announces and rarely meets
    # a 429; those it meets are counted (tests/test_send.py counts them one by one).
    assert earliest["rate_limited"] == served["by_status"].get("429", 0)
    assert earliest["stopped_by"] is None
    assert earliest["host"] == socket.gethostname()
    assert earliest["input"] == str(source)
    assert earliest["ended_at"] >= earliest["started_at"]
    assert latest["exit_code"] == 3
    assert latest["stopped_by"] == "insufficient_quota"
    assert latest["counts"] == {"unprocessed": 120}

    text = cli("history", "--job-name", "nightly", "--state-dir", str(tmp_path))
    lines = text.stdout.splitlines()
    assert lines[0].split()[:2] == ["run", "started"]
    assert len(lines) == 3
    assert "insufficient_quota" in lines[1]
    assert "updated=120" in lines[2]
    assert f" {served['requests']} " in lines[2]

    missing = cli("history", "--job-name", "nope", "--state-dir", str(tmp_path))
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    assert "no store of job 'nope'" in missing.stderr


def test_status_history_and_report_find_the_store_beside_the_results(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Right after `run ... --output out/x.csv`, `status --job x` (no --state-dir) finds
    out/x.sqlite, as run put it; two stores of one job name are not guessed between."""
    source = tmp_path / "in.csv"
    write_input(source, 5)
    emu = start_emulator("--preload", str(source))
    done = cli("run", "in.csv", "--output", "out/x.csv", "--base-url", emu.base_url,
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for command in (("status",), ("history",), ("report", "--output", "r.html")):
        found = cli(*command, "--job-name", "x", cwd=tmp_path)
        assert found.returncode == 0, found.stderr
    assert "out/x.csv" in cli("history", "--job-name", "x", cwd=tmp_path).stdout
    again = cli("run", "in.csv", "--output", "other/x.csv", "--base-url", emu.base_url,
                cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    both = cli("status", "--job-name", "x", cwd=tmp_path)
    assert both.returncode == 2
    assert "more than one place" in both.stderr
    assert "--state-dir" in both.stderr


def test_a_run_killed_9_is_stopped_at_once_and_its_requests_a_lower_bound(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    """kill -9 of a real run: ``status`` on its host sees at once that its process is gone (no
    wait for the heartbeat to age), and ``history`` counts at least the requests its committed
    outcomes record, marked as a lower bound (the heartbeat had counted none of them)."""
    source = tmp_path / "in.csv"
    write_input(source, 3000)
    emu = start_emulator("--preload", str(source), "--latency-ms", "50")
    where = ("--job-name", "nightly", *backend.args)
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--job-name", "nightly", "--concurrency", "8", "--rpm", "60000", *backend.args)  # fmt: skip
    # One heartbeat a minute: the one at the start is the last the store gets before the kill.
    process = start(*args, "--metrics-interval", "60")
    try:
        wait_for_requests(emu, 300)
    finally:
        process.kill()  # kill -9: no word to the store
        process.wait()

    (killed,) = json.loads(cli("status", *where, "--json").stdout)
    assert killed["pid"] == process.pid
    assert killed["state"] == "stopped"  # at once: its heartbeat is seconds old, not 185 s
    text = cli("status", *where).stdout
    assert f"interrupted: its process {process.pid} on this host is gone" in text, text
    assert "running" not in text.split("\n", 1)[1]  # the header aside

    (run,) = history(*where)
    committed = backend.attempts("nightly", run["run_id"])
    assert committed >= 200  # the premise: most of the 300 requests' rows were committed
    assert committed <= run["requests"] <= emu.stats()["requests"]
    assert run["requests_exact"] is False
    shown = cli("history", *where).stdout.splitlines()[1]
    assert f"\u2265{run['requests']}" in shown  # "≥N": a lower bound
    assert "interrupted" in shown

    resumed = cli("run", *args)
    assert resumed.returncode == 0, resumed.stderr
    (run,) = history(*where)
    assert run["invocations"] == 2
    assert backend.attempts("nightly", run["run_id"]) <= run["requests"] <= emu.stats()["requests"]
    assert run["requests_exact"] is False  # the first invocation's end was never recorded


def test_status_and_history_say_the_counts_of_a_resumed_run_as_it_goes(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    """While a resumed run goes on, `status --json` and `history --json` give its counts by
    status so far (the rows earlier invocations finished too), from the heartbeat that gives
    `rows_done`: the JSON says what the table says (`done` N/total), never `"counts": {}`; a
    stopped run has no rate in either."""
    source = tmp_path / "in.csv"
    write_input(source, 400)
    emu = start_emulator("--preload", str(source), "--latency-ms", "100")
    where = ("--job", "nightly", *backend.args)
    args = (str(source), "--output", str(tmp_path / "out.csv"), "--base-url", emu.base_url,
            "--job-name", "nightly", "--concurrency", "1", "--metrics-interval", "0.5",
            *backend.args)  # fmt: skip
    first = start(*args)
    try:
        wait_for_requests(emu, 20)
    finally:
        first.kill()  # kill -9
        first.wait()
    (killed,) = status(*where)
    assert killed["state"] == "stopped"
    before = killed["rows_done"]
    assert before >= 1
    assert sum(killed["counts"].values()) == before  # its last heartbeat's
    # Stopped: no rate and no time left, in the JSON as in the table (its "rate" cell is blank).
    assert killed["rows_per_s"] is None
    assert killed["seconds_left"] is None
    again = start(*args)
    try:
        deadline = time.monotonic() + 120
        while True:
            (running,) = status(*where)
            if running["state"] == "running" and running["rows_done"] >= before + 5:
                break
            assert time.monotonic() < deadline, running
            time.sleep(0.2)
        assert running["counts"] == {"updated": running["rows_done"]}
        assert running["total_rows"] == 400
        table = cli("status", *where).stdout.splitlines()
        (done,) = [cell for cell in table[1].split() if cell.endswith("/400")]
        assert int(done.split("/")[0]) >= running["rows_done"]  # a later heartbeat's, maybe
        (record,) = history(*where)
        assert record["ended_at"] is None
        assert record["counts"]["updated"] >= running["rows_done"]
        assert "updated=" in cli("history", *where).stdout.splitlines()[1]
    finally:
        again.kill()
        again.wait()


def status(*args: str) -> list[dict[str, Any]]:
    done = cli("status", *args, "--json")
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found
