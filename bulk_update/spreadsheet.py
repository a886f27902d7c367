"""Cells every results format can hold, and CSV files that a spreadsheet opens safely.

Each format holds some of polars' types as they are and not others (``holds_in_csv``,
``holds_in_json``, ``holds_in_parquet``): any other column is written as text, so that the
errors file of any input (a Parquet file of maps, durations, 128-bit integers ...) can be
written in any format.

Spreadsheets (OWASP "CSV injection"):

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to a
spreadsheet. In the CSV results and errors files such cells get a leading ``'``, which a
spreadsheet shows as text and never runs. So does a cell that starts with ``'`` itself
(``'=literal`` is written ``''=literal``): a leading ``'`` in these files is always one the
writer added, and a fed-back errors file (CSV) loses exactly that one when it is read, so every
value round-trips exactly (a reader that stripped only a ``'`` before a formula character would
turn a real ``'=literal`` into ``=literal``). Parquet and JSONL keep the exact text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import polars as pl

from bulk_update import values

__all__ = [
    "escape",
    "holds_in_csv",
    "holds_in_json",
    "holds_in_parquet",
    "text_cells",
    "text_schema",
    "unescape",
]

# A cell a spreadsheet would run, or one that starts with the escape itself.
ESCAPE_START = r"^['=+\-@\t\r]"

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


def _text_columns(frame: pl.DataFrame | pl.LazyFrame) -> list[str]:
    return [name for name, dtype in frame.collect_schema().items() if dtype == pl.String]


def escape(frame: FrameT) -> FrameT:
    """Prefix ``'`` to every text cell a spreadsheet would take for a formula, and to every one
    that starts with ``'``."""
    return frame.with_columns(
        pl.when(pl.col(name).str.contains(ESCAPE_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name in _text_columns(frame)
    )


def unescape(frame: FrameT) -> FrameT:
    """Undo ``escape`` (reading a fed-back errors file): the first ``'`` of a cell goes."""
    return frame.with_columns(
        pl.when(pl.col(name).str.starts_with("'"))
        .then(pl.col(name).str.slice(1))
        .otherwise(pl.col(name))
        .alias(name)
        for name in _text_columns(frame)
    )


def _inner(dtype: Any) -> list[Any]:
    """The types a nested type holds (a list's, an array's, a struct's fields', a map's key
    and value)."""
    if isinstance(dtype, pl.List | pl.Array):
        return [dtype.inner]
    if isinstance(dtype, pl.Struct):
        return [f.dtype for f in dtype.fields]
    if isinstance(dtype, pl.Map):
        return [getattr(dtype, name) for name in ("key", "value") if hasattr(dtype, name)]
    return []


def _contains(dtype: Any, kinds: tuple[type[pl.DataType], ...]) -> bool:
    """Is ``dtype`` one of ``kinds``, or does it hold one at any depth?"""
    return isinstance(dtype, kinds) or any(_contains(inner, kinds) for inner in _inner(dtype))


# What each results format holds as it is, written and read back with its schema (an object
# store's upload reads the temporary file back); any other column is written as text
# (``as_text``), or as a 64-bit integer if it is a narrower one. Checked against every type
# polars reads (tests/test_faults.py): CSV holds no nested type, binary, duration, object or
# null column; polars' JSON Lines writer no binary (it panics) nor object, and its reader no
# 8- or 16-bit or 128-bit unsigned integer, decimal, duration or time; pyarrow's Parquet writer
# no 128-bit integer nor object. Neither text format holds a time or a datetime (at any depth)
# in the text a value of it is sent as (``values``): those are written as that text, so that
# an errors file fed back sends what its input sent.
_CSV_SCALARS = (pl.String, pl.Boolean, pl.Date, pl.Categorical, pl.Enum)
_JSON_MISSES = (pl.Binary, pl.Object, pl.Int8, pl.Int16, pl.UInt8, pl.UInt16, pl.UInt128,
                pl.Decimal, pl.Duration, pl.Time, pl.Datetime)  # fmt: skip
_NARROW_INTEGERS = (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16, pl.UInt32)


def holds_in_csv(dtype: Any) -> bool:
    return bool(dtype.is_numeric()) or isinstance(dtype, _CSV_SCALARS)


def holds_in_json(dtype: Any) -> bool:
    return not _contains(dtype, _JSON_MISSES)


def holds_in_parquet(dtype: Any) -> bool:
    return not _contains(dtype, (pl.Int128, pl.UInt128, pl.Object))


Holds = Callable[[Any], bool]


def _json_value(value: object) -> str | None:
    def default(item: object) -> str:
        return item.hex() if isinstance(item, bytes) else str(item)

    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default)


def as_text(name: str, dtype: Any) -> pl.Expr:
    """A column as text: binary as hex, nested values as JSON (polars' own encoder; Python's
    where they hold binary, which polars' cannot encode; a struct's datetimes as the text they
    are sent as), a time, a datetime or a duration as the text it is sent as (``values.text``:
    ``PT5S``), anything else as polars casts it."""
    column = pl.col(name)
    if isinstance(dtype, values.TEMPORAL_TEXT):
        return values.temporal_text(column, dtype)
    if isinstance(dtype, pl.Struct):
        column = column.struct.with_fields(
            values.temporal_text(pl.field(field.name), field.dtype).alias(field.name)
            for field in dtype.fields
            if isinstance(field.dtype, values.TEMPORAL_TEXT)
        )
    if isinstance(dtype, pl.Binary):
        return column.bin.encode("hex")
    if isinstance(dtype, pl.Object):
        return column.map_elements(lambda v: None if v is None else str(v), return_dtype=pl.String)
    if _contains(dtype, (pl.Binary, pl.Object)):  # rare and slow: Python
        return column.map_elements(_json_value, return_dtype=pl.String)
    if dtype.is_nested():
        # {"name":VALUE} from polars' own encoder, less the wrapper.
        encoded = pl.struct(column).struct.json_encode()
        prefix = len(json.dumps(name, ensure_ascii=False)) + 2
        return pl.when(column.is_not_null()).then(
            encoded.str.slice(prefix, encoded.str.len_chars() - prefix - 1)
        )
    return column.cast(pl.String)


def _held_as(dtype: Any, holds: Holds) -> Any:
    """The type a column the format cannot hold is written as: a 64-bit integer for a narrower
    one, else text."""
    if isinstance(dtype, _NARROW_INTEGERS) and holds(pl.Int64()):
        return pl.Int64()
    return pl.String()


def text_cells(frame: FrameT, holds: Holds = holds_in_csv) -> FrameT:
    """Every column the format cannot hold (``holds``: CSV's by default) as one it can
    (``_held_as``), so that any input's every column fits in an errors file."""
    other = {name: dtype for name, dtype in frame.collect_schema().items() if not holds(dtype)}
    if not other:
        return frame
    return frame.with_columns(
        (
            pl.col(name).cast(pl.Int64)
            if _held_as(dtype, holds) == pl.Int64()
            else as_text(name, dtype)
        ).alias(name)
        for name, dtype in other.items()
    )


def text_schema(schema: pl.Schema, holds: Holds = holds_in_csv) -> pl.Schema:
    """The schema ``text_cells`` turns ``schema`` into."""
    return pl.Schema(
        {name: dtype if holds(dtype) else _held_as(dtype, holds) for name, dtype in schema.items()}
    )
