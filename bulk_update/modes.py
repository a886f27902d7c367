"""What kind of run this is, chosen once from the config: ``Mode.of(config)``.

Five kinds of run share one engine: a run (the plain update), ``--backup`` (each conversation
read first, its before-image kept), ``bulk-update revert`` (the input is a --backup run's
results; what it changed is put back), ``validate --check-server`` (each conversation read, never
updated; a revert can be checked the same way) and the dry run (no store, no request:
``dryrun.py``). They differ in a few answers, all given here: where the rows come from and how
a batch is planned, whether each conversation is read first, which store the run is recorded in
and under which job. ``job.py`` and ``pipeline.py`` ask the mode, never the config, which kind of
run they are in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from bulk_update.config import OPTIONS, JobConfig
from bulk_update.exceptions import BulkUpdateError, ConfigError
from bulk_update.outcome import RowOutcome
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
from bulk_update.read import InputTable, open_input
from bulk_update.server import revert
from bulk_update.server.readfirst import ReadFirst
from bulk_update.store import Journal, StoreLocation, jobs_that_wrote, open_existing_store

__all__ = ["Mode", "reverted_pace"]

# What a revert takes from the run it reverts, unless given: the pace the run was given (its
# --rpm may be a budget shared with other jobs, or all the API allows).
PACE = ("rpm", "concurrency")

# A batch as planned: the updates to send, the ``invalid`` outcomes, the ``unchanged`` rows
# (ROW_NUMBER, conversation_id, sent_metadata).
Planned = tuple[list[PlannedUpdate], list[RowOutcome], pl.DataFrame]


@dataclass(frozen=True, slots=True)
class Mode:
    name: str  # run, backup, revert, check, check revert, dry run
    # The plain dry run: validated and written, nothing sent, no store (``dryrun.py``).
    dry: bool
    # The input is a --backup run's results, to put back (``server/revert.py``).
    reverts: bool
    # Each row's conversation is read before anything is sent for it (``server/readfirst.py``);
    # ``writes``: the update is then sent (False: a check, which only reads).
    reads_first: bool
    writes: bool
    # The run is the job's: recorded in the job's store (a check uses a scratch store, which
    # nobody sees: no heartbeat, no history, no other run to make way for).
    records: bool
    # Rows are compared with the job's state of what it last set (not with the server).
    compares_state: bool

    @classmethod
    def of(cls, config: JobConfig) -> Mode:
        check = config.check_server
        reads_first = config.backup or check or config.revert
        if config.dry_run and not check:
            name = "dry run"
        elif check:
            name = "check revert" if config.revert else "check"
        else:
            name = "revert" if config.revert else "backup" if config.backup else "run"
        return cls(
            name=name,
            dry=name == "dry run",
            reverts=config.revert,
            reads_first=reads_first,
            writes=not config.dry_run,
            records=not check,
            compares_state=not (config.full or check or config.revert),
        )

    @property
    def keeps_images(self) -> bool:
        """Before-images are kept in the store (and reused on a resume)."""
        return self.reads_first and self.writes

    def since_state(self, config: JobConfig) -> str | None:
        """--since-state: the job state the run compares with (a check compares with none)."""
        return config.since_state if self.records else None

    def read_first(self, config: JobConfig) -> ReadFirst | None:
        """Each row's handler when conversations are read first (None: the row is just sent)."""
        return ReadFirst(write=self.writes, force=config.force) if self.reads_first else None

    def open_table(self, config: JobConfig) -> tuple[InputTable, dict[str, int]]:
        """The input (a revert's: the reverted run's results, and the keys it added that
        stay)."""
        if self.reverts:
            table = revert.open_results(config.input, config.storage(), config.resolved_resource())
            kept = revert.kept_keys(
                table, config.batch_rows, blank_added_keys=config.blank_added_keys
            )
            return table, kept
        table = open_input(
            config.input,
            id_column=config.resolved_id_columns(),
            columns=config.columns,
            metadata_column=config.metadata_column,
            shard=config.shard,
            storage_options=config.storage(),
            delimiter=config.delimiter,
            quoting=config.quoting,
            resource=config.resolved_resource(),
            number_columns=config.number_columns,
            boolean_columns=config.boolean_columns,
        )
        return table, {}

    def planner(self, config: JobConfig, table: InputTable) -> BatchPlanner:
        if self.reverts:
            return _RevertPlanner(config, table)
        return _InputPlanner(config, table, compares_state=self.compares_state)

    def with_job(self, config: JobConfig) -> JobConfig:
        """The config with the job the run belongs to. A revert is a run of the job whose run
        wrote the results it reverts (so that the job's state follows it): looked up in the
        store (blocks)."""
        if self.reverts and self.records:
            return dataclasses.replace(config, job_name=reverted_job(config))
        return config

    def store_location(self, config: JobConfig, scratch: contextlib.ExitStack) -> StoreLocation:
        """Where the run is recorded: the job's store; a check's outcomes go to a scratch store
        (removed with ``scratch``), a check writes nothing of the job's."""
        if self.records:
            return config.store_location()
        directory = scratch.enter_context(tempfile.TemporaryDirectory(prefix="bulk-update-"))
        return StoreLocation(Path(directory) / "check.sqlite")


