"""The HTTP client: one for the whole job (aiohttp's session, called directly, or an
``httpx2.AsyncClient`` over httpx2's own transport: ``api/transport.py``), and one exchange
with the API as an ``Answer`` (never an exception for what the server or the network does).

What every request gets is decided here and nowhere else: the headers (the key, organization,
project, user agent), the whole-request timeout (``--timeout`` bounds the request from its
start to its last byte, not each step), the 1 MiB cap on an answer, no redirects followed, a
connection pool the size of ``--concurrency``, and TLS as httpx2 does it (verified, with
``SSL_CERT_FILE`` and ``HTTPS_PROXY`` honoured). A transport is injected for tests.

Each answer says whether its connection had carried an earlier one (``Answer.reused``: what a
server left on a kept-alive connection is read first there), whether that one was for the same
conversation (``after_same``), and which connection it was, for ``drop`` to close it when the
answer was not the request's (``api/answers.py`` decides).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import socket
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx2

from bulk_update._constants import MAX_RESPONSE_BYTES
from bulk_update._version import __version__
from bulk_update.api.answers import Answer, Connection
from bulk_update.api.transport import (
    AiohttpTransport,
    Exchanged,
    TransportName,
    cause_in_words,
    make_transport,
    read_capped,
)
from bulk_update.exceptions import ConfigError

__all__ = ["USER_AGENT", "ApiClient", "ClientSettings", "conversation_path"]

USER_AGENT = f"bulk-update/{__version__}"


def conversation_path(conversation_id: str) -> str:
    # The ID was validated to [A-Za-z0-9_-]; quoting anyway keeps the path the path.
    return "conversations/" + quote(conversation_id, safe="")


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What the client is built from: the job's options of the same names (the base URL and
    the key resolved, the organization and project given or from the environment:
    ``JobConfig.settings_for``), and ``kind``, what moves the bytes
    (``api/transport.py``). ``concurrency`` sizes the connection pool."""

    base_url: str
    api_key: str = field(repr=False)
    organization: str | None
    project: str | None
    timeout: float
    concurrency: int
    kind: TransportName = "httpx2"


