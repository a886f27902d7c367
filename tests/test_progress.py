"""The progress bar as a person sees it: the real CLI on a pseudo-terminal, its output played
into a terminal emulator (pyte), and the screen read back (at the end, and frame by frame)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path

import pyte

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import cli, wait_for_requests, write_input

COLUMNS, LINES = 200, 60


class Tty:
    """What a run on a terminal showed: the screen's non-empty lines at the end, the exit code,
    and the bar's lines as they were drawn, one per frame (``frames``)."""

    def __init__(self, output: bytes, code: int, columns: int) -> None:
        self.code = code
        screen = pyte.Screen(columns, LINES)
        stream = pyte.ByteStream(screen)
        self.frames: list[str] = []
        # Each redraw of the bar starts with a carriage return: the screen after each piece.
        for piece in output.replace(b"\n", b"\r\n").split(b"\r"):
            stream.feed(piece + b"\r")
            bar = [line.rstrip() for line in screen.display
                   if ("━" in line or line.startswith("bulk-update ")) and BAR.search(line)]  # fmt: skip
            if bar and (not self.frames or self.frames[-1] != bar[-1]):
                self.frames.append(bar[-1])
        self.lines = [line.rstrip() for line in screen.display if line.strip()]


def on_tty(args: list[str], during: Callable[[subprocess.Popen[bytes]], None] | None = None,
           *, columns: int = COLUMNS) -> Tty:  # fmt: skip
    """Run `bulk-update ARGS` with stdin, stdout and stderr on a terminal ``columns`` wide;
    ``during`` runs while it runs."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(OPENAI_API_KEY=TEST_KEY, COLUMNS=str(columns), LINES=str(LINES), TERM="xterm")
    process = subprocess.Popen([sys.executable, "-m", "bulk_update", *args], stdin=terminal,
                               stdout=terminal, stderr=terminal, env=env)  # fmt: skip
    os.close(terminal)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if during is not None:
        during(process)
    code = process.wait(timeout=120)
    reader.join(timeout=10)
    os.close(controller)
    return Tty(b"".join(chunks), code, columns)


def on_tty_lines(args: list[str], during: Callable[[subprocess.Popen[bytes]], None] | None = None
                 ) -> tuple[list[str], int]:  # fmt: skip
    """``on_tty``'s screen at the end and exit code."""
    shown = on_tty(args, during)
    return shown.lines, shown.code


# The bar's line: done/total, then the rate (or "estimating") and the time left, if shown.
BAR = re.compile(r"(?:^|\s)(\d+)/(\d+)(?: ([\d.]+) rows/s| (estimating))?(?: (\S+) left)?")


def bars(lines: list[str]) -> list[tuple[int, int, float | None]]:
    """(done, total, rate) of each bar line (rate None: not shown)."""
    return [
        (int(m.group(1)), int(m.group(2)), None if m.group(3) is None else float(m.group(3)))
        for line in lines
        if ("━" in line or line.startswith("bulk-update ")) and (m := BAR.search(line))
    ]


def test_ctrl_c_then_resume_as_seen_on_a_terminal(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 300)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    args = ["run", str(source), "--output", str(tmp_path / "r.csv"), "--base-url", emu.base_url,
            "--rpm", "1200", "--concurrency", "4"]  # fmt: skip

    def interrupt(process: subprocess.Popen[bytes]) -> None:
        wait_for_requests(emu, 60)
        process.send_signal(signal.SIGINT)

    lines, code = on_tty_lines(args, interrupt)
    assert code == 130, lines
    # The warning is a line of its own, above the bar, never glued onto it.
    stopping = [line for line in lines if "SIGINT: finishing in-flight requests" in line]
    assert len(stopping) == 1, lines
    assert "━" not in stopping[0]
    assert "━" not in lines[-1]  # the summary is a line of its own, after the bar
    assert "stopped by SIGINT" in lines[-1]
    shown = bars(lines)
    assert len(shown) == 1, lines  # one bar, redrawn in place
    done, total, _ = shown[0]
    assert total == 300
    assert 40 <= done < 300  # not jumped to the total by the rows left unprocessed
    assert not any("0/?" in line for line in lines)

    again = on_tty(args)
    resumed = again.lines
    assert again.code == 0, resumed
    said = [line for line in resumed if "resuming:" in line]
    assert len(said) == 1, resumed
    already = int(re.search(r"resuming: (\d+) rows already done", said[0]).group(1))  # type: ignore[union-attr]
    assert already == done
    done, total, rate = bars(resumed)[0]
    assert (done, total) == (300, 300)
    # The rate counts rows sent by this run: at --rpm 1200 about 20 a second, not the rows the
    # resume skipped in its first instant.
    assert rate is not None, resumed
    assert rate <= 30, resumed
    # Frame by frame: the first already counts the rows resumed as done, and gives neither a
    # rate nor a time left from its first instant ("estimating"); no frame's rate counts them.
    frames = bars(again.frames)
    assert len(frames) >= 2, again.frames
    first = again.frames[0]
    assert frames[0][0] >= already, again.frames
    assert "estimating" in first, first
    assert "rows/s" not in first, first
    assert " left" not in first, first
    assert all(rate is None or rate <= 30 for _, _, rate in frames), again.frames
    # A time left is shown only beside a rate.
    assert all("rows/s" in frame for frame in again.frames if " left" in frame), again.frames


