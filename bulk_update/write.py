"""Write: the results file (from the run's outcomes, in row order) and the errors file (the
input's own columns, for the rows to fix and feed back). Two ways, both through the one format
table (``formats.py``): frames a batch at a time (``StreamWriter``, ``write_outputs``), or one
lazy query streamed by polars (``sink``: a dry run that needs no batch). Either way the file is
written to a temporary file beside the target, then renamed over it (or uploaded whole): a
crash never leaves a half-written file in place. The temporary file is locked (``flock``) while
it is written; the next write of the same target removes the ones nobody holds (a process killed
mid-write leaves one behind). A full disk is DiskFull, naming the file; a write cut short on
purpose (a second signal) raises WriteCancelled and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import polars as pl

from bulk_update.exceptions import DiskFull, first_line, is_disk_full
from bulk_update.formats import Appender, Storage, close_quietly, result_format
from bulk_update.outcome import (
    ERROR_COLUMNS,
    ERRORS_ROW_NUMBER,
    NEEDS_ATTENTION,
    RESULTS_SCHEMA,
    ROW_NUMBER,
    Status,
)
from bulk_update.paths import is_remote
from bulk_update.plan import to_send_expr, unchanged_expr
from bulk_update.read import InputTable
from bulk_update.resources import CONVERSATIONS, KEY_SEPARATOR, Resource
from bulk_update.stop import JOB_STOPPED, StopReason
from bulk_update.store import Journal

__all__ = [
    "WriteCancelled",
    "dry_run_results",
    "errors_frame",
    "results_schema",
    "scan_results",
    "sink",
    "sink_errors",
    "sweep_partials",
    "with_resource_ids",
    "write_outputs",
    "write_run_outputs",
]

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, no sweeping
    fcntl = None  # type: ignore[assignment]


class WriteCancelled(Exception):
    """A write cut short on purpose (a second signal): its temporary file is removed."""


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise WriteCancelled


@contextlib.contextmanager
def atomic_path(
    target: str, *, storage_options: Storage = None, schema: pl.Schema | None = None
) -> Iterator[Path]:
    """A temporary local path for ``target``'s content, put in place only if the block
    succeeds: renamed over a local target; for an object-store URL (``s3://`` ...), uploaded
    whole by polars (an object appears complete or not at all). ``schema`` reads the temporary
    file back for the upload. A full disk is DiskFull naming ``target``."""
    fmt = result_format(target)
    try:
        if is_remote(target):
            with tempfile.TemporaryDirectory(prefix="bulk-update-") as directory:
                temporary = Path(directory) / f"partial{fmt.suffix}"
                yield temporary
                fmt.sink(fmt.scan(temporary, schema, None), target, storage_options)
            return
        destination = Path(target)
        destination.parent.mkdir(parents=True, exist_ok=True)
        sweep_partials(destination)
        name, held = _new_partial(destination)
        try:
            yield Path(name)
            os.replace(name, destination)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise
        finally:
            os.close(held)  # the lock goes with it
    except DiskFull:
        raise  # another file, written within this one's block (the errors file), is named
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(target, first_line(exc)) from None
        raise


def _partials(destination: Path) -> list[Path]:
    return list(destination.parent.glob(f".{glob_escape(destination.name)}.*.partial"))


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def sweep_partials(destination: Path) -> int:
    """Remove the temporary files of ``destination`` that no process is writing (their writer
    was killed): a file is being written only while its writer holds its lock. Returns how many
    went."""
    if fcntl is None:  # pragma: no cover
        return 0
    removed = 0
    for partial in _partials(destination):
        try:
            fd = os.open(partial, os.O_RDONLY)
        except OSError:
            continue  # gone meanwhile: renamed into place, or removed by its writer
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: a write under way
        else:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
                removed += 1
        finally:
            os.close(fd)
    return removed


def _new_partial(destination: Path) -> tuple[str, int]:
    """Create ``.NAME.XXXXXXXX.partial`` beside ``destination``, exclusively, with the mode any
    new file gets under the user's umask (``mkstemp`` would make it 0600, and the rename would
    hand that mode to the results), and lock it: the open descriptor that holds the lock is
    returned with its name (close it when the file is in place)."""
    for _ in range(100):
        name = str(destination.parent / f".{destination.name}.{secrets.token_hex(4)}.partial")
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        return name, fd
    raise FileExistsError(f"no free temporary name beside {destination}")  # pragma: no cover


class StreamWriter:
    """``with StreamWriter(target, empty) as out: out.write(frame)``: frames appended to a
    temporary file, renamed over ``target`` only if the block succeeds. ``empty`` gives the
    columns when nothing is written."""

    def __init__(self, target: str, empty: pl.DataFrame, storage_options: Storage = None) -> None:
        self.target = target
        self.empty = empty
        self.storage_options = storage_options
        self.format = result_format(target)
        self._stack = contextlib.ExitStack()
        self._appender: Appender | None = None
        self._written = False

    def __enter__(self) -> StreamWriter:
        schema = self.format.prepare_schema(self.empty.schema)
        temporary = self._stack.enter_context(
            atomic_path(self.target, storage_options=self.storage_options, schema=schema)
        )
        self._appender = self.format.append(temporary)
        return self

    def write(self, frame: pl.DataFrame) -> None:
        assert self._appender is not None
        if frame.height:
            self._appender.write(self.format.prepare(frame))
            self._written = True

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        assert self._appender is not None
        if exc_type is None:
            if not self._written:  # the header (or schema) alone
                self._appender.write(self.format.prepare(self.empty))
            self._appender.close()
        else:
            close_quietly(self._appender)
        self._stack.__exit__(exc_type, *rest)  # type: ignore[arg-type]


FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)

# Where every stage carries a row's key (``resources.py``): the results' ID column(s) there.
KEY = "conversation_id"


def results_schema(resource: Resource = CONVERSATIONS) -> pl.Schema:
    """The results' columns for ``resource``: its ID column(s) where ``conversation_id`` is."""
    if resource is CONVERSATIONS:
        return RESULTS_SCHEMA
    schema = pl.Schema()
    for name, dtype in RESULTS_SCHEMA.items():
        if name == KEY:
            schema.update(dict.fromkeys(resource.id_columns, pl.String()))
        else:
            schema[name] = dtype
    return schema


