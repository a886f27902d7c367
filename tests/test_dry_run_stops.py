"""What a dry run says when it stops early: it keeps nothing (``validate --check-server`` reads
into a scratch store that goes with it), so it never promises a resume; the same command starts
it over. Through the real CLI against the emulator."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from bulk_update.observe.summary import JobSummary
from tests.conftest import StartEmulator
from tests.faults import Tmpfs
from tests.helpers import cli, start, wait_for_requests, write_input


def summary_line(stderr: str) -> str:
    return next(line for line in reversed(stderr.splitlines()) if line.startswith("bulk-update:"))


def test_an_interrupted_check_says_it_starts_over_and_does(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Once: "stopped by SIGINT (re-run the same command to resume)", and the same command then
    read every row again."""
    source = tmp_path / "in.csv"
    write_input(source, 400)
    emu = start_emulator("--preload", str(source), "--latency-ms", "50")
    args = (str(source), "--output", str(tmp_path / "plan.csv"), "--check-server",
            "--base-url", emu.base_url, "--rpm", "1000000", "--concurrency", "4")  # fmt: skip
    checking = start(*args, command="validate")
    wait_for_requests(emu, 20)
    checking.send_signal(signal.SIGINT)
    _, stderr = checking.communicate(timeout=120)
    assert checking.returncode == 130, stderr
    line = summary_line(stderr)
    assert "stopped by SIGINT (a dry run keeps nothing: the same command starts it over)" in line
    assert "resume" not in stderr

    read = emu.stats()["by_operation"]["retrieve"]
    again = cli("validate", *args)
    assert again.returncode == 0, again.stderr
    # Every row read again, as it said (and the preflight's read of one).
    assert "(400 reads)" in summary_line(again.stderr)
    assert emu.stats()["by_operation"]["retrieve"] - read == 401
    assert emu.stats()["by_operation"].get("update", 0) == 0


@pytest.mark.parametrize("check", [False, True], ids=["validate", "check-server"])
def test_a_dry_run_on_a_full_disk_says_run_it_again_not_resume(
    start_emulator: StartEmulator, tmp_path: Path, check: bool
) -> None:
    """Once: "free space, then run the same command again to resume" from a dry run (exit 3),
    which has nothing to resume."""
    source = tmp_path / "in.csv"
    write_input(source, 3000)
    emu = start_emulator("--preload", str(source))
    with Tmpfs(tmp_path / "small", "64k") as small:
        done = cli("validate", str(source), "--output", str(small.path / "plan.csv"),
                   "--base-url", emu.base_url, "--rpm", "1000000",
                   *(["--check-server"] if check else []))  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"{small.path / 'plan.csv'}: the disk is full" in done.stderr
    assert "free space, then run the same command again" in done.stderr
    assert "resume" not in done.stderr


@pytest.mark.parametrize(
    ("dry_run", "expected"),
    [
        (False, "stopped by SIGTERM (re-run the same command to resume)"),
        (True, "stopped by SIGTERM (a dry run keeps nothing: the same command starts it over)"),
    ],
)
def test_what_a_stopped_run_says_of_the_same_command(dry_run: bool, expected: str) -> None:
    summary = JobSummary(
        counts={"unprocessed": 3}, total_rows=3, requests_sent=0, elapsed_s=1.0,
        output="o.csv", errors_output=None, exit_code=143, dry_run=dry_run,
        stopped_by="SIGTERM",
    )  # fmt: skip
    assert expected in summary.line()
