"""The job: wires read -> plan -> send -> store -> write for one run.

``run_job(config)`` is the whole tool; the CLI, job files and Airflow all call it. The kind of
run is chosen once (``modes.py``); the engine that plans and sends is ``pipeline.py``; what is
seen while it runs (progress, metrics, heartbeat) is ``observe/``'s. Here: the input opened, the
store and the run in it opened, the run started, sent, finished (results written, end
recorded). It raises ConfigError, InputError or JournalError before anything is sent (exit 2);
everything after that ends in the results and in the returned JobSummary, whose ``exit_code``
says how it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx2

from bulk_update.config import JobConfig
from bulk_update.dryrun import dry_run
from bulk_update.exceptions import (
    BulkUpdateError,
    ConfigError,
    InputChanged,
    JobStopped,
    StoreGone,
    first_line,
    stop_code,
)
from bulk_update.exitcodes import ExitCode
from bulk_update.listing import Listed, take_listing
from bulk_update.listing import fingerprint as listing_fingerprint
from bulk_update.modes import Mode
from bulk_update.observe.history import is_running
from bulk_update.observe.metrics import MetricsOutputs, Telemetry
from bulk_update.observe.monitor import Monitor, last_success
from bulk_update.observe.progress import Tally
from bulk_update.observe.summary import (
    JobSummary,
    ProgressCallback,
    exit_code_for,
    warnings_for,
)
from bulk_update.outcome import Status
from bulk_update.paths import is_remote
from bulk_update.pipeline import Pipeline, send_all
from bulk_update.read import InputTable, expand, file_fingerprint
from bulk_update.resources import DEFAULT_RESOURCE
from bulk_update.send import Sender, SendSettings
from bulk_update.stop import Interrupt, Signals, Stop
from bulk_update.store import (
    Hurry,
    Journal,
    RunBeat,
    RunEnd,
    RunKey,
    Store,
    StoreLocation,
    jobs_that_wrote,
    open_store,
)
from bulk_update.write import WriteCancelled, write_run_outputs

__all__ = ["new_job_warning", "run_fingerprint", "run_job", "run_job_async", "run_options"]

log = logging.getLogger("bulk_update")
# The other jobs a new job's warning names at most (the last by name: dated names' newest).
JOBS_SHOWN = 5


def run_fingerprint(config: JobConfig) -> dict[str, Any]:
    """What a run must not change between its invocations: the input and the mapping."""
    fingerprint: dict[str, Any] = {
        "input": [file_fingerprint(path) for path in expand(config.input)],
        "id_column": ",".join(config.resolved_id_columns()),
        "columns": list(config.columns) if config.columns else None,
        "metadata_column": config.metadata_column,
        "shard": list(config.shard) if config.shard else None,
        **listing_fingerprint(config),
    }
    # A conversations run's fingerprint as before resources were (a resumed run matches).
    if config.resource != DEFAULT_RESOURCE:
        fingerprint["resource"] = config.resource
    typed = {"number_columns": config.number_columns, "boolean_columns": config.boolean_columns}
    fingerprint.update({name: list(named) for name, named in typed.items() if named})
    return fingerprint


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


def new_job_warning(job: str, where: str, others: list[str], *, named: bool) -> str:
    """What a run says before it sends, and in its summary, when its job is new (no run yet,
    so no state to compare with) and its store holds other jobs (``others``, by name): every
    valid row is sent, where one of those jobs' state may be what was meant (a dated --output
    without --job-name names a new job each night). One line that names the jobs; ``named``:
    the job's name was given (--job-name, a job file), not taken from the results file."""
    shown = others if len(others) <= JOBS_SHOWN else ["…", *others[-JOBS_SHOWN:]]
    count = f"{len(others)} other jobs" if len(others) > JOBS_SHOWN else "other jobs"
    text = (
        f"job {job!r} is new: no earlier run, no state to compare with, so every valid row is "
        f"sent; {count} in {where}: {', '.join(shown)}; to send only what changed since one "
        "of them, run with its --job-name"
    )
    if not named:
        text += " (the job is named after the results file: a dated --output is a new job each run)"
    return text


