"""What moves the bytes: aiohttp (the default) or httpx2's own transport.

The client (``api/client.py``) decides what every request gets; this module chooses what
carries it. httpx2's own transport (httpcore2's pool) spends about three times the CPU of
aiohttp on a request (BENCHMARKS.md, issue 26: a profile of the job put 65 % of its samples in
httpx2's client and httpcore2's pool), so under a high rate limit the job, not the API, would
bound a backfill. ``AiohttpTransport`` sends each request on one ``aiohttp.ClientSession`` and
gives back its status, headers, capped body and connection (``Exchanged``); the client calls
it directly, without httpx2's request and response models (issue 38: they were a fifth of the
job's CPU). httpx2's own transport goes under an ``httpx2.AsyncClient``. Everything else
(headers, the whole-request timeout, the 1 MiB cap, redirects not followed) stays in
``api/client.py``.

Kept as httpx2 does it, so that a run behaves the same on either transport (the tests run the
client's behaviours on both):

- TLS: the SSL context is httpx2's own (``httpx2.create_ssl_context``: verified, with
  ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured).
- Proxies: none. With ``HTTPS_PROXY``, ``HTTP_PROXY`` or ``ALL_PROXY`` set (either case) the job
  uses httpx2's own transport, so that the proxy and ``NO_PROXY`` are read by httpx2's rules,
  exactly as before (aiohttp's differ: no https:// or SOCKS proxy, no CIDR or port in NO_PROXY).
- Errors: aiohttp's exceptions are raised as the httpx2 exceptions httpcore2 raises for the same
  fault (a refused or failed connection, a TLS failure or a DNS failure: ``ConnectError``; a
  connection reset: ``ReadError``; one closed mid-answer or a malformed answer:
  ``RemoteProtocolError``; a timeout: ``ConnectTimeout`` or
  ``ReadTimeout``), with the original as ``__cause__`` so the root cause is named.
- The pool: at most ``pool`` connections, kept alive between requests.
- A connection is never reused while it holds bytes nobody asked for (past an answer's end,
  an unasked second answer): aiohttp's pool would take a pooled connection that is still open,
  whatever arrived on it meanwhile (``_in_step``), and httpcore2 checks the socket, not the
  bytes it already read past an answer (``Httpx2Transport``; not through a proxy). Both close
  such a connection.
- Each answer names its connection as httpcore2 does in its ``network_stream`` extension
  (``Exchanged.connection``): one object for every answer a connection carries (the client
  tells a reused one by it), and ``aclose()`` drops it (the sender does, for an answer that
  was not the request's).

``BULK_UPDATE_TRANSPORT=httpx2`` selects httpx2's own transport (for a user who cannot install
aiohttp, or to compare); without aiohttp installed, or with a proxy set, it is the one used.
"""

from __future__ import annotations

import functools
import os
import ssl
import sys
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, NoReturn

import httpx2

from bulk_update.api.answers import Connection
from bulk_update.exceptions import ConfigError

if TYPE_CHECKING:
    import aiohttp
    from aiohttp.client_proto import ResponseHandler

__all__ = [
    "TRANSPORTS",
    "AiohttpTransport",
    "Exchanged",
    "Httpx2Transport",
    "TransportName",
    "answer_headers",
    "cause_in_words",
    "chosen_transport",
    "make_transport",
    "read_capped",
]

TransportName = Literal["aiohttp", "httpx2"]
TRANSPORTS: tuple[TransportName, ...] = ("aiohttp", "httpx2")
ENVIRONMENT_VARIABLE = "BULK_UPDATE_TRANSPORT"

# Idle connections are closed after this long (httpx2's default keep-alive expiry).
KEEPALIVE_S = 5.0


def _aiohttp_installed() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


# The variables that send httpx2's requests through a proxy (its rules: either case).
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")


def _proxy_set() -> str | None:
    """The first proxy variable set in the environment (either case), if any."""
    for name in PROXY_VARIABLES:
        for variable in (name, name.lower()):
            if os.environ.get(variable):
                return variable
    return None


def chosen_transport() -> TransportName:
    """The transport ``$BULK_UPDATE_TRANSPORT`` names; unset: aiohttp when it is installed and
    no proxy is set, else httpx2's own. A name that is neither, or aiohttp asked for but not
    installed or with a proxy set, is the user's mistake."""
    named = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    proxy = _proxy_set()
    if not named:
        return "aiohttp" if _aiohttp_installed() and proxy is None else "httpx2"
    if named not in TRANSPORTS:
        raise ConfigError(
            f"${ENVIRONMENT_VARIABLE}={named!r}: not a transport (one of: {', '.join(TRANSPORTS)})"
        )
    if named == "aiohttp" and not _aiohttp_installed():
        raise ConfigError(
            f"${ENVIRONMENT_VARIABLE}=aiohttp: aiohttp is not installed "
            "(pip install aiohttp, or unset it to use httpx2's own transport)"
        )
    if named == "aiohttp" and proxy is not None:
        raise ConfigError(
            f"${ENVIRONMENT_VARIABLE}=aiohttp: ${proxy} is set, and a proxy is httpx2's "
            "transport's (unset one of them)"
        )
    return named


