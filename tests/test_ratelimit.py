"""The rate limiter with an injected clock: spacing, no bursts, job-wide pauses."""

from __future__ import annotations

import asyncio

import pytest

from bulk_update.ratelimit import RateLimiter


class FakeTime:
    """A clock that only moves when someone sleeps; sleeps resolve in time order."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        target = self.now + seconds
        # Yield so other tasks can run, then jump the clock (monotonic: never backwards).
        await asyncio.sleep(0)
        self.now = max(self.now, target)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_requests_are_spaced_evenly_without_a_burst() -> None:
    fake = FakeTime()
    limiter = RateLimiter(600, clock=fake.clock, sleep=fake.sleep)  # one every 100 ms
    times: list[float] = []

    async def go() -> None:
        for _ in range(5):
            await limiter.acquire()
            times.append(fake.now)

    run(go())
    assert times == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])


def test_concurrent_callers_share_the_rate() -> None:
    fake = FakeTime()
    limiter = RateLimiter(60, clock=fake.clock, sleep=fake.sleep)  # one a second
    times: list[float] = []

    async def caller() -> None:
        for _ in range(3):
            await limiter.acquire()
            times.append(fake.now)

    async def go() -> None:
        await asyncio.gather(*(caller() for _ in range(4)))

    run(go())
    assert sorted(times) == pytest.approx([float(i) for i in range(12)])
    # Never two requests in the same second: the rate holds over every window.
    assert len(set(times)) == 12


def test_pause_holds_every_request_back() -> None:
    fake = FakeTime()
    limiter = RateLimiter(600, clock=fake.clock, sleep=fake.sleep)
    times: list[float] = []

    async def go() -> None:
        await limiter.acquire()
        times.append(fake.now)
        limiter.pause(2.0)
        for _ in range(3):
            await limiter.acquire()
            times.append(fake.now)

    run(go())
    assert times == pytest.approx([0.0, 2.0, 2.1, 2.2])


def test_a_shorter_pause_never_shortens_a_longer_one() -> None:
    fake = FakeTime()
    limiter = RateLimiter(600, clock=fake.clock, sleep=fake.sleep)
    limiter.pause(5.0)
    limiter.pause(1.0)
    run(limiter.acquire())
    assert fake.now == pytest.approx(5.0)


def test_rejects_a_non_positive_rate() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(0)
