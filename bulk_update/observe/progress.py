"""One run's counts as it goes, for the progress callback (the CLI's bar or log lines, a
caller's own): ``Tally``. The drawing is ``observe/draw.py``'s; the summary ``summary.py``'s."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from bulk_update.observe.summary import Progress, ProgressCallback
from bulk_update.outcome import Status

__all__ = ["Tally"]


class Tally:
    """One run's counts, as the progress callback sees them."""

    def __init__(self, total: int, progress: ProgressCallback | None) -> None:
        self.total = total
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.sent = 0  # rows sent by this invocation
        self.resumed = 0  # rows finished by earlier invocations of the run
        self.requests: Callable[[], int] = lambda: 0
        self.rate_limited: Callable[[], int] = lambda: 0  # of the requests, answered 429
        # Per key, the conversations given a key they did not have (or, in a check, would be).
        self.added: Counter[str] = Counter()
        self._last_report = 0.0

    def add(self, status: Status, count: int = 1) -> None:
        self.counts[status.value] += count
        self.report()

    @property
    def done(self) -> int:
        """Rows finished, by this invocation or earlier ones (as far as it has counted)."""
        counted = sum(self.counts.values()) - self.counts.get(Status.UNPROCESSED.value, 0)
        return max(counted, self.resumed)

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self._last_report < 0.2):
            return
        self._last_report = now
        unprocessed = self.counts.get(Status.UNPROCESSED.value, 0)
        self.progress(
            Progress(
                done=sum(self.counts.values()) - unprocessed,
                total=self.total,
                counts=dict(self.counts),
                requests=self.requests(),
                elapsed_s=now - self.started,
                resumed=self.resumed,
                sent=self.sent,
            )
        )