def make_transport(
    name: TransportName, limits: httpx2.Limits
) -> AiohttpTransport | httpx2.AsyncBaseTransport | None:
    """What moves the bytes, its pool within ``limits``: aiohttp's session, which the client
    calls directly, or the transport to put under httpx2's client (None: httpx2's own as the
    client makes it: with a proxy set, which httpx2 reads only for a transport it makes; the
    answers' own checks still catch a stale answer, ``api/answers.py``)."""
    if name == "httpx2":
        return Httpx2Transport(limits=limits) if _proxy_set() is None else None
    pool = limits.max_connections
    assert pool is not None, "the job's pool is always bounded"
    return AiohttpTransport(pool=pool, ssl_context=httpx2.create_ssl_context())


class Httpx2Transport(httpx2.AsyncHTTPTransport):
    """httpx2's own transport, which closes a connection that holds bytes past its answer's end.

    httpcore2 reads a socket 64 KiB at a time: bytes a server sent past an answer (in the same
    read) stay in its parser (h11), and the next request on the connection reads them first as
    its answer. httpcore2 checks that an idle connection's socket has nothing to read before it
    reuses it, not its parser's buffer; that is done here, when the answer is closed."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await super().handle_async_request(request)
        response.stream = _ClosedIfLeftOver(
            response.stream, response.extensions.get("network_stream")
        )
        return response


class _ClosedIfLeftOver(httpx2.AsyncByteStream):
    """httpx2's answer body, read as it is; closed, its connection first if bytes are left."""

    def __init__(self, stream: Any, network_stream: Any) -> None:
        self._stream = stream
        self._network_stream = network_stream

    def __aiter__(self) -> AsyncIterator[bytes]:
        iterator: AsyncIterator[bytes] = self._stream.__aiter__()
        return iterator

    async def aclose(self) -> None:
        if self._network_stream is not None and _left_over(self._stream):
            # Closed first: the pool finds it closed when it next takes it, and takes another.
            await self._network_stream.aclose()
        await self._stream.aclose()


def _left_over(stream: object) -> bool:
    """Whether the HTTP/1.1 connection under httpx2's response ``stream`` holds bytes past the
    answer (h11's ``trailing_data``). Reached through httpx2's and httpcore2's private
    attributes: on a version laid out otherwise, False; the answers' own checks still catch
    a stale answer read as a request's (``api/answers.py``)."""
    target: Any = stream
    for name in ("_httpcore_stream", "_stream", "_connection", "_h11_state"):
        target = getattr(target, name, None)
    trailing = getattr(target, "trailing_data", None)
    return isinstance(trailing, tuple) and bool(trailing[0])


class Exchanged(NamedTuple):
    """What one request got: its status, its headers (``answer_headers``), its body (the
    first bytes up to the cap) and the connection it came on."""

    status: int
    headers: dict[str, str]
    body: bytes
    connection: Connection | None


def answer_headers(raw: Sequence[tuple[bytes, bytes]]) -> dict[str, str]:
    """An answer's headers by lower-case name, as ``httpx2.Headers(raw).items()`` gives them
    (a name given twice has its values joined by ", "; names and values decoded as ASCII,
    else as httpx2 decodes them): the common case, ASCII and each name once, without
    building httpx2's headers; any other through them."""
    headers: dict[str, str] = {}
    try:
        for name, value in raw:
            key = name.decode("ascii").lower()
            if key in headers:
                break
            headers[key] = value.decode("ascii")
        else:
            return headers
    except UnicodeDecodeError:
        pass
    return {k.lower(): v for k, v in httpx2.Headers(list(raw)).items()}


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body, or its first ``limit`` bytes: a hostile server cannot make the job hold a
    gigabyte (a cut body is no conversation: ``invalid_response``)."""
    read: list[bytes] = []
    size = 0
    async for chunk in chunks:
        read.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(read)[:limit]


def _let_go(response: aiohttp.ClientResponse) -> None:
    """An answer read: its connection goes back to the pool if the body was read to its end,
    else it is closed (never drained)."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()


