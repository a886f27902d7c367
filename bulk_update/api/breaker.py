"""Circuit breaker: when the API looks down, stop hammering it and stop burning rows' attempts.

``threshold`` consecutive transient failures (5xx, timeouts, connection errors) across the whole
job open the breaker. While open, requests go one at a time (each one a probe) after a cooldown
that doubles from ``cooldown_s`` up to ``max_cooldown_s``; failures while open do not count
against a row's ``--max-attempts``. Any answer that shows the API is up (2xx, 4xx, 429) closes
it. If it stays open longer than ``give_up_after_s`` the job stops (exit 3, resumable) rather
than fail every row: no cooldown reaches past that time, so the last probe comes by it. The
clock is injected; the waiting is done by the caller (the sender).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bulk_update._constants import DEFAULT_BREAKER_THRESHOLD, DEFAULT_BREAKER_TIMEOUT_S

__all__ = ["CircuitBreaker"]

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
        self.times_opened = 0

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
            self.times_opened += 1
        cooldown = self.next_cooldown_s
        self.next_cooldown_s = min(self.next_cooldown_s * 2, self.max_cooldown_s)
        # The last probe comes by the give-up time, not a whole cooldown after it: the job
        # stops within --breaker-timeout (and a probe), not up to 30 s past it.
        return min(cooldown, max(0.0, self.give_up_after_s - self.open_for_s()))

    def open_for_s(self) -> float:
        return 0.0 if self.opened_at is None else self._clock() - self.opened_at

    def gave_up(self) -> bool:
        return self.opened_at is not None and self.open_for_s() >= self.give_up_after_s
