"""What an answer means: pure functions from one HTTP answer (status, headers, body) to a
verdict (success, retry, a row failed, the job stopped), and the preflight's judgement.

No I/O, no logging, no sleeping; how retries are scheduled is ``api/retry.py``'s, and the sender
(``send.py``) is the one place that acts on both. The policy is the API's: 408, 409, 429 and 5xx,
timeouts and connection errors are retried; 401, 403 and ``insufficient_quota`` stop the job;
everything else fails the row at once. ``x-should-retry`` overrides the status rule.

An answer that is not the request's, on a connection that carried an earlier answer, is a
stale answer a server left on it (bytes past an answer's end, an unasked second answer): the
connection is broken, not the row. It is dropped and the row retried as a connection error.
The same answer on a fresh connection can only be the server's own (a 2xx for another ID):
the row fails, ``id_mismatch``.
"""

from __future__ import annotations

import email.utils
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bulk_update._constants import FATAL_STATUSES, MAX_RETRY_AFTER_S, RETRYABLE_STATUSES

__all__ = [
    "Action",
    "Answer",
    "Connection",
    "Preflight",
    "Verdict",
    "classify",
    "judge_preflight",
    "parse_duration",
    "parse_rate_limit_headers",
    "parse_retry_after",
]


class Connection(Protocol):
    """The connection an answer came on (the transport's network stream)."""

    async def aclose(self) -> None:
        """Close it: no request goes on it again."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What one request got: a response, or a transport error instead."""

    http_status: int | None = None
    headers: Mapping[str, str] | None = None  # lower-case names
    body: bytes = b""
    # "timeout", "connect" (refused, DNS, TLS: nothing reached the server) or "connection"
    transport_error: str | None = None
    transport_detail: str = ""
    elapsed_s: float = 0.0  # from sending the request to its whole answer (or giving up)
    # It came on a connection that had carried an earlier answer: what a server left there
    # (bytes past that answer's end, an unasked second answer) may have been read as this one;
    # ``after_same``: that earlier answer was to a request for the same conversation.
    reused: bool = False
    after_same: bool = False
    connection: Connection | None = field(default=None, compare=False, repr=False)


class Action(enum.StrEnum):
    """What an answer means for its row and the job."""

    DONE = "done"  # the update landed: the row is updated
    RETRY = "retry"  # a transient failure: try again after a backoff
    RATE_LIMITED = "rate_limited"  # a 429: the whole job pauses, then the row is tried again
    STOP_JOB = "stop_job"  # the key or the quota is refused: every row would fail alike
    FAIL = "fail"  # refused for itself: the row failed, retrying cannot help


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about an Answer."""

    action: Action
    wait_s: float | None = None  # what the server asked for (retry-after), if anything
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    conversation: Mapping[str, Any] | None = None  # the parsed body of a success
    # The answer was not the request's: the connection it came on must carry no other.
    drop_connection: bool = False

    @property
    def retryable(self) -> bool:
        return self.action in (Action.RETRY, Action.RATE_LIMITED)


def parse_retry_after(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (float ms), else ``retry-after`` (seconds or an
    HTTP date). None when absent or unreadable; never negative."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
        except ValueError:
            value = None
        if value is not None and value >= 0 and value == value and value != float("inf"):
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        return max(0.0, when.timestamp() - now_epoch)
    if seconds != seconds or seconds == float("inf"):
        return None
    return max(0.0, seconds)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float | None:
    """Go-style durations of ``x-ratelimit-reset-requests``: ``20ms``, ``1s``, ``6m0s``."""
    text = text.strip()
    if not text:
        return None
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        number, unit = float(match.group(1)), match.group(2)
        total += number * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]
        position = match.end()
    return total if position == len(text) else None


def parse_rate_limit_headers(
    headers: Mapping[str, str],
) -> tuple[float | None, int | None, float | None]:
    """(limit per minute, remaining, seconds until reset) from ``x-ratelimit-*-requests``;
    None for each that is absent or unreadable."""

    def number(name: str) -> float | None:
        try:
            value = float(headers[name])
        except (KeyError, ValueError):
            return None
        return value if value >= 0 and value != float("inf") else None

    limit = number("x-ratelimit-limit-requests")
    remaining = number("x-ratelimit-remaining-requests")
    reset_text = headers.get("x-ratelimit-reset-requests")
    reset = parse_duration(reset_text) if reset_text is not None else None
    return limit, None if remaining is None else int(remaining), reset


def _error_fields(status: int, body: bytes) -> tuple[str, str, str]:
    """(type, code, message) from OpenAI's error body, or made up from the status."""
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        error_type = str(error.get("type") or "api_error")
        code = str(error.get("code") or f"http_{status}")
        message = str(error.get("message") or f"HTTP {status}")
        return error_type, code, message
    text = " ".join(body.decode("utf-8", "replace").split())
    shown = text[:120] + ("…" if len(text) > 120 else "")
    message = f"HTTP {status} with a non-JSON body" + (f": {shown}" if shown else "")
    return "http_error", f"http_{status}", message


def _check_conversation(
    answer: Answer, expected_id: str, sent: str | None, field: str = "metadata"
) -> Verdict:
    """A 2xx is a success only if its body is the conversation that was asked for (and, after
    a request for the same conversation on its connection, an update's answer holds what it
    sent: see ``_stale``)."""
    body = answer.body
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("id"), str):
        # A truncated or mangled body: the update may or may not have landed; sending the same
        # metadata again is harmless, so retry.
        return Verdict(
            Action.RETRY,
            error_type="invalid_response",
            error_code="invalid_response",
            error_message="2xx answer whose body is not a conversation object",
        )
    if parsed["id"] != expected_id:
        shown = repr(str(parsed["id"])[:60])
        if answer.reused:
            return _stale(f"an answer for {shown}")
        return Verdict(
            Action.FAIL,
            error_type="invalid_response",
            error_code="id_mismatch",
            error_message=f"answer is for {shown}, not the conversation sent",
        )
    if answer.after_same and sent is not None and not _holds(parsed.get(field), sent):
        return _stale("an answer that lacks the metadata sent")
    return Verdict(Action.DONE, conversation=parsed)


