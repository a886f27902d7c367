"""A store that is away: how long each operation may keep failing, and one verdict for all.

Each operation that meets the store away (a commit, a read, a heartbeat, a renewal of the run's
lease) waits and tries again (``Tries``, the one loop of both backends) on a clock of its own,
started by its first failure (``failed``; from when that try began: a try that waited before it
failed, in SQLite's busy handler or PostgreSQL's ``lock_timeout``, counts) and ended by its
success (``over``): another operation's success does not end it (a table another session holds
locked can let the heartbeat through while every commit fails). Once any operation has kept
failing for the store's timeout (``--store-timeout``), the store is given up: that operation and
every later one fail at once with StoreUnavailable, and a call still waiting is cut. So the
timeout bounds the whole stop, not each operation's own wait one after the other.

A call that never returns (a database that keeps the connection open but does not answer: a
frozen server, a stalled proxy) is no failure by itself: ``Watchdog`` interrupts it once its
operation has lasted the timeout (``deadline``), and it then counts as failing since it started.

``hurry`` (a signal: the job is stopping) gives every wait at most that many more seconds, and
a call begun after that moment (the outcomes of the rows the drain abandoned, the results read,
the run's end) no more than that many either: a store that answers is not cut for being called
late, one that does not is given up after them, once. The job makes its ``Hurry`` before it
opens its store and hands it over, so that a signal while the store is being opened (held by
another process, frozen) reaches those waits too.

PostgreSQL's outage is a database that cannot be reached or answers no more; SQLite's is a file
another process holds locked. Thread-safe: the writer, the heartbeat and the reads run in
threads of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from bulk_update.exceptions import StoreUnavailable

__all__ = ["Cause", "Hurry", "Outage", "Tries", "Watchdog"]

log = logging.getLogger("bulk_update")

T = TypeVar("T")
# Why a try failed, for ``Outage.failed``: its line (no secret) and what the outage is (None:
# the store's usual state).
Cause = tuple[str, str | None]
# What a try the watchdog cut says, if no try of its operation failed on its own before.
_NO_ANSWER: Cause = ("no answer within --store-timeout", None)


class Hurry:
    """When every wait for a store must end (``until``, on the outage's clock; None: no
    hurry): the job is stopping (a signal), or the store was given up. Made by the job before
    its store exists, shared by the store's waits; ``watch`` is told when ``until`` moves closer
    (the watchdog looks again). Thread-safe: set from the event loop, read by the store's
    threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.until: float | None = None
        self.patience = 0.0  # after ``until``, how long a call begun then may last
        self._watchers: list[Callable[[], None]] = []

    def __call__(self, seconds: float) -> None:
        """No wait for the store goes on more than ``seconds`` from now."""
        with self._lock:
            end = self.clock() + seconds
            if self.until is None:
                self.until, self.patience = end, seconds
            else:
                self.until, self.patience = min(self.until, end), min(self.patience, seconds)
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher()

    def watch(self, watcher: Callable[[], None]) -> None:
        with self._lock:
            self._watchers.append(watcher)

    def lift(self) -> None:
        """The waits it hurried are over (the job's start went through): later ones get their
        time again, until a hurry of their own."""
        with self._lock:
            self.until = None


class Outage:
    """``where``: the store as messages name it (never with a password); ``state``: what an
    outage is, in words (``unreachable``, ``locked by another process``); ``backoff``: the first
    and the longest wait between an operation's tries; ``hurry``: the job's (its clock is this
    outage's), else one of its own."""

    def __init__(
        self,
        where: str,
        timeout: float,
        *,
        state: str = "unreachable",
        backoff: tuple[float, float] = (0.2, 5.0),
        clock: Callable[[], float] = time.monotonic,
        hurry: Hurry | None = None,
    ) -> None:
        self.where = where
        self.timeout = timeout
        self.state = state
        self._backoff = backoff
        self.hurry = hurry or Hurry(clock)
        self._clock = self.hurry.clock
        self._lock = threading.Lock()
        # Operations failing now: when each first failed, and its next wait.
        self._failing: dict[object, tuple[float, float]] = {}
        self._since: float | None = None  # the first failure of the outage going on
        self._given_up: StoreUnavailable | None = None

    @property
    def given_up(self) -> bool:
        return self._given_up is not None

    def check(self) -> None:
        """Raise at once if the store was given up (the run is stopping without it)."""
        if self._given_up is not None:
            raise self._given_up

    def now(self) -> float:
        """This outage's clock: when a try begins (``failed``'s ``since``)."""
        return self._clock()

    def deadline(self, started: float, operation: object = None) -> float:
        """When a call started at ``started`` (this clock) is given up if it has not returned:
        its operation's timeout, counted from the operation's first failing try if it is failing
        already (a retry gets what is left, not a timeout of its own)."""
        with self._lock:
            failing = self._failing.get(operation)
            end = (started if failing is None else min(started, failing[0])) + self.timeout
            hurry = self.hurry.until
            if hurry is None:
                return end
            late = started >= hurry
            return min(end, started + self.hurry.patience if late else hurry)

    def remaining(self) -> float:
        """Seconds before the oldest failing operation (or a new one) is given up."""
        with self._lock:
            now = self._clock()
            oldest = min((since for since, _ in self._failing.values()), default=now)
            return max(0.0, self._left(now, oldest))

    def _left(self, now: float, first: float) -> float:
        """Seconds left at ``now`` to an operation failing since ``first`` (or a hurry)."""
        left = self.timeout - (now - first)
        hurry = self.hurry.until
        return left if hurry is None else min(left, hurry - now)

    def failed(
        self,
        cause: str,
        operation: object,
        *,
        state: str | None = None,
        since: float | None = None,
    ) -> float:
        """``operation`` failed (``cause``: one line, no secret; ``state``: what the outage is,
        if not the store's usual one; ``since``: when the try that failed began, this clock: a
        try that waited before it failed, or that the watchdog cut, counts from then): how long
        to wait before its next try. Raises StoreUnavailable once it has failed for the timeout
        (or past ``hurry``); the calls still waiting are then cut."""
        state = state or self.state
        with self._lock:
            self.check()
            now = self._clock()
            began = now if since is None else min(since, now)
            first, delay = self._failing.get(operation, (began, self._backoff[0]))
            self._failing[operation] = (first, min(self._backoff[1], delay * 2))
            if self._since is None:
                self._since = first
                log.warning(
                    "the store is %s (%s); retrying for %.0f s",
                    state, cause, self.timeout,
                    extra={"event": "store_lost", "store": self.where},
                )  # fmt: skip
            if (left := self._left(now, first)) > 0:
                return min(delay, left)
            elapsed = now - first
            given_up = self._given_up = StoreUnavailable(
                f"the store {self.where} has been {state} for {elapsed:.0f} s ({cause}); "
                "the run stopped and resumes when run again"
            )
        # Nothing will wait for a call still under way (a heartbeat, the lease's renewal, each
        # in its lock wait): it is cut now, not at the end of its own wait.
        self.hurry(0)
        raise given_up

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


