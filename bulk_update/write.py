"""Write: the results file (from the journal, in row order) and the errors file (the input's
own columns, for the rows to fix and feed back). Both stream a batch at a time and are written
to a temporary file beside the target, then renamed over it: a crash never leaves a half-written
file in place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import polars as pl
import pyarrow.parquet as pq

from bulk_update import spreadsheet
from bulk_update.config import output_format
from bulk_update.journal import Journal
from bulk_update.outcome import (
    ERROR_COLUMNS,
    ERRORS_ROW_NUMBER,
    NEEDS_ATTENTION,
    RESULT_COLUMNS,
    Status,
)
from bulk_update.plan import to_send_expr, unchanged_expr
from bulk_update.read import ROW_NUMBER, InputTable

RESULTS_SCHEMA = pl.Schema(
    {
        "row_number": pl.Int64,
        "conversation_id": pl.String,
        "status": pl.String,
        "http_status": pl.Int64,
        "attempts": pl.Int64,
        "error_type": pl.String,
        "error_code": pl.String,
        "error_message": pl.String,
        "request_id": pl.String,
        "created_at": pl.Int64,
        "metadata": pl.String,
        "sent_metadata": pl.String,
    }
)
assert tuple(RESULTS_SCHEMA.names()) == RESULT_COLUMNS


Storage = dict[str, str] | None


@contextlib.contextmanager
def atomic_path(
    target: str, *, storage_options: Storage = None, schema: pl.Schema | None = None
) -> Iterator[Path]:
    """A temporary local path for ``target``'s content, put in place only if the block
    succeeds: renamed over a local target; for an object-store URL (``s3://`` ...), uploaded
    whole by polars (an object appears complete or not at all). ``schema`` reads the temporary
    file back for the upload."""
    if "://" in target:
        suffix = output_format(target)
        with tempfile.TemporaryDirectory(prefix="bulk-update-") as directory:
            temporary = Path(directory) / f"partial{suffix}"
            yield temporary
            _upload(temporary, target, schema, storage_options)
        return
    destination = Path(target)
    destination.parent.mkdir(parents=True, exist_ok=True)
    name = _new_partial(destination)
    try:
        yield Path(name)
        os.replace(name, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


def _new_partial(destination: Path) -> str:
    """Create ``.NAME.XXXXXXXX.partial`` beside ``destination``, exclusively, with the mode any
    new file gets under the user's umask (``mkstemp`` would make it 0600, and the rename would
    hand that mode to the results)."""
    for _ in range(100):
        name = str(destination.parent / f".{destination.name}.{secrets.token_hex(4)}.partial")
        try:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return name
    raise FileExistsError(f"no free temporary name beside {destination}")  # pragma: no cover


def _upload(local: Path, target: str, schema: pl.Schema | None, storage: Storage) -> None:
    fmt = output_format(target)
    if fmt == ".parquet":
        pl.scan_parquet(local).sink_parquet(target, storage_options=storage)
    elif fmt == ".csv":
        pl.scan_csv(local, schema=schema, infer_schema=schema is not None).sink_csv(
            target, storage_options=storage
        )
    else:
        pl.scan_ndjson(local, schema=schema).sink_ndjson(target, storage_options=storage)


class _FrameWriter:
    """Appends DataFrames to one file of the given format."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self._parquet: pq.ParquetWriter | None = None
        self._text: IO[bytes] | None = None
        self._schema: pl.Schema | None = None

    def write(self, frame: pl.DataFrame) -> None:
        if self._schema is None:
            self._schema = frame.schema
        if self.fmt == ".parquet":
            table = frame.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            self._parquet.write_table(table)
            return
        first = self._text is None
        if self._text is None:
            self._text = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        if self.fmt == ".csv":
            csv = spreadsheet.escape(spreadsheet.text_cells(frame))
            csv.write_csv(self._text, include_header=first)
        else:
            frame.write_ndjson(self._text)

    def close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            if self._parquet is not None:
                self._parquet.close()
            if self._text is not None:
                self._text.close()

    def close(self, empty: pl.DataFrame) -> None:
        """Finish the file; ``empty`` gives the header or schema if nothing was written."""
        if self._schema is None:
            self.write(empty)
        if self._parquet is not None:
            self._parquet.close()
        if self._text is not None:
            self._text.close()


class StreamWriter:
    """``with StreamWriter(target, empty) as out: out.write(frame)``: frames appended to a
    temporary file, renamed over ``target`` only if the block succeeds. ``empty`` gives the
    columns when nothing is written."""

    def __init__(self, target: str, empty: pl.DataFrame, storage_options: Storage = None) -> None:
        self.target = target
        self.empty = empty
        self.storage_options = storage_options
        self._stack = contextlib.ExitStack()
        self._writer: _FrameWriter | None = None

    def __enter__(self) -> StreamWriter:
        schema = self.empty.schema
        if output_format(self.target) == ".csv":
            schema = spreadsheet.text_schema(schema)
        temporary = self._stack.enter_context(
            atomic_path(self.target, storage_options=self.storage_options, schema=schema)
        )
        self._writer = _FrameWriter(temporary, output_format(self.target))
        return self

    def write(self, frame: pl.DataFrame) -> None:
        assert self._writer is not None
        if frame.height:
            self._writer.write(frame)

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        assert self._writer is not None
        if exc_type is None:
            self._writer.close(self.empty)
        else:
            self._writer.close_quietly()
        self._stack.__exit__(exc_type, *rest)  # type: ignore[arg-type]


