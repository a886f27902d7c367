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

A job's shards share one budget (``Budget``, in the job's store): the job's request slots are
one timeline in the store, ``60 / rpm`` seconds apart, and each running shard takes the next
few slots (at most a quarter of a second's worth) whenever it has used half of its own.
However many shards run, together they never exceed ``--rpm``; a shard left alone gets all of
it; a shard that has nothing to send takes nothing. Each shard's adaptive rate sets how far
apart its own slots are (a 429 spaces them out, so the whole job slows down), and a pause holds
the whole timeline back.

A shard's slots are one after another at the whole job's rate, so it must send as fast as the
whole job while they last: a slot it misses (no worker free in time) is lost to every shard.
So a shard claims no more at once than it has lately sent on time: the slots it missed shrink
its next claim by as many (by half at most), and each claim it used in full lets the next one
grow by one, back up to the quarter second. When it stops, the budget gives back what it
claimed and has not begun (``Budget.close``).

Clock and sleep are injected for tests.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bulk_update.store import Budget

__all__ = ["Clock", "RateController", "RateLimiter", "Sleep"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DECREASE_FACTOR = 0.75
INCREASE_FRACTION = 0.05
ADJUST_EVERY_S = 1.0
FLOOR_FRACTION = 0.05
# A shard claims at most this much of the shared timeline at once.
CLAIM_S = 0.25


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a background claim's error as seen (a waiting worker meets it too)."""
    if not future.cancelled():
        future.exception()


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
    def __init__(
        self,
        rpm: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        budget: Budget | None = None,
    ):
        if rpm <= 0:
            raise ValueError("rpm must be positive")
        self._clock = clock
        self._sleep = sleep
        self.controller = RateController(rpm, clock())
        self.interval = 60.0 / rpm
        self._next_slot = clock()
        self._paused_until = 0.0
        self._budget = budget
        self._slots: collections.deque[float] = collections.deque()
        # How many slots the next claim may take (see _claim_size), and how many this shard's
        # slots went by unused since its last claim.
        self._claim_limit: int | None = None  # None: CLAIM_S's worth
        self._missed = 0
        self._refill: asyncio.Future[None] | None = None
        self._holding_back: set[asyncio.Future[None]] = set()

    @property
    def rpm(self) -> float:
        return self.controller.rpm

    async def acquire(self) -> None:
        """Wait for this request's slot."""
        while True:
            now = self._clock()
            if self._budget is not None:
                slot = await self._shared_slot()
                now = self._clock()
                if slot < self._paused_until:
                    # A slot inside a pause is void; the timeline is held back past it.
                    await self._sleep(self._paused_until - now)
                    continue
            else:
                slot = max(self._next_slot, now, self._paused_until)
                self._next_slot = slot + self.interval
            if slot > now:
                await self._sleep(slot - now)
            # A pause that began while this request waited for its slot holds it back too.
            if self._clock() >= self._paused_until:
                return

    async def _shared_slot(self) -> float:
        """The next of this shard's slots from the job's budget. More are claimed in the
        background when half are used, so that a claim (a round trip to the store, which may
        wait for another shard's commit) rarely holds a request back."""
        # A slot more than one interval late is dropped: sent late, it would land among later
        # slots, and a window of time could then hold more requests than --rpm allows. So a
        # stalled shard loses the slots it missed instead of catching up in a burst.
        stale = self._clock() - self.interval
        while self._slots and self._slots[0] < stale:
            self._slots.popleft()
            self._missed += 1
        if len(self._slots) <= self._claim_size() // 2 and self._refill is None:
            self._refill = asyncio.ensure_future(self._claim())
            self._refill.add_done_callback(_retrieve)
        while not self._slots:
            if self._refill is None:
                self._refill = asyncio.ensure_future(self._claim())
                self._refill.add_done_callback(_retrieve)
            # Shielded: a worker cancelled while it waits does not cancel the claim.
            await asyncio.shield(self._refill)
        return self._slots.popleft()

    def _claim_size(self) -> int:
        most = max(1, round(CLAIM_S / self.interval))
        return most if self._claim_limit is None else min(most, self._claim_limit)

    def _resize_claim(self) -> None:
        """Before a claim: slots missed since the last one (a claim larger than this shard's
        workers could send on time: each slot is one interval of the whole job's timeline,
        lost to every shard) make the next claim smaller by as many, by half at most (a stall
        of the whole process misses many at once, whatever the claim's size); none missed,
        one larger (up to CLAIM_S's worth)."""
        size = self._claim_size()
        if self._missed:
            self._claim_limit = max(1, size - self._missed, size // 2)
            self._missed = 0
        elif self._claim_limit is not None:
            grown = size + 1
            self._claim_limit = None if grown >= round(CLAIM_S / self.interval) else grown

    async def _claim(self) -> None:
        assert self._budget is not None
        try:
            interval = self.interval
            self._resize_claim()
            count = self._claim_size()
            sent = self._clock()
            delay = await asyncio.to_thread(self._budget.claim, count, interval)
            # ``delay`` counts from the store's clock when the claim ran, somewhere in this
            # round trip: the midpoint halves the error (on a loaded machine the way back, a
            # thread's wake-up and the loop's, can take tens of ms; anchored at its end, the
            # slots would land late, among the next claimer's).
            start = (sent + self._clock()) / 2 + delay
            self._slots.extend(start + i * interval for i in range(count))
        finally:
            self._refill = None

    def _hold_back_budget(self, seconds: float) -> None:
        """Hold the other shards back too (in a thread; a store error here is left to the
        next claim, which meets it too)."""
        if self._budget is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        future = loop.run_in_executor(None, self._budget.hold_back, seconds)
        self._holding_back.add(future)

        def done(future: asyncio.Future[None]) -> None:
            self._holding_back.discard(future)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                future.result()

        future.add_done_callback(done)

    def pause(self, seconds: float) -> None:
        """Hold every request back until ``seconds`` from now (never shortens a pause)."""
        until = self._clock() + seconds
        if until > self._paused_until:
            self._hold_back_budget(seconds)
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
