"""The rate limiter with an injected clock: spacing, no bursts, job-wide pauses; the budget
its shards share (claims sized to what a shard sends, slots given back when it stops), on both
stores."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from bulk_update.api.ratelimit import MAX_SLICE_S, MIN_CLAIM, RateLimiter
from bulk_update.store import Budget
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
    """The job's timeline as the stores keep it, on a fake clock; records each claim."""

    def __init__(self, fake: FakeTime) -> None:
        self.fake = fake
        self.next_at = 0.0
        self.claims: list[int] = []
        self.intervals: list[float] = []

    def claim(self, count: int, interval_s: float) -> float:
        start = max(self.next_at, self.fake.now)
        self.next_at = start + count * interval_s
        self.claims.append(count)
        self.intervals.append(interval_s)
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
    # MIN_CLAIM first (no pace yet), then a quarter second of the rate: 25.
    assert budget.claims[0] == MIN_CLAIM
    assert set(budget.claims[1:]) == {25}


@pytest.mark.usefixtures("inline_claims")
@pytest.mark.parametrize(("workers", "each_s"), [(1, 0.01), (4, 0.1)])
def test_a_shard_slower_than_the_job_sends_its_slices_at_its_own_pace(
    workers: int, each_s: float
) -> None:
    """Far below --rpm (the job's slots 10 us apart), workers sending 100 (or 40) requests a
    second cannot send the slots on time: they send them at their own pace, none dropped after
    the first slice, and claim a quarter second of that pace at once, MIN_CLAIM at least (the
    store's row written once per 25 requests or more, not once per request or two)."""
    fake = FakeTime()
    budget = FakeBudget(fake)
    limiter = RateLimiter(6_000_000, clock=fake.clock, sleep=fake.sleep, budget=budget)
    sent: list[float] = []

    async def worker() -> None:
        for _ in range(400 // workers):
            await limiter.acquire()
            sent.append(fake.now)
            await fake.sleep(each_s)

    async def go() -> None:
        await asyncio.gather(*(worker() for _ in range(workers)))

    run(go())
    # The first slice's slots (10 us apart) all but went by; every later one was sent.
    used = 400 / (sum(budget.claims) - budget.claims[0])
    assert used >= 0.9
    pace = workers / each_s
    assert max(sent) - min(sent) == pytest.approx(400 / pace, rel=0.02)  # no wait for a claim
    assert budget.claims[0] == MIN_CLAIM
    quarter = max(MIN_CLAIM, pace / 4)
    assert all(quarter * 0.8 <= n <= quarter * 1.2 for n in budget.claims[1:])
    assert len(budget.claims) <= 400 / MIN_CLAIM + 2


@pytest.mark.usefixtures("inline_claims")
def test_a_shard_that_keeps_up_drops_a_slot_it_missed_instead_of_a_burst() -> None:
    """A shard that sends on time and stalls once loses the slots the stall missed: after it,
    no two requests are closer than the job's interval (no catching up in a burst)."""
    fake = FakeTime()
    budget = FakeBudget(fake)
    limiter = RateLimiter(6000, clock=fake.clock, sleep=fake.sleep, budget=budget)
    sent: list[float] = []

    async def worker() -> None:
        for n in range(100):
            await limiter.acquire()
            sent.append(fake.now)
            if n == 30:
                await fake.sleep(0.055)  # a stall of five and a half intervals

    run(worker())
    # Any ten intervals hold ten requests at most, and one sent up to an interval late.
    assert min(b - a for a, b in zip(sent, sent[10:], strict=False)) >= 0.1 - 0.01 - 1e-9
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert max(gaps) >= 0.05  # the stall: its slots went by unused
    assert sum(budget.claims) >= 100 + 5


@pytest.mark.usefixtures("inline_claims")
def test_a_429_drops_the_slots_spaced_for_the_faster_rate() -> None:
    fake = FakeTime()
    budget = FakeBudget(fake)
    limiter = RateLimiter(6000, clock=fake.clock, sleep=fake.sleep, budget=budget)

    async def go() -> None:
        for _ in range(3):
            await limiter.acquire()
        claimed = len(budget.claims)
        limiter.rate_limited(0.0)
        await limiter.acquire()
        # A new slice at once, at the slower rate (the old one's 17 slots left are dropped).
        assert len(budget.claims) == claimed + 1
        assert budget.intervals[-1] == pytest.approx(60 / 4500)

    run(go())


class CountingBudget:
    """A store's budget that counts its claims."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.claims: list[int] = []

    def claim(self, count: int, interval_s: float) -> float:
        self.claims.append(count)
        return self.budget.claim(count, interval_s)

    def hold_back(self, seconds: float) -> None:
        self.budget.hold_back(seconds)

    def close(self) -> None:
        self.budget.close()


def test_shards_far_below_the_rpm_write_the_budget_once_per_slice(backend: Backend) -> None:
    """Two shards on one store, no real limit (the job's slots 0.6 us apart), 8 workers each
    answering in about 5 ms: each claims at least MIN_CLAIM slots at once and uses them (in
    real time, on a loaded machine: nothing here depends on how fast)."""

    async def shard(budget: CountingBudget) -> None:
        limiter = RateLimiter(100_000_000, budget=budget)

        async def worker() -> None:
            for _ in range(50):
                await limiter.acquire()
                await asyncio.sleep(0.005)

        await asyncio.gather(*(worker() for _ in range(8)))

    async def both(budgets: list[CountingBudget]) -> None:
        await asyncio.wait_for(asyncio.gather(*(shard(b) for b in budgets)), 120)

    with backend.open("j") as store:
        budgets = [CountingBudget(store.budget("j")) for _ in range(2)]
        try:
            asyncio.run(both(budgets))
        finally:
            for budget in budgets:
                budget.close()
    for budget in budgets:
        # 400 requests; slots dropped would take more claims (at least one slice each time).
        assert min(budget.claims) >= MIN_CLAIM
        assert len(budget.claims) <= 400 / MIN_CLAIM / 2 + 3, budget.claims


def test_a_slice_not_begun_goes_back_when_the_shard_stops(backend: Backend) -> None:
    """A shard at 600 rpm takes a second's slice (10 slots), sends one and stops: the other 9
    go back, and the next shard's first slot is now, not a second away."""

    async def one_request(budget: Budget) -> None:
        await RateLimiter(600, budget=budget).acquire()

    with backend.open("j") as store:
        ending = store.budget("j")
        asyncio.run(one_request(ending))
        ending.close()
        going_on = store.budget("j")
        try:
            assert going_on.claim(1, 0.1) < 0.5
        finally:
            going_on.close()


def test_a_dead_shards_slice_is_lost_for_its_length_at_most(backend: Backend) -> None:
    """A shard that dies (never closes) loses the rest of its slice for every shard, never
    more: the next shard's slot comes at the slice's end, at most MAX_SLICE_S away."""
    with backend.open("j") as store:
        dead, other = store.budget("j"), store.budget("j")
        try:
            interval = 60 / 600
            began = time.monotonic()
            assert dead.claim(round(MAX_SLICE_S / interval), interval) < 0.5
            wait = other.claim(1, interval)
            # The slice ends MAX_SLICE_S after the dead shard's claim ran, which was between
            # ``began`` and the other claim.
            assert MAX_SLICE_S - (time.monotonic() - began) <= wait <= MAX_SLICE_S + 0.001
        finally:
            other.close()


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