def write_frames(
    target: str, frames: Iterable[pl.DataFrame], empty: pl.DataFrame, storage: Storage = None
) -> None:
    with StreamWriter(target, empty, storage) as out:
        for frame in frames:
            out.write(frame)


FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


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
    fmt = output_format(target)
    with contextlib.ExitStack() as stack:
        if "://" in target:
            destination: str | Path = target
        else:
            destination = stack.enter_context(atomic_path(target))
        if fmt == ".parquet":
            query.sink_parquet(destination, compression="zstd", storage_options=storage)
        elif fmt == ".csv":
            csv = spreadsheet.escape(spreadsheet.text_cells(query))
            csv.sink_csv(destination, storage_options=storage)
        else:
            query.sink_ndjson(destination, storage_options=storage)


def scan_results(path: str, storage: Storage = None) -> pl.LazyFrame:
    """A results file written by this module, with its schema."""
    fmt = output_format(path)
    if fmt == ".parquet":
        return pl.scan_parquet(path, storage_options=storage)
    if fmt == ".csv":
        return pl.scan_csv(path, schema=RESULTS_SCHEMA, storage_options=storage)
    return pl.scan_ndjson(path, schema=RESULTS_SCHEMA, storage_options=storage)


def sink_errors(table: InputTable, results: str, target: str) -> None:
    """--errors-output of a dry run: the input's rows whose result needs attention."""
    wanted = [status.value for status in NEEDS_ATTENTION]
    outcomes = (
        scan_results(results, table.storage_options)
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


def write_dry_run(
    frames: Iterable[tuple[pl.DataFrame, pl.DataFrame | None]],
    output: str,
    errors_output: str | None,
    table: InputTable,
) -> None:
    """Results (and errors) of a dry run, streamed in one pass."""
    storage = table.storage_options
    with contextlib.ExitStack() as stack:
        results = stack.enter_context(
            StreamWriter(output, pl.DataFrame(schema=RESULTS_SCHEMA), storage)
        )
        errors = (
            stack.enter_context(StreamWriter(errors_output, _empty_errors(table), storage))
            if errors_output
            else None
        )
        for result_frame, error_frame in frames:
            results.write(result_frame)
            if errors is not None and error_frame is not None:
                errors.write(error_frame)


# Why a stopped run did not reach the rows it never sent: (error_code, error_message), or None.
StopReason = tuple[str, str] | None


def results_between(
    journal: Journal, ids: pl.DataFrame, stopped: StopReason = None
) -> pl.DataFrame:
    """Results rows for one batch of ``InputTable.id_batches``: the journaled outcome of each
    row, or ``unprocessed`` for a row the journal has not seen (the job stopped before it, and
    ``stopped`` says why, or --limit left it)."""
    numbers = ids.get_column(ROW_NUMBER)
    journaled = pl.DataFrame(
        journal.rows_between(int(numbers[0]), int(numbers[-1])),
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
            pl.when(unseen).then(pl.lit("job_stopped")).otherwise("error_type").alias("error_type"),
            pl.when(unseen).then(pl.lit(code)).otherwise("error_code").alias("error_code"),
            pl.when(unseen).then(pl.lit(message)).otherwise("error_message").alias("error_message"),
        )
    return merged.select(RESULTS_SCHEMA.names())


def write_results(
    journal: Journal, table: InputTable, target: str, batch_rows: int, stopped: StopReason = None
) -> None:
    """One row per input row, in input order: the journal's outcome or ``unprocessed``."""
    frames = (
        results_between(journal, ids, stopped)
        for ids in table.id_batches(batch_rows)
        if not ids.is_empty()
    )
    write_frames(target, frames, pl.DataFrame(schema=RESULTS_SCHEMA), table.storage_options)


def write_errors(
    journal: Journal, table: InputTable, target: str, batch_rows: int, stopped: StopReason = None
) -> None:
    """Failed, invalid and unprocessed rows in the input's own columns plus status and error."""

    def frames() -> Iterator[pl.DataFrame]:
        for batch in table.all_batches(batch_rows):
            if batch.is_empty():
                continue
            ids = batch.select(
                ROW_NUMBER,
                pl.col(table.id_column).cast(pl.String).str.strip_chars().alias("conversation_id"),
            )
            yield errors_frame(table, batch, results_between(journal, ids, stopped))

    write_frames(target, frames(), _empty_errors(table), table.storage_options)
