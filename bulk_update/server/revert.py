"""Revert: from the results of a ``--backup`` run, the updates that put back what it changed.

The input is that run's results file. Each ``updated`` row with a before-image
(``previous_metadata``) becomes an update of the keys the run set (``sent_metadata``) back to
their before-image values, guarded by what the run set (``PlannedUpdate.expect``): at send time
the conversation is read, and a key someone changed since is left alone (``check.judge``).
Keys the run added (absent from the before-image) cannot be removed through the API: they stay,
and are counted, unless ``--blank-added-keys`` sets them to the empty string.

A server that replaced the map instead of merging into it (``--backup`` stops on the first)
dropped keys of the before-image that the run never set: its answer (the results' ``metadata``)
lacks them. Such a row's revert puts back the whole before-image (``RevertRow.whole``): the
dropped keys were nobody's change, they are not drift.

A row whose update was sent when the run stopped, its answer never read (``unprocessed`` /
``outcome_unknown``), or that failed or was left with its last attempt timed out or its
connection lost (``timeout``, ``connection_error``: ``outcome.MAY_HAVE_APPLIED``), may have been
applied: it is reverted as an updated row whose answer is
not known. Its target is the whole before-image, guarded by what the run sent; once the
conversation is read (``settled``), a server that holds every key of the before-image the run
did not set has dropped none, and only the run's own keys are put back. Where the server holds
the before-image, the row is ``unchanged``; where it holds what the run sent, the image goes
back; anything else is drift. Every other row has nothing to revert: ``unchanged``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import polars as pl

from bulk_update.exceptions import InputError
from bulk_update.outcome import MAY_HAVE_APPLIED, OUTCOME_UNKNOWN, ROW_NUMBER, RowOutcome, Status
from bulk_update.plan import PlannedUpdate
from bulk_update.read import InputTable, open_input
from bulk_update.resources import CONVERSATIONS, Resource
from bulk_update.server.check import parse_map, same_value

__all__ = ["batches", "kept_keys", "open_results", "plan_batch", "revert_row", "settled"]

ID = "conversation_id"
STATUS = "status"
CODE = "error_code"
SENT = "sent_metadata"
PREVIOUS = "previous_metadata"
RETURNED = "metadata"  # the map the server answered the run's update with
COLUMNS = (STATUS, SENT, PREVIOUS)
NO_BEFORE_IMAGE = "no_before_image"
UNREADABLE_IMAGE = "unreadable_before_image"


@dataclass(frozen=True, slots=True)
class RevertRow:
    """One updated row's revert: ``target`` the map to send, ``expect`` what the server held
    after the run for those keys (absent: a key it dropped), ``kept`` the keys the run added
    that stay; ``whole``: the target is the whole before-image (the server had dropped keys)."""

    target: dict[str, object]
    expect: dict[str, object]
    kept: list[str]
    whole: bool = False


def open_results(
    path: str, storage_options: dict[str, str] | None = None, resource: Resource = CONVERSATIONS
) -> InputTable:
    """The results file of a --backup run of ``resource``, as the revert's input; InputError
    (exit 2, nothing sent) for anything else."""
    try:
        table = open_input(
            path, id_column=resource.id_columns, storage_options=storage_options,
            resource=resource,
        )  # fmt: skip
    except InputError as exc:
        missing = [c for c in resource.id_columns if f"no ID column {c!r}" in str(exc)]
        if not missing:
            raise
        other = " (another resource's? give its --resource)" if resource is CONVERSATIONS else ""
        raise InputError(
            path,
            f"not a results file of bulk-update --resource {resource.name} (no {missing[0]} "
            f"column){other}",
        ) from None
    _check_results(table)
    return table


def _check_results(table: InputTable) -> None:
    missing = [name for name in COLUMNS if name not in table.schema.names()]
    if missing:
        raise InputError(
            table.path,
            f"not a results file of bulk-update (no {', '.join(missing)} column)"
            if missing != [PREVIOUS]
            else "no before-images (previous_metadata): revert needs the results of a run "
            "with --backup",
        )
    updated = _sent(table.schema.names())
    found = (
        table.scan()
        .select(
            updated.sum().alias("updated"),
            (updated & pl.col(PREVIOUS).is_not_null()).sum().alias("imaged"),
            (pl.col(STATUS) == Status.PLANNED.value).sum().alias("planned"),
        )
        .collect()
    )
    if found.item(0, "planned"):
        raise InputError(
            table.path,
            "a plan (the output of validate or of a --dry-run), not the results of a run: "
            "nothing was sent, nothing to revert",
        )
    if found.item(0, "updated") and not found.item(0, "imaged"):
        raise InputError(
            table.path,
            "no before-images (previous_metadata is empty on every updated row): revert needs "
            "the results of a run with --backup",
        )


# The statuses of a row that may have been applied all the same (with a MAY_HAVE_APPLIED code).
_UNSURE_STATUSES = (Status.UNPROCESSED.value, Status.FAILED.value)


def _sent(names: list[str]) -> pl.Expr:
    """The results' rows whose update the server applied, or may have (its answer never read):
    the rows a revert puts back."""
    updated = pl.col(STATUS) == Status.UPDATED.value
    if CODE not in names:
        return updated
    unknown = pl.col(STATUS).is_in(_UNSURE_STATUSES) & pl.col(CODE).is_in(list(MAY_HAVE_APPLIED))
    return updated | unknown


def revert_row(
    sent: str,
    previous: str,
    returned: str | None = None,
    *,
    blank_added_keys: bool,
    unsure: bool = False,
) -> RevertRow:
    """What putting back one updated row means. ``returned``: the map the server answered the
    run's update with (None: not known). ``unsure``: the update may not have been applied, nor
    merged (its answer was never read): the whole before-image, guarded by what the run sent,
    to be ``settled`` against the server's map."""
    set_by_run, before = parse_map(sent), parse_map(previous)
    after = {**before, **set_by_run} if returned is None else parse_map(returned)
    dropped = unsure or any(key not in after for key in before)
    target: dict[str, object] = dict(before) if dropped else {}
    kept: list[str] = []
    for key, value in set_by_run.items():
        if key in before:
            if not same_value(before[key], value):
                target[key] = before[key]
        elif blank_added_keys:
            if value != "":
                target[key] = ""
        else:
            kept.append(key)
    guard = set_by_run if unsure else after
    expect = {key: guard[key] for key in target if key in guard}
    return RevertRow(target, expect, kept, whole=dropped)


