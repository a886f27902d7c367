"""The job's end-to-end scenarios that matter, on both stores (``backend``: SQLite files, and a
real PostgreSQL): invalid rows and duplicates, a run stopped and resumed, incremental runs,
--backup and revert, history and status. The real CLI against the emulator, as a user runs it.
What works with one store and not the other is a defect (the PostgreSQL store once failed on
the first invalid row, because no test fed it one)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from tests.conftest import StartEmulator
from tests.helpers import by_row, cli, start, wait_for_requests, write_input
from tests.stores import Backend


def history(backend: Backend, job: str) -> list[dict[str, Any]]:
    shown = cli("history", "--job-name", job, "--json", *backend.args)
    assert shown.returncode == 0, shown.stderr
    found: list[dict[str, Any]] = json.loads(shown.stdout)
    return found


def test_invalid_rows_and_duplicates_then_the_same_command_again(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    ids = write_input(source, 12)
    with source.open("a") as extra:
        extra.write("not-a-conversation,v,12\n")  # row 13: invalid ID
        extra.write(f"{ids[3]},w,13\n")  # row 14: a duplicate of row 4
        extra.write(f"{ids[4]},{'x' * 600},14\n")  # row 15: a value over 512 characters
    emu = start_emulator("--preload", str(source))
    output = tmp_path / "out.csv"
    args = ("run", str(source), "--output", str(output), "--base-url", emu.base_url,
            "--rpm", "60000", *backend.args)  # fmt: skip
    done = cli(*args)
    assert done.returncode == 1, done.stderr
    rows = by_row(output)
    assert sorted(rows) == list(range(1, 16))  # row numbers count from 1
    assert [rows[n]["status"] for n in (13, 14, 15)] == ["invalid"] * 3
    assert rows[14]["error_code"] == "duplicate_id"
    assert [rows[n]["status"] for n in range(1, 13)] == ["updated"] * 12
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert sorted(applied) == sorted(ids)
    assert set(applied.values()) == {1}

    again = cli(*args)
    assert again.returncode == 1, again.stderr
    assert emu.stats(per_id=True)["updates_applied_by_id"] == applied  # nothing sent twice
    assert by_row(output) == rows
    (run,) = history(backend, "out")
    assert (run["invocations"], run["exit_code"]) == (2, 1)
    assert run["counts"] == {"invalid": 3, "updated": 12}
    assert run["requests"] == emu.stats()["requests"]  # the updates and the preflight's read
    assert len(backend.state("out")) == 12


def test_a_run_stopped_by_sigterm_shows_in_status_and_resumes_every_row_once(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    ids = write_input(source, 60)
    emu = start_emulator("--preload", str(source), "--latency-ms", "50")
    output = tmp_path / "out.jsonl"
    args = ("--output", str(output), "--base-url", emu.base_url, "--concurrency", "2",
            *backend.args)  # fmt: skip
    process = start(str(source), *args)
    wait_for_requests(emu, 10)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    shown = cli("status", "--job-name", "out", *backend.args)
    assert shown.returncode == 0, shown.stderr
    assert "stopped by SIGTERM (exit 143)" in shown.stdout
    (stopped,) = json.loads(cli("status", "--job-name", "out", "--json", *backend.args).stdout)
    assert stopped["state"] == "stopped"
    assert 0 < stopped["rows_done"] < 60

    resumed = cli("run", str(source), *args)
    assert resumed.returncode == 0, resumed.stderr
    assert [row["status"] for row in by_row(output).values()] == ["updated"] * 60
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert sorted(applied) == sorted(ids)
    assert set(applied.values()) == {1}
    assert "no run going on" in cli("status", "--job-name", "out", *backend.args).stdout
    (run,) = history(backend, "out")
    assert (run["invocations"], run["exit_code"], run["stopped_by"]) == (2, 0, None)


def test_incremental_runs_backup_and_revert(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    ids = write_input(source, 20, tag="a")
    emu = start_emulator("--preload", str(source))
    common = ("--base-url", emu.base_url, "--rpm", "60000", "--job-name", "nightly",
              *backend.args)  # fmt: skip
    first = tmp_path / "first.csv"
    assert cli("run", str(source), "--output", str(first), *common).returncode == 0

    # The next export changes three rows: only those are sent, with their before-images kept.
    write_input(source, 20, tags={1: "b", 6: "b", 10: "b"}, tag="a")  # rows 2, 7 and 11
    second = tmp_path / "second.parquet"
    done = cli("run", str(source), "--output", str(second), "--backup", *common)
    assert done.returncode == 0, done.stderr
    rows = by_row(second)
    assert [n for n, row in rows.items() if row["status"] == "updated"] == [2, 7, 11]
    assert json.loads(rows[2]["previous_metadata"]) == {"tier": "a", "n": "1"}
    assert emu.admin(f"conversations/{ids[6]}")["metadata"]["tier"] == "b"

    # The revert finds the job that wrote the results (no --job-name), and refuses, creating
    # nothing, a job that did not write them, a plan, or a revert's own dry run.
    plain = ("--base-url", emu.base_url, "--rpm", "60000", *backend.args)
    plan = tmp_path / "plan.csv"
    dry = cli("revert", str(second), "--output", str(plan), "--dry-run", *plain)
    assert dry.returncode == 0, dry.stderr
    checked = tmp_path / "checked.csv"
    assert cli("validate", str(source), "--output", str(checked), *plain).returncode == 0
    assert backend.jobs() == ["nightly"]
    for results, options, says in [
        (second, ("--job-name", "other"), "no run of job 'other' wrote these results"),
        (plan, (), "not the results of a run"),
        (checked, (), "not the results of a run"),
    ]:
        refused = cli("revert", str(results), "--output", str(tmp_path / "no.csv"), *options,
                      *plain)  # fmt: skip
        assert refused.returncode == 2, refused.stderr
        (line,) = refused.stderr.strip().splitlines()
        assert says in line
        assert "--job-name" in line or "not the results" in line
    assert backend.jobs() == ["nightly"]  # nothing created
    assert not (tmp_path / "no.csv").exists()
    undone = tmp_path / "undo.csv"
    reverted = cli("revert", str(second), "--output", str(undone), *plain)
    assert reverted.returncode == 0, reverted.stderr
    assert [n for n, row in by_row(undone).items() if row["status"] == "updated"] == [2, 7, 11]
    for index in range(20):
        assert emu.admin(f"conversations/{ids[index]}")["metadata"]["tier"] == "a"
    # The job's state follows the revert: the same change is sent again, and only it.
    third = tmp_path / "third.csv"
    assert cli("run", str(source), "--output", str(third), *common).returncode == 0
    assert [n for n, row in by_row(third).items() if row["status"] == "updated"] == [2, 7, 11]
    runs = history(backend, "nightly")
    assert [Path(run["results"]).name for run in runs] == [
        "third.csv", "undo.csv", "second.parquet", "first.csv",
    ]  # fmt: skip
    assert all(run["exit_code"] == 0 for run in runs)


def test_a_run_that_cannot_reach_the_api_records_its_end(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    """A wrong base URL, an API that cannot be reached: exit 2 with one line, and the run is
    recorded as ended (never "running" for ever), its rows left for the same command."""
    source = tmp_path / "in.csv"
    write_input(source, 8)
    with source.open("a") as extra:
        extra.write("bad,v,8\n")
    emu = start_emulator("--preload", str(source))
    output = tmp_path / "out.csv"
    for base_url in (emu.root_url, "http://127.0.0.1:9/v1"):  # without /v1; nothing listening
        done = cli("run", str(source), "--output", str(output), "--base-url", base_url,
                   *backend.args)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("bulk-update: error:") == 1
        run = history(backend, "out")[0]
        assert run["ended_at"] is not None
        assert (run["exit_code"], run["stopped_by"]) == (2, "config_error")
        assert run["counts"] == {"invalid": 1, "unprocessed": 8}
        if base_url == emu.root_url:
            shown = cli("status", "--job-name", "out", *backend.args).stdout
            assert "stopped by config_error (exit 2)" in shown
            assert "gone" not in shown
    report = tmp_path / "r.html"
    assert (
        cli("report", "--job-name", "out", "--output", str(report), *backend.args).returncode == 0
    )
    assert "not ended" not in report.read_text()
    # The same command, with the right URL, resumes the run and sends every row once.
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
               *backend.args)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert emu.stats()["by_operation"]["update"] == 8


def test_two_shards_at_once_never_write_one_file(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    """Shards running at once with one --errors-output (or one --output) would each write the
    file whole with their own rows: the second is refused, exit 2, one line."""
    source, n = tmp_path / "in.csv", 240
    write_input(source, n)
    with source.open("a") as extra:
        extra.writelines(f"bad-{i},v,{i}\n" for i in range(8))
    # Slow answers: the first shard runs for about a minute, whatever the machine's load (with
    # 60 rows, 15 s: on a machine at load 20 it had ended before `status` below ran).
    emu = start_emulator("--preload", str(source), "--latency-ms", "500")
    errors = str(tmp_path / "errors.csv")
    common = ("--base-url", emu.base_url, "--job-name", "j", *backend.args)
    first = start(str(source), "--output", str(tmp_path / "s0.csv"), "--shard", "0/2",
                  "--concurrency", "1", "--errors-output", errors, *common)  # fmt: skip
    try:
        wait_for_requests(emu, 2)
        for output in ("s1.csv", "s0.csv"):  # the errors file; then the results too
            refused = cli("run", str(source), "--output", str(tmp_path / output), "--shard",
                          "1/2", "--errors-output", errors, *common)  # fmt: skip
            assert refused.returncode == 2, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            line = refused.stderr.strip()
            assert "is written by another run of job 'j' going on now (shard 0/2)" in line
            assert "its own --output and --errors-output" in line
        # Refused before it was recorded: nothing to resume, nothing in status.
        going = json.loads(cli("status", "--job-name", "j", "--json", *backend.args).stdout)
        assert [run["shard"] for run in going] == ["0/2"]
        assert first.poll() is None  # the checks above ran while it was going on
        alone = cli("run", str(source), "--output", str(tmp_path / "s1.csv"), "--shard", "1/2",
                    "--concurrency", "8", "--errors-output", str(tmp_path / "errors-1.csv"),
                    *common)  # fmt: skip
        assert alone.returncode == 1, alone.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode in (1, 143), stderr  # finished meanwhile, or stopped
    rows = by_row(tmp_path / "errors.csv") | by_row(tmp_path / "errors-1.csv")
    invalid = sorted(n for n, row in rows.items() if row["status"] == "invalid")
    assert invalid == list(range(n + 1, n + 9))  # every invalid row, in one file or the other


def test_history_shows_each_invocations_options(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    """A run resumed with another --rpm, its base URL from $OPENAI_BASE_URL: history shows the
    last invocation's options as resolved, and keeps every invocation's."""
    source = tmp_path / "in.csv"
    write_input(source, 10)
    emu = start_emulator("--preload", str(source))
    output = str(tmp_path / "out.csv")
    first = cli("run", str(source), "--output", output, "--rpm", "600", "--limit", "3",
                *backend.args, OPENAI_BASE_URL=emu.base_url)  # fmt: skip
    assert first.returncode == 0, first.stderr
    again = cli("run", str(source), "--output", output, "--rpm", "6000", *backend.args,
                OPENAI_BASE_URL=emu.base_url)  # fmt: skip
    assert again.returncode == 0, again.stderr
    (run,) = history(backend, "out")
    options = run["options"]
    assert (options["rpm"], options["base_url"]) == (6000, emu.base_url)
    assert [i["rpm"] for i in options["invocations"]] == [600, 6000]
    assert [i["limit"] for i in options["invocations"]] == [3, None]
    assert options["invocations"][0]["invoked_at"] < options["invocations"][1]["invoked_at"]
    assert "sk-" not in json.dumps(options)


def test_a_job_without_runs_is_a_usage_error_on_both_stores(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 3)
    emu = start_emulator("--preload", str(source))
    done = cli("run", str(source), "--output", str(tmp_path / "real.csv"), "--base-url",
               emu.base_url, *backend.args)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for command in ("history", "status"):
        typo = cli(command, "--job-name", "rael", *backend.args)
        assert typo.returncode == 2, typo.stdout
        (line,) = typo.stderr.strip().splitlines()
        assert "'rael'" in line
