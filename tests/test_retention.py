"""The store's retention (docs/performance.md): a nightly job's older runs lose their row-by-row
outcomes (--keep-runs as a run ends, `bulk-update compact` now), history keeps their counts, the
job's state is never touched (the next night still sends only what changed), and the commands
that read a compacted run say so in one line. Through the real CLI, against the emulator, on
both stores."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import ID, cli, write_input
from tests.stores import Backend

N = 40
JOB = "nightly"
# What each night changes (row index -> tier), on top of the nights before it.
NIGHTS: tuple[dict[int, str], ...] = ({}, {3: "b", 17: "b"}, {5: "c"}, {29: "d", 33: "d"})


def spanned_by_run(backend: Backend) -> dict[int, int]:
    """How many unchanged rows each run's spans hold (not outcomes: a count), read with SQL."""
    return {run: len(rows) for run, rows in backend.spanned_rows(JOB).items()}


def outcomes_by_run(backend: Backend) -> dict[int, int]:
    """How many outcomes each run of the job keeps, read with SQL."""
    sql = "SELECT run_id, count(*) FROM {}run_outcomes GROUP BY run_id"
    if backend.url is None:
        with sqlite3.connect(backend.directory / f"{JOB}.sqlite") as db:
            rows: list[tuple[Any, ...]] = db.execute(sql.format("")).fetchall()
    else:
        rows = backend.query(sql.format("bulk_update."))
    return {int(run): int(count) for run, count in rows}


