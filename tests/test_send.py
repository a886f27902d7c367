"""send.py against httpx2.MockTransport (unit level; the end-to-end tests use the emulator)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx2
import pytest

from bulk_update.api.client import USER_AGENT
from bulk_update.config import JobConfig
from bulk_update.exceptions import FatalApiError
from bulk_update.outcome import RowOutcome, Status
from bulk_update.plan import PlannedUpdate
from bulk_update.send import Sender, SendSettings
from bulk_update.stop import Stop

KEY = "sk-unit-test-key"
ID = "conv_abc"
UPDATE = PlannedUpdate(7, ID, '{"tier":"gold"}')


def ok(request: httpx2.Request) -> httpx2.Response:
    conversation_id = request.url.path.rsplit("/", 1)[-1]
    body = {"id": conversation_id, "object": "conversation", "created_at": 5,
            "metadata": json.loads(request.content)["metadata"]}  # fmt: skip
    return httpx2.Response(200, json=body, headers={"x-request-id": "req_ok"})


def scripted(
    *answers: httpx2.Response | Exception,
) -> tuple[Callable[..., httpx2.Response], list[httpx2.Request]]:
    """A handler that answers in order, then 200s; it records every request."""
    queue = list(answers)
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if queue:
            answer = queue.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        return ok(request)

    return handler, seen


def settings(**options: object) -> SendSettings:
    """The sender's settings as a job with these options has them."""
    config = JobConfig(input="in.csv", output="out.csv", base_url="https://api.example/v1",
                       api_key=KEY, rpm=10**9, **options)  # type: ignore[arg-type]  # fmt: skip
    return SendSettings.from_config(config)


