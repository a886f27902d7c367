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
import functools
import logging
import signal
import socket
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

from bulk_update.api.breaker import FailureStreak
from bulk_update.config import JobConfig
from bulk_update.dryrun import dry_run
from bulk_update.exceptions import (
    BulkUpdateError,
    ConfigError,
    DiskFull,
    FatalApiError,
    InputChanged,
    JobStopped,
    first_line,
    is_disk_full,
    stop_code,
)
from bulk_update.exitcodes import ExitCode
from bulk_update.observe.history import is_running
from bulk_update.observe.metrics import MetricsOutputs, Telemetry
from bulk_update.observe.summary import (
    JobSummary,
    Progress,
    ProgressCallback,
    exit_code_for,
    warnings_for,
)
from bulk_update.outcome import ROW_NUMBER, RowOutcome, Status
from bulk_update.paths import is_remote
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
from bulk_update.read import InputTable, expand, file_fingerprint, open_input
from bulk_update.send import Sender, SendSettings
from bulk_update.server import revert
from bulk_update.server.readfirst import ReadFirst
from bulk_update.stop import Signals, Stop
from bulk_update.store import (
    Journal,
    RowTiming,
    RunBeat,
    RunEnd,
    RunKey,
    RunRecord,
    Store,
    StoreLocation,
    jobs_that_wrote,
    open_store,
)
from bulk_update.write import WriteCancelled, write_run_outputs

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
    """The run's options as the store keeps them: no secret (no key, no storage options); and
    the files it writes, as absolute paths (``written``: another run of the job on the same
    machine must not write them at once)."""
    options = {f.name: getattr(config, f.name) for f in fields(config) if f.repr}
    options["written"] = written_files(config)
    with contextlib.suppress(ConfigError):  # as resolved (from $OPENAI_BASE_URL, say)
        options["base_url"] = config.resolved_base_url()
    options["invoked_at"] = round(time.time(), 3)  # this invocation's start (report's --rpm)
    return options


def written_files(config: JobConfig) -> list[str]:
    """The results and errors files a run writes, as absolute paths (local ones)."""
    paths = [config.output, config.errors_output]
    return sorted({str(Path(p).resolve()) for p in paths if p is not None and not is_remote(p)})


def check_written_alone(config: JobConfig, key: RunKey, run_id: int | None, store: Store) -> None:
    """Refuse (ConfigError) to write a results or errors file that another run of the job,
    going on now on this machine, writes too: two shards given one --errors-output would each
    write the file whole with their own rows only, the last one wins. Called before the run is
    recorded (``run_id`` None: a refused run leaves nothing behind), and again once it has
    beaten its first heartbeat, so that of two runs started together, the second sees the
    first."""
    job = key.job
    mine = set(written_files(config))
    host = socket.gethostname()
    for other in store.status(job):
        record = other.record
        if record.run_id == run_id or record.host != host or not is_running(other):
            continue
        if (record.results, record.shard) == (key.results, key.shard_text):
            continue  # this run itself, from an earlier invocation: its lock says if it runs
        shared = mine & set(record.options.get("written") or ())
        if shared:
            shard = f" (shard {record.shard})" if record.shard else ""
            raise ConfigError(
                f"{sorted(shared)[0]} is written by another run of job {job!r} going on now"
                f"{shard}, pid {record.pid} on {record.host}: give each run (each shard) its own "
                "--output and --errors-output"
            )


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
    # Rows of the batch finished by earlier invocations, by status: counted, not sent again.
    done: dict[Status, int]


