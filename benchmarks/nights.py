"""Benchmark 13: an unchanged night on PostgreSQL against SQLite, in the same run (issue 38).

Night 1 sends every row of a table (300,000 rows; 40,000 with --quick) and writes the job's
state; night 2 reads the same table again, finds every row unchanged, and sends nothing: its
time is the comparison with the state and the journaling of the unchanged rows. Each store
runs night 1, then night 2 twice (the best of the two: the machine is shared); the emulator
answers after 5 ms with no rate limit, 64 in flight. Goal: night 2 on PostgreSQL <= 2x its
time on SQLite (night 1's ratio for context). The PostgreSQL server is started as the tests
start it (tests/pg.py).

    .venv/bin/python -m benchmarks.run --only 13 [--quick]
    .venv/bin/python -m benchmarks.nights [--quick] [--profile]

``--profile``: a third night 2 on each store under py-spy (benchmarks/profile.py's recording:
the samples holding the GIL), and its tables (where night 2's time goes).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks.run import DATA, ENV, Row, job, make_input, timed, updated
from bulk_update.emulator.process import EmulatorProcess
from tests.pg import PostgresServer

BACKENDS = ("sqlite", "postgres")
REPO = Path(__file__).resolve().parent.parent
NAMES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def _store(stack: ExitStack, backend: str, work: Path) -> list[str]:
    """The options of a fresh store of ``backend`` (a server started for PostgreSQL; SQLite's
    directory in ``work``)."""
    if backend == "postgres":
        pg = stack.enter_context(PostgresServer())
        return ["--state-url", pg.create_database("nights")]
    return ["--state-dir", str(work / "state")]


def nights(quick: bool, profile: bool = False, before: str | None = None) -> list[Row]:
    rows = 40_000 if quick else 300_000
    source = make_input(rows, "nights")
    versions: list[str | None] = [before, None] if before else [None]
    first: dict[str, float] = {}
    second: dict[tuple[str | None, str], list[float]] = {}
    with ExitStack() as stack:
        emu = stack.enter_context(EmulatorProcess("--preload", str(rows), "--latency-ms", "5"))
        # This run's results and SQLite store: its own directory (runs at once do not meet).
        work = Path(tempfile.mkdtemp(dir=DATA, prefix="nights-"))
        stores = {backend: _store(stack, backend, work) for backend in BACKENDS}
        envs = {version: _env(stack, version) for version in versions}

        def night(backend: str, number: int) -> list[str]:
            out = work / f"{backend}-{number}.parquet"
            return job("run", str(source), "--output", str(out), "--base-url", emu.base_url,
                       "--rpm", "100000000", "--concurrency", "64", "--restart",
                       "--job-name", "nightly", *stores[backend])  # fmt: skip

        def sent(command: list[str], version: str | None) -> tuple[float, int]:
            before = updated(emu.stats())
            env, cwd = envs[version]
            seconds, _, _ = timed(command, env, cwd=cwd)
            return seconds, updated(emu.stats()) - before

        for backend in BACKENDS:  # by the oldest version: a newer one upgrades the store
            first[backend], count = sent(night(backend, 1), versions[0])
            assert count == rows, (backend, count)
        for version in versions:
            for backend in BACKENDS * 2:  # interleaved: S, P, S, P
                seconds, count = sent(night(backend, 2), version)
                assert count == 0, (backend, count)
                second.setdefault((version, backend), []).append(seconds)
        if profile:
            _profile(rows, {backend: night(backend, 2) for backend in BACKENDS})
    table = []
    for version in versions:
        sqlite, postgres = min(second[version, "sqlite"]), min(second[version, "postgres"])
        runs = ", ".join(f"{s:.1f}" for s in second[version, "postgres"])
        baseline = ", ".join(f"{s:.1f}" for s in second[version, "sqlite"])
        name = f"13 unchanged night, {rows:,} rows, PostgreSQL" + (
            f" at {version}" if version else ""
        )
        table.append(Row(name, f"{runs} s", f"SQLite {baseline} s", postgres / sqlite, "<= 2x",
                         postgres <= 2 * sqlite))  # fmt: skip
    full = first["postgres"] / first["sqlite"]
    at = f" at {before}" if before else ""
    return [
        *table,
        Row(f"13   night 1 (all sent){at}, PostgreSQL", f"{first['postgres']:.1f} s",
            f"SQLite {first['sqlite']:.1f} s", full, "(context)", True),
    ]  # fmt: skip


def _env(stack: ExitStack, version: str | None) -> tuple[dict[str, str], Path | None]:
    """The environment and working directory that run the job as of ``version`` (a commit: its
    bulk_update/, from git archive; ``python -m`` puts the working directory first on sys.path,
    so the job runs from there; None: this tree's). The copy is removed with ``stack`` (and is
    not under benchmarks/, where mypy and ruff would check it)."""
    if version is None:
        return ENV, None
    tree = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bulk-update-at-")))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", version, "bulk_update"],
                             capture_output=True, check=True)  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return {**ENV, "PYTHONPATH": str(tree)}, tree


def _profile(rows: int, commands: dict[str, list[str]]) -> None:
    """Each store's night 2 under py-spy: its tables, on stdout."""
    from benchmarks.profile import PY_SPY, read_raw, record, tables

    if not PY_SPY.exists():
        raise SystemExit(f"py-spy not found at {PY_SPY}: pip install py-spy")
    for backend, command in commands.items():
        raw = Path(tempfile.mkdtemp(dir=DATA)) / "night2.raw.txt"
        seconds, _ = record(command, ENV, 100, True, raw, None)
        profile = read_raw(raw)
        print(f"\n### night 2 on {NAMES[backend]}, {rows:,} rows: {seconds:.1f} s under py-spy, "
              f"{profile.samples:,} samples holding the GIL\n")  # fmt: skip
        print(tables(profile, 15))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="40,000 rows instead of 300,000")
    parser.add_argument("--profile", action="store_true", help="night 2 under py-spy too")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also night 2 by the job as of this commit (night 1 is run by it), in the same run",
    )
    args = parser.parse_args()
    for row in nights(args.quick, args.profile, args.before):
        print(f"{row.benchmark}: {row.measured} against {row.baseline}: {row.ratio:.2f}x "
              f"(goal {row.goal}: {'met' if row.met else 'NOT met'})")  # fmt: skip


if __name__ == "__main__":
    main()