def history(backend: Backend, cwd: Path) -> list[dict[str, Any]]:
    shown = cli("history", "--job-name", JOB, "--json", *backend.args, cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    runs: list[dict[str, Any]] = json.loads(shown.stdout)
    return runs


def test_compaction_keeps_counts_and_state_and_says_so(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Four nights (the second with --backup), every run's outcomes kept
    (--keep-runs 0): an outcome for each row sent, a count (spans) of the unchanged ones;
    `compact --keep-runs 1` then drops those of the three older runs but the outcomes the job's
    state names (their spans go whole), keeps history's counts and the state; the next night sends
    nothing new, and compacts the night before it as it ends (--keep-runs 1). `report` of a
    compacted run and --retry-failed of one are refused in one line (exit 2); `status` and
    `revert` (which reads the results file, not the outcomes) work."""
    export = tmp_path / "export.csv"
    write_input(export, N)
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(export))
    sending = ("--base-url", emu.base_url, "--rpm", "600000", "--job-name", JOB, *backend.args)
    tags: dict[int, str] = {}
    for number, changed in enumerate(NIGHTS, 1):
        tags.update(changed)
        write_input(export, N, tags)
        backup = ("--backup",) if number == 2 else ()
        done = cli("run", "export.csv", "--output", f"out/night-{number}.csv", *sending,
                   "--keep-runs", "0", *backup, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "compacted" not in done.stderr
    before = history(backend, tmp_path)
    state = backend.state(JOB)
    assert len(state) == N
    assert all(run["compacted_at"] is None for run in before)
    first, second, third, last = (run["run_id"] for run in reversed(before))
    assert outcomes_by_run(backend) == {first: N, second: 2, third: 1, last: 2}
    assert spanned_by_run(backend) == {second: N - 2, third: N - 1, last: N - 2}
    assert [run["counts"] for run in before] == [
        {"updated": 2, "unchanged": N - 2}, {"updated": 1, "unchanged": N - 1},
        {"updated": 2, "unchanged": N - 2}, {"updated": N},
    ]  # fmt: skip

    compact = cli("compact", "--job-name", JOB, "--keep-runs", "1", *backend.args, cwd=tmp_path)
    assert compact.returncode == 0, compact.stderr
    assert f"compacted 3 runs ({third}, {second}, {first})" in compact.stderr
    # Night 1's 5 outcomes no entry names, nights 2 and 3's spans (their unchanged rows).
    assert f"{5 + (N - 2) + (N - 1)} outcomes dropped" in compact.stderr
    after = history(backend, tmp_path)
    assert [run["counts"] for run in after] == [run["counts"] for run in before]  # kept forever
    assert [run["compacted_at"] is not None for run in after] == [False, True, True, True]
    # What the state names stays: night 1's rows changed by no later night, night 2's rows 3
    # and 17, night 3's row 5; the last night keeps all of its own.
    assert outcomes_by_run(backend) == {first: N - 5, second: 2, third: 1, last: 2}
    assert spanned_by_run(backend) == {last: N - 2}
    assert backend.state(JOB) == state
    table = cli("history", "--job-name", JOB, *backend.args, cwd=tmp_path)
    assert f"{first} (compacted)" in table.stdout

    # Compacting again finds nothing more; the job's last run is never compacted.
    again = cli("compact", "--job-name", JOB, "--keep-runs", "1", *backend.args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "compacted 0 runs (none), 0 outcomes dropped" in again.stderr

    report = cli("report", "--job-name", JOB, "--run", str(first), "--output", "r.html",
                 *backend.args, cwd=tmp_path)  # fmt: skip
    assert report.returncode == 2, report.stderr
    assert len(report.stderr.strip().splitlines()) == 1
    assert f"--run {first}: its rows were compacted at" in report.stderr
    assert "--keep-runs" in report.stderr
    newest = cli("report", "--job-name", JOB, "--output", "r.html", *backend.args, cwd=tmp_path)
    assert newest.returncode == 0, newest.stderr
    status = cli("status", "--job-name", JOB, "--json", *backend.args, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == []

    # --retry-failed of a compacted run: its failed rows are not known any more.
    retry = cli("run", "export.csv", "--output", "out/night-1.csv", *sending, "--retry-failed",
                cwd=tmp_path)  # fmt: skip
    assert retry.returncode == 2, retry.stderr
    assert f"run {first} for out/night-1.csv was compacted at" in retry.stderr
    assert "--retry-failed" in retry.stderr.splitlines()[-1]

    # The next night, nothing changed: nothing sent (the state is whole), and as it ends it
    # compacts the night before it (--keep-runs 1).
    sent = int(emu.stats()["by_operation"].get("update", 0))
    fifth = cli("run", "export.csv", "--output", "out/night-5.csv", *sending, "--keep-runs", "1",
                cwd=tmp_path)  # fmt: skip
    assert fifth.returncode == 0, fifth.stderr
    assert int(emu.stats()["by_operation"].get("update", 0)) == sent
    runs = history(backend, tmp_path)
    assert runs[0]["counts"] == {"unchanged": N}
    assert [run["compacted_at"] is not None for run in runs] == [False, True, True, True, True]
    assert outcomes_by_run(backend)[last] == 2  # rows 29 and 33, named by the state
    assert spanned_by_run(backend) == {runs[0]["run_id"]: N}  # night 5's, not night 4's
    assert backend.state(JOB) == state

    # Night 6 sets row 0 again: as it ends, night 1's outcome of row 0 (compacted before, named
    # by the state until now) goes too. An old run keeps what the state names, nothing else.
    tags[0] = "e"
    write_input(export, N, tags)
    sixth = cli("run", "export.csv", "--output", "out/night-6.csv", *sending, "--keep-runs", "1",
                cwd=tmp_path)  # fmt: skip
    assert sixth.returncode == 0, sixth.stderr
    kept, sixth_run = outcomes_by_run(backend), history(backend, tmp_path)[0]["run_id"]
    assert kept[first] == N - 6
    assert kept[sixth_run] == 1  # row 0's, named now
    assert runs[0]["run_id"] not in kept  # night 5: all unchanged, its span dropped
    assert spanned_by_run(backend) == {sixth_run: N - 1}
    assert backend.state(JOB) == {**state, ID(0): '{"tier":"e","n":"0"}'}

    # Revert reads the --backup run's results file: night 2, compacted, is reverted whole.
    revert = cli("revert", "out/night-2.csv", "--output", "out/revert-2.csv", "--job-name", JOB,
                 "--base-url", emu.base_url, *backend.args, cwd=tmp_path)  # fmt: skip
    assert revert.returncode == 0, revert.stderr
    for row in (3, 17):
        assert emu.admin(f"conversations/{ID(row)}")["metadata"]["tier"] == "v"


def test_compact_needs_a_run_and_at_least_one_run_kept(backend: Backend, tmp_path: Path) -> None:
    """`compact` of a job with no store, or with --keep-runs 0: exit 2, one line."""
    missing = cli("compact", "--job-name", JOB, *backend.args, cwd=tmp_path)
    assert missing.returncode == 2, missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    zero = cli("compact", "--job-name", JOB, "--keep-runs", "0", *backend.args, cwd=tmp_path)
    assert zero.returncode == 2
    assert "--keep-runs" in zero.stderr
    assert len(zero.stderr.strip().splitlines()) == 1
