"""``python -m bulk_update`` and the ``bulk-update`` command: the process's first moments.

The command's libraries (polars, numpy, pyarrow, httpx2 …) take 0.4 s and more to load. A
SIGINT or SIGTERM arriving meanwhile used to meet Python's defaults: a ``KeyboardInterrupt``
traceback out of whichever import it landed in, or a kill. Here both are taken over before
anything else is loaded: until a command takes them over itself (a job routes them to its stop,
``stop.routed``, and puts this back after), one ends the process at once with the conventional
exit code (130, 143) and one line; nothing has been recorded or sent. So this module loads only
the standard library's ``signal``, and the package's ``__init__`` nothing until asked for a name.
What remains is Python's own start, before this module runs (the interpreter, its ``site``
imports: 40-60 ms on a loaded machine), which keeps Python's defaults (README, Known limits).
"""

from __future__ import annotations

import contextlib
import os
import signal
from types import FrameType


def _stop(signum: int, frame: FrameType | None) -> None:
    """SIGINT or SIGTERM outside a job: one line, and out with 128 + the signal's number (as
    ``ExitCode.for_signal``, not loaded this early). ``os.write``: the handler may run inside a
    ``print`` of the main thread, and a buffered stream is not reentrant."""
    with contextlib.suppress(OSError):  # no stderr to say it on: the exit code says it
        os.write(2, f"bulk-update: stopped by {signal.Signals(signum).name}\n".encode())
    raise SystemExit(128 + signum)


def console() -> None:
    """The ``bulk-update`` command: signals taken over, then the CLI loaded and run."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    from bulk_update.cli import console as run_command

    run_command()


if __name__ == "__main__":
    console()
