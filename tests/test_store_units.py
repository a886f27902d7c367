"""The store's pure pieces, table-driven: the outage clock, the lease's own view, who is gone,
the grouped writer, the content fingerprint, the exit code of rows left unprocessed, and the
sweeping of an interrupted write's temporary files."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import random
import signal
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest

from bulk_update.exceptions import DiskFull, StoreUnavailable
from bulk_update.exitcodes import ExitCode
from bulk_update.observe.summary import exit_code_for
from bulk_update.stop import Stop
from bulk_update.store import lease
from bulk_update.store.core import changed_fields, fingerprint_text
from bulk_update.store.grouped import GroupWriter
from bulk_update.store.lease import LEASE_S, SEND_MARGIN_S, LocalLease, is_gone, this_process
from bulk_update.store.outage import Cause, Hurry, Outage, Tries, Watchdog
from bulk_update.store.schema import span_bitmap, span_rows
from bulk_update.write import sweep_partials


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_each_operation_fails_on_its_own_clock_and_one_gives_the_store_up() -> None:
    clock = Clock()
    outage = Outage("db", 10.0, backoff=(0.2, 1.0), clock=clock)
    commit, beat = object(), object()
    assert outage.remaining() == 10.0
    assert [outage.failed("refused", commit) for _ in range(4)] == [0.2, 0.4, 0.8, 1.0]
    clock.now += 4
    assert outage.remaining() == 6.0
    outage.failed("refused", beat)
    outage.over(beat)  # another call's success does not end the commit's outage
    clock.now += 5.9
    assert outage.failed("refused", commit) == pytest.approx(0.1)  # never past its deadline
    clock.now += 0.1
    with pytest.raises(StoreUnavailable, match=r"the store db has been unreachable for 10 s"):
        outage.failed("refused", commit)
    # Given up: every later operation fails at once, without waiting a timeout of its own.
    assert outage.given_up
    with pytest.raises(StoreUnavailable):
        outage.check()
    with pytest.raises(StoreUnavailable):
        outage.failed("refused", beat)


def test_an_operation_that_succeeds_ends_its_own_outage() -> None:
    clock = Clock()
    outage = Outage("db", 10.0, backoff=(0.2, 1.0), clock=clock)
    read = object()
    outage.failed("refused", read)
    clock.now += 9
    outage.over(read)
    clock.now += 5
    assert outage.failed("refused", read) == 0.2  # a new outage, a new clock
    assert not outage.given_up


def test_a_call_cut_by_the_watchdog_failed_since_it_began() -> None:
    clock = Clock()
    outage = Outage("db", 10.0, clock=clock)
    started = clock.now
    assert outage.deadline(started) == started + 10
    clock.now += 10
    with pytest.raises(StoreUnavailable, match="for 10 s"):
        outage.failed("no answer within --store-timeout", object(), since=started)


def test_a_stopping_job_waits_for_the_store_no_longer_than_it_was_told() -> None:
    clock = Clock()
    outage = Outage("db", 60.0, clock=clock)
    commit = object()
    outage.failed("locked", commit)
    outage.hurry(1.0)  # a signal: --drain-timeout 1
    assert outage.deadline(clock.now) == clock.now + 1
    assert outage.failed("locked", commit) <= 1.0
    clock.now += 1
    with pytest.raises(StoreUnavailable):
        outage.failed("locked", commit)


def test_a_call_begun_after_the_stop_moment_gets_as_long_as_the_stop_gave() -> None:
    clock = Clock()
    outage = Outage("db", 60.0, clock=clock)
    outage.hurry(1.0)  # a signal: --drain-timeout 1
    clock.now += 5  # the drain ran out: the abandoned rows' outcomes, the results, the end
    assert outage.deadline(clock.now) == clock.now + 1  # not at once: a store that answers
    outage.hurry(0)  # a second signal: at once
    assert outage.deadline(clock.now) == clock.now
    assert outage.deadline(clock.now - 10) <= clock.now  # a call under way: cut now


def test_a_try_that_waited_before_it_failed_counts_from_when_it_began() -> None:
    clock = Clock()
    outage = Outage("db", 10.0, clock=clock)
    commit = object()
    began = clock.now
    clock.now += 2  # a lock waited for (PostgreSQL's lock_timeout), then the try failed
    outage.failed("lock timeout", commit, since=began)
    assert outage.remaining() == 8.0
    assert outage.deadline(clock.now, commit) == began + 10  # its retry: what is left
    assert outage.deadline(clock.now) == clock.now + 10  # another call: a clock of its own
    clock.now += 8
    with pytest.raises(StoreUnavailable, match="for 10 s"):
        outage.failed("lock timeout", commit, since=clock.now - 2)


def test_a_hurry_made_before_the_store_reaches_its_waits() -> None:
    clock = Clock()
    hurry = Hurry(clock)
    hurry(1.0)  # a signal while the store was being opened
    outage = Outage("db", 60.0, clock=clock, hurry=hurry)
    commit = object()
    assert outage.failed("locked", commit) <= 1.0
    clock.now += 1
    with pytest.raises(StoreUnavailable):
        outage.failed("locked", commit)


def test_the_store_given_up_cuts_the_calls_still_waiting() -> None:
    outage = Outage("db", 60.0)
    watchdog = Watchdog(outage)
    cut = threading.Event()
    with watchdog.guard(cut.set) as beat:  # a heartbeat waiting for a table lock
        with pytest.raises(StoreUnavailable):  # another operation gives the store up
            outage.failed("lock timeout", object(), since=outage.now() - 60)
        assert cut.wait(30)  # not at the end of the heartbeat's own wait
    assert beat.fired


def test_an_outage_says_what_it_is() -> None:
    clock = Clock()
    outage = Outage("s.sqlite", 1.0, state="locked by another process", clock=clock)
    commit = object()
    outage.failed("database is locked", commit)
    clock.now += 2
    with pytest.raises(StoreUnavailable, match="locked by another session for 2 s"):
        outage.failed("lock timeout", commit, state="locked by another session")


class Away(Exception):
    """A store that is away, as a backend's error says it (``Tries``' ``away`` names it)."""


def _away(exc: Exception) -> Cause | None:
    return (str(exc), None) if isinstance(exc, Away) else None


def test_tries_go_on_while_the_store_is_away_and_end_its_outage() -> None:
    clock = Clock()
    outage = Outage("db", 10.0, backoff=(0.0, 0.0), clock=clock)
    answers: list[object] = [Away("refused"), Away("refused"), "done"]

    def attempt() -> object:
        clock.now += 1
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert Tries(outage, outage.check).run(attempt, _away) == "done"
    assert outage.remaining() == 10.0  # no operation failing: the outage is over


@pytest.mark.parametrize("sync", [True, False])
def test_tries_raise_an_error_that_is_no_outage_and_give_the_store_up(sync: bool) -> None:
    clock = Clock()
    outage = Outage("db", 10.0, backoff=(0.0, 0.0), clock=clock)
    tried: list[float] = []

    def away_then(error: Exception) -> object:
        tried.append(clock.now)
        clock.now += 4
        raise error

    def run(error: Exception) -> object:
        tries = Tries(outage, outage.check)
        if sync:
            return tries.run(lambda: away_then(error), _away)

        async def attempt() -> object:
            return away_then(error)

        async def away(exc: Exception) -> Cause | None:
            return _away(exc)

        return asyncio.run(tries.arun(attempt, away))

    with pytest.raises(ValueError, match="a bug"):  # raised as it is, never tried again
        run(ValueError("a bug"))
    assert len(tried) == 1
    with pytest.raises(StoreUnavailable, match="refused"):
        run(Away("refused"))
    assert tried[1:] == [104.0, 108.0, 112.0]  # given up once it has failed for 10 s (at 116)
    with pytest.raises(StoreUnavailable):  # given up: the check stops a try before it begins
        run(Away("refused"))
    assert len(tried) == 4


def test_the_holder_sends_only_while_its_lease_lasts() -> None:
    clock = Clock()
    lease = LocalLease(clock)
    assert not lease.may_send()
    lease.renewed(asked=clock.now)
    clock.now += LEASE_S - SEND_MARGIN_S - 0.01
    assert lease.may_send()
    clock.now += 0.02
    assert not lease.may_send()  # the database's count started later: it ends later
    asked = clock.now - 5
    lease.renewed(asked)  # a late answer counts from when it was asked
    clock.now = asked + LEASE_S - SEND_MARGIN_S - 0.01
    assert lease.may_send()
    clock.now += 0.02
    assert not lease.may_send()
    lease.renewed(clock.now)
    assert lease.may_send()
    lease.ended()
    assert not lease.may_send()


def test_only_a_process_surely_gone_lets_its_lease_go() -> None:
    here = this_process()
    assert not is_gone(here, here)  # this process runs
    child = __import__("subprocess").Popen(["sleep", "0"])
    child.wait()
    started = here.started
    dead = here.__class__(here.host, here.boot, here.pid_namespace, child.pid, started)
    assert is_gone(dead, here)  # that pid runs no process started then
    reused = here.__class__(here.host, here.boot, here.pid_namespace, os.getpid(), "1")
    assert is_gone(reused, here)  # the pid runs another process now
    for other in (
        here.__class__("another-host", here.boot, here.pid_namespace, child.pid, started),
        here.__class__(here.host, "another-boot", here.pid_namespace, child.pid, started),
        here.__class__(here.host, here.boot, "pid:[1]", child.pid, started),
        here.__class__(here.host, "", "", child.pid, ""),  # no /proc where it ran
    ):
        assert not is_gone(other, here)  # cannot be looked at: its lease is waited for


def test_a_holder_that_exited_is_gone_and_one_hidden_from_this_user_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A zombie (exited, not yet waited for by its parent) holds nothing: gone. A process whose
    /proc entry cannot be read (``hidepid``: another user's) is there: not gone."""
    here = this_process()
    child = subprocess.Popen(["sleep", "60"])
    try:
        alive = dataclasses.replace(here, pid=child.pid, started=lease._process(child.pid)[1])
        assert not is_gone(alive, here)
        child.kill()
        deadline = time.monotonic() + 60
        while lease._process(child.pid)[0] != "Z":  # exited, its parent (this test) not told
            assert time.monotonic() < deadline, "the killed child never exited"
            time.sleep(0.01)
        assert is_gone(alive, here)
    finally:
        child.wait()
    assert is_gone(alive, here)  # waited for: no process has its pid

    monkeypatch.setattr(lease, "_read", lambda path: "" if path.endswith("/stat") else "x")
    hidden = dataclasses.replace(here, boot="x", pid_namespace="x")
    assert not is_gone(hidden, hidden)  # this process, /proc unreadable: kill(pid, 0) finds it
    assert is_gone(dataclasses.replace(hidden, pid=child.pid), hidden)  # no such process


