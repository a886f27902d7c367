"""CSV files that a spreadsheet opens safely (OWASP "CSV injection").

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to a
spreadsheet. In the CSV results and errors files such cells get a leading ``'``, which a
spreadsheet shows as text and never runs. Parquet and JSONL keep the exact text. A fed-back
errors file (CSV) loses the ``'`` again when it is read, so its values round-trip exactly.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import polars as pl

FORMULA_START = r"^[=+\-@\t\r]"
ESCAPED_START = r"^'[=+\-@\t\r]"

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


def _text_columns(frame: pl.DataFrame | pl.LazyFrame) -> list[str]:
    return [name for name, dtype in frame.collect_schema().items() if dtype == pl.String]


def escape(frame: FrameT) -> FrameT:
    """Prefix ``'`` to every text cell a spreadsheet would take for a formula."""
    return frame.with_columns(
        pl.when(pl.col(name).str.contains(FORMULA_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name in _text_columns(frame)
    )


def unescape(frame: FrameT) -> FrameT:
    """Undo ``escape`` (reading a fed-back errors file)."""
    return frame.with_columns(
        pl.when(pl.col(name).str.contains(ESCAPED_START))
        .then(pl.col(name).str.slice(1))
        .otherwise(pl.col(name))
        .alias(name)
        for name in _text_columns(frame)
    )


# The types CSV cannot hold as they are.
_NESTED = (pl.List, pl.Array, pl.Struct, pl.Binary)


def _holds_binary(dtype: Any) -> bool:
    if isinstance(dtype, pl.Binary):
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _holds_binary(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_holds_binary(f.dtype) for f in dtype.fields)
    return False


def _json_value(value: object) -> str | None:
    def default(item: object) -> str:
        return item.hex() if isinstance(item, bytes) else str(item)

    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=default)


def _as_json_text(name: str, dtype: pl.DataType) -> pl.Expr:
    column = pl.col(name)
    if isinstance(dtype, pl.Binary):
        return column.bin.encode("hex")
    if _holds_binary(dtype):  # polars' JSON encoder has no binary: Python, rare and slow
        return column.map_elements(_json_value, return_dtype=pl.String)
    # {"name":VALUE} from polars' own encoder, less the wrapper.
    encoded = pl.struct(column).struct.json_encode()
    prefix = len(json.dumps(name, ensure_ascii=False)) + 2
    return pl.when(column.is_not_null()).then(
        encoded.str.slice(prefix, encoded.str.len_chars() - prefix - 1)
    )


def text_cells(frame: FrameT) -> FrameT:
    """Cells that CSV cannot hold (lists, structs, arrays) as JSON text, binary as hex, so that
    a Parquet input's every column fits in a CSV errors file."""
    nested = {
        name: dtype for name, dtype in frame.collect_schema().items() if isinstance(dtype, _NESTED)
    }
    if not nested:
        return frame
    return frame.with_columns(
        _as_json_text(name, dtype).alias(name) for name, dtype in nested.items()
    )


def text_schema(schema: pl.Schema) -> pl.Schema:
    """The schema ``text_cells`` turns ``schema`` into."""
    return pl.Schema(
        {name: pl.String if isinstance(dtype, _NESTED) else dtype for name, dtype in schema.items()}
    )
