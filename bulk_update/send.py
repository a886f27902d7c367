"""Send: one shared HTTP client (``api/client.py``), the job-wide rate limiter, and tenacity
retries.

``Sender.send`` turns a PlannedUpdate into a ``Sent``: the row's outcome, and the fatal error
that must stop the job if the answer was one (401, 403, insufficient_quota, a circuit breaker
that gave up; the row is then ``unprocessed``: it was not refused for itself). It never raises
for what the API or the network does. ``preflight`` checks the key and the base URL before the
first update. The job's ``Stop`` is read, never set, here: once it is set no row is retried.
The concurrency cap is the number of callers (the job's workers), matched by the connection
pool's size. ``fence`` is awaited before every request: the store says whether this process
still holds the run (``Journal.fence``; it raises if not). The clock, sleep, randomness and
transport are injected for tests.

``in_flight`` holds each row whose update ``send`` has in hand (an ``InFlight``: the update and
its requests so far): a worker cancelled there (the job stopping) leaves it behind, and the
pipeline records a row whose update may have reached the server as ``outcome_unknown``, never
as not sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx2
from tenacity import AsyncRetrying, retry_if_result

from bulk_update._constants import (
    DEFAULT_RATE_LIMIT_PAUSE_S,
    MAX_RATE_LIMITED_PER_ROW,
)
from bulk_update.api.answers import (
    Action,
    Answer,
    Preflight,
    Verdict,
    classify,
    judge_preflight,
    parse_rate_limit_headers,
)
from bulk_update.api.breaker import ApiBreaker, CircuitBreaker, Observed
from bulk_update.api.client import ApiClient, ClientSettings
from bulk_update.api.ratelimit import Clock, RateLimiter, Sleep
from bulk_update.api.retry import (
    Attempt,
    backoff_seconds,
    last_attempt,
    should_retry,
    stop_after_failures,
    stop_after_rate_limited,
    stop_when,
    wait_backoff,
    wait_for_server,
)
from bulk_update.api.transport import chosen_transport
from bulk_update.config import JobConfig
from bulk_update.exceptions import ConfigError, FatalApiError, Unreachable
from bulk_update.observe.metrics import Telemetry
from bulk_update.outcome import RowOutcome, Status
from bulk_update.plan import PlannedUpdate
from bulk_update.resources import DEFAULT_RESOURCE, RESOURCES
from bulk_update.server.check import NOT_FOUND
from bulk_update.stop import Stop
from bulk_update.store import Budget

__all__ = ["InFlight", "Read", "SendSettings", "Sender", "Sent"]

log = logging.getLogger("bulk_update")

# Tries of the preflight request before the job goes on without its verdict.
PREFLIGHT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class SendSettings:
    """What the sender needs of the job's options: each field the option of its name
    (``JobConfig.settings_for``), ``client`` the HTTP client's (``ClientSettings``)."""

    client: ClientSettings
    rpm: int
    max_attempts: int
    breaker_threshold: int
    breaker_timeout: float
    resource: str = DEFAULT_RESOURCE  # what is updated: its path, body, answer (resources.py)

    @classmethod
    def from_config(cls, config: JobConfig) -> SendSettings:
        client = ClientSettings(**config.settings_for(ClientSettings), kind=chosen_transport())
        return cls(client=client, **config.settings_for(cls))


@dataclass(frozen=True, slots=True)
class Read:
    """A conversation read before its update: ``metadata``, the server's map (JSON text), or
    ``failed``, the row's outcome when it could not be read (and the job's stop, if fatal)."""

    attempts: int
    http_status: int | None
    request_id: str | None
    created_at: int | None = None
    metadata: str | None = None
    failed: Sent | None = None
    latency_s: float | None = None  # of the read's last request


@dataclass(frozen=True, slots=True)
class Sent:
    """A row's outcome, and the error that stops the job if its answer was fatal."""

    outcome: RowOutcome
    fatal: FatalApiError | None = None
    latency_s: float | None = None  # of the row's last request (None: nothing was sent)