class ApiClient:
    def __init__(
        self, settings: ClientSettings, *, transport: httpx2.AsyncBaseTransport | None = None
    ) -> None:
        self.timeout = timeout = settings.timeout
        headers = {
            "authorization": f"Bearer {settings.api_key}",
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": USER_AGENT,
        }
        if settings.organization:
            headers["openai-organization"] = settings.organization
        if settings.project:
            headers["openai-project"] = settings.project
        # Built once: every request is these headers and this prefix plus the conversation's
        # path (one URL parse a request, not httpx2's merge of a base URL and a path: 3 parses).
        # The client itself holds only what ``send`` uses: its pool, its transport, no redirects.
        self._prefix = prefix = settings.base_url.rstrip("/") + "/"
        self._url = _url_builder(prefix)
        self._plain_headers = headers
        self._headers = httpx2.Headers(headers)
        self._timeouts = httpx2.Timeout(timeout).as_dict()
        self._deadlines = Deadlines(timeout)
        # aiohttp's per-step timeouts (a connect, each read: a timer armed a read) can never
        # fire before the whole request's, which starts first and is as long: it gets none.
        self._aiohttp_timeouts: dict[str, float | None] = {"connect": None, "read": None}
        # Each connection that has carried an answer (each transport's ``network_stream``), and
        # the path of its last request.
        self._carried: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()
        pool = settings.concurrency
        limits = httpx2.Limits(max_connections=pool, max_keepalive_connections=pool)
        # aiohttp is called directly (``AiohttpTransport.exchange``); any other transport goes
        # under httpx2's client.
        self._aiohttp: AiohttpTransport | None = None
        self._client: httpx2.AsyncClient | None = None
        try:  # both transports load the TLS certificates here
            chosen = transport or make_transport(settings.kind, limits)
            if isinstance(chosen, AiohttpTransport):
                self._aiohttp = chosen
            else:
                self._client = httpx2.AsyncClient(
                    limits=limits, follow_redirects=False, transport=chosen
                )
        except (OSError, ssl.SSLError) as exc:
            named = [f"${v}={os.environ[v]}" for v in ("SSL_CERT_FILE", "SSL_CERT_DIR")
                     if os.environ.get(v)]  # fmt: skip
            where = " or ".join(named) or "the system's certificates"
            raise ConfigError(f"{where}: cannot load the TLS certificates ({exc})") from None

    async def open(self) -> None:
        if self._client is not None:
            await self._client.__aenter__()

    async def close(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        if self._client is not None:
            await self._client.__aexit__(exc_type, exc, tb)
        if self._aiohttp is not None:
            await self._aiohttp.aclose()

    async def exchange(self, method: str, path: str, body: bytes | None) -> Answer:
        """One request and its answer, timed (``elapsed_s``); a timeout or a connection that
        failed is an Answer with ``transport_error`` (``timeout``, ``connect`` or
        ``connection``)."""
        started = time.monotonic()
        # The transports' timeouts are per step (connect, each read): a server dripping a byte
        # at a time would never trip them. --timeout bounds the whole request (``Deadlines``).
        deadline = self._deadlines.start()
        try:
            try:
                if self._aiohttp is not None:
                    status, headers, content, connection = await self._aiohttp.exchange(
                        method, self._prefix + path, self._plain_headers, body,
                        self._aiohttp_timeouts, MAX_RESPONSE_BYTES,
                    )  # fmt: skip
                else:
                    status, headers, content, connection = await self._httpx2_exchange(
                        method, path, body
                    )
            finally:
                timed_out = self._deadlines.end(deadline)
        except asyncio.CancelledError:
            if not timed_out:
                raise  # cancelled for another reason (the job stopping)
            detail = f"no complete answer within {self.timeout:g} s"
            return _failed("timeout", detail, started)
        except httpx2.TimeoutException as exc:
            return _failed("timeout", _describe(exc), started)
        except httpx2.ConnectError as exc:
            return _failed("connect", _describe(exc), started)
        except (httpx2.TransportError, httpx2.DecodingError) as exc:
            # DecodingError: a body that is not in the content-encoding its server named
            return _failed("connection", _describe(exc), started)
        previous = None
        if connection is not None:
            previous = self._carried.get(connection)
            self._carried[connection] = path
        return Answer(
            http_status=status,
            headers=headers,
            body=content,
            elapsed_s=time.monotonic() - started,
            reused=previous is not None,
            after_same=previous == path,
            connection=connection,
        )

    async def _httpx2_exchange(self, method: str, path: str, body: bytes | None) -> Exchanged:
        """One request through httpx2's client (its own transport, or one a test injects)."""
        assert self._client is not None
        request = httpx2.Request(
            method, self._url(path), headers=self._headers, content=body,
            extensions={"timeout": self._timeouts},
        )  # fmt: skip
        response = await self._client.send(request, stream=True)
        try:
            content = await read_capped(response.aiter_bytes(), MAX_RESPONSE_BYTES)
        finally:
            await response.aclose()
        connection: Connection | None = response.extensions.get("network_stream")
        headers = {k.lower(): v for k, v in response.headers.items()}
        return Exchanged(response.status_code, headers, content, connection)

    async def drop(self, answer: Answer) -> None:
        """Close the connection ``answer`` came on: it is out of step (the request's own answer
        is still to come on it), so nothing may be sent on it again. A request already on it
        fails as a connection error, and is retried: it would have read that answer."""
        if answer.connection is not None:
            with contextlib.suppress(OSError):
                await answer.connection.aclose()


class _Deadline:
    """One request's: when its time is up, its task, and how it ended."""

    __slots__ = ("at", "cancelling", "expired", "over", "task")

    def __init__(self, at: float, task: asyncio.Task[Any]) -> None:
        self.at = at
        self.task = task
        self.cancelling = task.cancelling()  # the task's cancellations before this request's
        self.expired = False  # its time ran out, and its task was cancelled for it
        self.over = False


class Deadlines:
    """Every request's whole-request timeout (``seconds``) on one timer: what
    ``asyncio.timeout`` does, without its timer and its context manager a request (they cost
    4 % of the job's CPU, BENCHMARKS.md, issue 38). Every request's timeout is the same, so the
    deadlines come in the order the requests start: one timer, at the earliest deadline of a
    request still running, cancels each request past its own. As ``asyncio.timeout`` does: the
    task is cancelled, and ``end`` tells that cancellation from any other (the job stopping)
    by the task's count of cancellations."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._running: collections.deque[_Deadline] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> _Deadline:
        """A request starts, in the current task."""
        task = asyncio.current_task()
        assert task is not None, "a request runs in a task"
        loop = task.get_loop()
        if loop is not self._loop:  # the first request, or a client used in another loop
            self._loop, self._timer, self._running = loop, None, collections.deque()
        deadline = _Deadline(loop.time() + self.seconds, task)
        self._running.append(deadline)
        if self._timer is None:
            self._timer = loop.call_at(deadline.at, self._expire, loop)
        return deadline

    def end(self, deadline: _Deadline) -> bool:
        """The request is over (answered, failed or cancelled): True if its time ran out and
        that is why its task was cancelled (a CancelledError to take for a timeout)."""
        deadline.over = True
        running = self._running
        while running and running[0].over:
            running.popleft()
        return deadline.expired and deadline.task.uncancel() <= deadline.cancelling

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self._loop:
            return
        self._timer = None
        now = loop.time()
        running = self._running
        while running and (running[0].over or running[0].at <= now):
            deadline = running.popleft()
            if not deadline.over:
                deadline.expired = True
                deadline.task.cancel()
        if running:
            self._timer = loop.call_at(running[0].at, self._expire, loop)


def _failed(error: str, detail: str, started: float) -> Answer:
    return Answer(transport_error=error, transport_detail=detail,
                  elapsed_s=time.monotonic() - started)  # fmt: skip


def _url_builder(prefix: str) -> Callable[[str], httpx2.URL]:
    """``url(path)``: ``prefix + path`` as an ``httpx2.URL``. httpx2 parses and validates every
    URL character by character (a third of the CPU its request model costs); the job's paths
    are percent-encoded already (``conversation_path``), so the prefix is parsed once and each
    URL is the prefix's parts with the path replaced. Checked against httpx2's own parse when
    built: a version of httpx2 whose URL is made otherwise gets the parse, never a wrong URL."""

    def parsed(path: str) -> httpx2.URL:
        return httpx2.URL(prefix + path)

    base = httpx2.URL(prefix)
    parts: Any = getattr(base, "_uri_reference", None)
    if base.query or not hasattr(parts, "_replace") or not isinstance(parts.path, str):
        return parsed
    base_path = parts.path

    def built(path: str) -> httpx2.URL:
        if "?" in path:  # a listing's page: the query is parsed as httpx2 does
            return parsed(path)
        url = httpx2.URL.__new__(httpx2.URL)
        url._uri_reference = parts._replace(path=base_path + path)
        return url

    sample = conversation_path("conv_Probe-_09")
    try:
        same = built(sample) == parsed(sample) and str(built(sample)) == prefix + sample
    except Exception:  # an httpx2 whose URL is not what this expects
        same = False
    return built if same else parsed


# What the root cause of a transport error means, in words an operator searches for.
_CAUSES: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    (socket.gaierror, "DNS lookup failed"),
    (ssl.SSLError, "TLS failed"),
)


def _describe(exc: Exception) -> str:
    """``ConnectError: connection refused ([Errno 111] ...)``: the exception and its root cause
    (httpx2 says "All connection attempts failed" and keeps the reason in the chain)."""
    root: BaseException = exc
    for _ in range(10):
        inner = root.__cause__ or root.__context__
        if inner is None:
            break
        root = inner
    detail = str(exc).strip()
    if root is not exc:
        label = next((words for kind, words in _CAUSES if isinstance(root, kind)), None)
        cause = str(root).strip() or type(root).__name__
        label, cause = cause_in_words(root) or (label, cause)
        detail = f"{label} ({cause})" if label else cause
    detail = " ".join(detail.split())  # one line (aiohttp's parser errors span several)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