@dataclass(eq=False)
class _Guarded:
    interrupt: Callable[[], None]
    started: float
    operation: object
    fired: bool = False


class Watchdog:
    """Interrupts a call to the store that has not returned by its deadline (``Outage.deadline``
    of when it started; a ``hurry`` moves it closer): one thread for all of a store's calls.
    ``interrupt`` must make the blocked call fail (shutting its connection's socket down)."""

    def __init__(self, outage: Outage) -> None:
        self._outage = outage
        self._ready = threading.Condition()
        self._guarded: list[_Guarded] = []
        self._thread: threading.Thread | None = None
        outage.hurry.watch(self.nudge)

    @contextlib.contextmanager
    def guard(self, interrupt: Callable[[], None], operation: object = None) -> Iterator[_Guarded]:
        """Around one call (a try of ``operation``); ``.fired`` says whether the watchdog cut it
        (it then counts as failing since ``.started``)."""
        entry = _Guarded(interrupt, self._outage.now(), operation)
        with self._ready:
            self._guarded.append(entry)
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

    def nudge(self) -> None:
        """Deadlines moved closer (a hurry, the store given up): look again."""
        with self._ready:
            self._ready.notify()

    def _deadline(self, entry: _Guarded) -> float:
        return self._outage.deadline(entry.started, entry.operation)

    def _watch(self) -> None:
        while True:
            with self._ready:
                while not self._guarded:
                    self._ready.wait()
                entry = min(self._guarded, key=self._deadline)
                left = self._deadline(entry) - self._outage.now()
                if left > 0:
                    self._ready.wait(left)
                    continue
                self._guarded.remove(entry)
                entry.fired = True
            with contextlib.suppress(Exception):  # a connection already gone
                entry.interrupt()


class Tries:
    """One operation's tries, on a clock of its own: ``run`` (``arun`` on the event loop) calls
    ``attempt`` until it returns, waiting (``Outage.failed``) after each error that ``away``
    names an outage (a ``Cause``; None: no outage, raised as it is; ``away`` raises what no
    retry mends). Each try first calls ``check``, and is guarded by ``watchdog`` (``interrupt``
    cuts it) if given: a try it cut (``cut``) is the outage the last failure named still (a
    lock waited for to the end of the clock), else a store that does not answer."""

    def __init__(
        self,
        outage: Outage,
        check: Callable[[], None],
        watchdog: Watchdog | None = None,
        interrupt: Callable[[], None] = lambda: None,
    ) -> None:
        self._outage = outage
        self._check = check
        self._watchdog = watchdog
        self._interrupt = interrupt
        self.cut = False  # the watchdog cut the last try
        self._started = 0.0  # when the last try began (the outage's clock)
        self._cause = _NO_ANSWER

    @contextlib.contextmanager
    def _try(self) -> Iterator[None]:
        self._check()
        if self._watchdog is None:
            self._started = self._outage.now()
            yield
        else:
            with self._watchdog.guard(self._interrupt, self) as guarded:
                try:
                    yield
                finally:
                    self.cut, self._started = guarded.fired, guarded.started
        self._outage.over(self)

    def _pause(self, cause: Cause) -> float:
        if not self.cut:
            self._cause = cause
        line, state = self._cause
        return self._outage.failed(line, self, state=state, since=self._started)

    def run(self, attempt: Callable[[], T], away: Callable[[Exception], Cause | None]) -> T:
        while True:
            try:
                with self._try():
                    return attempt()
            except Exception as exc:
                if (cause := away(exc)) is None:
                    raise
            time.sleep(self._pause(cause))

    async def arun(
        self,
        attempt: Callable[[], Awaitable[T]],
        away: Callable[[Exception], Awaitable[Cause | None]],
    ) -> T:
        while True:
            try:
                with self._try():
                    return await attempt()
            except Exception as exc:
                if (cause := await away(exc)) is None:
                    raise
            await asyncio.sleep(self._pause(cause))
