"""The job: wires read -> plan -> send -> journal -> write, and reports a summary.

``run_job(config)`` is the whole tool; the CLI, job files and Airflow all call it. It raises
ConfigError, InputError or JournalError before anything is sent (exit 2); everything after that
ends in the results and in the returned JobSummary, whose ``exit_code`` says how it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import polars as pl

from bulk_update import state
from bulk_update.breaker import FailureStreak
from bulk_update.config import JobConfig
from bulk_update.exceptions import ConfigError, FatalApiError
from bulk_update.journal import Journal, file_fingerprint
from bulk_update.outcome import ROW_FAILURES, RowOutcome, Status
from bulk_update.plan import (
    PlannedUpdate,
    find_duplicates,
    invalid_outcomes,
    mark_unchanged,
    plan_frame,
    plan_lazy,
    to_send_count,
    unchanged_rows,
    updates,
    valid_rows,
)
from bulk_update.read import ROW_NUMBER, InputTable, expand, open_input
from bulk_update.send import Sender, SendSettings
from bulk_update.write import (
    StopReason,
    dry_run_results,
    errors_frame,
    scan_results,
    sink,
    sink_errors,
    write_dry_run,
    write_errors,
    write_results,
)

log = logging.getLogger("bulk_update")

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_FATAL = 3


@dataclass(frozen=True, slots=True)
class Progress:
    """What the progress callback gets: rows finished so far (``unprocessed`` ones are not),
    of ``total``; ``resumed`` of them were finished by earlier runs, ``sent`` rows were sent by
    this one (the rate is ``sent / elapsed_s``)."""

    done: int
    total: int
    counts: dict[str, int]
    requests: int
    elapsed_s: float
    resumed: int = 0
    sent: int = 0


ProgressCallback = Callable[[Progress], None]
# Of a batch's valid rows, the row numbers that differ from the job's state (state.changed_rows).
ChangedRows = Callable[[pl.DataFrame], list[int]]


@dataclass(frozen=True)
class JobSummary:
    """How a run went. ``as_dict()`` is small and JSON-safe (an Airflow XCom)."""

    counts: dict[str, int]
    total_rows: int
    requests_sent: int
    elapsed_s: float
    output: str
    errors_output: str | None
    journal: str | None
    exit_code: int
    dry_run: bool = False
    fatal_error: str | None = None
    sent_this_run: int = 0
    stopped_by: str | None = None  # SIGTERM or SIGINT
    job_name: str | None = None
    state: str | None = None  # the job's state database (incremental runs)
    warnings: tuple[str, ...] = ()  # said in the summary; they do not change the exit code

    @property
    def rows_per_s(self) -> float:
        return self.sent_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "total_rows": self.total_rows,
            "requests_sent": self.requests_sent,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.rows_per_s, 2),
            "output": self.output,
            "errors_output": self.errors_output,
            "journal": self.journal,
            "exit_code": self.exit_code,
            "dry_run": self.dry_run,
            "fatal_error": self.fatal_error,
            "stopped_by": self.stopped_by,
            "job_name": self.job_name,
            "state": self.state,
            "warnings": list(self.warnings),
        }

    def line(self) -> str:
        """The one-line summary that ends every run on stderr."""
        order = [s.value for s in Status]
        counts = " ".join(f"{s}={self.counts[s]}" for s in order if self.counts.get(s))
        text = (
            f"bulk-update: {self.total_rows} rows: {counts or 'none'}; "
            f"{self.requests_sent} requests, {self.rows_per_s:.1f} rows/s, "
            f"{self.elapsed_s:.1f}s; exit {self.exit_code}"
        )
        if self.dry_run:
            text += f"; would send {self.counts.get(Status.PLANNED.value, 0)}"
        if self.fatal_error:
            text += f"; stopped: {self.fatal_error}"
        if self.stopped_by:
            text += f"; stopped by {self.stopped_by} (re-run the same command to resume)"
        for warning in self.warnings:
            text += f"; warning: {warning}"
        return text


def exit_code_for(counts: dict[str, int], fatal: bool, stopped_by: signal.Signals | None) -> int:
    """A run that finished is 0 unless rows failed or were invalid: rows it left
    ``unprocessed`` on purpose (``--limit``) are no failure. A stopped run says why."""
    if stopped_by is not None:
        return 128 + int(stopped_by)  # 130 for SIGINT, 143 for SIGTERM, as shells report
    if fatal:
        return EXIT_FATAL
    if any(n and Status(s) in ROW_FAILURES for s, n in counts.items()):
        return EXIT_ROWS_FAILED
    return EXIT_OK


NO_ROWS_WARNING = "the input has no data rows (a header only)"


def _warnings(total: int) -> tuple[str, ...]:
    return (NO_ROWS_WARNING,) if total == 0 else ()


def journal_fingerprint(config: JobConfig) -> dict[str, Any]:
    return {
        "input": [file_fingerprint(path) for path in expand(config.input)],
        "id_column": config.id_column,
        "columns": list(config.columns) if config.columns else None,
        "metadata_column": config.metadata_column,
        "shard": list(config.shard) if config.shard else None,
    }


def _open_journal(config: JobConfig) -> Journal:
    fingerprint = journal_fingerprint(config)
    return Journal.open(
        config.journal_path(),
        fingerprint,
        restart=config.restart,
        retry_failed=config.retry_failed,
    )


def _state_paths(config: JobConfig) -> tuple[Path, Path | None]:
    """The job's state database, and --since-state's if it is another one (checked)."""
    own = config.state_path()
    if config.since_state is None:
        return own, None
    since = Path(config.since_state)
    try:
        with state.open_read_only(since) as db:
            if db is None:
                raise ConfigError(f"--since-state {since}: no such file")
            state.entries(db, "main")
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"--since-state {since}: not a bulk-update state database ({exc})"
        ) from None
    return own, None if since.resolve() == own.resolve() else since


class _Run:
    """One run's moving parts and tallies."""

    def __init__(
        self,
        config: JobConfig,
        table: InputTable,
        journal: Journal,
        progress: ProgressCallback | None,
        total: int,
    ) -> None:
        self.config = config
        self.table = table
        self.journal = journal
        self.progress = progress
        self.total = total
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.sender: Sender | None = None
        self.sent_this_run = 0
        self.resumed = 0  # rows finished by earlier runs of this journal
        self.signal: signal.Signals | None = None
        self._last_report = 0.0

    @property
    def halted(self) -> bool:
        """Take no new rows: a signal arrived, or the API said stop."""
        return self.signal is not None or (self.sender is not None and self.sender.halted)

    def tally(self, status: Status, count: int = 1) -> None:
        self.counts[status.value] += count
        self.report()

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
                requests=self.sender.requests_sent if self.sender else 0,
                elapsed_s=now - self.started,
                resumed=self.resumed,
                sent=self.sent_this_run,
            )
        )

    async def plans(self) -> AsyncIterator[_Batch]:
        """Per input batch: the updates to send, the ``invalid`` outcomes, the ``unchanged``
        rows (those of them a resumed run has not finished yet).

        Stops early when the run is halted or --limit is reached: rows never read end in the
        results as ``unprocessed`` (see write.results_between).
        """
        duplicates = await asyncio.to_thread(find_duplicates, self.table)
        batches = self.table.batches(self.config.batch_rows)
        valid_seen = 0
        limit = self.config.limit
        while not self.halted and (limit is None or valid_seen < limit):
            batch = await asyncio.to_thread(next, batches, None)
            if batch is None:
                return
            if batch.is_empty():
                continue
            first, last = int(batch[ROW_NUMBER][0]), int(batch[ROW_NUMBER][-1])
            done = self.journal.finished_counts_between(first, last)
            for status, count in done.items():
                self.counts[status.value] += count
            if sum(done.values()) == batch.height and limit is None:
                continue  # resuming: this whole batch is done, no need to plan it
            finished = self.journal.finished_between(first, last) if done else {}
            plan = await asyncio.to_thread(plan_frame, self.table, batch, duplicates)
            if self.journal.has_state and not self.config.full:
                plan = mark_unchanged(plan, self.journal.changed_rows(valid_rows(plan)))
            to_send: list[PlannedUpdate] = []
            for update in updates(plan):
                valid_seen += 1
                if limit is not None and valid_seen > limit:
                    break
                if update.row_number not in finished:
                    to_send.append(update)
            invalid = [o for o in invalid_outcomes(plan) if o.row_number not in finished]
            unchanged = unchanged_rows(plan)
            if finished:
                done_rows = pl.Series(list(finished), dtype=unchanged.schema[ROW_NUMBER])
                unchanged = unchanged.filter(~pl.col(ROW_NUMBER).is_in(done_rows.implode()))
            yield _Batch(to_send, invalid, unchanged)


