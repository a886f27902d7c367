"""Real monitoring peers for the tests: Debian's Prometheus Pushgateway on a free loopback port,
and Debian's Chromium (driven by Playwright) to open a report page. ``make test`` installs both
packages when they are missing; a test that cannot find them fails, saying so (never skips)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

CHROMIUM = "/usr/bin/chromium"
# As root in a container, with no network beyond loopback (see DEVELOPERS.md).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
]  # fmt: skip
# Where a test keeps what a person may want to look at after the run (not in git: out/).
ARTIFACTS = Path(__file__).resolve().parent.parent / "out" / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def samples(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(found: list[Sample], name: str, **labels: str) -> float:
    """The one sample named ``name`` whose labels include ``labels``."""
    matching = [
        s for s in found if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (name, labels, matching)
    return float(matching[0].value)


def total(found: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(
        s.value
        for s in found
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


class Pushgateway:
    """``prometheus-pushgateway`` on a free loopback port, in-memory (no persistence file)."""

    def __init__(self) -> None:
        binary = shutil.which("prometheus-pushgateway")
        if binary is None:
            raise RuntimeError(
                "prometheus-pushgateway not found: `make test` installs the Debian package "
                "prometheus-pushgateway (apt-get) when it is missing"
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def __enter__(self) -> Pushgateway:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.scrape()
                return self
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"the Pushgateway did not start: {self._stderr()}") from None
                time.sleep(0.1)

    def _stderr(self) -> str:
        if self._process.poll() is None:
            return "(still running)"
        return self._process.stderr.read() if self._process.stderr else ""

    def scrape(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:  # noqa: S310
            text: str = response.read().decode()
            return text

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
