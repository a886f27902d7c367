"""Write: the results file (from the journal, in row order) and the errors file (the input's
own columns, for the rows to fix and feed back). Both stream a batch at a time and are written
to a temporary file beside the target, then renamed over it: a crash never leaves a half-written
file in place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import polars as pl
import pyarrow.parquet as pq

from bulk_update.config import output_format
from bulk_update.journal import Journal
from bulk_update.outcome import (
    ERROR_COLUMNS,
    NEEDS_ATTENTION,
    RESULT_COLUMNS,
    RowOutcome,
    Status,
)
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


def outcomes_frame(outcomes: list[RowOutcome]) -> pl.DataFrame:
    data: dict[str, list[object]] = {name: [] for name in RESULT_COLUMNS}
    for outcome in outcomes:
        for name in RESULT_COLUMNS:
            data[name].append(getattr(outcome, name))
    data["status"] = [str(status) for status in data["status"]]
    return pl.DataFrame(data, schema=RESULTS_SCHEMA)


@contextlib.contextmanager
def atomic_path(target: str) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed over it only if the block succeeds."""
    destination = Path(target)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent
    )
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


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
            frame.write_csv(self._text, include_header=first)
        else:
            frame.write_ndjson(self._text)

    def close(self, empty: pl.DataFrame) -> None:
        """Finish the file; ``empty`` gives the header or schema if nothing was written."""
        if self._schema is None:
            self.write(empty)
        if self._parquet is not None:
            self._parquet.close()
        if self._text is not None:
            self._text.close()


def write_frames(target: str, frames: Iterable[pl.DataFrame], empty: pl.DataFrame) -> None:
    with atomic_path(target) as temporary:
        writer = _FrameWriter(temporary, output_format(target))
        for frame in frames:
            if frame.height:
                writer.write(frame)
        writer.close(empty)


def results_between(journal: Journal, ids: pl.DataFrame) -> pl.DataFrame:
    """Results rows for one batch of ``InputTable.id_batches``: the journaled outcome of each
    row, or ``unprocessed`` for a row the journal has not seen (the job stopped before it)."""
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
    return merged.with_columns(
        pl.coalesce("conversation_id", "input_id").alias("conversation_id"),
        pl.col("status").fill_null(Status.UNPROCESSED.value),
        pl.col("attempts").fill_null(0),
    ).select(RESULTS_SCHEMA.names())


def write_results(journal: Journal, table: InputTable, target: str, batch_rows: int) -> None:
    """One row per input row, in input order: the journal's outcome or ``unprocessed``."""
    frames = (
        results_between(journal, ids) for ids in table.id_batches(batch_rows) if not ids.is_empty()
    )
    write_frames(target, frames, pl.DataFrame(schema=RESULTS_SCHEMA))


def write_errors(journal: Journal, table: InputTable, target: str, batch_rows: int) -> None:
    """Failed, invalid and unprocessed rows in the input's own columns plus status and error."""
    wanted = [status.value for status in NEEDS_ATTENTION]
    input_columns = [name for name in table.schema.names() if name not in ERROR_COLUMNS]

    def frames() -> Iterator[pl.DataFrame]:
        for batch in table.all_batches(batch_rows):
            if batch.is_empty():
                continue
            ids = batch.select(
                ROW_NUMBER,
                pl.col(table.id_column).cast(pl.String).str.strip_chars().alias("conversation_id"),
            )
            outcomes = results_between(journal, ids).select(
                pl.col("row_number").cast(batch.schema[ROW_NUMBER]).alias(ROW_NUMBER),
                *ERROR_COLUMNS,
            )
            joined = batch.select(ROW_NUMBER, *input_columns).join(outcomes, on=ROW_NUMBER)
            yield joined.filter(pl.col("status").is_in(wanted)).drop(ROW_NUMBER)

    empty = pl.DataFrame(
        schema={
            **{name: table.schema[name] for name in input_columns},
            **dict.fromkeys(ERROR_COLUMNS, pl.String),
        }
    )
    write_frames(target, frames(), empty)
