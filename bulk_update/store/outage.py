"""A store that is away: how long each operation may keep failing, and one verdict for all.

Each operation that meets the store away (a commit, a read, a heartbeat, a renewal of the run's
lease) waits and tries again on a clock of its own, started by its first failure (``failed``)
and ended by its success (``over``): another operation's success does not end it (a table
another session holds locked can let the heartbeat through while every commit fails). Once any
operation has kept failing for the store's timeout (``--store-timeout``), the store is given
up: that operation and every later one fail at once with StoreUnavailable. So the timeout bounds
the whole stop, not each operation's own wait one after the other.

A call that never returns (a database that keeps the connection open but does not answer: a
frozen server, a stalled proxy) is no failure by itself: ``Watchdog`` interrupts it once it
has lasted the timeout (``deadline``), and it then counts as failing since it started.

``hurry`` (a signal: the job is stopping) gives every wait at most that many more seconds, and
a call begun after that moment (the outcomes of the rows the drain abandoned, the results read,
the run's end) no more than that many either: a store that answers is not cut for being called
late, one that does not is given up after them, once.

PostgreSQL's outage is a database that cannot be reached or answers no more; SQLite's is a file
another process holds locked. Thread-safe: the writer, the heartbeat and the reads run in
threads of their own.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from bulk_update.exceptions import StoreUnavailable

__all__ = ["Outage", "Watchdog"]

log = logging.getLogger("bulk_update")


class Outage:
    """``where``: the store as messages name it (never with a password); ``state``: what an
    outage is, in words (``unreachable``, ``locked by another process``); ``backoff``: the first
    and the longest wait between an operation's tries."""

    def __init__(
        self,
        where: str,
        timeout: float,
        *,
        state: str = "unreachable",
        backoff: tuple[float, float] = (0.2, 5.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.where = where
        self.timeout = timeout
        self.state = state
        self._backoff = backoff
        self._clock = clock
        self._lock = threading.Lock()
        # Operations failing now: when each first failed, and its next wait.
        self._failing: dict[object, tuple[float, float]] = {}
        self._since: float | None = None  # the first failure of the outage going on
        self._hurry: float | None = None  # no wait goes past this (a signal came)
        self._patience = 0.0  # after that moment, how long a call begun then may last
        self._given_up: StoreUnavailable | None = None

    @property
    def given_up(self) -> bool:
        return self._given_up is not None

    def check(self) -> None:
        """Raise at once if the store was given up (the run is stopping without it)."""
        if self._given_up is not None:
            raise self._given_up

    def deadline(self, started: float) -> float:
        """When an operation started at ``started`` (this clock) is given up if it has not
        returned."""
        with self._lock:
            end = started + self.timeout
            if self._hurry is None:
                return end
            late = started >= self._hurry
            return min(end, started + self._patience if late else self._hurry)

    def remaining(self) -> float:
        """Seconds before the oldest failing operation (or a new one) is given up."""
        with self._lock:
            now = self._clock()
            oldest = min((since for since, _ in self._failing.values()), default=now)
            left = self.timeout - (now - oldest)
            if self._hurry is not None:
                left = min(left, self._hurry - now)
            return max(0.0, left)

    def hurry(self, seconds: float) -> None:
        """The job is stopping: no wait for the store goes on more than ``seconds`` from now."""
        with self._lock:
            end = self._clock() + seconds
            if self._hurry is None:
                self._hurry, self._patience = end, seconds
            else:
                self._hurry, self._patience = min(self._hurry, end), min(self._patience, seconds)

    def failed(
        self,
        cause: str,
        operation: object,
        *,
        state: str | None = None,
        since: float | None = None,
    ) -> float:
        """``operation`` failed (``cause``: one line, no secret; ``state``: what the outage is,
        if not the store's usual one; ``since``: when it began, if earlier than now, as for a
        call the watchdog cut): how long to wait before its next try. Raises StoreUnavailable
        once it has failed for the timeout (or past ``hurry``)."""
        state = state or self.state
        with self._lock:
            self.check()
            now = self._clock()
            first, delay = self._failing.get(operation, (since or now, self._backoff[0]))
            self._failing[operation] = (first, min(self._backoff[1], delay * 2))
            if self._since is None:
                self._since = first
                log.warning(
                    "the store is %s (%s); retrying for %.0f s",
                    state, cause, self.timeout,
                    extra={"event": "store_lost", "store": self.where},
                )  # fmt: skip
            elapsed = now - first
            hurried = self._hurry is not None and now >= self._hurry
            if elapsed >= self.timeout or hurried:
                self._given_up = StoreUnavailable(
                    f"the store {self.where} has been {state} for {elapsed:.0f} s ({cause}); "
                    "the run stopped and resumes when run again"
                )
                raise self._given_up
            left = self.timeout - elapsed
            if self._hurry is not None:
                left = min(left, self._hurry - now)
            return max(0.0, min(delay, left))

    def over(self, operation: object) -> None:
        """``operation`` succeeded: its outage, if it had one, is over; the store's too once no
        operation is failing."""
        with self._lock:
            if self._failing.pop(operation, None) is None or self._failing:
                return
            if self._since is not None:
                log.warning(
                    "the store is back after %.1f s",
                    self._clock() - self._since,
                    extra={"event": "store_back", "store": self.where},
                )
            self._since = None


@dataclass(order=True)
class _Guarded:
    deadline: float
    number: int
    interrupt: Callable[[], None] = field(compare=False)
    started: float = field(compare=False)
    fired: bool = field(default=False, compare=False)


class Watchdog:
    """Interrupts a call to the store that has not returned by its deadline (``Outage.deadline``
    of when it started; a ``hurry`` moves it closer): one thread for all of a store's calls.
    ``interrupt`` must make the blocked call fail (shutting its connection's socket down)."""

    def __init__(self, outage: Outage, clock: Callable[[], float] = time.monotonic) -> None:
        self._outage = outage
        self._clock = clock
        self._ready = threading.Condition()
        self._guarded: list[_Guarded] = []
        self._numbers = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, interrupt: Callable[[], None]) -> Iterator[_Guarded]:
        """Around one call; ``.fired`` says whether the watchdog cut it (it then counts as
        failing since ``.started``)."""
        started = self._clock()
        entry = _Guarded(self._outage.deadline(started), next(self._numbers), interrupt, started)
        with self._ready:
            heapq.heappush(self._guarded, entry)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="bulk-update-store-watchdog", daemon=True
                )
                self._thread.start()
            self._ready.notify()
        try:
            yield entry
        finally:
            with self._ready, contextlib.suppress(ValueError):
                self._guarded.remove(entry)
                heapq.heapify(self._guarded)

    def nudge(self) -> None:
        """Deadlines moved closer (``Outage.hurry``): look again."""
        with self._ready:
            for entry in self._guarded:
                entry.deadline = self._outage.deadline(entry.started)
            heapq.heapify(self._guarded)
            self._ready.notify()

    def _watch(self) -> None:
        while True:
            with self._ready:
                while not self._guarded:
                    self._ready.wait()
                entry = self._guarded[0]
                left = entry.deadline - self._clock()
                if left > 0:
                    self._ready.wait(left)
                    continue
                heapq.heappop(self._guarded)
                entry.fired = True
            with contextlib.suppress(Exception):  # a connection already gone
                entry.interrupt()
