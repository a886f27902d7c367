"""Both transports under the job's httpx2 client (``api/transport.py``): aiohttp, the default,
and httpx2's own (``BULK_UPDATE_TRANSPORT=httpx2``) behave alike where a user can tell: TLS
verified by default, ``SSL_CERT_FILE`` and ``HTTPS_PROXY`` / ``NO_PROXY`` honoured, failures
classified the same, the pool the size asked for. Real sockets on loopback throughout: a TLS
server with a certificate made here, a CONNECT proxy, a server that counts its connections.
(The whole-request timeout, the 1 MiB cap and redirects are test_hostile_server's, on both.)"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bulk_update.api.answers import Answer
from bulk_update.api.client import ApiClient, ClientSettings, conversation_path
from bulk_update.api.transport import (
    TRANSPORTS,
    TransportName,
    _raise_as_httpx2,
    answer_headers,
    chosen_transport,
)
from bulk_update.exceptions import ConfigError
from tests.conftest import TEST_KEY
from tests.helpers import cli, read_request, requested_id, serve_on_loopback

BOTH = pytest.mark.parametrize("kind", TRANSPORTS)


def _conversation(conversation_id: str) -> bytes:
    return json.dumps({"id": conversation_id, "object": "conversation", "created_at": 1,
                       "metadata": {}}).encode()  # fmt: skip


def _answer(
    conn: socket.socket | ssl.SSLSocket,
    delay_s: float = 0.0,
    extra: bytes = b"",
    busy: Callable[[int], None] = lambda _: None,
) -> None:
    """Read one request, answer it with its conversation (after ``delay_s``; ``extra``: more
    header lines), close. ``busy(1)`` once the request is read, ``busy(-1)`` before the answer
    goes: the client cannot send its next request on a freed connection before that."""
    request = read_request(conn)
    if request is None:
        return
    busy(1)
    time.sleep(delay_s)
    busy(-1)
    conversation_id = requested_id(request[0])
    answer = _conversation(conversation_id)
    status = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(answer)}"
    conn.sendall(status.encode() + b"\r\nconnection: close\r\n" + extra + b"\r\n" + answer)


class Server:
    """HTTP/1.1 on loopback, a thread a connection; ``wrap`` makes it TLS. Counts the requests
    it holds at once, read and not yet answered (``most``)."""

    def __init__(
        self,
        wrap: Callable[[socket.socket], socket.socket] | None = None,
        delay_s: float = 0.0,
        extra: bytes = b"",
    ) -> None:
        self.wrap, self.delay_s, self.extra = wrap, delay_s, extra
        self.open = self.most = self.served = 0
        self.lock = threading.Lock()
        self.sock, self.port = serve_on_loopback(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        # OSError: a TLS handshake the client refused
        with contextlib.suppress(OSError), self.wrap(conn) if self.wrap else conn as served:
            _answer(served, self.delay_s, self.extra, self._busy)
            self.served += 1

    def _busy(self, change: int) -> None:
        with self.lock:
            self.open += change
            self.most = max(self.most, self.open)

    def close(self) -> None:
        self.sock.close()


class ConnectProxy:
    """An HTTPS proxy: ``CONNECT host:port``, then bytes both ways. Records the targets."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.sock, self.port = serve_on_loopback(self._tunnel)

    def _tunnel(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            method, target, _ = head.split(b" ", 2)
            assert method == b"CONNECT", head
            self.targets.append(target.decode())
            host, port = target.decode().rsplit(":", 1)
            with socket.create_connection((host, int(port))) as upstream:
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                ends = [conn, upstream]
                while True:
                    readable, _, _ = select.select(ends, [], [], 5)
                    if not readable:
                        return
                    for end in readable:
                        data = end.recv(65536)
                        if not data:
                            return
                        (upstream if end is conn else conn).sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A CA (its certificate: what SSL_CERT_FILE names) and a server certificate for
    127.0.0.1 that it signed: (ca.pem, server.pem, server-key.pem)."""
    folder = tmp_path_factory.mktemp("tls")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bulk-update test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                       key_agreement=False, encipher_only=False, decipher_only=False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
                       ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )  # fmt: skip
    return paths


@pytest.fixture
def tls_server(certificates: tuple[Path, Path, Path]) -> Iterator[Server]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates[1], certificates[2])
    server = Server(wrap=lambda conn: context.wrap_socket(conn, server_side=True))
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxies and certificates only where a test sets them."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY",
                 "NO_PROXY", "https_proxy", "http_proxy", "all_proxy", "no_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


def exchange(kind: TransportName, base_url: str, count: int = 1, pool: int = 4) -> list[Answer]:
    """``count`` updates at once through a fresh client (its transport made now: the
    environment as it is now)."""

    async def run() -> list[Answer]:
        client = ApiClient(ClientSettings(base_url, TEST_KEY, organization=None, project=None,
                                          timeout=10, concurrency=pool, kind=kind))  # fmt: skip
        await client.open()
        try:
            return await asyncio.gather(*(
                client.exchange("POST", conversation_path(f"conv_{i}"), b'{"metadata":{}}')
                for i in range(count)
            ))  # fmt: skip
        finally:
            await client.close()

    return asyncio.run(run())


@BOTH
def test_tls_is_verified_by_default(kind: TransportName, tls_server: Server) -> None:
    (answer,) = exchange(kind, f"https://127.0.0.1:{tls_server.port}/v1")
    assert answer.transport_error == "connect"
    assert "TLS failed" in answer.transport_detail, answer.transport_detail
    assert "CERTIFICATE_VERIFY_FAILED" in answer.transport_detail
    assert tls_server.served == 0


@BOTH
def test_ssl_cert_file_is_honoured(
    kind: TransportName,
    tls_server: Server,
    certificates: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates[0]))
    (answer,) = exchange(kind, f"https://127.0.0.1:{tls_server.port}/v1")
    assert answer.http_status == 200, answer
    assert json.loads(answer.body)["id"] == "conv_0"
    assert answer.headers is not None
    assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize("variable", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_a_proxy_is_httpx2s_and_honoured_with_no_proxy_too(
    variable: str,
    tls_server: Server,
    certificates: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A proxy in the environment: the job takes httpx2's transport (its proxy rules, as
    before aiohttp), whose requests go through it, and straight to a NO_PROXY host."""
    proxy = ConnectProxy()
    try:
        monkeypatch.delenv("BULK_UPDATE_TRANSPORT", raising=False)
        monkeypatch.setenv("SSL_CERT_FILE", str(certificates[0]))
        monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.port}")
        kind = chosen_transport()
        assert kind == "httpx2"
        base_url = f"https://127.0.0.1:{tls_server.port}/v1"
        answers = exchange(kind, base_url, count=3)
        assert [a.http_status for a in answers] == [200, 200, 200]
        assert proxy.targets
        assert set(proxy.targets) == {f"127.0.0.1:{tls_server.port}"}
        through = len(proxy.targets)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        (answer,) = exchange(chosen_transport(), base_url)
        assert answer.http_status == 200
        assert len(proxy.targets) == through  # straight to the server
        monkeypatch.setenv("BULK_UPDATE_TRANSPORT", "aiohttp")  # asked for with a proxy: refused
        with pytest.raises(ConfigError, match=f"aiohttp: \\${variable} is set"):
            chosen_transport()
    finally:
        proxy.close()