def test_grouped_writes_in_order_with_their_errors() -> None:
    committed: list[list[int]] = []
    release = threading.Event()

    def commit(works: list[int]) -> None:
        release.wait()
        if 13 in works:
            raise DiskFull("store", "no space left on device")
        committed.append(works)

    writer: GroupWriter[int] = GroupWriter(commit, "test-writer")

    async def main() -> tuple[BaseException | None]:
        first = asyncio.ensure_future(writer.submit(1))
        await asyncio.sleep(0.05)  # the first group is under way: the rest queue behind it
        assert not writer.idle()
        rest = [asyncio.ensure_future(writer.submit(n)) for n in (2, 3)]
        release.set()
        await asyncio.gather(first, *rest)
        failed = await asyncio.gather(writer.submit(13), return_exceptions=True)
        await writer.barrier()
        return failed

    failed = asyncio.run(main())
    assert committed == [[1], [2, 3]]  # what arrived during a commit went in the next one
    assert isinstance(failed[0], DiskFull)
    writer.run(4)  # from a thread of its own, blocking
    assert committed[-1] == [4]
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.run(5)


def fingerprint(**files: object) -> str:
    return fingerprint_text({"input": [files], "id_column": "conversation_id"})


def test_an_input_is_its_content_wherever_it_is() -> None:
    here = fingerprint(path="/a/in.csv", size=9, blake2b="c")
    copy = fingerprint(path="/b/x.csv", size=9, blake2b="c")
    edited = fingerprint(path="/a/in.csv", size=9, blake2b="d")
    assert changed_fields(here, copy) == []
    assert changed_fields(here, edited) == ["input"]
    # An input in object storage is fingerprinted by its path only.
    remote = fingerprint(path="s3://bucket/in.csv")
    assert changed_fields(remote, fingerprint(path="s3://bucket/in.csv")) == []
    assert changed_fields(remote, fingerprint(path="s3://bucket/other.csv")) == ["input"]
    other_mapping = json.loads(here)
    other_mapping["id_column"] = "id"
    assert changed_fields(here, json.dumps(other_mapping)) == ["id_column"]