def check_one_resource(config: JobConfig, job: str, store: Store) -> None:
    """A job updates one resource: its state is keyed by its rows' IDs, and its runs, its
    report and its history are about one kind of object. A run of another resource in the
    same job is refused (exit 2, nothing recorded), naming the resource the job has."""
    for record in store.history(job):
        had = record.options.get("resource") or DEFAULT_RESOURCE
        if had != config.resource:
            raise ConfigError(
                f"job {job!r} updates {had} (run {record.run_id}), not {config.resource}: "
                "one job, one resource; give this run its own --job-name"
            )


def new_job_note(run: _Run, store: Store, location: StoreLocation) -> str | None:
    """``new_job_warning`` if the run's job is new beside other jobs; None if it is not new,
    compares with another job's state (--since-state), is nobody's (a check), or is the first
    job of its store (nothing to compare with: every row is sent, as a first run does)."""
    job = run.job_name
    if not run.mode.records or run.config.since_state is not None or store.history(job):
        return None
    others = [name for name in jobs_that_wrote(location) if name != job]
    if not others:
        return None
    where = (
        f"{location.path.parent} (its store's directory)"
        if location.url is None
        else f"its store {store.where}"
    )
    return new_job_warning(job, where, others, named=run.config.job_name is not None)


async def run_job_async(
    config: JobConfig,
    *,
    progress: ProgressCallback | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
    interrupt: Interrupt | None = None,
) -> JobSummary:
    """The job, for callers that already run an event loop. See ``run_job``.

    SIGTERM and SIGINT are handled for the whole job (in the main thread): whatever the phase,
    the first one ends it the way the README says (drained, results written, exit 130/143),
    a second one at once. In another thread the caller owns the signals: ``interrupt`` takes
    the same path when called (from any thread)."""
    started = time.monotonic()
    stop = Stop()
    mode = Mode.of(config)
    with Signals(stop, interrupt) as signals, contextlib.ExitStack() as scratch:
        listed = None
        if config.listing:  # the rows from the API's listing, recorded: then read as a file
            listed = await take_listing(config, mode, stop, transport, scratch)
            if listed.stopped:
                return _listing_stopped(config, stop, started, listed.requests)
            config = listed.config
        config.check_paths(expand(config.input))
        table, kept = await asyncio.to_thread(mode.open_table, config)
        for warning in table.warnings:  # before sending: a mapped column no row can send
            log.warning("%s", warning, extra={"event": "unsendable_column"})
        if mode.dry:
            rows = await asyncio.to_thread(table.rows_per_batch, config.batch_rows)
            config = dataclasses.replace(config, batch_rows=rows)
            summary = await _dry_run(config, table, progress, started, signals)
            if listed is not None:  # its only requests: the listing's
                summary = dataclasses.replace(summary, requests_sent=listed.requests)
        else:
            run = await _prepare(
                config, mode, table, kept, progress=progress, transport=transport,
                started=started, stop=stop, signals=signals, listed=listed,
            )  # fmt: skip
            location = mode.store_location(run.config, scratch)
            summary = await _run_with_store(run, location)
    summary.log()
    return summary


async def _prepare(
    config: JobConfig,
    mode: Mode,
    table: InputTable,
    kept: dict[str, int],
    **context: Any,
) -> _Run:
    """What the run works with, once its input is read: its rows counted (the input checked
    readable to its end), fingerprinted and stamped, its batches sized, its job named."""
    stamp = await asyncio.to_thread(table.stamp)
    total, fingerprint = await asyncio.gather(
        asyncio.to_thread(table.check_readable),
        asyncio.to_thread(run_fingerprint, config),
    )
    rows = await asyncio.to_thread(table.rows_per_batch, config.batch_rows, total)
    config = await asyncio.to_thread(mode.with_job, dataclasses.replace(config, batch_rows=rows))
    job_name = config.resolved_job_name()
    if config.shard is not None and config.job_name is None:
        log.warning(
            "shard %s without --job-name: its job is %r (from the results file's name); the "
            "shards of one job share its state, locks and --rpm only under one --job-name",
            f"{config.shard[0]}/{config.shard[1]}",
            job_name,
            extra={"event": "shard_without_job_name", "job_name": job_name},
        )
    settings = SendSettings.from_config(config)
    return _Run(config, mode, table, job_name, total, fingerprint, stamp, settings, kept,
                **context)  # fmt: skip


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
                counts={}, total_rows=0, requests_sent=0, resource=config.resource,
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
    mode: Mode
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
    listed: Listed | None  # --list: the listing taken (its limiter, its requests)


