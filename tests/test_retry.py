"""retry.py, table-driven: what each answer means, how long to wait."""

from __future__ import annotations

import json

import pytest

from bulk_update.api.answers import (
    Action,
    Answer,
    classify,
    judge_preflight,
    parse_duration,
    parse_retry_after,
)
from bulk_update.api.retry import backoff_seconds

ID = "conv_abc"
NOW = 1_800_000_000.0


def error_body(type_: str = "invalid_request_error", code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": "m", "type": type_, "param": None, "code": code}}
    ).encode()


def ok_body(conversation_id: str = ID) -> bytes:
    return json.dumps(
        {"id": conversation_id, "object": "conversation", "created_at": 1, "metadata": {"a": "b"}}
    ).encode()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # (action, error_code)
        (Answer(200, {}, ok_body()), (Action.DONE, None)),
        (Answer(200, {}, ok_body("conv_other")), (Action.FAIL, "id_mismatch")),
        (Answer(200, {}, b"<html>"), (Action.RETRY, "invalid_response")),
        (Answer(200, {}, b'{"id": "conv_ab'), (Action.RETRY, "invalid_response")),
        (Answer(301, {"location": "https://evil"}, b""), (Action.FAIL, "redirect")),
        (Answer(400, {}, error_body(code="invalid_type")), (Action.FAIL, "invalid_type")),
        (Answer(401, {}, error_body(code="invalid_api_key")), (Action.STOP_JOB, "invalid_api_key")),
        (Answer(403, {}, error_body()), (Action.STOP_JOB, "http_403")),
        (Answer(404, {}, error_body()), (Action.FAIL, "http_404")),
        (Answer(408, {}, b""), (Action.RETRY, "http_408")),
        (Answer(409, {}, error_body(code="conflict")), (Action.RETRY, "conflict")),
        (Answer(422, {}, error_body()), (Action.FAIL, "http_422")),
        (Answer(429, {}, error_body("requests", "rate_limit_exceeded")), (Action.RATE_LIMITED, "rate_limit_exceeded")),
        (Answer(429, {}, error_body("insufficient_quota", "insufficient_quota")), (Action.STOP_JOB, "insufficient_quota")),
        (Answer(500, {}, error_body("server_error")), (Action.RETRY, "http_500")),
        (Answer(502, {}, b"<html>Bad Gateway</html>"), (Action.RETRY, "http_502")),
        (Answer(503, {"x-should-retry": "false"}, b""), (Action.FAIL, "http_503")),
        (Answer(400, {"x-should-retry": "true"}, error_body()), (Action.RETRY, "http_400")),
        (Answer(transport_error="timeout"), (Action.RETRY, "timeout")),
        (Answer(transport_error="connection"), (Action.RETRY, "connection_error")),
        (Answer(429, {"retry-after": "7200"}, b""), (Action.FAIL, "retry_after_too_long")),
    ],
)  # fmt: skip
def test_classify(answer: Answer, expected: tuple[Action, str | None]) -> None:
    verdict = classify(answer, NOW, ID)
    assert (verdict.action, verdict.error_code) == expected
    if verdict.action is not Action.DONE:
        assert verdict.error_message


@pytest.mark.parametrize(
    ("answer", "sent", "expected"),
    [
        # (action, error_code, drop_connection); ok_body's map is {"a": "b"}
        (Answer(200, {}, ok_body("conv_other"), reused=True), None, (Action.RETRY, "connection_error", True)),
        (Answer(200, {}, ok_body("conv_other")), None, (Action.FAIL, "id_mismatch", False)),
        (Answer(200, {}, ok_body(), reused=True, after_same=True), '{"a":"b"}', (Action.DONE, None, False)),
        # after a read of the same conversation, an update's answer without what it sent: a copy
        # of the read's answer, left on the connection
        (Answer(200, {}, ok_body(), reused=True, after_same=True), '{"a":"c"}', (Action.RETRY, "connection_error", True)),
        (Answer(200, {}, ok_body(), reused=True, after_same=True), None, (Action.DONE, None, False)),  # a read
        (Answer(200, {}, ok_body(), reused=True), '{"a":"c"}', (Action.DONE, None, False)),  # after another's
        (Answer(200, {}, ok_body()), '{"a":"c"}', (Action.DONE, None, False)),  # the server's own
        (Answer(404, {}, error_body(), reused=True, after_same=True), '{"a":"c"}', (Action.FAIL, "http_404", False)),
    ],
)  # fmt: skip
def test_an_answer_not_the_requests_on_a_reused_connection_is_stale(
    answer: Answer, sent: str | None, expected: tuple[Action, str | None, bool]
) -> None:
    verdict = classify(answer, NOW, ID, sent)
    assert (verdict.action, verdict.error_code, verdict.drop_connection) == expected
    if verdict.drop_connection:
        assert verdict.error_message is not None
        assert "on a reused connection: a stale answer" in verdict.error_message


