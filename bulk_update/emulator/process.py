"""Run ``bulk-update emulator`` as a child process on a free loopback port.

Used by ``bulk-update demo``, the tests and the benchmarks: the emulator is always a real server
in its own process, never an in-process shortcut.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import IO, Any

import httpx2

STARTUP_TIMEOUT_S = 60.0


class EmulatorProcess:
    """``with EmulatorProcess("--rpm", "600") as emu: emu.base_url`` — stopped on exit."""

    def __init__(self, *args: str, host: str = "127.0.0.1") -> None:
        self.args = [
            sys.executable, "-m", "bulk_update", "emulator", "--host", host, "--port", "0", *args,
        ]  # fmt: skip
        self.base_url = ""
        self.root_url = ""
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        # One keep-alive connection for the admin routes: a test that reads hundreds of
        # conversations one by one would otherwise open (and wait for) a connection each time.
        self._admin: httpx2.Client | None = None

    def start(self) -> EmulatorProcess:
        # stderr to a file, not a pipe: a pipe nobody reads would block a chatty server.
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert self._process.stdout is not None
        while time.monotonic() < deadline:
            line = self._process.stdout.readline()
            if not line:
                self._process.wait()
                raise RuntimeError(f"emulator exited before serving: {self.stderr().strip()}")
            if "serving http" in line:
                self.base_url = line.rsplit(" ", 1)[-1].strip()
                self.root_url = self.base_url.removesuffix("/v1")
                return self
        self.stop()
        raise RuntimeError("emulator did not start in time")

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process is not None and self._process.stdout is not None:
            self._process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stderr(self) -> str:
        """What the emulator wrote on stderr so far (its warnings and tracebacks)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    def admin(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or POST ``body`` to) an ``/_emulator/...`` route and return its JSON."""
        url = f"{self.root_url}/_emulator/{path}"
        if self._admin is None:
            self._admin = httpx2.Client(timeout=30)
        response = self._admin.get(url) if body is None else self._admin.post(url, json=body)
        response.raise_for_status()
        return response.json()

    def stats(self, per_id: bool = False, timeline: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = self.admin(
            f"stats?per_id={str(per_id).lower()}&timeline={str(timeline).lower()}"
        )
        return result

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
