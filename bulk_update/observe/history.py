"""``bulk-update history`` and ``status``: a job's runs, newest first, from its store (either
backend). ``status`` shows the runs going on or stopped before their end: how far each is, its
rate over the last minute, the time left at that rate, and who holds it.

Is a run that never recorded its end still running? On its own host (the same kernel boot and
PID namespace) its process is looked at: gone (no process has its pid, or the one that has it
started at another moment: the pid was used again) means interrupted, at once. Elsewhere only its
heartbeat tells: a run beats it in the store every ``--metrics-interval`` seconds; one whose
heartbeat is older than three of those and 5 s more is no longer running (killed, or its machine
lost).

A run's requests are counted by its heartbeats and at its end: an invocation killed -9 lost
those since its last heartbeat. ``history`` then shows at least what the run's committed
outcomes prove (``counted``), marked as a lower bound."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bulk_update._constants import DEFAULT_METRICS_INTERVAL_S, STORE_SEARCH_DEPTH
from bulk_update.config import check_job_name, check_one_of, given_or_environment
from bulk_update.exceptions import ConfigError
from bulk_update.observe.draw import duration
from bulk_update.store import RunRecord, RunStatus, Store, StoreLocation, lease, open_existing_store
from bulk_update.store.url import check_url as check_state_url

if TYPE_CHECKING:
    from bulk_update.store.core import Compacted

__all__ = [
    "COLUMNS",
    "STATUS_COLUMNS",
    "TABLE",
    "as_json",
    "at_least",
    "compact",
    "counted",
    "holder_gone",
    "is_running",
    "job_location",
    "rows",
    "runs",
    "status_as_json",
    "status_hint",
    "status_rows",
    "statuses",
]

STATUS_COLUMNS = ("run", "state", "results", "shard", "done", "rate", "left", "host", "pid",
                  "heartbeat")  # fmt: skip
# A heartbeat older than this many intervals, and STALE_MARGIN_S more, means the run is gone.
STALE_INTERVALS = 3
STALE_MARGIN_S = 5.0


def _moment(text: str | None) -> str:
    return "" if text is None else text.replace("T", " ")[:19]


# ``history``'s table: each column's heading and what a run's cell says.
TABLE: tuple[tuple[str, Callable[[RunRecord], str]], ...] = (
    (
        "run",
        lambda r: (
            str(r.run_id)
            + (" (replaced)" if r.replaced else "")
            + (" (compacted)" if r.compacted_at else "")
        ),
    ),
    ("started (UTC)", lambda r: _moment(r.started_at)),
    ("ended", lambda r: _moment(r.ended_at) or unended(r)),
    ("results", lambda r: r.results),
    ("shard", lambda r: r.shard or "-"),
    ("inv", lambda r: str(r.invocations)),
    ("exit", lambda r: "" if r.exit_code is None else str(r.exit_code)),
    ("stopped by", lambda r: r.stopped_by or ""),
    ("requests", lambda r: at_least(r.requests, r)),
    ("429s", lambda r: at_least(r.rate_limited, r)),
    ("counts", lambda r: " ".join(f"{status}={n}" for status, n in sorted(r.counts.items()))),
)
COLUMNS = tuple(heading for heading, _ in TABLE)


def job_location(job: str, state_dir: str | None, state_url: str | None) -> StoreLocation:
    """Where a job's store is, as ``run`` chose it (``config.given_or_environment``):
    --state-url; ``STATE_DIR/JOB.sqlite``; $BULK_UPDATE_STATE_URL; else the one ``JOB.sqlite``
    in the current directory or below it (``run`` puts it beside the results:
    ``out/JOB.sqlite``)."""
    check_job_name(job)
    given = {"state_dir": state_dir, "state_url": state_url}
    check_one_of(given)
    url = given_or_environment("state_url", given)
    if url is not None:
        return StoreLocation(Path(f"{job}.sqlite"), check_state_url(url))
    if state_dir is not None:
        return StoreLocation(Path(state_dir) / f"{job}.sqlite")
    return StoreLocation(find_store(job))


# How deep below the current directory a job's store is looked for, and what is never looked in.
SEARCH_DEPTH = STORE_SEARCH_DEPTH
NOT_SEARCHED = {".git", ".venv", "venv", "node_modules", "__pycache__"}


def find_store(job: str, root: Path = Path(".")) -> Path:
    """The one ``JOB.sqlite`` in ``root`` or up to SEARCH_DEPTH levels below (``./JOB.sqlite``
    if there is none: the caller says there is no store); ConfigError if there are several."""
    name = f"{job}.sqlite"
    if (root / name).is_file():
        return root / name
    found: list[Path] = []
    for directory, subdirectories, files in os.walk(root):
        depth = len(Path(directory).relative_to(root).parts)
        subdirectories[:] = sorted(
            d for d in subdirectories if d not in NOT_SEARCHED and depth < SEARCH_DEPTH
        )
        if name in files:
            found.append(Path(directory) / name)
    if len(found) > 1:
        shown = ", ".join(str(path) for path in found[:5])
        raise ConfigError(
            f"job {job!r} has a store in more than one place ({shown}): give --state-dir"
        )
    return found[0] if found else root / name


def runs(job: str, location: StoreLocation) -> list[RunRecord]:
    with open_existing_store(location, job) as store:
        found = store.history(job)
        if not found:
            raise ConfigError(f"{store.where}: no run of job {job!r}")
        return [counted(store, record) for record in found]


def compact(job: str, location: StoreLocation, keep_runs: int) -> Compacted:
    """``bulk-update compact``: the job's runs beyond each shard's last ``keep_runs`` lose their
    outcomes now, and the store's space is reclaimed (``Store.compact``)."""
    with open_existing_store(location, job, write=True) as store:
        if not store.history(job):
            raise ConfigError(f"{store.where}: no run of job {job!r}")
        return store.compact(job, keep_runs)


