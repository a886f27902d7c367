"""The job-wide request-rate limiter: smooth spacing, and a pause every request obeys.

Requests are spaced ``60 / rpm`` seconds apart (no burst above the rate, ever: the first request
goes at once, the next one interval later). ``pause(s)`` holds back every request, including
those already waiting for a slot, until ``s`` seconds from now: a 429's ``retry-after`` applies
to the whole job, not only to the row that got it. Clock and sleep are injected for tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    def __init__(self, rpm: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep):
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self.interval = 60.0 / rpm
        self._clock = clock
        self._sleep = sleep
        self._next_slot = clock()
        self._paused_until = 0.0

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
