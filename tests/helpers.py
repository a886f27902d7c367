"""Shared by the end-to-end tests: run the real CLI, read results."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY


def serve_on_loopback(handle: Callable[[socket.socket], None]) -> tuple[socket.socket, int]:
    """A listening socket on a free loopback port and its port; each connection it accepts is
    ``handle``d on a thread of its own, until the socket is closed."""
    listening = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn, _ = listening.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listening, listening.getsockname()[1]


def read_request(conn: socket.socket, *, whole: bool = True) -> tuple[bytes, bytes] | None:
    """One HTTP/1.1 request from ``conn``: its head (request line and headers) and its body
    (read to its Content-Length unless ``whole`` is False: closing on unread bytes would reset
    the connection); None once the client has closed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), 0)  # fmt: skip
    while whole and len(body) < length:
        body += conn.recv(65536)
    return head, body


def requested_id(head: bytes) -> str:
    """The conversation ID at the end of a request line's path."""
    return head.split(b" ", 2)[1].decode().rsplit("/", 1)[-1]


def cli(
    *args: str,
    key: str | None = TEST_KEY,
    timeout: float = 300,
    cwd: Path | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run `bulk-update ARGS` as a real process (no TTY), with OPENAI_API_KEY=key."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    if key is not None:
        environment["OPENAI_API_KEY"] = key
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bulk_update", *args],
        capture_output=True, text=True, timeout=timeout, env=environment, cwd=cwd,
    )  # fmt: skip


def results(path: Path) -> pl.DataFrame:
    if path.suffix == ".parquet":
        return pl.read_parquet(path)
    if path.suffix == ".jsonl":
        return pl.read_ndjson(path)
    # CSV results are text; the integer columns are typed as in the other formats.
    integers = dict.fromkeys(("row_number", "http_status", "attempts", "created_at"), pl.Int64)
    frame = pl.read_csv(path, infer_schema=False)
    return frame.cast({k: v for k, v in integers.items() if k in frame.columns})


def by_row(path: Path) -> dict[int, dict[str, Any]]:
    frame = results(path)
    return {int(row["row_number"]): row for row in frame.iter_rows(named=True)}


def wait_for_requests(emu: EmulatorProcess, count: int, timeout: float = 120) -> None:
    """Until the emulator has seen ``count`` API requests: the job is past start-up (and has its
    signal handlers and lock), whatever the machine's speed."""
    deadline = time.monotonic() + timeout
    while emu.stats()["requests"] < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests in {timeout} s"
        time.sleep(0.05)


def wait_for_in_flight(emu: EmulatorProcess, count: int = 0, timeout: float = 10) -> None:
    """Until the emulator has exactly ``count`` requests in flight (received, not yet finished
    with). With 0, the default: the server has applied or answered everything it received, as a
    test needs after killing a client, before it reads the server's state."""
    deadline = time.monotonic() + timeout
    while (in_flight := emu.stats()["in_flight"]) != count:
        assert time.monotonic() < deadline, (
            f"the emulator has {in_flight} requests in flight, not {count}, after {timeout} s"
        )
        time.sleep(0.02)


# A valid conversation ID per index: the same in every test (and for the emulator's --preload).
ID = "conv_{:048x}".format


def write_input(
    path: Path, n: int, tags: dict[int, str] | None = None, tag: str = "v"
) -> list[str]:
    """``n`` rows of ``conversation_id,tier,n``: tier ``tag``, or ``tags[i]`` for row index i."""
    tags = tags or {}
    ids = [ID(i) for i in range(n)]
    lines = "".join(f"{c},{tags.get(i, tag)},{i}\n" for i, c in enumerate(ids))
    path.write_text("conversation_id,tier,n\n" + lines)
    return ids


def start(
    *args: str, command: str = "run", cwd: Path | None = None, key: str = TEST_KEY
) -> subprocess.Popen[str]:
    """`bulk-update COMMAND ARGS` in the background (to signal or kill it), with OPENAI_API_KEY
    ``key``."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
           "OPENAI_API_KEY": key}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "bulk_update", command, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
    )  # fmt: skip


# A command whose libraries are loaded before it is told to go (``warm``): what it does after the
# word is its own work only, not Python's start and polars' import (seconds on a loaded machine).
_WARM = """import sys
import bulk_update.cli, bulk_update.job, bulk_update.store.postgres, bulk_update.store.sqlite
print("ready", flush=True)
sys.stdin.readline()
sys.argv = ["bulk-update", *sys.argv[1:]]
from bulk_update.__main__ import console
console()
"""


def warm(
    *args: str, command: str = "run", cwd: Path | None = None, key: str = TEST_KEY
) -> Callable[[], subprocess.CompletedProcess[str]]:
    """`bulk-update COMMAND ARGS` loaded and waiting: returns the call that starts it and waits
    for its end (for a test whose point is what the command meets in its first second)."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
           "OPENAI_API_KEY": key}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-c", _WARM, command, *args], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdin is not None
    ready = process.stdout.readline()
    assert ready == "ready\n", ready + (process.stderr.read() if process.stderr else "")
    stdin = process.stdin

    def go(timeout: float = 300) -> subprocess.CompletedProcess[str]:
        stdin.write("go\n")
        stdin.flush()  # communicate closes it
        stdout, stderr = process.communicate(timeout=timeout)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    return go


def state_entries(store: Path) -> dict[str, str]:
    """A job's last-set state, read from its SQLite store as an operator would."""
    with sqlite3.connect(store) as db:
        return dict(db.execute("SELECT conversation_id, metadata FROM job_state"))


def store_runs(store: Path) -> list[dict[str, Any]]:
    """A job's runs, oldest first, from its SQLite store."""
    with sqlite3.connect(store) as db:
        rows = db.execute(
            "SELECT run_id, results, shard, invocations, exit_code, counts, "
            "replaced_at IS NOT NULL FROM runs ORDER BY run_id"
        ).fetchall()
    names = ("run_id", "results", "shard", "invocations", "exit_code", "counts", "replaced")
    return [dict(zip(names, row, strict=True)) for row in rows]


def made_once(factory: pytest.TempPathFactory, name: str, make: Callable[[Path], None]) -> Path:
    """Directory ``name``, made by ``make`` once for the whole test run and shared by its
    pytest-xdist workers (they share the parent of their base temp directory): the first worker
    to ask makes it, under a lock the others wait on; a ``make`` that fails leaves nothing, and
    the next to ask tries again. What is made must be read only (copied) by the tests."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    made = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not made.is_dir():
            partial = base / f"{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            make(partial)
            partial.rename(made)
    return made
