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
from bulk_update.send import Read, Sender, Sent
from bulk_update.server import revert
from bulk_update.server.check import (
    NOT_FOUND,
    REPLACED,
    Decision,
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
        server = parse_map(read.metadata)
        if update.whole:
            update = revert.settled(update, server)
        expect = parse_map(update.expect) if update.expect is not None else None
        decision = judge(update.metadata, server, expect=expect, force=self.force)
        if decision.action != "send":
            return self._not_sent(update, read, decision)
        adds = new_keys(update.metadata, server)
        if not self.write:
            if not update.whole:
                added.update(adds)
            return self._outcome(update, read, Status.PLANNED)
        sent = await self._sent(update, read, sender, journal)
        if sent.outcome.status is not Status.UPDATED or update.whole:
            return sent  # a whole before-image puts keys back: it adds none, replaces none
        added.update(adds)
        lost = replaced_keys(server, update.metadata, parse_map(sent.outcome.metadata))
        if lost and sent.fatal is None:
            return dataclasses.replace(sent, fatal=_replaced(update.conversation_id, lost))
        return sent

    def _outcome(self, update: PlannedUpdate, read: Read, status: Status, **values: Any) -> Sent:
        """The row's outcome with nothing sent: what the read found, with a run's before-image
        (the one an earlier invocation kept, if it sent the row already) or a check's
        ``server_metadata``."""
        if self.write:
            before = read.metadata if update.previous is None else update.previous
            values.setdefault("previous_metadata", before)
        else:
            values.setdefault("server_metadata", read.metadata)
        return Sent(
            RowOutcome(
                row_number=update.row_number,
                conversation_id=update.conversation_id,
                status=status,
                http_status=read.http_status,
                attempts=read.attempts,
                request_id=read.request_id,
                created_at=read.created_at,
                sent_metadata=update.sent_metadata,
                **values,
            ),
            latency_s=read.latency_s,
        )

    def _not_sent(self, update: PlannedUpdate, read: Read, decision: Decision) -> Sent:
        """A row the server's map already settles: ``unchanged``, or ``invalid`` against it."""
        if decision.action == "invalid":
            return self._outcome(update, read, Status.INVALID, error_type="server_check",
                                 error_code=decision.error_code,
                                 error_message=decision.error_message)  # fmt: skip
        if self.write and update.previous is not None:
            # Sent by an invocation that stopped before it recorded the answer.
            return self._outcome(update, read, Status.UPDATED, metadata=read.metadata)
        return self._outcome(update, read, Status.UNCHANGED, metadata=read.metadata)

    async def _sent(
        self, update: PlannedUpdate, read: Read, sender: Sender, journal: Journal
    ) -> Sent:
        """The update sent, its before-image committed first: the one an earlier invocation
        kept, if it sent the row already, else the map just read."""
        before = read.metadata if update.previous is None else update.previous
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
        return dataclasses.replace(sent, outcome=outcome)

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
