"""The store's behaviour, as the job relies on it, against both backends (one suite, the backend a
parameter: ``backend`` runs each test on SQLite files and on a real PostgreSQL). What one store
does, the other must do; a test here that passes on one and not the other is a defect."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import polars as pl
import psycopg
import pytest

from bulk_update.exceptions import ConfigError, JournalError
from bulk_update.outcome import RESULT_COLUMNS, ROW_NUMBER, RowOutcome, Status
from bulk_update.store import (
    Journal,
    RowTiming,
    RunBeat,
    RunEnd,
    RunKey,
    Second,
    Settled,
    Store,
    read_state,
    schema,
)
from bulk_update.store.core import ROWS_MAX
from tests.stores import Backend

T = TypeVar("T")

KEY = RunKey("j", "out/results.csv", None)
PRINT = {"input": [{"size": 10, "blake2b": "aa"}], "mapping": {"id": "conversation_id"}}
OPTIONS = {"input": "rows.csv", "rpm": 600}


def run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(work())  # type: ignore[arg-type]


def off(call: Callable[..., T], *args: Any, **kwargs: Any) -> Awaitable[T]:
    """A plain (blocking) journal method, off the event loop as the job calls it."""
    return asyncio.to_thread(call, *args, **kwargs)


def invalid(row: int, conversation_id: str = "not-an-id") -> RowOutcome:
    return RowOutcome(row, conversation_id, Status.INVALID, error_type="invalid_row",
                      error_code="invalid_conversation_id", error_message="bad id")  # fmt: skip


def updated(row: int, conversation_id: str, metadata: str) -> RowOutcome:
    return RowOutcome(row, conversation_id, Status.UPDATED, http_status=200, attempts=1,
                      request_id=f"req_{row}", created_at=1700000000, metadata=metadata,
                      sent_metadata=metadata)  # fmt: skip


def plan(*rows: tuple[int, str, str]) -> pl.DataFrame:
    """A batch's valid rows as the job compares them with the state."""
    return pl.DataFrame(
        rows,
        schema={ROW_NUMBER: pl.UInt32, "conversation_id": pl.String, "sent_metadata": pl.String},
        orient="row",
    )


def finished(journal: Journal) -> int:
    """The rows a resumed run does not process again."""
    return sum(journal.finished_counts_between(0, ROWS_MAX).values())


def test_invalid_rows_sent_rows_and_the_end_are_recorded(backend: Backend) -> None:
    """The PostgreSQL store once failed on any invalid row (record_many's parameters in the
    wrong order): the first thing every run with a bad row does."""

    async def go() -> None:
        with backend.open("j") as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            with journal:
                await off(journal.record_many, [invalid(0), invalid(3, "")])
                await journal.forget("conv_a")
                await journal.record(
                    updated(1, "conv_a", '{"k":"1"}'),
                    RowTiming(sent_at=1.0, answered_at=1.5, latency_ms=500),
                )
                await journal.record(
                    RowOutcome(
                        2,
                        "conv_b",
                        Status.FAILED,
                        http_status=500,
                        attempts=3,
                        error_type="server_error",
                        error_code="server_error",
                        error_message="boom",
                    )
                )
                await journal.seal()
                assert await off(journal.counts) == {"invalid": 2, "updated": 1, "failed": 1}
                assert await off(journal.state_entries) == 1
                assert await off(finished, journal) == 4
                rows = await off(journal.rows_between, 0, 9)
                assert [row[0] for row in rows] == [0, 1, 2, 3]
                assert rows[0][:3] == (0, "not-an-id", "invalid")
                assert rows[3][:3] == (3, "", "invalid")
                assert rows[1][2] == "updated"
                assert rows[1][10] == '{"k":"1"}'
                end = RunEnd({"invalid": 2, "updated": 1, "failed": 1}, 1, total_rows=4,
                             requests=4, rate_limited=1)  # fmt: skip
                await off(journal.finish, end)
            report = store.report_rows(journal.run_id)
        assert report["row_number"].to_list() == [0, 1, 2, 3]
        assert report.filter(pl.col("row_number") == 1)["latency_ms"].to_list() == [500]
        assert report["error_code"].to_list()[0] == "invalid_conversation_id"

    run(go)
    (record,) = backend.history("j")
    assert record.ended_at is not None
    assert record.exit_code == 1
    assert record.counts == {"invalid": 2, "updated": 1, "failed": 1}
    assert (record.total_rows, record.requests, record.rate_limited) == (4, 4, 1)
    assert record.options["rpm"] == 600
    assert record.results == "out/results.csv"
    assert backend.state("j") == {"conv_a": '{"k":"1"}'}