def _holds(metadata: object, sent: str) -> bool:
    """The server merges an update into its map and answers with the map: it holds every pair
    sent (``sent``: the JSON object)."""
    pairs: dict[str, Any] = json.loads(sent)
    return isinstance(metadata, dict) and all(metadata.get(k) == v for k, v in pairs.items())


def _stale(what: str) -> Verdict:
    """A reused connection gave an answer that is not the request's: one a server left on it
    (past an earlier answer's end, or a second answer nobody asked for), read ahead of the
    request's own, which comes after it. A 2xx for another ID can come so, and, where the
    connection's previous request was for the same conversation (a ``--backup`` or revert
    read, the preflight's), a copy of that read's answer: without the values sent. The
    connection is out of step: dropped, and the row sent again (within --max-attempts)."""
    return Verdict(
        Action.RETRY,
        error_type="transport",
        error_code="connection_error",
        error_message=f"the server sent {what} on a reused connection: a stale answer, left "
        "there after an earlier one, not this request's; the connection was dropped",
        drop_connection=True,
    )


def classify(
    answer: Answer,
    now_epoch: float,
    expected_id: str,
    sent: str | None = None,
    field: str = "metadata",
) -> Verdict:
    """Decide what an answer to a request for ``expected_id`` (an update of ``sent``, the
    metadata's JSON object, or a read) means for its row and the job (``field``: the object's
    map, ``metadata`` or ``attributes``)."""
    if answer.transport_error is not None:
        code = "timeout" if answer.transport_error == "timeout" else "connection_error"
        message = answer.transport_detail or code.replace("_", " ")
        return Verdict(Action.RETRY, error_type="transport", error_code=code, error_message=message)
    status = answer.http_status or 0
    headers = answer.headers or {}
    if 200 <= status < 300:
        return _check_conversation(answer, expected_id, sent, field)
    if 300 <= status < 400:
        return Verdict(
            Action.FAIL,
            error_type="http_error",
            error_code="redirect",
            error_message=f"HTTP {status}: redirects are never followed (the key would go along)",
        )
    error_type, code, message = _error_fields(status, answer.body)
    wait = parse_retry_after(headers, now_epoch)
    if status in FATAL_STATUSES or "insufficient_quota" in (error_type, code):
        return Verdict(
            Action.STOP_JOB, error_type=error_type, error_code=code, error_message=message
        )
    should_retry = headers.get("x-should-retry", "").strip().lower()
    if should_retry in {"true", "false"}:
        retry = should_retry == "true"
    else:
        retry = status in RETRYABLE_STATUSES or status >= 500
    if retry and wait is not None and wait > MAX_RETRY_AFTER_S:
        return Verdict(
            Action.FAIL,
            error_type=error_type,
            error_code="retry_after_too_long",
            error_message=f"server asked to wait {wait:.0f} s, over the {MAX_RETRY_AFTER_S:.0f} s "
            f"cap ({message})",
        )
    action = Action.FAIL
    if retry:
        action = Action.RATE_LIMITED if status == 429 else Action.RETRY
    return Verdict(
        action,
        wait_s=wait,
        error_type=error_type,
        error_code=code,
        error_message=message,
    )


PreflightAction = Literal["go", "retry", "fatal", "misconfigured"]


@dataclass(frozen=True, slots=True)
class Preflight:
    """What the preflight request (a GET of the first row's conversation) says about the key
    and the base URL. ``go``: both work (a 404 for an unknown conversation is fine);
    ``retry``: no verdict yet (busy, down, unreachable); ``fatal``: the key or the quota is
    refused (exit 3); ``misconfigured``: the base URL is not the API (exit 2)."""

    action: PreflightAction
    message: str = ""
    error_code: str | None = None
    wait_s: float | None = None


def judge_preflight(answer: Answer, now_epoch: float) -> Preflight:
    """Judge one preflight answer (pure)."""
    if answer.transport_error is not None:
        return Preflight("retry", answer.transport_detail or answer.transport_error)
    status = answer.http_status or 0
    if 200 <= status < 300:
        return Preflight("go")
    if 300 <= status < 400:
        where = (answer.headers or {}).get("location", "elsewhere")
        return Preflight(
            "misconfigured", f"the base URL answers HTTP {status}, a redirect to {where[:200]}"
        )
    error_type, code, message = _error_fields(status, answer.body)
    if status in FATAL_STATUSES or "insufficient_quota" in (error_type, code):
        return Preflight("fatal", f"HTTP {status} {code}: {message}", error_code=code)
    if status in RETRYABLE_STATUSES or status >= 500:
        wait = parse_retry_after(answer.headers or {}, now_epoch)
        return Preflight("retry", f"HTTP {status} {code}: {message}", code, wait)
    if status in (404, 405) and (error_type == "http_error" or message.startswith("Invalid URL")):
        # The API's own "not found" for an unknown conversation is JSON about the conversation;
        # an unknown path gets "Invalid URL (GET /conversations/...)" or a page of some other
        # server.
        return Preflight(
            "misconfigured",
            f"the base URL does not lead to the Conversations API: HTTP {status}: {message}; "
            "check it (the API's ends in /v1)",
        )
    return Preflight("go")
