"""Injected faults are real (resets drop the TCP connection) and reproducible from a seed."""

from __future__ import annotations

import httpx2
import pytest

from bulk_update.emulator.faults import ERROR_ANSWERS, FaultKind, FaultPlan
from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator

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
    def kinds() -> list[FaultKind]:
        plan = FaultPlan(error_rate=0.3, reset_rate=0.2, slow_rate=0.1, seed=seed)
        return [plan.draw().kind for _ in range(200)]

    assert kinds() == kinds()


def test_fault_plan_rejects_impossible_rates() -> None:
    with pytest.raises(ValueError, match="must not exceed 1"):
        FaultPlan(error_rate=0.6, reset_rate=0.6)
    with pytest.raises(ValueError, match="between 0 and 1"):
        FaultPlan(error_rate=-0.1)


def test_every_error_answer_is_a_5xx() -> None:
    assert all(500 <= answer.status < 600 for answer in ERROR_ANSWERS)
