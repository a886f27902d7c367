"""The cron lines as cron runs them, night after night (README "cron"): a new export each night
at the same path with a few rows changed. A finished run's next night is the job's next run (it
sends only what changed since the state); an unfinished run's new input is refused, saying both
ways out; a dated --output is a new job each night, said before it sends. Both stores."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from bulk_update.job import new_job_warning
from bulk_update.outcome import Status
from bulk_update.store.core import _NOT_FINISHED, unfinished_because
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import ID, cli, results, start, wait_for_requests, write_input
from tests.stores import Backend

N = 40


def updates(emu: object) -> int:
    """The update requests the emulator has answered so far."""
    return int(emu.stats()["by_operation"].get("update", 0))  # type: ignore[attr-defined]


def store_args(backend: Backend) -> tuple[str, ...]:
    """The plain cron line keeps its SQLite store beside the results (no flag); PostgreSQL
    is named by --state-url."""
    return () if backend.url is None else ("--state-url", backend.url)


def statuses(path: Path) -> dict[int, str]:
    frame = results(path)
    assert frame["row_number"].to_list() == list(range(1, frame.height + 1))  # every row, once
    return dict(zip(frame["row_number"].to_list(), frame["status"].to_list(), strict=True))


def night(line: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli(*line, cwd=cwd)


def test_night_after_night_at_one_results_path(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """`bulk-update run export.csv --output out/results.csv` every night over the night's
    export: night 1 sends every row, each later night only the rows changed since, exit 0,
    and the results file says what happened to every row of that night's export."""
    export = tmp_path / "export.csv"
    write_input(export, N)
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(export))
    where = store_args(backend)
    line = ("run", "export.csv", "--output", "out/results.csv", "--base-url", emu.base_url,
            "--rpm", "600000", *where)  # fmt: skip
    tags: dict[int, str] = {}
    for number, changed in enumerate(({}, {3: "b", 17: "b", 29: "b"}, {0: "c", 17: "c"}), 1):
        tags.update(changed)
        write_input(export, N, tags)
        before = updates(emu)
        done = night(line, tmp_path)
        assert done.returncode == 0, done.stderr
        sent = N if number == 1 else len(changed)
        assert updates(emu) - before == sent
        assert f"updated={sent}" in done.stderr.splitlines()[-1]
        assert "is new" not in done.stderr
        assert statuses(tmp_path / "out" / "results.csv") == {
            i + 1: "updated" if number == 1 or i in changed else "unchanged" for i in range(N)
        }
    assert emu.admin(f"conversations/{ID(17)}")["metadata"]["tier"] == "c"

    # The same export again (nothing new): the night's finished run is resumed, nothing sent.
    before = updates(emu)
    again = night(line, tmp_path)
    assert again.returncode == 0, again.stderr
    assert updates(emu) == before

    # Every night is a run of the job, kept: none set aside, the newest first.
    shown = cli("history", "--job-name", "results", "--json", *where, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    runs = json.loads(shown.stdout)
    assert [run["results"] for run in runs] == ["out/results.csv"] * 3
    assert [run["replaced"] for run in runs] == [False] * 3
    assert [run["exit_code"] for run in runs] == [0] * 3
    assert [run["invocations"] for run in runs] == [2, 1, 1]
    assert [run["counts"] for run in runs] == [
        {"unchanged": 38, "updated": 2}, {"unchanged": 37, "updated": 3}, {"updated": N},
    ]  # fmt: skip
    going = cli("status", "--job-name", "results", "--json", *where, cwd=tmp_path)
    assert going.returncode == 0, going.stderr
    assert json.loads(going.stdout) == []  # nothing unfinished
    report = cli("report", "--job-name", "results", "--output", "r.html", *where, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"run {runs[0]['run_id']}:" in report.stderr  # the last night's


def test_an_unfinished_night_refuses_a_new_export_saying_both_ways_out(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A night stopped by SIGTERM mid-run is unfinished: the next night's export at the same
    path is refused (exit 2, one line, nothing sent) naming both ways out; the first one
    (finish it with its own input) works, and the next night then sends only what changed."""
    n = 300
    export = tmp_path / "export.csv"
    write_input(export, n)
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(export), "--latency-ms", "30")
    where = store_args(backend)
    line = ("export.csv", "--output", "out/results.csv", "--base-url", emu.base_url,
            "--rpm", "600000", "--concurrency", "2", *where)  # fmt: skip
    first = start(*line, cwd=tmp_path)
    wait_for_requests(emu, 20)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr
    stopped_at = updates(emu)
    assert stopped_at < n
    shutil.copyfile(export, tmp_path / "night-1.csv")

    write_input(export, n, {5: "b", 250: "b"})  # the next night's export
    refused = night(("run", *line), tmp_path)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    message = lines[0]
    for said in ("out/results.csv is unfinished", "stopped by SIGTERM", "rows left: unprocessed=",
                 "changed: input", "the same command resumes it", "--restart"):  # fmt: skip
        assert said in message, message
    assert TEST_KEY not in refused.stderr
    assert updates(emu) == stopped_at  # nothing sent

    # Way out 1: finish the old run with its input (put back at the same path).
    shutil.copyfile(tmp_path / "night-1.csv", export)
    finished = night(("run", *line), tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "resuming:" in finished.stderr
    assert set(statuses(tmp_path / "out" / "results.csv").values()) == {"updated"}
    assert n <= updates(emu) <= n + 2  # at most the rows in flight at the stop twice
    # ... after which the next night's export is the job's next run.
    write_input(export, n, {5: "b", 250: "b"})
    before = updates(emu)
    next_night = night(("run", *line), tmp_path)
    assert next_night.returncode == 0, next_night.stderr
    assert updates(emu) - before == 2
    assert statuses(tmp_path / "out" / "results.csv") == {
        i + 1: "updated" if i in (5, 250) else "unchanged" for i in range(n)
    }


def test_failed_rows_leave_a_night_unfinished_only_under_retry_failed(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A night that ended with a failed row: with --retry-failed (its failed rows are to be
    done again) the next export is refused; without it, the night finished and the next
    export is the job's next run, which sends the failed row again (it has no state)."""
    export = tmp_path / "export.csv"
    write_input(export, N)
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(export))
    missing = f"{ID(999)},v,999\n"  # not on the server: 404, failed
    export.write_text(export.read_text() + missing)
    where = store_args(backend)
    line = ("run", "export.csv", "--output", "out/results.csv", "--base-url", emu.base_url,
            "--rpm", "600000", *where)  # fmt: skip
    first = night(line, tmp_path)
    assert first.returncode == 1, first.stderr
    assert "failed=1" in first.stderr

    write_input(export, N, {7: "b"})
    export.write_text(export.read_text() + missing)
    refused = night((*line, "--retry-failed"), tmp_path)
    assert refused.returncode == 2, refused.stderr
    message = refused.stderr.strip()
    assert "rows left: failed=1" in message, message
    assert "changed: input" in message
    assert "--restart" in message

    before = updates(emu)
    second = night(line, tmp_path)
    assert second.returncode == 1, second.stderr
    assert updates(emu) - before >= 2  # the changed row, and the failed one once more
    found = statuses(tmp_path / "out" / "results.csv")
    assert found == {
        **{i + 1: "updated" if i == 7 else "unchanged" for i in range(N)}, N + 1: "failed",
    }  # fmt: skip


def test_a_dated_output_says_before_sending_that_its_job_is_new(
    backend: Backend, start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """`--output out/n-$(date +%F).csv` without --job-name names a new job each night (the
    results file's name). The first job of a store says nothing (nothing to compare with); a
    new job beside others warns before it sends, one line naming them and --job-name, and its
    summary says it again (cron-wrapper.sh mails it). Given the --job-name it names, the next
    night sends only what changed."""
    export = tmp_path / "export.csv"
    write_input(export, N)
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(export))
    where = store_args(backend)

    def line(date: str, *more: str) -> tuple[str, ...]:
        return ("run", "export.csv", "--output", f"out/n-{date}.csv", "--base-url",
                emu.base_url, "--rpm", "600000", *where, *more)  # fmt: skip

    first = night(line("2026-12-04"), tmp_path)
    assert first.returncode == 0, first.stderr
    assert "is new" not in first.stderr  # the store's first job: nothing to compare with

    write_input(export, N, {3: "b", 17: "b", 29: "b"})
    before = updates(emu)
    second = night(line("2026-12-05"), tmp_path)
    assert second.returncode == 0, second.stderr
    assert updates(emu) - before == N  # a new job: every row (what the warning says)
    said = second.stderr.splitlines()
    warned = [text for text in said if "is new" in text]
    started = next(i for i, text in enumerate(said) if "job started" in text)
    assert said.index(warned[0]) < started, second.stderr  # before anything is sent
    holder = "out (its store's directory)" if backend.url is None else "its store postgresql:"
    for text in ("WARNING job 'n-2026-12-05' is new", f"other jobs in {holder}",
                 ": n-2026-12-04;", "--job-name", "a dated --output is a new job"):  # fmt: skip
        assert text in warned[0], warned[0]
    assert said[-1].startswith("bulk-update: ")
    assert warned[-1] == said[-1]
    assert "warning: job 'n-2026-12-05' is new" in said[-1]

    # As the warning says: the job's name given, the next night sends only what changed.
    write_input(export, N, {3: "b", 17: "c", 29: "b"})
    before = updates(emu)
    third = night(line("2026-12-06", "--job-name", "n-2026-12-05"), tmp_path)
    assert third.returncode == 0, third.stderr
    assert "is new" not in third.stderr
    assert updates(emu) - before == 1
    assert statuses(tmp_path / "out" / "n-2026-12-06.csv")[18] == "updated"

    # A new job that compares with another job's state (--since-state) is told nothing.
    since = "out/n-2026-12-05.sqlite" if backend.url is None else "n-2026-12-05"
    taken_over = night(line("2026-12-07", "--since-state", since), tmp_path)
    assert taken_over.returncode == 0, taken_over.stderr
    assert "is new" not in taken_over.stderr
    assert updates(emu) - before == 1  # every row unchanged against that state


@pytest.mark.parametrize(
    ("ended_at", "counts", "stopped_by", "retry_failed", "said"),
    [
        ("2026-12-05 02:15:00", {"updated": 4}, None, False, None),
        ("2026-12-05 02:15:00", {"updated": 3, "failed": 1}, None, False, None),
        ("2026-12-05 02:15:00", {"updated": 3, "failed": 1}, None, True, "rows left: failed=1"),
        ("2026-12-05 02:15:00", {"updated": 3, "unprocessed": 1}, None, False,
         "rows left: unprocessed=1"),
        (None, {}, None, False, "its end was never recorded"),
        ("2026-12-05 02:15:00", {"updated": 4}, "input_changed", False,
         "stopped by input_changed"),
        ("2026-12-05 02:15:00", {"updated": 2, "unprocessed": 2}, "SIGTERM", False,
         "stopped by SIGTERM; rows left: unprocessed=2"),
    ],
)  # fmt: skip
def test_unfinished_because(
    ended_at: str | None,
    counts: dict[str, int],
    stopped_by: str | None,
    retry_failed: bool,
    said: str | None,
) -> None:
    left = (*_NOT_FINISHED, Status.FAILED.value) if retry_failed else _NOT_FINISHED
    assert unfinished_because(ended_at, counts, stopped_by, left) == said


def test_new_job_warning_names_the_jobs_in_one_line() -> None:
    few = new_job_warning("n-2026-12-05", "its store, x", ["a", "n-2026-12-04"], named=False)
    assert few == (
        "job 'n-2026-12-05' is new: no earlier run, no state to compare with, so every valid "
        "row is sent; other jobs in its store, x: a, n-2026-12-04; to send only what "
        "changed since one of them, run with its --job-name (the job is named after the "
        "results file: a dated --output is a new job each run)"
    )
    days = [f"n-2026-11-{day:02}" for day in range(1, 31)]
    many = new_job_warning("cron", "out", days, named=True)
    assert "30 other jobs in out: …, n-2026-11-26, n-2026-11-27, n-2026-11-28, " in many
    assert "n-2026-11-25" not in many
    assert "dated" not in many
    assert "\n" not in many
