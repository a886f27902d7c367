"""Shared by the end-to-end tests: run the real CLI, read results."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY


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
