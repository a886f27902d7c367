"""Many workers recording at once: each outcome (with its state entry) is committed before its
worker goes on, whichever backend; a worker cancelled before its commit leaves its outcome out
(``Pipeline.settle`` commits what it had in hand). On SQLite the outcomes of one turn of the
event loop are committed in one transaction (a commit a turn, not a row: issue 38), handed whole
to the writer thread when another process holds the file, and fail together."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bulk_update.outcome import RowOutcome, Status
from bulk_update.store import Journal, RowTiming
from bulk_update.store.sqlite import SQLiteJournal
from tests.stores import Backend
from tests.test_store_contract import KEY, OPTIONS, PRINT, off, run, updated

ROWS = 40


def committed(backend: Backend, row: int) -> bool:
    """Whether the row's outcome and state entry are committed, read on a connection of its own
    (what another process, or the job after a kill -9, would find)."""
    conversation_id = f"conv_{row:04x}"
    if backend.url is None:
        path = backend.directory / f"{KEY.job}.sqlite"
        with contextlib.closing(sqlite3.connect(path)) as db:
            found = db.execute(
                "SELECT count(*) FROM run_outcomes WHERE row_number = ?", (row,)
            ).fetchone()[0]
        return bool(found) and conversation_id in backend.state(KEY.job)
    found = backend.query(
        "SELECT count(*) FROM bulk_update.run_outcomes WHERE row_number = %s", row
    )[0][0]
    return bool(found) and conversation_id in backend.state(KEY.job)


async def record_all(journal: Journal, backend: Backend, rows: range) -> list[bool]:
    """Each row recorded by a worker of its own, all at once; each worker then looks whether
    its row is committed."""

    async def worker(row: int) -> bool:
        outcome = updated(row, f"conv_{row:04x}", f'{{"n":"{row}"}}')
        await journal.record(outcome, RowTiming(sent_at=1.0, answered_at=1.5, latency_ms=500))
        return committed(backend, row)

    return await asyncio.gather(*(worker(row) for row in rows))


def test_each_of_many_outcomes_recorded_at_once_is_committed_before_its_worker_goes_on(
    backend: Backend,
) -> None:
    async def go() -> list[bool]:
        with backend.open(KEY.job) as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            with journal:
                seen = await record_all(journal, backend, range(1, ROWS + 1))
                assert await off(journal.counts) == {"updated": ROWS}
                assert await off(journal.state_entries) == ROWS
                return seen

    assert run(go) == [True] * ROWS


def test_a_worker_cancelled_before_its_commit_leaves_its_outcome_out(backend: Backend) -> None:
    async def go() -> dict[str, int]:
        with backend.open(KEY.job) as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            with journal:
                kept = asyncio.ensure_future(journal.record(updated(1, "conv_0001", "{}")))
                cut = asyncio.ensure_future(journal.record(updated(2, "conv_0002", "{}")))
                await asyncio.sleep(0)  # both have handed their outcome over
                cut.cancel()
                await kept
                with pytest.raises(asyncio.CancelledError):
                    await cut
                await journal.seal()
                return await off(journal.counts)

    assert run(go) == {"updated": 1}
    assert committed(backend, 1)
    assert not committed(backend, 2)


def test_sqlite_commits_the_outcomes_of_one_turn_together(tmp_path: Path) -> None:
    backend = Backend("sqlite", tmp_path)

    async def go() -> list[str]:
        with backend.open(KEY.job) as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            assert isinstance(journal, SQLiteJournal)
            with journal:
                statements: list[str] = []
                journal._now_db.set_trace_callback(statements.append)
                seen = await record_all(journal, backend, range(1, ROWS + 1))
                journal._now_db.set_trace_callback(None)
                assert seen == [True] * ROWS
                return statements

    statements = run(go)
    assert statements.count("COMMIT") == 1, statements[:5]
    assert sum(s.startswith("INSERT OR REPLACE INTO outcomes") for s in statements) == ROWS


def test_sqlite_hands_a_turn_to_the_writer_thread_while_another_process_holds_the_file(
    tmp_path: Path,
) -> None:
    """Another process's write transaction holds the file: the turn's commit is refused at once
    on the event loop (it never waits there), goes to the writer thread whole, and commits once
    the file is free; every worker then finds its row committed."""
    backend = Backend("sqlite", tmp_path)
    path = tmp_path / f"{KEY.job}.sqlite"
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(30)
            db.execute("COMMIT")

    async def go() -> tuple[list[bool], float]:
        with backend.open(KEY.job) as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            with journal:
                holder = threading.Thread(target=hold)
                holder.start()
                await off(held.wait, 30)
                asyncio.get_running_loop().call_later(0.5, release.set)
                started = time.monotonic()
                seen = await record_all(journal, backend, range(1, ROWS + 1))
                took = time.monotonic() - started
                await off(holder.join)
                return seen, took

    seen, took = run(go)
    assert seen == [True] * ROWS
    assert took >= 0.4  # they waited for the file, off the event loop (its timer went off)


def test_sqlite_a_turn_that_fails_fails_for_each_of_its_workers(tmp_path: Path) -> None:
    """One transaction: a write that fails rolls the turn back, and every worker of the turn
    gets the error (none of its outcomes is committed)."""
    backend = Backend("sqlite", tmp_path)

    async def go() -> list[BaseException | None]:
        with backend.open(KEY.job) as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            assert isinstance(journal, SQLiteJournal)
            with journal:

                def broken(db: sqlite3.Connection) -> None:
                    db.execute("INSERT INTO no_such_table VALUES (1)")

                outcomes = [updated(row, f"conv_{row:04x}", "{}") for row in (1, 2)]
                results = await asyncio.gather(
                    journal.record(outcomes[0]),
                    journal._write(broken),
                    journal.record(outcomes[1]),
                    return_exceptions=True,
                )
                return [r if isinstance(r, BaseException) else None for r in results]

    errors = run(go)
    assert all(isinstance(error, Exception) for error in errors), errors
    assert len({id(error) for error in errors}) == 1  # the turn's one error
    assert not committed(backend, 1)
    assert not committed(backend, 2)


def test_sqlite_outcomes_without_a_state_entry_are_grouped_too(tmp_path: Path) -> None:
    backend = Backend("sqlite", tmp_path)

    async def go() -> dict[str, int]:
        with backend.open(KEY.job) as store:
            journal = await off(store.open_run, KEY, PRINT, OPTIONS)
            with journal:
                failed = [RowOutcome(row, f"conv_{row:04x}", Status.FAILED, http_status=500,
                                     attempts=1) for row in range(1, 6)]  # fmt: skip
                await asyncio.gather(*(journal.record(o) for o in failed))
                return await off(journal.counts)

    assert run(go) == {"failed": 5}
    assert backend.state(KEY.job) == {}
