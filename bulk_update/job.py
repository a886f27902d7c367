"""The job: wires read -> plan -> send -> store -> write.

``run_job(config)`` is the whole tool; the CLI, job files and Airflow all call it. It raises
ConfigError, InputError or JournalError before anything is sent (exit 2); everything after that
ends in the results and in the returned JobSummary, whose ``exit_code`` says how it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx2
import polars as pl

from bulk_update import revert
from bulk_update.breaker import FailureStreak
from bulk_update.config import JobConfig
from bulk_update.dryrun import dry_run
from bulk_update.exceptions import FatalApiError, StoreUnavailable
from bulk_update.metrics import MetricsOutputs, Telemetry
from bulk_update.outcome import RowOutcome, Status
from bulk_update.plan import (
    PlannedUpdate,
    find_duplicates,
    invalid_outcomes,
    mark_unchanged,
    plan_frame,
    unchanged_rows,
    updates,
    valid_rows,
)
from bulk_update.read import ROW_NUMBER, InputTable, expand, file_fingerprint, open_input
from bulk_update.readfirst import ReadFirst
from bulk_update.send import Sender, SendSettings
from bulk_update.stop import Stop
from bulk_update.store import (
    Journal,
    RowTiming,
    RunBeat,
    RunEnd,
    RunKey,
    RunRecord,
    StoreLocation,
    open_store,
)
from bulk_update.summary import (
    JobSummary,
    Progress,
    ProgressCallback,
    exit_code_for,
    warnings_for,
)
from bulk_update.write import write_run_outputs

log = logging.getLogger("bulk_update")


def run_fingerprint(config: JobConfig) -> dict[str, Any]:
    """What a run must not change between its invocations: the input and the mapping."""
    return {
        "input": [file_fingerprint(path) for path in expand(config.input)],
        "id_column": config.id_column,
        "columns": list(config.columns) if config.columns else None,
        "metadata_column": config.metadata_column,
        "shard": list(config.shard) if config.shard else None,
    }


def run_options(config: JobConfig) -> dict[str, Any]:
    """The run's options as the store keeps them: no secret (no key, no storage options)."""
    return {f.name: getattr(config, f.name) for f in fields(config) if f.repr}


class _Tally:
    """One run's counts, as the progress callback sees them."""

    def __init__(self, total: int, progress: ProgressCallback | None) -> None:
        self.total = total
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.sent = 0  # rows sent by this invocation
        self.resumed = 0  # rows finished by earlier invocations of the run
        self.requests: Callable[[], int] = lambda: 0
        self.rate_limited: Callable[[], int] = lambda: 0  # of the requests, answered 429
        # Per key, the conversations given a key they did not have (or, in a check, would be).
        self.added: Counter[str] = Counter()
        self._last_report = 0.0

    def add(self, status: Status, count: int = 1) -> None:
        self.counts[status.value] += count
        self.report()

    @property
    def done(self) -> int:
        """Rows finished, by this invocation or earlier ones (as far as it has counted)."""
        counted = sum(self.counts.values()) - self.counts.get(Status.UNPROCESSED.value, 0)
        return max(counted, self.resumed)

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is None or (not force and now - self._last_report < 0.2):
            return
        self._last_report = now
        unprocessed = self.counts.get(Status.UNPROCESSED.value, 0)
        self.progress(
            Progress(
                done=sum(self.counts.values()) - unprocessed,
                total=self.total,
                counts=dict(self.counts),
                requests=self.requests(),
                elapsed_s=now - self.started,
                resumed=self.resumed,
                sent=self.sent,
            )
        )


@dataclass(frozen=True, slots=True)
class _Batch:
    to_send: list[PlannedUpdate]
    invalid: list[RowOutcome]
    unchanged: pl.DataFrame  # ROW_NUMBER, conversation_id, sent_metadata
    # Of to_send, the conversations the job's state has an entry for: each is forgotten (in
    # its own commit) before it is sent. A conversation without one needs no such commit.
    known: set[str]


