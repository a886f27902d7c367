"""``bulk-update history``: a job's runs, newest first, from its store (either backend)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bulk_update.config import JOB_NAME
from bulk_update.exceptions import ConfigError
from bulk_update.store import RunRecord, StoreLocation, open_existing_store
from bulk_update.store.url import ENV as STATE_URL_ENV
from bulk_update.store.url import check_url as check_state_url

COLUMNS = ("run", "started (UTC)", "ended", "results", "shard", "inv", "exit", "stopped by",
           "requests", "429s", "counts")  # fmt: skip


def job_location(job: str, state_dir: str | None, state_url: str | None) -> StoreLocation:
    """Where a job's store is: --state-url (or $BULK_UPDATE_STATE_URL), else
    ``STATE_DIR/JOB.sqlite`` (the current directory by default)."""
    if not JOB_NAME.fullmatch(job):
        raise ConfigError(f"--job {job!r}: not a job name")
    url = state_url or os.environ.get(STATE_URL_ENV) or None
    path = Path(state_dir or ".") / f"{job}.sqlite"
    return StoreLocation(path, None if url is None else check_state_url(url))


def runs(job: str, location: StoreLocation) -> list[RunRecord]:
    with open_existing_store(location, job) as store:
        return store.history(job)


def rows(records: list[RunRecord]) -> list[tuple[str, ...]]:
    """Each run as the table's cells."""

    def moment(text: str | None) -> str:
        return "" if text is None else text.replace("T", " ")[:19]

    return [
        (
            str(r.run_id) + (" (replaced)" if r.replaced else ""),
            moment(r.started_at),
            moment(r.ended_at) or "running or stopped",
            r.results,
            r.shard or "-",
            str(r.invocations),
            "" if r.exit_code is None else str(r.exit_code),
            r.stopped_by or "",
            str(r.requests),
            str(r.rate_limited),
            " ".join(f"{status}={n}" for status, n in sorted(r.counts.items())),
        )
        for r in records
    ]


def as_text(records: list[RunRecord]) -> str:
    """A plain aligned table (no TTY)."""
    table = [COLUMNS, *rows(records)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def as_json(records: list[RunRecord]) -> str:
    return json.dumps([record.as_dict() for record in records], indent=2)
