"""How a run went: progress while it runs, the summary and exit code at the end."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bulk_update.exitcodes import ExitCode
from bulk_update.outcome import ROW_FAILURES, Status
from bulk_update.stop import Stop

__all__ = [
    "Bound",
    "JobSummary",
    "Progress",
    "ProgressCallback",
    "exit_code_for",
    "per_second",
    "warnings_for",
]

log = logging.getLogger("bulk_update")
# Keys named in the one-line summary at most (the log names them all).
KEY_NOTES_SHOWN = 5


def per_second(rate: float) -> str:
    """A rate as the bar, the log and the summary say it: ``8.3``, ``0.5``, ``20``."""
    return f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"


@dataclass(frozen=True, slots=True)
class Bound:
    """Which of the two bounds on the sending rate holds it, from what the sender knows: the
    ``rpm`` given (requests a minute; a job's ``shards`` share it, so each gets its part while
    they all run) or ``concurrency`` requests in flight, each taking ``latency_s`` (the
    requests' mean latency so far): concurrency ÷ latency requests a second. The server's 429s
    and rate headers slow the job below both; the 429s are counted elsewhere."""

    rpm: int
    concurrency: int
    latency_s: float
    shards: int = 1

    @property
    def by_rpm(self) -> float:
        """Requests a second ``rpm`` allows (this shard's part while every shard runs)."""
        return self.rpm / 60 / self.shards

    @property
    def by_concurrency(self) -> float:
        return self.concurrency / self.latency_s

    @property
    def limit(self) -> str:
        """``rpm`` or ``concurrency``: the lower bound (rpm when they are equal)."""
        return "rpm" if self.by_rpm <= self.by_concurrency else "concurrency"

    def __str__(self) -> str:
        """``limited by rpm 500 (8.3 requests/s); concurrency 4 at 200 ms would allow 20``."""
        each = " each" if self.shards > 1 else ""
        rpm = f"rpm {self.rpm}" + (f" shared by {self.shards} shards" if self.shards > 1 else "")
        concurrency = f"concurrency {self.concurrency} at {self.latency_s * 1000:.0f} ms"
        rpm_allows, concurrency_allows = per_second(self.by_rpm), per_second(self.by_concurrency)
        if self.limit == "rpm":
            return (
                f"limited by {rpm} ({rpm_allows} requests/s{each}); {concurrency} would allow "
                f"{concurrency_allows}"
            )
        return (
            f"limited by {concurrency} ({concurrency_allows} requests/s); {rpm} would allow "
            f"{rpm_allows}{each}"
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """What the progress callback gets: rows finished so far (``unprocessed`` ones are not),
    of ``total``, and by status in ``counts``; ``resumed`` of them were finished by earlier
    runs, ``sent`` rows were sent by this one. ``rows_per_s`` and ``seconds_left``: this
    run's sending rate and the time left at it, None until there is enough of it to tell
    (``progress.ESTIMATE_AFTER_S``; no time left once no row is). ``bound``: which bound
    limits the sending (``Bound``), None until there is a rate."""

    done: int
    total: int
    counts: dict[str, int]
    requests: int
    elapsed_s: float
    resumed: int = 0
    sent: int = 0
    rows_per_s: float | None = None
    seconds_left: float | None = None
    bound: Bound | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class JobSummary:
    """How a run went. ``as_dict()`` is small and JSON-safe (an Airflow XCom)."""

    counts: dict[str, int]
    total_rows: int
    requests_sent: int
    elapsed_s: float
    output: str
    errors_output: str | None
    exit_code: int
    store: str | None = None  # the job's store (where its runs, outcomes and state live)
    dry_run: bool = False
    fatal_error: str | None = None
    sent_this_run: int = 0
    stopped_by: str | None = None  # SIGTERM or SIGINT
    job_name: str | None = None
    warnings: tuple[str, ...] = ()  # said in the summary; they do not change the exit code
    reads_sent: int = 0  # of requests_sent: conversations read before their update
    # Per key: the conversations this run gave a key they did not have (a check: would give).
    added_keys: dict[str, int] = field(default_factory=dict)
    # A revert: per key the reverted run added, the conversations it stays on.
    kept_keys: dict[str, int] = field(default_factory=dict)
    # Which bound limited the sending (None: too little of it to tell, or nothing sent).
    bound: Bound | None = None
    resource: str = "conversations"  # what the job updates (resources.py)

    @property
    def rows_per_s(self) -> float:
        return self.sent_this_run / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "total_rows": self.total_rows,
            "requests_sent": self.requests_sent,
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.rows_per_s, 2),
            "output": self.output,
            "errors_output": self.errors_output,
            "store": self.store,
            "exit_code": int(self.exit_code),
            "dry_run": self.dry_run,
            "fatal_error": self.fatal_error,
            "stopped_by": self.stopped_by,
            "job_name": self.job_name,
            "warnings": list(self.warnings),
            "reads_sent": self.reads_sent,
            "added_keys": dict(self.added_keys),
            "kept_keys": dict(self.kept_keys),
            "limited_by": None if self.bound is None else str(self.bound),
            "resource": self.resource,
        }

    def key_notes(self) -> list[str]:
        """What the run did (or would do) to the conversations' set of keys: keys cannot be
        removed through the API, so a key added by mistake is there for good. One note for the
        keys added, one for the keys a revert leaves; each names its first KEY_NOTES_SHOWN
        keys (the log has every one)."""
        notes = []
        if self.added_keys:
            verb = "would add" if self.dry_run else "added"
            notes.append(f"{verb} {_keys(self.added_keys, 'to')}; keys cannot be removed")
        if len(self.kept_keys) == 1:
            notes.append(
                f"{_keys(self.kept_keys, 'stays on')} (the run added it; keys cannot be "
                "removed; --blank-added-keys sets it to '')"
            )
        elif self.kept_keys:
            notes.append(
                f"{_keys(self.kept_keys, 'on', head='keys stay: ')} (the run added them; keys "
                "cannot be removed; --blank-added-keys sets them to '')"
            )
        return notes

    def same_command(self) -> str:
        """What the same command does after a stop: a run resumes from its store; a dry run
        keeps nothing (a check's reads go with its scratch store), so it starts over."""
        if self.dry_run:
            return "a dry run keeps nothing: the same command starts it over"
        return "re-run the same command to resume"

    def line(self) -> str:
        """The one-line summary that ends every run on stderr."""
        order = [s.value for s in Status]
        counts = " ".join(f"{s}={self.counts[s]}" for s in order if self.counts.get(s))
        reads = f" ({self.reads_sent} reads)" if self.reads_sent else ""
        text = (
            f"bulk-update: {self.total_rows} rows: {counts or 'none'}; "
            f"{self.requests_sent} requests{reads}, {self.rows_per_s:.1f} rows/s, "
            f"{self.elapsed_s:.1f}s; exit {int(self.exit_code)}"
        )
        if self.dry_run:
            text += f"; would send {self.counts.get(Status.PLANNED.value, 0)}"
        if self.fatal_error:
            text += f"; stopped: {self.fatal_error}"
        if self.stopped_by:
            text += f"; stopped by {self.stopped_by} ({self.same_command()})"
        for note in self.key_notes():
            text += f"; {note}"
        for warning in self.warnings:
            text += f"; warning: {warning}"
        if self.bound is not None:
            text += f"; {self.bound}"
        return text

    def log(self) -> None:
        for key, count in self.added_keys.items():
            log.info(
                "%s key '%s' to %s; keys cannot be removed",
                "would add" if self.dry_run else "added",
                key,
                conversations(count),
                extra={"event": "adds_key", "key": key, "conversations": count},
            )
        for key, count in self.kept_keys.items():
            log.warning(
                "key '%s' stays on %s: the reverted run added it, and keys cannot be removed "
                "(--blank-added-keys sets it to '')",
                key,
                conversations(count),
                extra={"event": "kept_key", "key": key, "conversations": count},
            )
        for warning in self.warnings:
            log.warning("%s", warning, extra={"event": "warning"})
        log.info("job finished", extra={"event": "finish", **self.as_dict()})


def exit_code_for(
    counts: Mapping[str, int], stop: Stop | None = None, *, limited: bool = False
) -> ExitCode:
    """A run that finished is 0 unless rows failed or were invalid: rows it left
    ``unprocessed`` on purpose (``limited``: --limit) are no failure. A stopped run says why.
    Rows left ``unprocessed`` with neither a stop nor a limit are a defect of the job's, never
    a clean finish (70)."""
    if stop is not None and stop.signal is not None:
        return ExitCode.for_signal(stop.signal)  # 130 for SIGINT, 143 for SIGTERM
    if stop is not None and stop.error is not None:
        return ExitCode.INTERNAL
    if stop is not None and stop.fatal is not None:
        return stop.fatal.exit_code
    if counts.get(Status.UNPROCESSED.value, 0) and not limited:
        return ExitCode.INTERNAL
    if any(n and Status(s) in ROW_FAILURES for s, n in counts.items()):
        return ExitCode.ROWS_FAILED
    return ExitCode.OK


NO_ROWS_WARNING = "the input has no data rows (a header only)"


def warnings_for(total: int, unknown: int = 0) -> tuple[str, ...]:
    """What the summary warns of: an input without rows; rows whose update was sent when the
    run stopped, their answer never read (``unknown``)."""
    warnings = [NO_ROWS_WARNING] if total == 0 else []
    if unknown:
        warnings.append(
            f"{unknown} row{'s were' if unknown != 1 else ' was'} sent but the job stopped "
            "before the answer (outcome_unknown): the server may have applied "
            f"{'them' if unknown != 1 else 'it'}; the next run sends "
            f"{'them' if unknown != 1 else 'it'} again"
        )
    return tuple(warnings)


def conversations(count: int) -> str:
    return f"{count} conversation{'' if count == 1 else 's'}"


def _keys(per_key: Mapping[str, int], verb: str, *, head: str | None = None) -> str:
    """``key 'a' <verb> 3 conversations`` for one key; ``keys 'a' <verb> 3 conversations, 'b'
    <verb> 1 conversation and 4 more keys (see the log)`` for more (``head``: instead of
    ``key ``/``keys ``, for a verb that must agree with its subject: ``keys stay: 'a' on 3
    conversations, ...``)."""
    shown = [f"'{key}' {verb} {conversations(count)}" for key, count in per_key.items()]
    if head is None:
        head = "key " if len(shown) == 1 else "keys "
    text = head + ", ".join(shown[:KEY_NOTES_SHOWN])
    if len(shown) > KEY_NOTES_SHOWN:
        text += f" and {len(shown) - KEY_NOTES_SHOWN} more keys (see the log)"
    return text