def test_a_run_is_resumed_refused_or_restarted(backend: Backend) -> None:
    async def go() -> None:
        with backend.open("j") as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            first = journal.run_id
            with journal:
                await off(journal.record_many, [invalid(0)])
                await journal.record(updated(1, "conv_a", "{}"))
                await journal.record(RowOutcome(2, "conv_b", Status.FAILED, attempts=1))
                await journal.record(RowOutcome(3, "conv_c", Status.UNPROCESSED))
                await journal.seal()
                # One writer per run: another process (its own store) cannot open the same
                # run at once, nor a shard of the job beside a run of all of it.
                with backend.open("j") as other:
                    for key in (KEY, RunKey("j", "out/results.csv", (0, 2))):
                        with pytest.raises(JournalError, match="already running") as held:
                            await off(other.open_run, key, PRINT, OPTIONS)
                        assert held.value.may_pass  # a scheduler's retry later may succeed
            # The same command resumes the run: what is finished is not done again.
            with await off(store.open_run, KEY, PRINT, OPTIONS) as journal:
                assert journal.run_id == first
                assert await off(journal.finished_between, 0, 9) == {
                    0: Status.INVALID, 1: Status.UPDATED, 2: Status.FAILED,
                }  # fmt: skip
                assert await off(journal.finished_counts_between, 1, 2) == {
                    Status.UPDATED: 1, Status.FAILED: 1,
                }  # fmt: skip
            # Shards of a job side by side (a process each), never one shard twice, nor the
            # whole job beside them.
            shard = RunKey("j", "out/results.csv", (0, 2))
            sibling = RunKey("j", "out/results.csv", (1, 2))
            with (
                backend.open("j") as second,
                backend.open("j") as third,
                await off(store.open_run, shard, PRINT, OPTIONS) as one,
                await off(second.open_run, sibling, PRINT, OPTIONS) as two,
            ):
                assert len({first, one.run_id, two.run_id}) == 3
                for key in (shard, RunKey("j", "other.csv", None)):
                    with pytest.raises(JournalError, match="job 'j'"):
                        await off(third.open_run, key, PRINT, OPTIONS)
            # --retry-failed: failed rows are done again too.
            with await off(store.open_run, KEY, PRINT, OPTIONS, retry_failed=True) as journal:
                assert set(await off(journal.finished_between, 0, 9)) == {0, 1}
            # Another input: refused, naming what changed.
            changed = {**PRINT, "input": [{"size": 11, "blake2b": "bb"}]}
            with pytest.raises(JournalError, match="input"):
                await off(store.open_run, KEY, changed, OPTIONS)
            # The same content under another path (another machine): the same run.
            moved = {**PRINT, "input": [{"size": 10, "blake2b": "aa", "path": "/elsewhere"}]}
            with await off(store.open_run, KEY, moved, OPTIONS) as journal:
                assert journal.run_id == first
            # --restart: a new run; the old one is kept, marked replaced.
            with await off(store.open_run, KEY, changed, OPTIONS, restart=True) as journal:
                assert journal.run_id != first
                assert await off(finished, journal) == 0

    run(go)
    records = {record.run_id: record for record in backend.history("j")}
    assert len(records) == 4  # the run, its restart, two shards
    assert sum(record.replaced for record in records.values()) == 1