class _Planner:
    """Plans the input a batch at a time: per batch, the updates to send, the ``invalid``
    outcomes, the ``unchanged`` rows (those the run has not finished yet). A batch the run has
    finished is counted, not planned again. ``next`` blocks (it reads the input and the store):
    the job calls it in a thread. Stops once --limit rows are planned to send."""

    def __init__(self, config: JobConfig, table: InputTable, journal: Journal) -> None:
        self.config = config
        self.table = table
        self.journal = journal
        self.valid_seen = 0
        self._batches: Iterator[pl.DataFrame] | None = None
        self._duplicates: pl.DataFrame | None = None

    @property
    def at_limit(self) -> bool:
        return self.config.limit is not None and self.valid_seen >= self.config.limit

    def next(self) -> _Batch | None:
        """The next batch (None once the input is read)."""
        if self._batches is None:
            config = self.config
            if config.revert:
                self._batches = revert.batches(self.table, config.batch_rows)
            else:
                self._duplicates = find_duplicates(self.table)
                self._batches = self.table.batches(config.batch_rows)
        for batch in self._batches:
            if not batch.is_empty():
                return self._plan(batch)
        return None

    def _plan(self, batch: pl.DataFrame) -> _Batch:
        config, journal, limit = self.config, self.journal, self.config.limit
        first, last = int(batch[ROW_NUMBER][0]), int(batch[ROW_NUMBER][-1])
        done = journal.finished_counts_between(first, last)
        if sum(done.values()) == batch.height and limit is None:
            # resuming: this whole batch is done, no need to plan it
            return _Batch([], [], pl.DataFrame(), set(), done)
        finished = journal.finished_between(first, last) if done else {}
        if self._duplicates is None:
            candidates, invalid, unchanged = _plan_revert(config, batch)
        else:
            plan = plan_frame(self.table, batch, self._duplicates)
            if config.uses_job_state:
                plan = mark_unchanged(plan, journal.changed_rows(valid_rows(plan)))
            candidates, invalid = updates(plan), invalid_outcomes(plan)
            unchanged = unchanged_rows(plan)
        keeps_images = config.reads_first and not config.dry_run
        images = journal.before_images_between(first, last) if keeps_images else {}
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
        return _Batch(to_send, invalid, unchanged, known, done)


async def planned_batches(
    config: JobConfig, table: InputTable, journal: Journal, tally: _Tally, stop: Stop
) -> AsyncIterator[_Batch]:
    """The planned batches, each planned in a thread. Stops early when the job stops or
    --limit is reached: rows never read end in the results as ``unprocessed`` (see
    write.results_between)."""
    planner = _Planner(config, table, journal)
    while not stop.is_set and not planner.at_limit:
        batch = await asyncio.to_thread(planner.next)
        if batch is None:
            return
        for status, count in batch.done.items():
            tally.counts[status.value] += count
        yield batch


def _plan_revert(
    config: JobConfig, batch: pl.DataFrame
) -> tuple[list[PlannedUpdate], list[RowOutcome], pl.DataFrame]:
    plan = revert.plan_batch(batch, blank_added_keys=config.blank_added_keys)
    return plan.to_send, plan.invalid, plan.unchanged