@dataclass(frozen=True, slots=True)
class _Batch:
    to_send: list[PlannedUpdate]
    invalid: list[RowOutcome]
    unchanged: pl.DataFrame  # ROW_NUMBER, conversation_id, sent_metadata


class _Pipeline:
    """A producer feeding planned updates to ``concurrency`` workers through a bounded queue.

    ``halt()`` (a signal, or the API saying stop) empties the queue so that neither side can
    block on the other; workers finish the row in hand and exit. After a fatal answer (or a
    failure streak) the other workers are cancelled, whether waiting (a backoff, a limiter
    pause) or with a request in flight: their rows get no outcome, so they stay unprocessed and
    a re-run sends them (at most ``concurrency`` rows twice).
    """

    def __init__(self, run: _Run, sender: Sender | None) -> None:
        self.run = run
        self.sender = sender
        self.queue: asyncio.Queue[PlannedUpdate | None] = asyncio.Queue(
            maxsize=run.config.effective_concurrency * 4
        )
        self.workers: list[asyncio.Task[None]] = []
        self.fatal_seen = False
        self.streak = FailureStreak(run.config.stop_after_failures)
        self.checked = False  # the preflight request has been made

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
        run, sender = self.run, self.sender
        while not run.halted and (update := await self.queue.get()) is not None:
            if sender is None:
                continue
            run.journal.forget(update.conversation_id)
            outcome = await sender.send(update)
            run.sent_this_run += 1
            run.journal.record(outcome)
            run.tally(outcome.status)
            failed = outcome.status is Status.FAILED
            if self.streak.observe(failed, outcome.http_status, outcome.error_code):
                sender.fatal = sender.fatal or _streak_stop(self.streak, outcome)
            if sender.fatal is not None:
                self.stop_on_fatal(sender.fatal)
                return

    def stop_on_fatal(self, fatal: FatalApiError) -> None:
        if self.fatal_seen:
            return
        self.fatal_seen = True
        log.error("stopping: %s", fatal, extra={"event": "fatal"})
        current = asyncio.current_task()
        for task in self.workers:
            if task is not current:
                task.cancel()
        self.halt(wake_workers=False)

    async def run_all(self) -> None:
        run = self.run
        self.workers = [
            asyncio.create_task(self.worker()) for _ in range(run.config.effective_concurrency)
        ]
        try:
            async for batch in run.plans():
                if batch.invalid:
                    run.journal.record_many(batch.invalid)
                    run.tally(Status.INVALID, len(batch.invalid))
                if batch.unchanged.height:
                    run.journal.record_unchanged(batch.unchanged)
                    run.tally(Status.UNCHANGED, batch.unchanged.height)
                for update in batch.to_send:
                    if not self.checked and self.sender is not None:
                        self.checked = True
                        await self.sender.preflight(update.conversation_id)
                        if self.sender.fatal is not None:
                            self.stop_on_fatal(self.sender.fatal)
                    if run.halted:
                        break
                    await self.queue.put(update)
            if run.halted:
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