def test_the_state_is_forgotten_before_sending_and_compared_verbatim(backend: Backend) -> None:
    async def go() -> None:
        with backend.open("j") as store, await off(store.open_run, KEY, PRINT, OPTIONS) as j:
            await j.record(updated(0, "conv_a", '{"k":"1"}'))
            await j.record(updated(1, "conv_b", '{"k":"2"}'))
            assert await off(j.entries_among, ["conv_a", "conv_x"]) == {"conv_a"}
            batch = plan((5, "conv_a", '{"k":"1"}'), (6, "conv_b", '{"k": "2"}'),
                         (7, "conv_c", '{"k":"3"}'))  # fmt: skip
            # b: the same JSON written otherwise is a change; c: never set.
            assert sorted(await off(j.changed_rows, batch)) == [6, 7]
            await j.forget("conv_a")
            assert await off(j.entries_among, ["conv_a", "conv_b"]) == {"conv_b"}
            assert sorted(await off(j.changed_rows, batch)) == [5, 6, 7]

    run(go)
    assert backend.state("j") == {"conv_b": '{"k":"2"}'}
    # A dry run reads the same state, writing nothing: a job that never set anything has none,
    # and reading it makes no store.
    with read_state(backend.location("j"), "j") as state:
        assert state is not None
        assert state.changed_rows(plan((1, "conv_b", '{"k":"2"}'), (2, "conv_z", "{}"))) == [2]
    assert backend.state("j") == {"conv_b": '{"k":"2"}'}
    with read_state(backend.location("nobody"), "nobody") as state:
        assert state is None
    if backend.url is None:
        assert not backend.location("nobody").path.exists()
    else:
        assert backend.query("SELECT count(*) FROM bulk_update.jobs WHERE name = 'nobody'") == [
            (0,)
        ]


def test_unchanged_rows_take_the_state_of_since_state(backend: Backend) -> None:
    async def go() -> None:
        with (
            backend.open("old") as store,
            await off(store.open_run, RunKey("old", "old.csv", None), PRINT, OPTIONS) as journal,
        ):
            await journal.record(updated(0, "conv_a", '{"k":"1"}'))
            await journal.seal()
        key = RunKey("new", "new.csv", None)
        since = backend.since("old")
        with (
            backend.open("new") as store,
            await off(store.open_run, key, PRINT, OPTIONS, since=since) as journal,
        ):
            batch = plan((0, "conv_a", '{"k":"1"}'), (1, "conv_b", '{"k":"2"}'))
            assert await off(journal.changed_rows, batch) == [1]
            await off(journal.record_unchanged, batch.head(1))
            assert await off(journal.counts) == {"unchanged": 1}
            # Its entry holds the text: no outcome of this store has it.
            (rebuilt,) = await off(journal.unchanged_rows, 0, 1, {0: "conv_a"})
            assert rebuilt[RESULT_COLUMNS.index("sent_metadata")] == '{"k":"1"}'
        with backend.open("new") as store, pytest.raises(ConfigError, match="--since-state"):
            await off(store.open_run, RunKey("new", "x.csv", None), PRINT, OPTIONS,
                      since=backend.since("nobody"))  # fmt: skip

    run(go)
    assert backend.state("new") == {"conv_a": '{"k":"1"}'}