class Pipeline:
    """A producer feeding planned updates to ``concurrency`` workers through a bounded queue.

    ``halt()`` (a signal, or the API saying stop) empties the queue so that neither side can
    block on the other; workers finish the row in hand and exit. After a stop (a fatal answer,
    a failure streak, the store gone) or an error the job did not expect, the other workers are
    cancelled, whether waiting (a backoff, a limiter pause, a commit) or with a request in
    flight: their rows get no outcome, so they stay unprocessed and a re-run sends them (at
    most ``concurrency`` rows twice). No worker ends without the job knowing why.
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

    async def run(self) -> None:
        journal, tally, stop = self.journal, self.tally, self.stop
        self.workers = [
            asyncio.create_task(self.worker()) for _ in range(self.config.effective_concurrency)
        ]
        checked = False  # the preflight request has been made
        try:
            async for batch in planned_batches(self.config, self.table, journal, tally, stop):
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


def _streak_stop(streak: FailureStreak, last: RowOutcome) -> FatalApiError:
    return FatalApiError(
        f"{streak.count} rows in a row failed with {streak.code} (the last: HTTP "
        f"{last.http_status}: {last.error_message}); stopping rather than fail the rest of the "
        "file (--stop-after-failures)",
        http_status=last.http_status,
        error_code="repeated_failure",
    )


async def _send_all(pipeline: Pipeline, drain_timeout: float, signals: Signals) -> None:
    """Run the pipeline; on a first signal drain for ``drain_timeout``, on a second stop at
    once (``Stop.hard``: the results are then not rewritten)."""
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

    with signals.phase(graceful=graceful, at_once=at_once):
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # we ourselves were cancelled
        except JobStopped as exc:  # met by the producer: stop as the workers do
            pipeline.stop_on_fatal(exc)
        except Exception as exc:
            pipeline.stop_on_error(exc)


async def run_job_async(
    config: JobConfig,
    *,
    progress: ProgressCallback | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> JobSummary:
    """The job, for callers that already run an event loop. See ``run_job``.

    SIGTERM and SIGINT are handled for the whole job (in the main thread): whatever the phase,
    the first one ends it the way the README says (drained, results written, exit 130/143),
    a second one at once."""
    started = time.monotonic()
    stop = Stop()
    with Signals(stop) as signals:
        config.check_paths(expand(config.input))
        table, kept = await asyncio.to_thread(_open_table, config)
        if config.dry_run and not config.check_server:
            rows = await asyncio.to_thread(table.rows_per_batch, config.batch_rows)
            config = dataclasses.replace(config, batch_rows=rows)
            summary = await _dry_run(config, table, progress, started, signals)
        else:
            settings = SendSettings.from_config(config)
            stamp = await asyncio.to_thread(table.stamp)
            total, fingerprint = await asyncio.gather(
                asyncio.to_thread(table.check_readable),
                asyncio.to_thread(run_fingerprint, config),
            )
            rows = await asyncio.to_thread(table.rows_per_batch, config.batch_rows, total)
            config = dataclasses.replace(config, batch_rows=rows)
            if config.revert and not config.check_server:
                found = await asyncio.to_thread(reverted_job, config)
                config = dataclasses.replace(config, job_name=found)
            job_name = config.resolved_job_name()
            if config.shard is not None and config.job_name is None:
                log.warning(
                    "shard %s without --job-name: its job is %r (from the results file's "
                    "name); the shards of one job share its state, locks and --rpm only under "
                    "one --job-name",
                    f"{config.shard[0]}/{config.shard[1]}",
                    job_name,
                    extra={"event": "shard_without_job_name", "job_name": job_name},
                )
            run = _Run(config, table, job_name, total, fingerprint, stamp, settings, kept,
                       progress, transport, started, stop, signals)  # fmt: skip
            with contextlib.ExitStack() as scratch:
                if config.check_server:
                    # A check writes nothing of the job's: its outcomes go to a scratch store.
                    directory = scratch.enter_context(
                        tempfile.TemporaryDirectory(prefix="bulk-update-")
                    )
                    location = StoreLocation(Path(directory) / "check.sqlite")
                else:
                    location = config.store_location()
                summary = await _run_with_store(run, location)
    summary.log()
    return summary


def reverted_job(config: JobConfig) -> str:
    """The job whose run wrote the results a revert reverts: a revert is a run of that job, so
    that the job's state follows it. Without --job-name, the one job that wrote them, looked up
    in the store (ConfigError, nothing created, if there is none or more than one); with it,
    that job, if it wrote them."""
    results = config.input
    forms = [results] if is_remote(results) else sorted({results, str(Path(results).resolve())})
    location = config.store_location()
    jobs = jobs_that_wrote(location, forms)
    where = config.store_where() if location.url is not None else str(location.path.parent)
    if config.job_name is not None:
        if config.job_name in jobs:
            return config.job_name
        raise ConfigError(
            f"revert {results}: no run of job {config.job_name!r} wrote these results in "
            f"{where}; give the --job-name (and --state-dir or --state-url) of the run that "
            "wrote them" + (f" (found: {', '.join(jobs)})" if jobs else "")
        )
    if len(jobs) == 1:
        return jobs[0]
    if jobs:
        raise ConfigError(
            f"revert {results}: runs of more than one job wrote these results ({', '.join(jobs)})"
            f" in {where}; give --job-name"
        )
    raise ConfigError(
        f"revert {results}: no run in {where} wrote these results; give the --job-name (and "
        "--state-dir or --state-url) of the run that wrote them"
    )


def _open_table(config: JobConfig) -> tuple[InputTable, dict[str, int]]:
    """The input (a revert's: the reverted run's results, and the keys it added that stay)."""
    if config.revert:
        table = revert.open_results(config.input, config.storage())
        kept = revert.kept_keys(table, config.batch_rows, blank_added_keys=config.blank_added_keys)
        return table, kept
    table = open_input(
        config.input,
        id_column=config.id_column,
        columns=config.columns,
        metadata_column=config.metadata_column,
        shard=config.shard,
        storage_options=config.storage(),
        delimiter=config.delimiter,
    )
    return table, {}


async def _dry_run(
    config: JobConfig,
    table: InputTable,
    progress: ProgressCallback | None,
    started: float,
    signals: Signals,
) -> JobSummary:
    """The dry run in a thread; a signal cuts its batch by batch write short (exit 130/143,
    nothing written)."""
    cancel = threading.Event()
    with signals.phase(graceful=lambda _: cancel.set(), at_once=lambda _: cancel.set()):
        try:
            summary = await asyncio.to_thread(dry_run, config, table, progress, started, cancel)
        except WriteCancelled:
            summary = JobSummary(
                counts={}, total_rows=0, requests_sent=0,
                elapsed_s=time.monotonic() - started, output=config.output,
                errors_output=config.errors_output, exit_code=ExitCode.USAGE, dry_run=True,
                job_name=config.resolved_job_name(),
                warnings=("the dry run was stopped before its results were written",),
            )  # fmt: skip
    stop = signals.stop
    if stop.signal is not None:
        summary = dataclasses.replace(
            summary, exit_code=ExitCode.for_signal(stop.signal), stopped_by=stop.signal.name
        )
    return summary


@dataclass(frozen=True, slots=True)
class _Run:
    """What one invocation of a run works with, once its input is read."""

    config: JobConfig
    table: InputTable
    job_name: str
    total: int
    fingerprint: dict[str, Any]
    stamp: tuple[tuple[str, int, int, int], ...]  # the input files as the run found them
    settings: SendSettings
    kept: dict[str, int]
    progress: ProgressCallback | None
    transport: httpx2.AsyncBaseTransport | None
    started: float
    stop: Stop
    signals: Signals


async def _run_with_store(run: _Run, location: StoreLocation) -> JobSummary:
    """Open the job's store and the run in it (off the event loop: a store may make them
    wait), run it, close both."""
    config = run.config
    key = RunKey(run.job_name, config.output, config.shard)
    store = await asyncio.to_thread(open_store, location)
    try:
        if not config.check_server:
            # Before the run is recorded: a refused run leaves nothing to resume.
            await asyncio.to_thread(check_written_alone, config, key, None, store)
        journal = await asyncio.to_thread(
            functools.partial(
                store.open_run,
                key,
                run.fingerprint,
                run_options(config),
                restart=config.restart,
                retry_failed=config.retry_failed,
                since=None if config.check_server else config.since_state,
            )
        )
        try:
            return await _run_journaled(run, store, journal, key)
        finally:
            await asyncio.to_thread(journal.close)
    finally:
        await asyncio.to_thread(store.close)


async def _run_journaled(run: _Run, store: Store, journal: Journal, key: RunKey) -> JobSummary:
    """The run, recorded in its store: its end is recorded whichever way it goes (an error the
    job did not expect included: exit 70)."""
    config, stop = run.config, run.stop
    tally = _Tally(run.total, run.progress)
    requests = rate_limited = 0
    try:
        # Shards share the job's rate budget; a whole-input run is alone (its lock excludes
        # every shard) and paces itself.
        budget = await asyncio.to_thread(store.budget, run.job_name) if config.shard else None
        try:
            tally.resumed = await asyncio.to_thread(journal.finished_count)
            entries = await asyncio.to_thread(journal.state_entries)
            if not config.check_server:
                # A first heartbeat, then a look at the others: of two runs started together,
                # the second sees the first.
                await journal.beat(RunBeat(run.total, tally.resumed), [])
                await asyncio.to_thread(check_written_alone, config, key, journal.run_id, store)
            log.info(
                "job started",
                extra={
                    "event": "start", "input": config.input, "rows": run.total,
                    "dry_run": config.dry_run, "job_name": run.job_name,
                    "store": None if config.check_server else store.where,
                    "run_id": journal.run_id, "state_entries": entries,
                    "since_state": config.since_state, "full": config.full,
                    "backup": config.backup, "check_server": config.check_server,
                    "revert": config.revert,
                },
            )  # fmt: skip
            telemetry = Telemetry(run.job_name, key.shard_text or None, run.settings.rpm)
            if not config.check_server:
                history = await asyncio.to_thread(store.history, run.job_name)
                telemetry.succeeded_before(last_success(history, key.shard_text))
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
                run.settings, stop, transport=run.transport, budget=budget, telemetry=telemetry,
                fence=journal.fence,
            ) as sender:  # fmt: skip
                tally.requests = lambda: sender.requests_sent
                tally.rate_limited = lambda: sender.rate_limited
                pipeline = Pipeline(config, run.table, journal, sender, tally, stop)
                async with monitor.running():
                    await _send_all(pipeline, config.drain_timeout, run.signals)
                requests, reads = sender.requests_sent, sender.reads_sent
                rate_limited = sender.rate_limited
        finally:
            if budget is not None:
                budget.close()
        if isinstance(stop.error, BulkUpdateError):
            raise stop.error  # the user's to mend (exit 2): one line, no results
        await monitor.beat(final=True)
        end = RunEnd({}, 0, run.total, requests, rate_limited)
        counts, exit_code, notes = await _finish(run, journal, tally, end)
    except Exception as exc:
        await _record_failed_end(journal, run.total, requests, rate_limited, exc)
        raise
    tally.counts = Counter(counts)
    tally.report(force=True)
    telemetry.counts(counts, run.total)
    telemetry.ended_with(exit_code, finished_rows=exit_code in _FINISHED_ROWS)
    await outputs.write()
    return JobSummary(
        counts=counts,
        total_rows=run.total,
        requests_sent=requests,
        elapsed_s=time.monotonic() - run.started,
        output=config.output,
        errors_output=config.errors_output,
        store=None if config.check_server else store.where,
        exit_code=exit_code,
        fatal_error=stop.message(),
        sent_this_run=tally.sent,
        stopped_by=stop.signal.name if stop.signal else None,
        job_name=run.job_name,
        warnings=(*warnings_for(run.total), *notes),
        dry_run=config.dry_run,
        reads_sent=reads,
        added_keys=dict(tally.added.most_common()),
        kept_keys=run.kept,
    )


async def _record_failed_end(
    journal: Journal, total: int, requests: int, rate_limited: int, exc: Exception
) -> None:
    """A run cut by an error (one of ours: exit 2; a bug: exit 70) still records its end, so
    that ``history`` and ``status`` never show it running; best effort (the error is the
    news)."""
    try:
        counts = await asyncio.to_thread(journal.counts)
    except Exception:
        counts = {}
    # The rows it never took are left, as its results would say (``status`` shows the run as
    # stopped before its end: the same command resumes it).
    left = total - sum(counts.values())
    if left > 0:
        counts[Status.UNPROCESSED.value] = counts.get(Status.UNPROCESSED.value, 0) + left
    code = exc.exit_code if isinstance(exc, BulkUpdateError) else ExitCode.INTERNAL
    end = RunEnd(counts, code, total, requests, rate_limited, stop_code(exc))
    try:
        await asyncio.to_thread(journal.finish, end)
    except Exception as failed:
        log.warning(
            "the run's end was not recorded in its store (%s) after: %s",
            first_line(failed), first_line(exc),
            extra={"event": "end_not_recorded"},
        )  # fmt: skip


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
    warning. The metrics go first: a store that makes the heartbeat wait does not hold them."""

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
        await self.outputs.write()
        await self.beat()

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
                    first_line(exc),
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


