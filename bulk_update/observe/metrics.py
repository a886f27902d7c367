"""What a run reports as it goes: its Prometheus metrics and its per-second timeline.

``Telemetry`` is told of every request (by the sender) and every finished row (by the workers).
It keeps

- the run's metrics, in a ``prometheus_client`` registry of its own (never the global one):
  written to ``--metrics-file`` (node_exporter's textfile collector) and pushed to
  ``--pushgateway`` by ``MetricsOutputs``;
- the run's **timeline**: per second, the requests, 429s, retries, errors and rows, and the rate
  the limiter allowed. The job commits the finished seconds to its store with each heartbeat;
  ``bulk-update status`` and ``report`` read them back.

Every metric carries the ``job`` label, and ``shard`` when the run is a shard. The names are
listed in the README (Monitoring).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import pushadd_to_gateway, write_to_textfile

from bulk_update.api.answers import Answer
from bulk_update.exceptions import first_line
from bulk_update.store import Second

__all__ = ["MetricsOutputs", "Telemetry"]

log = logging.getLogger("bulk_update")

PREFIX = "bulk_update"
# Request latency buckets (seconds): an update takes tens of milliseconds to a few seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# How long a push to the Pushgateway may take before it counts as failed.
PUSH_TIMEOUT_S = 5.0


def request_outcome(answer: Answer) -> tuple[str, str]:
    """A request's HTTP status class ("2xx" ... "5xx", or "none" without an answer) and its
    outcome: ok, rate_limited, client_error, server_error, timeout, connection_error."""
    if answer.transport_error is not None:
        outcome = "timeout" if answer.transport_error == "timeout" else "connection_error"
        return "none", outcome
    status = answer.http_status or 0
    kind = f"{status // 100}xx"
    if status == 429:
        return kind, "rate_limited"
    if 200 <= status < 300:
        return kind, "ok"
    if status >= 500:
        return kind, "server_error"
    return kind, "client_error"


class Telemetry:
    """One run's metrics and timeline. ``clock`` is wall-clock time (injected for tests)."""

    def __init__(
        self,
        job: str,
        shard: str | None,
        configured_rpm: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job, self.shard = job, shard
        self.registry = CollectorRegistry()
        self._clock = clock
        self._values = {"job": job, **({"shard": shard} if shard else {})}
        names = list(self._values)
        r = self.registry

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, [*names, *extra], registry=r)

        self.rows = gauge("rows", "Rows of the run by status (the results' counts).", ("status",))
        self.input_rows = gauge("input_rows", "Rows in the run's input.")
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests sent, by HTTP status class (none: no answer) and outcome.",
            [*names, "code_class", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from sending a request to its whole answer.",
            names,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.limit_rpm = gauge("rate_limit_rpm", "The request rate the job's limiter allows now.")
        self.configured_rpm = gauge("configured_rpm", "The configured --rpm.")
        self.announced_rpm = gauge(
            "server_limit_rpm", "The request limit the server announced (x-ratelimit headers)."
        )
        self.in_flight = gauge("in_flight_requests", "Requests sent and not yet answered.")
        self.started = gauge("run_start_timestamp_seconds", "When this invocation started.")
        self.ended = gauge("run_end_timestamp_seconds", "When this invocation ended.")
        self.duration = gauge("run_duration_seconds", "How long this invocation took (so far).")
        self.exit_code = gauge("run_exit_code", "The exit code of this invocation.")
        self.last_success = gauge(
            "last_success_timestamp_seconds",
            "When a run of the job last finished its rows (exit 0 or 1); kept across runs.",
        )
        self.configured_rpm.labels(**self._values).set(configured_rpm)
        self.limit_rpm.labels(**self._values).set(configured_rpm)
        # Read when the metrics are written (not set twice a request).
        self._in_flight = 0
        self.in_flight.labels(**self._values).set_function(lambda: self._in_flight)
        # Per request, the children of this run's labels are looked up once (not per request).
        self._latency = self.latency.labels(**self._values)
        self._limit_gauge = self.limit_rpm.labels(**self._values)
        self._requests: dict[tuple[str, str], Any] = {}
        self._start = clock()
        self.started.labels(**self._values).set(self._start)
        self.duration.labels(**self._values).set(0)
        self._seconds: dict[int, Second] = {}
        self._limit: tuple[float | None, float | None] = (configured_rpm, None)

    # What the sender and the workers report

    def sending(self) -> None:
        """A request is on its way (``request`` is told when it is answered or given up on)."""
        self._in_flight += 1

    def sent(self) -> None:
        """A request is no longer on its way: answered (``request``) or given up on (its row's
        worker was cancelled)."""
        self._in_flight -= 1

    def request(self, answer: Answer, elapsed_s: float, *, retry: bool) -> None:
        """One request answered (or given up on): ``retry``, it was not its row's first."""
        self.sent()
        code_class, outcome = key = request_outcome(answer)
        counter = self._requests.get(key)
        if counter is None:
            labels = {**self._values, "code_class": code_class, "outcome": outcome}
            counter = self._requests[key] = self.requests.labels(**labels)
        counter.inc()
        self._latency.observe(elapsed_s)
        second = self._second()
        second.requests += 1
        second.retries += retry
        if outcome == "rate_limited":
            second.rate_limited += 1
        elif outcome != "ok":
            second.errors += 1

    def row(self) -> None:
        """A row finished by a worker."""
        self._second().rows += 1

    def limits(self, limit_rpm: float, announced_rpm: float | None) -> None:
        """The rate the limiter allows now, and the server's announced limit."""
        if self._limit == (limit_rpm, announced_rpm):
            return  # per request: most often nothing changed
        self._limit = (limit_rpm, announced_rpm)
        self._limit_gauge.set(limit_rpm)
        if announced_rpm is not None:
            self.announced_rpm.labels(**self._values).set(announced_rpm)

    def _second(self) -> Second:
        at = int(self._clock())
        second = self._seconds.get(at)
        if second is None:
            second = self._seconds[at] = Second(at, limit_rpm=self._limit[0])
            second.announced_rpm = self._limit[1]
        return second

    # What the job reads and sets

    def counts(self, counts: Mapping[str, int], input_rows: int) -> None:
        for status, n in counts.items():
            self.rows.labels(**self._values, status=status).set(n)
        self.input_rows.labels(**self._values).set(input_rows)
        self.duration.labels(**self._values).set(self._clock() - self._start)

    def succeeded_before(self, at: float | None) -> None:
        """When a run of the job last finished its rows, before this one (from the store)."""
        if at is not None:
            self.last_success.labels(**self._values).set(at)

    def ended_with(self, exit_code: int, *, finished_rows: bool) -> None:
        now = self._clock()
        self.ended.labels(**self._values).set(now)
        self.duration.labels(**self._values).set(now - self._start)
        self.exit_code.labels(**self._values).set(exit_code)
        if finished_rows:
            self.last_success.labels(**self._values).set(now)

    def take_seconds(self, *, all_of_them: bool = False) -> list[Second]:
        """The seconds that are over (every one, at the end), in order; each is taken once."""
        now = math.floor(self._clock())
        done = sorted(at for at in self._seconds if all_of_them or at < now)
        return [self._seconds.pop(at) for at in done]


class MetricsOutputs:
    """Where the metrics go: ``--metrics-file`` (replaced atomically) and ``--pushgateway``
    (push-add, grouped by job name and shard). A failure is a warning, never the job's end."""

    def __init__(self, telemetry: Telemetry, path: str | None, pushgateway: str | None) -> None:
        self.telemetry = telemetry
        self.path = path
        self.pushgateway = pushgateway
        self._failing: set[str] = set()  # the outputs whose last write failed (warned once)
        if path is not None and not path.endswith(".prom"):
            log.warning(
                "--metrics-file %s: node_exporter's textfile collector reads only *.prom files",
                path,
                extra={"event": "metrics_file_name"},
            )

    @property
    def wanted(self) -> bool:
        return bool(self.path or self.pushgateway)

    async def write(self) -> None:
        if self.path:
            self._attempt("metrics_file", self.path, self._write_file)
        if self.pushgateway:
            await asyncio.to_thread(self._attempt, "pushgateway", self.pushgateway, self._push)

    def _write_file(self) -> None:
        assert self.path is not None
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(self.path, self.telemetry.registry)  # a temporary file, then rename

    def _push(self) -> None:
        assert self.pushgateway is not None
        t = self.telemetry
        pushadd_to_gateway(
            self.pushgateway,
            job=t.job,
            registry=t.registry,
            grouping_key={"shard": t.shard} if t.shard else None,
            timeout=PUSH_TIMEOUT_S,
        )

    def _attempt(self, name: str, where: str, write: Callable[[], None]) -> None:
        try:
            write()
        except Exception as exc:
            if name not in self._failing:
                self._failing.add(name)
                log.warning(
                    "%s %s: %s (the job goes on; warned once until it works again)",
                    name.replace("_", " "),
                    where,
                    first_line(exc, named=True),
                    extra={"event": f"{name}_failed", "where": where},
                )
            return
        if name in self._failing:
            self._failing.discard(name)
            log.info("%s %s works again", name.replace("_", " "), where)