def test_unchanged_rows_are_spans_read_wherever_outcomes_are(backend: Backend) -> None:
    """A batch's unchanged rows are one span, not outcomes: the rows a resumed run skips, the
    counts, the results' rows (rebuilt from the input's IDs and the state) and the report read
    them. A row an earlier invocation left an outcome (sent, its answer never read) that is
    then found unchanged loses that outcome. Compaction drops a run's spans."""
    meta = {row: json.dumps({"k": str(row)}) for row in range(10)}

    async def go() -> None:
        with backend.open("j") as store:
            with await off(store.open_run, KEY, PRINT, OPTIONS) as j:
                for row in range(10):
                    await j.record(updated(row, f"conv_{row}", meta[row]))
                await j.seal()
                await off(j.finish, RunEnd({"updated": 10}, 0, total_rows=10))
            second = RunKey("j", "out/night-2.csv", None)
            with await off(store.open_run, second, PRINT, OPTIONS) as j:
                await j.record(RowOutcome(3, "conv_3", Status.UNPROCESSED, attempts=1,
                                          sent_metadata=meta[3]))  # fmt: skip
                await off(j.record_unchanged, plan(*((r, f"conv_{r}", meta[r]) for r in (2, 4))))
            with await off(store.open_run, second, PRINT, OPTIONS) as j:
                assert await off(j.finished_between, 0, 9) == {
                    2: Status.UNCHANGED,
                    4: Status.UNCHANGED,
                }
                # The next invocation: row 3 found unchanged now, rows 7 and 9 too.
                batch = plan(*((r, f"conv_{r}", meta[r]) for r in (9, 3, 7)))
                assert await off(j.changed_rows, batch) == []
                await off(j.record_unchanged, batch)
                assert await off(j.finished_counts_between, 0, ROWS_MAX) == {Status.UNCHANGED: 5}
                assert await off(j.finished_counts_between, 3, 7) == {Status.UNCHANGED: 3}
                assert await off(j.finished_between, 3, 8) == dict.fromkeys(
                    (3, 4, 7), Status.UNCHANGED
                )
                assert await off(j.counts) == {"unchanged": 5}
                assert await off(j.rows_between, 0, 9) == []  # no outcome left: row 3's went
                ids = {row: f"conv_{row}" for row in range(10)}
                rebuilt = await off(j.unchanged_rows, 3, 9, ids)
                assert [row[:5] for row in rebuilt] == [
                    (r, f"conv_{r}", "unchanged", None, 0) for r in (3, 4, 7, 9)
                ]
                assert [row[RESULT_COLUMNS.index("sent_metadata")] for row in rebuilt] == [
                    meta[r] for r in (3, 4, 7, 9)
                ]
                assert {v for row in rebuilt for v in row[5:] if v not in meta.values()} == {None}
                await off(j.finish, RunEnd({"unchanged": 5}, 0, total_rows=10))
                run_id = j.run_id
            report = store.report_rows(run_id)
            assert report.select("row_number", "status", "attempts").rows() == [
                (r, "unchanged", 0) for r in (2, 3, 4, 7, 9)
            ]
            third = RunKey("j", "out/night-3.csv", None)
            with await off(store.open_run, third, PRINT, OPTIONS) as j:
                await off(j.finish, RunEnd({}, 0, total_rows=0))
            done = await off(store.compact, "j", 1)
            assert run_id in done.runs
            assert done.rows == 5  # the spans' rows (night 1's outcomes: the state names them)
            assert store.report_rows(run_id).is_empty()

    run(go)
    assert backend.spanned_rows("j") == {}


def test_before_images_of_rows_not_finished_are_kept(backend: Backend) -> None:
    image = json.dumps({"tier": "gold"})

    async def go() -> None:
        with backend.open("j") as store, await off(store.open_run, KEY, PRINT, OPTIONS) as j:
            await j.record(RowOutcome(4, "conv_a", Status.UNPROCESSED, previous_metadata=image))
            await j.record(RowOutcome(5, "conv_b", Status.UNPROCESSED))
            await j.seal()
            assert await off(j.before_images_between, 0, 9) == {4: image}
            assert await off(j.finished_between, 0, 9) == {}

    run(go)


