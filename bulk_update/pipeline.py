"""The run's engine: the input planned a batch at a time (``planned_batches``) and fed to
``--concurrency`` workers through a bounded queue (``Pipeline``), each row sent (or read first,
as the mode says) and its outcome committed to the journal; ``send_all`` runs it under the
signals' rules (a first signal drains, a second stops at once)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import polars as pl

from bulk_update.config import JobConfig
from bulk_update.exceptions import BulkUpdateError, DiskFull, JobStopped, first_line, is_disk_full
from bulk_update.modes import Mode
from bulk_update.observe.progress import Tally
from bulk_update.outcome import ROW_NUMBER, RowOutcome, Status
from bulk_update.plan import PlannedUpdate
from bulk_update.read import InputTable
from bulk_update.send import InFlight, Sender
from bulk_update.stop import JOB_STOPPED, FailureStreak, Signals, Stop
from bulk_update.store import Journal, RowTiming

__all__ = ["Pipeline", "send_all"]

log = logging.getLogger("bulk_update")


@dataclass(frozen=True, slots=True)
class _Batch:
    to_send: list[PlannedUpdate]
    invalid: list[RowOutcome]
    unchanged: pl.DataFrame  # ROW_NUMBER, conversation_id, sent_metadata
    # Of to_send, the conversations the job's state has an entry for: each is forgotten (in
    # its own commit) before it is sent. A conversation without one needs no such commit.
    known: set[str]


class _Planner:
    """Plans the input a batch at a time: per batch, the updates to send, the ``invalid``
    outcomes, the ``unchanged`` rows (those the run has not finished yet). A batch the run has
    finished is not planned again (the tally counted its rows at the start). ``next`` blocks
    (it reads the input and the store): the job calls it in a thread. Stops once --limit rows
    are planned to send."""

    def __init__(self, config: JobConfig, mode: Mode, table: InputTable, journal: Journal) -> None:
        self.config = config
        self.journal = journal
        self.keeps_images = mode.keeps_images
        self.valid_seen = 0
        self._planner = mode.planner(config, table)
        self._batches: Iterator[pl.DataFrame] | None = None

    @property
    def at_limit(self) -> bool:
        return self.config.limit is not None and self.valid_seen >= self.config.limit

    def next(self) -> _Batch | None:
        """The next batch (None once the input is read)."""
        if self._batches is None:
            self._batches = self._planner.batches()
        for batch in self._batches:
            if not batch.is_empty():
                return self._plan(batch)
        return None

    def _plan(self, batch: pl.DataFrame) -> _Batch:
        journal, limit = self.journal, self.config.limit
        first, last = int(batch[ROW_NUMBER][0]), int(batch[ROW_NUMBER][-1])
        done = journal.finished_counts_between(first, last)
        if sum(done.values()) == batch.height and limit is None:
            # resuming: this whole batch is done, no need to plan it
            return _Batch([], [], pl.DataFrame(), set())
        finished = journal.finished_between(first, last) if done else {}
        candidates, invalid, unchanged = self._planner.plan(batch, journal)
        images = journal.before_images_between(first, last) if self.keeps_images else {}
        to_send: list[PlannedUpdate] = []
        cutoff: int | None = None  # with --limit: the rows from here on are not processed
        last_taken = 0
        for update in candidates:
            if limit is not None and self.valid_seen >= limit:
                cutoff = update.row_number
                break
            self.valid_seen += 1
            last_taken = update.row_number
            if update.row_number not in finished:
                previous = images.get(update.row_number)
                if previous is not None:
                    update = dataclasses.replace(update, previous=previous)
                to_send.append(update)
        if limit is not None and cutoff is None and self.valid_seen >= limit and candidates:
            cutoff = last_taken + 1
        if cutoff is not None:
            # A canary of N rows judges those N: an invalid row past its N-th is left
            # unprocessed (not a failure of the canary), for the run without --limit. Rows
            # found unchanged are recorded wherever they are: they cost no request.
            invalid = [o for o in invalid if o.row_number < cutoff]
        invalid = [o for o in invalid if o.row_number not in finished]
        if finished:
            done_rows = pl.Series(list(finished), dtype=unchanged.schema[ROW_NUMBER])
            unchanged = unchanged.filter(~pl.col(ROW_NUMBER).is_in(done_rows.implode()))
        known = journal.entries_among([u.conversation_id for u in to_send]) if to_send else set()
        return _Batch(to_send, invalid, unchanged, known)


async def planned_batches(
    config: JobConfig, mode: Mode, table: InputTable, journal: Journal, stop: Stop
) -> AsyncIterator[_Batch]:
    """The planned batches, each planned in a thread. Stops early when the job stops or
    --limit is reached: rows never read end in the results as ``unprocessed`` (see
    write.results_between)."""
    planner = _Planner(config, mode, table, journal)
    while not stop.is_set and not planner.at_limit:
        batch = await asyncio.to_thread(planner.next)
        if batch is None:
            return
        yield batch


class Pipeline:
    """A producer feeding planned updates to ``concurrency`` workers through a bounded queue.

    ``halt()`` (a signal, or the API saying stop) empties the queue so that neither side can
    block on the other; workers finish the row in hand and exit. After a stop (a fatal answer,
    a failure streak, the store gone) or an error the job did not expect, the other workers are
    cancelled, whether waiting (a backoff, a limiter pause, a commit) or with a request in
    flight; so are those still draining when the drain after a signal ends. No worker ends
    without the job knowing why.

    A cancelled worker's row stays unprocessed, and a re-run sends it (at most ``concurrency``
    rows twice). ``settle``, once the workers are gone, records what is known of it: the
    outcome whose commit was cut short, or, for a row whose update may have reached the server
    (``Sender.in_flight``), ``outcome_unknown``: never "not sent". A row cancelled before any
    update left says "not sent" with the rest (``write.results_between``).
    """

    def __init__(
        self,
        config: JobConfig,
        mode: Mode,
        table: InputTable,
        journal: Journal,
        sender: Sender,
        tally: Tally,
        stop: Stop,
    ) -> None:
        self.config = config
        self.mode = mode
        self.table = table
        self.journal = journal
        self.sender = sender
        self.tally = tally
        self.stop = stop
        self.queue: asyncio.Queue[PlannedUpdate | None] = asyncio.Queue(
            maxsize=config.concurrency * 4
        )
        self.workers: list[asyncio.Task[None]] = []
        self.known: set[str] = set()  # queued conversations with a state entry
        self.streak = FailureStreak(config.stop_after_failures)
        self.read_first = mode.read_first(config)
        # Outcomes in hand whose commit a cancelled worker cut short (``settle`` commits them).
        self.unrecorded: list[tuple[RowOutcome, RowTiming]] = []
        self.unknown = 0  # rows settled as outcome_unknown

    def halt(self, *, wake_workers: bool = True) -> None:
        """Drop the queued rows (they stay unprocessed) and, unless they are being cancelled,
        send every worker its end-of-input. The queue holds 4 x concurrency, so this never
        blocks; a producer blocked on a full queue gets room."""
        while not self.queue.empty():
            self.queue.get_nowait()
        if wake_workers:
            for _ in self.workers:
                self.queue.put_nowait(None)

    async def worker(self) -> None:
        try:
            await self._work()
        except JobStopped as exc:
            # The row in hand has no committed outcome: it stays unprocessed, resumable.
            self.stop_on_fatal(exc)
        except Exception as exc:
            self.stop_on_error(exc)

    async def _work(self) -> None:
        journal, tally = self.journal, self.tally
        while not self.stop.is_set and (update := await self.queue.get()) is not None:
            if update.conversation_id in self.known:
                self.known.discard(update.conversation_id)
                await journal.forget(update.conversation_id)
            sent_at = time.time()
            if self.read_first is not None:
                sent = await self.read_first.handle(update, self.sender, journal, tally.added)
            else:
                sent = await self.sender.send(update)
            outcome = sent.outcome
            tally.sent += 1
            tally.answered(sent.latency_s)
            latency = None if sent.latency_s is None else round(sent.latency_s * 1000)
            timing = RowTiming(sent_at, time.time(), latency)
            try:
                await journal.record(outcome, timing)
            except asyncio.CancelledError:
                self.unrecorded.append((outcome, timing))
                raise
            if self.sender.telemetry is not None:
                self.sender.telemetry.row()
            tally.add(outcome.status)
            failed = outcome.status is Status.FAILED
            fatal = sent.fatal
            if self.streak.observe(failed, outcome.http_status, outcome.error_code):
                fatal = fatal or self.streak.stopped(outcome)
            if fatal is not None:
                self.stop_on_fatal(fatal)
                return

    def stop_on_fatal(self, fatal: JobStopped) -> None:
        if not self.stop.on_fatal(fatal):
            return
        log.error("stopping: %s", fatal, extra={"event": "fatal", "code": fatal.error_code})
        self._stop_others()

    def stop_on_error(self, error: Exception) -> None:
        """Any other error: the run stops as on a fatal answer. One of ours (a store found
        damaged, the preflight finding a base URL that is not the API) is raised again once
        the run has stopped (exit 2); any other is a bug (exit 70, its traceback in the log)."""
        if not isinstance(error, BulkUpdateError) and is_disk_full(error):
            where = getattr(error, "filename", None) or "a file the job writes"
            self.stop_on_fatal(DiskFull(str(where), first_line(error)))
            return
        if not self.stop.on_error(error):
            return
        if not isinstance(error, BulkUpdateError):
            log.error(
                "internal error: %s: %s; stopping", type(error).__name__, first_line(error),
                exc_info=error, extra={"event": "internal_error"},
            )  # fmt: skip
        self._stop_others()

    def _stop_others(self) -> None:
        current = asyncio.current_task()
        for task in self.workers:
            if task is not current:
                task.cancel()
        self.halt(wake_workers=False)

    async def settle(self) -> None:
        """Once the workers are gone: commit the outcomes they were cancelled with in hand, and
        record each row whose update may have reached the server, its answer never read, as
        ``outcome_unknown`` (``Stop.unanswered``): the server may have applied it, so the next
        run sends it again and a revert treats it as applied. A store that refuses the commit
        stops the run as it would have stopped a worker."""
        flights = self.sender.in_flight
        unanswered = [flight for flight in flights.values() if flight.reached]
        flights.clear()
        done, self.unrecorded = self.unrecorded, []
        if not (unanswered or done):
            return
        code, message = self.stop.unanswered()
        when = time.time()
        for flight in unanswered:
            done.append((_unknown(flight, code, message), RowTiming(when, when, None)))
        self.unknown = len(unanswered)
        self.tally.sent += len(unanswered)
        failures = await asyncio.gather(
            *(self.journal.record(outcome, timing) for outcome, timing in done),
            return_exceptions=True,
        )
        for (outcome, _), failure in zip(done, failures, strict=True):
            if failure is None:
                self.tally.add(outcome.status)
        failure = next((f for f in failures if isinstance(f, Exception)), None)
        if isinstance(failure, JobStopped):
            self.stop_on_fatal(failure)
        elif failure is not None:
            self.stop_on_error(failure)

    async def run(self) -> None:
        journal, tally, stop = self.journal, self.tally, self.stop
        self.workers = [asyncio.create_task(self.worker()) for _ in range(self.config.concurrency)]
        checked = False  # the preflight request has been made
        try:
            async for batch in planned_batches(self.config, self.mode, self.table, journal, stop):
                if batch.invalid:
                    await asyncio.to_thread(journal.record_many, batch.invalid)
                    tally.add(Status.INVALID, len(batch.invalid))
                if batch.unchanged.height:
                    await asyncio.to_thread(journal.record_unchanged, batch.unchanged)
                    tally.add(Status.UNCHANGED, batch.unchanged.height)
                self.known |= batch.known
                for update in batch.to_send:
                    if not checked:
                        checked = True
                        fatal = await self.sender.preflight(update.conversation_id)
                        if fatal is not None:
                            self.stop_on_fatal(fatal)
                    if stop.is_set:
                        break
                    await self.queue.put(update)
            if stop.is_set:
                self.halt()
            else:
                for _ in self.workers:
                    await self.queue.put(None)
            await asyncio.gather(*self.workers, return_exceptions=True)
        finally:
            for task in self.workers:
                task.cancel()
            await asyncio.gather(*self.workers, return_exceptions=True)


def _unknown(flight: InFlight, code: str, message: str) -> RowOutcome:
    """The outcome of a row whose update may have reached the server, its answer never read."""
    update = flight.update
    return RowOutcome(
        row_number=update.row_number,
        conversation_id=update.conversation_id,
        status=Status.UNPROCESSED,
        attempts=flight.attempts,
        error_type=JOB_STOPPED,
        error_code=code,
        error_message=message,
        sent_metadata=update.sent_metadata,
        previous_metadata=update.previous,
    )


# CPython's first-generation threshold while the rows are sent (its default is 700).
SENDING_GC_THRESHOLD = 10_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """The cyclic garbage collector run less often while the rows are sent, then as before. A
    row allocates many short-lived objects (coroutines, futures, an answer, its outcome): at
    the default threshold the collector ran every few rows, each run moving the objects of the
    rows in flight to the older generations, whose own runs then went over the job's whole
    heap (1.1 s of 7.7 s of CPU for 20,000 rows, 0.06 s at this threshold: issue 38)."""
    first, *older = gc.get_threshold()
    gc.set_threshold(max(first, SENDING_GC_THRESHOLD), *older)
    try:
        yield
    finally:
        gc.set_threshold(first, *older)


async def send_all(pipeline: Pipeline, drain_timeout: float, signals: Signals) -> None:
    """Run the pipeline; on a first signal drain for ``drain_timeout``, on a second stop at
    once (``Stop.hard``: the results are then not rewritten). Then ``settle`` what the
    cancelled workers left."""
    task = asyncio.create_task(pipeline.run())

    def graceful(signum: signal.Signals) -> None:
        pipeline.halt()
        # A store that makes the drain wait gets no longer than the drain: a row whose outcome
        # cannot be committed by then stays unprocessed (the re-run sends it, as after kill -9).
        pipeline.journal.hurry(drain_timeout)
        log.warning(
            "%s: finishing in-flight requests (%.0f s at most), then writing results",
            signum.name,
            drain_timeout,
            extra={"event": "stopping", "signal": signum.name},
        )
        asyncio.get_running_loop().call_later(drain_timeout, task.cancel)

    def at_once(_: signal.Signals) -> None:
        pipeline.journal.hurry(0)
        task.cancel()

    with signals.phase(graceful=graceful, at_once=at_once), _fewer_collections():
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # we ourselves were cancelled
        except JobStopped as exc:  # met by the producer: stop as the workers do
            pipeline.stop_on_fatal(exc)
        except Exception as exc:
            pipeline.stop_on_error(exc)
        await pipeline.settle()
