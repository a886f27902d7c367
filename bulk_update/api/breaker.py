"""Circuit breaker: when the API looks down, stop hammering it and stop burning rows' attempts.

``threshold`` consecutive transient failures (5xx, timeouts, connection errors) across the whole
job open the breaker. While open, requests go one at a time (each one a probe) after a cooldown
that doubles from ``cooldown_s`` up to ``max_cooldown_s``; failures while open do not count
against a row's ``--max-attempts``. Any answer that shows the API is up (2xx, 4xx, 429) closes
it. If it stays open longer than ``give_up_after_s`` the job stops (exit 3, resumable) rather
than fail every row: no cooldown reaches past that time, so the last probe comes by it.

``CircuitBreaker`` is the state and its decisions (pure, the clock injected). ``ApiBreaker`` is
the breaker as the sender uses it: told of every answer (``observe``), it says whether a failure
is the outage's rather than the row's, pauses the job's requests for each cooldown (``pause``,
the rate limiter's: the waiting is the limiter's), logs its opening and closing, and gives the
error that stops the job once it has given up; while it is open, requests go one at a time
(``probe``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from bulk_update._constants import DEFAULT_BREAKER_THRESHOLD, DEFAULT_BREAKER_TIMEOUT_S
from bulk_update.api.answers import Action, Answer, Verdict
from bulk_update.exceptions import FatalApiError

__all__ = ["ApiBreaker", "CircuitBreaker", "Observed"]

log = logging.getLogger("bulk_update")

T = TypeVar("T")

DEFAULT_THRESHOLD = DEFAULT_BREAKER_THRESHOLD
DEFAULT_GIVE_UP_AFTER_S = DEFAULT_BREAKER_TIMEOUT_S
DEFAULT_COOLDOWN_S = 1.0
DEFAULT_MAX_COOLDOWN_S = 30.0


class CircuitBreaker:
    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        give_up_after_s: float = DEFAULT_GIVE_UP_AFTER_S,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        max_cooldown_s: float = DEFAULT_MAX_COOLDOWN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.give_up_after_s = give_up_after_s
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self._clock = clock
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.next_cooldown_s = cooldown_s

    @property
    def is_open(self) -> bool:
        return self.opened_at is not None

    def record_up(self) -> bool:
        """An answer that shows the API is up. True if that closed the breaker."""
        self.consecutive_failures = 0
        if self.opened_at is None:
            return False
        self.opened_at = None
        self.next_cooldown_s = self.cooldown_s
        return True

    def record_failure(self) -> float | None:
        """A transient failure. Returns the cooldown to pause for when the breaker is open
        (it just opened, or a probe failed), None while it stays closed."""
        self.consecutive_failures += 1
        if self.opened_at is None:
            if self.consecutive_failures < self.threshold:
                return None
            self.opened_at = self._clock()
        cooldown = self.next_cooldown_s
        self.next_cooldown_s = min(self.next_cooldown_s * 2, self.max_cooldown_s)
        # The last probe comes by the give-up time, not a whole cooldown after it: the job
        # stops within --breaker-timeout (and a probe), not up to 30 s past it.
        return min(cooldown, max(0.0, self.give_up_after_s - self.open_for_s()))

    def open_for_s(self) -> float:
        return 0.0 if self.opened_at is None else self._clock() - self.opened_at

    def gave_up(self) -> bool:
        return self.opened_at is not None and self.open_for_s() >= self.give_up_after_s


@dataclass(frozen=True, slots=True)
class Observed:
    """What the breaker made of an answer. ``outage``: a failure while the breaker is open,
    the outage's and not the row's (it does not count against --max-attempts); ``fatal``: the
    breaker gave up, the job stops."""

    outage: bool = False
    fatal: FatalApiError | None = None


_NOTHING = Observed()
_DURING_OUTAGE = Observed(outage=True)


class ApiBreaker:
    """The job's circuit breaker on the API (see the module's docstring)."""

    def __init__(self, breaker: CircuitBreaker, pause: Callable[[float], None]) -> None:
        self.breaker = breaker
        self._pause = pause
        self._probe = asyncio.Lock()
        # Why the API looked down, the last time it did: named by the breaker's log and stop.
        self.cause = ""

    @property
    def is_open(self) -> bool:
        return self.breaker.opened_at is not None

    async def probe(
        self, acquire: Callable[[], Awaitable[None]], request: Callable[[], Awaitable[T]]
    ) -> T:
        """A request while the breaker is open: one at a time, each one a probe, spaced by the
        cooldown the last failed probe set (``acquire``: the rate limiter's, once more)."""
        async with self._probe:
            if self.is_open:
                await acquire()
            return await request()

    def observe(self, answer: Answer, verdict: Verdict) -> Observed:
        """Tell the breaker of an answer: a failure that says the API is down, or a sign of
        life."""
        if verdict.action is Action.RETRY and (
            answer.transport_error is not None or (answer.http_status or 0) >= 500
        ):
            self.cause = _cause(answer, verdict)
            return self._failed()
        if self.breaker.opened_at is None:  # most answers: the run of failures ends, no more
            self.breaker.consecutive_failures = 0
            return _NOTHING
        if self.breaker.record_up():
            log.warning(
                "API answering again: circuit breaker closed", extra={"event": "breaker_closed"}
            )
        return _NOTHING

    def _failed(self) -> Observed:
        breaker = self.breaker
        cooldown = breaker.record_failure()
        if cooldown is None:
            return _NOTHING
        if breaker.consecutive_failures == breaker.threshold:
            log.warning(
                "API looks down (%d failures in a row, the last: %s): circuit breaker open",
                breaker.consecutive_failures,
                self.cause,
                extra={"event": "breaker_open", "cause": self.cause},
            )
        self._pause(cooldown)
        if not breaker.gave_up():
            return _DURING_OUTAGE
        return Observed(
            outage=True,
            fatal=FatalApiError(
                f"circuit breaker: the API failed every probe for "
                f"{breaker.open_for_s():.0f} s (the last: {self.cause})",
                http_status=None,
                error_code="circuit_breaker",
            ),
        )


def _cause(answer: Answer, verdict: Verdict) -> str:
    """Why an answer says the API is down, in a few words (for the breaker's log and stop)."""
    if answer.transport_error is not None:
        return f"{verdict.error_code}: {answer.transport_detail or answer.transport_error}"[:300]
    return f"HTTP {answer.http_status} {verdict.error_code}: {verdict.error_message}"[:300]