async def _run_with_store(run: _Run, location: StoreLocation) -> JobSummary:
    """Open the job's store and the run in it (off the event loop: a store may make them
    wait), run it, close both. The start obeys a signal as the rest of the run does
    (``_starting``): one that cuts it ends the run as stopped by it, nothing sent."""
    key = RunKey(run.job_name, run.config.output, run.config.shard)
    hurry = Hurry()
    try:
        with _starting(run, hurry):
            store, journal, new_job = await _open(run, location, key, hurry)
    except BulkUpdateError as exc:
        if run.stop.signal is None:
            raise
        return _not_started(run, exc)
    try:
        try:
            return await _run_journaled(run, store, journal, key, hurry, new_job)
        finally:
            await asyncio.to_thread(journal.close)
    finally:
        await asyncio.to_thread(store.close)


async def _open(
    run: _Run, location: StoreLocation, key: RunKey, hurry: Hurry
) -> tuple[Store, Journal, str | None]:
    """The job's store opened, then the run in it locked, found (or started) and its journal
    opened; the store closed again if the run cannot be. With them, ``new_job_note``'s warning
    (logged here, before anything is sent)."""
    config = run.config
    store = await asyncio.to_thread(open_store, location, hurry)
    try:
        new_job = await asyncio.to_thread(new_job_note, run, store, location)
        if run.mode.records:
            # Before the run is recorded: a refused run leaves nothing to resume.
            await asyncio.to_thread(check_one_resource, config, run.job_name, store)
            await asyncio.to_thread(check_written_alone, config, key, None, store)
        journal = await asyncio.to_thread(
            functools.partial(
                store.open_run,
                key,
                run.fingerprint,
                run_options(config),
                restart=config.restart,
                retry_failed=config.retry_failed,
                since=run.mode.since_state(config),
            )
        )
    except BaseException:
        await asyncio.to_thread(store.close)
        raise
    if new_job is not None:
        log.warning("%s", new_job, extra={"event": "new_job", "job_name": run.job_name})
    return store, journal, new_job


@contextlib.contextmanager
def _starting(run: _Run, hurry: Hurry) -> Iterator[None]:
    """A block of the run's start (the store opened, the run locked and found, its first
    heartbeat): a first signal, or one that came before (while the input was read), gives the
    store's waits no longer than the drain (--drain-timeout), a second none (``Hurry``), so
    that a store held by another process, or frozen, does not hold the stop for
    --store-timeout. The caller lifts the hurry once the start went through."""
    drain = run.config.drain_timeout

    def graceful(signum: signal.Signals) -> None:
        hurry(drain)
        log.warning(
            "%s: stopping before the run starts (the store is waited for %.0f s at most)",
            signum.name, drain, extra={"event": "stopping", "signal": signum.name},
        )  # fmt: skip

    if run.stop.signal is not None:
        hurry(drain)
    with run.signals.phase(graceful=graceful, at_once=lambda _: hurry(0)):
        yield


def _listing_stopped(config: JobConfig, stop: Stop, started: float, requests: int) -> JobSummary:
    """A signal stopped the listing (``--list``): nothing listed is kept, nothing sent; the
    same command lists again."""
    assert stop.signal is not None
    summary = JobSummary(
        counts={}, total_rows=0, requests_sent=requests, elapsed_s=time.monotonic() - started,
        output=config.output, errors_output=config.errors_output,
        exit_code=ExitCode.for_signal(stop.signal), stopped_by=stop.signal.name,
        job_name=config.resolved_job_name(), dry_run=config.dry_run, resource=config.resource,
        warnings=("stopped while listing: nothing was sent and the results were not written",),
    )  # fmt: skip
    summary.log()
    return summary


