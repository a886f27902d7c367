from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bulk_update.emulator.process import EmulatorProcess
from tests.pg import PostgresServer
from tests.stores import BACKENDS, Backend

# `pytest --cpu-report N`: the tests that take most CPU, and each file's (tests/cpu_report.py).
pytest_plugins = ("tests.cpu_report",)

TEST_KEY = "sk-test-0123456789"

StartEmulator = Callable[..., EmulatorProcess]

# Modules of long tests that share no module-scoped fixture: each test an `airflow dags test` of
# 30 to 70 s (many minutes on a loaded machine).
SPREAD_MODULES = ("test_airflow.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Spread the tests of SPREAD_MODULES evenly over the collection, the others kept in their
    order. pytest-xdist gives each worker a stretch of the collection, and a worker that runs
    dry takes tests from the end of another's queue, never its head: a module of long tests
    together at the head of one stretch would run one after another on one worker (the whole
    module's minutes: the run's long pole), spread they start early on every worker."""
    spread = [item for item in items if item.path.name in SPREAD_MODULES]
    if not spread:
        return
    rest = [item for item in items if item.path.name not in SPREAD_MODULES]
    # Between two modules only, not to set a module's fixtures up twice.
    starts = [i for i in range(len(rest) + 1) if i in (0, len(rest))
              or rest[i].path != rest[i - 1].path]  # fmt: skip
    at = [min(starts, key=lambda i: abs(i - k * len(rest) / len(spread)))
          for k in range(len(spread))]  # fmt: skip
    ordered: list[pytest.Item] = []
    for k, item in enumerate(spread):  # each at the head of its share of the others
        ordered += [item, *rest[at[k] : at[k + 1] if k + 1 < len(spread) else None]]
    items[:] = ordered


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the session (tests/pg.py); each test takes a database of
    its own (``state_url``). Missing binaries fail the tests that need it, saying why."""
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with server:
        yield server


@pytest.fixture
def state_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh database on the session's server, as a --state-url (with a password)."""
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    return postgres.create_database(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A store under test, once per backend: the same test runs against SQLite files and a
    real PostgreSQL (a fresh database on the session's server)."""
    directory = tmp_path / "stores"
    directory.mkdir()
    if request.param == "sqlite":
        return Backend("sqlite", directory)
    server: PostgresServer = request.getfixturevalue("postgres")
    url = request.getfixturevalue("state_url")
    return Backend("postgres", directory, url, server)
