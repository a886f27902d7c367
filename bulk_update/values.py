"""A typed value's text: the one rule by which a cell that is not text becomes the text sent.

A value must reach the API as the same text whatever path it took: the input read directly, or
its errors file (CSV, JSON Lines or Parquet) fed back as INPUT. A Parquet input keeps its types,
and the plan turns each into text by ``text``; a text errors file (CSV, JSON Lines) holds that
same text for every type whose own form there would differ (polars writes a zoned timestamp to
CSV as ``2025-03-30T03:30:00.000000+0200`` and to JSON Lines naive ones with a space; a time
with nine decimals), so the file fed back sends what the input sent. Integers, decimals,
floats, booleans and dates are written by every format as this text already (polars' shortest
round-trip floats: ``0.1``, ``1e+22``, ``0.00001``).

The rule: integers in decimal, booleans ``true``/``false``, floats in shortest round-trip form,
decimals with their scale, dates, times and datetimes in ISO 8601 (``2025-03-30``,
``03:30:00``, ``2025-03-30T03:30:00+02:00`` with its offset where it has a time zone; a
fraction of a second only where there is one, in 3, 6 or 9 digits: ``03:30:00.500``), durations
in ISO 8601 (``PT5S``, ``-P1D``). Lists, structs, binary and objects have no text: such a value is
``invalid`` for its row.
"""

from __future__ import annotations

from typing import Any

import polars as pl

__all__ = [
    "NESTED_KINDS",
    "TEMPORAL_TEXT",
    "WHITESPACE",
    "blank",
    "is_blank",
    "key_of",
    "kind",
    "temporal_text",
    "text",
]

# What is trimmed around a key and makes a value blank: Unicode's White_Space characters (the
# same set in Python and in polars, which is why it is spelled out: ``str.strip()`` also takes
# the ASCII separators \x1c-\x1f, polars does not).
WHITESPACE = (
    " \t\n\x0b\x0c\r\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
    "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

# The types that hold other values (a JSON object or array is one too): never sent.
NESTED_KINDS = (pl.List, pl.Array, pl.Struct)


def key_of(name: str) -> str:
    """The metadata key a column name (a header, a JSON key, a struct field) or an object's key
    is sent as: without its surrounding white space."""
    return name.strip(WHITESPACE)


def is_blank(value: str) -> bool:
    """An empty value, or one of white space only: no value for its key."""
    return not value.strip(WHITESPACE)


def blank(column: pl.Expr) -> pl.Expr:
    """``is_blank`` over a column of text (a regex's \\s is Unicode's White_Space: WHITESPACE;
    anchored, it stops at the first other character, twice as fast as trimming every cell)."""
    return column.str.contains(r"^\s*$")


# The types whose text differs from the form polars writes them in, to CSV or JSON Lines.
TEMPORAL_TEXT = (pl.Datetime, pl.Time, pl.Duration)

_AS_CAST = (pl.String, pl.Categorical, pl.Enum, pl.Boolean, pl.Date)


def text(column: pl.Expr, dtype: Any) -> pl.Expr | None:
    """``column`` (of ``dtype``) as the text a value of it is sent as; None if the type has no
    text (a list, a struct, binary, an object). A float's NaN or infinity is text here
    (``NaN``, ``inf``): the plan refuses them first."""
    if isinstance(dtype, _AS_CAST) or dtype.is_numeric():
        return column.cast(pl.String)
    if isinstance(dtype, TEMPORAL_TEXT):
        return temporal_text(column, dtype)
    if isinstance(dtype, pl.Null):
        return pl.lit(None, dtype=pl.String)
    return None


def temporal_text(column: pl.Expr, dtype: pl.Datetime | pl.Time | pl.Duration) -> pl.Expr:
    """A datetime, a time or a duration as its ISO 8601 text."""
    if isinstance(dtype, pl.Datetime):
        return column.dt.to_string("%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else ""))
    if isinstance(dtype, pl.Time):
        return column.dt.to_string("%H:%M:%S%.f")
    return column.dt.to_string("iso")


# What a column's type is called in messages: plain words, never polars' repr
# (``Duration(time_unit='us')``). Checked in order: the first class the type is an instance of.
_KINDS: tuple[tuple[type[pl.DataType] | tuple[type[pl.DataType], ...], str], ...] = (
    ((pl.String, pl.Categorical, pl.Enum), "text"),
    (pl.Boolean, "true/false"),
    (pl.Decimal, "a decimal number"),
    (pl.Datetime, "a date and time"),
    (pl.Date, "a date"),
    (pl.Time, "a time of day"),
    (pl.Duration, "a duration"),
    ((pl.List, pl.Array), "a list"),
    (pl.Struct, "a struct"),
    (pl.Binary, "binary"),
    (pl.Null, "empty"),
    (pl.Object, "a Python object"),
)


def kind(dtype: Any) -> str:
    """A column's type in plain words, for messages: ``a duration``, ``a list``, ``a whole
    number``."""
    for kinds, shown in _KINDS:
        if isinstance(dtype, kinds) or (isinstance(dtype, type) and issubclass(dtype, kinds)):
            return shown
    if dtype.is_integer():
        return "a whole number"
    if dtype.is_float():
        return "a number"
    name = str(dtype).split("(")[0].lower()
    return f"{'an' if name[:1] in tuple('aeiou') else 'a'} {name} value"
