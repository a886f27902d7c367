"""`pytest --cpu-report N`: where the suite's CPU goes (the suite is CPU-bound: on 2 cores its
wall time is at least half its CPU time). Each test's CPU (user + sys) is that of its worker
process and of the processes it started and reaped (CLI runs, emulators, Airflow, initdb and
pg_ctl), over its setup, call and teardown; a PostgreSQL server (pg_ctl detaches it) is no
one's child and not counted. The summary lists the N tests that took most and every file's
total. Loaded by tests/conftest.py."""

from __future__ import annotations

import resource
from collections import defaultdict
from collections.abc import Generator

import pytest

KEY = "cpu_seconds"
LAST = pytest.StashKey[float]()  # in a worker: the CPU at its previous phase's end
TOTALS: dict[str, float] = {}  # on the controller: each test's CPU seconds


def cpu_now() -> float:
    """CPU seconds (user + sys) of this process and of its children reaped so far."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cpu-report", type=int, default=0, metavar="N",
        help="list the N tests that took most CPU (children included), and each file's total",
    )  # fmt: skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if item.config.getoption("cpu_report"):
        # A phase's report is made right after it: the CPU since the previous phase's report
        # (the first phase: since the previous test's last) is this phase's.
        now = cpu_now()
        start = item.config.stash.get(LAST, now)
        item.config.stash[LAST] = now
        report.user_properties.append((KEY, now - start))
    return report


def pytest_collection_finish(session: pytest.Session) -> None:
    # The first test's setup is measured from here, after the collection (imports).
    session.config.stash[LAST] = cpu_now()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """On the controller (or the only process): each phase's CPU, from the workers' reports."""
    for key, value in report.user_properties:
        if key == KEY and isinstance(value, float):
            TOTALS[report.nodeid] = TOTALS.get(report.nodeid, 0.0) + value


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    top = config.getoption("cpu_report")
    if not top or not TOTALS:
        return
    write = terminalreporter.write_line
    total = sum(TOTALS.values())
    terminalreporter.section(f"CPU: {total / 60:.1f} min in {len(TOTALS)} tests")
    for nodeid, seconds in sorted(TOTALS.items(), key=lambda kv: -kv[1])[:top]:
        write(f"{seconds:8.1f} s  {nodeid}")
    by_file: dict[str, float] = defaultdict(float)
    for nodeid, seconds in TOTALS.items():
        by_file[nodeid.split("::")[0]] += seconds
    terminalreporter.section("CPU by file")
    for path, seconds in sorted(by_file.items(), key=lambda kv: -kv[1]):
        write(f"{seconds:8.1f} s  {path}")