def test_the_cli_goes_through_the_proxy(
    tls_server: Server, certificates: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    proxy = ConnectProxy()
    try:
        source = tmp_path / "in.csv"
        source.write_text("conversation_id,a\nconv_1,x\nconv_2,y\n")
        done = cli("run", str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
                   f"https://127.0.0.1:{tls_server.port}/v1", "--quiet",
                   SSL_CERT_FILE=str(certificates[0]),
                   HTTPS_PROXY=f"http://127.0.0.1:{proxy.port}")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert tls_server.served == 3  # the preflight and two updates
        assert len(proxy.targets) >= 1
        assert set(proxy.targets) == {f"127.0.0.1:{tls_server.port}"}
    finally:
        proxy.close()


def _kept_alive_answer(conversation_id: str) -> bytes:
    body = _conversation(conversation_id)
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


Reply = Callable[[socket.socket, str], None]


class KeptAlive:
    """HTTP/1.1 on loopback, connections kept alive: the n-th request to arrive is answered by
    ``replies[n]``, any later one with its conversation. Counts the connections it accepted."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.sock, self.port = serve_on_loopback(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        self.connections += 1
        with conn, contextlib.suppress(OSError):
            while (request := read_request(conn)) is not None:
                conversation_id = requested_id(request[0])
                reply = self.replies.pop(0) if self.replies else None
                if reply is None:
                    conn.sendall(_kept_alive_answer(conversation_id))
                else:
                    reply(conn, conversation_id)

    def close(self) -> None:
        self.sock.close()


def in_turn(
    kind: TransportName, base_url: str, between: Callable[[int], None] = lambda _: None
) -> list[Answer]:
    """Updates of conv_1, conv_2, conv_3, one after the other through one client (a pool of
    one connection); ``between(n)`` (in a thread) after the n-th answer."""

    async def run() -> list[Answer]:
        client = ApiClient(ClientSettings(base_url, TEST_KEY, organization=None, project=None,
                                          timeout=10, concurrency=1, kind=kind))  # fmt: skip
        await client.open()
        answers = []
        try:
            for n in (1, 2, 3):
                path = conversation_path(f"conv_{n}")
                answers.append(await client.exchange("POST", path, b'{"metadata":{}}'))
                await asyncio.to_thread(between, n)
                for _ in range(10):  # what reached the socket meanwhile is read by the loop
                    await asyncio.sleep(0)
        finally:
            await client.close()
        return answers

    return asyncio.run(run())


def _id(answer: Answer) -> str | None:
    return json.loads(answer.body)["id"] if answer.http_status == 200 else None


@BOTH
def test_an_answer_nobody_asked_for_is_never_read_as_the_next(kind: TransportName) -> None:
    """conv_1 answered, and once the client has its answer, a second copy of it arrives while
    the connection waits in the pool: the next request goes on another connection."""
    client_has_it, copy_sent = threading.Event(), threading.Event()

    def answered_then_again(conn: socket.socket, conversation_id: str) -> None:
        conn.sendall(_kept_alive_answer(conversation_id))
        client_has_it.wait(30)
        conn.sendall(_kept_alive_answer(conversation_id))
        copy_sent.set()

    def between(n: int) -> None:
        if n == 1:
            client_has_it.set()
            assert copy_sent.wait(30)

    server = KeptAlive(answered_then_again)
    try:
        answers = in_turn(kind, f"http://127.0.0.1:{server.port}/v1", between)
    finally:
        server.close()
    assert [_id(a) for a in answers] == ["conv_1", "conv_2", "conv_3"], answers
    assert [a.reused for a in answers] == [False, False, True]  # conv_3: conv_2's connection
    assert server.connections == 2


@BOTH
def test_bytes_past_an_answers_end_leave_with_its_connection(kind: TransportName) -> None:
    """conv_1's answer and bytes past its end in one write: the next request goes on another
    connection. httpx2's own transport takes the answer; aiohttp's parser refuses it too, and
    says so in words."""

    def answered_and_more(conn: socket.socket, conversation_id: str) -> None:
        conn.sendall(_kept_alive_answer(conversation_id) + b'{"stray": 1}')

    server = KeptAlive(answered_and_more)
    try:
        first, *rest = in_turn(kind, f"http://127.0.0.1:{server.port}/v1")
    finally:
        server.close()
    if kind == "httpx2":
        assert _id(first) == "conv_1", first
    else:
        assert first.transport_error == "connection", first
        assert first.transport_detail.startswith(
            "RemoteProtocolError: the server sent bytes that are not an HTTP answer (Bad status"
        ), first
    assert [_id(a) for a in rest] == ["conv_2", "conv_3"], rest
    assert [a.reused for a in rest] == [False, True]
    assert server.connections == 2


@BOTH
def test_a_body_not_in_its_named_encoding_is_a_connection_error(kind: TransportName) -> None:
    server = Server(extra=b"content-encoding: gzip\r\n")  # a JSON body: not gzip
    try:
        (answer,) = exchange(kind, f"http://127.0.0.1:{server.port}/v1")
    finally:
        server.close()
    assert answer.transport_error == "connection", answer
    assert "DecodingError" in answer.transport_detail


@BOTH
def test_a_refused_connection_is_named(kind: TransportName) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: refused
        (answer,) = exchange(kind, f"http://127.0.0.1:{port}/v1")
    assert answer.transport_error == "connect"
    assert answer.transport_detail.startswith("ConnectError: connection refused"), answer


@BOTH
def test_the_pool_is_the_size_asked_for(kind: TransportName) -> None:
    server = Server(delay_s=0.2)
    try:
        answers = exchange(kind, f"http://127.0.0.1:{server.port}/v1", count=12, pool=3)
    finally:
        server.close()
    assert [a.http_status for a in answers] == [200] * 12
    assert server.most == 3  # 12 at once, 3 connections: never more than 3 requests held


def test_the_transport_is_chosen_by_the_environment(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("conversation_id,a\nconv_1,x\n")
    done = cli("run", str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
               "http://127.0.0.1:9/v1", BULK_UPDATE_TRANSPORT="curl")  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "$BULK_UPDATE_TRANSPORT='curl': not a transport" in lines[0]


@BOTH
def test_certificates_that_cannot_be_loaded_are_the_users_mistake(
    kind: TransportName, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("conversation_id,a\nconv_1,x\n")
    missing = tmp_path / "no-such-ca.pem"
    done = cli("run", str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
               "http://127.0.0.1:9/v1", "--quiet", BULK_UPDATE_TRANSPORT=kind,
               SSL_CERT_FILE=str(missing))  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"$SSL_CERT_FILE={missing}" in lines[0]
    assert "cannot load the TLS certificates" in lines[0]


# What aiohttp's exceptions read of a connection key and of a request.
_HOST: Any = SimpleNamespace(host="api.example", port=443, ssl=True, is_ssl=True)
_REQUEST: Any = SimpleNamespace(real_url="https://api.example/v1")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ConnectionTimeoutError("connect"), httpx2.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx2.ReadTimeout),
        (TimeoutError(), httpx2.ReadTimeout),
        (aiohttp.ClientHttpProxyError(_REQUEST, (), status=407),
         httpx2.ProxyError),
        (aiohttp.ClientConnectorError(_HOST, ConnectionRefusedError(111, "refused")),
         httpx2.ConnectError),
        (aiohttp.ClientConnectorDNSError(_HOST, OSError(-2, "no such host")), httpx2.ConnectError),
        (aiohttp.ClientConnectorCertificateError(_HOST, ssl.SSLCertVerificationError("bad")),
         httpx2.ConnectError),
        (aiohttp.ClientSSLError(_HOST, OSError(1, "tls")), httpx2.ConnectError),
        (aiohttp.ServerDisconnectedError(), httpx2.RemoteProtocolError),
        (aiohttp.ClientPayloadError("cut"), httpx2.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "reset"), httpx2.ReadError),
        (aiohttp.ClientConnectionResetError("reset"), httpx2.ReadError),
        (ConnectionResetError(104, "reset"), httpx2.ReadError),
        (BrokenPipeError(32, "pipe"), httpx2.ReadError),
        (aiohttp.InvalidUrlClientError("x"), httpx2.UnsupportedProtocol),
        (aiohttp.ClientResponseError(_REQUEST, ()), httpx2.RemoteProtocolError),
        (aiohttp.ClientError("malformed"), httpx2.RemoteProtocolError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)  # fmt: skip
def test_aiohttp_errors_are_raised_as_httpx2s(raised: Exception, expected: type) -> None:
    """Each aiohttp fault as the httpx2 exception httpcore2 raises for it (a subclass as its
    base unless it means another fault), the original as its cause."""
    with pytest.raises(httpx2.TransportError) as caught:
        _raise_as_httpx2(raised)
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised


def test_an_error_that_is_not_the_transports_goes_through_as_it_is() -> None:
    bug = ValueError("a bug")
    with pytest.raises(ValueError, match="a bug") as caught:
        _raise_as_httpx2(bug)
    assert caught.value is bug


@pytest.mark.parametrize(
    "raw",
    [
        [(b"Content-Type", b"application/json"), (b"X-Request-Id", b"req_1")],
        [(b"X-Ratelimit-Limit-Requests", b"60"), (b"x-ratelimit-limit-requests", b"30")],
        [(b"Set-Cookie", b"a=1"), (b"X-A", b"x"), (b"set-cookie", b"b=2")],
        [(b"X-Name", "café".encode()), (b"X-Other", b"plain")],  # UTF-8
        [(b"X-Name", "café".encode("latin-1"))],  # neither ASCII nor UTF-8
        [],
    ],
    ids=["ascii", "a-name-twice-in-two-cases", "a-name-twice-apart", "utf-8", "latin-1", "none"],
)
def test_an_answers_headers_are_read_as_httpx2_reads_them(raw: list[tuple[bytes, bytes]]) -> None:
    """aiohttp's answers skip httpx2's models: their headers still come out as httpx2's
    ``items()`` gave them to the answer (a name twice: its values joined; decoded alike)."""
    assert answer_headers(raw) == {k.lower(): v for k, v in httpx2.Headers(raw).items()}