def counted(store: Store, record: RunRecord) -> RunRecord:
    """The run with its requests as ``history`` shows them: when one of its invocations did not
    record its end (killed -9, or going on now), its heartbeats counted only up to the last
    one; its committed outcomes prove at least the sum of their attempts. Both are lower
    bounds (a row in flight at the kill, or sent again by a later invocation, left no trace of
    its earlier attempts): the larger is shown (``at_least``)."""
    if record.requests_exact or record.compacted_at:  # compacted: its outcomes prove nothing
        return record
    proven = store.proven_requests(record.run_id)
    return dataclasses.replace(record, requests=max(record.requests, proven))


def at_least(count: int, record: RunRecord) -> str:
    """A count of the run's requests (or 429s) as shown: ``≥N`` when it is a lower bound."""
    return str(count) if record.requests_exact else f"\u2265{count}"


def holder_gone(record: RunRecord) -> bool:
    """Did the run stop before recording its end, its process on this host gone? Only a run
    held on this host (kernel boot, PID namespace) can be looked at (``lease.is_gone``)."""
    return record.ended_at is None and record.holder is not None and lease.is_gone(record.holder)


def elsewhere(record: RunRecord) -> bool:
    """Is the run held where its process cannot be looked at (another host or container, or an
    older version that did not record who held it)? Only its heartbeat tells then."""
    return record.holder is None or not lease.is_here(record.holder)


def unended(record: RunRecord) -> str:
    """``history``'s "ended" cell of a run that did not record its end."""
    if holder_gone(record):
        return f"interrupted (process {record.pid} gone)"
    return "running or stopped"


def rows(records: list[RunRecord]) -> list[tuple[str, ...]]:
    """Each run as the table's cells."""
    return [tuple(cell(record) for _, cell in TABLE) for record in records]


def as_json(records: list[RunRecord]) -> str:
    return json.dumps([record.as_dict() for record in records], indent=2)


def statuses(job: str, location: StoreLocation) -> list[RunStatus]:
    """The job's runs going on or unfinished; a stopped one's requests ``counted`` (a running
    one's are its last heartbeat's: no read of all its outcomes each time it is looked at)."""
    with open_existing_store(location, job) as store:
        if not store.history(job):
            raise ConfigError(f"{store.where}: no run of job {job!r}")
        return [
            status
            if is_running(status)
            else dataclasses.replace(status, record=counted(store, status.record))
            for status in store.status(job)
        ]


def is_running(status: RunStatus) -> bool:
    """Going on now: not ended, its process not seen gone, and its heartbeat fresh."""
    record = status.record
    if record.ended_at is not None or status.heartbeat_age_s is None or holder_gone(record):
        return False
    interval = status.record.options.get("metrics_interval", DEFAULT_METRICS_INTERVAL_S)
    stale = STALE_INTERVALS * float(interval) + STALE_MARGIN_S
    return status.heartbeat_age_s <= stale