class BatchPlanner:
    """Plans one batch of the input: ``plan`` blocks (it may read the store)."""

    def batches(self) -> Iterator[pl.DataFrame]:
        raise NotImplementedError

    def plan(self, batch: pl.DataFrame, journal: Journal) -> Planned:
        raise NotImplementedError


class _InputPlanner(BatchPlanner):
    def __init__(self, config: JobConfig, table: InputTable, *, compares_state: bool) -> None:
        self.config = config
        self.table = table
        self.compares_state = compares_state
        self.duplicates: pl.DataFrame | None = None

    def batches(self) -> Iterator[pl.DataFrame]:
        self.duplicates = find_duplicates(self.table)
        return self.table.batches(self.config.batch_rows)

    def plan(self, batch: pl.DataFrame, journal: Journal) -> Planned:
        assert self.duplicates is not None, "batches() first"
        plan = plan_frame(self.table, batch, self.duplicates)
        if self.compares_state:
            plan = mark_unchanged(plan, journal.changed_rows(valid_rows(plan)))
        return updates(plan), invalid_outcomes(plan), unchanged_rows(plan)


class _RevertPlanner(BatchPlanner):
    def __init__(self, config: JobConfig, table: InputTable) -> None:
        self.config = config
        self.table = table

    def batches(self) -> Iterator[pl.DataFrame]:
        return revert.batches(self.table, self.config.batch_rows)

    def plan(self, batch: pl.DataFrame, journal: Journal) -> Planned:
        plan = revert.plan_batch(batch, blank_added_keys=self.config.blank_added_keys)
        return plan.to_send, plan.invalid, plan.unchanged


def reverted_job(config: JobConfig) -> str:
    """The job whose run wrote the results a revert reverts. Without --job-name, the one job
    that wrote them, looked up in the store (ConfigError, nothing created, if there is none or
    more than one); with it, that job, if it wrote them."""
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


def reverted_pace(options: Mapping[str, Any]) -> dict[str, Any]:
    """A revert's ``PACE`` options not in ``options`` (the flags and the job file given), as
    the run it reverts recorded them (its last invocation's): a flag given wins, then the run's,
    then the defaults. Best effort: a revert whose run cannot be found gets none here, and the
    job's own lookup (``Mode.with_job``) says why."""
    given = {key.replace("-", "_"): value for key, value in options.items()}
    if all(name in given for name in PACE):
        return {}
    try:
        config = JobConfig.from_options({k: v for k, v in given.items() if k in OPTIONS})
        job = reverted_job(config)
        results = config.input
        forms = {results} if is_remote(results) else {results, str(Path(results).resolve())}
        with open_existing_store(config.store_location(), job) as store:
            runs = [r for r in store.history(job) if r.results in forms and not r.replaced]
    except BulkUpdateError:
        return {}
    if not runs:
        return {}
    recorded = max(runs, key=lambda record: record.run_id).options
    return {name: recorded[name] for name in PACE if name not in given and name in recorded}
