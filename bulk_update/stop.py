"""Why a job stops early, and how a signal reaches it: the one place that knows.

The job owns one ``Stop``. A signal (SIGTERM, SIGINT), a stop (``JobStopped``: a refused key or
quota, a circuit breaker that gave up, a streak of rows failing alike, a store that is gone or
full) or an internal error (a bug met by a worker) sets it once; the first reason of each kind
is kept. The sender reads it (no retry after a stop), the pipeline takes no new rows, and the
results say why the rows never reached were not sent.

``Signals`` routes SIGTERM and SIGINT for the whole job, phase by phase: no phase is left to
the default action, which would kill the process where it stands (in the middle of the results,
with the run never marked ended).

The stop policies on outcomes live here too: ``FailureStreak`` (--stop-after-failures). The
circuit breaker, which judges the API rather than the rows, is ``api/breaker.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signals
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

from bulk_update._constants import RETRYABLE_STATUSES
from bulk_update.exceptions import FatalApiError, JobStopped, first_line
from bulk_update.outcome import OUTCOME_UNKNOWN, RowOutcome

__all__ = ["JOB_STOPPED", "FailureStreak", "Interrupt", "Signals", "Stop", "StopReason", "routed"]

log = logging.getLogger("bulk_update")

# Why a stopped run did not reach the rows it never sent: (error_code, error_message), or None.
StopReason = tuple[str, str] | None
# The error_type of a row that a stop left unprocessed (never reached, or sent and unanswered).
JOB_STOPPED = "job_stopped"


@dataclass
class Stop:
    signal: signals.Signals | None = None
    fatal: JobStopped | None = None
    # An exception the job did not expect (a bug): the run stops, exit 70.
    error: BaseException | None = None
    # A second signal: stop at once, without writing the results.
    hard: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    def on_signal(self, signum: signals.Signals) -> bool:
        """A signal arrived; True if it is the first (drain), False for a second (hard)."""
        if self.signal is not None:
            self.hard = True
            return False
        self.signal = signum
        self.event.set()
        return True

    def on_fatal(self, error: JobStopped) -> bool:
        """A stop (a fatal answer, the store gone); True if it is the first."""
        if self.fatal is not None:
            return False
        self.fatal = error
        self.event.set()
        return True

    def on_error(self, error: BaseException) -> bool:
        """An internal error; True if it is the first."""
        if self.error is not None:
            return False
        self.error = error
        self.event.set()
        return True

    def stopped_by(self) -> str | None:
        """What the run's history says stopped it: the signal, the stop's code, or
        ``internal_error``."""
        if self.signal is not None:
            return self.signal.name
        if self.fatal is not None:
            return self.fatal.error_code or "fatal_error"
        if self.error is not None:
            return "internal_error"
        return None

    def message(self) -> str | None:
        """The stop as the summary says it (a signal is said apart)."""
        if self.fatal is not None:
            return str(self.fatal)
        if self.error is not None:
            return f"internal error ({type(self.error).__name__}: {first_line(self.error)})"
        return None

    def reason(self) -> StopReason:
        """What the rows a stopped run never reached say in the results."""
        if self.signal is not None:
            return ("interrupted", f"not sent: the job was stopped by {self.signal.name}")
        if self.fatal is not None:
            code = self.fatal.error_code or "fatal_error"
            return (code, f"not sent: the job stopped: {self.fatal}")
        if self.error is not None:
            return ("internal_error", f"not sent: the job stopped: {self.message()}")
        return None

    def unanswered(self) -> tuple[str, str]:
        """What a row says whose update was sent when the run stopped, its answer never read
        (error_code, error_message): the server may have applied it."""
        if self.signal is not None:
            why = f"by {self.signal.name}"
        else:
            why = f"({self.stopped_by() or 'early'})"
        return (
            OUTCOME_UNKNOWN,
            f"sent, but the job stopped {why} before the answer: the server may have applied "
            "it; the next run sends it again",
        )


Hook = Callable[[signals.Signals], None]


class Interrupt:
    """A signal delivered by hand, from any thread: for a caller that owns the process's
    signals and runs the job in a thread of its own (an Airflow operator, whose ``on_kill``
    Airflow calls from its SIGTERM handler). ``interrupt(SIGTERM)`` takes the very path the
    signal would (``Signals``): the first drains and writes the results (exit 143), a second
    stops at once. Called before the job is under way it waits for it; after the job ended it
    does nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deliver: Callable[[signals.Signals], None] | None = None
        self._pending: list[signals.Signals] = []
        self._ended = False

    def __call__(self, signum: signals.Signals = signals.SIGTERM) -> None:
        with self._lock:
            if self._ended:
                return
            if self._deliver is None:
                self._pending.append(signum)
                return
            deliver = self._deliver
        deliver(signum)

    def _attach(self, loop: asyncio.AbstractEventLoop, handle: Hook) -> None:
        def deliver(signum: signals.Signals) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the job ended
                loop.call_soon_threadsafe(handle, signum)

        with self._lock:
            self._deliver, pending, self._pending = deliver, self._pending, []
        for signum in pending:
            deliver(signum)

    def _detach(self) -> None:
        with self._lock:
            self._deliver, self._ended = None, True


