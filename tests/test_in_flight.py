"""The rows in flight when a run stops, with the real CLI against the emulator, on both stores:
a row whose update left the process is never recorded "not sent". Its result says the outcome
is unknown, the next run sends it again, and ``revert`` treats it as possibly applied (the
before-image put back where the server holds what the run sent, drift reported elsewhere)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.conftest import StartEmulator
from tests.helpers import (
    ID,
    by_row,
    cli,
    start,
    wait_for_in_flight,
    wait_for_requests,
    write_input,
)
from tests.stores import Backend
from tests.test_know_the_server import (
    emu_post,
    stored,
    summary_line,
    text,
    write_rows,
    write_server,
)

UNKNOWN = "outcome_unknown"


def before(i: int) -> dict[str, str]:
    """Conversation ``i``'s map before the run: keys the run never sets, and ``tier``."""
    return {"owner": f"o{i}", "tier": "old", "queue": f"q{i}"}


def applied_by_id(emu: Any) -> dict[str, int]:
    """Updates the emulator applied, per conversation, once it has finished with every request
    it received (the job may have gone while they waited out the latency)."""
    wait_for_in_flight(emu, 0, timeout=60)
    applied: dict[str, int] = emu.stats(per_id=True)["updates_applied_by_id"]
    return applied


def test_a_backup_stopped_by_a_replacing_server_records_its_rows_in_flight(
    start_emulator: StartEmulator, tmp_path: Path, backend: Backend
) -> None:
    n = 40
    write_server(tmp_path / "server.csv", {ID(i): before(i) for i in range(n)})
    source = tmp_path / "in.csv"
    write_rows(source, ["conversation_id", "tier"], [[ID(i), "new"] for i in range(n)])
    # Each request takes 0.8 s and the rate spaces them 0.1 s apart: when the first update's
    # answer stops the job, the other workers' updates are on their way.
    emu = start_emulator("--preload", str(tmp_path / "server.csv"), "--latency-ms", "800")
    emu.admin("config", {"replace_metadata": True})
    results = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(results), "--backup", "--concurrency", "8",
               "--rpm", "600", "--base-url", emu.base_url, *backend.args)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert "the server replaced its metadata instead of merging" in done.stderr
    applied = applied_by_id(emu)
    rows = by_row(results)
    assert sorted(rows) == list(range(1, n + 1))
    unknown: list[int] = []
    for number, row in rows.items():
        i = number - 1
        if ID(i) in applied:  # the server applied it: the record must never say "not sent"
            assert row["previous_metadata"] == text(before(i)), row
            if row["status"] == "updated":
                continue
            assert row["status"] == "unprocessed", row
            assert row["error_code"] == UNKNOWN, row
            assert row["error_type"] == "job_stopped", row
            assert "the server may have applied it" in row["error_message"], row
            assert "replaced_not_merged" in row["error_message"], row
            assert row["attempts"] >= 2, row  # its read and its update
            assert row["sent_metadata"] == text({"tier": "new"})
            unknown.append(i)
        elif row["error_code"] != UNKNOWN:
            assert row["status"] == "unprocessed", row
            assert row["error_message"].startswith("not sent"), row
    assert unknown, (applied, done.stderr)  # updates were in flight at the stop
    assert len(unknown) <= 8
    settled = sum(r["error_code"] == UNKNOWN for r in rows.values())
    said = f"{settled} rows were" if settled != 1 else "1 row was"
    assert f"{said} sent but the job stopped before the answer" in summary_line(done.stderr)

    # Someone else changes one of them since; the revert runs on the same replacing server.
    drifted = unknown[0]
    emu_post(emu, ID(drifted), {"tier": "gold"})
    undo = tmp_path / "undo.csv"
    undone = cli("revert", str(results), "--output", str(undo), "--base-url", emu.base_url,
                 *backend.args)  # fmt: skip
    assert undone.returncode == 1, undone.stderr  # the drifted row is left alone
    reverted = by_row(undo)
    assert reverted[drifted + 1]["status"] == "invalid"
    assert reverted[drifted + 1]["error_code"] == "drifted"
    assert stored(emu, ID(drifted)) == {"tier": "gold"}  # never written over
    for i in range(n):
        if i == drifted:
            continue
        # Applied or not, every conversation holds its before-image again (the dropped keys
        # put back), and one the run never changed was left as it was.
        assert stored(emu, ID(i)) == before(i), i
        if ID(i) not in applied:
            assert reverted[i + 1]["status"] == "unchanged", reverted[i + 1]
    for i in unknown[1:]:
        assert reverted[i + 1]["status"] == "updated", reverted[i + 1]
        assert reverted[i + 1]["previous_metadata"] == text({"tier": "new"})

    # The stopped run resumed, on a server that merges: the rows that may have been applied are
    # sent again, and each keeps the before-image of its first read, not a re-read (the drifted
    # one's would be {"tier": "gold"}).
    emu.admin("config", {"replace_metadata": False})
    again = cli("run", str(source), "--output", str(results), "--backup", "--concurrency", "8",
                "--base-url", emu.base_url, *backend.args)  # fmt: skip
    assert again.returncode == 0, again.stderr
    rows = by_row(results)
    assert {row["status"] for row in rows.values()} == {"updated"}
    for number, row in rows.items():
        assert row["previous_metadata"] == text(before(number - 1)), row
    assert stored(emu, ID(drifted)) == {"tier": "new"}