async def planned_batches(
    config: JobConfig, table: InputTable, journal: Journal, tally: _Tally, stop: Stop
) -> AsyncIterator[_Batch]:
    """Per input batch: the updates to send, the ``invalid`` outcomes, the ``unchanged`` rows
    (those of them the run has not finished yet). A batch the run has finished is counted, not
    planned again.

    Stops early when the job stops or --limit is reached: rows never read end in the results
    as ``unprocessed`` (see write.results_between).
    """
    if config.revert:
        duplicates = None
        batches = revert.batches(table, config.batch_rows)
    else:
        duplicates = await asyncio.to_thread(find_duplicates, table)
        batches = table.batches(config.batch_rows)
    valid_seen = 0
    limit = config.limit
    while not stop.is_set and (limit is None or valid_seen < limit):
        batch = await asyncio.to_thread(next, batches, None)
        if batch is None:
            return
        if batch.is_empty():
            continue
        first, last = int(batch[ROW_NUMBER][0]), int(batch[ROW_NUMBER][-1])
        done = journal.finished_counts_between(first, last)
        for status, count in done.items():
            tally.counts[status.value] += count
        if sum(done.values()) == batch.height and limit is None:
            continue  # resuming: this whole batch is done, no need to plan it
        finished = journal.finished_between(first, last) if done else {}
        if duplicates is None:
            candidates, invalid, unchanged = await asyncio.to_thread(_plan_revert, config, batch)
        else:
            plan = await asyncio.to_thread(plan_frame, table, batch, duplicates)
            if config.uses_job_state:
                plan = mark_unchanged(plan, journal.changed_rows(valid_rows(plan)))
            candidates, invalid = updates(plan), invalid_outcomes(plan)
            unchanged = unchanged_rows(plan)
        keeps_images = config.reads_first and not config.dry_run
        images = journal.before_images_between(first, last) if keeps_images else {}
        to_send: list[PlannedUpdate] = []
        for update in candidates:
            valid_seen += 1
            if limit is not None and valid_seen > limit:
                break
            if update.row_number not in finished:
                previous = images.get(update.row_number)
                if previous is not None:
                    update = dataclasses.replace(update, previous=previous)
                to_send.append(update)
        invalid = [o for o in invalid if o.row_number not in finished]
        if finished:
            done_rows = pl.Series(list(finished), dtype=unchanged.schema[ROW_NUMBER])
            unchanged = unchanged.filter(~pl.col(ROW_NUMBER).is_in(done_rows.implode()))
        known = journal.entries_among([u.conversation_id for u in to_send]) if to_send else set()
        yield _Batch(to_send, invalid, unchanged, known)


def _plan_revert(
    config: JobConfig, batch: pl.DataFrame
) -> tuple[list[PlannedUpdate], list[RowOutcome], pl.DataFrame]:
    plan = revert.plan_batch(batch, blank_added_keys=config.blank_added_keys)
    to_send = [
        PlannedUpdate(number, conversation_id, target, expect=expect)
        for number, conversation_id, target, expect in plan.to_send
    ]
    return to_send, plan.invalid, plan.unchanged


class Pipeline:
    """A producer feeding planned updates to ``concurrency`` workers through a bounded queue.

    ``halt()`` (a signal, or the API saying stop) empties the queue so that neither side can
    block on the other; workers finish the row in hand and exit. After a fatal answer (or a
    failure streak) the other workers are cancelled, whether waiting (a backoff, a limiter
    pause) or with a request in flight: their rows get no outcome, so they stay unprocessed and
    a re-run sends them (at most ``concurrency`` rows twice).
    """

    def __init__(
        self,
        config: JobConfig,
        table: InputTable,
        journal: Journal,
        sender: Sender,
        tally: _Tally,
        stop: Stop,
    ) -> None:
        self.config = config
        self.table = table
        self.journal = journal
        self.sender = sender
        self.tally = tally
        self.stop = stop
        self.queue: asyncio.Queue[PlannedUpdate | None] = asyncio.Queue(
            maxsize=config.effective_concurrency * 4
        )
        self.workers: list[asyncio.Task[None]] = []
        self.known: set[str] = set()  # queued conversations with a state entry
        self.streak = FailureStreak(config.stop_after_failures)
        self.read_first = (
            ReadFirst(write=not config.dry_run, force=config.force) if config.reads_first else None
        )

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
        except StoreUnavailable as exc:
            # The row in hand has no committed outcome: it stays unprocessed, resumable.
            self.stop_on_fatal(_store_stop(exc))

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
            latency = None if sent.latency_s is None else round(sent.latency_s * 1000)
            await journal.record(outcome, RowTiming(sent_at, time.time(), latency))
            if self.sender.telemetry is not None:
                self.sender.telemetry.row()
            tally.add(outcome.status)
            failed = outcome.status is Status.FAILED
            fatal = sent.fatal
            if self.streak.observe(failed, outcome.http_status, outcome.error_code):
                fatal = fatal or _streak_stop(self.streak, outcome)
            if fatal is not None:
                self.stop_on_fatal(fatal)
                return

    def stop_on_fatal(self, fatal: FatalApiError) -> None:
        if not self.stop.on_fatal(fatal):
            return
        log.error("stopping: %s", fatal, extra={"event": "fatal"})
        current = asyncio.current_task()
        for task in self.workers:
            if task is not current:
                task.cancel()
        self.halt(wake_workers=False)

    async def run(self) -> None:
        journal, tally, stop = self.journal, self.tally, self.stop
        self.workers = [
            asyncio.create_task(self.worker()) for _ in range(self.config.effective_concurrency)
        ]
        checked = False  # the preflight request has been made
        try:
            async for batch in planned_batches(self.config, self.table, journal, tally, stop):
                if batch.invalid:
                    journal.record_many(batch.invalid)
                    tally.add(Status.INVALID, len(batch.invalid))
                if batch.unchanged.height:
                    journal.record_unchanged(batch.unchanged)
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