def _not_started(run: _Run, exc: BulkUpdateError, where: str | None = None) -> JobSummary:
    """A signal cut the run's start (its store held or away, waited for no longer than the
    drain; or another refusal met meanwhile): the run is stopped by it (exit 130/143), nothing
    sent, its results not written; the same command starts it (or resumes it)."""
    config, stop = run.config, run.stop
    assert stop.signal is not None
    log.error("%s; the run did not start", exc, extra={"event": "not_started"})
    return JobSummary(
        counts=_with_unprocessed({}, run.total), total_rows=run.total, requests_sent=0,
        resource=config.resource,
        elapsed_s=time.monotonic() - run.started, output=config.output,
        errors_output=config.errors_output, store=where,
        exit_code=ExitCode.for_signal(stop.signal), fatal_error=str(exc),
        stopped_by=stop.signal.name, job_name=run.job_name,
        warnings=("nothing was sent and the results were not written",),
    )  # fmt: skip


@dataclass(slots=True)
class _Sent:
    """What the invocation sent: for its end, its summary and ``history``."""

    requests: int = 0
    reads: int = 0
    rate_limited: int = 0
    unknown: int = 0  # rows sent when the run stopped, their answer never read


async def _run_journaled(
    run: _Run, store: Store, journal: Journal, key: RunKey, hurry: Hurry, new_job: str | None
) -> JobSummary:
    """The run, recorded in its store: its end is recorded whichever way it goes (an error the
    job did not expect included: exit 70). ``new_job``: the summary warns of it too."""
    config, stop = run.config, run.stop
    shards = config.shard[1] if config.shard else 1
    tally = Tally(run.total, run.progress, limits=(config.rpm, config.concurrency, shards))
    sent = _Sent()
    where = store.where if run.mode.records else None  # a check's scratch store is nobody's
    try:
        try:
            with _starting(run, hurry):
                monitor = await _start(run, store, journal, key, tally, where)
        except BulkUpdateError as exc:
            if stop.signal is None:
                raise
            await _record_failed_end(journal, run.total, 0, 0, exc, stop)
            return _not_started(run, exc, where)
        # Started: the stop from now on is the run's (a signal that came during the start
        # writes the results, as one that came before it).
        hurry.lift()
        await _send(run, store, journal, tally, monitor, sent)
        if isinstance(stop.error, BulkUpdateError):
            raise stop.error  # the user's to mend (exit 2): one line, no results
        await monitor.beat(final=True)
        end = RunEnd({}, 0, run.total, sent.requests, sent.rate_limited)
        counts, exit_code, notes = await _finish(run, journal, tally, end)
    except Exception as exc:
        await _record_failed_end(journal, run.total, sent.requests, sent.rate_limited, exc)
        raise
    tally.counts = Counter(counts)
    tally.report(force=True)
    await monitor.ended(counts, exit_code)
    return JobSummary(
        counts=counts,
        resource=run.config.resource,
        total_rows=run.total,
        requests_sent=sent.requests,
        elapsed_s=time.monotonic() - run.started,
        output=config.output,
        errors_output=config.errors_output,
        store=where,
        exit_code=exit_code,
        fatal_error=stop.message(),
        sent_this_run=tally.sent,
        stopped_by=stop.signal.name if stop.signal else None,
        job_name=run.job_name,
        warnings=(
            *([new_job] if new_job else []),
            *run.table.warnings,
            *warnings_for(run.total, sent.unknown),
            *notes,
        ),
        dry_run=config.dry_run,
        reads_sent=sent.reads,
        added_keys=dict(tally.added.most_common()),
        kept_keys=run.kept,
        bound=tally.bound(),
    )


