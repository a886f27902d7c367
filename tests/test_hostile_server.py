"""A misbehaving server on loopback (raw sockets, one misbehaviour per conversation ID) against
the real CLI: every row ends retried or failed with a clear error code, none crashes or hangs
the job, and a redirect never carries the key to another host. On both transports (aiohttp, the
default, and httpx2's own): they fail the same rows the same way."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_KEY
from tests.helpers import by_row, cli, read_request, requested_id, serve_on_loopback

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
            request = read_request(conn, whole=False)
            if request is None:
                return
            self.requests.append(b"\r\n\r\n".join(request))
            conversation_id = requested_id(request[0])
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


# A server that leaves bytes on a kept-alive connection (issue 34): after some answers it sends
# more than was asked: bytes past the answer's Content-Length, or a second, unasked answer (a
# copy of the one just sent). Half the time in the same write as the answer, half the time a
# moment later (while the connection waits in the pool, or after the next request went out).
# The next request on that connection must never take them for its answer.


def _answer(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class KeptAlive:
    """HTTP/1.1 on loopback, connections kept alive. Each conversation holds ``{"owner": "o"}``
    at first; an update merges into it, and every answer is the conversation with its map. One
    answer in ``1/every`` (seeded) is followed by ``stale(answer)``: in the same write, or, one
    time in ``1/late``, ``late_s`` later. ``followed``: the conversations whose answers were."""

    def __init__(
        self, stale: Callable[[bytes], bytes], every: float, late: float, late_s: float = 0.005
    ) -> None:
        self.stale, self.every, self.late, self.late_s = stale, every, late, late_s
        self.random = random.Random(34)
        self.lock = threading.Lock()
        self.maps: dict[str, dict[str, str]] = {}
        self.stale_sent = 0
        self.followed: set[str] = set()
        self.updates: Counter[str] = Counter()
        self.sock, self.port = serve_on_loopback(self._handle)

    @staticmethod
    def _request(conn: socket.socket, data: bytes) -> tuple[bytes, bytes, bytes] | None:
        """(the request's head, its body, the bytes after it), or None when the client left."""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                       if line.startswith(b"content-length:")), 0)  # fmt: skip
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            rest += chunk
        return head, rest[:length], rest[length:]

    def _handle(self, conn: socket.socket) -> None:
        data = b""
        with conn, contextlib.suppress(OSError):  # OSError: the client closed it
            while (request := self._request(conn, data)) is not None:
                head, body, data = request
                method, path = head.split(b" ", 2)[:2]
                conversation_id = path.decode().rsplit("/", 1)[-1]
                with self.lock:
                    stored = self.maps.setdefault(conversation_id, {"owner": "o"})
                    if method == b"POST":
                        stored.update(json.loads(body)["metadata"])
                        self.updates[conversation_id] += 1
                    answer = _answer(
                        json.dumps(
                            {
                                "id": conversation_id,
                                "object": "conversation",
                                "created_at": 1,
                                "metadata": stored,
                            }
                        ).encode()
                    )
                    stale = self.random.random() < self.every
                    late = self.random.random() < self.late
                    if stale:
                        self.stale_sent += 1
                        self.followed.add(conversation_id)
                if not stale:
                    conn.sendall(answer)
                elif not late:
                    conn.sendall(answer + self.stale(answer))
                else:
                    conn.sendall(answer)
                    time.sleep(self.late_s)
                    conn.sendall(self.stale(answer))

    def close(self) -> None:
        self.sock.close()


def bytes_past_the_end(answer: bytes) -> bytes:
    return b'{"stray": "bytes past the content-length"}'


def a_second_answer(answer: bytes) -> bytes:
    return answer  # the same answer again, unasked


MAX_ATTEMPTS = 6  # the default


def _run_against(
    server: KeptAlive, tmp_path: Path, transport: str, *options: str
) -> tuple[subprocess.CompletedProcess[str], dict[int, dict[str, Any]]]:
    rows = 300
    source = tmp_path / "in.csv"
    source.write_text(
        "conversation_id,tier\n" + "".join(f"conv_{n:04d},t{n}\n" for n in range(1, rows + 1))
    )
    output = tmp_path / "out.csv"
    try:
        run = cli("run", str(source), "--output", str(output), "--base-url",
                  f"http://127.0.0.1:{server.port}/v1", "--timeout", "10", "--concurrency", "8",
                  "--rpm", "60000", *options, timeout=300,
                  BULK_UPDATE_TRANSPORT=transport)  # fmt: skip
    finally:
        server.close()
    assert "Traceback" not in run.stderr
    results = by_row(output)
    assert len(results) == rows
    assert server.stale_sent > rows * 0.2  # the fault happened, often
    for number, row in results.items():
        sent = {"tier": f"t{number}"}
        assert row["conversation_id"] == f"conv_{number:04d}"
        assert json.loads(row["sent_metadata"]) == sent
        if row["status"] == "updated":
            # Its own answer: an update's answer holds the row's tier (never another row's, nor
            # the map as the server held it before the update).
            assert json.loads(row["metadata"]) == {"owner": "o", **sent}, row
            continue
        # A row may fail only as a connection error, saying what happened in words.
        assert (row["status"], row["error_code"]) == ("failed", "connection_error"), row
        assert "400, message" not in row["error_message"], row
    assert run.returncode in (0, 1), run.stderr
    return run, results


@pytest.mark.parametrize("stale", [bytes_past_the_end, a_second_answer])
@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])  # BULK_UPDATE_TRANSPORT
def test_bytes_left_on_a_kept_alive_connection_are_never_an_answer(
    tmp_path: Path, transport: str, stale: Callable[[bytes], bytes]
) -> None:
    """300 rows, 30 % of the answers followed by stale bytes: no row fails ``id_mismatch`` (a
    stale answer read on a reused connection drops it, and the row is sent again), and each
    row's result holds what its own answer said."""
    server = KeptAlive(stale, every=0.3, late=0.5)
    _, results = _run_against(server, tmp_path, transport)
    failed = [row for row in results.values() if row["status"] != "updated"]
    assert len(failed) <= 3, failed  # a row fails only if each of its 6 attempts met stale bytes
    assert all(row["attempts"] == MAX_ATTEMPTS for row in failed), failed
    assert set(server.updates) == {row["conversation_id"] for row in results.values()}


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])  # BULK_UPDATE_TRANSPORT
def test_bytes_past_an_answers_end_fail_no_other_row(tmp_path: Path, transport: str) -> None:
    """Bytes past an answer's end, in the same write, one attempt a row: the connection is not
    used again, so no other row's request reads them. httpx2's own transport takes the answer
    they follow (and closes its connection); aiohttp's parser refuses that answer too (its row
    fails, saying so in words, where a re-run or --max-attempts sends it again)."""
    server = KeptAlive(bytes_past_the_end, every=0.3, late=0.0)
    _, results = _run_against(server, tmp_path, transport, "--max-attempts", "1")
    for row in results.values():
        if row["status"] == "failed":
            assert row["conversation_id"] in server.followed, row  # its own answer's bytes
            assert "the server sent bytes that are not an HTTP answer" in row["error_message"]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx2"])  # BULK_UPDATE_TRANSPORT
def test_a_reads_stale_copy_is_never_its_updates_answer(tmp_path: Path, transport: str) -> None:
    """With ``--backup`` each row's conversation is read, then updated, often on the same
    connection: a copy of the read's answer left there carries the row's own ID. It is never
    taken for the update's answer (which would record the map without the row's values, as
    if the update had not landed)."""
    server = KeptAlive(a_second_answer, every=0.3, late=0.5)
    _, results = _run_against(server, tmp_path, transport, "--backup")
    for row in results.values():
        if row["status"] == "updated":
            assert json.loads(row["previous_metadata"]) == {"owner": "o"}, row
