"""A store that is away: one clock per store, shared by every operation of the run.

The first failed try starts the outage; a success ends it. While it lasts, each operation waits
and tries again (``failed`` says how long to wait); once it has lasted the store's timeout
(``--store-timeout``), that operation and every later one fails at once with StoreUnavailable.
So the timeout bounds the whole stop: the writer, the heartbeat, the reads of the results and
the run's end do not each wait a timeout of their own, one after the other.

PostgreSQL's outage is a database that cannot be reached; SQLite's is a file another process
holds locked. Thread-safe: the writer, the heartbeat and the reads run in threads of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bulk_update.exceptions import StoreUnavailable

log = logging.getLogger("bulk_update")


class Outage:
    """``where``: the store as messages name it (never with a password); ``state``: what an
    outage is, in words (``unreachable``, ``locked by another process``); ``backoff``: the first
    and the longest wait between tries."""

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
        self._since: float | None = None
        self._delay = backoff[0]
        self._given_up: StoreUnavailable | None = None

    @property
    def given_up(self) -> bool:
        return self._given_up is not None

    def check(self) -> None:
        """Raise at once if the store was given up (the run is stopping without it)."""
        if self._given_up is not None:
            raise self._given_up

    def remaining(self) -> float:
        """Seconds left before the outage (if one is going on) is given up."""
        with self._lock:
            if self._since is None:
                return self.timeout
            return max(0.0, self.timeout - (self._clock() - self._since))

    def failed(self, cause: str, state: str | None = None) -> float:
        """A try failed (``cause``: one line, no secret; ``state``: what the outage is, if not
        the store's usual one): how long to wait before the next. Raises StoreUnavailable once
        the outage has lasted the timeout."""
        state = state or self.state
        with self._lock:
            self.check()
            now = self._clock()
            if self._since is None:
                self._since = now
                self._delay = self._backoff[0]
                log.warning(
                    "the store is %s (%s); retrying for %.0f s",
                    state, cause, self.timeout,
                    extra={"event": "store_lost", "store": self.where},
                )  # fmt: skip
            elapsed = now - self._since
            if elapsed >= self.timeout:
                self._given_up = StoreUnavailable(
                    f"the store {self.where} has been {state} for {elapsed:.0f} s ({cause}); "
                    "the run stopped and resumes when run again"
                )
                raise self._given_up
            delay, self._delay = self._delay, min(self._backoff[1], self._delay * 2)
            return min(delay, self.timeout - elapsed)

    def over(self) -> None:
        """A try succeeded: the outage, if any, is over."""
        with self._lock:
            if self._since is None:
                return
            log.warning(
                "the store is back after %.1f s",
                self._clock() - self._since,
                extra={"event": "store_back", "store": self.where},
            )
            self._since = None
