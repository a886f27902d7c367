"""Why a job stops early: the one place that knows.

The job owns one ``Stop``. A signal (SIGTERM, SIGINT) or a fatal answer (a refused key or
quota, a circuit breaker that gave up, a streak of rows failing alike) sets it once; the first
reason of each kind is kept. The sender reads it (no retry after a stop), the pipeline takes no
new rows, and the results say why the rows never reached were not sent.
"""

from __future__ import annotations

import asyncio
import signal as signals
from dataclasses import dataclass, field

from bulk_update.exceptions import FatalApiError

# Why a stopped run did not reach the rows it never sent: (error_code, error_message), or None.
StopReason = tuple[str, str] | None


@dataclass
class Stop:
    signal: signals.Signals | None = None
    fatal: FatalApiError | None = None
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

    def on_fatal(self, error: FatalApiError) -> bool:
        """A fatal answer; True if it is the first."""
        if self.fatal is not None:
            return False
        self.fatal = error
        self.event.set()
        return True

    def reason(self) -> StopReason:
        """What the rows a stopped run never reached say in the results."""
        if self.signal is not None:
            return ("interrupted", f"not sent: the job was stopped by {self.signal.name}")
        if self.fatal is not None:
            code = self.fatal.error_code or "fatal_error"
            return (code, f"not sent: the job stopped: {self.fatal}")
        return None