def with_resource_ids(frame: FrameT, resource: Resource = CONVERSATIONS) -> FrameT:
    """Results rows with ``resource``'s ID column(s) for the key (a pair's IDs split at
    ``KEY_SEPARATOR``; a conversation's results are as they always were)."""
    if resource is CONVERSATIONS:
        return frame
    key = pl.col(KEY)
    if resource.paired:
        parts = key.str.splitn(KEY_SEPARATOR, len(resource.id_columns))
        ids = [
            parts.struct.field(f"field_{i}").alias(column)
            for i, column in enumerate(resource.id_columns)
        ]
    else:
        ids = [key.alias(resource.key_column)]
    columns = frame.collect_schema().names()
    return frame.select([e for name in columns for e in (ids if name == KEY else [pl.col(name)])])


def dry_run_results(plan: FrameT, limit: int | None, sent_before: int = 0) -> FrameT:
    """Results rows of a dry run from a plan (eager or lazy): ``planned``, ``invalid`` or
    ``unchanged`` (if ``mark_unchanged`` marked it), and ``unprocessed`` past ``--limit``
    (``sent_before``: rows to send in earlier batches)."""
    valid = pl.col("error_code").is_null()
    unchanged = unchanged_expr(plan)
    seen = to_send_expr(plan).cast(pl.Int64).cum_sum() + sent_before
    past_limit = pl.lit(False) if limit is None else seen > limit
    status = (
        pl.when(~valid)
        .then(pl.lit(Status.INVALID.value))
        .when(unchanged)
        .then(pl.lit(Status.UNCHANGED.value))
        .when(past_limit)
        .then(pl.lit(Status.UNPROCESSED.value))
        .otherwise(pl.lit(Status.PLANNED.value))
    )
    none = pl.lit(None)
    return plan.select(
        pl.col(ROW_NUMBER).cast(pl.Int64).alias("row_number"),
        pl.col("conversation_id").fill_null(""),
        status.alias("status"),
        none.cast(pl.Int64).alias("http_status"),
        pl.lit(0, dtype=pl.Int64).alias("attempts"),
        pl.when(~valid).then(pl.lit("invalid_input")).alias("error_type"),
        "error_code",
        "error_message",
        none.cast(pl.String).alias("request_id"),
        none.cast(pl.Int64).alias("created_at"),
        none.cast(pl.String).alias("metadata"),
        "sent_metadata",
        none.cast(pl.String).alias("previous_metadata"),
        none.cast(pl.String).alias("server_metadata"),
    )


