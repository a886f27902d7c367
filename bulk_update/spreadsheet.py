"""CSV files that a spreadsheet opens safely (OWASP "CSV injection").

A cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula to a
spreadsheet. In the CSV results and errors files such cells get a leading ``'``, which a
spreadsheet shows as text and never runs. Parquet and JSONL keep the exact text. A fed-back
errors file (CSV) loses the ``'`` again when it is read, so its values round-trip exactly.
"""

from __future__ import annotations

from typing import TypeVar

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