@dataclass(slots=True)
class InFlight:
    """A row's update from the moment ``send`` takes it until its answer is in hand.
    ``attempts``: the requests made for the row (its read first, if any); ``reached``: one of
    its updates may have reached the server (written, or on the wire: any but a connection
    that was never made). The update's ``previous`` is the row's before-image, if it has one."""

    update: PlannedUpdate
    attempts: int = 0
    reached: bool = False


# json.dumps(value, ensure_ascii=False, separators=(",", ":")), without a new encoder a call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _json_text(value: object) -> str | None:
    return None if value is None else _ENCODER.encode(value)


class Sender:
    """``async with Sender(settings, stop) as sender: sent = await sender.send(update)``."""

    def __init__(
        self,
        settings: SendSettings,
        stop: Stop,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
        budget: Budget | None = None,
        telemetry: Telemetry | None = None,
        fence: Callable[[], Awaitable[None]] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.resource = RESOURCES[settings.resource]
        self._fence = fence
        self.telemetry = telemetry
        # ``limiter``: an earlier sender's of the same run (the listing's, ``listing.py``), so
        # that the run's requests keep one pace, and a pause a 429 asked for holds on.
        self.limiter = limiter or RateLimiter(settings.rpm, clock=clock, sleep=sleep, budget=budget)
        self.breaker = ApiBreaker(
            CircuitBreaker(
                threshold=settings.breaker_threshold,
                give_up_after_s=settings.breaker_timeout,
                clock=clock,
            ),
            pause=self.limiter.pause,
        )
        self.stop = stop
        self.requests_sent = 0
        self.reads_sent = 0  # of requests_sent: reads of a conversation before its update
        self.rate_limited = 0  # of requests_sent: answered 429 rate_limit_exceeded
        # By row number: the updates ``send`` has in hand (what a cancelled worker left).
        self.in_flight: dict[int, InFlight] = {}
        self._sleep = sleep
        self._wall_clock = wall_clock
        self._jitter = jitter
        self._client = ApiClient(settings.client, transport=transport)

    async def __aenter__(self) -> Sender:
        await self._client.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.close(exc_type, exc, tb)

    async def _request(
        self, method: str, path: str, body: bytes | None, retry: bool, flight: InFlight | None
    ) -> Answer:
        await self.limiter.acquire()
        if self.breaker.is_open:  # the API looks down: this request is a probe
            return await self.breaker.probe(
                self.limiter.acquire,
                lambda: self._exchange(method, path, body, retry=retry, flight=flight),
            )
        return await self._exchange(method, path, body, retry=retry, flight=flight)

    async def _exchange(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        retry: bool = False,
        flight: InFlight | None = None,
    ) -> Answer:
        """One request, timed, and told to the telemetry (``retry``: not its row's first).
        ``flight``: an update's, counted from the moment it may leave the process."""
        if self._fence is not None:
            await self._fence()  # raises if this process no longer holds the run
        self.requests_sent += 1
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.sending()
        reached = False
        if flight is not None:
            flight.attempts += 1
            reached, flight.reached = flight.reached, True
        try:
            answer = await self._client.exchange(method, path, body)
        except BaseException:  # cancelled (the job stopping): no answer, none in flight
            if telemetry is not None:
                telemetry.sent()
            raise
        if flight is not None and answer.transport_error == "connect":
            flight.reached = reached  # no connection was made: this one never left
        if telemetry is not None:
            telemetry.request(answer, answer.elapsed_s, retry=retry)
            controller = self.limiter.controller
            telemetry.limits(min(controller.rpm, controller.cap_rpm), controller.server_limit_rpm)
        return answer

    async def send(self, update: PlannedUpdate, *, attempts: int = 0) -> Sent:
        """Update the row's conversation (retried, rate limited); its outcome. ``attempts``:
        requests already made for the row (its read). Until the answer is in hand the row is
        in ``in_flight``."""
        flight = self.in_flight[update.row_number] = InFlight(update, attempts)
        body = self.resource.body_of(update.sent_metadata)
        last = await self._call("POST", update.conversation_id, body, flight, update.sent_metadata)
        del self.in_flight[update.row_number]
        return self._outcome(update, last)

    async def read(self, update: PlannedUpdate) -> Read:
        """Read the row's conversation before its update (retried, rate limited, as an update):
        the server's map, or the row's outcome if it cannot be read (404: ``not_found``)."""
        last = await self._call("GET", update.conversation_id, None)
        self.reads_sent += last.requests
        headers = last.answer.headers or {}
        conversation = last.verdict.conversation
        if last.verdict.action is Action.DONE and conversation is not None:
            created_at = conversation.get(self.resource.created)
            return Read(
                attempts=last.requests,
                http_status=last.answer.http_status,
                request_id=headers.get("x-request-id"),
                created_at=created_at if isinstance(created_at, int) else None,
                metadata=_json_text(conversation.get(self.resource.body) or {}),
                latency_s=last.answer.elapsed_s,
            )
        sent = self._outcome(update, last)
        if last.answer.http_status == 404 and sent.outcome.status is Status.FAILED:
            sent = dataclasses.replace(
                sent, outcome=dataclasses.replace(sent.outcome, error_code=NOT_FOUND)
            )
        return Read(
            attempts=last.requests,
            http_status=last.answer.http_status,
            request_id=headers.get("x-request-id"),
            failed=sent,
            latency_s=last.answer.elapsed_s,
        )

    async def _call(
        self,
        method: str,
        conversation_id: str,
        body: bytes | None,
        flight: InFlight | None = None,
        sent: str | None = None,
    ) -> Attempt:
        """One request for a row (an update of ``sent``, the metadata's JSON object, or a
        read), retried (transient failures, 429s) until it is done, failed, or the job stops;
        the last attempt. ``flight``: an update's (see ``InFlight``)."""
        resource = self.resource
        expected_id, field = resource.answer_id(conversation_id), resource.body

        def judge(answer: Answer, now_epoch: float) -> Verdict:
            return classify(answer, now_epoch, expected_id, sent, field)

        return await self._retried_request(
            method, resource.path_of(conversation_id), body, judge, flight
        )

    async def fetch(self, path: str, judge: Callable[[Answer, float], Verdict]) -> Attempt:
        """A GET of ``path`` (with its query) that is no row's (a page of a listing: ``judge``
        says what its answer means), retried and rate limited as a row's request is; the last
        attempt."""
        return await self._retried_request("GET", path, None, judge)

    async def _retried_request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        judge: Callable[[Answer, float], Verdict],
        flight: InFlight | None = None,
    ) -> Attempt:
        """``_call``'s request, whatever it is for: ``judge`` gives each answer's verdict."""
        requests = failures = rate_limited = 0  # the row's, so far

        async def attempt() -> Attempt:
            nonlocal requests, failures, rate_limited
            answer = await self._request(method, path, body, requests > 0, flight)
            verdict = judge(answer, self._wall_clock())
            if verdict.drop_connection:
                await self._client.drop(answer)
            requests += 1
            observed = self._observed(answer, verdict)
            if verdict.action is Action.RATE_LIMITED:
                rate_limited += 1
            elif verdict.action is Action.RETRY and not observed.outage:
                # A 408, a 409, a 5xx, a 2xx that is not a conversation; while the breaker is
                # open, failures are the outage's, not the row's.
                failures += 1
            return Attempt(answer, verdict, requests, failures, rate_limited, observed.fatal)

        first = await attempt()
        if not should_retry(first):
            return first  # most rows: done (or failed) at once, without tenacity's machinery
        return await self._retried(first, attempt)

    def _observed(self, answer: Answer, verdict: Verdict) -> Observed:
        """What every answer tells beyond its row: the rate limiter hears its 429 or its
        x-ratelimit-* headers, the breaker its failure or its sign of life."""
        if verdict.action is Action.RATE_LIMITED:
            self.rate_limited += 1
            self.limiter.rate_limited(verdict.wait_s or DEFAULT_RATE_LIMIT_PAUSE_S)
        elif answer.headers:
            self.limiter.observe(*parse_rate_limit_headers(answer.headers))
        return self.breaker.observe(answer, verdict)

    async def _retried(self, first: Attempt, attempt: Callable[[], Awaitable[Attempt]]) -> Attempt:
        """A row to retry: tenacity takes over, from the attempt just made (its first call
        returns it), so that the stop and wait strategies judge it as any other."""
        made = [first]

        async def again() -> Attempt:
            return made.pop() if made else await attempt()

        retrying = AsyncRetrying(
            stop=(
                stop_after_failures(self.settings.max_attempts)
                | stop_after_rate_limited(MAX_RATE_LIMITED_PER_ROW)
                | stop_when(lambda: self.stop.is_set)
            ),
            wait=wait_for_server(otherwise=wait_backoff(self._jitter)),
            retry=retry_if_result(should_retry),
            retry_error_callback=last_attempt,
            sleep=self._sleep,
            reraise=True,
        )
        last: Attempt = await retrying(again)
        return last

    async def preflight(self, conversation_id: str) -> FatalApiError | None:
        """Before the first update: one GET of a conversation the job will update, to check the
        key and the base URL. A refused key or quota is returned (the job stops, exit 3,
        nothing sent); a base URL that is not the API, or a server that cannot be reached,
        raises ConfigError (exit 2). Busy or failing answers are retried a few times, then
        the job goes on (the breaker and the retries handle an outage)."""
        last = Preflight("retry")
        unreachable = False
        for attempt in range(1, PREFLIGHT_ATTEMPTS + 1):
            await self.limiter.acquire()
            answer = await self._exchange(
                "GET", self.resource.path_of(conversation_id), retry=attempt > 1
            )
            last = judge_preflight(answer, self._wall_clock())
            if last.action == "go":
                return None
            if last.action == "fatal":
                return FatalApiError(
                    f"preflight: {last.message}",
                    http_status=answer.http_status,
                    error_code=last.error_code,
                )
            if last.action == "misconfigured":
                raise ConfigError(f"{self.settings.client.base_url}: {last.message}")
            if answer.http_status == 429:
                self.limiter.rate_limited(last.wait_s or DEFAULT_RATE_LIMIT_PAUSE_S)
            elif attempt < PREFLIGHT_ATTEMPTS:
                await self._sleep(last.wait_s or backoff_seconds(attempt, self._jitter()))
            unreachable = answer.transport_error == "connect"
        if unreachable:
            raise Unreachable(f"cannot reach {self.settings.client.base_url}: {last.message}")
        log.warning(
            "preflight inconclusive (%s); going on", last.message, extra={"event": "preflight"}
        )
        return None

    def _outcome(self, update: PlannedUpdate, tried: Attempt) -> Sent:
        verdict, answer = tried.verdict, tried.answer
        headers = answer.headers or {}
        common: dict[str, Any] = {
            "row_number": update.row_number,
            "conversation_id": update.conversation_id,
            "http_status": answer.http_status,
            "attempts": tried.requests,
            "request_id": headers.get("x-request-id"),
            "sent_metadata": update.sent_metadata,
        }
        if verdict.action is Action.DONE and verdict.conversation is not None:
            created_at = verdict.conversation.get(self.resource.created)
            return Sent(
                RowOutcome(
                    status=Status.UPDATED,
                    created_at=created_at if isinstance(created_at, int) else None,
                    metadata=_json_text(verdict.conversation.get(self.resource.body)),
                    **common,
                ),
                latency_s=answer.elapsed_s,
            )
        errors: dict[str, Any] = {
            "error_type": verdict.error_type,
            "error_code": verdict.error_code,
            "error_message": verdict.error_message,
        }
        fatal = tried.fatal
        if verdict.action is Action.STOP_JOB:
            fatal = FatalApiError(
                f"HTTP {answer.http_status} {verdict.error_code}: {verdict.error_message}",
                http_status=answer.http_status,
                error_code=verdict.error_code,
            )
        if fatal is not None or (verdict.retryable and self.stop.is_set):
            # Not refused for itself (the key, the quota, an outage), or it would have been
            # retried but the job is stopping: not failed, not finished; a re-run sends it.
            return Sent(
                RowOutcome(status=Status.UNPROCESSED, **errors, **common), fatal, answer.elapsed_s
            )
        return Sent(RowOutcome(status=Status.FAILED, **errors, **common), None, answer.elapsed_s)