def _errors_columns(table: InputTable) -> list[pl.Expr]:
    """The errors file's columns before status and error: ``row_number`` (the input's own, if
    it has one: a fed-back errors file keeps tracing back to the first input), then the input's
    columns."""
    names = [name for name in table.schema.names() if name not in ERROR_COLUMNS]
    own = [] if ERRORS_ROW_NUMBER in names else [
        pl.col(ROW_NUMBER).cast(pl.Int64).alias(ERRORS_ROW_NUMBER)
    ]  # fmt: skip
    return [*own, *(pl.col(name) for name in names)]


def errors_frame(table: InputTable, batch: pl.DataFrame, results: pl.DataFrame) -> pl.DataFrame:
    """The rows of ``batch`` (all input columns) whose result needs attention: ``row_number``,
    the input's own columns, then status, error_code and error_message."""
    wanted = [status.value for status in NEEDS_ATTENTION]
    outcomes = results.filter(pl.col("status").is_in(wanted)).select(
        pl.col("row_number").cast(batch.schema[ROW_NUMBER]).alias(ROW_NUMBER), *ERROR_COLUMNS
    )
    # A fed-back errors file has status and error columns of its own: this run's replace them.
    joined = batch.drop(ERROR_COLUMNS, strict=False).join(outcomes, on=ROW_NUMBER)
    joined = joined.sort(ROW_NUMBER)
    return joined.select(*_errors_columns(table), *ERROR_COLUMNS)


def _empty_errors(table: InputTable) -> pl.DataFrame:
    schema = pl.Schema({ROW_NUMBER: pl.UInt32()})
    schema.update(table.schema)
    schema.update(dict.fromkeys(ERROR_COLUMNS, pl.String()))
    return pl.DataFrame(schema=schema).select(*_errors_columns(table), *ERROR_COLUMNS)


def sink(query: pl.LazyFrame, target: str, storage: Storage = None) -> None:
    """Stream a lazy query into ``target`` (format from its extension), atomically: a local
    file through a temporary one renamed over it; an object store in one upload."""
    fmt = result_format(target)
    with contextlib.ExitStack() as stack:
        if is_remote(target):
            destination: str | Path = target
        else:
            destination = stack.enter_context(atomic_path(target))
        fmt.sink(fmt.prepare_lazy(query), destination, storage)


def scan_results(
    path: str, storage: Storage = None, resource: Resource = CONVERSATIONS
) -> pl.LazyFrame:
    """A results file written by this module (for ``resource``), with its schema."""
    return result_format(path).scan(path, results_schema(resource), storage)


def sink_errors(table: InputTable, results: str, target: str) -> None:
    """--errors-output of a dry run: the input's rows whose result needs attention."""
    wanted = [status.value for status in NEEDS_ATTENTION]
    outcomes = (
        scan_results(results, table.storage_options, table.resource)
        .filter(pl.col("status").is_in(wanted))
        .select(pl.col("row_number").cast(pl.UInt32).alias(ROW_NUMBER), *ERROR_COLUMNS)
    )
    query = (
        table.scan()
        .drop(ERROR_COLUMNS, strict=False)
        .join(outcomes, on=ROW_NUMBER, how="inner", maintain_order="left")
        .select(*_errors_columns(table), *ERROR_COLUMNS)
    )
    sink(query, target, table.storage_options)


