"""The job-wide request-rate limiter: smooth spacing, adaptive to what the server says.

Requests are spaced ``60 / rpm`` seconds apart (no burst above the rate, ever: the first request
goes at once, the next one interval later). ``pause(s)`` holds back every request, including
those already waiting for a slot, until ``s`` seconds from now: a 429's ``retry-after`` applies
to the whole job, not only to the row that got it.

The rate adapts (``RateController``), never above the configured ``--rpm``:
- the server's ``x-ratelimit-limit-requests`` caps it (a job told more than the server allows
  rides the server's limit instead of bouncing off it);
- ``x-ratelimit-remaining-requests: 0`` pauses until a request is allowed again (slowing down
  before the limit is hit rather than after);
- a 429 lowers it by a quarter (at most once a second: in-flight requests all hit the same
  wall) and it climbs back by 5 % of the ceiling each second without one.
Clock and sleep are injected for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DECREASE_FACTOR = 0.75
INCREASE_FRACTION = 0.05
ADJUST_EVERY_S = 1.0
FLOOR_FRACTION = 0.05


class RateController:
    """Decides the current rate from what the server says. Pure: values in, values out."""

    def __init__(self, ceiling_rpm: float, now: float) -> None:
        self.ceiling_rpm = ceiling_rpm
        self.rpm = ceiling_rpm
        self.server_limit_rpm: float | None = None
        self._last_change = now - ADJUST_EVERY_S

    @property
    def cap_rpm(self) -> float:
        if self.server_limit_rpm is None:
            return self.ceiling_rpm
        return min(self.ceiling_rpm, self.server_limit_rpm)

    def on_rate_limited(self, now: float) -> float:
        """A 429: lower the rate (once per second at most). Returns the new rate."""
        if now - self._last_change >= ADJUST_EVERY_S:
            floor = max(1.0, self.ceiling_rpm * FLOOR_FRACTION)
            self.rpm = max(floor, min(self.rpm, self.cap_rpm) * DECREASE_FACTOR)
            self._last_change = now
        return self.rpm

    def on_answer(self, now: float, server_limit_rpm: float | None) -> float:
        """Any other answer: learn the server's limit; climb back if a second has passed."""
        if server_limit_rpm is not None and server_limit_rpm > 0:
            self.server_limit_rpm = server_limit_rpm
        if self.rpm > self.cap_rpm:
            self.rpm = self.cap_rpm
        elif self.rpm < self.cap_rpm and now - self._last_change >= ADJUST_EVERY_S:
            self.rpm = min(self.cap_rpm, self.rpm + self.ceiling_rpm * INCREASE_FRACTION)
            self._last_change = now
        return self.rpm


class RateLimiter:
    def __init__(self, rpm: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self._clock = clock
        self._sleep = sleep
        self.controller = RateController(rpm, clock())
        self.interval = 60.0 / rpm
        self._next_slot = clock()
        self._paused_until = 0.0

    @property
    def rpm(self) -> float:
        return self.controller.rpm

    async def acquire(self) -> None:
        """Wait for this request's slot."""
        while True:
            now = self._clock()
            slot = max(self._next_slot, now, self._paused_until)
            self._next_slot = slot + self.interval
            if slot > now:
                await self._sleep(slot - now)
            # A pause that began while this request waited for its slot holds it back too.
            if self._clock() >= self._paused_until:
                return

    def pause(self, seconds: float) -> None:
        """Hold every request back until ``seconds`` from now (never shortens a pause)."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._paused_until = until
            # Slots handed out inside the pause are void (their holders queue again); slots after
            # it stay valid, so new ones are spaced after them.
            self._next_slot = max(self._next_slot, until)

    def _set_rpm(self, rpm: float) -> None:
        self.interval = 60.0 / rpm

    def rate_limited(self, wait_s: float) -> None:
        """A 429: the whole job waits ``wait_s`` and slows down."""
        self.pause(wait_s)
        self._set_rpm(self.controller.on_rate_limited(self._clock()))

    def observe(self, limit: float | None, remaining: int | None, reset_s: float | None) -> None:
        """Rate-limit headers of an answer that was not a 429."""
        self._set_rpm(self.controller.on_answer(self._clock(), limit))
        if remaining == 0 and limit:
            # The server's window is used up: wait for one request's worth of it to come back.
            one_request_s = 60.0 / limit
            self.pause(min(reset_s, one_request_s) if reset_s is not None else one_request_s)
