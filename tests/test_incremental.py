"""Incremental runs, with the real CLI and the emulator's request counters: a re-run
sends only what changed since the job last set it; the state never claims what the server may
not hold, whatever stopped the run."""

from __future__ import annotations

import json
import signal
import sqlite3
from contextlib import closing
from functools import partial
from pathlib import Path

import polars as pl
import pytest

from bulk_update.config import JobConfig
from bulk_update.emulator.process import EmulatorProcess
from bulk_update.exceptions import ConfigError
from bulk_update.outcome import ROW_NUMBER
from bulk_update.plan import PLAN_COLUMNS, mark_unchanged, unchanged_rows, updates, valid_rows
from bulk_update.store import StoreLocation, read_state
from bulk_update.store.sqlite import SQLiteStore
from tests import helpers
from tests.conftest import StartEmulator
from tests.helpers import (
    by_row,
    cli,
    results,
    start,
    state_entries,
    wait_for_in_flight,
    wait_for_requests,
)

# Every row's tier is "t0" unless the test says otherwise.
write_input = partial(helpers.write_input, tag="t0")


def updates_sent(emu: EmulatorProcess) -> int:
    return int(emu.stats()["by_operation"].get("update", 0))


def stored(emu: EmulatorProcess, conversation_id: str) -> dict[str, str]:
    metadata: dict[str, str] = emu.admin(f"conversations/{conversation_id}")["metadata"]
    return metadata


def test_rerun_sends_only_what_changed(start_emulator: StartEmulator, tmp_path: Path) -> None:
    n, edited = 60, {3: "t1", 17: "t1", 41: "t9"}
    source = tmp_path / "in.csv"
    ids = write_input(source, n)
    emu = start_emulator("--preload", str(source))

    def run(night: int, *extra: str) -> dict[int, dict[str, object]]:
        output = tmp_path / f"night-{night}.csv"
        args = ("run", str(source), "--output", str(output), "--base-url", emu.base_url)
        done = cli(*args, "--job-name", "nightly", "--rpm", "60000", *extra)
        assert done.returncode == 0, done.stderr
        return by_row(output)

    first = run(1)
    assert updates_sent(emu) == n
    assert {row["status"] for row in first.values()} == {"updated"}
    state_file = tmp_path / "nightly.sqlite"
    entries = state_entries(state_file)
    assert entries == {c: json.dumps({"tier": "t0", "n": str(i)}, separators=(",", ":"))
                       for i, c in enumerate(ids)}  # fmt: skip

    second = run(2)
    assert updates_sent(emu) == n  # nothing sent
    assert {row["status"] for row in second.values()} == {"unchanged"}
    assert {row["attempts"] for row in second.values()} == {0}
    assert second[5]["sent_metadata"] == entries[ids[4]]

    write_input(source, n, edited)
    dry = cli("validate", str(source), "--output", str(tmp_path / "dry.csv"),
              "--job-name", "nightly")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert f"unchanged={n - 3}" in dry.stderr
    assert "would send 3" in dry.stderr
    dry_rows = by_row(tmp_path / "dry.csv")
    assert {r for r, row in dry_rows.items() if row["status"] == "planned"} == {4, 18, 42}

    before = emu.stats(per_id=True)["updates_applied_by_id"]
    third = run(3)
    assert updates_sent(emu) == n + 3  # exactly the edited rows
    after = emu.stats(per_id=True)["updates_applied_by_id"]
    assert {c for c in after if after[c] != before.get(c)} == {ids[i] for i in edited}
    assert {r for r, row in third.items() if row["status"] == "updated"} == {4, 18, 42}
    assert stored(emu, ids[41]) == {"tier": "t9", "n": "41"}
    assert json.loads(state_entries(state_file)[ids[41]]) == {"tier": "t9", "n": "41"}
    summary = cli("run", str(source), "--output", str(tmp_path / "night-4.csv"),
                  "--base-url", emu.base_url, "--job-name", "nightly")  # fmt: skip
    assert f"unchanged={n}" in summary.stderr

    full = run(5, "--full")
    assert updates_sent(emu) == 2 * n + 3
    assert {row["status"] for row in full.values()} == {"updated"}