@pytest.mark.parametrize(
    ("counts", "limited", "stop", "code"),
    [
        ({"updated": 3}, False, None, ExitCode.OK),
        ({"updated": 3, "invalid": 1}, False, None, ExitCode.ROWS_FAILED),
        ({"updated": 3, "unprocessed": 2}, True, None, ExitCode.OK),  # --limit left them
        # Left with no stop and no --limit: never a clean finish.
        ({"updated": 3, "unprocessed": 2}, False, None, ExitCode.INTERNAL),
        ({"updated": 3, "unprocessed": 2}, False, "signal", ExitCode.SIGTERM),
        ({"updated": 3, "unprocessed": 2}, False, "fatal", ExitCode.FATAL),
        ({"updated": 3, "unprocessed": 2}, False, "error", ExitCode.INTERNAL),
    ],
)
def test_rows_left_unprocessed_say_why(
    counts: dict[str, int], limited: bool, stop: str | None, code: ExitCode
) -> None:
    async def decide() -> ExitCode:
        how = Stop()
        if stop == "signal":
            how.on_signal(signal.SIGTERM)
        elif stop == "fatal":
            how.on_fatal(DiskFull("store"))
        elif stop == "error":
            how.on_error(KeyError("x"))
        return exit_code_for(counts, how, limited=limited)

    assert asyncio.run(decide()) == code