def test_non_json_error_message_shows_the_body_start() -> None:
    verdict = classify(Answer(502, {}, b"<html><title>502 Bad Gateway</title></html>"), NOW, ID)
    assert verdict.error_type == "http_error"
    assert verdict.error_message is not None
    assert verdict.error_message.startswith("HTTP 502 with a non-JSON body: <html>")


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ({"retry-after": "junk"}, None),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "Fri, 15 Jan 2027 08:00:10 GMT"}, 10.0),
        ({"retry-after": "Fri, 15 Jan 2027 07:59:00 GMT"}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    now = 1_800_000_000.0  # Fri, 15 Jan 2027 08:00:00 GMT
    assert parse_retry_after(headers, now) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1s", 1.0), ("1.5s", 1.5), ("6m0s", 360.0), ("1m30s", 90.0),
     ("1h", 3600.0), ("", None), ("5", None), ("3x", None), ("1s junk", None)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("failures", "jitter", "seconds"),
    [
        (1, 0.0, 0.5),
        (2, 0.0, 1.0),
        (3, 0.0, 2.0),
        (5, 0.0, 8.0),
        (9, 0.0, 8.0),
        (1, 0.999, 0.375125),
    ],
)
def test_backoff(failures: int, jitter: float, seconds: float) -> None:
    assert backoff_seconds(failures, jitter) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("headers", "parsed"),
    [
        ({}, (None, None, None)),
        ({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
          "x-ratelimit-reset-requests": "1s"}, (60.0, 59, 1.0)),
        ({"x-ratelimit-limit-requests": "junk", "x-ratelimit-remaining-requests": "-1",
          "x-ratelimit-reset-requests": "6m0s"}, (None, None, 360.0)),
    ],
)  # fmt: skip
def test_parse_rate_limit_headers(
    headers: dict[str, str], parsed: tuple[float | None, int | None, float | None]
) -> None:
    from bulk_update.api.answers import parse_rate_limit_headers

    assert parse_rate_limit_headers(headers) == parsed


def _error(message: str, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None,
                   "code": code}}
    ).encode()  # fmt: skip


@pytest.mark.parametrize(
    ("answer", "action"),
    [
        (Answer(200, {}, b'{"id": "conv_1"}'), "go"),
        (Answer(404, {}, _error("Conversation with id 'conv_1' not found.")), "go"),
        (Answer(404, {}, _error("Invalid URL (GET /conversations/conv_1)")), "misconfigured"),
        (Answer(405, {}, _error("Invalid URL (GET /v1/x)")), "misconfigured"),
        (Answer(404, {}, b"<html>Not Found</html>"), "misconfigured"),
        (Answer(301, {"location": "https://elsewhere/v1"}, b""), "misconfigured"),
        (Answer(401, {}, _error("Incorrect API key provided.", "invalid_api_key")), "fatal"),
        (Answer(403, {}, _error("Forbidden.")), "fatal"),
        (Answer(429, {}, _error("quota", "insufficient_quota")), "fatal"),
        (Answer(429, {"retry-after": "2"}, _error("slow down", "rate_limit_exceeded")), "retry"),
        (Answer(503, {}, b"busy"), "retry"),
        (Answer(transport_error="connect", transport_detail="ConnectError: refused"), "retry"),
        (Answer(transport_error="timeout"), "retry"),
        (Answer(400, {}, _error("bad", "invalid_value")), "go"),
    ],
)
def test_judge_preflight(answer: Answer, action: str) -> None:
    assert judge_preflight(answer, 0.0).action == action
