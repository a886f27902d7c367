"""What the command draws for a person: the progress bar on a terminal, the progress log lines
without one, and the tables of ``history`` and ``status``; one way of writing a duration for all
of them. What the cells say is decided elsewhere (``summary.Progress``, ``history``)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from bulk_update.observe.summary import per_second

if TYPE_CHECKING:
    from bulk_update.observe.summary import Bound, Progress

__all__ = ["duration", "fit", "print_table", "progress_reporter"]

log = logging.getLogger("bulk_update")
# Without a progress bar (no TTY, or --quiet), a progress log line this often; which bound
# limits the sending (``Bound``) in the first line that knows it, then in one line this often
# and in any line where the other bound has come to limit it.
PROGRESS_LOG_INTERVAL_S = 10.0
BOUND_LOG_INTERVAL_S = 60.0


def duration(seconds: float) -> str:
    """A duration as people read it: ``2m05s``, ``1h02m03s``."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# The bar's label, and its width in columns: as wide as BAR_MAX when there is room, never
# narrower than BAR_MIN (a narrower one tells little: the numbers go first).
LABEL = "bulk-update"
BAR_MAX, BAR_MIN = 40, 10


def rate_text(progress: Progress) -> str:
    """The rate as the bar shows it: ``12 rows/s``, ``0.5 rows/s``; ``estimating`` until
    there is one (nothing once every row is done)."""
    rate = progress.rows_per_s
    if rate is None:
        return "estimating" if progress.done < progress.total else ""
    return f"{per_second(rate)} rows/s"


def fit(progress: Progress, width: int) -> tuple[str, int, str]:
    """The bar's line in ``width`` columns: (the label, the bar's width, the text after it:
    done/total, the rate, the time left, the counts by status). What does not fit is left
    out, never cut: the counts first (the last ones first), then the bar below BAR_MIN
    (without it, the numbers still fit), the time left, the rate, the label; done/total
    always stays whole."""
    count = f"{progress.done}/{progress.total}"
    left = progress.seconds_left
    optional = [rate_text(progress), "" if left is None else f"{duration(left)} left"]
    optional = [part for part in optional if part]
    statuses = [f"{k}={v}" for k, v in sorted(progress.counts.items())]
    with_counts = [" ".join([count, *optional, *statuses[:n]]) for n in range(len(statuses), 0, -1)]
    candidates = [(tail, True) for tail in with_counts]
    for n in range(len(optional), -1, -1):
        tail = " ".join([count, *optional[:n]])
        candidates += [(tail, True), (tail, False)]
    # A rich progress line: the label, the bar and the text, one column apart.
    for tail, bar in candidates:
        room = width - len(LABEL) - len(tail) - 2
        if bar and room >= BAR_MIN:
            return LABEL, min(BAR_MAX, room), tail
        if not bar and room >= 0:
            return LABEL, 0, tail
    return "", 0, count


class Bar:
    """A rich progress bar on stderr, from the first report on (a run that stops before any
    leaves no empty bar behind), fitted to the terminal's width (``fit``). Log lines are
    printed above it, never glued onto it. The rate and time left are this run's sending
    (``Progress.rows_per_s``), not the rows a resumed run skipped."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._bar_column: Any = None

    def __call__(self, progress: Progress) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichProgress

        if self._bar is None:
            self._bar_column = BarColumn(bar_width=BAR_MAX)
            self._bar = RichProgress(
                TextColumn("[bold]{task.fields[label]}"), self._bar_column,
                TextColumn("{task.fields[text]}", markup=False), console=Console(stderr=True),
                redirect_stderr=True, redirect_stdout=False, transient=False,
            )  # fmt: skip
            self._task = self._bar.add_task("rows", total=progress.total, label="", text="")
            self._bar.start()
        label, bar_width, text = fit(progress, self._bar.console.width)
        self._bar_column.bar_width = bar_width
        self._bar.update(self._task, completed=progress.done, total=progress.total,
                         label=label, text=text)  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


class ProgressLog:
    """Without a bar (no TTY, or --quiet): a ``progress`` log line every so often, with the
    rate and the time left (``estimating`` before there are any), and at times which bound
    limits the sending."""

    def __init__(self) -> None:
        self._last = 0.0
        self._bound: tuple[float, str] | None = None  # when it was last said, and which

    def __call__(self, progress: Progress) -> None:
        if progress.elapsed_s - self._last < PROGRESS_LOG_INTERVAL_S:
            return
        self._last = progress.elapsed_s
        rate, left = progress.rows_per_s, progress.seconds_left
        said = rate_text(progress) + ("" if left is None else f", {duration(left)} left")
        bound = self._bound_to_say(progress)
        if bound is not None:
            said += f"; {bound}"
        log.info(
            "progress %d/%d%s",
            progress.done,
            progress.total,
            f" ({said})" if said else "",
            extra={"event": "progress", "done": progress.done, "total": progress.total,
                   "counts": progress.counts, "requests": progress.requests,
                   "rows_per_s": None if rate is None else round(rate, 2),
                   "seconds_left": None if left is None else round(left),
                   "limited_by": None if progress.bound is None else progress.bound.limit},
        )  # fmt: skip

    def _bound_to_say(self, progress: Progress) -> Bound | None:
        bound = progress.bound
        if bound is None:
            return None
        if self._bound is not None:
            when, limit = self._bound
            if limit == bound.limit and progress.elapsed_s - when < BOUND_LOG_INTERVAL_S:
                return None
        self._bound = (progress.elapsed_s, bound.limit)
        return bound

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