def stop_reason(fatal: FatalApiError | None, signum: signal.Signals | None) -> StopReason:
    """What the rows a stopped run never reached say in the results: why they were not sent."""
    if signum is not None:
        return ("interrupted", f"not sent: the job was stopped by {signum.name}")
    if fatal is not None:
        code = fatal.error_code or "fatal_error"
        return (code, f"not sent: the job stopped: {fatal}")
    return None


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


async def _send_all(run: _Run, sender: Sender | None) -> bool:
    """Run the pipeline; on a first signal drain for ``drain_timeout``, on a second stop at
    once. Returns False if the run was cut short (the results are then not rewritten)."""
    feeder = _Pipeline(run, sender)
    pipeline = asyncio.create_task(feeder.run_all())
    hard_stop = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if run.signal is not None:
            log.warning("second signal: stopping at once", extra={"event": "hard_stop"})
            hard_stop.set()
            pipeline.cancel()
            return
        run.signal = signum
        if sender is not None:
            sender.stopping = True
        feeder.halt()
        log.warning(
            "%s: finishing in-flight requests (%.0f s at most), then writing results",
            signum.name,
            run.config.drain_timeout,
            extra={"event": "stopping", "signal": signum.name},
        )
        asyncio.get_running_loop().call_later(run.config.drain_timeout, pipeline.cancel)

    with _signals(on_signal):
        try:
            await pipeline
        except asyncio.CancelledError:
            if not pipeline.cancelled():
                raise  # we ourselves were cancelled
    return not hard_stop.is_set()


