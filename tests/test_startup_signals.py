"""A SIGINT or SIGTERM while the command starts (its libraries take 0.4 s and more to load)
ends it quietly: the conventional exit code, at most one line, no traceback, nothing recorded
or sent. Once: a ``KeyboardInterrupt`` traceback out of whichever import the signal met, or a
kill (-15).

The moments are events, not delays: ``python -X importtime`` writes a line on stderr as each
import ends, so the signal is sent as a given library has just loaded (and the next are
loading), whatever the machine's speed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import write_input

# Imports the command makes after bulk_update's __main__ took the signals over, in the order
# they end: early, middle, late in the load.
LOADED = ("bulk_update.exceptions", "numpy", "polars", "bulk_update.job")


def spawn(emu: EmulatorProcess, tmp_path: Path, *python: str) -> subprocess.Popen[str]:
    """`bulk-update run` (``python *python -m bulk_update``), its store in tmp_path/state."""
    source = tmp_path / "in.csv"
    write_input(source, 50)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
           "OPENAI_API_KEY": TEST_KEY}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, *python, "-m", "bulk_update", "run", str(source), "--output",
         str(tmp_path / "out.csv"), "--job-name", "j", "--state-dir", str(tmp_path / "state"),
         "--base-url", emu.base_url],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def wait_for_line(process: subprocess.Popen[str], found: str) -> list[str]:
    """The stderr lines up to the first one ``found`` in (an import that ended: its name)."""
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.rsplit("|", 1)[-1].strip() == found:
            return lines
    raise AssertionError(f"no line {found!r} before the end: {''.join(lines)[-3000:]}")


def rest_of(process: subprocess.Popen[str]) -> str:
    """The rest of its stderr, to the end, through the same file object as the lines read so
    far: ``communicate(timeout=...)`` reads the pipe's descriptor itself and would lose what that
    object had already read ahead (a line cut in two, the lines before it gone)."""
    assert process.stderr is not None
    rest = process.stderr.read()
    process.wait(timeout=120)
    return rest


def said(stderr: str) -> list[str]:
    """What the command said (import times left out)."""
    return [line for line in stderr.splitlines() if not line.startswith("import time:")]


def assert_nothing_recorded_or_sent(emu: EmulatorProcess, tmp_path: Path) -> None:
    assert emu.stats()["requests"] == 0
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("loaded", LOADED)
def test_a_signal_while_the_libraries_load_ends_the_command_quietly(
    start_emulator: StartEmulator, tmp_path: Path, signum: signal.Signals, loaded: str
) -> None:
    emu = start_emulator()
    process = spawn(emu, tmp_path, "-X", "importtime")
    before = wait_for_line(process, loaded)
    process.send_signal(signum)
    stderr = "".join(before) + rest_of(process)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert said(stderr) == [f"bulk-update: stopped by {signum.name}"]
    assert_nothing_recorded_or_sent(emu, tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_right_after_spawn_records_and_sends_nothing(
    start_emulator: StartEmulator, tmp_path: Path, signum: signal.Signals
) -> None:
    """Before bulk_update's first line runs, Python's own start (its ``site`` imports) has
    Python's defaults (docs/resume.md, Known limits): killed (-N), or 128 + N, or, a SIGINT
    while the interpreter makes its standard streams (seen under a load of 20), Python's own
    fatal error (exit 1); whichever, nothing done."""
    emu = start_emulator()
    process = spawn(emu, tmp_path)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    if process.returncode == 1:  # CPython's init_sys_streams, before any line of ours
        assert signum == signal.SIGINT, stderr[-3000:]
        assert "Fatal Python error: init_sys_streams" in stderr, stderr[-3000:]
        assert "bulk_update" not in stderr, stderr[-3000:]
    else:
        assert process.returncode in {128 + signum, -signum}, stderr[-3000:]
    if process.returncode == 128 + signum:
        assert said(stderr) == [f"bulk-update: stopped by {signum.name}"]
    assert_nothing_recorded_or_sent(emu, tmp_path)


def test_a_signal_after_the_first_line_is_the_jobs(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The first stderr line is the job's own (its start): the job has the signals now, and a
    SIGINT drains it (exit 130, the summary last), or finds it finished (exit 0)."""
    write_input(tmp_path / "in.csv", 50)
    emu = start_emulator("--preload", str(tmp_path / "in.csv"), "--latency-ms", "20")
    process = spawn(emu, tmp_path)
    assert process.stderr is not None
    first = process.stderr.readline()
    assert first
    process.send_signal(signal.SIGINT)
    stderr = first + rest_of(process)
    assert process.returncode in {130, 0}, stderr[-3000:]
    assert "Traceback" not in stderr
    assert said(stderr)[-1].startswith("bulk-update: 50 rows:")
    if process.returncode == 130:
        assert "stopped by SIGINT" in said(stderr)[-1]