def test_kill_9_leaves_the_state_true_to_the_server(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Night 1 sets t0 everywhere; night 2 sets t1 and is killed (-9) mid-run, never resumed;
    night 3 brings t0 back. Rows confirmed, in flight (which the server still applies) or never
    sent by night 2: night 3 must leave every conversation at t0. The state may cost a repeated
    request, never a skipped one."""
    n, concurrency = 400, 8
    source = tmp_path / "in.csv"
    ids = write_input(source, n)
    emu = start_emulator("--preload", str(source), "--latency-ms", "50")
    common = ("--base-url", emu.base_url, "--job-name", "j", "--rpm", "600000",
              "--concurrency", str(concurrency))  # fmt: skip
    assert cli("run", str(source), "--output", str(tmp_path / "1.csv"), *common).returncode == 0

    def kill_9_mid_run(output: str) -> None:
        process = start(str(source), "--output", str(tmp_path / output), *common)
        wait_for_requests(emu, emu.stats()["requests"] + 100)
        process.send_signal(signal.SIGKILL)
        process.wait()
        wait_for_in_flight(emu)  # the server finishes the requests it had received

    store = tmp_path / "j.sqlite"
    write_input(source, n, dict.fromkeys(range(n), "t1"))
    kill_9_mid_run("2.csv")
    on_server = {c: stored(emu, c)["tier"] for c in ids}
    assert 50 <= sum(t == "t1" for t in on_server.values()) < n  # really cut half way
    entries = state_entries(store)
    for conversation_id, metadata in entries.items():  # the state never claims too much
        assert json.loads(metadata)["tier"] == on_server[conversation_id]

    write_input(source, n)
    sent = updates_sent(emu)
    night_3 = cli("run", str(source), "--output", str(tmp_path / "3.csv"), *common)
    assert night_3.returncode == 0, night_3.stderr
    assert {c: stored(emu, c)["tier"] for c in ids} == dict.fromkeys(ids, "t0")
    # It sent what was t1 on the server, plus at most the rows that were in flight.
    still_t1 = sum(t == "t1" for t in on_server.values())
    assert still_t1 <= updates_sent(emu) - sent <= still_t1 + concurrency
    frame = results(tmp_path / "3.csv")
    assert frame.height == n
    assert set(frame["status"].to_list()) == {"updated", "unchanged"}

    # Killed at any moment, a run never leaves an `updated` outcome without its state entry, nor
    # an entry without its outcome: both commit in one transaction of the job's one store.
    write_input(source, n, dict.fromkeys(range(n), "t2"))
    kill_9_mid_run("4.csv")
    journaled = updated_ids(store, str(tmp_path / "4.csv"))
    night_4 = {c for c, m in state_entries(store).items() if json.loads(m)["tier"] == "t2"}
    assert 0 < len(journaled) < n  # really cut mid-run
    assert night_4 == journaled
    resumed = cli("run", str(source), "--output", str(tmp_path / "4.csv"), *common)
    assert resumed.returncode == 0, resumed.stderr
    assert set(results(tmp_path / "4.csv")["status"].to_list()) == {"updated"}
    assert {c: stored(emu, c)["tier"] for c in ids} == dict.fromkeys(ids, "t2")
    claimed = {c: json.loads(m) for c, m in state_entries(store).items()}
    assert claimed == {c: stored(emu, c) for c in ids}  # never a row missing
    sent = updates_sent(emu)
    night_5 = cli("run", str(source), "--output", str(tmp_path / "5.csv"), *common)
    assert night_5.returncode == 0, night_5.stderr
    assert updates_sent(emu) == sent  # the state knows every row: nothing to send
    assert set(results(tmp_path / "5.csv")["status"].to_list()) == {"unchanged"}


def updated_ids(store: Path, results_path: str) -> set[str]:
    """The conversations a run (by its results path) has journaled as updated."""
    with closing(sqlite3.connect(store)) as db:
        rows = db.execute(
            "SELECT o.conversation_id FROM run_outcomes AS o JOIN runs AS r USING (run_id) "
            "WHERE r.results = ? AND o.status = 'updated'",
            (results_path,),
        )
        return {conversation_id for (conversation_id,) in rows}


def test_failed_rows_are_sent_again(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    ids = write_input(source, 6)
    emu = start_emulator("--preload", str(source))
    common = ("--base-url", emu.base_url, "--job-name", "j", "--max-attempts", "1")
    assert cli("run", str(source), "--output", str(tmp_path / "1.csv"), *common).returncode == 0
    # Night 2 tries t1 and fails on every row: the server kept t0, but the job cannot know.
    write_input(source, 6, dict.fromkeys(range(6), "t1"))
    emu.admin("config", {"error_rate": 1.0})
    failed = cli("run", str(source), "--output", str(tmp_path / "2.csv"), *common)
    assert failed.returncode == 1
    assert set(results(tmp_path / "2.csv")["status"].to_list()) == {"failed"}
    assert state_entries(tmp_path / "j.sqlite") == {}
    # Night 3 is t0 again, the same as night 1 set: sent anyway, as failed rows always are.
    emu.admin("config", {"error_rate": 0.0})
    write_input(source, 6)
    sent = updates_sent(emu)
    again = cli("run", str(source), "--output", str(tmp_path / "3.csv"), *common)
    assert again.returncode == 0, again.stderr
    assert updates_sent(emu) == sent + 6
    assert set(state_entries(tmp_path / "j.sqlite")) == set(ids)


def test_since_state_and_job_file_names(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 20)
    emu = start_emulator("--preload", str(source))
    job = tmp_path / "backfill.toml"
    job.write_text(f'input = "{source}"\noutput = "{tmp_path / "b.parquet"}"\n'
                   f'base-url = "{emu.base_url}"\n')  # fmt: skip
    assert cli("run", "--job", str(job)).returncode == 0
    backfill_state = tmp_path / "backfill.sqlite"  # named after the job file
    assert len(state_entries(backfill_state)) == 20

    # A new nightly job picks up where the backfill left off.
    state_dir = tmp_path / "states"
    nightly = ("run", str(source), "--output", str(tmp_path / "n.csv"), "--base-url",
               emu.base_url, "--state-dir", str(state_dir))  # fmt: skip
    first = cli(*nightly, "--since-state", str(backfill_state))
    assert first.returncode == 0, first.stderr
    assert updates_sent(emu) == 20
    assert set(results(tmp_path / "n.csv")["status"].to_list()) == {"unchanged"}
    # ... and took the entries over into its own state (named after its results file).
    assert state_entries(state_dir / "n.sqlite") == state_entries(backfill_state)
    restarted = cli(*nightly, "--restart")
    assert restarted.returncode == 0
    assert updates_sent(emu) == 20

    missing = cli(*nightly, "--since-state", str(tmp_path / "nope.sqlite"))
    assert missing.returncode == 2
    assert "--since-state" in missing.stderr
    not_a_state = cli(*nightly, "--since-state", str(source))
    assert not_a_state.returncode == 2
    assert "not a bulk-update state" in not_a_state.stderr
    bad_name = cli(*nightly, "--job-name", "../etc")
    assert bad_name.returncode == 2
    assert "--job-name" in bad_name.stderr


def test_a_dry_run_writes_no_state(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 5)
    done = cli("validate", str(source), "--output", str(tmp_path / "v.csv"))
    assert done.returncode == 0
    assert set(results(tmp_path / "v.csv")["status"].to_list()) == {"planned"}
    assert not list(tmp_path.glob("*.sqlite*"))


def test_a_second_run_of_the_job_is_refused(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 100)
    emu = start_emulator("--preload", str(source), "--latency-ms", "100")
    # One row at a time: 10 s of holding the job, however slowly the machine starts the other.
    common = ("--base-url", emu.base_url, "--job-name", "j", "--concurrency", "1")
    process = start(str(source), "--output", str(tmp_path / "a.csv"), *common)
    try:
        wait_for_requests(emu, 2)
        other = cli("run", str(source), "--output", str(tmp_path / "b.csv"), *common)
        assert other.returncode == 2
        assert "already running (job 'j')" in other.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def test_default_names() -> None:
    assert JobConfig(input="i.csv", output="out/results.csv").store_path() == Path(
        "out/results.sqlite"
    )
    config = JobConfig(input="i", output="s3://b/x/nightly run.parquet", state_dir="/var/s")
    assert config.resolved_job_name() == "nightly_run"
    assert config.store_path() == Path("/var/s/nightly_run.sqlite")
    assert JobConfig(input="i", output="s3://b/.x.csv").store_path() == Path(
        ".bulk_update/x.sqlite"
    )
    with pytest.raises(ConfigError, match="--job-name"):
        JobConfig(input="i", output="o.csv", job_name="a/b")


def test_changed_rows_compares_the_exact_text_in_the_store(tmp_path: Path) -> None:
    plan = pl.DataFrame(
        [
            (1, "conv_a", None, None, '{"k":"1"}'),
            (2, "conv_b", None, None, '{"k":"2"}'),
            (3, "conv_c", None, None, '{"k":"3"}'),
            (4, "conv_a", "duplicate", "duplicate of row 1", None),
            (5, "conv_d", None, None, '{"k":"\\u00e9 \\"q\\""}'),
        ],
        schema={ROW_NUMBER: pl.UInt32, **dict.fromkeys(PLAN_COLUMNS[1:], pl.String)},
        orient="row",
    )
    path = tmp_path / "j.sqlite"
    SQLiteStore.open(path).close()
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO last_set (conversation_id, metadata, set_at) VALUES (?, ?, 'then')",
            [
                ("conv_a", '{"k":"1"}'),
                ("conv_b", '{"k": "2"}'),
                ("conv_d", '{"k":"\\u00e9 \\"q\\""}'),
            ],
        )
    with read_state(StoreLocation(path), "j") as state:
        assert state is not None
        changed = state.changed_rows(valid_rows(plan))
        assert state.changed_rows(valid_rows(plan).clear()) == []
    assert sorted(changed) == [2, 3]  # b: same JSON, other text; c: never set
    marked = mark_unchanged(plan, changed)
    assert marked["unchanged"].to_list() == [True, False, False, False, True]
    assert unchanged_rows(marked)[ROW_NUMBER].to_list() == [1, 5]
    assert [u.row_number for u in updates(marked)] == [2, 3]
