from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from bulk_update.emulator.process import EmulatorProcess

TEST_KEY = "sk-test-0123456789"

StartEmulator = Callable[..., EmulatorProcess]


@pytest.fixture
def start_emulator() -> Iterator[StartEmulator]:
    """Start `bulk-update emulator` processes (real servers on free ports); all stopped after."""
    started: list[EmulatorProcess] = []

    def start(*args: str) -> EmulatorProcess:
        emulator = EmulatorProcess(*args).start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    """One plain emulator (no limit, no faults, key TEST_KEY) shared by a test module."""
    with EmulatorProcess("--api-key", TEST_KEY) as emu:
        yield emu
