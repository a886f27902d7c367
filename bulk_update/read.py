"""Read: the input table, lazily, in batches, with the 1-based data-row number of every row.

CSV and TSV (any ``--delimiter``, quoted or not: ``--quoting``) and JSON Lines are read as text
(every cell a string, empty cells and JSON nulls null; a JSON object or array as its JSON text,
marked nested: ``jsonlines``); Parquet keeps its types for the plan stage to turn into text.
Metadata keys are the column names trimmed (``values.key_of``): a name given finds a column by
either. Nothing here holds the whole file in memory.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import os
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from bulk_update import jsonlines, spreadsheet, values
from bulk_update.exceptions import DiskFull, InputError, first_line, is_disk_full
from bulk_update.outcome import ERROR_COLUMNS, ERRORS_ROW_NUMBER, ROW_NUMBER
from bulk_update.paths import is_remote, suffix
from bulk_update.resources import CONVERSATIONS, KEY_SEPARATOR, Resource

__all__ = ["BATCH_BYTES", "InputTable", "expand", "file_fingerprint", "open_input", "shard_of"]

# A batch holds about this much of the input, and at most JobConfig.batch_rows rows: a file of
# wide rows is read fewer rows at a time, so that memory does not follow the width of a row.
BATCH_BYTES = 8 << 20
MIN_BATCH_ROWS = 100
# The first rows measured for their width (with the file's size over its rows, when known).
SAMPLE_ROWS = 1000

InputFormat = Literal["csv", "parquet", "ndjson"]
# Input formats by file extension (lower case); a file without one is read as CSV.
INPUT_FORMATS: dict[str, InputFormat] = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv", "": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "ndjson", ".ndjson": "ndjson",
}  # fmt: skip


def input_format(path: str) -> InputFormat:
    """The format of an input path (a file, a glob, a URL), from its extension."""
    extension = suffix(path)
    if extension not in INPUT_FORMATS:
        raise InputError(
            path,
            f"unsupported input format {extension!r}: use .csv, .tsv, .jsonl, .ndjson or .parquet"
            + (" (save the sheet as CSV)" if extension in {".xlsx", ".xls", ".ods"} else ""),
        )
    return INPUT_FORMATS[extension]


def default_separator(path: str) -> str:
    return "\t" if path.lower().endswith(".tsv") else ","


@dataclass(frozen=True, slots=True)
class InputTable:
    """An input file and the columns a job maps from it."""

    path: str
    format: InputFormat
    schema: pl.Schema
    id_column: str  # the first (or only) ID column
    metadata_columns: tuple[str, ...]  # or the one JSON column, see metadata_column
    metadata_column: str | None
    files: tuple[str, ...] = ()  # what path names: itself, or a glob's matches in sorted order
    shard: tuple[int, int] | None = None  # (K, N): only the rows of shard K of N
    storage_options: dict[str, str] | None = None
    fed_back: bool = False  # a CSV --errors-output file fed back: undo its spreadsheet escapes
    separator: str = ","  # of a CSV or TSV file
    quoted: bool = True  # a CSV or TSV file's cells may be quoted (--quoting csv)
    # Said once before sending (and in the summary): a mapped column no row can send.
    warnings: tuple[str, ...] = ()
    # What the rows update (``resources.py``); a resource of two IDs (a vector store's file):
    # the ID columns after ``id_column``.
    resource: Resource = CONVERSATIONS
    more_id_columns: tuple[str, ...] = ()
    # A typed resource's text columns whose values are sent as JSON numbers, booleans.
    number_columns: tuple[str, ...] = ()
    boolean_columns: tuple[str, ...] = ()

    @property
    def id_columns(self) -> tuple[str, ...]:
        """Every ID column, in the resource's order."""
        return (self.id_column, *self.more_id_columns)

    def key(self) -> pl.Expr:
        """Each row's key, trimmed: its ID, or its IDs joined by ``KEY_SEPARATOR`` (a missing
        one as empty): what the store keys, duplicates compare and shards hash."""
        trimmed = [pl.col(c).cast(pl.String).str.strip_chars() for c in self.id_columns]
        if len(trimmed) == 1:
            return trimmed[0]
        return pl.concat_str([t.fill_null("") for t in trimmed], separator=KEY_SEPARATOR)

    def scan(self) -> pl.LazyFrame:
        """Every row (of the shard), with ``ROW_NUMBER`` first: 1-based, header not counted,
        counted over the whole input (all files of a glob, every shard)."""
        scan = _scan(
            self.files or (self.path,), self.format, self.storage_options, self.separator,
            self.schema, quoted=self.quoted, typed=self.resource.typed,
        )  # fmt: skip
        if self.fed_back:
            scan = spreadsheet.unescape(scan)
        if self.format == "ndjson" and jsonlines.LINE in scan.collect_schema().names():
            # A row's number counts the data rows: a blank line is no row. The messages that
            # name a JSON Lines row name this number too (``jsonlines``).
            scan = scan.drop(jsonlines.LINE)
        scan = scan.with_row_index(ROW_NUMBER, offset=1)
        if self.shard is None:
            return scan
        index, count = self.shard
        return scan.filter(shard_of(self.key(), count) == index)

    def batches(self, rows: int) -> Iterator[pl.DataFrame]:
        """The row number, ID and metadata columns, ``rows`` at a time, in input order (JSON
        Lines: with the marks of the metadata columns' nested values, ``jsonlines.NESTED``)."""
        wanted = [ROW_NUMBER, *self.id_columns]
        wanted += [self.metadata_column] if self.metadata_column else list(self.metadata_columns)
        scan = self.scan()
        names = set(scan.collect_schema().names()) if self.format == "ndjson" else set()
        wanted += [
            mark + c
            for c in self.metadata_columns
            for mark in (jsonlines.NESTED, jsonlines.TYPED)
            if mark + c in names
        ]
        try:
            yield from scan.select(wanted).collect_batches(chunk_size=rows)
        except pl.exceptions.PolarsError as exc:
            raise self.read_error(exc) from None

    def id_batches(self, rows: int) -> Iterator[pl.DataFrame]:
        """``ROW_NUMBER`` and the trimmed ID (as ``conversation_id``), ``rows`` at a time."""
        frame = self.scan().select(ROW_NUMBER, self.key().alias("conversation_id"))
        try:
            yield from frame.collect_batches(chunk_size=rows)
        except pl.exceptions.PolarsError as exc:
            raise self.read_error(exc) from None

    def all_batches(self, rows: int) -> Iterator[pl.DataFrame]:
        """Every column of the input (for --errors-output, which writes the table's own:
        ``schema``), ``rows`` at a time."""
        try:
            yield from self.scan().collect_batches(chunk_size=rows)
        except pl.exceptions.PolarsError as exc:
            raise self.read_error(exc) from None

    def check_readable(self) -> int:
        """Read every row of the mapped columns once, so that a file that breaks half way
        (bad encoding, a ragged row, a cut-off file) stops the job before anything is sent.
        Returns the number of rows (of the shard)."""
        wanted = list(self.id_columns)
        wanted += [self.metadata_column] if self.metadata_column else list(self.metadata_columns)
        try:
            counted = self.scan().select(
                pl.len().alias("rows"), *(pl.col(c).is_null().sum() for c in wanted)
            )
            return int(counted.collect().item(0, "rows"))
        except pl.exceptions.PolarsError as exc:
            raise self.read_error(exc) from None

    def stamp(self) -> tuple[tuple[str, int, int, int], ...]:
        """What says the local input files are untouched: each one's size, mtime and inode (a
        file copied over, edited or renamed into place changes one of them). A file gone is
        stamped -1."""
        stamps = []
        for file in self.files or (self.path,):
            if is_remote(file):
                continue
            try:
                stat = os.stat(file)
            except OSError:
                stamps.append((file, -1, -1, -1))
            else:
                stamps.append((file, stat.st_size, stat.st_mtime_ns, stat.st_ino))
        return tuple(stamps)

    def rows_per_batch(self, at_most: int, total_rows: int | None = None) -> int:
        """How many rows make a batch of about BATCH_BYTES (every column, as the errors file
        reads them), at most ``at_most``: the wider of the first rows' width in memory and, for
        local files whose rows are counted (``total_rows``), their size over their rows."""
        try:
            sample = self.scan().head(SAMPLE_ROWS).collect()
        except pl.exceptions.PolarsError as exc:
            raise self.read_error(exc) from None
        if sample.height == 0:
            return at_most
        width = sample.estimated_size() / sample.height
        files = self.files or (self.path,)
        if total_rows and not any(is_remote(file) for file in files):
            width = max(width, sum(os.path.getsize(file) for file in files) / total_rows)
        return max(MIN_BATCH_ROWS, min(at_most, int(BATCH_BYTES // max(width, 1.0))))

    def read_error(self, exc: pl.exceptions.PolarsError) -> InputError | DiskFull:
        """An InputError naming the file, the line and the problem where they can be found
        (a temporary file on a full disk is DiskFull, not the input's fault)."""
        if is_disk_full(exc):
            return DiskFull("a temporary file (TMPDIR)", first_line(exc))
        if self.format == "csv":
            for file in self.files or (self.path,):
                problem = csv_problem(file, self.separator, quoted=self.quoted)
                if problem is not None:
                    return InputError(file, problem)
        return InputError(self.path, f"cannot read: {shown_text(first_line(exc))}")


def _quoting(quoted: bool) -> Literal[0, 3]:
    """The csv module's quoting of a text input: RFC 4180 (--quoting csv) or none."""
    return csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE


def shown_text(text: str) -> str:
    """Text as a message shows it: a tab as ``\t`` (a raw one looks like spaces)."""
    return text.replace("\t", "\\t")


def _quoting_hint(separator: str, quoted: bool) -> str:
    """What to try when a quote breaks a tab-separated file: it may not be quoted at all."""
    return (
        "; if the file is not quoted (as warehouses write TSV), give --quoting none"
        if (quoted and separator == "\t")
        else ""
    )


def csv_problem(file: str, separator: str = ",", *, quoted: bool = True) -> str | None:
    """What makes a local CSV file unreadable, with its line: not UTF-8, a quote never closed,
    more fields than the header. Slow (Python, line by line): only called once polars failed."""
    if is_remote(file):
        return None
    with open(file, "rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = f"{exc.reason} at byte {exc.start}"
                return f"line {number}: not UTF-8 text ({where}); save it as UTF-8"
    csv.field_size_limit(sys.maxsize)
    hint = _quoting_hint(separator, quoted)
    quoting = _quoting(quoted)
    with open(file, encoding="utf-8-sig", newline="") as text:
        reader = csv.reader(text, strict=True, delimiter=separator, quoting=quoting)
        try:
            header = next(reader, [])
            for record in reader:
                if len(record) > len(header):
                    quote = '"' in separator.join(record)
                    return (
                        f"line {reader.line_num}: {len(record)} fields, but the header has "
                        f"{len(header)}" + (hint if quote else "")
                    )
        except csv.Error as exc:
            if "unexpected end of data" in str(exc):
                return (
                    f"line {reader.line_num}: a quoted cell is never closed (a stray '\"'?)" + hint
                )
            return f"line {reader.line_num}: {shown_text(str(exc))}{hint}"
    return None


def header_problem(file: str, separator: str = ",", *, quoted: bool = True) -> str | None:
    """What is wrong with a local CSV file's header, before polars reads it: an empty file,
    UTF-16 or binary data, a header that is not UTF-8, a column name given twice."""
    if is_remote(file):
        return None
    with open(file, "rb") as raw:
        head = raw.read(64 * 1024)
    if not head.strip():
        return "the file is empty: no header row"
    first = head.split(b"\n", 1)[0]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in first:
        return "not a UTF-8 text CSV (UTF-16, or binary data?); save it as UTF-8 CSV"
    try:
        first.decode("utf-8")
    except UnicodeDecodeError:
        if len(first) < len(head) or len(head) < 64 * 1024:
            return "line 1 (the header): not UTF-8 text; save it as UTF-8"
    line = first.decode("utf-8", "replace").lstrip("\ufeff").rstrip("\r")
    quoting = _quoting(quoted)
    header = next(csv.reader([line], delimiter=separator, quoting=quoting), [])
    seen = [name for i, name in enumerate(header) if name in header[:i]]
    if seen:
        return f"the header names column(s) {_shown(sorted(set(seen)))} more than once"
    return None


def _has_text(file: str) -> bool:
    """Whether a local file holds anything but white space (read until the first that is)."""
    with open(file, "rb") as raw:
        while chunk := raw.read(1 << 16):
            if chunk.strip():
                return True
    return False


def shard_of(conversation_id: pl.Expr, count: int) -> pl.Expr:
    """The shard (0 to count-1) of each ID: CRC-32 of the trimmed ID's UTF-8 bytes modulo
    ``count``. CRC-32 is fixed by standard, unlike Python's salted ``hash`` or polars' hash, so
    an ID lands in the same shard on every run, machine and version."""

    def crc(ids: pl.Series) -> pl.Series:
        values = [zlib.crc32(v.encode()) % count for v in ids.fill_null("").to_list()]
        return pl.Series(values, dtype=pl.UInt32)

    trimmed = conversation_id.cast(pl.String).str.strip_chars()
    return trimmed.map_batches(crc, return_dtype=pl.UInt32)


def expand(path: str) -> tuple[str, ...]:
    """The files a path names: a glob's matches in sorted (stable) order, or the path."""
    if is_remote(path) or not glob.has_magic(path):
        return (path,)
    return tuple(sorted(glob.glob(path)))


def _scan(
    files: tuple[str, ...],
    fmt: InputFormat,
    storage_options: dict[str, str] | None,
    separator: str = ",",
    schema: pl.Schema | None = None,
    *,
    quoted: bool = True,
    typed: bool = False,
) -> pl.LazyFrame:
    """Local globs are expanded by ``expand`` (sorted); a remote URL's glob by polars. JSON
    Lines are read with ``schema`` (every key as text) once ``open_input`` found the keys
    (``typed``: a local file's numbers and booleans marked, ``jsonlines.TYPED``)."""
    remote = any(is_remote(file) for file in files)
    source = files[0] if len(files) == 1 else list(files)
    if fmt == "parquet":
        return pl.scan_parquet(source, glob=remote, storage_options=storage_options)
    if fmt == "ndjson" and not remote:
        # Read once, every value as written (bulk_update.jsonlines).
        return jsonlines.scan_as_text(files, typed)
    if fmt == "ndjson":
        # A remote JSON Lines file's keys may first appear on any line: the whole file is read
        # once to find them (open_input), then every value is read as text (as polars prints
        # it: numbers in its own form), objects and arrays as polars types them (_schema).
        if schema is None:
            return pl.scan_ndjson(source, infer_schema_length=None, storage_options=storage_options)
        return pl.scan_ndjson(source, schema=schema, storage_options=storage_options)
    return pl.scan_csv(
        source,
        separator=separator,
        quote_char='"' if quoted else None,
        infer_schema=False,
        raise_if_empty=False,
        glob=remote,
        storage_options=storage_options,
    )


def open_input(
    path: str,
    *,
    id_column: str | tuple[str, ...],
    columns: tuple[str, ...] | None = None,
    metadata_column: str | None = None,
    shard: tuple[int, int] | None = None,
    storage_options: dict[str, str] | None = None,
    delimiter: str | None = None,
    quoting: str = "csv",
    resource: Resource = CONVERSATIONS,
    number_columns: tuple[str, ...] | None = None,
    boolean_columns: tuple[str, ...] | None = None,
) -> InputTable:
    """Open ``path`` (a file, or a glob of files read as one table) and check the mapping
    against its header (``id_column``: one, or the resource's ID columns; ``number_columns``
    and ``boolean_columns``: a typed resource's). Raises InputError."""
    files = expand(path)
    _check_there(path, files)
    fmt = input_format(path)
    separator = delimiter or default_separator(path)
    quoted = quoting != "none"
    _check_readable(files, fmt, separator, quoted)
    schema = _schema(path, files, fmt, storage_options, separator, quoted)
    names = list(schema.names())
    id_columns = tuple(
        _named(path, names, c) for c in ((id_column,) if isinstance(id_column, str) else id_column)
    )
    for column in id_columns:
        _check_id_column(path, schema, column, fmt, resource)
    if metadata_column is not None:
        metadata_column = _named(path, names, metadata_column)
    if columns is not None:
        columns = tuple(_named(path, names, column) for column in columns)
    metadata_columns = _metadata_columns(path, names, id_columns, columns, metadata_column)
    typed = {"--number-columns": number_columns or (), "--boolean-columns": boolean_columns or ()}
    for flag, named in typed.items():
        unknown = [c for c in named if _named(path, names, c) not in metadata_columns]
        if unknown:
            raise InputError(
                path, f"{flag} {unknown[0]!r} is not a metadata column (columns: {_shown(names)})"
            )
    table = InputTable(
        path=path,
        format=fmt,
        schema=schema,
        id_column=id_columns[0],
        resource=resource,
        more_id_columns=id_columns[1:],
        number_columns=tuple(_named(path, names, c) for c in typed["--number-columns"]),
        boolean_columns=tuple(_named(path, names, c) for c in typed["--boolean-columns"]),
        metadata_columns=metadata_columns,
        metadata_column=metadata_column,
        files=files,
        shard=shard,
        storage_options=storage_options,
        fed_back=fmt == "csv" and set(ERROR_COLUMNS) <= set(names),
        separator=separator,
        quoted=quoted,
    )
    _check_keys(table)
    if metadata_column is None:
        warning = _nested_warning(table)
        if warning is not None:
            table = dataclasses.replace(table, warnings=(warning,))
    return table


def _named(path: str, names: list[str], wanted: str) -> str:
    """The column a name given (``--id-column``, ``--columns``, ``--metadata-column``) means:
    the one of that name, else the one whose name is that once trimmed (a header ` tier `)."""
    if wanted in names:
        return wanted
    trimmed = [name for name in names if values.key_of(name) == values.key_of(wanted)]
    if len(trimmed) > 1:
        raise InputError(path, f"columns {_shown(trimmed)} are all {values.key_of(wanted)!r} once "
                         "trimmed: rename all but one")  # fmt: skip
    return trimmed[0] if trimmed else wanted


def _check_keys(table: InputTable) -> None:
    """Each metadata key is sent trimmed (``values.key_of``): two columns (or two fields of a
    struct --metadata-column) that are the same key once trimmed are refused, naming both."""
    if table.metadata_column is not None:
        dtype = table.schema[table.metadata_column]
        keys = [f.name for f in dtype.fields] if isinstance(dtype, pl.Struct) else []
        what, hint = f"the fields of {table.metadata_column!r}", "rename one"
    else:
        keys = list(table.metadata_columns)
        what, hint = "columns", "rename one, or leave one out with --columns"
    seen: dict[str, str] = {}
    for name in keys:
        key = values.key_of(name)
        if key in seen:
            raise InputError(
                table.path,
                f"{what} {seen[key]!r} and {name!r} are the same key {key!r} once surrounding "
                f"white space is trimmed: {hint}",
            )
        seen[key] = name


def _nested_warning(table: InputTable) -> str | None:
    """One line for the mapped columns whose type no metadata value can have (a list, a
    struct, binary; in JSON Lines, a key holding only objects and arrays): their rows with a
    value are ``invalid`` (``unsupported_type``), the other rows go on; the line names them
    and the ``--columns`` that leave them out."""
    unsendable = {
        name: values.kind(dtype)
        for name, dtype in table.schema.items()
        if name in table.metadata_columns and values.text(pl.col(name), dtype) is None
    }
    if table.format == "ndjson" and not is_remote(table.path):
        unsendable |= jsonlines.nested_only(table.files or (table.path,), table.metadata_columns)
    if not unsendable:
        return None
    rest = [values.key_of(name) for name in table.metadata_columns if name not in unsendable]
    columns = ",".join(rest) if rest and len(",".join(rest)) <= 200 else "NAME,..."
    if len(unsendable) == 1:
        ((name, kind),) = unsendable.items()
        return (
            f"column {name!r} is {kind}: its rows with a value are invalid (metadata values are "
            f"text); leave it out with --columns {columns}"
        )
    kinds = ", ".join(f"{name!r} ({kind})" for name, kind in unsendable.items())
    return (
        f"columns {kinds} cannot be text: their rows with a value are invalid (metadata values "
        f"are text); leave them out with --columns {columns}"
    )


def _check_there(path: str, files: tuple[str, ...]) -> None:
    """The input names files, and each local one is a file."""
    if not files:
        raise InputError(path, "no file matches this pattern")
    for file in files:
        if not is_remote(file) and Path(file).is_dir():
            raise InputError(file, "is a directory, not an input file")
        if not is_remote(file) and not Path(file).is_file():
            raise InputError(file, "no such file")


def _check_readable(
    files: tuple[str, ...], fmt: InputFormat, separator: str, quoted: bool = True
) -> None:
    """Each file looks like its format before polars reads it (its problem named, not
    polars'), and a glob's files have the same columns."""
    for file in files if fmt == "csv" else ():
        problem = header_problem(file, separator, quoted=quoted)
        if problem is not None:
            raise InputError(file, problem)
    for file in files if fmt == "ndjson" else ():
        if not is_remote(file) and not _has_text(file):
            raise InputError(file, "the file is empty: no JSON object")
    _check_same_columns(files, fmt, separator, quoted)


def _schema(
    path: str,
    files: tuple[str, ...],
    fmt: InputFormat,
    storage_options: dict[str, str] | None,
    separator: str,
    quoted: bool = True,
) -> pl.Schema:
    """The input's columns as polars reads them (JSON Lines: every one text but a remote file's
    objects and arrays)."""
    try:
        schema = _scan(files, fmt, storage_options, separator, quoted=quoted).collect_schema()
    except DiskFull:
        raise
    except (pl.exceptions.PolarsError, OSError) as exc:
        shown = "JSON LINES" if fmt == "ndjson" else fmt.upper()
        raise InputError(path, f"cannot read as {shown}: {first_line(exc)}") from None
    if fmt == "ndjson":
        # Every value as text, but a remote file's objects and arrays (local ones are marked
        # by jsonlines): nested values, never sent, as in every format.
        schema = pl.Schema(
            {
                name: dtype if isinstance(dtype, values.NESTED_KINDS) else pl.String()
                for name, dtype in schema.items()
                if not jsonlines.is_hidden(name)
            }
        )
    return schema


def _check_id_column(
    path: str,
    schema: pl.Schema,
    id_column: str,
    fmt: InputFormat,
    resource: Resource = CONVERSATIONS,
) -> None:
    names = list(schema.names())
    if id_column not in names:
        raise InputError(
            path,
            f"no ID column {id_column!r} (columns: {_shown(names)}){_hint(fmt, names, resource)}",
        )
    if not _has_text_form(schema[id_column]):
        prefixes = " or ".join(f"{p}..." for p in resource.prefixes)
        raise InputError(
            path,
            f"the ID column {id_column!r} holds {values.kind(schema[id_column])}, not text; a "
            f"{resource.noun} ID is text ({prefixes}): give --id-column the column that holds "
            "them",
        )


def _metadata_columns(
    path: str,
    names: list[str],
    id_columns: tuple[str, ...],
    columns: tuple[str, ...] | None,
    metadata_column: str | None,
) -> tuple[str, ...]:
    """The columns whose values become metadata: none with ``--metadata-column`` (one JSON
    object a row), ``--columns`` as given, else every column but the ID's (and, for a fed-back
    errors file, its own)."""
    if metadata_column is not None:
        if metadata_column not in names:
            raise InputError(
                path, f"no metadata column {metadata_column!r} (columns: {_shown(names)})"
            )
        return ()
    if columns is not None:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise InputError(
                path, f"unknown --columns {_shown(unknown)} (columns: {_shown(names)})"
            )
        named = [c for c in id_columns if c in columns]
        if named:
            raise InputError(path, f"--columns names the ID column {named[0]!r}")
        return columns
    skipped = set(id_columns)
    if set(ERROR_COLUMNS) <= set(names):
        # a fed-back --errors-output file: its status, error and row_number columns
        skipped |= {*ERROR_COLUMNS, ERRORS_ROW_NUMBER}
    metadata_columns = tuple(n for n in names if n not in skipped)
    if not metadata_columns:
        raise InputError(path, f"no metadata columns besides {_shown(id_columns)}")
    return metadata_columns


def _columns(file: str, fmt: InputFormat, separator: str, quoted: bool = True) -> list[str] | None:
    """A local file's column names, from its header or schema (None: not known cheaply)."""
    if is_remote(file):
        return None
    if fmt == "parquet":
        try:
            return list(pl.read_parquet_schema(file))
        except (pl.exceptions.PolarsError, OSError):
            return None  # polars' own read says what is wrong
    if fmt == "csv":
        quoting = _quoting(quoted)
        with open(file, encoding="utf-8-sig", errors="replace", newline="") as text:
            return next(csv.reader(text, delimiter=separator, quoting=quoting), [])
    return None  # JSON Lines: the files' keys are joined


def _check_same_columns(
    files: tuple[str, ...], fmt: InputFormat, separator: str, quoted: bool = True
) -> None:
    """The files of a glob are read as one table: each must have the first one's columns (the
    file that differs is named, not polars' "schema lengths differ")."""
    if len(files) < 2:
        return
    first = _columns(files[0], fmt, separator, quoted)
    if first is None:
        return
    for file in files[1:]:
        columns = _columns(file, fmt, separator, quoted)
        if columns is not None and columns != first:
            raise InputError(
                file,
                f"its columns ({_shown(columns)}) differ from those of {files[0]} "
                f"({_shown(first)}): every file of a glob must have the same columns, in the "
                "same order",
            )


def _hint(fmt: InputFormat, names: list[str], resource: Resource = CONVERSATIONS) -> str:
    """What to try when the ID column is not found: another delimiter if the header looks
    separated by one, else --id-column."""
    if fmt == "csv" and len(names) == 1:
        for mark, shown in ((";", "';'"), ("|", "'|'"), ("\t", "'\\t'")):
            if mark in names[0]:
                return f": the header looks {shown}-separated: give --delimiter {shown}"
    if resource.paired:
        return f": give --id-column the columns that hold the {resource.noun}s' IDs, VS,FILE"
    return f": give --id-column the column that holds the {resource.noun} IDs"


def _has_text_form(dtype: pl.DataType) -> bool:
    """A value that has a text form an ID can be compared with (a number or a date is only an
    invalid ID; a list, a struct, a duration or bytes cannot be one at all)."""
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum | pl.Null | pl.Boolean):
        return True
    return bool(dtype.is_numeric() or dtype.is_temporal()) and not isinstance(dtype, pl.Duration)


def _shown(names: list[str] | tuple[str, ...]) -> str:
    listed = ", ".join(repr(n) for n in names[:20])
    return listed + (f", … ({len(names)} in all)" if len(names) > 20 else "")


def file_fingerprint(path: str) -> dict[str, Any]:
    """What says a file is the same: its size and a hash of its whole content (``blake2b``), so
    that a copy under another path, or on another machine, is the same input and any edit is
    not. Its path is kept beside them (what the run was given)."""
    if is_remote(path):
        return {"path": path}
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        content = hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=32))
    return {
        "path": str(Path(path).resolve()),
        "size": size,
        "blake2b": content.hexdigest(),
    }
