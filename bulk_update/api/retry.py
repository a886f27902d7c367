"""How one row's retries are scheduled: the tenacity strategies (when to stop retrying a row,
how long to wait), built on the verdicts of ``api/answers.py``.

No I/O, no sleeping: the sender (``send.py``) runs them. Transient failures count against
--max-attempts and wait a jittered exponential backoff, or the server's ``retry-after``; 429s
do not count (the rate limiter holds the whole job back) but a row does not wait on them for
ever.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from bulk_update._constants import BACKOFF_BASE_S, BACKOFF_MAX_S
from bulk_update.api.answers import Action, Answer, Verdict
from bulk_update.exceptions import FatalApiError

__all__ = [
    "Attempt",
    "backoff_seconds",
    "last_attempt",
    "should_retry",
    "stop_after_failures",
    "stop_after_rate_limited",
    "stop_when",
    "wait_backoff",
    "wait_for_server",
]


def backoff_seconds(failures: int, jitter: float) -> float:
    """Exponential backoff with jitter: ``min(0.5 * 2**(failures-1), 8) * (1 - 0.25 * jitter)``.

    ``failures`` counts the failed attempts so far (1 after the first); ``jitter`` is in [0, 1).
    """
    exponential: float = BACKOFF_BASE_S * 2.0 ** max(0, failures - 1)
    return min(exponential, BACKOFF_MAX_S) * (1 - 0.25 * jitter)


# The tenacity strategies for one row's retries. Each attempt returns an ``Attempt``: its
# answer, its verdict and the row's tallies so far.


@dataclass(frozen=True, slots=True)
class Attempt:
    answer: Answer
    verdict: Verdict
    requests: int
    failures: int  # transient failures: these count against --max-attempts
    rate_limited: int
    # The job must stop (a circuit breaker that gave up): retry nothing more.
    fatal: FatalApiError | None = None


def _attempt(retry_state: RetryCallState) -> Attempt:
    attempt: Attempt = retry_state.outcome.result()  # type: ignore[union-attr]
    return attempt


def last_attempt(retry_state: RetryCallState) -> Attempt:
    """``retry_error_callback=last_attempt``: a row whose retries a stop strategy ended has
    its last attempt for its outcome, not an error."""
    return _attempt(retry_state)


def should_retry(attempt: Attempt) -> bool:
    """``retry=retry_if_result(should_retry)``: a transient answer, and the job goes on."""
    return attempt.verdict.retryable and attempt.fatal is None


class stop_after_failures(stop_base):
    """Stop after ``max_failures`` transient failures (429s do not count)."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures

    def __call__(self, retry_state: RetryCallState) -> bool:
        return _attempt(retry_state).failures >= self.max_failures


class stop_after_rate_limited(stop_base):
    """Stop after more than ``max_rate_limited`` 429s: a row does not wait on them for ever."""

    def __init__(self, max_rate_limited: int) -> None:
        self.max_rate_limited = max_rate_limited

    def __call__(self, retry_state: RetryCallState) -> bool:
        return _attempt(retry_state).rate_limited > self.max_rate_limited


class stop_when(stop_base):
    """Stop when ``stopped()`` says the job is stopping (a signal, a fatal answer)."""

    def __init__(self, stopped: Callable[[], bool]) -> None:
        self.stopped = stopped

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.stopped()


class wait_backoff(wait_base):
    """Jittered exponential backoff on the row's transient failures (``backoff_seconds``)."""

    def __init__(self, jitter: Callable[[], float] = random.random) -> None:
        self.jitter = jitter

    def __call__(self, retry_state: RetryCallState) -> float:
        return backoff_seconds(_attempt(retry_state).failures, self.jitter())


class wait_for_server(wait_base):
    """The server's ``retry-after`` when it gives one, else ``otherwise``. A 429 waits 0 here:
    the rate limiter holds every request of the job back instead."""

    def __init__(self, otherwise: wait_base) -> None:
        self.otherwise = otherwise

    def __call__(self, retry_state: RetryCallState) -> float:
        verdict = _attempt(retry_state).verdict
        if verdict.action is Action.RATE_LIMITED:
            return 0.0
        if verdict.wait_s is not None:
            return verdict.wait_s
        return self.otherwise(retry_state)