def rows_done(status: RunStatus) -> int:
    if status.record.ended_at is None and status.rows_done is not None:
        return status.rows_done
    counts = status.record.counts
    return sum(counts.values()) - counts.get("unprocessed", 0)


def rate(status: RunStatus) -> float | None:
    """Rows a second over the run's last minute, while it runs (a stopped run has none)."""
    return status.rows_per_s if is_running(status) else None


def seconds_left(status: RunStatus) -> float | None:
    """At the run's rate over the last minute, how long its remaining rows take."""
    total, per_second = status.record.total_rows, rate(status)
    if total is None or not per_second:
        return None
    return max(0, total - rows_done(status)) / per_second


def state(status: RunStatus) -> str:
    record = status.record
    if is_running(status):
        return "running"
    if record.ended_at is None:
        if holder_gone(record):
            return f"interrupted: its process {record.pid} on this host is gone"
        if status.heartbeat_age_s is None:
            return "gone (no heartbeat)"
        return f"gone: no heartbeat for {duration(status.heartbeat_age_s)}"
    if record.exit_code == 0:
        return "ended, rows left by --limit"
    why = f" by {record.stopped_by}" if record.stopped_by else ""
    return f"stopped{why} (exit {record.exit_code})"


def status_rows(found: list[RunStatus]) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = []
    for s in found:
        r = s.record
        left, per_second = seconds_left(s), rate(s)
        total = "?" if r.total_rows is None else str(r.total_rows)
        table.append(
            (
                str(r.run_id),
                state(s),
                r.results,
                r.shard or "-",
                f"{rows_done(s)}/{total}",
                f"{per_second:.1f} rows/s" if per_second else "",
                "" if left is None else duration(left),
                r.host or "",
                "" if r.pid is None else str(r.pid),
                "" if s.heartbeat_age_s is None else f"{duration(s.heartbeat_age_s)} ago",
            )
        )
    return table


# Under the table: what an interrupted or gone run may be, how a run elsewhere is judged, and what
# to do about the runs that are not running.
INTERRUPTED_HINT = (
    "interrupted: killed (kill -9, out of memory) or crashed, seen at once on its own host."
)
GONE_HINT = (
    "gone: killed, or its machine or store connection lost (no heartbeat for 3 x "
    "--metrics-interval + 5 s)."
)
ELSEWHERE_HINT = (
    "A run held on another host or container (or recorded by an older version) is judged by its "
    "heartbeat only: shown gone 3 x --metrics-interval + 5 s after its last."
)
RESUME_HINT = "Run a stopped run's command again to resume it."
RESUME_GONE_HINT = "Run a stopped, interrupted or gone run's command again to resume it."


def is_gone(status: RunStatus) -> bool:
    """Not ended, and no heartbeat for too long (its process not seen gone: that is
    interrupted)."""
    record = status.record
    return not is_running(status) and record.ended_at is None and not holder_gone(record)


def status_hint(found: list[RunStatus]) -> str:
    """What to print under the table: what "interrupted" and "gone" mean when a run is so,
    that a run elsewhere is judged by its heartbeat, and how to resume ("" when every run is
    running on this host)."""
    interrupted = any(holder_gone(s.record) for s in found)
    gone = any(map(is_gone, found))
    hints = [INTERRUPTED_HINT] if interrupted else []
    hints += [GONE_HINT] if gone else []
    if any(s.record.ended_at is None and elsewhere(s.record) for s in found):
        hints.append(ELSEWHERE_HINT)
    if not all(is_running(s) for s in found):
        hints.append(RESUME_GONE_HINT if interrupted or gone else RESUME_HINT)
    return " ".join(hints)


def status_as_json(found: list[RunStatus]) -> str:
    """The runs as the table shows them, in numbers: the counts by status and ``rows_done``
    from the same heartbeat (or the run's end), the rate and time left only while it runs."""
    return json.dumps(
        [
            {
                **s.record.as_dict(),
                "state": "running" if is_running(s) else "stopped",
                "rows_done": rows_done(s),
                "rows_per_s": rate(s),
                "seconds_left": seconds_left(s),
                "heartbeat_age_s": s.heartbeat_age_s,
            }
            for s in found
        ],
        indent=2,
    )
