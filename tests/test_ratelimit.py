"""The rate limiter with an injected clock: spacing, no bursts, job-wide pauses."""

from __future__ import annotations

import asyncio

import pytest

from bulk_update.api.ratelimit import RateLimiter


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


def test_controller_rides_the_servers_limit_and_never_exceeds_the_ceiling() -> None:
    from bulk_update.api.ratelimit import RateController

    controller = RateController(ceiling_rpm=1200, now=0.0)
    assert controller.on_answer(0.1, server_limit_rpm=600) == 600  # told 2R: rides R at once
    assert controller.on_answer(5.0, server_limit_rpm=600) == 600
    assert controller.on_answer(6.0, server_limit_rpm=5000) == 600 + 60  # climbs, 5 %/s
    for second in range(7, 40):
        controller.on_answer(float(second), server_limit_rpm=5000)
    assert controller.rpm == 1200  # never above --rpm


def test_controller_backs_off_on_429_once_a_second_and_recovers() -> None:
    from bulk_update.api.ratelimit import RateController

    controller = RateController(ceiling_rpm=1000, now=0.0)
    assert controller.on_rate_limited(0.0) == 750
    assert controller.on_rate_limited(0.5) == 750  # the same wall, hit by requests in flight
    assert controller.on_rate_limited(1.0) == pytest.approx(562.5)
    assert controller.on_answer(1.5, None) == pytest.approx(562.5)  # not a second yet
    assert controller.on_answer(2.0, None) == pytest.approx(612.5)
    for second in range(3, 30):
        controller.on_answer(float(second), None)
    assert controller.rpm == 1000
    for second in range(30, 60):
        controller.on_rate_limited(float(second))
    assert controller.rpm == 50  # the floor: 5 % of the ceiling


def test_limiter_applies_the_controller_and_pauses_on_an_empty_window() -> None:
    fake = FakeTime()
    limiter = RateLimiter(600, clock=fake.clock, sleep=fake.sleep)
    limiter.observe(limit=60, remaining=5, reset_s=0.1)
    assert limiter.rpm == 60
    assert limiter.interval == pytest.approx(1.0)
    times: list[float] = []

    async def go() -> None:
        await limiter.acquire()
        times.append(fake.now)
        limiter.observe(limit=60, remaining=0, reset_s=30.0)  # wait one request's worth: 1 s
        await limiter.acquire()
        times.append(fake.now)
        limiter.rate_limited(2.0)
        await limiter.acquire()
        times.append(fake.now)

    run(go())
    assert times == pytest.approx([0.0, 1.0, 3.0])
    assert limiter.rpm == 45