def test_no_stale_bar_and_quiet_means_quiet(emulator: EmulatorProcess, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 10)
    # A run that stops before any progress (the base URL lacks /v1) leaves no bar behind.
    lines, code = on_tty_lines(["run", str(source), "--output", str(tmp_path / "a.csv"),
                          "--base-url", emulator.root_url])  # fmt: skip
    assert code == 2, lines
    assert not any("━" in line or "0/?" in line for line in lines), lines
    # --quiet on a terminal: no bar, no INFO lines, only the summary. Each run's results in a
    # directory of its own: a new job beside others is told with a WARNING, which --quiet keeps.
    lines, code = on_tty_lines(["run", str(source), "--output", str(tmp_path / "b" / "b.csv"),
                          "--base-url", emulator.base_url, "--quiet"])  # fmt: skip
    assert code == 1, lines  # the emulator does not hold these conversations: 404s
    assert len(lines) == 1, lines
    assert lines[0].startswith("bulk-update: 10 rows: failed=10")
    # ... while --log-file still gets the INFO lines.
    log_file = tmp_path / "log.txt"
    lines, code = on_tty_lines(["run", str(source), "--output", str(tmp_path / "c" / "c.csv"),
                          "--base-url", emulator.base_url, "--quiet", "--log-file",
                          str(log_file)])  # fmt: skip
    assert len(lines) == 1, lines
    assert "INFO job started" in log_file.read_text()
    # A warning is not INFO: --quiet keeps it (the new job 'd' beside the jobs 'b' and 'c').
    lines, code = on_tty_lines(["run", str(source), "--output", str(tmp_path / "c" / "d.csv"),
                          "--base-url", emulator.base_url, "--quiet"])  # fmt: skip
    assert "WARNING job 'd' is new" in lines[0], lines
    assert any(line.startswith("bulk-update: 10 rows: failed=10") for line in lines), lines
    assert not any("INFO" in line or "━" in line for line in lines), lines


def test_a_bar_only_on_a_terminal(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 30)
    emu = start_emulator("--preload", str(source))
    args = ["run", str(source), "--base-url", emu.base_url]
    lines, code = on_tty_lines([*args, "--output", str(tmp_path / "a.csv")])
    assert code == 0, lines
    assert bars(lines)[0][:2] == (30, 30)
    # On a terminal, the bar and the summary: no structured INFO lines (-v shows them).
    assert not any(" INFO " in line for line in lines), lines
    assert lines[-1].startswith("bulk-update: 30 rows: ")
    verbose, code = on_tty_lines([*args, "--output", str(tmp_path / "v.csv"), "-v"])
    assert code == 0, verbose
    assert any("INFO job started" in line for line in verbose), verbose
    piped = cli(*args, "--output", str(tmp_path / "b.csv"))  # no terminal: cron, Airflow
    assert piped.returncode == 0
    assert "━" not in piped.stderr
    assert "INFO job started" in piped.stderr  # a log's reader wants them


def test_the_bar_fits_the_terminal_with_its_total_whole(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """At 80 columns every frame fits, the bar and done/total whole (the counts give way); at
    40 the bar gives way before the numbers; done/total is never cut ("1200/12…")."""
    source, known = tmp_path / "in.csv", tmp_path / "known.csv"
    write_input(source, 1200)
    write_input(known, 900)  # the rest are answered 404: failed=..., a longer line
    emu = start_emulator("--preload", str(known))
    for columns in (80, 40):
        # At 200 rows/s, about 6 s: long enough for a rate and a time left to be shown.
        shown = on_tty(["run", str(source), "--output", str(tmp_path / f"{columns}.csv"),
                        "--base-url", emu.base_url, "--rpm", "12000", "--stop-after-failures",
                        "0"], columns=columns)  # fmt: skip
        assert shown.code == 1, shown.lines
        frames = bars(shown.frames)
        assert frames, shown.lines
        assert frames[-1][:2] == (1200, 1200), shown.frames
        assert all(total == 1200 for _, total, _ in frames), shown.frames
        assert all(len(frame) <= columns for frame in shown.frames), shown.frames
        assert not any("\u2026" in line for line in shown.lines), shown.lines
        if columns == 80:
            assert all("━" in frame for frame in shown.frames), shown.frames
        # (the summary is text: it wraps, whole)
        assert any(line.startswith("bulk-update: 1200 rows: ") for line in shown.lines)
        if columns == 80:
            assert any("rows/s" in frame and " left" in frame for frame in shown.frames)