def send(
    handler: Callable[..., httpx2.Response], update: PlannedUpdate = UPDATE, **options: object
) -> tuple[RowOutcome, FatalApiError | None, Sender, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def go() -> tuple[RowOutcome, FatalApiError | None, Sender]:
        sender = Sender(settings(**options), Stop(), transport=httpx2.MockTransport(handler),
                        sleep=sleep, jitter=lambda: 0.0)  # fmt: skip
        async with sender:
            sent = await sender.send(update)
            return sent.outcome, sent.fatal, sender

    outcome, fatal, sender = asyncio.run(go())
    return outcome, fatal, sender, slept


def test_success_records_what_the_server_returned() -> None:
    handler, seen = scripted()
    outcome, fatal, _, _ = send(handler)
    assert outcome == RowOutcome(
        row_number=7, conversation_id=ID, status=Status.UPDATED, http_status=200, attempts=1,
        request_id="req_ok", created_at=5, metadata='{"tier":"gold"}',
        sent_metadata='{"tier":"gold"}',
    )  # fmt: skip
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "https://api.example/v1/conversations/conv_abc"
    assert json.loads(request.content) == {"metadata": {"tier": "gold"}}
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["content-type"] == "application/json"
    assert "openai-organization" not in request.headers
    assert fatal is None


def test_organization_and_project_headers() -> None:
    handler, seen = scripted()
    send(handler, organization="org-1", project="proj_2")
    assert seen[0].headers["openai-organization"] == "org-1"
    assert seen[0].headers["openai-project"] == "proj_2"


def test_id_is_percent_encoded_even_if_it_got_past_validation() -> None:
    handler, seen = scripted()
    send(handler, PlannedUpdate(1, "conv_a/../b?x#y", '{"k":"v"}'))
    assert seen[0].url.raw_path == b"/v1/conversations/conv_a%2F..%2Fb%3Fx%23y"


def test_transient_failures_are_retried_with_backoff() -> None:
    handler, seen = scripted(
        httpx2.Response(500, json={"error": {"message": "boom", "type": "server_error",
                                              "param": None, "code": None}}),
        httpx2.Response(502, text="<html>bad gateway</html>"),
        httpx2.ConnectError("refused"),
        httpx2.ReadTimeout("slow"),
    )  # fmt: skip
    outcome, _, _, slept = send(handler)
    assert outcome.status is Status.UPDATED
    assert outcome.attempts == 5
    assert len(seen) == 5
    assert slept == pytest.approx([0.5, 1.0, 2.0, 4.0])


def test_max_attempts_bounds_transient_failures() -> None:
    handler, seen = scripted(*[httpx2.Response(503, text="down")] * 10)
    outcome, _, _, _ = send(handler, max_attempts=3)
    assert outcome.status is Status.FAILED
    assert (outcome.attempts, outcome.http_status, outcome.error_code) == (3, 503, "http_503")
    assert len(seen) == 3


def test_rate_limits_pause_the_job_and_do_not_use_up_attempts() -> None:
    limited = httpx2.Response(
        429, headers={"retry-after-ms": "1500"},
        json={"error": {"message": "slow down", "type": "requests", "param": None,
                        "code": "rate_limit_exceeded"}},
    )  # fmt: skip
    handler, seen = scripted(limited, limited, limited, httpx2.Response(500), limited)
    outcome, _, sender, slept = send(handler, max_attempts=2)
    # 4 x 429 + 1 x 500 + the success: only the 500 counted against max_attempts=2.
    assert outcome.status is Status.UPDATED
    assert outcome.attempts == 6
    assert (sender.requests_sent, sender.rate_limited) == (6, 4)  # what history records
    assert len(seen) == 6
    # The per-row wait after a 429 is 0: the limiter's job-wide pause does the waiting.
    assert slept.count(0.0) == 4


def test_server_wait_is_honoured_for_5xx() -> None:
    handler, _ = scripted(httpx2.Response(503, headers={"retry-after": "3"}, text="busy"))
    _, _, _, slept = send(handler)
    assert slept == [3.0]


def test_a_huge_retry_after_fails_the_row_instead_of_stalling() -> None:
    handler, seen = scripted(httpx2.Response(429, headers={"retry-after": "86400"}, text=""))
    outcome, _, _, _ = send(handler)
    assert (outcome.status, outcome.error_code, len(seen)) == (
        Status.FAILED,
        "retry_after_too_long",
        1,
    )


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (401, {"type": "invalid_request_error", "code": "invalid_api_key"}, "invalid_api_key"),
        (403, {"type": "permission_error", "code": None}, "http_403"),
        (429, {"type": "insufficient_quota", "code": "insufficient_quota"}, "insufficient_quota"),
    ],
)
def test_fatal_answers_leave_the_row_unprocessed_and_flag_the_job(
    status: int, body: dict[str, object], code: str
) -> None:
    """The row was not refused for itself (the key, the quota): it stays unprocessed, with the
    answer's code and message, so that a re-run after the fix sends it."""
    handler, seen = scripted(
        httpx2.Response(status, json={"error": {"message": "no", "param": None, **body}})
    )
    outcome, fatal, _, _ = send(handler)
    assert (outcome.status, outcome.error_code, len(seen)) == (Status.UNPROCESSED, code, 1)
    assert outcome.error_message == "no"
    assert outcome.http_status == status
    assert fatal is not None
    assert fatal.http_status == status


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (httpx2.Response(400, json={"error": {"message": "bad", "type": "invalid_request_error",
                                              "param": "metadata", "code": "invalid_type"}}),
         "invalid_type"),
        (httpx2.Response(404, json={"error": {"message": "nope", "type": "invalid_request_error",
                                              "param": None, "code": None}}), "http_404"),
        (httpx2.Response(307, headers={"location": "https://elsewhere.example/steal"}), "redirect"),
        (httpx2.Response(200, json={"id": "conv_other", "object": "conversation",
                                    "created_at": 1, "metadata": {}}), "id_mismatch"),
    ],
)  # fmt: skip
def test_permanent_failures_are_not_retried(response: httpx2.Response, code: str) -> None:
    handler, seen = scripted(response)
    outcome, fatal, _, _ = send(handler)
    assert (outcome.status, outcome.error_code, len(seen)) == (Status.FAILED, code, 1)
    assert fatal is None
    assert outcome.sent_metadata == UPDATE.sent_metadata


def test_the_key_is_not_in_the_settings_repr() -> None:
    assert KEY not in repr(settings())


@pytest.mark.parametrize(
    "answer",
    [httpx2.Response(408), httpx2.Response(409), httpx2.Response(200, content=b"<html>ok</html>")],
)
def test_every_retryable_failure_counts_against_max_attempts(answer: httpx2.Response) -> None:
    """Not only 5xx and connection errors: a 408, a 409 or a 200 that is not a conversation,
    answered forever, ends the row after --max-attempts (it once retried without end)."""
    handler, seen = scripted(*[answer] * 50)
    outcome, _, sender, _ = send(handler, max_attempts=3)
    assert outcome.status is Status.FAILED
    assert (outcome.attempts, len(seen)) == (3, 3)
    assert not sender.breaker.is_open  # the server answered: not an outage


