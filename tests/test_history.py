"""`bulk-update history`: a job's runs from its store, newest first, as the emulator counted
them, with the real CLI (both backends)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from tests.conftest import StartEmulator
from tests.helpers import cli, write_input


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

    runs = history("--job", "nightly", "--state-dir", str(tmp_path))
    assert [Path(r["results"]).name for r in runs] == ["2.csv", "1.csv"]  # newest first
    latest, earliest = runs
    assert earliest["exit_code"] == 0
    assert earliest["counts"] == {"updated": 120}
    assert earliest["total_rows"] == 120
    assert earliest["requests"] == served["requests"]
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

    text = cli("history", "--job", "nightly", "--state-dir", str(tmp_path))
    lines = text.stdout.splitlines()
    assert lines[0].split()[:2] == ["run", "started"]
    assert len(lines) == 3
    assert "insufficient_quota" in lines[1]
    assert "updated=120" in lines[2]

    missing = cli("history", "--job", "nope", "--state-dir", str(tmp_path))
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
        found = cli(*command, "--job", "x", cwd=tmp_path)
        assert found.returncode == 0, found.stderr
    assert "out/x.csv" in cli("history", "--job", "x", cwd=tmp_path).stdout
    again = cli("run", "in.csv", "--output", "other/x.csv", "--base-url", emu.base_url,
                cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    both = cli("status", "--job", "x", cwd=tmp_path)
    assert both.returncode == 2
    assert "more than one place" in both.stderr
    assert "--state-dir" in both.stderr
