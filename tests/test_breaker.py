"""The circuit breaker with an injected clock."""

from __future__ import annotations

from bulk_update.api.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_and_backs_off() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, give_up_after_s=10, cooldown_s=1, max_cooldown_s=4,
                             clock=clock)  # fmt: skip
    assert [breaker.record_failure() for _ in range(2)] == [None, None]
    assert not breaker.is_open
    assert breaker.record_failure() == 1  # opens: pause 1 s
    assert breaker.is_open
    clock.now = 1.0
    assert [breaker.record_failure() for _ in range(3)] == [2, 4, 4]  # failed probes: capped
    assert breaker.opened_at == 0  # still open since the first: probes never reopen it


def test_any_sign_of_life_closes_and_resets() -> None:
    breaker = CircuitBreaker(threshold=2, clock=Clock())
    breaker.record_failure()
    assert breaker.record_up() is False  # was closed: just resets the run
    assert breaker.record_failure() is None  # the run starts again from 1
    breaker.record_failure()
    assert breaker.is_open
    assert breaker.record_up() is True
    assert not breaker.is_open
    breaker.record_failure()
    assert breaker.record_failure() == breaker.cooldown_s  # cooldown starts over


def test_gives_up_after_the_limit() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, give_up_after_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 4.9
    assert not breaker.gave_up()
    clock.now = 5.0
    assert breaker.gave_up()
    assert breaker.open_for_s() == 5.0


def test_no_cooldown_reaches_past_the_give_up_time() -> None:
    """--breaker-timeout 5 stops the job about 5 s into the outage, not after a 30 s cooldown
    (it took 31 s)."""
    clock = Clock()
    breaker = CircuitBreaker(threshold=1, give_up_after_s=5, cooldown_s=1, max_cooldown_s=30,
                             clock=clock)  # fmt: skip
    waits = []
    while not breaker.gave_up():
        wait = breaker.record_failure()
        assert wait is not None
        waits.append(wait)
        clock.now += wait  # the next probe fails after its cooldown
    assert waits == [1, 2, 2]  # the last cooldown cut to end at 5 s: the probe then decides
    assert clock.now == 5