def test_status_shows_a_run_going_on_with_its_heartbeat_and_timeline(backend: Backend) -> None:
    async def go() -> None:
        with backend.open("j") as store, await off(store.open_run, KEY, PRINT, OPTIONS) as j:
            seconds = [Second(at=1000, requests=5, rate_limited=1, rows=4, limit_rpm=600.0),
                       Second(at=1001, requests=3, rows=3)]  # fmt: skip
            await j.beat(RunBeat(total_rows=10, rows_done=7, requests=8, rate_limited=1), seconds)
            (status,) = await off(store.status, "j")
            assert status.record.ended_at is None
            assert status.rows_done == 7
            assert status.heartbeat_age_s is not None
            assert status.heartbeat_age_s < 30
            assert status.record.requests == 8
            assert status.record.rate_limited == 1
            assert [(s.at, s.requests) for s in await off(store.timeline, j.run_id)] == [
                (1000, 5), (1001, 3),
            ]  # fmt: skip
            # The end adds what this invocation sent since its last beat.
            await off(j.finish, RunEnd({"updated": 10}, 0, total_rows=10, requests=12))
            assert await off(store.status, "j") == []

    run(go)
    (record,) = backend.history("j")
    assert (record.exit_code, record.requests, record.total_rows) == (0, 12, 10)


def test_the_budget_hands_out_slots_one_after_another(backend: Backend) -> None:
    with backend.open("j") as store:
        budget = store.budget("j")
        try:
            # A claim says how far from its own "now" its slot is; that now lies between the
            # moments the call began and returned. So the first and fifth slots, 4 s apart on
            # the store's clock, are so between those bounds, however slow each call was (an
            # interval far longer than a call: the slots stay back to back).
            claims = []
            for _ in range(5):
                began = time.monotonic()
                wait = budget.claim(1, 1.0)
                claims.append((began + wait, time.monotonic() + wait))
            first, fifth = claims[0], claims[-1]
            assert fifth[0] - first[1] - 0.001 <= 4.0 <= fifth[1] - first[0] + 0.001
            assert [low for low, _ in claims] == sorted(low for low, _ in claims)
        finally:
            budget.close()


def test_a_hold_back_puts_every_later_slot_after_it(backend: Backend) -> None:
    with backend.open("j") as store:
        budget = store.budget("j")
        try:
            assert budget.claim(1, 0.001) < 1.0
            budget.hold_back(10)  # a 429's retry-after, for every shard of the job
            assert budget.claim(1, 0.001) >= 9.0
        finally:
            budget.close()


def test_the_slots_a_shard_claimed_and_did_not_begin_go_back_when_it_closes(
    backend: Backend,
) -> None:
    with backend.open("j") as store:
        first = store.budget("j")
        first.claim(1, 1.0)
        assert first.claim(100, 1.0) > 0.5  # after the first slot: 100 s of slots
        first.close()  # none of the 100 had begun: they go back
        second = store.budget("j")
        try:
            assert second.claim(1, 1.0) < 5.0  # not behind them
            held = store.budget("j")
            held.claim(100, 1.0)
            second.claim(1, 1.0)  # a claim after the 100: they cannot go back
            held.close()
            assert second.claim(1, 1.0) > 90.0
        finally:
            second.close()


def test_outcomes_kept_in_fewer_bytes_read_back_as_given(backend: Backend) -> None:
    """Outcomes keep the returned metadata as '' when it is the sent one, the API's IDs as bytes
    and the timing in milliseconds, and an entry the job set names its outcome: every reader
    gets the values as given."""
    sent = '{"k":"1"}'
    outcomes = [
        (updated(1, "conv_" + "ab" * 24, sent), RowTiming(1764000000.1234, 1764000000.9876, 864)),
        (RowOutcome(2, "conv_a", Status.UPDATED, 200, 2, request_id="req_" + "0f" * 16,
                    created_at=1, metadata='{"k":"1","x":"y"}', sent_metadata=sent),
         RowTiming(1764000001.5, 1764000002.25, None)),
        (RowOutcome(3, "conv_" + "AB" * 24, Status.FAILED, 500, 3, "server_error", "e", "boom",
                    request_id="req_XYZ", sent_metadata=sent), None),
        (RowOutcome(4, "", Status.UPDATED, 200, 1, request_id="", metadata="",
                    sent_metadata=""), None),
        (RowOutcome(5, "conv_b", Status.UNCHANGED, 200, 1, request_id="req_", metadata=sent,
                    sent_metadata=sent, previous_metadata=sent, server_metadata="{}"), None),
    ]  # fmt: skip

    async def write() -> None:
        with backend.open("j") as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            with journal:
                for outcome, timing in outcomes:
                    await journal.record(outcome, timing)
                await journal.seal()

    run(write)
    with backend.open("j") as store:
        with store.open_run(KEY, PRINT, OPTIONS) as journal:
            rows = journal.rows_between(1, 5)
        report = store.report_rows(journal.run_id).rows()
    assert rows == [(o.row_number, *o.as_row()[1:]) for o, _ in outcomes]
    assert [row[6:] for row in report] == [
        (1764000000.123, 1764000000.987, 864), (1764000001.5, 1764000002.25, None),
        (None, None, None), (None, None, None), (None, None, None),
    ]  # fmt: skip
    assert backend.state("j") == {"conv_" + "ab" * 24: sent, "conv_a": sent, "": "", "conv_b": sent}
    sql = "SELECT count(*) FROM {0}last_set WHERE metadata IS NOT NULL"
    if backend.url is None:
        with contextlib.closing(sqlite3.connect(backend.directory / "j.sqlite")) as db:
            copied = int(db.execute(sql.format("")).fetchone()[0])
    else:
        copied = int(backend.query(sql.format("bulk_update."))[0][0])
    assert copied == 0, "an entry the job set names its outcome"