def test_rows_abandoned_by_the_drain_are_outcome_unknown_and_sent_again(
    start_emulator: StartEmulator, tmp_path: Path, backend: Backend
) -> None:
    n, concurrency = 40, 4
    source = tmp_path / "in.csv"
    ids = write_input(source, n)
    # Answers take 5 s, the drain 1 s: the updates in flight at SIGTERM are abandoned.
    emu = start_emulator("--preload", str(source), "--latency-ms", "5000")
    output = tmp_path / "out.csv"
    args = (str(source), "--output", str(output), "--base-url", emu.base_url,
            "--concurrency", str(concurrency), *backend.args)  # fmt: skip
    errors = tmp_path / "errors.csv"
    process = start(*args, "--drain-timeout", "1", "--errors-output", str(errors))
    wait_for_requests(emu, 1 + concurrency)  # the preflight, then one update per worker
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    applied = applied_by_id(emu)
    assert len(applied) == concurrency, applied
    rows = by_row(output)
    assert sorted(rows) == list(range(1, n + 1))
    unknown = {ids[number - 1] for number, r in rows.items() if r["error_code"] == UNKNOWN}
    assert set(applied) <= unknown, (applied, unknown)
    assert len(unknown) <= concurrency
    for number, row in rows.items():
        assert row["status"] == "unprocessed", row
        if ids[number - 1] in unknown:
            assert row["attempts"] == 1, row
            assert "SIGTERM" in row["error_message"], row
            assert "the server may have applied it" in row["error_message"], row
            assert row["sent_metadata"] is not None
        else:
            assert row["error_code"] == "interrupted", row
            assert row["error_message"].startswith("not sent"), row
    # The errors file, the store's counts and history say the same, each row once.
    fed_back = by_row(errors)
    assert sorted(fed_back) == list(range(1, n + 1))
    assert {ids[k - 1] for k, r in fed_back.items() if r["error_code"] == UNKNOWN} == unknown
    [record] = backend.history("out")
    assert (record.counts, record.stopped_by) == ({"unprocessed": n}, "SIGTERM")

    emu.admin("config", {"latency_ms": 0})
    final = cli("run", *args)
    assert final.returncode == 0, final.stderr
    assert {r["status"] for r in by_row(output).values()} == {"updated"}
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert set(applied) == set(ids)
    sent_twice = {cid for cid, count in applied.items() if count > 1}
    assert sent_twice == unknown & set(applied)  # the abandoned rows, sent again: no other
    assert len(sent_twice) <= concurrency


def test_a_revert_puts_back_an_update_that_timed_out_but_was_applied(
    start_emulator: StartEmulator, tmp_path: Path, backend: Backend
) -> None:
    """A row whose update timed out is ``failed`` / ``timeout``, yet the server may have applied
    it (the emulator applies an update whose client left during its delay, as the API does):
    ``revert`` reads it and puts its before-image back where the server holds what the run
    sent. A row whose read timed out was never sent: nothing to put back."""
    n = 24
    write_server(tmp_path / "server.csv", {ID(i): before(i) for i in range(n)})
    source = tmp_path / "in.csv"
    write_rows(source, ["conversation_id", "tier"], [[ID(i), "new"] for i in range(n)])
    # One request at a time, so the seeded faults fall on the same requests every time: a third
    # of the answers (reads and updates) come 2 s late, past the 1 s timeout, and are not retried.
    emu = start_emulator("--preload", str(tmp_path / "server.csv"), "--slow-rate", "0.3",
                         "--slow-ms", "2000", "--random-seed", "11")  # fmt: skip
    results = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(results), "--backup", "--concurrency", "1",
               "--timeout", "1", "--max-attempts", "1", "--rpm", "6000",
               "--base-url", emu.base_url, *backend.args)  # fmt: skip
    assert done.returncode == 1, done.stderr
    applied = applied_by_id(emu)
    rows = by_row(results)
    timed_out = [n - 1 for n, r in rows.items() if r["error_code"] == "timeout"]
    applied_unseen = [i for i in timed_out if ID(i) in applied]
    assert applied_unseen, (timed_out, applied)  # updates that timed out but were applied
    assert any(ID(i) not in applied for i in timed_out)  # and reads that timed out
    for i in applied_unseen:
        assert rows[i + 1]["status"] == "failed", rows[i + 1]
        assert rows[i + 1]["previous_metadata"] == text(before(i))
        assert stored(emu, ID(i))["tier"] == "new"

    emu.admin("config", {"slow_rate": 0.0})
    undo = tmp_path / "undo.csv"
    undone = cli("revert", str(results), "--output", str(undo), "--base-url", emu.base_url,
                 *backend.args)  # fmt: skip
    assert undone.returncode == 0, undone.stderr
    reverted = by_row(undo)
    for i in range(n):
        assert stored(emu, ID(i)) == before(i), (i, reverted[i + 1])
    for i in applied_unseen:
        assert reverted[i + 1]["status"] == "updated", reverted[i + 1]
    for i in timed_out:
        if ID(i) not in applied:
            assert reverted[i + 1]["status"] == "unchanged", reverted[i + 1]
