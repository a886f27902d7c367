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
one timeline in the store, ``60 / rpm`` seconds apart, and each running shard takes a slice of
the next slots whenever it has used half of its own. However many shards run, together they
never exceed ``--rpm``; a shard left alone gets all of it; a shard that has nothing to send takes
nothing. Each shard's adaptive rate sets how far apart its own slots are (a 429 spaces them out,
so the whole job slows down), and a pause holds the whole timeline back.

A slice is sized so that the store's row is written rarely (a round trip that other shards may
queue behind): a quarter second (``CLAIM_S``) of this shard's own pace (the slots it took per
second lately) or of the whole job's rate, whichever is less, but at least ``MIN_CLAIM`` slots,
and never more than one second of the whole job's rate (``MAX_SLICE_S``: below
``60 * MIN_CLAIM`` rpm a slice is that second, fewer than ``MIN_CLAIM``, so that no shard hoards
the timeline). The first slice is ``MIN_CLAIM`` (no pace yet). So at any rate a claim writes
the row once per ``MIN_CLAIM`` slots of the timeline or per second of it (slots a shard sends:
requests, but for those dropped, see below).

A slice's slots are one after another at the whole job's rate. A shard that keeps up sends each
on time, and a slot it misses by more than one interval (a stall) is dropped rather than sent
late in a burst. A shard slower than the whole job's rate (its workers, not the budget, bound
it: far below a high ``--rpm``, most of its slots went by before a worker was free) sends its
slots at its own pace instead, each up to the time it takes to send two slices at that pace
after its time (``LATE_S`` at least, ``MAX_LATE_S`` at most): a window of time may then hold
more than its share by the slots such a shard holds late (two slices at most, a second's worth
of the job's rate at most per slice), never more in the long run (the timeline is the bound),
and only while it lags. When a shard stops, the budget gives back what it claimed and has not
begun (``Budget.close``); a shard that dies holding a slice loses the rest of it for every
shard, at most ``MAX_SLICE_S`` of the timeline. A 429 drops the shard's remaining slots (they
are spaced at the rate that was too fast; its hold-back moves the timeline past the pause
anyway) and the next slice is claimed at the slower rate.

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

__all__ = [
    "CLAIM_S",
    "LATE_S",
    "MAX_LATE_S",
    "MAX_SLICE_S",
    "MIN_CLAIM",
    "Clock",
    "RateController",
    "RateLimiter",
    "Sleep",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

DECREASE_FACTOR = 0.75
INCREASE_FRACTION = 0.05
ADJUST_EVERY_S = 1.0
FLOOR_FRACTION = 0.05
# A slice of the shared timeline: at least MIN_CLAIM slots (the store's row written at most once
# per MIN_CLAIM requests), else CLAIM_S at the shard's own pace, at most CLAIM_S of the whole
# job's rate and never more than MAX_SLICE_S of it (see the module's docstring).
MIN_CLAIM = 25
CLAIM_S = 0.25
MAX_SLICE_S = 1.0
# How late a lagging shard may send a slot (twice a slice's life at its own pace).
LATE_S = 2 * CLAIM_S
MAX_LATE_S = 2 * MAX_SLICE_S


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
        # The last slice's size; since it was sized: the slots taken, those of them taken more
        # than an interval late, those dropped, and when (see _size_slice).
        self._slice = MIN_CLAIM
        self._pace: float | None = None  # slots this shard took per second lately
        self._lagging = False  # slower than the whole job's rate: its slots may go late
        self._late_s = LATE_S  # by this much, when lagging (two slices at its own pace)
        self._taken = self._late = self._dropped = 0
        self._since = self._clock()
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
        # A slot sent late lands among later slots: a window of time could then hold more
        # requests than --rpm allows. So a slot more than one interval late is dropped (a
        # stalled shard loses the slots it missed instead of catching up in a burst), or more
        # than two slices at its own pace for a shard slower than the job's rate (see the
        # module's docstring).
        stale = self._clock() - max(self.interval, self._late_s if self._lagging else 0.0)
        while self._slots and self._slots[0] < stale:
            self._slots.popleft()
            self._dropped += 1
        if len(self._slots) <= self._slice // 2 and self._refill is None:
            self._refill = asyncio.ensure_future(self._claim())
            self._refill.add_done_callback(_retrieve)
        while not self._slots:
            if self._refill is None:
                self._refill = asyncio.ensure_future(self._claim())
                self._refill.add_done_callback(_retrieve)
            # Shielded: a worker cancelled while it waits does not cancel the claim.
            await asyncio.shield(self._refill)
        slot = self._slots.popleft()
        self._taken += 1
        if slot < self._clock() - self.interval:
            self._late += 1
        return slot

    def _size_slice(self) -> int:
        """Before a claim: this shard's pace and whether it lags, from the slots since the last
        claim; the next slice's size (see the module's docstring)."""
        now = self._clock()
        seen = self._taken + self._dropped
        if seen:
            # Half of them late or dropped: the workers, not the budget, bound this shard.
            self._lagging = 2 * (self._late + self._dropped) >= seen
        if self._taken and now > self._since:
            self._pace = self._taken / (now - self._since)
        self._taken = self._late = self._dropped = 0
        self._since = now
        most = max(1, round(MAX_SLICE_S / self.interval))
        want = float(MIN_CLAIM)
        if self._pace is not None:
            want = max(want, min(CLAIM_S / self.interval, self._pace * CLAIM_S))
        self._slice = min(most, round(want))
        if self._pace is not None:
            self._late_s = min(MAX_LATE_S, max(LATE_S, 2 * self._slice / self._pace))
        return self._slice

    async def _claim(self) -> None:
        assert self._budget is not None
        try:
            interval = self.interval
            count = self._size_slice()
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
        # This shard's slots left are spaced for the rate that was too fast: the next slice
        # comes at the slower one.
        self._slots.clear()

    def observe(self, limit: float | None, remaining: int | None, reset_s: float | None) -> None:
        """Rate-limit headers of an answer that was not a 429."""
        self._set_rpm(self.controller.on_answer(self._clock(), limit))
        if remaining == 0 and limit:
            # The server's window is used up: wait for one request's worth of it to come back.
            one_request_s = 60.0 / limit
            self.pause(min(reset_s, one_request_s) if reset_s is not None else one_request_s)