def write_outputs(
    frames: Iterable[tuple[pl.DataFrame, pl.DataFrame | None]],
    output: str,
    errors_output: str | None,
    table: InputTable,
) -> None:
    """The results (and errors) file, in one pass: ``frames`` yields each batch's results rows
    and, with --errors-output, its errors rows. A run and a dry run both write through here
    (a dry run that needs no batch streams one lazy query instead: ``sink``)."""
    storage = table.storage_options
    resource = table.resource
    with contextlib.ExitStack() as stack:
        results = stack.enter_context(
            StreamWriter(output, pl.DataFrame(schema=results_schema(resource)), storage)
        )
        errors = (
            stack.enter_context(StreamWriter(errors_output, _empty_errors(table), storage))
            if errors_output
            else None
        )
        for result_frame, error_frame in frames:
            results.write(with_resource_ids(result_frame, resource))
            if errors is not None and error_frame is not None:
                errors.write(error_frame)


def results_between(
    journal: Journal, ids: pl.DataFrame, stopped: StopReason = None
) -> pl.DataFrame:
    """Results rows for one batch of ``InputTable.id_batches``: the journaled outcome of each
    row (an unchanged row's rebuilt from the input and the job's state: ``unchanged_rows``),
    or ``unprocessed`` for a row the journal has not seen (the job stopped before it, and
    ``stopped`` says why, or --limit left it)."""
    numbers = ids.get_column(ROW_NUMBER)
    first, last = int(numbers[0]), int(numbers[-1])
    given = dict(zip(numbers.to_list(), ids.get_column("conversation_id").to_list(), strict=True))
    journaled = pl.DataFrame(
        [*journal.rows_between(first, last), *journal.unchanged_rows(first, last, given)],
        schema=RESULTS_SCHEMA,
        orient="row",
    )
    merged = ids.select(
        pl.col(ROW_NUMBER).cast(pl.Int64).alias("row_number"),
        pl.col("conversation_id").alias("input_id"),
    ).join(journaled, on="row_number", how="left")
    merged = merged.with_columns(
        pl.coalesce("conversation_id", "input_id").alias("conversation_id"),
        pl.col("status").fill_null(Status.UNPROCESSED.value),
        pl.col("attempts").fill_null(0),
    )
    if stopped is not None:
        unseen = pl.col("error_code").is_null() & (pl.col("status") == Status.UNPROCESSED.value)
        code, message = stopped
        merged = merged.with_columns(
            pl.when(unseen).then(pl.lit(JOB_STOPPED)).otherwise("error_type").alias("error_type"),
            pl.when(unseen).then(pl.lit(code)).otherwise("error_code").alias("error_code"),
            pl.when(unseen).then(pl.lit(message)).otherwise("error_message").alias("error_message"),
        )
    return merged.select(RESULTS_SCHEMA.names())


def write_run_outputs(
    journal: Journal,
    table: InputTable,
    output: str,
    errors_output: str | None,
    batch_rows: int,
    stopped: StopReason = None,
    cancel: threading.Event | None = None,
) -> None:
    """A run's results, one row per input row in input order (the run's outcome, or
    ``unprocessed``), and with --errors-output the rows that need attention in the input's own
    columns plus status and error; both from one read of the input. ``cancel``, once set, cuts
    the write short (WriteCancelled) at the next batch."""

    def frames() -> Iterator[tuple[pl.DataFrame, pl.DataFrame | None]]:
        if errors_output is None:
            for ids in table.id_batches(batch_rows):
                _check(cancel)
                if not ids.is_empty():
                    yield results_between(journal, ids, stopped), None
            return
        key = table.key()
        for batch in table.all_batches(batch_rows):
            _check(cancel)
            if batch.is_empty():
                continue
            ids = batch.select(ROW_NUMBER, key.alias("conversation_id"))
            results = results_between(journal, ids, stopped)
            yield results, errors_frame(table, batch, results)

    write_outputs(frames(), output, errors_output, table)
