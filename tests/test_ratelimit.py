"""The rate limiter with an injected clock: spacing, no bursts, job-wide pauses; the budget
its shards share (claims sized to what a shard sends, slots given back when it stops), on both
stores."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import TypeVar

import pytest

from bulk_update.api.ratelimit import RateLimiter
from tests.stores import Backend

T = TypeVar("T")


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


@pytest.fixture
def inline_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim runs at once, not in a thread: on the fake clock no time passes meanwhile (in a
    thread, the other tasks' sleeps would move the clock while the claim runs)."""

    async def inline(function: Callable[..., T], /, *args: object) -> T:
        return function(*args)

    monkeypatch.setattr(asyncio, "to_thread", inline)


class FakeBudget:
    """The job's timeline as the stores keep it, on a fake clock; records each claim's size."""

    def __init__(self, fake: FakeTime) -> None:
        self.fake = fake
        self.next_at = 0.0
        self.claims: list[int] = []

    def claim(self, count: int, interval_s: float) -> float:
        start = max(self.next_at, self.fake.now)
        self.next_at = start + count * interval_s
        self.claims.append(count)
        return start - self.fake.now

    def hold_back(self, seconds: float) -> None:
        self.next_at = max(self.next_at, self.fake.now + seconds)

    def close(self) -> None:
        pass


@pytest.mark.usefixtures("inline_claims")
def test_a_shard_alone_gets_all_of_the_budget() -> None:
    fake = FakeTime()
    budget = FakeBudget(fake)
    limiter = RateLimiter(6000, clock=fake.clock, sleep=fake.sleep, budget=budget)
    times: list[float] = []

    async def caller() -> None:
        for _ in range(50):
            await limiter.acquire()
            times.append(fake.now)

    async def go() -> None:
        await asyncio.gather(*(caller() for _ in range(4)))

    run(go())
    # 200 requests, one every 10 ms from the first: the whole rate, none missed.
    assert sorted(times) == pytest.approx([i * 0.01 for i in range(200)], abs=1e-6)
    assert budget.claims[0] == 25  # a quarter of a second's worth


@pytest.mark.usefixtures("inline_claims")
def test_a_shard_claims_no_more_than_it_sends_on_time_and_grows_back() -> None:
    """Each missed slot is an interval of the whole job's timeline lost to every shard: a
    shard whose workers cannot keep up with a dense claim claims less; fast again, more."""
    fake = FakeTime()
    budget = FakeBudget(fake)
    limiter = RateLimiter(6000, clock=fake.clock, sleep=fake.sleep, budget=budget)
    busy = [0.05]  # one worker, each request 50 ms: one slot in five of a dense claim
    sent: list[float] = []

    async def worker(requests: int) -> None:
        for _ in range(requests):
            await limiter.acquire()
            sent.append(fake.now)
            if busy[0]:
                await fake.sleep(busy[0])

    run(worker(40))
    slow = list(budget.claims)
    assert slow[0] == 25
    # The claims shrank to what one worker sends on time while they last, and (but for the
    # first) few of the slots claimed went unused.
    assert max(slow[-3:]) <= 3
    claimed_after_first = sum(slow[1:]) * 0.01
    assert claimed_after_first <= (sent[-1] - sent[0]) * 0.5
    busy[0] = 0.0
    run(worker(600))
    fast = budget.claims[len(slow) :]
    # Every claim used in full: each next one one larger, back to the quarter second.
    grown = [b - a for a, b in itertools.pairwise(fast) if b < 25]
    assert grown
    assert set(grown) == {1}
    assert fast[-1] == 25


def test_a_shard_that_stops_gives_back_the_slots_it_had_not_begun(backend: Backend) -> None:
    """A shard ending (or stopping) in the middle of its claim would leave the rest of it
    unused by every shard; closed, its budget gives that back to the timeline."""
    with backend.open("j") as store:
        ending = store.budget("j")
        assert ending.claim(10, 1.0) < 1.0  # the timeline was free: 10 slots from now
        ending.close()
        going_on = store.budget("j")
        try:
            assert going_on.claim(1, 1.0) < 1.0  # not 10 s from now: given back
        finally:
            going_on.close()


def test_slots_given_back_never_overlap_a_later_claim(backend: Backend) -> None:
    """Only the end of the timeline can be given back: after another shard's claim (or a
    hold-back), the ending shard's slots stay taken, and no slot is handed out twice."""
    with backend.open("j") as store:
        ending, other = store.budget("j"), store.budget("j")
        try:
            ending.claim(10, 1.0)
            assert other.claim(1, 1.0) >= 9.0
            ending.close()
            assert other.claim(1, 1.0) >= 10.0
            held = store.budget("j")
            held.claim(5, 1.0)
            held.hold_back(30)
            held.close()
            assert other.claim(1, 1.0) >= 29.0
        finally:
            other.close()
