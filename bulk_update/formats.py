"""The results formats, in one table: from a path's extension to how a file of that format is
scanned, sunk (streamed from a lazy query), appended to a frame at a time, and what its cells
must become first (CSV holds text only, escaped against formula injection)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

import polars as pl

from bulk_update import spreadsheet
from bulk_update.exceptions import ConfigError
from bulk_update.paths import suffix

__all__ = ["FORMATS", "Appender", "Storage", "close_quietly", "result_format"]

Storage = dict[str, str] | None
FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


class Appender(Protocol):
    """Frames appended to one local file; ``close`` finishes it."""

    def write(self, frame: pl.DataFrame) -> None: ...

    def close(self) -> None: ...


class _ParquetAppender:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None  # a pyarrow ParquetWriter, imported when first needed

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = frame.to_arrow()
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class _TextAppender:
    """CSV (a header before the first frame) or JSON Lines."""

    def __init__(self, path: Path, csv: bool) -> None:
        self.path = path
        self.csv = csv
        self._file: IO[bytes] | None = None

    def write(self, frame: pl.DataFrame) -> None:
        first = self._file is None
        if self._file is None:
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        if self.csv:
            frame.write_csv(self._file, include_header=first)
        else:
            frame.write_ndjson(self._file)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _csv_text(frame: FrameT) -> FrameT:
    return spreadsheet.escape(spreadsheet.text_cells(frame, spreadsheet.holds_in_csv))


def _json_text(frame: FrameT) -> FrameT:
    return spreadsheet.text_cells(frame, spreadsheet.holds_in_json)


def _parquet_text(frame: FrameT) -> FrameT:
    return spreadsheet.text_cells(frame, spreadsheet.holds_in_parquet)


@dataclass(frozen=True, slots=True)
class ResultFormat:
    suffix: str
    # A file of this format (``schema``: the columns' types where the file does not keep them).
    scan: Callable[[str | Path, pl.Schema | None, Storage], pl.LazyFrame]
    # Stream a query into a file (a local path or an object-store URL), as it is.
    sink: Callable[[pl.LazyFrame, str | Path, Storage], None]
    append: Callable[[Path], Appender]
    # What a frame must become before it is written in this format.
    prepare: Callable[[pl.DataFrame], pl.DataFrame]
    prepare_lazy: Callable[[pl.LazyFrame], pl.LazyFrame]
    prepare_schema: Callable[[pl.Schema], pl.Schema]


FORMATS: dict[str, ResultFormat] = {
    ".parquet": ResultFormat(
        ".parquet",
        scan=lambda path, _schema, storage: pl.scan_parquet(path, storage_options=storage),
        sink=lambda query, path, storage: query.sink_parquet(
            path, compression="zstd", storage_options=storage
        ),
        append=_ParquetAppender,
        prepare=_parquet_text,
        prepare_lazy=_parquet_text,
        prepare_schema=lambda schema: spreadsheet.text_schema(schema, spreadsheet.holds_in_parquet),
    ),
    ".csv": ResultFormat(
        ".csv",
        scan=lambda path, schema, storage: pl.scan_csv(
            path, schema=schema, infer_schema=schema is not None, storage_options=storage
        ),
        sink=lambda query, path, storage: query.sink_csv(path, storage_options=storage),
        append=lambda path: _TextAppender(path, csv=True),
        prepare=_csv_text,
        prepare_lazy=_csv_text,
        prepare_schema=lambda schema: spreadsheet.text_schema(schema, spreadsheet.holds_in_csv),
    ),
    ".jsonl": ResultFormat(
        ".jsonl",
        scan=lambda path, schema, storage: pl.scan_ndjson(
            path, schema=schema, storage_options=storage
        ),
        sink=lambda query, path, storage: query.sink_ndjson(path, storage_options=storage),
        append=lambda path: _TextAppender(path, csv=False),
        prepare=_json_text,
        prepare_lazy=_json_text,
        prepare_schema=lambda schema: spreadsheet.text_schema(schema, spreadsheet.holds_in_json),
    ),
}
RESULT_SUFFIXES = tuple(FORMATS)


def result_format(path: str) -> ResultFormat:
    """The format of a results (or errors) path, from its extension."""
    extension = suffix(path)
    if extension not in FORMATS:
        raise ConfigError(
            f"{path}: unknown results format {extension or '(none)'!r}; use one of "
            + ", ".join(RESULT_SUFFIXES)
        )
    return FORMATS[extension]


def close_quietly(appender: Appender) -> None:
    with contextlib.suppress(Exception):
        appender.close()