async def _read_plain(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """What ``read_capped`` over ``_Body(response)`` reads, without a generator a request (an
    answer in no content-encoding: the API's)."""
    stream = response.content
    chunks: list[bytes] = []
    size = 0
    try:
        if stream.is_eof():  # the whole body came with the answer (the API's do): no wait
            try:
                return stream.read_nowait()[:limit]
            except Exception as exc:
                _raise_as_httpx2(exc)
        while size <= limit and (chunk := await _next_chunk(stream)):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        _let_go(response)
    return b"".join(chunks)[:limit]


async def _next_chunk(content: aiohttp.StreamReader) -> bytes:
    """The next bytes of an answer's body (b"" at its end), aiohttp's errors as httpx2's."""
    try:
        return await content.readany()
    except Exception as exc:
        _raise_as_httpx2(exc)


class _Body(httpx2.AsyncByteStream):
    """An answer's body as aiohttp reads it, under httpx2's response (which decodes it).
    Closed before its end (the 1 MiB cap), the connection is dropped, never drained."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while chunk := await _next_chunk(content):
            yield chunk

    async def aclose(self) -> None:
        _let_go(self._response)


class AiohttpTransport:
    """One ``aiohttp.ClientSession`` (made on first use, in the running loop). The client
    (``api/client.py``) calls ``exchange`` directly: no ``httpx2.Request`` or
    ``httpx2.Response`` is made for a request, which cost a fifth of the job's CPU (BENCHMARKS.md,
    issue 38). What httpx2's response did is done here alike: the headers as its ``items()``
    gives them (``answer_headers``) and, for an answer in a content-encoding, the body decoded
    by httpx2's own response (``_Body`` under it), as before."""

    def __init__(self, *, pool: int, ssl_context: ssl.SSLContext) -> None:
        self._pool = pool
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self._timeout: tuple[dict[str, float | None], aiohttp.ClientTimeout] | None = None

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp

        connector_class, response_class = _in_step()
        connector = connector_class(
            limit=self._pool, limit_per_host=0, ssl=self._ssl, keepalive_timeout=KEEPALIVE_S
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            response_class=response_class,
            # Not aiohttp's trust_env: it reads ~/.netrc and the proxy variables on a thread, for
            # every request (and a proxy is httpx2's transport's: chosen_transport).
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # the API sets none
            auto_decompress=False,  # httpx2's response decodes a content-encoding (``exchange``)
            timeout=aiohttp.ClientTimeout(total=None),  # the client bounds the whole request
            # The answers are small: none compressed (and none in an encoding httpx2 lacks).
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        return self._session

    def _timeout_for(self, timeouts: dict[str, float | None]) -> aiohttp.ClientTimeout:
        """httpx2's per-step timeouts as aiohttp's (made once for the client's one dict)."""
        if self._timeout is None or self._timeout[0] is not timeouts:
            import aiohttp

            made = aiohttp.ClientTimeout(
                total=None, sock_connect=timeouts.get("connect"), sock_read=timeouts.get("read")
            )
            self._timeout = (timeouts, made)
        return self._timeout[1]

    async def exchange(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: dict[str, float | None],
        limit: int,
    ) -> Exchanged:
        """One request: ``url`` as it is (percent-encoded already), no redirect followed, the
        answer's first ``limit`` bytes at most. aiohttp's errors are raised as httpx2's."""
        import yarl

        session = self._session or self._open()
        try:
            response = await session.request(
                method,
                # As given: yarl must not decode it again (a %7E would go as ~).
                yarl.URL(url, encoded=True),
                headers=headers,
                data=body or None,
                allow_redirects=False,
                timeout=self._timeout_for(timeouts),
            )
        except Exception as exc:
            _raise_as_httpx2(exc)
        raw = response.raw_headers
        if "Content-Encoding" in response.headers:
            # Decoded as httpx2 decodes (a body not in its named encoding: DecodingError).
            decoded = httpx2.Response(response.status, headers=raw, stream=_Body(response))
            try:
                content = await read_capped(decoded.aiter_bytes(), limit)
            finally:
                await decoded.aclose()
        else:
            content = await _read_plain(response, limit)
        return Exchanged(
            response.status,
            answer_headers(raw),
            content,
            getattr(response, "network_stream", None),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Stream:
    """One aiohttp connection, as httpcore2's ``network_stream`` extension shows one: the same
    object for every answer the connection carries; ``aclose()`` closes it (the pool then
    finds it closed and opens another; a request on it fails as a connection error)."""

    __slots__ = ("__weakref__", "_protocol")

    def __init__(self, protocol: ResponseHandler) -> None:
        self._protocol = weakref.ref(protocol)  # the registry below is keyed by it: not held

    async def aclose(self) -> None:
        protocol = self._protocol()
        transport = protocol.transport if protocol is not None else None
        if transport is not None:
            transport.close()


# Each aiohttp connection that has carried an answer, and its _Stream.
_STREAMS: weakref.WeakKeyDictionary[ResponseHandler, _Stream] = weakref.WeakKeyDictionary()


@functools.cache
def _in_step() -> tuple[type[aiohttp.TCPConnector], type[aiohttp.ClientResponse]]:
    """aiohttp's connector and response, each with one thing more (made on first use: aiohttp
    is imported only when it is the transport).

    The connector: aiohttp takes a pooled connection if it is still open, whatever arrived on
    it while it waited: a second answer nobody asked for, which aiohttp has parsed and queued,
    would be read as the next request's. Such a connection is closed, and another taken.
    (Bytes that came with an answer, past its end, aiohttp sees when the answer ends: it
    closes that connection itself.) The response: names its connection (``network_stream``)."""
    import aiohttp
    from aiohttp.connector import Connection as Pooled
    from aiohttp.tracing import Trace

    class Connector(aiohttp.TCPConnector):
        async def connect(
            self, req: aiohttp.ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
        ) -> Pooled:
            while True:
                connection = await super().connect(req, traces, timeout)
                protocol = connection.protocol
                if protocol is None or protocol not in _STREAMS or not protocol.should_close:
                    return connection  # a new connection, or one with nothing unasked on it
                connection.close()

    class Response(aiohttp.ClientResponse):
        network_stream: _Stream | None = None

        async def start(self, connection: Pooled) -> aiohttp.ClientResponse:
            protocol: ResponseHandler | None = connection.protocol
            if protocol is not None:
                stream = _STREAMS.get(protocol)
                if stream is None:
                    stream = _STREAMS[protocol] = _Stream(protocol)
                self.network_stream = stream
            return await super().start(connection)

    return Connector, Response


NOT_AN_ANSWER = "the server sent bytes that are not an HTTP answer"


def cause_in_words(cause: BaseException) -> tuple[str, str] | None:
    """What aiohttp's root cause of a transport error means, in words, and its detail; None
    for any other. aiohttp's parser says "400, message: Bad status line…" (the status a
    server would answer a bad request with) where bytes that are not an HTTP answer came
    first: after an answer's end, or on a connection a server had left them on."""
    exceptions = sys.modules.get("aiohttp.http_exceptions")  # not imported: not the cause
    if exceptions is None:
        return None
    if isinstance(cause, exceptions.BadHttpMessage) and not isinstance(
        cause,
        exceptions.PayloadEncodingError,  # a body cut off or mis-encoded: said so
    ):
        return NOT_AN_ANSWER, " ".join(str(cause.message).split())
    return None


def _raise_as_httpx2(exc: Exception) -> NoReturn:
    """Raise the httpx2 exception httpcore2 raises for the same fault, caused by ``exc``."""
    mapped = _as_httpx2(exc)
    if mapped is None:
        raise exc
    raise mapped from exc


@functools.cache
def _httpx2_errors() -> dict[type[BaseException], type[httpx2.TransportError]]:
    """aiohttp's exceptions (and the OS's under them), each with the httpx2 exception httpcore2
    raises for the same fault. An exception takes the entry of the nearest class in its MRO,
    so a subclass needs a row only when it means another fault than its base (aiohttp is
    imported on first use: it is optional)."""
    import aiohttp

    return {
        aiohttp.ConnectionTimeoutError: httpx2.ConnectTimeout,
        aiohttp.ServerTimeoutError: httpx2.ReadTimeout,
        TimeoutError: httpx2.ReadTimeout,
        aiohttp.ClientHttpProxyError: httpx2.ProxyError,
        # refused, DNS, TLS, the proxy unreachable
        aiohttp.ClientConnectorError: httpx2.ConnectError,
        aiohttp.ServerDisconnectedError: httpx2.RemoteProtocolError,
        aiohttp.ClientPayloadError: httpx2.RemoteProtocolError,
        aiohttp.ClientConnectionError: httpx2.ReadError,  # reset, broken pipe
        OSError: httpx2.ReadError,
        aiohttp.InvalidURL: httpx2.UnsupportedProtocol,
        aiohttp.ClientError: httpx2.RemoteProtocolError,  # a malformed answer
    }


def _as_httpx2(exc: Exception) -> httpx2.TransportError | None:
    table = _httpx2_errors()
    for kind in type(exc).__mro__:
        mapped = table.get(kind)
        if mapped is not None:
            return mapped(str(exc) or type(exc).__name__)
    return None