async def _start(
    run: _Run, store: Store, journal: Journal, key: RunKey, tally: Tally, where: str | None
) -> Monitor:
    """The run's start: what earlier invocations finished counted, its first heartbeat (a run
    of the job's own: a check is seen by nobody), its start logged, its metrics begun."""
    config = run.config
    tally.resume(await asyncio.to_thread(journal.finished_counts_between, 0, (1 << 32) - 1))
    entries = await asyncio.to_thread(journal.state_entries)
    telemetry = Telemetry(run.job_name, key.shard_text or None, run.settings.rpm)
    if run.mode.records:
        # A first heartbeat, then a look at the others: of two runs started together, the
        # second sees the first.
        await journal.beat(RunBeat(run.total, tally.done, counts=dict(tally.counts)), [])
        await asyncio.to_thread(check_written_alone, config, key, journal.run_id, store)
        history = await asyncio.to_thread(store.history, run.job_name)
        telemetry.succeeded_before(last_success(history, key.shard_text))
    log.info(
        "job started",
        extra={
            "event": "start", "input": config.input, "rows": run.total,
            "dry_run": config.dry_run, "job_name": run.job_name,
            "store": where,
            "run_id": journal.run_id, "state_entries": entries,
            "since_state": config.since_state, "full": config.full, "backup": config.backup,
            "check_server": config.check_server, "revert": config.revert, "mode": run.mode.name,
        },
    )  # fmt: skip
    outputs = MetricsOutputs(telemetry, config.metrics_file, config.pushgateway)
    monitor = Monitor(telemetry, outputs, journal, tally, config.metrics_interval)
    await monitor.tick()
    if tally.resumed:
        log.info(
            "resuming: %d rows already done",
            tally.resumed,
            extra={"event": "resume", "rows_done": tally.resumed},
        )
    return monitor


async def _send(
    run: _Run, store: Store, journal: Journal, tally: Tally, monitor: Monitor, sent: _Sent
) -> None:
    """The rows sent, until the input ends or the run stops. Shards share the job's rate
    budget; a whole-input run is alone (its lock excludes every shard) and paces itself."""
    config, stop = run.config, run.stop
    budget = await asyncio.to_thread(store.budget, run.job_name) if config.shard else None
    listed = run.listed or Listed(config)
    try:
        async with Sender(
            run.settings, stop, transport=run.transport, budget=budget,
            telemetry=monitor.telemetry, fence=journal.fence, limiter=listed.limiter,
        ) as sender:  # fmt: skip
            tally.requests = lambda: sender.requests_sent
            tally.rate_limited = lambda: sender.rate_limited
            pipeline = Pipeline(config, run.mode, run.table, journal, sender, tally, stop)
            async with monitor.running():
                await send_all(pipeline, config.drain_timeout, run.signals)
            sent.requests = listed.requests + sender.requests_sent
            sent.reads = sender.reads_sent
            sent.rate_limited, sent.unknown = sender.rate_limited, pipeline.unknown
    finally:
        if budget is not None:
            budget.close()


async def _record_failed_end(
    journal: Journal,
    total: int,
    requests: int,
    rate_limited: int,
    exc: Exception,
    stop: Stop | None = None,
) -> None:
    """A run cut by an error (one of ours: exit 2; a bug: exit 70; or its start cut by a
    signal, ``stop``: 130/143) still records its end, so that ``history`` and ``status`` never
    show it running; best effort (the error is the news)."""
    try:
        counts = await asyncio.to_thread(journal.counts)
    except Exception:
        counts = {}
    # The rows it never took are left, as its results would say (``status`` shows the run as
    # stopped before its end: the same command resumes it).
    counts = _with_unprocessed(counts, total)
    code = exc.exit_code if isinstance(exc, BulkUpdateError) else ExitCode.INTERNAL
    end = RunEnd(counts, code, total, requests, rate_limited, stop_code(exc))
    if stop is not None and stop.signal is not None:
        end = dataclasses.replace(
            end, exit_code=ExitCode.for_signal(stop.signal), stopped_by=stop.signal.name
        )
    try:
        await asyncio.to_thread(journal.finish, end)
    except Exception as failed:
        log.warning(
            "the run's end was not recorded in its store (%s) after: %s",
            first_line(failed), first_line(exc),
            extra={"event": "end_not_recorded"},
        )  # fmt: skip


def _with_unprocessed(counts: dict[str, int], total: int) -> dict[str, int]:
    """Counts by status of all ``total`` rows: those not counted are ``unprocessed``."""
    counts = dict(counts)
    counts[Status.UNPROCESSED.value] = counts.get(Status.UNPROCESSED.value, 0) + max(
        0, total - sum(counts.values())
    )
    return {status: n for status, n in counts.items() if n}


