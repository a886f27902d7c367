"""JSON Lines read as text, every value as it is written in the file.

polars' JSON reader parses a number and prints it again: ``1.0`` becomes ``1``, ``1.50``
``1.5``, ``1e5`` ``100000``, and its errors name no line. A metadata value is text, and the
text the user wrote is the one to send; so a local JSON Lines file is read here, once, line by
line: each top-level value is kept as its text (a string decoded; a number, an object or an
array exactly as written; ``true``/``false``; ``null`` no value), and a line that is not a JSON
object stops the job naming its line and column. The rows go to Arrow IPC files of text
columns in a temporary directory (removed at exit), which ``read`` scans as it scans any input.

Two kinds of column come beside the file's own, which ``read`` keeps out of the table's columns:
``LINE``, each row's line in its file (a blank line is no row: a row's ``row_number`` counts
rows, and a message that names a row names that number and its line, ``row 4 (line 5)``, so
that the results and the messages agree), and, for a key
that holds an object or an array on some line, ``NESTED + key``: what it holds there
(``a JSON object``, ``a JSON array``), for the plan to refuse (nested values are never sent).
"""

from __future__ import annotations

import atexit
import json
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import polars as pl

from bulk_update.exceptions import DiskFull, InputError, first_line, is_disk_full

__all__ = [
    "LINE",
    "NESTED",
    "TYPED",
    "as_text_parts",
    "fields",
    "is_hidden",
    "nested_only",
    "scan_as_text",
]

LINE = "__bulk_update_line"
NESTED = "__bulk_update_nested:"
# Read for a resource whose values keep their JSON types (``scan_as_text(typed=True)``): what a
# key's value is where it is a JSON number or boolean (``number``, ``boolean``); null where it
# is a string (or null, or nested).
TYPED = "__bulk_update_typed:"
_KIND: dict[type, str] = {dict: "a JSON object", list: "a JSON array"}


def is_hidden(name: str) -> bool:
    """A column the reader adds beside the file's own (``LINE``, ``NESTED + key``,
    ``TYPED + key``)."""
    return name == LINE or name.startswith((NESTED, TYPED))