def test_a_store_of_a_newer_layout_is_refused(backend: Backend) -> None:
    newer = schema.LAYOUT_VERSION + 1
    with backend.open("j"):
        pass
    if backend.url is None:
        with contextlib.closing(sqlite3.connect(backend.directory / "j.sqlite")) as db:
            db.execute(f"PRAGMA user_version={newer}")
    else:
        with psycopg.connect(backend.url, autocommit=True) as conn:
            conn.execute("UPDATE bulk_update.layout SET version = %s", (newer,))
    with pytest.raises((JournalError, ConfigError), match=rf"newer bulk-update \(layout {newer}\)"):
        backend.open("j")


def test_a_later_layout_adds_its_columns_to_a_store_of_an_older_one(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one upgrade there is: a layout that adds columns (declared ``since`` it) adds them
    to a store of an older released layout when the job opens it, and its runs resume."""
    with backend.open("j") as store, store.open_run(KEY, PRINT, OPTIONS) as journal:
        journal.record_many([invalid(0), invalid(1)])
        journal.finish(RunEnd({"invalid": 2}, 1, total_rows=2))
    later = schema.LAYOUT_VERSION + 1
    added = schema.Column("python_version", "TEXT", "text", since=later)
    runs = dataclasses.replace(schema.RUNS, columns=(*schema.RUNS.columns, added))
    monkeypatch.setattr(schema, "LAYOUTS", {**schema.LAYOUTS, later: "runs gain python_version"})
    monkeypatch.setattr(schema, "LAYOUT_VERSION", later)
    monkeypatch.setattr(schema, "TABLES", tuple(
        runs if table is schema.RUNS else table for table in schema.TABLES
    ))  # fmt: skip
    with backend.open("j") as store:
        with store.open_run(KEY, PRINT, OPTIONS) as journal:
            assert journal.counts() == {"invalid": 2}
        (record,) = store.history("j")
        assert record.invocations == 2
    if backend.url is None:
        with contextlib.closing(sqlite3.connect(backend.directory / "j.sqlite")) as db:
            (number,) = db.execute("PRAGMA user_version").fetchone()
            columns = [row[1] for row in db.execute("PRAGMA table_info(runs)")]
    else:
        ((number,),) = backend.query("SELECT version FROM bulk_update.layout")
        columns = [name for (name,) in backend.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = "
            "'bulk_update' AND table_name = 'runs' ORDER BY ordinal_position"
        )]  # fmt: skip
    assert number == later
    assert columns == [*schema.RUNS.names(backend.name), "python_version"]  # type: ignore[arg-type]


def end_shard(
    store: Store, index: int, count: int, updated_rows: int, *, wave: str, results: str = "out"
) -> Settled:
    """Shard ``index``/``count`` of job j run (or resumed) to its end, then settled in ``wave``."""
    key = RunKey("j", f"{results}/shard-{index}.csv", (index, count))
    with store.open_run(key, {**PRINT, "shard": [index, count]}, OPTIONS) as journal:
        journal.finish(RunEnd({"updated": updated_rows}, 0, total_rows=updated_rows))
    return store.settle(key, wave)


def test_a_sharded_jobs_run_ends_once_with_its_last_shard(backend: Backend) -> None:
    """A sharded job's run ends with the shard that settles last in its wave (an Airflow DAG
    run): that one gets every shard's run, the others what they wait for. A resumed run is
    unsettled until it settles again (a run going on cannot be settled); the announcer's retry
    announces again, another shard's re-run does not; a later wave waits for every shard."""
    with backend.open("j") as store:
        assert end_shard(store, 0, 3, 10, wave="w1") == Settled(3, ("1/3", "2/3"))
        assert end_shard(store, 2, 3, 30, wave="w1") == Settled(3, ("1/3",))
        ended = end_shard(store, 1, 3, 20, wave="w1")
        assert (ended.shards, ended.waiting) == (3, ())
        assert [(r.shard, r.results, r.counts, r.exit_code) for r in ended.runs] == [
            (f"{k}/3", f"out/shard-{k}.csv", {"updated": 10 * (k + 1)}, 0) for k in range(3)
        ]
        again = end_shard(store, 1, 3, 20, wave="w1")  # the announcer's retry
        assert [r.shard for r in again.runs] == ["0/3", "1/3", "2/3"]
        assert end_shard(store, 0, 3, 10, wave="w1") == Settled(3, ())  # announced by 1/3
        # The next wave: each shard again; one still running is not settled, nor settles.
        assert end_shard(store, 0, 3, 10, wave="w2") == Settled(3, ("1/3", "2/3"))
        running = RunKey("j", "out/shard-1.csv", (1, 3))
        with store.open_run(running, {**PRINT, "shard": [1, 3]}, OPTIONS):
            assert end_shard(store, 2, 3, 30, wave="w2") == Settled(3, ("1/3",))
            with pytest.raises(JournalError, match=r"shard 1/3: no run for out/shard-1\.csv has"):
                store.settle(running, "w2")
        assert [r.run_id for r in end_shard(store, 1, 3, 20, wave="w2").runs] == [
            r.run_id for r in ended.runs
        ]  # each shard's run, resumed (the same results paths)
        # A wave whose shard 1/3 ends after a later wave's runs (results per wave, as
        # ``{{ run_id }}`` makes them): each wave ends once, with its own runs.
        for index in (0, 2):
            end_shard(store, index, 3, 1, wave="w3", results="w3")
        for index in (0, 1, 2):
            later = end_shard(store, index, 3, 1, wave="w4", results="w4")
        assert [r.results for r in later.runs] == [f"w4/shard-{k}.csv" for k in range(3)]
        late = end_shard(store, 1, 3, 1, wave="w3", results="w3")
        assert [r.results for r in late.runs] == [f"w3/shard-{k}.csv" for k in range(3)]


def test_two_shards_that_settle_at_once_end_the_jobs_run_once(backend: Backend) -> None:
    """Two shards' last settles, at the same moment from two processes' stores, over and
    over: each wave is announced by exactly one of them (never none, never both)."""
    waves = 12
    with backend.open("j") as store:
        for index in (0, 1):
            end_shard(store, index, 2, 5, wave="w0")
    start = threading.Barrier(2)

    def settle(index: int) -> list[bool]:
        key = RunKey("j", f"out/shard-{index}.csv", (index, 2))
        ended = []
        with backend.open("j") as store:
            for wave in range(waves):
                start.wait(timeout=60)
                ended.append(bool(store.settle(key, f"w{wave + 1}").runs))
        return ended

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.map(settle, (0, 1))
    assert [a + b for a, b in zip(first, second, strict=True)] == [1] * waves
