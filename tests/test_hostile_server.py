"""A misbehaving server on loopback (raw sockets, one misbehaviour per conversation ID) against
the real CLI: every row ends retried or failed with a clear error code, none crashes or hangs
the job, and a redirect never carries the key to another host. On both transports (aiohttp, the
default, and httpx2's own): they fail the same rows the same way."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_KEY
from tests.helpers import by_row, cli, serve_on_loopback

Reply = Callable[[socket.socket, str, int], None]


def _send(conn: socket.socket, status: str, body: bytes, *headers: str) -> None:
    head = [f"HTTP/1.1 {status}", f"content-length: {len(body)}", "connection: close", *headers]
    conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)


def _conversation(conversation_id: str) -> bytes:
    return json.dumps({"id": conversation_id, "object": "conversation", "created_at": 1,
                       "metadata": {"a": "1"}}).encode()  # fmt: skip


def ok(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    _send(conn, "200 OK", _conversation(conversation_id), "content-type: application/json")


def not_json(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    _send(conn, "200 OK", b"<html>fine</html>", "content-type: text/html")


def truncated(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    body = _conversation(conversation_id)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body[:20])


def other_id(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    _send(conn, "200 OK", _conversation("conv_someone_else"), "content-type: application/json")


def then_ok(first: Reply) -> Reply:
    def reply(conn: socket.socket, conversation_id: str, attempt: int) -> None:
        (first if attempt == 1 else ok)(conn, conversation_id, attempt)

    return reply


def limited(*headers: str) -> Reply:
    def reply(conn: socket.socket, conversation_id: str, attempt: int) -> None:
        _send(conn, "429 Too Many Requests", b"", *headers)

    return reply


def html_502(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    page = b"<html><body>" + b"<p>Bad gateway</p>" * 500 + b"</body></html>"
    _send(conn, "502 Bad Gateway", page, "content-type: text/html")


def reset_mid_body(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    conn.sendall(b'HTTP/1.1 200 OK\r\ncontent-length: 500\r\n\r\n{"id": ')
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST


def silent(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    time.sleep(6)  # longer than the job's --timeout: never answers in time


def drip(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    body = _conversation(conversation_id)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
    for byte in body[:20]:  # a byte every 0.3 s: each read is quick, the whole is not
        conn.sendall(bytes([byte]))
        time.sleep(0.3)


def endless(conn: socket.socket, conversation_id: str, attempt: int) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4000000000\r\n\r\n")
    block = b"x" * 65536
    while True:  # 4 GB promised: the job must stop reading, not hold it
        conn.sendall(block)


class Server:
    """HTTP/1.1 on loopback, one connection per request; ``replies`` chosen by the path's ID."""

    def __init__(self, replies: dict[str, Reply]) -> None:
        self.replies = replies
        self.attempts: Counter[str] = Counter()
        self.requests: list[bytes] = []
        self.sock, self.port = serve_on_loopback(self._handle)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data)
            path = data.split(b" ", 2)[1].decode()
            conversation_id = path.rsplit("/", 1)[-1]
            self.attempts[conversation_id] += 1
            reply = self.replies.get(conversation_id, ok)
            with contextlib.suppress(OSError):  # the client gave up first
                reply(conn, conversation_id, self.attempts[conversation_id])

    def close(self) -> None:
        self.sock.close()


CASES: dict[str, tuple[Reply, str, str | None]] = {
    # ID: (reply, expected status, expected error_code)
    "conv_ok": (ok, "updated", None),
    "conv_not_json": (not_json, "failed", "invalid_response"),
    "conv_truncated": (truncated, "failed", "connection_error"),
    "conv_other_id": (other_id, "failed", "id_mismatch"),
    "conv_429_bare": (then_ok(limited()), "updated", None),
    "conv_429_garbage": (then_ok(limited("retry-after: soon-ish")), "updated", None),
    "conv_429_huge": (limited("retry-after: 86400"), "failed", "retry_after_too_long"),
    "conv_html_502": (html_502, "failed", "http_502"),
    "conv_reset": (reset_mid_body, "failed", "connection_error"),
    "conv_silent": (silent, "failed", "timeout"),
    "conv_drip": (drip, "failed", "timeout"),
    "conv_endless": (endless, "failed", "invalid_response"),
    "conv_redirect": (ok, "failed", "redirect"),  # reply replaced below: needs the other port
}


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    elsewhere = Server({})
    redirect_to = f"http://127.0.0.1:{elsewhere.port}/v1/conversations/conv_redirect"

    def redirect(conn: socket.socket, conversation_id: str, attempt: int) -> None:
        _send(conn, "307 Temporary Redirect", b"", f"location: {redirect_to}")

    hostile = Server({i: reply for i, (reply, _, _) in CASES.items()} | {"conv_redirect": redirect})
    yield hostile, elsewhere
    hostile.close()
    elsewhere.close()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])  # BULK_UPDATE_TRANSPORT
def test_a_hostile_server_fails_rows_cleanly(
    servers: tuple[Server, Server], tmp_path: Path, transport: str
) -> None:
    hostile, elsewhere = servers
    source = tmp_path / "in.csv"
    ids = list(CASES)
    source.write_text("conversation_id,a\n" + "".join(f"{i},1\n" for i in ids))
    output = tmp_path / "out.csv"
    # Nothing may hang: cli() fails the test if the job is not done within 120 s (the slowest
    # rows need two attempts of --timeout 2 s, plus backoff).
    run = cli("run", str(source), "--output", str(output), "--base-url",
              f"http://127.0.0.1:{hostile.port}/v1", "--max-attempts", "2", "--timeout", "2",
              "--concurrency", "12", "--rpm", "60000", timeout=120,
              BULK_UPDATE_TRANSPORT=transport)  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    rows = by_row(output)
    assert len(rows) == len(ids)
    for number, conversation_id in enumerate(ids, start=1):
        row = rows[number]
        _, status, code = CASES[conversation_id]
        assert (row["conversation_id"], row["status"], row["error_code"]) == (
            conversation_id, status, code,
        ), row  # fmt: skip
        if status == "failed":
            assert row["error_message"], row
            assert len(row["error_message"]) < 400, row  # an HTML page is not pasted in
    # Not retried: a wrong ID, a huge retry-after, a redirect. Retried to --max-attempts: the rest.
    for once in ("conv_other_id", "conv_429_huge", "conv_redirect"):
        assert hostile.attempts[once] == 1, once
    for twice in ("conv_not_json", "conv_html_502", "conv_reset", "conv_silent", "conv_drip",
                  "conv_endless"):  # fmt: skip
        assert hostile.attempts[twice] == 2, twice
    assert elsewhere.requests == []  # the redirect was not followed: the key stayed home
    assert all(TEST_KEY.encode() in request for request in hostile.requests)