def settled(update: PlannedUpdate, server: Mapping[str, object]) -> PlannedUpdate:
    """A whole before-image's revert, once the server's map is read. The image's keys that the
    run never set (those of the target that ``expect`` does not guard) were dropped by a
    server that replaced the map: if the server lacks one, the whole image goes back. If it
    lacks none, nothing was dropped: only the run's own keys go back, and another key changed
    since is someone else's, neither drift nor written over."""
    target = update.metadata
    expect = parse_map(update.expect)
    if any(key not in server for key in target if key not in expect):
        return update
    own = {key: value for key, value in target.items() if key in expect}
    return dataclasses.replace(update, sent_metadata=_text(own), whole=False)


def batches(table: InputTable, rows: int) -> Iterator[pl.DataFrame]:
    """The results' row number, ID, status, error code, sent, previous and returned metadata,
    ``rows`` at a time."""
    names = table.schema.names()
    code, returned = (
        pl.col(name).cast(pl.String) if name in names else pl.lit(None, pl.String).alias(name)
        for name in (CODE, RETURNED)
    )
    frame = table.scan().select(
        ROW_NUMBER,
        table.key().alias(ID),
        pl.col(STATUS).cast(pl.String),
        code,
        *(pl.col(name).cast(pl.String) for name in (SENT, PREVIOUS)),
        returned,
    )
    try:
        yield from frame.collect_batches(chunk_size=rows)
    except pl.exceptions.PolarsError as exc:
        raise table.read_error(exc) from None


@dataclass(frozen=True, slots=True)
class RevertPlan:
    """One batch's revert: rows to send, rows that cannot be reverted (invalid), and rows with
    nothing to revert (unchanged)."""

    to_send: list[PlannedUpdate]
    invalid: list[RowOutcome]
    unchanged: pl.DataFrame  # ROW_NUMBER, conversation_id, sent_metadata


def plan_batch(batch: pl.DataFrame, *, blank_added_keys: bool) -> RevertPlan:
    to_send: list[PlannedUpdate] = []
    invalid: list[RowOutcome] = []
    nothing: list[int] = []
    for number, conversation_id, status, code, sent, previous, returned in batch.iter_rows():
        unsure = status in _UNSURE_STATUSES and code in MAY_HAVE_APPLIED
        if not (status == Status.UPDATED.value or unsure) or not sent:
            nothing.append(number)
            continue
        if previous is None:
            if unsure and code != OUTCOME_UNKNOWN:
                # --backup reads before it sends: a failed row with no before-image failed on
                # its read, and its update never left.
                nothing.append(number)
            else:
                invalid.append(_unrevertable(number, conversation_id, sent, NO_BEFORE_IMAGE))
            continue
        try:
            row = revert_row(
                sent, previous, returned, blank_added_keys=blank_added_keys, unsure=unsure
            )
        except ValueError:  # an edited results file: not JSON text any more
            invalid.append(_unrevertable(number, conversation_id, sent, UNREADABLE_IMAGE))
            continue
        if not row.target:
            nothing.append(number)
            continue
        target, expect = _text(row.target), _text(row.expect)
        to_send.append(PlannedUpdate(number, conversation_id, target, expect, whole=row.whole))
    unchanged = batch.filter(pl.col(ROW_NUMBER).is_in(nothing)).select(
        ROW_NUMBER, ID, pl.lit(None, dtype=pl.String).alias(SENT)
    )
    return RevertPlan(to_send, invalid, unchanged)


_WHY = {
    NO_BEFORE_IMAGE: "the run kept no before-image of this row (sent without --backup): nothing "
    "to put back",
    UNREADABLE_IMAGE: "sent_metadata or previous_metadata is not JSON text: nothing to put back",
}


def _unrevertable(number: int, conversation_id: str, sent: str, code: str) -> RowOutcome:
    """A row of the results that cannot be reverted (``code``: why): ``invalid``."""
    return RowOutcome(
        row_number=number,
        conversation_id=conversation_id,
        status=Status.INVALID,
        error_type="invalid_input",
        error_code=code,
        error_message=_WHY[code],
        sent_metadata=sent,
    )


def kept_keys(table: InputTable, rows: int, *, blank_added_keys: bool) -> dict[str, int]:
    """Per key the run added, on how many conversations it stays after the revert."""
    kept: Counter[str] = Counter()
    if blank_added_keys:
        return {}
    for batch in batches(table, rows):
        updated = batch.filter(_sent(batch.columns) & pl.col(PREVIOUS).is_not_null())
        for sent, previous, returned in updated.select(SENT, PREVIOUS, RETURNED).iter_rows():
            if sent:
                with contextlib.suppress(ValueError):  # such a row is invalid in the plan
                    # An outcome_unknown row's too: if it was applied, they stay.
                    kept.update(revert_row(sent, previous, returned, blank_added_keys=False).kept)
    return dict(kept.most_common())


def _text(metadata: Mapping[str, object]) -> str:
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))
