"""A night's unchanged rows are a count, not rows (issue 38, layout 10): one span per batch says
which rows were unchanged, and everything that read their outcomes reads the spans too. Through
the real CLI against the emulator, on both stores: the results list every row as before (byte
for byte), `history` and `status` count what the results hold, a kill -9 mid-night resumes
with every row once, and a store of layout 9 (its unchanged rows outcomes) is read as before."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from bulk_update.store import core, schema
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import ID, cli, results, start, wait_for_in_flight, wait_for_requests
from tests.stores import Backend

JOB = "nightly"
# Small batches: a night is several spans.
JOB_FILE = "batch-rows = 50\n"


def write_night(path: Path, n: int, changed: set[int], tier: str = "b") -> None:
    """``n`` rows of ``conversation_id,tier,n``: tier ``tier`` for the indexes ``changed``,
    ``a`` for the others."""
    rows = "".join(f"{ID(i)},{tier if i in changed else 'a'},{i}\n" for i in range(n))
    path.write_text("conversation_id,tier,n\n" + rows)


def unchanged_line(index: int) -> str:
    """An unchanged row's line in the CSV results, as the results held it when each was an
    outcome (before layout 10): no answer, no request, its metadata as sent (the input's)."""
    metadata = json.dumps({"tier": "a", "n": str(index)}, separators=(",", ":"))
    quoted = metadata.replace('"', '""')
    return f'{index + 1},{ID(index)},unchanged,,0,,,,,,,"{quoted}",,'


def runs(backend: Backend, tmp_path: Path) -> list[dict[str, Any]]:
    shown = cli("history", "--job-name", JOB, "--json", *backend.args, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    found: list[dict[str, Any]] = json.loads(shown.stdout)
    return found


def results_counts(path: Path) -> dict[str, int]:
    frame = results(path).group_by("status").len()
    return {str(status): int(count) for status, count in frame.iter_rows()}


def test_unchanged_rows_are_spans_and_the_results_list_them_as_before(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Night 2 changes every 7th row of 300: its results' unchanged lines are those the results
    held when each unchanged row was an outcome (byte for byte); the store keeps an outcome for
    each row sent, and spans (one per batch) of exactly the unchanged rows; `history` counts
    and `report` agree with the results. Night 3, nothing changed: no outcome at all."""
    n = 300
    export, job_file = tmp_path / "export.csv", tmp_path / "job.toml"
    job_file.write_text(JOB_FILE)
    write_night(export, n, set())
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(export))
    sending = ("--job", str(job_file), "--base-url", emu.base_url, "--rpm", "600000",
               "--job-name", JOB, "--keep-runs", "0", *backend.args)  # fmt: skip
    changed = set(range(0, n, 7))
    for night, tiers in enumerate((set(), changed, changed), 1):
        write_night(export, n, tiers)
        done = cli("run", "export.csv", "--output", f"out/night-{night}.csv", *sending,
                   cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
    first, second, third = (run["run_id"] for run in reversed(runs(backend, tmp_path)))

    lines = (tmp_path / "out/night-2.csv").read_text().splitlines()
    assert len(lines) == n + 1
    unchanged = [index for index in range(n) if index not in changed]
    assert [line for line in lines if ",unchanged," in line] == [
        unchanged_line(index) for index in unchanged
    ]
    assert sum(",updated,200,1," in line for line in lines) == len(changed)

    outcomes, spanned = backend.outcome_rows(JOB), backend.spanned_rows(JOB)
    assert outcomes[first] == set(range(1, n + 1))
    assert outcomes[second] == {index + 1 for index in changed}
    assert spanned[second] == [index + 1 for index in unchanged]  # each row in one span
    assert third not in outcomes
    assert spanned[third] == list(range(1, n + 1))
    spans = backend.read_rows(JOB, "SELECT run_id FROM {}unchanged_spans")
    assert spans.count((third,)) == n // 100  # the job file's batches: one span each

    for run, night in zip(runs(backend, tmp_path), (3, 2, 1), strict=True):
        assert run["counts"] == results_counts(tmp_path / f"out/night-{night}.csv")
    with backend.open(JOB) as store:
        report = store.report_rows(second)
    assert report["row_number"].to_list() == list(range(1, n + 1))
    assert report.filter(status="unchanged")["row_number"].to_list() == spanned[second]
    assert report.filter(status="unchanged")["attempts"].unique().to_list() == [0]
    drawn = cli("report", "--job-name", JOB, "--run", str(second), "--output", "r.html",
                *backend.args, cwd=tmp_path)  # fmt: skip
    assert drawn.returncode == 0, drawn.stderr


def test_a_kill_9_mid_night_resumes_with_every_row_once(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Night 2 (every 3rd row of 600 changed, sent slowly) killed -9 while it sends, then
    resumed: every row once in the results, each unchanged row in one span and no outcome,
    each changed row an outcome and in no span, and `history`'s and `status`'s counts those of
    the results."""
    n = 600
    export, job_file = tmp_path / "export.csv", tmp_path / "job.toml"
    job_file.write_text(JOB_FILE)
    write_night(export, n, set())
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(export), "--latency-ms", "20")
    sending = ("--job", str(job_file), "--base-url", emu.base_url, "--rpm", "600000",
               "--job-name", JOB, "--concurrency", "4", *backend.args)  # fmt: skip
    night_1 = cli("run", "export.csv", "--output", "out/night-1.csv", *sending, cwd=tmp_path)
    assert night_1.returncode == 0, night_1.stderr
    changed = set(range(0, n, 3))
    write_night(export, n, changed)
    args = ("run", str(export), "--output", str(tmp_path / "out/night-2.csv"), *sending)
    process = start(*args[1:], cwd=tmp_path)
    wait_for_requests(emu, emu.stats()["requests"] + 40)
    process.send_signal(signal.SIGKILL)
    process.wait()
    wait_for_in_flight(emu)
    (killed, _) = runs(backend, tmp_path)
    assert killed["ended_at"] is None
    run_id = killed["run_id"]
    # Cut mid-night: some rows sent, unchanged rows spanned, never both for a row.
    sent_before, spanned_before = backend.outcome_rows(JOB)[run_id], backend.spanned_rows(JOB)
    assert 0 < len(sent_before) < len(changed)
    assert spanned_before[run_id]
    assert not sent_before & set(spanned_before[run_id])
    status = cli("status", "--job-name", JOB, "--json", *backend.args, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert [going["run_id"] for going in json.loads(status.stdout)] == [run_id]

    resumed = cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    frame = results(tmp_path / "out/night-2.csv")
    assert frame["row_number"].to_list() == list(range(1, n + 1))  # every row exactly once
    by_status = {
        status: set(frame.filter(status=status)["row_number"].to_list())
        for status in ("updated", "unchanged")
    }
    assert by_status == {
        "updated": {index + 1 for index in changed},
        "unchanged": {index + 1 for index in range(n) if index not in changed},
    }
    spanned = backend.spanned_rows(JOB)[run_id]
    assert sorted(spanned) == sorted(by_status["unchanged"])  # each in one span only
    assert backend.outcome_rows(JOB)[run_id] == by_status["updated"]  # and no outcome
    (night, _) = runs(backend, tmp_path)
    assert night["run_id"] == run_id
    assert night["counts"] == results_counts(tmp_path / "out/night-2.csv")
    assert night["invocations"] == 2
    lines = (tmp_path / "out/night-2.csv").read_text().splitlines()
    assert [line for line in lines if ",unchanged," in line] == [
        unchanged_line(index) for index in range(n) if index not in changed
    ]


# What layout 9 wrote for a batch's unchanged rows: an outcome each (frozen text, as it was).
_LAYOUT_9_UNCHANGED = (
    "INSERT INTO outcomes (id, conversation_id, status, attempts, sent_metadata) "
    "SELECT :base + t.r, {batch_key}, :unchanged, 0, t.m FROM {batch} WHERE TRUE"
)


def as_layout_9(backend: Backend, run_id: int, night: Path) -> None:
    """The store as layout 9 left it: the run's unchanged rows (its results' ``night``) each an
    outcome, no spans table, the layout's number 9."""
    frame = results(night).filter(status="unchanged")
    batch = frame.select(r="row_number", i="conversation_id", m="sent_metadata").write_json()
    dialect: schema.Dialect = "sqlite" if backend.url is None else "postgres"
    code = "unchanged" if backend.url is None else schema.STATUS_CODES["unchanged"]
    parameters = {"base": run_id << 32, "batch": batch, "unchanged": code}
    statement = core.prepare(dialect, _LAYOUT_9_UNCHANGED)
    if backend.url is None:
        path = backend.directory / f"{JOB}.sqlite"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute(statement, parameters)
            db.execute("DROP TABLE unchanged_spans")
            db.execute("PRAGMA user_version=9")
        return
    with psycopg.connect(backend.url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET search_path TO bulk_update")
        conn.execute(statement, parameters)
        conn.execute("DROP TABLE unchanged_spans")
        conn.execute("UPDATE layout SET version = 9")


def test_a_store_of_layout_9_keeps_its_unchanged_outcomes_readable(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A store whose night 2 was written by layout 9 (an outcome per unchanged row) is brought
    to layout 10 by the first command that opens it: `history` counts as before, `report` draws
    the night, the same night's command rewrites its results byte for byte from the old
    outcomes, and night 3 keeps its unchanged rows as spans."""
    n = 120
    export = tmp_path / "export.csv"
    write_night(export, n, set())
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(export))
    sending = ("--base-url", emu.base_url, "--rpm", "600000", "--job-name", JOB,
               "--keep-runs", "0", *backend.args)  # fmt: skip
    changed = {5, 50, 99}
    for night, tiers in enumerate((set(), changed), 1):
        write_night(export, n, tiers)
        done = cli("run", "export.csv", "--output", f"out/night-{night}.csv", *sending,
                   cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
    night_2 = tmp_path / "out/night-2.csv"
    written = night_2.read_text()
    before = runs(backend, tmp_path)
    second = before[0]["run_id"]
    backend.spanned_rows(JOB)  # the table is there (layout 10) ...
    as_layout_9(backend, second, night_2)
    assert len(backend.outcome_rows(JOB)[second]) == n  # ... and now each row an outcome

    assert runs(backend, tmp_path) == before  # brought to layout 10 first
    if backend.url is None:
        with contextlib.closing(sqlite3.connect(backend.directory / f"{JOB}.sqlite")) as db:
            assert db.execute("PRAGMA user_version").fetchone() == (schema.LAYOUT_VERSION,)
    else:
        version = backend.query("SELECT version FROM bulk_update.layout")
        assert version == [(schema.LAYOUT_VERSION,)]
    assert backend.spanned_rows(JOB) == {}
    drawn = cli("report", "--job-name", JOB, "--output", "r.html", *backend.args, cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    night_2.unlink()
    again = cli("run", "export.csv", "--output", "out/night-2.csv", *sending, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert night_2.read_text() == written
    assert runs(backend, tmp_path)[0]["counts"] == {"updated": 3, "unchanged": n - 3}

    write_night(export, n, changed | {7})
    third = cli("run", "export.csv", "--output", "out/night-3.csv", *sending, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    latest = runs(backend, tmp_path)[0]
    assert latest["counts"] == {"updated": 1, "unchanged": n - 1}
    assert backend.outcome_rows(JOB)[latest["run_id"]] == {8}
    assert len(backend.spanned_rows(JOB)[latest["run_id"]]) == n - 1