def test_a_killed_writes_temporary_file_is_swept_not_a_live_one(tmp_path: Path) -> None:
    target = tmp_path / "r.csv"
    dead = tmp_path / ".r.csv.0badc0de.partial"
    dead.write_text("half a file")
    live = tmp_path / ".r.csv.feedbeef.partial"
    live.write_text("being written")
    other = tmp_path / ".e.csv.0badc0de.partial"  # another target's
    other.write_text("x")
    with live.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert sweep_partials(target) == 1
    assert not dead.exists()
    assert live.exists()
    assert other.exists()


def test_the_watchdog_cuts_a_call_that_never_returns() -> None:
    outage = Outage("db", 0.2)
    watchdog = Watchdog(outage)
    cut = threading.Event()
    with watchdog.guard(cut.set) as slow:
        assert cut.wait(30)  # a frozen server: only the watchdog ends the call
    assert slow.fired
    with watchdog.guard(cut.clear) as quick:
        pass  # returned in time: left alone
    assert not quick.fired
    assert cut.is_set()


def test_a_short_password_never_masks_letters_of_a_message() -> None:
    from bulk_update.store.postgres import _Session

    session = _Session("postgresql://bulk:e@127.0.0.1:1/db", 1)
    try:
        said = 'connection failed: password authentication failed for user "bulk" (e)'
        assert session.scrub(said) == (
            'connection failed: password authentication failed for user "bulk" (***)'
        )
        assert session.scrub("postgresql://bulk:e@host") == "postgresql://bulk:***@host"
    finally:
        session.close()


def test_a_span_keeps_its_rows_as_bits_and_gives_them_back_in_order() -> None:
    """A span's bitmap: bit ``n - first`` of byte ``(n - first) // 8``, least significant bit
    first, the bytes compressed by zlib; read back in row order, whatever order they came."""
    assert zlib.decompress(span_bitmap(10, [19, 10, 12])) == bytes([0b101, 0b10])
    assert span_rows(10, span_bitmap(10, [19, 10, 12])) == [10, 12, 19]
    assert span_rows(7, span_bitmap(7, [7])) == [7]
    rng = random.Random(38)
    for _ in range(20):
        first = rng.randrange(1 << 31)
        numbers = sorted(
            {first, *(first + rng.randrange(20_000) for _ in range(rng.randrange(1, 5000)))}
        )
        assert span_rows(first, span_bitmap(first, reversed(numbers))) == numbers
    # A night's batch of 20,000 rows, 1 % changed: about a bit a row, far less compressed.
    batch = [n for n in range(20_000) if rng.random() >= 0.01]
    assert len(span_bitmap(0, batch)) < 20_000 // 8
