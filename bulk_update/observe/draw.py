"""What the command draws for a person: the progress bar on a terminal, the progress log lines
without one, and the tables of ``history`` and ``status``; one way of writing a duration for all
of them. What the cells say is decided elsewhere (``summary.Progress``, ``history``)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bulk_update.observe.summary import Progress

__all__ = ["duration", "print_table", "progress_reporter"]

log = logging.getLogger("bulk_update")
# Without a progress bar (no TTY, or --quiet), a progress log line this often.
PROGRESS_LOG_INTERVAL_S = 10.0


def duration(seconds: float) -> str:
    """A duration as people read it: ``2m05s``, ``1h02m03s``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Bar:
    """A rich progress bar on stderr, from the first report on (a run that stops before any
    leaves no empty bar behind). Log lines are printed above it, never glued onto it. The rate
    and time left count the rows sent by this run, not rows a resumed run skipped."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, progress: Progress) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as RichProgress

        if self._bar is None:
            self._bar = RichProgress(
                TextColumn("[bold]bulk-update"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[left]}"),
                TextColumn("{task.fields[counts]}"), console=Console(stderr=True),
                redirect_stderr=True, redirect_stdout=False, transient=False,
            )  # fmt: skip
            self._task = self._bar.add_task("rows", total=progress.total, rate="", left="",
                                            counts="")  # fmt: skip
            self._bar.start()
        rate = progress.sent / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        left_rows = progress.total - progress.done
        left = f"{duration(left_rows / rate)} left" if rate > 0 and left_rows > 0 else ""
        counts = " ".join(f"{k}={v}" for k, v in sorted(progress.counts.items()))
        self._bar.update(self._task, completed=progress.done, total=progress.total,
                         rate=f"{rate:.0f} rows/s", left=left, counts=counts)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class ProgressLog:
    """Without a bar (no TTY, or --quiet): a ``progress`` log line every so often."""

    def __init__(self) -> None:
        self._last = 0.0

    def __call__(self, progress: Progress) -> None:
        if progress.elapsed_s - self._last < PROGRESS_LOG_INTERVAL_S:
            return
        self._last = progress.elapsed_s
        log.info(
            "progress %d/%d",
            progress.done,
            progress.total,
            extra={"event": "progress", "done": progress.done, "total": progress.total,
                   "counts": progress.counts, "requests": progress.requests},
        )  # fmt: skip

    def close(self) -> None:
        pass


def progress_reporter(*, quiet: bool) -> Bar | ProgressLog:
    """The bar on a terminal unless ``quiet``, else the log lines."""
    return Bar() if not quiet and sys.stderr.isatty() else ProgressLog()


def aligned(columns: tuple[str, ...], cells: list[tuple[str, ...]]) -> str:
    """A plain table, each column as wide as its widest cell (for a pipe, grep, a log)."""
    table = [columns, *cells]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    )


def print_table(
    columns: tuple[str, ...],
    cells: list[tuple[str, ...]],
    *,
    title: str,
    json_text: str | None = None,
    hint: str = "",
    empty: str | None = None,
) -> None:
    """``json_text`` where given (--json); else on a terminal a rich table with ``title`` (and
    ``hint`` under it), elsewhere the cells aligned as plain text (and ``hint`` after a blank
    line); ``empty`` instead of a table without cells, where given."""
    if json_text is not None:
        print(json_text)
    elif not cells and empty is not None:
        print(empty)
    elif sys.stdout.isatty() and cells:
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, title=title)
        for row in cells:
            table.add_row(*row)
        Console().print(table)
        if hint:
            print(hint)
    else:
        print(aligned(columns, cells) + (f"\n\n{hint}" if hint else ""))