def _store_stop(exc: StoreUnavailable) -> FatalApiError:
    return FatalApiError(str(exc), http_status=None, error_code="store_unavailable")


def _streak_stop(streak: FailureStreak, last: RowOutcome) -> FatalApiError:
    return FatalApiError(
        f"{streak.count} rows in a row failed with {streak.code} (the last: HTTP "
        f"{last.http_status}: {last.error_message}); stopping rather than fail the rest of the "
        "file (--stop-after-failures)",
        http_status=last.http_status,
        error_code="repeated_failure",
    )


@contextlib.contextmanager
def _signals(on_signal: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``on_signal`` while the job runs (main thread only)."""
    loop = asyncio.get_running_loop()
    installed = []
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                pass
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _send_all(pipeline: Pipeline, drain_timeout: float) -> None:
    """Run the pipeline; on a first signal drain for ``drain_timeout``, on a second stop at
    once (``Stop.hard``: the results are then not rewritten)."""
    task = asyncio.create_task(pipeline.run())
    stop = pipeline.stop

    def on_signal(signum: signal.Signals) -> None:
        if not stop.on_signal(signum):
            log.warning("second signal: stopping at once", extra={"event": "hard_stop"})
            task.cancel()
            return
        pipeline.halt()
        log.warning(
            "%s: finishing in-flight requests (%.0f s at most), then writing results",
            signum.name,
            drain_timeout,
            extra={"event": "stopping", "signal": signum.name},
        )
        asyncio.get_running_loop().call_later(drain_timeout, task.cancel)

    with _signals(on_signal):
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # we ourselves were cancelled
        except StoreUnavailable as exc:  # met by the producer: stop as the workers do
            pipeline.stop_on_fatal(_store_stop(exc))


async def run_job_async(
    config: JobConfig,
    *,
    progress: ProgressCallback | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> JobSummary:
    """The job, for callers that already run an event loop. See ``run_job``."""
    started = time.monotonic()
    config.check_paths(expand(config.input))
    kept: dict[str, int] = {}
    if config.revert:
        table = await asyncio.to_thread(revert.open_results, config.input, config.storage())
        kept = await asyncio.to_thread(
            revert.kept_keys, table, config.batch_rows, blank_added_keys=config.blank_added_keys
        )
    else:
        table = open_input(
            config.input,
            id_column=config.id_column,
            columns=config.columns,
            metadata_column=config.metadata_column,
            shard=config.shard,
            storage_options=config.storage(),
            delimiter=config.delimiter,
        )
    if config.dry_run and not config.check_server:
        return await asyncio.to_thread(dry_run, config, table, progress, started)
    settings = SendSettings.from_config(config)
    total = await asyncio.to_thread(table.check_readable)
    job_name = config.resolved_job_name()
    if config.shard is not None and config.job_name is None:
        log.warning(
            "shard %s without --job-name: its job is %r (from the results file's name); the "
            "shards of one job share its state, locks and --rpm only under one --job-name",
            f"{config.shard[0]}/{config.shard[1]}",
            job_name,
            extra={"event": "shard_without_job_name", "job_name": job_name},
        )
    with contextlib.ExitStack() as scratch:
        if config.check_server:
            # A check writes nothing of the job's: its outcomes go to a scratch store.
            directory = scratch.enter_context(tempfile.TemporaryDirectory(prefix="bulk-update-"))
            location = StoreLocation(Path(directory) / "check.sqlite")
        else:
            location = config.store_location()
        summary = await _run_with_store(
            config, table, location, job_name, total, settings, kept, progress, transport, started
        )
    summary.log()
    return summary


async def _run_with_store(
    config: JobConfig,
    table: InputTable,
    location: StoreLocation,
    job_name: str,
    total: int,
    settings: SendSettings,
    kept: dict[str, int],
    progress: ProgressCallback | None,
    transport: httpx2.AsyncBaseTransport | None,
    started: float,
) -> JobSummary:
    key = RunKey(job_name, config.output, config.shard)
    stop = Stop()
    with (
        open_store(location) as store,
        contextlib.closing(
            store.open_run(
                key,
                run_fingerprint(config),
                run_options(config),
                restart=config.restart,
                retry_failed=config.retry_failed,
                since=None if config.check_server else config.since_state,
            )
        ) as journal,
        # Shards share the job's rate budget; a whole-input run is alone (its lock excludes
        # every shard) and paces itself.
        contextlib.closing(store.budget(job_name)) if config.shard else _no_budget() as budget,
    ):
        log.info(
            "job started",
            extra={
                "event": "start",
                "input": config.input,
                "rows": total,
                "dry_run": config.dry_run,
                "job_name": job_name,
                "store": None if config.check_server else store.where,
                "run_id": journal.run_id,
                "state_entries": journal.state_entries(),
                "since_state": config.since_state,
                "full": config.full,
                "backup": config.backup,
                "check_server": config.check_server,
                "revert": config.revert,
            },
        )
        tally = _Tally(total, progress)
        tally.resumed = journal.finished_count()
        telemetry = Telemetry(job_name, key.shard_text or None, settings.rpm)
        if not config.check_server:
            telemetry.succeeded_before(last_success(store.history(job_name), key.shard_text))
        outputs = MetricsOutputs(telemetry, config.metrics_file, config.pushgateway)
        monitor = _Monitor(telemetry, outputs, journal, tally, config.metrics_interval)
        await monitor.tick()
        if tally.resumed:
            log.info(
                "resuming: %d rows already done",
                tally.resumed,
                extra={"event": "resume", "rows_done": tally.resumed},
            )
        async with Sender(
            settings, stop, transport=transport, budget=budget, telemetry=telemetry
        ) as sender:
            tally.requests = lambda: sender.requests_sent
            tally.rate_limited = lambda: sender.rate_limited
            pipeline = Pipeline(config, table, journal, sender, tally, stop)
            async with monitor.running():
                await _send_all(pipeline, config.drain_timeout)
            requests, reads = sender.requests_sent, sender.reads_sent
            rate_limited = sender.rate_limited
        await monitor.beat(final=True)
        try:
            counts, exit_code = await _finish(
                config, table, journal, RunEnd({}, 0, total, requests, rate_limited), stop
            )
        except StoreUnavailable as exc:
            # Nothing more can be read from the store: the results are not rewritten, and the
            # run resumes from what was committed when run again.
            stop.on_fatal(_store_stop(exc))
            log.error("%s; the results were not written", exc, extra={"event": "store_unavailable"})
            known = dict(tally.counts)
            known[Status.UNPROCESSED.value] = known.get(Status.UNPROCESSED.value, 0) + max(
                0, total - sum(known.values())
            )
            counts = {status: n for status, n in known.items() if n}
            exit_code = exit_code_for(counts, stop)
        tally.counts = Counter(counts)
        tally.report(force=True)
        telemetry.counts(counts, total)
        telemetry.ended_with(exit_code, finished_rows=exit_code in _FINISHED_ROWS)
        await outputs.write()
        return JobSummary(
            counts=counts,
            total_rows=total,
            requests_sent=requests,
            elapsed_s=time.monotonic() - started,
            output=config.output,
            errors_output=config.errors_output,
            store=None if config.check_server else store.where,
            exit_code=exit_code,
            fatal_error=str(stop.fatal) if stop.fatal else None,
            sent_this_run=tally.sent,
            stopped_by=stop.signal.name if stop.signal else None,
            job_name=job_name,
            warnings=warnings_for(total),
            dry_run=config.dry_run,
            reads_sent=reads,
            added_keys=dict(tally.added.most_common()),
            kept_keys=kept,
        )


@contextlib.contextmanager
def _no_budget() -> Iterator[None]:
    yield None


# The exit codes of a run that finished its rows (some may have failed): a success for
# ``bulk_update_last_success_timestamp_seconds``.
_FINISHED_ROWS = (0, 1)


def last_success(runs: list[RunRecord], shard: str) -> float | None:
    """When a run of the job (of this shard) last finished its rows, as Unix time."""
    ends = [
        end
        for r in runs
        if r.shard == shard and r.exit_code in _FINISHED_ROWS and (end := r.ended_at) is not None
    ]
    if not ends:
        return None
    latest = max(ends)
    return dt.datetime.strptime(latest, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()


class _Monitor:
    """Every ``interval`` seconds while the run goes on: its metrics written (and pushed), its
    heartbeat and timeline committed to its store. Neither may stop the job: a failure is a
    warning."""

    def __init__(
        self,
        telemetry: Telemetry,
        outputs: MetricsOutputs,
        journal: Journal,
        tally: _Tally,
        interval: float,
    ) -> None:
        self.telemetry = telemetry
        self.outputs = outputs
        self.journal = journal
        self.tally = tally
        self.interval = interval
        self._beat_failed = False

    async def tick(self) -> None:
        self.telemetry.counts(self.tally.counts, self.tally.total)
        await self.beat()
        await self.outputs.write()

    async def beat(self, *, final: bool = False) -> None:
        seconds = self.telemetry.take_seconds(all_of_them=final)
        try:
            tally = self.tally
            await self.journal.beat(
                RunBeat(tally.total, tally.done, tally.requests(), tally.rate_limited()), seconds
            )
        except Exception as exc:
            if not self._beat_failed:
                self._beat_failed = True
                log.warning(
                    "the run's heartbeat was not recorded in its store: %s",
                    exc,
                    extra={"event": "heartbeat_failed"},
                )
        else:
            self._beat_failed = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Tick every ``interval`` while the block runs. A tick is never cut short (a beat cut
        in the middle would leave the store unsure what it counted): the block's end waits
        for the tick in hand."""
        over = asyncio.Event()

        async def loop() -> None:
            while True:
                try:
                    await asyncio.wait_for(over.wait(), self.interval)
                    return
                except TimeoutError:
                    await self.tick()

        task = asyncio.create_task(loop(), name="monitor")
        try:
            yield
        finally:
            over.set()
            await task


async def _finish(
    config: JobConfig, table: InputTable, journal: Journal, end: RunEnd, stop: Stop
) -> tuple[dict[str, int], int]:
    """The run's counts from the store, its results written, its end recorded (``end``: the
    invocation's rows and requests; its counts and exit code are filled in here)."""
    counts = journal.counts()
    counts[Status.UNPROCESSED.value] = counts.get(Status.UNPROCESSED.value, 0) + max(
        0, end.total_rows - sum(counts.values())
    )
    counts = {status: n for status, n in counts.items() if n}
    exit_code = exit_code_for(counts, stop)
    if not stop.hard:
        await asyncio.to_thread(
            write_run_outputs,
            journal,
            table,
            config.output,
            config.errors_output,
            config.batch_rows,
            stop.reason(),
        )
    stopped_by = stop.signal.name if stop.signal else None
    if stopped_by is None and stop.fatal is not None:
        stopped_by = stop.fatal.error_code or "fatal_error"
    journal.finish(
        dataclasses.replace(end, counts=counts, exit_code=exit_code, stopped_by=stopped_by)
    )
    return counts, exit_code


def run_job(config: JobConfig, *, progress: ProgressCallback | None = None) -> JobSummary:
    """Run the job to the end and return its summary.

    Raises ConfigError, InputError or JournalError (nothing sent) for bad options, input or a
    store that refuses; every other outcome is in the results file and the summary.
    """
    return asyncio.run(run_job_async(config, progress=progress))