def _with_unprocessed(counts: dict[str, int], total: int) -> dict[str, int]:
    """Counts by status of all ``total`` rows: those not counted are ``unprocessed``."""
    counts = dict(counts)
    counts[Status.UNPROCESSED.value] = counts.get(Status.UNPROCESSED.value, 0) + max(
        0, total - sum(counts.values())
    )
    return {status: n for status, n in counts.items() if n}


async def _finish(
    run: _Run, journal: Journal, tally: _Tally, end: RunEnd
) -> tuple[dict[str, int], int, list[str]]:
    """Seal the run, then its counts from the store, its results written and its end recorded
    (``end``: the invocation's rows and requests; its counts and exit code are filled in here).
    Returns the counts, the exit code and what the summary must add. A signal here lets the
    results be written (a second one stops at once, without them)."""
    config, stop = run.config, run.stop
    limited = config.limit is not None
    notes: list[str] = []
    try:
        await journal.seal()
        counts = _with_unprocessed(await asyncio.to_thread(journal.counts), end.total_rows)
    except JobStopped as exc:
        # The store is gone (or the run is another process's now): nothing more can be read
        # from it. The counts are what this process saw committed; the store holds them.
        stop.on_fatal(exc)
        log.error("%s; the results were not written", exc, extra={"event": "store_unavailable"})
        counts = _with_unprocessed(dict(tally.counts), end.total_rows)
        notes.append("the results were not written: the same command writes them once the store "
                     "is back")  # fmt: skip
        exit_code = exit_code_for(counts, stop, limited=limited)
        await _record_end(journal, end, counts, exit_code, stop, notes)
        return counts, exit_code, notes
    changed = [file for file, *_ in set(run.stamp) - set(await asyncio.to_thread(run.table.stamp))]
    if changed and not stop.hard:
        # The results are rebuilt from the input: from another file they would not say what
        # was sent (and a re-run is refused: its content is not the run's any more).
        stop.on_fatal(
            InputChanged(
                f"{changed[0]}: the input was changed during the run; the results are written "
                "from it, so they were not: put the input back as it was and run the same "
                "command to write them"
            )
        )
        log.error("%s", stop.fatal, extra={"event": "input_changed"})
        notes.append("the results were not written")
    elif stop.hard:
        notes.append("the results were not rewritten (stopped at once by a second signal)")
    else:
        cancel = threading.Event()

        def graceful(signum: signal.Signals) -> None:
            journal.hurry(run.config.drain_timeout)
            log.warning(
                "%s: writing the results first (a second signal stops at once, without them)",
                signum.name, extra={"event": "stopping", "signal": signum.name},
            )  # fmt: skip

        with run.signals.phase(graceful=graceful, at_once=lambda _: cancel.set()):
            try:
                await asyncio.to_thread(
                    write_run_outputs, journal, run.table, config.output, config.errors_output,
                    config.batch_rows, stop.reason(), cancel,
                )  # fmt: skip
            except WriteCancelled:
                notes.append("the results were not written (stopped at once by a second signal)")
            except JobStopped as exc:  # a full disk, the store gone while it was read
                stop.on_fatal(exc)
                log.error("%s", exc, extra={"event": "results_not_written"})
                notes.append("the results were not written")
    exit_code = exit_code_for(counts, stop, limited=limited)
    if exit_code == ExitCode.INTERNAL and stop.error is None:
        log.error(
            "%d rows were left unprocessed with no stop and no --limit (a bug): a re-run sends "
            "them", counts.get(Status.UNPROCESSED.value, 0),
            extra={"event": "internal_error"},
        )  # fmt: skip
    await _record_end(journal, end, counts, exit_code, stop, notes)
    return counts, exit_code, notes


async def _record_end(
    journal: Journal,
    end: RunEnd,
    counts: dict[str, int],
    exit_code: int,
    stop: Stop,
    notes: list[str],
) -> None:
    done = dataclasses.replace(
        end, counts=counts, exit_code=exit_code, stopped_by=stop.stopped_by()
    )
    try:
        await asyncio.to_thread(journal.finish, done)
    except JobStopped as exc:
        log.warning(
            "the run's end was not recorded in its store: %s", first_line(exc),
            extra={"event": "end_not_recorded"},
        )  # fmt: skip
        notes.append("the run's end was not recorded in its store")


def run_job(config: JobConfig, *, progress: ProgressCallback | None = None) -> JobSummary:
    """Run the job to the end and return its summary.

    Raises ConfigError, InputError or JournalError (nothing sent) for bad options, input or a
    store that refuses; every other outcome is in the results file and the summary.
    """
    return asyncio.run(run_job_async(config, progress=progress))