def test_an_update_cut_off_is_left_in_flight_only_once_it_may_have_left() -> None:
    """A cancelled ``send`` (the job stopping) leaves its row in ``in_flight`` for the pipeline
    to record: ``reached`` once a request may have left, not for a connection never made."""

    async def cut(first: httpx2.Response | Exception | None) -> tuple[object, ...]:
        """``UPDATE`` sent, its first request answered ``first`` (None: never answered), cut in
        that wait or in the backoff after it; then another row sent to its answer."""
        waiting = asyncio.Event()

        async def handler(request: httpx2.Request) -> httpx2.Response:
            if not request.url.path.endswith(ID) or waiting.is_set():
                return ok(request)
            if first is None:
                waiting.set()
                await asyncio.sleep(3600)
            elif isinstance(first, Exception):
                raise first
            else:
                return first
            raise AssertionError("never answered")

        async def sleep(seconds: float) -> None:
            if seconds >= 0.1:  # a retry's backoff (not the limiter's next slot)
                waiting.set()
                await asyncio.sleep(3600)

        transport = httpx2.MockTransport(handler)
        sender = Sender(settings(), Stop(), transport=transport, sleep=sleep, jitter=lambda: 0.0)
        async with sender:
            task = asyncio.create_task(sender.send(UPDATE, attempts=1))
            await waiting.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            other = await sender.send(PlannedUpdate(8, "conv_other", '{"tier":"gold"}'))
            assert other.outcome.status is Status.UPDATED
            assert list(sender.in_flight) == [UPDATE.row_number]  # an answered row is not
            flight = sender.in_flight[UPDATE.row_number]
            return flight.update, flight.attempts, flight.reached

    # On the wire when cut: it may have been applied (its read and one update: 2 requests).
    assert asyncio.run(cut(None)) == (UPDATE, 2, True)
    # Cut in the backoff after a connection never made: nothing left the process.
    assert asyncio.run(cut(httpx2.ConnectError("connection refused"))) == (UPDATE, 2, False)
    # Cut in the backoff after an answer that failed, or none in time: it may have been applied.
    busy = httpx2.Response(503, json={"error": {"message": "busy"}})
    assert asyncio.run(cut(busy)) == (UPDATE, 2, True)
    assert asyncio.run(cut(httpx2.ReadTimeout("no answer"))) == (UPDATE, 2, True)


class Connection:
    """A connection as the transports name one (``network_stream``): counts its closings."""

    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


def test_a_stale_answer_drops_its_connection_and_the_row_is_sent_again() -> None:
    """Row 1's answer on a connection, then a copy of it there as row 2's answer (a stale
    answer the server left on it): the connection is closed, row 2 sent again (on another)."""
    first, second = Connection(), Connection()
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if len(seen) <= 2:
            row_1 = {"id": "conv_1", "object": "conversation", "created_at": 5,
                     "metadata": {"tier": "gold"}}  # fmt: skip
            return httpx2.Response(200, json=row_1, extensions={"network_stream": first})
        answer = ok(request)
        answer.extensions["network_stream"] = second
        return answer

    async def go() -> list[RowOutcome]:
        sender = Sender(settings(), Stop(), transport=httpx2.MockTransport(handler),
                        sleep=lambda _: asyncio.sleep(0), jitter=lambda: 0.0)  # fmt: skip
        async with sender:
            rows = [PlannedUpdate(1, "conv_1", '{"tier":"gold"}'),
                    PlannedUpdate(2, "conv_2", '{"tier":"gold"}')]  # fmt: skip
            return [(await sender.send(row)).outcome for row in rows]

    one, two = asyncio.run(go())
    assert (one.status, one.attempts) == (Status.UPDATED, 1)
    assert (two.status, two.attempts, two.metadata) == (Status.UPDATED, 2, '{"tier":"gold"}')
    assert (first.closed, second.closed) == (1, 0)
    assert [r.url.path for r in seen] == ["/v1/conversations/conv_1"] + [
        "/v1/conversations/conv_2"
    ] * 2