_ROWS_PER_PART = 50_000
_SPACE = re.compile(r"[ \t\n\r]*")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Numbers as their text: the hooks get each number as it is written (never converted, so a
# number of any size is no error: an integer of 5,000 digits is a value too long for its row,
# not a file Python cannot parse).
_WRITTEN = json.JSONDecoder(parse_float=str, parse_int=str, parse_constant=_no_constant)


class _Number(str):
    """A JSON number's text, as written, told apart from a string's (a typed read)."""

    __slots__ = ()


_TYPED = json.JSONDecoder(parse_float=_Number, parse_int=_Number, parse_constant=_no_constant)


def _type_of(value: object) -> str | None:
    """``number`` or ``boolean`` for a typed read's value that is one; None for the rest."""
    if isinstance(value, bool):
        return "boolean"
    return "number" if type(value) is _Number else None


_scanstring: Any = json.decoder.scanstring  # type: ignore[attr-defined]


class _RowError(InputError):
    """A row (1-based over the file, or over a glob's files once ``scan_as_text`` counted the
    files before) that cannot be read: named by its ``row_number`` and its line."""

    def __init__(self, file: str, row: int, line: int, problem: str) -> None:
        super().__init__(file, f"row {row} (line {line}){problem}")
        self.row, self.line, self.detail = row, line, problem

    def after(self, rows: int) -> _RowError:
        """The same, counted after ``rows`` rows of the files before."""
        return _RowError(self.path, self.row + rows, self.line, self.detail)


class _LineError(ValueError):
    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.column = column


def fields(line: str) -> dict[str, str | None]:
    """One line's object: each key and its value's text (None for null). Raises _LineError
    naming what is wrong and where (0-based position)."""
    return _fields(line)[0]


def _fields(
    line: str, typed: dict[str, str] | None = None
) -> tuple[dict[str, str | None], dict[str, str]]:
    """``fields``, and the keys whose value is an object or an array, with what it is.
    ``typed``, if given, receives the keys whose value is a number or a boolean (``TYPED``).

    The C parser does most lines: its number hooks receive each number's text as written. A
    line with an object or an array as a value (kept as written too), or an error, takes the
    slower walk over the line that knows where each value starts and ends."""
    decoder = _WRITTEN if typed is None else _TYPED
    try:
        parsed = decoder.decode(line)
    except ValueError:
        return _walk(line, typed)
    if not isinstance(parsed, dict):
        return _walk(line, typed)
    found: dict[str, str | None] = {}
    for key, value in parsed.items():
        if isinstance(value, dict | list):
            return _walk(line, typed)
        found[key] = value if value is None or isinstance(value, str) else _BOOLEAN[value]
        if typed is not None:
            _mark(typed, key, value)
    return found, {}


def _mark(typed: dict[str, str], key: str, value: object) -> None:
    kind = _type_of(value)
    if kind is None:
        typed.pop(key, None)  # a key given twice: its last value counts
    else:
        typed[key] = kind


_BOOLEAN = {True: "true", False: "false"}


def _walk(
    line: str, typed: dict[str, str] | None = None
) -> tuple[dict[str, str | None], dict[str, str]]:
    decoder = _WRITTEN if typed is None else _TYPED
    at = _SPACE.match(line, 0).end()  # type: ignore[union-attr]
    if line[at : at + 1] != "{":
        raise _LineError("not a JSON object", at)
    at = _SPACE.match(line, at + 1).end()  # type: ignore[union-attr]
    found: dict[str, str | None] = {}
    nested: dict[str, str] = {}
    if line[at : at + 1] == "}":
        at += 1
    else:
        while True:
            if line[at : at + 1] != '"':
                raise _LineError("expected a key in double quotes", at)
            try:
                key, at = _scanstring(line, at + 1)
            except json.JSONDecodeError as exc:
                raise _LineError(exc.msg, exc.pos) from None
            at = _SPACE.match(line, at).end()  # type: ignore[union-attr]
            if line[at : at + 1] != ":":
                raise _LineError("expected ':' after a key", at)
            at = _SPACE.match(line, at + 1).end()  # type: ignore[union-attr]
            try:
                value, end = decoder.raw_decode(line, at)
            except json.JSONDecodeError as exc:
                raise _LineError(exc.msg, exc.pos) from None
            except ValueError as exc:
                raise _LineError(str(exc), at) from None
            found[key] = _text(value, line[at:end])
            if typed is not None:
                _mark(typed, key, value)
            if type(value) in _KIND:
                nested[key] = _KIND[type(value)]
            else:
                nested.pop(key, None)
            at = _SPACE.match(line, end).end()  # type: ignore[union-attr]
            mark = line[at : at + 1]
            if mark == ",":
                at = _SPACE.match(line, at + 1).end()  # type: ignore[union-attr]
                continue
            if mark == "}":
                at += 1
                break
            raise _LineError("expected ',' or '}'", at)
    if _SPACE.match(line, at).end() != len(line):  # type: ignore[union-attr]
        raise _LineError("more after the object (one object per line)", at)
    return found, nested


def _text(value: object, written: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):  # a string decoded; a number's text, as written (the hooks)
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return written  # a number, an object or an array: as written


def as_text_parts(file: str, directory: Path, typed: bool = False) -> list[Path]:
    """Read a local JSON Lines file into IPC files of text columns in ``directory``; the keys
    of each part in order of first appearance (``pl.concat(how="diagonal")`` joins them).
    ``typed``: with the ``TYPED`` marks of numbers and booleans."""
    parts: list[Path] = []

    def write(frame: pl.DataFrame) -> None:
        part = directory / f"part-{len(parts):05d}.arrow"
        try:
            frame.write_ipc(part)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(str(part), first_line(exc)) from None
            raise
        parts.append(part)

    lines: list[tuple[int, str]] = []
    rows = 0  # the rows before ``lines``
    with open(file, "rb") as raw:
        for number, data in enumerate(raw, start=1):
            try:
                line = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                row = rows + len(lines) + 1
                where = f"{exc.reason} at byte {exc.start}"
                raise _RowError(file, row, number, f": not UTF-8 text ({where})") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            if line.strip():  # a blank line is no row
                lines.append((number, line))
            if len(lines) >= _ROWS_PER_PART:
                write(_frame(file, lines, rows, typed))
                rows += len(lines)
                lines = []
    if lines:
        write(_frame(file, lines, rows, typed))
    if not parts:
        raise InputError(file, "the file is empty: no JSON object")
    return parts


def _row_count(parts: list[Path]) -> int:
    """The rows of a file's parts (what a glob's next file's rows are counted after)."""
    return sum(int(pl.scan_ipc(part).select(pl.len()).collect().item()) for part in parts)


def _frame(
    file: str, lines: list[tuple[int, str]], before: int = 0, typed: bool = False
) -> pl.DataFrame:
    """A chunk of lines as a frame of text columns. Fast path: the chunk parsed as one JSON
    array by the C parser (numbers as written, through its hooks), when every line is one
    object of plain values; else (and for a ``typed`` read, whose marks need each value's
    type) line by line (``fields``), which names a bad row (``before``: the file's rows before
    the chunk) and its line."""
    numbers = pl.Series(LINE, [number for number, _ in lines], dtype=pl.UInt32)
    try:
        parsed = [] if typed else _WRITTEN.decode("[" + ",".join(line for _, line in lines) + "]")
        if not typed and len(parsed) == len(lines) and all(type(row) is dict for row in parsed):
            frame = pl.from_dicts(parsed, infer_schema_length=None)
            if all(_plain(dtype) for dtype in frame.dtypes):
                return frame.cast(dict.fromkeys(frame.columns, pl.String)).insert_column(0, numbers)
    except (ValueError, TypeError, OverflowError, pl.exceptions.PolarsError):
        pass  # e.g. TypeError: a column of an array of objects then numbers ([{"d":1},2])
    rows = []
    for row, (number, line) in enumerate(lines, start=before + 1):
        marks: dict[str, str] | None = {} if typed else None
        try:
            found, nested = _fields(line, marks)
            _check_text(found)
        except _LineError as exc:
            problem = f", column {exc.column + 1}: not JSON Lines ({exc})"
            raise _RowError(file, row, number, problem) from None
        rows.append(
            found
            | {NESTED + key: kind for key, kind in nested.items()}
            | {TYPED + key: kind for key, kind in (marks or {}).items()}
        )
    frame = pl.from_dicts(rows, infer_schema_length=None)
    return frame.cast(dict.fromkeys(frame.columns, pl.String)).insert_column(0, numbers)


def _check_text(found: dict[str, str | None]) -> None:
    """Every key and value is text UTF-8 can hold: a ``\\ud800`` escape alone (half of a
    surrogate pair) is valid JSON but no character."""
    for text in (*found, *found.values()):
        if text is not None and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                bad = f"\\u{ord(text[exc.start]):04x}"
                raise _LineError(f"{bad} is half of a surrogate pair, not a character", 0) from None


def _plain(dtype: pl.DataType) -> bool:
    """A column of text, booleans or nulls only (numbers came as text): its values' text is
    what ``fields`` would give."""
    return isinstance(dtype, pl.String | pl.Boolean | pl.Null)


class _Cache:
    """Each local JSON Lines file is read once per process (per its size and mtime)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: dict[tuple[str, int, int, bool], tuple[list[Path], int]] = {}
        self._root: Path | None = None

    def read(self, file: str, typed: bool = False) -> tuple[list[Path], int]:
        """The file's parts, and how many rows they hold (``typed``: with ``TYPED`` marks)."""
        stat = Path(file).stat()
        key = (str(Path(file).resolve()), stat.st_size, stat.st_mtime_ns, typed)
        with self._lock:
            if key not in self._read:
                if self._root is None:
                    self._root = Path(tempfile.mkdtemp(prefix="bulk-update-jsonl-"))
                    atexit.register(shutil.rmtree, self._root, ignore_errors=True)
                directory = Path(tempfile.mkdtemp(dir=self._root))
                parts = as_text_parts(file, directory, typed)
                self._read[key] = (parts, _row_count(parts))
            return self._read[key]


_CACHE = _Cache()


def scan_as_text(files: tuple[str, ...], typed: bool = False) -> pl.LazyFrame:
    """Local JSON Lines files as one lazy table of text columns, in file order (``LINE``: each
    row's line in its own file; ``typed``: ``TYPED`` marks of numbers and booleans). A row that
    cannot be read is named by its number over the files (a glob's second file's first row
    follows the first file's last)."""
    scans = []
    before = 0
    for file in files:
        try:
            parts, rows = _CACHE.read(file, typed)
        except _RowError as exc:
            raise exc.after(before) from None
        scans += [pl.scan_ipc(part) for part in parts]
        before += rows
    return pl.concat(scans, how="diagonal")


def nested_only(files: tuple[str, ...], columns: tuple[str, ...]) -> dict[str, str]:
    """The ``columns`` of local JSON Lines files that hold an object or an array wherever they
    hold a value, with what the first one holds."""
    scan = scan_as_text(files)
    names = set(scan.collect_schema().names())
    marked = [column for column in columns if NESTED + column in names]
    if not marked:
        return {}
    counts = scan.select(
        *(
            (pl.col(c).is_not_null().sum() == pl.col(NESTED + c).is_not_null().sum()).alias(c)
            for c in marked
        ),
        *(pl.col(NESTED + c).drop_nulls().first().alias(NESTED + c) for c in marked),
    ).collect()
    return {c: str(counts.item(0, NESTED + c)) for c in marked if counts.item(0, c)}
