"""Plan: pure validation. One input row becomes one update request or one ``invalid`` outcome.

Nothing here does I/O or logs. The rules (SPEC "Input mapping and validation"):
- the ID is trimmed and must be ``conv_`` + ``[A-Za-z0-9_-]``, 128 characters at most, so it can
  never change a URL's path or query;
- an empty cell or a null means no value for that key; a row with no pairs left is invalid;
- 1 to 16 pairs, keys 1-64 characters, values at most 512 characters (not bytes);
- non-string values become text (integers in decimal, booleans ``true``/``false``, floats in
  shortest round-trip form, dates and datetimes in ISO 8601); lists, structs and binary are
  invalid;
- a later row with an ID seen before is invalid ("duplicate of row N").
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

import polars as pl

from bulk_update.outcome import RowOutcome, Status
from bulk_update.read import ROW_NUMBER, InputTable

MAX_PAIRS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
MAX_ID_CHARS = 128
ID_PATTERN = re.compile(r"conv_[A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class PlannedUpdate:
    """A valid row: the request to send."""

    row_number: int
    conversation_id: str
    metadata: dict[str, str]
    sent_metadata: str  # the same, as JSON text for the results


Planned = PlannedUpdate | RowOutcome


class _Invalid(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def check_id(raw: object) -> str:
    """The trimmed conversation ID, or raise _Invalid."""
    if raw is None:
        raise _Invalid("invalid_id", "conversation_id is empty")
    if not isinstance(raw, str):
        raise _Invalid("invalid_id", f"conversation_id is {type(raw).__name__}, not text")
    conversation_id = raw.strip()
    if not conversation_id:
        raise _Invalid("invalid_id", "conversation_id is empty")
    if len(conversation_id) > MAX_ID_CHARS:
        raise _Invalid(
            "invalid_id",
            f"conversation_id is {len(conversation_id)} characters; at most {MAX_ID_CHARS}",
        )
    if not ID_PATTERN.fullmatch(conversation_id):
        raise _Invalid(
            "invalid_id",
            f"conversation_id {_clip(conversation_id)!r} is not conv_ followed by letters, "
            "digits, '_' or '-'",
        )
    return conversation_id


def to_text(key: str, value: object) -> str | None:
    """A cell as the text to send, None for no value; raise _Invalid for what cannot be text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value != "" else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid("unsupported_value", f"value for {key!r} is {value}, not a number")
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
    else:
        kind = type(value).__name__
    raise _Invalid(
        "unsupported_type",
        f"value for {key!r} is {kind}; only text, numbers, booleans and dates can be sent",
    )


def check_pairs(pairs: Iterable[tuple[str, object]]) -> dict[str, str]:
    """The metadata to send, or raise _Invalid naming the key and the limit."""
    metadata: dict[str, str] = {}
    for key, raw in pairs:
        value = to_text(key, raw)
        if value is None:
            continue
        if not key:
            raise _Invalid("invalid_key", "metadata key is empty")
        if len(key) > MAX_KEY_CHARS:
            raise _Invalid(
                "key_too_long",
                f"metadata key {_clip(key)!r} is {len(key)} characters; at most {MAX_KEY_CHARS}",
            )
        if len(value) > MAX_VALUE_CHARS:
            raise _Invalid(
                "value_too_long",
                f"value for {key!r} is {len(value)} characters; at most {MAX_VALUE_CHARS}",
            )
        metadata[key] = value
    if not metadata:
        raise _Invalid("no_metadata", "no metadata: every metadata value is empty")
    if len(metadata) > MAX_PAIRS:
        raise _Invalid("too_many_pairs", f"{len(metadata)} metadata pairs; at most {MAX_PAIRS}")
    return metadata


def parse_metadata_cell(column: str, cell: object) -> list[tuple[str, object]]:
    """The pairs of a ``--metadata-column`` cell: a JSON object (text) or a struct."""
    if cell is None or cell == "":
        return []
    if isinstance(cell, dict):
        return list(cell.items())
    if not isinstance(cell, str):
        raise _Invalid("invalid_metadata_json", f"{column} is not a JSON object")
    try:
        parsed = json.loads(cell)
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
) -> Planned:
    """One row to a PlannedUpdate, or to an ``invalid`` RowOutcome with a precise message.

    Checks run in a fixed order: the ID, then duplication, then the pairs (which may be given
    as a callable that parses them, so a bad ID is reported before a bad JSON cell).
    """
    shown_id = (
        raw_id.strip() if isinstance(raw_id, str) else ("" if raw_id is None else str(raw_id))
    )
    try:
        conversation_id = check_id(raw_id)
        if duplicate_of is not None:
            raise _Invalid("duplicate_id", f"duplicate of row {duplicate_of}")
        metadata = check_pairs(pairs() if callable(pairs) else pairs)
    except _Invalid as invalid:
        return RowOutcome(
            row_number=row_number,
            conversation_id=shown_id,
            status=Status.INVALID,
            error_type="invalid_input",
            error_code=invalid.code,
            error_message=invalid.message,
        )
    return PlannedUpdate(row_number, conversation_id, metadata, encode_metadata(metadata))


def find_duplicates(table: InputTable) -> dict[int, int]:
    """Row number of every later occurrence of an ID -> row number of its first occurrence.

    Vectorised and memory-light: a first pass keeps only a 64-bit hash per row; exact strings
    are compared only for rows whose hash occurs more than once.
    """
    trimmed = pl.col(table.id_column).cast(pl.String).str.strip_chars()
    keyed = (
        table.scan()
        .select(pl.col(ROW_NUMBER), trimmed.alias("id"))
        .filter(pl.col("id").is_not_null() & (pl.col("id") != ""))
    )
    hashes = keyed.select(pl.col(ROW_NUMBER), pl.col("id").hash(seed=0).alias("h")).collect()
    repeated = hashes.filter(pl.col("h").is_duplicated())
    if repeated.is_empty():
        return {}
    candidates = (
        keyed.join(repeated.lazy().select(ROW_NUMBER), on=ROW_NUMBER, how="semi")
        .with_columns(pl.col(ROW_NUMBER).min().over("id").alias("first"))
        .filter(pl.col(ROW_NUMBER) != pl.col("first"))
        .collect()
    )
    return dict(zip(candidates[ROW_NUMBER].to_list(), candidates["first"].to_list(), strict=True))


def plan_batch(
    table: InputTable, batch: pl.DataFrame, duplicates: Mapping[int, int]
) -> Iterator[Planned]:
    """Plan every row of a batch from ``InputTable.batches``, in order."""
    row_numbers = batch.get_column(ROW_NUMBER).to_list()
    ids = batch.get_column(table.id_column).to_list()
    if table.metadata_column is not None:
        column = table.metadata_column
        cells = batch.get_column(column).to_list()
        for row_number, raw_id, cell in zip(row_numbers, ids, cells, strict=True):
            yield plan_row(
                row_number,
                raw_id,
                partial(parse_metadata_cell, column, cell),
                duplicates.get(row_number),
            )
        return
    keys = table.metadata_columns
    values = [batch.get_column(key).to_list() for key in keys]
    for index, (row_number, raw_id) in enumerate(zip(row_numbers, ids, strict=True)):
        pairs = [
            (key, column_values[index]) for key, column_values in zip(keys, values, strict=True)
        ]
        yield plan_row(row_number, raw_id, pairs, duplicates.get(row_number))