async def _finish(
    run: _Run, journal: Journal, tally: Tally, end: RunEnd
) -> tuple[dict[str, int], int, list[str]]:
    """Seal the run, then its counts from the store, its results written and its end recorded
    (``end``: the invocation's rows and requests; its counts and exit code are filled in here).
    Returns the counts, the exit code and what the summary must add."""
    stop = run.stop
    limited = run.config.limit is not None
    notes: list[str] = []
    try:
        await journal.seal()
        counts = _with_unprocessed(await asyncio.to_thread(journal.counts), end.total_rows)
    except JobStopped as exc:
        # The store is away (or the run is another process's now): nothing more can be read
        # from it. The counts are what this process saw committed; the store holds them.
        stop.on_fatal(exc)
        log.error("%s; the results were not written", exc, extra={"event": "store_unavailable"})
        counts = _with_unprocessed(dict(tally.counts), end.total_rows)
        notes.append("the results were not written: the store that held them is gone"
                     if isinstance(exc, StoreGone) else "the results were not written: the "
                     "same command writes them once the store is back")  # fmt: skip
        exit_code = exit_code_for(counts, stop, limited=limited)
        await _record_end(journal, end, counts, exit_code, stop, notes)
        return counts, exit_code, notes
    gone = await asyncio.to_thread(journal.gone)
    if gone is not None and stop.on_fatal(gone):  # seen now, after the last request
        log.error("stopping: %s", gone, extra={"event": "fatal", "code": gone.error_code})
    notes += await _write_results(run, journal)
    exit_code = exit_code_for(counts, stop, limited=limited)
    if exit_code == ExitCode.INTERNAL and stop.error is None:
        log.error(
            "%d rows were left unprocessed with no stop and no --limit (a bug): a re-run sends "
            "them", counts.get(Status.UNPROCESSED.value, 0),
            extra={"event": "internal_error"},
        )  # fmt: skip
    await _record_end(journal, end, counts, exit_code, stop, notes)
    await _retain(run, journal)
    return counts, exit_code, notes


async def _retain(run: _Run, journal: Journal) -> None:
    """The store's retention (--keep-runs), once the run's end is recorded: its shard's older
    runs lose their outcomes (``Journal.retain``). Not when a signal stopped the run (it is to
    end soon), nor for a check's scratch store; best effort: a store that fails here leaves
    them to the next run."""
    keep = run.config.keep_runs
    if not keep or not run.mode.records or run.stop.signal is not None:
        return
    try:
        done = await asyncio.to_thread(journal.retain, keep)
    except BulkUpdateError as exc:
        log.warning(
            "older runs were not compacted: %s", first_line(exc),
            extra={"event": "retention_not_applied"},
        )  # fmt: skip
        return
    if done.runs:
        log.info(
            "compacted %d older run(s) of the job (--keep-runs %d): %d outcomes dropped",
            len(done.runs), keep, done.rows,
            extra={"event": "compacted", "runs": list(done.runs), "rows": done.rows},
        )  # fmt: skip


async def _write_results(run: _Run, journal: Journal) -> list[str]:
    """The results and errors files written from the input and the journal, unless the input
    changed under the run or a second signal stopped it at once. Returns what the summary must
    add. A signal here lets the results be written (a second one stops at once, without them)."""
    config, stop = run.config, run.stop
    notes: list[str] = []
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
    return notes


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


def run_job(
    config: JobConfig,
    *,
    progress: ProgressCallback | None = None,
    interrupt: Interrupt | None = None,
) -> JobSummary:
    """Run the job to the end and return its summary.

    Raises ConfigError, InputError or JournalError (nothing sent) for bad options, input or a
    store that refuses, StoreUnavailable (exit 3, nothing sent) for a store held or away at
    the start past --store-timeout; every other outcome is in the results file and the
    summary. Run in a thread other than the main one, the job handles no signal:
    ``interrupt(signal.SIGTERM)`` (from any thread) stops it as SIGTERM would.
    """
    return asyncio.run(run_job_async(config, progress=progress, interrupt=interrupt))
