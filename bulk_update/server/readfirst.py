"""A row whose conversation is read before anything is sent for it (``--backup``, a revert,
``validate --check-server``): the worker's step between the queue and the journal.

Read (GET, retried and rate limited like an update), judge the row against the map the server
holds (``check.judge``), then:

- ``unchanged`` / ``invalid``: nothing is sent;
- a check (``validate --check-server``): ``planned``, with the server's map;
- otherwise the before-image is committed first (an ``unprocessed`` outcome carrying
  ``previous_metadata``), then the update is sent, and its outcome carries the before-image too.
  A re-run after a crash between the two (or a stop with the update in flight:
  ``outcome_unknown``) finds the image: if the server then holds the row's values, the update
  was applied by the earlier invocation, and the row is ``updated`` with the image it kept;
  else it is sent again, still with the image kept first (a re-read may already hold some of
  the row's values, or someone's since).

A revert's row that puts back a whole before-image is ``settled`` against the map read first
(``revert.settled``): the whole image only where the server dropped keys of it.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bulk_update.exceptions import FatalApiError
from bulk_update.outcome import RowOutcome, Status
from bulk_update.plan import PlannedUpdate, clip
from bulk_update.send import Sender, Sent
from bulk_update.server import revert
from bulk_update.server.check import (
    NOT_FOUND,
    REPLACED,
    judge,
    new_keys,
    parse_map,
    replaced_keys,
)
from bulk_update.store import Journal

__all__ = ["ReadFirst"]


@dataclass(frozen=True, slots=True)
class ReadFirst:
    """``write``: False for a check (nothing is ever sent). ``force``: a revert writes over
    keys changed since the run."""

    write: bool
    force: bool = False

    async def handle(
        self, update: PlannedUpdate, sender: Sender, journal: Journal, added: Counter[str]
    ) -> Sent:
        """The row's outcome; ``added`` counts, per key, the conversations given a key they did
        not have (updated, or with ``write`` False, that would be)."""
        read = await sender.read(update)
        if read.failed is not None:
            return self._unread(read.failed)
        server_text = read.metadata
        server = parse_map(server_text)
        if update.whole:
            update = revert.settled(update, server)
        row = update.metadata
        # The before-image: the one an earlier invocation kept, if it sent the row already.
        before = server_text if update.previous is None else update.previous
        image: dict[str, Any] = (
            {"previous_metadata": before} if self.write else {"server_metadata": server_text}
        )
        common: dict[str, Any] = {
            "row_number": update.row_number,
            "conversation_id": update.conversation_id,
            "http_status": read.http_status,
            "attempts": read.attempts,
            "request_id": read.request_id,
            "created_at": read.created_at,
            "sent_metadata": update.sent_metadata,
        }
        expect = parse_map(update.expect) if update.expect is not None else None
        decision = judge(row, server, expect=expect, force=self.force)
        if decision.action == "unchanged":
            if self.write and update.previous is not None:
                # Sent by an invocation that stopped before it recorded the answer.
                return Sent(
                    RowOutcome(
                        status=Status.UPDATED,
                        metadata=server_text,
                        previous_metadata=update.previous,
                        **common,
                    ),
                    latency_s=read.latency_s,
                )
            return Sent(
                RowOutcome(status=Status.UNCHANGED, metadata=server_text, **image, **common),
                latency_s=read.latency_s,
            )
        if decision.action == "invalid":
            return Sent(
                RowOutcome(
                    status=Status.INVALID,
                    error_type="server_check",
                    error_code=decision.error_code,
                    error_message=decision.error_message,
                    **image,
                    **common,
                ),
                latency_s=read.latency_s,
            )
        adds = new_keys(row, server)
        if not self.write:
            if not update.whole:
                added.update(adds)
            return Sent(
                RowOutcome(status=Status.PLANNED, **image, **common), latency_s=read.latency_s
            )
        # The before-image commits before the update is sent.
        await journal.record(
            RowOutcome(
                row_number=update.row_number,
                conversation_id=update.conversation_id,
                status=Status.UNPROCESSED,
                attempts=read.attempts,
                sent_metadata=update.sent_metadata,
                previous_metadata=before,
            )
        )
        sent = await sender.send(
            dataclasses.replace(update, previous=before), attempts=read.attempts
        )
        outcome = dataclasses.replace(
            sent.outcome,
            attempts=sent.outcome.attempts + read.attempts,
            previous_metadata=before,
        )
        fatal = sent.fatal
        if outcome.status is Status.UPDATED:
            if not update.whole:  # a whole before-image puts keys back: it adds none
                added.update(adds)
            lost = replaced_keys(server, row, parse_map(outcome.metadata))
            if lost and fatal is None and not update.whole:
                fatal = _replaced(update.conversation_id, lost)
        return Sent(outcome, fatal, sent.latency_s)

    def _unread(self, failed: Sent) -> Sent:
        """A conversation that could not be read. A check calls an unknown one ``invalid``
        (the row is wrong); a run calls it ``failed`` (as an update's 404 would be)."""
        outcome = failed.outcome
        if not self.write and outcome.error_code == NOT_FOUND:
            outcome = dataclasses.replace(outcome, status=Status.INVALID)
        return dataclasses.replace(failed, outcome=outcome)


def _replaced(conversation_id: str, lost: list[str]) -> FatalApiError:
    shown = ", ".join(repr(clip(key)) for key in lost[:5])
    if len(lost) > 5:
        shown += f" and {len(lost) - 5} more"
    return FatalApiError(
        f"{conversation_id}: the server replaced its metadata instead of merging into it: "
        f"key(s) {shown} that it held and this row did not set are gone (the before-image is "
        "in the results' previous_metadata); stopping before more rows lose keys",
        http_status=None,
        error_code=REPLACED,
    )
