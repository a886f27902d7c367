"""One run's counts as it goes, for the progress callback (the CLI's bar or log lines, a
caller's own): ``Tally``. The drawing is ``observe/draw.py``'s; the summary ``summary.py``'s.

The rate and the time left count only what this process sends, measured from the moment it is
first seen sending: never the rows an earlier invocation finished (a resumed run counts them
done at once, in no time), nor the start-up before the first request. Until ESTIMATE_AFTER_S of
sending are seen there is no estimate (``None``: the bar says "estimating"): a rate from the
first instant is noise, and a time left from it says hours or nothing."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping

from bulk_update.observe.summary import Bound, Progress, ProgressCallback
from bulk_update.outcome import Status

__all__ = ["ESTIMATE_AFTER_S", "Tally", "estimate"]

# Seconds of this process's sending before a rate and a time left are shown.
ESTIMATE_AFTER_S = 5.0


def estimate(sent: int, seconds: float, left: int) -> tuple[float | None, float | None]:
    """The rate (rows per second) and the time left (seconds) of ``left`` rows, from ``sent``
    rows sent in ``seconds`` by this process: (None, None) until ``seconds`` reaches
    ESTIMATE_AFTER_S with a row sent; no time left (None) when no row is left."""
    if seconds < ESTIMATE_AFTER_S or sent <= 0:
        return None, None
    rate = sent / seconds
    return rate, (left / rate if left > 0 else None)


class Tally:
    """One run's counts, as the progress callback sees them. ``clock``: monotonic seconds
    (injected for tests). ``limits``: the run's ``--rpm``, ``--concurrency`` and its count of
    shards, to tell which bounds the sending (``bound``)."""

    def __init__(
        self,
        total: int,
        progress: ProgressCallback | None,
        *,
        limits: tuple[int, int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self._clock = clock
        self.started = clock()
        self.sent = 0  # rows sent by this invocation
        self.resumed = 0  # rows finished by earlier invocations of the run
        self.requests: Callable[[], int] = lambda: 0
        self.rate_limited: Callable[[], int] = lambda: 0  # of the requests, answered 429
        # Per key, the conversations given a key they did not have (or, in a check, would be).
        self.added: Counter[str] = Counter()
        self._last_report = 0.0
        # When this invocation was first seen sending, and how many rows it had sent then.
        self._sending_since: tuple[float, int] | None = None
        self._limits = limits
        self._latency: tuple[float, int] = (0.0, 0)  # the requests' latencies: sum, count

    def answered(self, latency_s: float | None) -> None:
        """A request's latency (None: nothing was sent), for ``bound``."""
        if latency_s is not None:
            total, count = self._latency
            self._latency = (total + latency_s, count + 1)

    def bound(self) -> Bound | None:
        """Which bound limits the sending, from the mean latency so far: None without limits
        or a latency, or before there is a rate (ESTIMATE_AFTER_S of sending, as the rate:
        a latency from the first requests, which warm up the connections, is noise too)."""
        total, count = self._latency
        if self._limits is None or not count or total <= 0:
            return None
        if self.estimate(self._clock())[0] is None:
            return None
        rpm, concurrency, shards = self._limits
        return Bound(rpm, concurrency, total / count, shards)

    def resume(self, finished: Mapping[Status, int]) -> None:
        """The rows earlier invocations of the run finished, by status: counted done from the
        start (the planner does not count them again)."""
        for status, count in finished.items():
            self.counts[status.value] += count
        self.resumed = sum(finished.values())

    def add(self, status: Status, count: int = 1) -> None:
        self.counts[status.value] += count
        self.report()

    @property
    def done(self) -> int:
        """Rows finished, by this invocation or earlier ones."""
        return sum(self.counts.values()) - self.counts.get(Status.UNPROCESSED.value, 0)

    def estimate(self, now: float) -> tuple[float | None, float | None]:
        """This invocation's rate and the time left at it (``estimate``), as of ``now``."""
        if self._sending_since is None and self.sent:
            self._sending_since = (now, self.sent)
        if self._sending_since is None:
            return None, None
        since, sent_then = self._sending_since
        return estimate(self.sent - sent_then, now - since, self.total - self.done)

    def report(self, force: bool = False) -> None:
        """Tell the progress callback, at most every 0.2 s unless ``force`` (called for every
        row: until then only the moment sending was first seen is noted)."""
        now = self._clock()
        if self._sending_since is None and self.sent:
            self._sending_since = (now, self.sent)
        if self.progress is None or (not force and now - self._last_report < 0.2):
            return
        rate, left = self.estimate(now)
        self._last_report = now
        self.progress(
            Progress(
                done=self.done,
                total=self.total,
                counts=dict(self.counts),
                requests=self.requests(),
                elapsed_s=now - self.started,
                resumed=self.resumed,
                sent=self.sent,
                rows_per_s=rate,
                seconds_left=left,
                bound=None if rate is None else self.bound(),
            )
        )
