"""Plan: pure validation. One input row becomes one update request or one ``invalid`` outcome.

Nothing here logs, and all but one function is pure: ``find_duplicates`` reads the whole input
once before the first batch (the IDs hashed, through a temporary Arrow file in $TMPDIR) so that
a duplicate is known wherever it is. The rules (the README's "Input rules"):
- the ID is trimmed and must be ``conv_`` + ``[A-Za-z0-9_-]``, 128 characters at most, so it can
  never change a URL's path or query;
- a key is sent without its surrounding white space (``values.key_of``);
- an empty cell, a cell of white space only, or a null means no value for that key; a row with
  no pairs left is invalid; any other value is sent exactly as written;
- 1 to 16 pairs, keys 1-64 characters, values at most 512 characters (not bytes);
- non-string values become text by one rule, ``values.text`` (integers in decimal, booleans
  ``true``/``false``, floats in shortest round-trip form, dates, times, datetimes and durations
  in ISO 8601), in a column or in a struct ``--metadata-column`` alike; nested values (lists,
  structs, a JSON object or array in JSON Lines or in a ``--metadata-column`` cell) and
  binary are invalid;
- a later row with an ID seen before is invalid ("duplicate of row N").
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl

from bulk_update import jsonlines, values
from bulk_update._constants import (
    MAX_ID_CHARS,
    MAX_KEY_CHARS,
    MAX_PAIRS,
    MAX_VALUE_CHARS,
)
from bulk_update.exceptions import DiskFull, first_line, is_disk_full
from bulk_update.outcome import ERROR_COLUMNS, ROW_NUMBER, RowOutcome, Status
from bulk_update.read import InputTable
from bulk_update.resources import CONVERSATIONS, Resource

__all__ = [
    "DUPLICATE_OF",
    "HINT_COLUMN",
    "HINT_OBJECT",
    "PLAN_COLUMNS",
    "PlannedUpdate",
    "clip",
    "find_duplicates",
    "invalid_outcomes",
    "mark_unchanged",
    "parse_metadata_cell",
    "plan_frame",
    "plan_lazy",
    "plan_row",
    "to_send_count",
    "to_send_expr",
    "unchanged_expr",
    "unchanged_rows",
    "updates",
    "valid_rows",
]

CLIP_CHARS = 40

# Messages, shared by the row path (plan_row) and the vectorised path (plan_frame): "{}" is
# filled by str.format in one and by polars.format in the other.
# An ID's: "%s" is the resource's ID column (conversation_id), "%p" its prefix (conv_).
MSG_ID_EMPTY = "%s is empty"
MSG_ID_TOO_LONG = "%s is {} characters; at most " + str(MAX_ID_CHARS)
MSG_ID_PATTERN = "%s '{}' is not %p followed by letters, digits, '_' or '-'"
MSG_DUPLICATE = "duplicate of row {}"
MSG_KEY_EMPTY = "metadata key is empty"
MSG_KEY_TOO_LONG = "metadata key '{}' is {} characters; at most " + str(MAX_KEY_CHARS)
MSG_VALUE_TOO_LONG = "value for '{}' is {} characters; at most " + str(MAX_VALUE_CHARS)
MSG_NO_METADATA = "no metadata: every metadata value is empty"
MSG_TOO_MANY_PAIRS = "{} metadata pairs; at most " + str(MAX_PAIRS)
MSG_UNSUPPORTED_TYPE = "value for '{}' is {}; only text, numbers, booleans and dates can be sent"
# What to do about it: a column can be left out; a value of a --metadata-column object given as
# a string.
HINT_COLUMN = " (leave the column out: --columns)"
HINT_OBJECT = " (give it as a string to send its text)"
MSG_SAME_KEY = "metadata keys '{}' and '{}' are the same key once trimmed"
MSG_NOT_A_NUMBER = "value for '{}' is {}, not a number"
# Typed values (a resource whose values are JSON strings, numbers and booleans).
MAX_EXACT_INTEGER = 2**53
MSG_PAST_EXACT = (
    "value for '{}' is {}: past 2**53, a number JSON does not hold exactly (send it as text)"
)
MSG_NOT_A_BOOLEAN = "value for '{}' is '{}', not true or false (--boolean-columns)"
MSG_NOT_NUMBER_TEXT = "value for '{}' is '{}', not a number (--number-columns)"
MSG_NOT_FINITE = "value for '{}' is {}, past what a JSON number holds (a double)"


def id_message(message: str, field: str, prefix: str) -> str:
    """One of the MSG_ID_ messages for the ID column ``field`` (whose IDs start ``prefix``)."""
    return message.replace("%s", field).replace("%p", prefix)


@dataclass(frozen=True, slots=True)
class PlannedUpdate:
    """A valid row: the request to send. ``sent_metadata`` is the JSON object sent, verbatim."""

    row_number: int
    conversation_id: str
    sent_metadata: str
    # A revert's guard: what the reverted run set for these keys (JSON object); a key whose
    # server value is neither this nor the value to put back has drifted.
    expect: str | None = None
    # With --backup: the before-image an earlier invocation kept before it sent this row.
    previous: str | None = None
    # A revert's row that is the whole before-image (the server had dropped keys of it): a key
    # the server's answer lacks is one the reverted run added, not a loss.
    whole: bool = False

    @property
    def metadata(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.sent_metadata)
        return parsed

    def body(self, resource: Resource = CONVERSATIONS) -> bytes:
        return resource.body_of(self.sent_metadata)


Planned = PlannedUpdate | RowOutcome


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode_metadata(metadata: Mapping[str, object]) -> str:
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _trimmed(raw: object) -> str:
    return "" if raw is None else str(raw).strip()


def shown_key(raw_id: object, resource: Resource = CONVERSATIONS) -> str:
    """A row's key as given (trimmed; a pair's IDs as a tuple), checked or not."""
    if isinstance(raw_id, tuple):
        return resource.key_of(tuple(_trimmed(part) for part in raw_id))
    return raw_id.strip() if isinstance(raw_id, str) else _trimmed(raw_id)


def check_id(raw: object, resource: Resource = CONVERSATIONS) -> str:
    """The row's trimmed key (its ID; a pair's, given as a tuple, joined), or raise
    _Invalid naming the ID column that is wrong."""
    parts = raw if isinstance(raw, tuple) else (raw,)
    ids = []
    for part, field, prefix, pattern in zip(
        parts, resource.id_columns, resource.prefixes, resource.id_patterns, strict=True
    ):
        checked = _trimmed(part)
        if not checked:
            raise _Invalid("invalid_id", id_message(MSG_ID_EMPTY, field, prefix))
        if len(checked) > MAX_ID_CHARS:
            message = id_message(MSG_ID_TOO_LONG, field, prefix)
            raise _Invalid("invalid_id", message.format(len(checked)))
        if not pattern.fullmatch(checked):
            message = id_message(MSG_ID_PATTERN, field, prefix)
            raise _Invalid("invalid_id", message.format(clip(checked)))
        ids.append(checked)
    return resource.key_of(tuple(ids))


def to_text(key: str, value: object, hint: str = "") -> str | None:
    """A cell as the text to send, None for no value (null, empty, white space only); raise
    _Invalid for what cannot be text (its message ending with ``hint``)."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone "\ud800" escape in a JSON cell
                bad = f"\\u{ord(value[exc.start]):04x}"
                raise _Invalid(
                    "unsupported_value",
                    f"value for '{clip(key)}' holds {bad}, half of a surrogate pair: not a "
                    "character",
                ) from None
        return None if values.is_blank(value) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            shown = "NaN" if math.isnan(value) else str(value)  # as polars prints it
            raise _Invalid("unsupported_value", MSG_NOT_A_NUMBER.format(key, shown))
        return repr(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        kind = "a list"
    elif isinstance(value, dict):
        kind = "a struct"
    elif isinstance(value, bytes | bytearray):
        kind = "binary"
    elif isinstance(value, dt.timedelta):
        kind = "a duration"
    else:
        kind = type(value).__name__
    raise _Invalid("unsupported_type", MSG_UNSUPPORTED_TYPE.format(key, kind) + hint)


def to_typed(key: str, value: object, hint: str = "") -> object:
    """A typed resource's value: a boolean, a whole number (at most 2**53 either way) or a
    finite number as itself, anything else as ``to_text``'s text (None: no value)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > MAX_EXACT_INTEGER:
            raise _Invalid("unsupported_value", MSG_PAST_EXACT.format(key, value))
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return to_text(key, value, hint)


def check_pairs(
    pairs: Iterable[tuple[str, object]], hint: str = HINT_OBJECT, *, typed: bool = False
) -> dict[str, object]:
    """The metadata to send, or raise _Invalid naming the key and the limit (``hint``: how to
    avoid a value that cannot be sent; ``typed``: numbers and booleans kept, ``to_typed``)."""
    metadata: dict[str, object] = {}
    named: dict[str, str] = {}  # each key sent, as written
    for written, raw in pairs:
        key = values.key_of(written)
        value = to_typed(key, raw, hint) if typed else to_text(key, raw, hint)
        if value is None:
            continue
        if key in named:
            raise _Invalid("invalid_key", MSG_SAME_KEY.format(clip(named[key]), clip(written)))
        named[key] = written
        if not key.isascii():
            to_text("a key", key)  # raises _Invalid for a lone surrogate, as for a value
        if not key:
            raise _Invalid("invalid_key", MSG_KEY_EMPTY)
        if len(key) > MAX_KEY_CHARS:
            raise _Invalid("key_too_long", MSG_KEY_TOO_LONG.format(clip(key), len(key)))
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise _Invalid("value_too_long", MSG_VALUE_TOO_LONG.format(key, len(value)))
        metadata[key] = value
    if not metadata:
        raise _Invalid("no_metadata", MSG_NO_METADATA)
    if len(metadata) > MAX_PAIRS:
        raise _Invalid("too_many_pairs", MSG_TOO_MANY_PAIRS.format(len(metadata)))
    return metadata


def parse_metadata_cell(
    column: str, cell: object, *, typed: bool = False
) -> list[tuple[str, object]]:
    """The pairs of a ``--metadata-column`` cell: a JSON object (text) or a struct
    (``typed``: a JSON number or boolean is kept as one)."""
    if cell is None or cell == "":
        return []
    if isinstance(cell, dict):
        return list(cell.items())
    if not isinstance(cell, str):
        raise _Invalid("invalid_metadata_json", f"{column} is not a JSON object")
    try:
        # A number is sent as it is written in the cell (1.50 stays 1.50), as from JSON Lines.
        parsed = json.loads(cell) if typed else json.loads(cell, parse_float=str, parse_int=str)
    except ValueError as exc:
        raise _Invalid("invalid_metadata_json", f"{column} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise _Invalid("invalid_metadata_json", f"{column} is JSON but not an object")
    return list(parsed.items())


def plan_row(
    row_number: int,
    raw_id: object,
    pairs: Iterable[tuple[str, object]] | Callable[[], Iterable[tuple[str, object]]],
    duplicate_of: int | None = None,
    kept: tuple[str, str] | None = None,
    hint: str = HINT_OBJECT,
    resource: Resource = CONVERSATIONS,
) -> Planned:
    """One row to a PlannedUpdate, or to an ``invalid`` RowOutcome with a precise message.

    Checks run in a fixed order: the ID, then duplication, then a fed-back row's kept error
    (``kept``: its code and message, see ``find_duplicates``), then the pairs (which may be
    given as a callable that parses them, so a bad ID is reported before a bad JSON cell).
    """
    shown_id = shown_key(raw_id, resource)
    try:
        conversation_id = check_id(raw_id, resource)
        if duplicate_of is not None:
            raise _Invalid("duplicate_id", MSG_DUPLICATE.format(duplicate_of))
        if kept is not None:
            raise _Invalid(*kept)
        given = pairs() if callable(pairs) else pairs
        metadata = check_pairs(given, hint, typed=resource.typed)
    except _Invalid as invalid:
        return RowOutcome(
            row_number=row_number,
            conversation_id=shown_id,
            status=Status.INVALID,
            error_type="invalid_input",
            error_code=invalid.code,
            error_message=invalid.message,
        )
    return PlannedUpdate(row_number, conversation_id, encode_metadata(metadata))


# The columns of a plan frame (one row per input row).
PLAN_COLUMNS = (ROW_NUMBER, "conversation_id", "error_code", "error_message", "sent_metadata")
# Added by mark_unchanged: a valid row that is the same as the job last set.
UNCHANGED = "unchanged"
SENT_COLUMNS = (ROW_NUMBER, "conversation_id", "sent_metadata")
DUPLICATE_OF = "__bulk_update_duplicate_of"
# A fed-back row still marked with one of KEPT_CODES: its code and message.
KEPT_CODE = "__bulk_update_kept_code"
KEPT_MESSAGE = "__bulk_update_kept_message"
# The codes of a value a text file cannot tell from text: a Parquet list, struct, binary, NaN or
# infinity is written to a CSV or JSON Lines errors file as text (JSON, hex, ``NaN``, null),
# which read back would be sent (or dropped) where the input's value was ``invalid``.
KEPT_CODES = ("unsupported_type", "unsupported_value")
KEPT_SCHEMA = pl.Schema(
    {ROW_NUMBER: pl.UInt32(), DUPLICATE_OF: pl.UInt32(), KEPT_CODE: pl.String(),
     KEPT_MESSAGE: pl.String()}
)  # fmt: skip


def find_duplicates(table: InputTable, batch_rows: int = 1_000_000) -> pl.DataFrame:
    """The rows kept out whatever their values (``KEPT_SCHEMA``): ``ROW_NUMBER`` of every later
    occurrence of an ID and ``DUPLICATE_OF`` the row of its first occurrence; in a fed-back
    errors file, also the rows still marked with one of ``KEPT_CODES`` (``_kept``).

    Memory-light: the first pass keeps one 64-bit hash per row in a numpy array (80 MB for ten
    million rows), sorted in place to find the hashes seen more than once; only rows with such a
    hash are read again and compared exactly.
    """
    keyed = (
        table.scan()
        .select(pl.col(ROW_NUMBER), table.key().alias("id"))
        .filter(pl.col("id").is_not_null() & (pl.col("id") != ""))
    )
    schema = KEPT_SCHEMA
    # The hashes go through a temporary Arrow file: polars streams them out without holding the
    # input, and numpy reads them back in one array (the smallest peak measured; see
    # BENCHMARKS.md).
    with tempfile.TemporaryDirectory(prefix="bulk-update-") as directory:
        spill = Path(directory) / "hashes.arrow"
        try:
            keyed.select(pl.col("id").hash(seed=0).alias("h")).sink_ipc(spill)
        except (pl.exceptions.PolarsError, OSError) as exc:
            if is_disk_full(exc):  # $TMPDIR is full: the input is not at fault
                raise DiskFull(str(spill), first_line(exc)) from None
            raise
        hashes = pl.read_ipc(spill).get_column("h").to_numpy(writable=True)
    kept = _kept(table, schema)
    if hashes.size == 0:
        return kept
    hashes.sort()
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if repeated.size == 0:
        return kept
    candidates = (
        keyed.filter(pl.col("id").hash(seed=0).is_in(pl.Series(repeated).implode()))
        .with_columns(pl.col(ROW_NUMBER).min().over("id").alias(DUPLICATE_OF))
        .filter(pl.col(ROW_NUMBER) != pl.col(DUPLICATE_OF))
        .select(ROW_NUMBER, DUPLICATE_OF)
        .collect()
    )
    found = pl.concat([kept, candidates], how="diagonal_relaxed").cast(schema)
    return found.unique(ROW_NUMBER, keep="first").sort(ROW_NUMBER)


def _kept(table: InputTable, schema: pl.Schema) -> pl.DataFrame:
    """In a fed-back --errors-output file, the rows still marked ``duplicate_id`` or one of
    ``KEPT_CODES``: they stay out until the user clears their ``error_code``. A duplicate's
    first occurrence was in the input the file came from (and was sent from there);
    ``DUPLICATE_OF`` is the row its message names (``row_number`` keeps the first input's
    numbering), 0 if it was edited away. A value of a type the file cannot keep stays
    ``invalid`` as it was, with its message: so a row reaches the API the same way fed back as
    from its input."""
    if not set(ERROR_COLUMNS) <= set(table.schema.names()):
        return pl.DataFrame(schema=schema)
    code = pl.col("error_code").cast(pl.String).str.strip_chars()
    message = pl.col("error_message").cast(pl.String)
    first = message.str.extract(r"duplicate of row (\d+)", 1)
    duplicate = code == "duplicate_id"
    kept = (
        table.scan()
        .filter(duplicate | code.is_in(KEPT_CODES))
        .select(
            ROW_NUMBER,
            pl.when(duplicate).then(first.cast(pl.UInt32, strict=False).fill_null(0))
            .alias(DUPLICATE_OF),
            pl.when(~duplicate).then(code).alias(KEPT_CODE),
            pl.when(~duplicate).then(message.fill_null(code)).alias(KEPT_MESSAGE),
        )
        .collect()
    )  # fmt: skip
    return kept.cast(schema)


def _clip_expr(text: pl.Expr) -> pl.Expr:
    return (
        pl.when(text.str.len_chars() > CLIP_CHARS)
        .then(text.str.slice(0, CLIP_CHARS) + "…")
        .otherwise(text)
    )


# A check of the plan: (condition, error_code, error_message): the row is invalid where the
# condition holds; the first check that holds gives its code and message.
Check = tuple[pl.Expr, str | pl.Expr, pl.Expr]


def _as_text(
    key: str, column: pl.Expr, dtype: Any, hint: str, nested: pl.Expr | None = None
) -> tuple[pl.Expr, list[Check]]:
    """A cell as the text to send (null for "no value": null, empty or white space only), by
    the one rule (``values.text``), and the checks its type needs (``nested``: what a JSON
    Lines value holds, when it is an object or an array). ``hint``: how to avoid the value."""
    checks: list[Check] = []
    text = values.text(column, dtype)
    if text is None:
        message = MSG_UNSUPPORTED_TYPE.format(key, values.kind(dtype)) + hint
        checks.append((column.is_not_null(), "unsupported_type", pl.lit(message)))
        text = pl.lit(None, dtype=pl.String)
    elif dtype.is_float():
        bad = column.is_nan() | column.is_infinite()
        not_a_number = pl.format(MSG_NOT_A_NUMBER, pl.lit(key), column.cast(pl.String))
        checks.append((bad, "unsupported_value", not_a_number))
    if nested is not None:
        what = pl.format(MSG_UNSUPPORTED_TYPE + hint, pl.lit(key), nested)
        checks.append((nested.is_not_null(), "unsupported_type", what))
    return pl.when(~values.blank(text)).then(text), checks


def _first_failure(checks: list[Check]) -> tuple[pl.Expr, pl.Expr]:
    """(error_code, error_message) of the first check that holds, in order; null if none."""
    code: pl.Expr | None = None
    message: pl.Expr | None = None
    for condition, error_code, error_message in reversed(checks):
        later_code = pl.lit(None, dtype=pl.String) if code is None else code
        later_message = pl.lit(None, dtype=pl.String) if message is None else message
        given = pl.lit(error_code) if isinstance(error_code, str) else error_code
        code = pl.when(condition).then(given).otherwise(later_code)
        message = pl.when(condition).then(error_message).otherwise(later_message)
    assert code is not None
    assert message is not None
    return code, message


@dataclass(frozen=True)
class _PlanExprs:
    conversation_id: pl.Expr
    code: pl.Expr  # null for a valid row
    message: pl.Expr  # every check's message: evaluate on failing rows only where it pays
    sent_metadata: pl.Expr  # the JSON object to send (valid rows)


class _Cell(NamedTuple):
    key: str  # as sent: trimmed
    column: pl.Expr
    dtype: Any
    hint: str  # how to avoid a value that cannot be sent
    nested: pl.Expr | None  # JSON Lines: what the value is where it is an object or an array


def _metadata_cells(table: InputTable, schema: pl.Schema) -> list[_Cell]:
    """Each metadata key, its cell and its type: one column each, or the fields of a struct
    ``--metadata-column`` (the same rule for a value in a struct as in a column of its own)."""
    if table.metadata_column is None:
        return [
            _Cell(
                values.key_of(name),
                pl.col(name),
                schema[name],
                HINT_COLUMN,
                pl.col(jsonlines.NESTED + name) if jsonlines.NESTED + name in schema else None,
            )
            for name in table.metadata_columns
        ]
    struct = pl.col(table.metadata_column)
    dtype = schema[table.metadata_column]
    assert isinstance(dtype, pl.Struct)
    return [
        _Cell(values.key_of(f.name), struct.struct.field(f.name), f.dtype, HINT_OBJECT, None)
        for f in dtype.fields
    ]


def _written_names(table: InputTable, schema: pl.Schema) -> list[str]:
    """Each metadata cell's column (or struct field) as the input names it, in
    ``_metadata_cells``' order: what --number-columns and --boolean-columns name."""
    if table.metadata_column is None:
        return list(table.metadata_columns)
    dtype = schema[table.metadata_column]
    assert isinstance(dtype, pl.Struct)
    return [f.name for f in dtype.fields]


def _by_rows(table: InputTable, schema: pl.Schema) -> bool:
    """Is the input planned a row at a time? A ``--metadata-column`` of JSON text is (each cell
    parsed); a struct one, with fields, is planned as columns."""
    if table.metadata_column is None:
        return False
    dtype = schema[table.metadata_column]
    return not (isinstance(dtype, pl.Struct) and dtype.fields)


def _id_checks(table: InputTable) -> list[Check]:
    """Each ID column's checks, in the resource's order: empty, too long, not its pattern."""
    resource = table.resource
    checks: list[Check] = []
    for column, field, prefix, regex in zip(
        table.id_columns, resource.id_columns, resource.prefixes, resource.id_regexes,
        strict=True,
    ):  # fmt: skip
        raw_id = pl.col(column).cast(pl.String).str.strip_chars()
        id_length = raw_id.str.len_chars()
        empty = id_message(MSG_ID_EMPTY, field, prefix)
        too_long = id_message(MSG_ID_TOO_LONG, field, prefix)
        not_pattern = id_message(MSG_ID_PATTERN, field, prefix)
        checks += [
            (raw_id.is_null() | (raw_id == ""), "invalid_id", pl.lit(empty)),
            (id_length > MAX_ID_CHARS, "invalid_id", pl.format(too_long, id_length)),
            (~raw_id.str.contains(regex), "invalid_id", pl.format(not_pattern, _clip_expr(raw_id))),
        ]
    return checks


def _number_text(
    key: str, cell: pl.Expr, given: pl.Expr, not_a_number: str
) -> tuple[pl.Expr, list[Check]]:
    """A text cell's number, where ``given``: its JSON text (``12``, ``1.5``), with the checks
    of a cell that is no (finite) number (``not_a_number``, its message) or past 2**53."""
    whole = cell.str.contains(r"^[+-]?[0-9]+$")
    as_int = cell.cast(pl.Int64, strict=False)
    as_float = cell.cast(pl.Float64, strict=False)
    past = given & whole & (as_int.is_null() | (as_int.abs() > MAX_EXACT_INTEGER))
    bad = given & ~whole & (as_float.is_null() | ~as_float.is_finite())
    not_number = pl.format(not_a_number, pl.lit(key), _clip_expr(cell))
    checks: list[Check] = [
        (past, "unsupported_value", pl.format(MSG_PAST_EXACT, pl.lit(key), _clip_expr(cell))),
        (bad, "unsupported_value", not_number),
    ]
    number = pl.when(whole).then(as_int.cast(pl.String)).otherwise(as_float.cast(pl.String))
    return pl.when(given & ~past & ~bad).then(number), checks


def _typed_value(
    key: str, column: pl.Expr, dtype: Any, table: InputTable, name: str, mark: pl.Expr | None
) -> tuple[pl.Expr, list[Check], pl.Expr | None] | None:
    """A typed resource's value as its JSON text, unquoted (a number, ``true``/``false``), with
    its checks, and the rows it is for (None: every row); None for a value sent as a JSON
    string (text, a date, ...). A text column the user named (``--number-columns``,
    ``--boolean-columns``) is parsed; a Parquet boolean or number is itself; a JSON Lines
    value is what the file wrote (``mark``: ``jsonlines.TYPED``'s column). An integer past
    2**53 is invalid (JSON numbers are doubles)."""
    checks: list[Check] = []
    text_column = isinstance(dtype, pl.String | pl.Categorical | pl.Enum)
    if text_column and name in table.boolean_columns:
        cell = column.cast(pl.String).str.strip_chars()
        lowered = cell.str.to_lowercase()
        given = cell.is_not_null() & (cell != "")
        bad = given & ~lowered.is_in(["true", "false"])
        checks.append((bad, "unsupported_value", pl.format(MSG_NOT_A_BOOLEAN, pl.lit(key), cell)))
        return pl.when(given & ~bad).then(lowered), checks, None
    if text_column and name in table.number_columns:
        cell = column.cast(pl.String).str.strip_chars()
        given = cell.is_not_null() & (cell != "")
        return *_number_text(key, cell, given, MSG_NOT_NUMBER_TEXT), None
    if text_column and mark is not None:
        # JSON Lines: a number or a boolean where the file wrote one, else a string.
        cell = column.cast(pl.String)
        number, checks = _number_text(key, cell, mark == "number", MSG_NOT_FINITE)
        value = pl.when(mark == "boolean").then(cell).otherwise(number)
        return value, checks, mark.is_not_null()
    if isinstance(dtype, pl.Boolean):
        return column.cast(pl.String), checks, None
    if dtype.is_integer():
        past = pl.lit(False)
        if dtype in (pl.Int64, pl.UInt64):  # narrower integers are never past 2**53
            past = column > pl.lit(MAX_EXACT_INTEGER, dtype=dtype)
            if dtype == pl.Int64:
                past = past | (column < pl.lit(-MAX_EXACT_INTEGER, dtype=dtype))
        shown = column.cast(pl.String)
        checks.append((past, "unsupported_value", pl.format(MSG_PAST_EXACT, pl.lit(key), shown)))
        return pl.when(~past).then(shown), checks, None
    if dtype.is_float() or isinstance(dtype, pl.Decimal):
        return column.cast(pl.String), checks, None  # NaN and infinity: _as_text's checks
    return None


def _plan_exprs(table: InputTable, schema: pl.Schema, with_duplicates: bool) -> _PlanExprs:
    """The input rules as polars expressions over a frame with ``schema``."""
    checks = _id_checks(table)
    if with_duplicates:
        duplicate_of, kept = pl.col(DUPLICATE_OF), pl.col(KEPT_CODE)
        checks.append(
            (duplicate_of.is_not_null(), "duplicate_id", pl.format(MSG_DUPLICATE, duplicate_of))
        )
        checks.append((kept.is_not_null(), kept, pl.col(KEPT_MESSAGE)))
    present: list[pl.Expr] = []
    pieces: list[pl.Expr] = []
    for (name, column, dtype, hint, nested), written in zip(
        _metadata_cells(table, schema), _written_names(table, schema), strict=True
    ):
        text, type_checks = _as_text(name, column, dtype, hint, nested)
        checks += type_checks
        typed = None
        if table.resource.typed:
            marked = jsonlines.TYPED + written
            mark = pl.col(marked) if table.metadata_column is None and marked in schema else None
            typed = _typed_value(name, column, dtype, table, written, mark)
        if typed is not None:
            # A JSON number or boolean: '"key":' and its text, unquoted.
            value, value_checks, rows = typed
            checks += value_checks
            typed_piece = pl.concat_str([pl.lit(json.dumps(name, ensure_ascii=False) + ":"), value])
            if rows is None:
                if not name:
                    checks.append((value.is_not_null(), "invalid_key", pl.lit(MSG_KEY_EMPTY)))
                elif len(name) > MAX_KEY_CHARS:
                    too_long = MSG_KEY_TOO_LONG.format(clip(name), len(name))
                    checks.append((value.is_not_null(), "key_too_long", pl.lit(too_long)))
                present.append(value.is_not_null().cast(pl.Int32))
                pieces.append(typed_piece)
                continue
            # Some rows typed (``rows``), the others text: each row its own piece.
            text = pl.when(~rows).then(text)
            value = pl.when(rows).then(value)
        if not name:
            checks.append((text.is_not_null(), "invalid_key", pl.lit(MSG_KEY_EMPTY)))
        elif len(name) > MAX_KEY_CHARS:
            too_long = MSG_KEY_TOO_LONG.format(clip(name), len(name))
            checks.append((text.is_not_null(), "key_too_long", pl.lit(too_long)))
        length = text.str.len_chars()
        value_too_long = pl.format(MSG_VALUE_TOO_LONG, pl.lit(name), length)
        checks.append((length > MAX_VALUE_CHARS, "value_too_long", value_too_long))
        # '"key":"value"' with JSON escaping, from polars' own encoder: {"key":"value"} less
        # the braces.
        encoded = pl.struct(text.alias(name)).struct.json_encode()
        piece = pl.when(text.is_not_null()).then(encoded.str.slice(1, encoded.str.len_chars() - 2))
        if typed is None:
            present.append(text.is_not_null().cast(pl.Int32))
            pieces.append(piece)
        else:
            given = text.is_not_null() | value.is_not_null()
            if not name:
                checks.append((value.is_not_null(), "invalid_key", pl.lit(MSG_KEY_EMPTY)))
            elif len(name) > MAX_KEY_CHARS:
                too_long = MSG_KEY_TOO_LONG.format(clip(name), len(name))
                checks.append((value.is_not_null(), "key_too_long", pl.lit(too_long)))
            present.append(given.cast(pl.Int32))
            pieces.append(pl.when(value.is_not_null()).then(typed_piece).otherwise(piece))
    pairs = pl.sum_horizontal(present)
    checks.append((pairs == 0, "no_metadata", pl.lit(MSG_NO_METADATA)))
    checks.append((pairs > MAX_PAIRS, "too_many_pairs", pl.format(MSG_TOO_MANY_PAIRS, pairs)))
    codes_only = [(condition, error_code, pl.lit(None)) for condition, error_code, _ in checks]
    code, _ = _first_failure(codes_only)
    _, message = _first_failure(checks)
    joined = pl.concat_str(pieces, separator=",", ignore_nulls=True)
    sent = pl.concat_str([pl.lit("{"), joined, pl.lit("}")])
    return _PlanExprs(table.key(), code, message, pl.when(code.is_null()).then(sent))


def plan_frame(table: InputTable, batch: pl.DataFrame, duplicates: pl.DataFrame) -> pl.DataFrame:
    """Plan a whole batch at once (vectorised): one row per input row with ``PLAN_COLUMNS``;
    ``error_code`` is null for a valid row, whose ``sent_metadata`` is the JSON to send."""
    if batch.is_empty():
        return pl.DataFrame(schema=_PLAN_SCHEMA)
    # One chunk: polars 2 panics ("i < self.len()") formatting the messages of a string
    # column in several chunks, as a shard's filtered batch is.
    batch = batch.rechunk()
    batch = batch.join(duplicates, on=ROW_NUMBER, how="left") if duplicates.height else batch
    if _by_rows(table, batch.schema):
        return _plan_rows(table, batch)
    exprs = _plan_exprs(table, batch.schema, DUPLICATE_OF in batch.columns)
    plan = batch.select(
        pl.col(ROW_NUMBER),
        exprs.conversation_id.alias("conversation_id"),
        exprs.code.alias("error_code"),
        exprs.sent_metadata.alias("sent_metadata"),
    )
    # Messages are built for the failing rows only (usually few): formatting them for every row
    # would cost more than all the checks.
    failing = plan.get_column("error_code").is_not_null()
    if not failing.any():
        no_message = pl.lit(None, dtype=pl.String).alias("error_message")
        return plan.with_columns(no_message).select(PLAN_COLUMNS)
    messages = batch.filter(failing).select(
        pl.col(ROW_NUMBER), exprs.message.alias("error_message")
    )
    planned = plan.join(messages, on=ROW_NUMBER, how="left", maintain_order="left")
    return planned.select(PLAN_COLUMNS)


def plan_lazy(table: InputTable, duplicates: pl.DataFrame) -> pl.LazyFrame | None:
    """The whole input planned as one lazy query (for a streaming dry run); None where the
    row path is needed (a ``--metadata-column`` of JSON text)."""
    if _by_rows(table, table.schema):
        return None
    scan = table.scan()
    if duplicates.height:
        scan = scan.join(duplicates.lazy(), on=ROW_NUMBER, how="left", maintain_order="left")
    exprs = _plan_exprs(table, scan.collect_schema(), duplicates.height > 0)
    return scan.select(
        pl.col(ROW_NUMBER),
        exprs.conversation_id.alias("conversation_id"),
        exprs.code.alias("error_code"),
        pl.when(exprs.code.is_not_null()).then(exprs.message).alias("error_message"),
        exprs.sent_metadata.alias("sent_metadata"),
    )


_PLAN_SCHEMA = {
    ROW_NUMBER: pl.UInt32,
    "conversation_id": pl.String,
    "error_code": pl.String,
    "error_message": pl.String,
    "sent_metadata": pl.String,
}


def _plan_rows(table: InputTable, batch: pl.DataFrame) -> pl.DataFrame:
    """The row path (``--metadata-column``: a JSON object per cell), as a plan frame."""
    assert table.metadata_column is not None
    column = table.metadata_column

    def listed(name: str) -> list[Any]:
        return batch.get_column(name).to_list() if name in batch.columns else [None] * batch.height

    ids: Iterable[object] = batch.get_column(table.id_column).to_list()
    if table.more_id_columns:
        ids = zip(*(batch.get_column(c).to_list() for c in table.id_columns), strict=True)
    typed = table.resource.typed
    rows = zip(
        batch.get_column(ROW_NUMBER).to_list(),
        ids,
        batch.get_column(column).to_list(),
        listed(DUPLICATE_OF),
        listed(KEPT_CODE),
        listed(KEPT_MESSAGE),
        strict=True,
    )
    out: dict[str, list[Any]] = {name: [] for name in PLAN_COLUMNS}
    for row_number, raw_id, cell, duplicate_of, kept_code, kept_message in rows:
        kept = None if kept_code is None else (kept_code, kept_message)
        parse = partial(parse_metadata_cell, column, cell, typed=typed)
        planned = plan_row(row_number, raw_id, parse, duplicate_of, kept, resource=table.resource)
        out[ROW_NUMBER].append(row_number)
        out["conversation_id"].append(planned.conversation_id or None)
        if isinstance(planned, PlannedUpdate):
            out["error_code"].append(None)
            out["error_message"].append(None)
            out["sent_metadata"].append(planned.sent_metadata)
        else:
            out["error_code"].append(planned.error_code)
            out["error_message"].append(planned.error_message)
            out["sent_metadata"].append(None)
    return pl.DataFrame(out, schema=_PLAN_SCHEMA)


def valid_rows(plan: pl.DataFrame) -> pl.DataFrame:
    """A plan frame's valid rows: ``ROW_NUMBER, conversation_id, sent_metadata``."""
    return plan.filter(pl.col("error_code").is_null()).select(SENT_COLUMNS)


def mark_unchanged(plan: pl.DataFrame, changed_rows: Sequence[int]) -> pl.DataFrame:
    """Add ``unchanged``: a valid row that is not among ``changed_rows`` (the row numbers
    whose metadata differs from what the job last set; see state.changed_rows)."""
    changed = pl.Series(changed_rows, dtype=plan.schema[ROW_NUMBER])
    same = pl.col("error_code").is_null() & ~pl.col(ROW_NUMBER).is_in(changed.implode())
    return plan.with_columns(same.alias(UNCHANGED))


def unchanged_expr(plan: pl.DataFrame | pl.LazyFrame) -> pl.Expr:
    """A plan's ``unchanged`` flag; false everywhere if ``mark_unchanged`` did not run."""
    return pl.col(UNCHANGED) if UNCHANGED in plan.collect_schema().names() else pl.lit(False)


def to_send_expr(plan: pl.DataFrame | pl.LazyFrame) -> pl.Expr:
    """The rows of a plan to send: valid, and not ``unchanged``."""
    return pl.col("error_code").is_null() & ~unchanged_expr(plan)


def unchanged_rows(plan: pl.DataFrame) -> pl.DataFrame:
    """The ``unchanged`` rows of a plan frame: ``ROW_NUMBER, conversation_id, sent_metadata``."""
    return plan.filter(unchanged_expr(plan)).select(SENT_COLUMNS)


def to_send_count(plan: pl.DataFrame) -> int:
    """How many rows of a plan frame are to be sent."""
    return plan.filter(to_send_expr(plan)).height


def invalid_outcomes(plan: pl.DataFrame) -> list[RowOutcome]:
    """The ``invalid`` outcomes of a plan frame."""
    invalid = plan.filter(pl.col("error_code").is_not_null())
    columns = (ROW_NUMBER, "conversation_id", "error_code", "error_message")
    return [
        RowOutcome(
            row_number=row_number,
            conversation_id=conversation_id or "",
            status=Status.INVALID,
            error_type="invalid_input",
            error_code=code,
            error_message=message,
        )
        for row_number, conversation_id, code, message in invalid.select(columns).iter_rows()
    ]


def updates(plan: pl.DataFrame) -> list[PlannedUpdate]:
    """The rows of a plan frame to send: valid, and not ``unchanged``."""
    send = plan.filter(to_send_expr(plan))
    return [
        PlannedUpdate(row_number, conversation_id, sent_metadata)
        for row_number, conversation_id, sent_metadata in send.select(SENT_COLUMNS).iter_rows()
    ]
