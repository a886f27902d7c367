"""Injected faults are real (resets drop the TCP connection) and reproducible from a seed."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx2
import pytest

from bulk_update.emulator.faults import ERROR_ANSWERS, FaultKind, FaultPlan
from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import wait_for_in_flight

HEADERS = {"authorization": f"Bearer {TEST_KEY}"}


def outcomes(emu: EmulatorProcess, n: int) -> list[str]:
    """Send n sequential creates; name each outcome by status, or 'reset'."""
    seen = []
    for _ in range(n):
        # A fresh connection each time: a reset kills the connection it happens on.
        try:
            response = httpx2.post(
                f"{emu.base_url}/conversations", json={}, headers=HEADERS, timeout=10
            )
            seen.append(str(response.status_code))
        except (httpx2.ReadError, httpx2.RemoteProtocolError):
            seen.append("reset")
    return seen


def test_same_seed_same_faults(start_emulator: StartEmulator) -> None:
    args = ("--error-rate", "0.25", "--reset-rate", "0.15", "--random-seed", "42")
    first = outcomes(start_emulator(*args), 60)
    second = outcomes(start_emulator(*args), 60)
    assert first == second
    assert {"reset", "200"} <= set(first)
    assert {"500", "502", "503"} & set(first)
    other_seed = outcomes(start_emulator(*args[:-1], "43"), 60)
    assert other_seed != first


def test_fault_rates_are_roughly_as_configured(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--error-rate", "0.3", "--reset-rate", "0.1", "--random-seed", "7")
    seen = outcomes(emu, 300)
    errors = sum(1 for s in seen if s.startswith("5"))
    resets = seen.count("reset")
    assert 60 <= errors <= 120  # 90 expected
    assert 15 <= resets <= 50  # 30 expected
    stats = emu.stats()
    assert stats["by_status"]["reset"] == resets


def test_proxy_errors_have_non_json_bodies(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--error-rate", "1", "--random-seed", "1")
    content_types = set()
    for _ in range(40):
        response = httpx2.post(f"{emu.base_url}/conversations", json={}, headers=HEADERS)
        assert response.status_code in {500, 502, 503}
        assert response.headers["x-request-id"].startswith("req_")
        content_types.add(response.headers["content-type"].split(";")[0])
    assert {"application/json", "text/html", "text/plain"} <= content_types


def test_reset_is_a_connection_error_for_the_client(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--reset-rate", "1")
    with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)):
        httpx2.post(f"{emu.base_url}/conversations", json={}, headers=HEADERS)
    # The server itself survives and still answers its admin route.
    assert emu.stats()["by_status"] == {"reset": 1}


def test_latency_and_slow_responses(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--latency-ms", "150", "--slow-rate", "1", "--slow-ms", "300")
    response = httpx2.post(f"{emu.base_url}/conversations", json={}, headers=HEADERS)
    assert response.status_code == 200
    assert response.elapsed.total_seconds() >= 0.45
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.post(f"{emu.base_url}/conversations", json={}, headers=HEADERS, timeout=0.2)


def test_in_flight_counts_each_request_until_the_server_is_done_with_it(
    start_emulator: StartEmulator,
) -> None:
    """``in_flight`` (what tests poll to 0 after killing a client) rises while requests are held
    and falls back to 0 whichever way they end: answered, answered to a client that gave up,
    dropped by a reset, or cut off by a client gone before its body was complete."""
    emu = start_emulator("--slow-rate", "1", "--slow-ms", "1500", "--random-seed", "1")
    url = f"{emu.base_url}/conversations"
    assert emu.stats()["in_flight"] == 0

    # Held by the slow fault: counted until answered, then not.
    with ThreadPoolExecutor(3) as pool:
        held = [pool.submit(httpx2.post, url, json={}, headers=HEADERS, timeout=10)
                for _ in range(3)]  # fmt: skip
        wait_for_in_flight(emu, 3)
        assert emu.stats()["in_flight"] == 3  # the admin route itself is never counted
        assert [future.result().status_code for future in held] == [200] * 3
    wait_for_in_flight(emu, 0)

    # A client that gives up mid-wait: the server still finishes (and applies) its request.
    before = emu.stats()["conversations"]
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.post(url, json={}, headers=HEADERS, timeout=0.2)
    assert emu.stats()["in_flight"] == 1
    wait_for_in_flight(emu, 0)
    assert emu.stats()["conversations"] == before + 1

    # A dropped connection (reset) and an injected 5xx: nothing left counted.
    emu.admin("config", {"slow_rate": 0.0, "reset_rate": 1.0})
    with pytest.raises((httpx2.ReadError, httpx2.RemoteProtocolError)):
        httpx2.post(url, json={}, headers=HEADERS)
    emu.admin("config", {"reset_rate": 0.0, "error_rate": 1.0})
    assert httpx2.post(url, json={}, headers=HEADERS).status_code >= 500
    wait_for_in_flight(emu, 0)

    # A client gone before its body was complete: counted while the server waits for the rest.
    emu.admin("config", {"error_rate": 0.0})
    address = urlsplit(emu.base_url)
    assert address.hostname is not None
    assert address.port is not None
    with socket.create_connection((address.hostname, address.port), timeout=10) as client:
        client.sendall(
            b"POST /v1/conversations HTTP/1.1\r\nHost: emulator\r\n"
            + f"Authorization: Bearer {TEST_KEY}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{}"
        )
        wait_for_in_flight(emu, 1)
    wait_for_in_flight(emu, 0)
    assert emu.stats()["conversations"] == before + 1
    assert "Traceback" not in emu.stderr()


def test_faults_can_be_changed_at_run_time(start_emulator: StartEmulator) -> None:
    emu = start_emulator()
    assert outcomes(emu, 3) == ["200"] * 3
    emu.admin("config", {"error_rate": 1.0, "random_seed": 5})
    assert all(s.startswith("5") for s in outcomes(emu, 3))
    emu.admin("config", {"error_rate": 0.0, "quota_exhausted": True})
    response = httpx2.post(f"{emu.base_url}/conversations", json={}, headers=HEADERS)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"


@pytest.mark.parametrize("seed", [0, 1, 99])
def test_fault_plan_draws_are_deterministic(seed: int) -> None:
    """A seed draws the same faults every time (a run's faults can be replayed), drawn at the
    rates asked for, and another seed draws others."""

    def kinds(seed: int) -> list[FaultKind]:
        plan = FaultPlan(error_rate=0.3, reset_rate=0.2, slow_rate=0.1, seed=seed)
        return [plan.draw().kind for _ in range(2000)]

    drawn = kinds(seed)
    assert drawn == kinds(seed)
    assert drawn != kinds(seed + 1)
    share = {kind: drawn.count(kind) / len(drawn) for kind in FaultKind}
    expected = {FaultKind.ERROR: 0.3, FaultKind.RESET: 0.2, FaultKind.SLOW: 0.1,
                FaultKind.NONE: 0.4}  # fmt: skip
    assert all(abs(share[kind] - rate) < 0.05 for kind, rate in expected.items()), share


def test_fault_plan_rejects_impossible_rates() -> None:
    with pytest.raises(ValueError, match="must not exceed 1"):
        FaultPlan(error_rate=0.6, reset_rate=0.6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan(error_rate=-0.1)


def test_every_error_answer_is_a_5xx() -> None:
    assert all(500 <= answer.status < 600 for answer in ERROR_ANSWERS)
