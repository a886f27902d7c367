"""What happened to a row: the typed record that ends in the results file."""

from __future__ import annotations

import enum
import operator
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "ERRORS_ROW_NUMBER",
    "ERROR_COLUMNS",
    "MAY_HAVE_APPLIED",
    "NEEDS_ATTENTION",
    "OUTCOME_UNKNOWN",
    "RESULTS_SCHEMA",
    "RESULT_COLUMNS",
    "ROW_FAILURES",
    "ROW_NUMBER",
    "RowOutcome",
    "Status",
]


class Status(enum.StrEnum):
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    FAILED = "failed"
    INVALID = "invalid"
    UNPROCESSED = "unprocessed"
    PLANNED = "planned"


# The statuses that make a finished run exit 1 (``unprocessed`` rows of a finished run were
# left by --limit on purpose).
ROW_FAILURES = frozenset({Status.FAILED, Status.INVALID})
# The statuses --errors-output keeps: rows to fix and feed back.
NEEDS_ATTENTION = frozenset({Status.FAILED, Status.INVALID, Status.UNPROCESSED})
# The error code of an ``unprocessed`` row whose update was sent when the run stopped, its
# answer never read: the server may have applied it. A re-run sends it again, and a revert
# treats it as possibly applied (``server/revert.py``).
OUTCOME_UNKNOWN = "outcome_unknown"
# The error codes of a row whose update may have been applied although the job never read a
# success: sent when the run stopped, or whose last attempt timed out or lost its connection
# (an earlier attempt's fate is the same). A revert reads such a row's conversation and puts
# its before-image back only where the server holds what the run sent.
MAY_HAVE_APPLIED = frozenset({OUTCOME_UNKNOWN, "timeout", "connection_error"})


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """One results row. Field names and order are the results file's columns."""

    row_number: int
    conversation_id: str
    status: Status
    http_status: int | None = None
    attempts: int = 0
    error_type: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    created_at: int | None = None
    metadata: str | None = None  # the returned conversation's metadata, JSON text
    sent_metadata: str | None = None  # JSON text
    # With --backup (and in a revert): the server's map before the update, JSON text.
    previous_metadata: str | None = None
    # With validate --check-server: the server's map when it was read, JSON text.
    server_metadata: str | None = None

    def as_row(self) -> tuple[Any, ...]:
        """The values in RESULT_COLUMNS order."""
        values: tuple[Any, ...] = _as_row(self)
        return values


def _polars_type(hint: Any) -> type[pl.DataType]:
    import polars as pl

    kinds = {a for a in typing.get_args(hint) or (hint,) if a is not type(None)}
    return pl.Int64 if kinds == {int} else pl.String


# The one declaration of the results' columns and types: the results files, the errors file's
# status columns and the store's outcomes table are all derived from RowOutcome.
RESULT_COLUMNS: tuple[str, ...] = tuple(typing.get_type_hints(RowOutcome))
if TYPE_CHECKING:
    RESULTS_SCHEMA: pl.Schema  # made when first asked for (``__getattr__``)


def __getattr__(name: str) -> Any:
    """``RESULTS_SCHEMA``, the columns' polars types, made (and polars imported) when first
    asked for: the operator's module imports this one in every process that parses a DAG,
    and polars costs those 0.4 s."""
    if name != "RESULTS_SCHEMA":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import polars as pl

    hints = typing.get_type_hints(RowOutcome)
    schema = globals()[name] = pl.Schema(
        {column: _polars_type(hints[column]) for column in RESULT_COLUMNS}
    )
    return schema


_as_row = operator.attrgetter(*RESULT_COLUMNS)
# The columns --errors-output adds to the input's own. An input that has all three is taken for
# a fed-back errors file: they (and its ``row_number``) are not metadata unless --columns names
# them.
ERROR_COLUMNS: tuple[str, ...] = ("status", "error_code", "error_message")
# The errors file's first column: the row's number in the input it came from (kept as it is
# when that input was itself a fed-back errors file, so a fix traces back to the first input).
ERRORS_ROW_NUMBER = "row_number"
# The column every stage carries a row's 1-based data-row number in (the header not counted).
ROW_NUMBER = "__bulk_update_row_number"