@contextlib.contextmanager
def routed(interrupt: Interrupt) -> Iterator[None]:
    """SIGTERM and SIGINT given to ``interrupt`` for the block (main thread), outside the
    loop's own handling (``Signals``): before the job is under way, one stops it at its start;
    after it ended, one changes nothing. The CLI runs the job in this block: a SIGTERM a
    scheduler sends as a finished run exits must not turn its exit 1 into a kill."""

    def forward(signum: int, frame: object) -> None:
        interrupt(signals.Signals(signum))

    previous = {s: signals.signal(s, forward) for s in (signals.SIGTERM, signals.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signals.signal(signum, handler)


class Signals:
    """``with Signals(stop) as routed:`` SIGTERM and SIGINT set ``stop`` for the whole block.

    The first signal calls the current phase's ``graceful`` hook (``routed.phase(...)``), a
    second one sets ``Stop.hard`` and calls its ``at_once`` hook. Outside a phase a signal only
    sets the Stop, which the job reads at its next step. Handlers are installed on the running
    loop, in the main thread only (elsewhere, as in an Airflow task's thread, the caller owns
    the signals: they may pass an ``Interrupt``)."""

    def __init__(self, stop: Stop, interrupt: Interrupt | None = None) -> None:
        self.stop = stop
        self._interrupt = interrupt
        self._graceful: Hook | None = None
        self._at_once: Hook | None = None
        # The handlers the process had, put back at the end (the loop's removal would leave
        # the default: a signal just after the job would kill the process).
        self._installed: dict[signals.Signals, object] = {}

    def __enter__(self) -> Signals:
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for signum in (signals.SIGTERM, signals.SIGINT):
                previous = signals.getsignal(signum)
                try:
                    loop.add_signal_handler(signum, self._handle, signum)
                    self._installed[signum] = previous
                except (NotImplementedError, RuntimeError, ValueError):  # pragma: no cover
                    pass
        if self._interrupt is not None:
            self._interrupt._attach(loop, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._interrupt is not None:
            self._interrupt._detach()
        loop = asyncio.get_running_loop()
        for signum, previous in self._installed.items():
            loop.remove_signal_handler(signum)
            if previous is not None:  # None: not installed from Python; the default stays
                signals.signal(signum, previous)  # type: ignore[arg-type]
        self._installed = {}

    @contextlib.contextmanager
    def phase(self, *, graceful: Hook | None = None, at_once: Hook | None = None) -> Iterator[None]:
        """Route signals to these hooks while the block runs."""
        before = self._graceful, self._at_once
        self._graceful, self._at_once = graceful, at_once
        try:
            yield
        finally:
            self._graceful, self._at_once = before

    def _handle(self, signum: signals.Signals) -> None:
        if self.stop.on_signal(signum):
            if self._graceful is not None:
                self._graceful(signum)
            else:
                log.warning(
                    "%s: stopping after the current step", signum.name,
                    extra={"event": "stopping", "signal": signum.name},
                )  # fmt: skip
            return
        log.warning("second signal: stopping at once", extra={"event": "hard_stop"})
        if self._at_once is not None:
            self._at_once(signum)


class FailureStreak:
    """Rows failing one after another with the same non-retryable error code (a 404 for every
    row, a 400 for a metadata key the server refuses): not a row's problem but the job's. Once
    ``threshold`` such rows come in a row, ``observe`` says so, and the job stops (exit 3,
    resumable) instead of failing the rest of the file. Any other outcome resets the count;
    ``threshold`` 0 never stops."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self.code: str | None = None
        self.count = 0

    def observe(self, failed: bool, http_status: int | None, error_code: str | None) -> bool:
        """One row's outcome; True when it completes a streak of ``threshold``."""
        if not (failed and _refused_for_itself(http_status, error_code)):
            self.code, self.count = None, 0
            return False
        if error_code != self.code:
            self.code, self.count = error_code, 0
        self.count += 1
        return self.threshold > 0 and self.count == self.threshold

    def stopped(self, last: RowOutcome) -> FatalApiError:
        """What stops the job once the streak is complete (``last``: its last row)."""
        return FatalApiError(
            f"{self.count} rows in a row failed with {self.code} (the last: HTTP "
            f"{last.http_status}: {last.error_message}); stopping rather than fail the rest of "
            "the file (--stop-after-failures)",
            http_status=last.http_status,
            error_code="repeated_failure",
        )


def _refused_for_itself(http_status: int | None, error_code: str | None) -> bool:
    """A failure that retrying could not mend: the server's final word on this request (a 4xx
    other than 408, 409 and 429, a redirect, an answer for another ID)."""
    if http_status is None or error_code == "invalid_response":
        return False
    return 200 <= http_status < 500 and http_status not in RETRYABLE_STATUSES
