"""The dry run (``validate``, ``run --dry-run``): read, plan and write, streaming. No store
is written and no request is sent; the job's state is read, not written."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator

import polars as pl

from bulk_update.config import JobConfig
from bulk_update.observe.summary import (
    JobSummary,
    Progress,
    ProgressCallback,
    exit_code_for,
    warnings_for,
)
from bulk_update.plan import (
    find_duplicates,
    mark_unchanged,
    plan_frame,
    plan_lazy,
    to_send_count,
    valid_rows,
)
from bulk_update.read import InputTable
from bulk_update.store import StateReader, read_state
from bulk_update.write import (
    WriteCancelled,
    dry_run_results,
    errors_frame,
    scan_results,
    sink,
    sink_errors,
    with_resource_ids,
    write_outputs,
)

__all__ = ["dry_run"]

log = logging.getLogger("bulk_update")


def dry_run(
    config: JobConfig,
    table: InputTable,
    progress: ProgressCallback | None,
    started: float,
    cancel: threading.Event | None = None,
) -> JobSummary:
    """Memory flat in the input: one lazy polars query from the input to the results file where
    the rules are all vectorised; batch by batch for --metadata-column (a JSON object per cell)
    or when rows are compared with the job's state. ``cancel`` (a signal) cuts the batch by
    batch write short (WriteCancelled); the one query, which cannot be cut, runs to its end.
    The summary is the caller's to log."""
    log.info("dry run started", extra={"event": "start", "input": config.input, "dry_run": True})
    try:
        duplicates = find_duplicates(table, config.batch_rows)
        with read_state(
            config.store_location(), config.resolved_job_name(), config.since_state
        ) as state:
            compare = None if config.full else state
            plan = plan_lazy(table, duplicates) if compare is None else None
            if plan is not None:
                counts = _lazy(config, table, plan)
            else:
                counts = _batches(config, table, duplicates, compare, progress, started, cancel)
    except pl.exceptions.PolarsError as exc:
        raise table.read_error(exc) from None
    total = sum(counts.values())
    if progress is not None:
        progress(Progress(total, total, dict(counts), 0, time.monotonic() - started))
    return JobSummary(
        counts=dict(counts),
        resource=config.resource,
        total_rows=total,
        requests_sent=0,
        elapsed_s=time.monotonic() - started,
        output=config.output,
        errors_output=config.errors_output,
        store=config.store_where(),
        exit_code=exit_code_for(counts, limited=config.limit is not None),
        dry_run=True,
        job_name=config.resolved_job_name(),
        warnings=(*table.warnings, *warnings_for(total)),
    )


def _lazy(config: JobConfig, table: InputTable, plan: pl.LazyFrame) -> dict[str, int]:
    """Stream the planned input into the results (and errors) file; counts by status."""
    storage = config.storage()
    sink(with_resource_ids(dry_run_results(plan, config.limit), table.resource),
         config.output, storage)  # fmt: skip
    status_counts = (
        scan_results(config.output, storage, table.resource).group_by("status").len().collect()
    )
    if config.errors_output is not None:
        sink_errors(table, config.output, config.errors_output)
    return dict(status_counts.iter_rows())


def _batches(
    config: JobConfig,
    table: InputTable,
    duplicates: pl.DataFrame,
    state: StateReader | None,
    progress: ProgressCallback | None,
    started: float,
    cancel: threading.Event | None = None,
) -> dict[str, int]:
    """A batch at a time: --metadata-column (a JSON object per cell), or the rows compared with
    the job's state."""
    counts: Counter[str] = Counter()
    to_send = 0

    def frames() -> Iterator[tuple[pl.DataFrame, pl.DataFrame | None]]:
        nonlocal to_send
        batches = table.all_batches if config.errors_output else table.batches
        for batch in batches(config.batch_rows):
            if cancel is not None and cancel.is_set():
                raise WriteCancelled
            plan = plan_frame(table, batch, duplicates)
            if state is not None:
                plan = mark_unchanged(plan, state.changed_rows(valid_rows(plan)))
            results = dry_run_results(plan, config.limit, to_send)
            to_send += to_send_count(plan)
            counts.update(dict(results.group_by("status").len().iter_rows()))
            if progress is not None:
                total = sum(counts.values())
                progress(Progress(total, total, dict(counts), 0, time.monotonic() - started))
            errors = errors_frame(table, batch, results) if config.errors_output else None
            yield results, errors

    write_outputs(frames(), config.output, config.errors_output, table)
    return dict(counts)