async def run_job_async(
    config: JobConfig,
    *,
    progress: ProgressCallback | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> JobSummary:
    """The job, for callers that already run an event loop. See ``run_job``."""
    started = time.monotonic()
    config.check_paths(expand(config.input))
    table = open_input(
        config.input,
        id_column=config.id_column,
        columns=config.columns,
        metadata_column=config.metadata_column,
        shard=config.shard,
        storage_options=config.storage(),
        delimiter=config.delimiter,
    )
    if config.dry_run:
        return await asyncio.to_thread(_dry_run, config, table, progress, started)
    settings = SendSettings.from_config(config)
    total = await asyncio.to_thread(table.check_readable)
    state_path, since = _state_paths(config)
    job_name = config.resolved_job_name()
    with (
        _open_journal(config) as journal,
        state.job_lock(state_path, config.shard, job_name),
    ):
        journal.attach_state(state_path, since)
        log.info(
            "job started",
            extra={
                "event": "start",
                "input": config.input,
                "rows": total,
                "dry_run": config.dry_run,
                "job_name": job_name,
                "state": str(state_path),
                "state_entries": journal.state_entries(),
                "since_state": str(since) if since else None,
                "full": config.full,
            },
        )
        run = _Run(config, table, journal, progress, total)
        run.resumed = journal.finished_count()
        if run.resumed:
            log.info(
                "resuming: %d rows already done",
                run.resumed,
                extra={"event": "resume", "rows_done": run.resumed},
            )
        async with Sender(settings, transport=transport) as sender:
            run.sender = sender
            completed = await _send_all(run, sender)
            fatal = sender.fatal
            requests = sender.requests_sent
        counts = journal.counts()
        counts[Status.UNPROCESSED.value] = counts.get(Status.UNPROCESSED.value, 0) + max(
            0, total - sum(counts.values())
        )
        counts = {status: n for status, n in counts.items() if n}
        run.counts = Counter(counts)
        run.report(force=True)
        if completed:
            reason = stop_reason(fatal, run.signal)
            await asyncio.to_thread(
                write_results, journal, table, config.output, config.batch_rows, reason
            )
            if config.errors_output is not None:
                await asyncio.to_thread(
                    write_errors, journal, table, config.errors_output, config.batch_rows, reason
                )
    summary = JobSummary(
        counts=counts,
        total_rows=total,
        requests_sent=requests,
        elapsed_s=time.monotonic() - started,
        output=config.output,
        errors_output=config.errors_output,
        journal=str(config.journal_path()),
        exit_code=exit_code_for(counts, fatal is not None, run.signal),
        fatal_error=str(fatal) if fatal else None,
        sent_this_run=run.sent_this_run,
        stopped_by=run.signal.name if run.signal else None,
        job_name=job_name,
        state=str(state_path),
        warnings=_warnings(total),
    )
    _log_finish(summary)
    return summary


def _log_finish(summary: JobSummary) -> None:
    for warning in summary.warnings:
        log.warning("%s", warning, extra={"event": "warning"})
    log.info("job finished", extra={"event": "finish", **summary.as_dict()})


def _dry_run(
    config: JobConfig, table: InputTable, progress: ProgressCallback | None, started: float
) -> JobSummary:
    """Read, plan and write, streaming: no journal, no requests, memory flat in the input.

    One lazy polars query from the input to the results file where the rules are all
    vectorised; batch by batch for --metadata-column (a JSON object per cell) or when rows are
    compared with the job's state (read only: a dry run writes no state).
    """
    log.info("dry run started", extra={"event": "start", "input": config.input, "dry_run": True})
    own, since = _state_paths(config)
    try:
        duplicates = find_duplicates(table, config.batch_rows)
        with state.open_read_only(since or own) as db:
            changed = None if db is None or config.full else partial(state.changed_rows, db, "main")
            plan = plan_lazy(table, duplicates) if changed is None else None
            if plan is not None:
                counts = _dry_run_lazy(config, table, plan)
            else:
                counts = _dry_run_batches(config, table, duplicates, changed, progress, started)
    except pl.exceptions.PolarsError as exc:
        raise table.read_error(exc) from None
    if progress is not None:
        total = sum(counts.values())
        progress(Progress(total, total, dict(counts), 0, time.monotonic() - started))
    summary = JobSummary(
        counts=dict(counts),
        total_rows=sum(counts.values()),
        requests_sent=0,
        elapsed_s=time.monotonic() - started,
        output=config.output,
        errors_output=config.errors_output,
        journal=None,
        exit_code=exit_code_for(dict(counts), False, None),
        dry_run=True,
        job_name=config.resolved_job_name(),
        state=str(since or own),
        warnings=_warnings(sum(counts.values())),
    )
    _log_finish(summary)
    return summary


def _dry_run_lazy(config: JobConfig, table: InputTable, plan: pl.LazyFrame) -> dict[str, int]:
    """Stream the planned input into the results (and errors) file; counts by status."""
    storage = config.storage()
    sink(dry_run_results(plan, config.limit), config.output, storage)
    status_counts = scan_results(config.output, storage).group_by("status").len().collect()
    if config.errors_output is not None:
        sink_errors(table, config.output, config.errors_output)
    return dict(status_counts.iter_rows())


def _dry_run_batches(
    config: JobConfig,
    table: InputTable,
    duplicates: pl.DataFrame,
    changed: ChangedRows | None,
    progress: ProgressCallback | None,
    started: float,
) -> dict[str, int]:
    """The dry run a batch at a time: --metadata-column, or a comparison with the state."""
    counts: Counter[str] = Counter()
    to_send = 0

    def frames() -> Iterator[tuple[pl.DataFrame, pl.DataFrame | None]]:
        nonlocal to_send
        batches = table.all_batches if config.errors_output else table.batches
        for batch in batches(config.batch_rows):
            plan = plan_frame(table, batch, duplicates)
            if changed is not None:
                plan = mark_unchanged(plan, changed(valid_rows(plan)))
            results = dry_run_results(plan, config.limit, to_send)
            to_send += to_send_count(plan)
            counts.update(dict(results.group_by("status").len().iter_rows()))
            if progress is not None:
                total = sum(counts.values())
                progress(Progress(total, total, dict(counts), 0, time.monotonic() - started))
            errors = errors_frame(table, batch, results) if config.errors_output else None
            yield results, errors

    write_dry_run(frames(), config.output, config.errors_output, table)
    return dict(counts)


def run_job(config: JobConfig, *, progress: ProgressCallback | None = None) -> JobSummary:
    """Run the job to the end and return its summary.

    Raises ConfigError, InputError or JournalError (nothing sent) for bad options, input or a
    journal that refuses; every other outcome is in the results file and the summary.
    """
    return asyncio.run(run_job_async(config, progress=progress))
