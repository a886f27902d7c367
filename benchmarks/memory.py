"""Peak memory of a child process, split into anonymous (heap) and file-backed RSS.

Polars memory-maps CSV input, so the pages of the input it has read count in RSS although the
kernel can drop them at any time: total peak RSS grows with the file even when the heap does
not. Sampling /proc/PID/status (Linux) tells the two apart.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Mapping


def _status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in {"RssAnon", "RssFile", "VmHWM"}:
                    values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return values


def run_measured(args: list[str], env: Mapping[str, str]) -> tuple[float, dict[str, float]]:
    """Wall seconds, and peak MiB of anonymous RSS, file RSS and total RSS (VmHWM)."""
    started = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    while process.poll() is None:
        for key, value in _status(process.pid).items():
            peak[key] = max(peak[key], value)
        time.sleep(0.01)
    seconds = time.perf_counter() - started
    if process.returncode not in (0, 1):
        detail = process.stderr.read().decode(errors="replace") if process.stderr else ""
        raise RuntimeError(f"{args} failed: {detail[-2000:]}")
    return seconds, {
        "anon_mib": peak["RssAnon"] / 1024,
        "file_mib": peak["RssFile"] / 1024,
        "total_mib": peak["VmHWM"] / 1024,
    }
