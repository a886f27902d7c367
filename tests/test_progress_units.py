"""The progress screens' pure pieces, table-driven: the rate and time left (none from the first
instant, none from rows a resumed run counted done), and the bar's line fitted to a width."""

from __future__ import annotations

import pytest

from bulk_update.observe.draw import BAR_MAX, BAR_MIN, LABEL, fit, rate_text
from bulk_update.observe.progress import ESTIMATE_AFTER_S, Tally, estimate
from bulk_update.observe.summary import Progress
from bulk_update.outcome import Status


@pytest.mark.parametrize(
    ("sent", "seconds", "left", "expected"),
    [
        (0, 60.0, 100, (None, None)),  # nothing sent: nothing to tell
        (3, 0.2, 20_000, (None, None)),  # the first instant: no "3 rows/s 2h07m12s left"
        (100, ESTIMATE_AFTER_S - 0.1, 100, (None, None)),
        (100, 10.0, 50, (10.0, 5.0)),
        (100, 10.0, 0, (10.0, None)),  # nothing left: no time left
    ],
)
def test_estimate(
    sent: int, seconds: float, left: int, expected: tuple[float | None, float | None]
) -> None:
    assert estimate(sent, seconds, left) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_resumed_run_counts_its_earlier_rows_done_but_not_in_its_rate() -> None:
    clock, shown = Clock(), list[Progress]()
    tally = Tally(20_000, shown.append, clock=clock)
    tally.resume({Status.UPDATED: 19_000, Status.FAILED: 3})
    clock.now += 30  # the store opened, the input read: start-up is no sending
    tally.sent = 2
    tally.add(Status.UPDATED, 2)
    first = shown[-1]
    assert (first.done, first.resumed) == (19_005, 19_003)
    assert first.counts == {"updated": 19_002, "failed": 3}
    assert (first.rows_per_s, first.seconds_left) == (None, None)
    clock.now += 10
    tally.sent = 102  # 100 more rows in 10 s: 10 rows/s, whatever was resumed
    tally.add(Status.UPDATED, 100)
    last = shown[-1]
    assert last.rows_per_s == pytest.approx(10.0)
    assert last.seconds_left == pytest.approx((20_000 - 19_105) / 10)


def _progress(**fields: object) -> Progress:
    values: dict[str, object] = {
        "done": 503, "total": 20_000, "counts": {"updated": 500, "failed": 3}, "requests": 510,
        "elapsed_s": 12.0, "sent": 503, "rows_per_s": 41.9, "seconds_left": 465.0,
    }  # fmt: skip
    values.update(fields)
    return Progress(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "42 rows/s"),
        ({"rows_per_s": 0.46}, "0.5 rows/s"),
        ({"rows_per_s": None}, "estimating"),
        ({"rows_per_s": None, "done": 20_000}, ""),
    ],
)
def test_rate_text(fields: dict[str, object], expected: str) -> None:
    assert rate_text(_progress(**fields)) == expected


@pytest.mark.parametrize(
    ("width", "expected"),
    [
        (200, (LABEL, BAR_MAX, "503/20000 42 rows/s 7m45s left failed=3 updated=500")),
        (80, (LABEL, 16, "503/20000 42 rows/s 7m45s left failed=3 updated=500")),
        (70, (LABEL, 18, "503/20000 42 rows/s 7m45s left failed=3")),
        (60, (LABEL, 17, "503/20000 42 rows/s 7m45s left")),
        (45, (LABEL, 0, "503/20000 42 rows/s 7m45s left")),  # the numbers before the bar
        (35, (LABEL, 0, "503/20000 42 rows/s")),
        (30, (LABEL, 0, "503/20000")),
        (12, ("", 0, "503/20000")),
        (5, ("", 0, "503/20000")),  # done/total whole, whatever the width
    ],
)
def test_the_bar_line_fits_the_width(width: int, expected: tuple[str, int, str]) -> None:
    label, bar, text = fit(_progress(), width)
    assert (label, bar, text) == expected
    used = len(label) + bar + len(text) + 2  # one column apart
    assert used <= width or (label, bar) == ("", 0)
    assert bar == 0 or bar >= BAR_MIN


def test_the_bar_line_while_estimating() -> None:
    shown = fit(_progress(rows_per_s=None, seconds_left=None), 80)
    assert shown == (LABEL, 26, "503/20000 estimating failed=3 updated=500")


def test_the_progress_log_line_gives_the_rate_and_time_left_once_there_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bulk_update.observe.draw import PROGRESS_LOG_INTERVAL_S, ProgressLog

    log = ProgressLog()
    with caplog.at_level("INFO", logger="bulk_update"):
        log(_progress(rows_per_s=None, seconds_left=None, elapsed_s=PROGRESS_LOG_INTERVAL_S))
        log(_progress(elapsed_s=2 * PROGRESS_LOG_INTERVAL_S))
    first, second = caplog.records
    assert first.getMessage() == "progress 503/20000 (estimating)"
    assert (first.rows_per_s, first.seconds_left) == (None, None)  # type: ignore[attr-defined]
    assert second.getMessage() == "progress 503/20000 (42 rows/s, 7m45s left)"
    assert (second.rows_per_s, second.seconds_left) == (41.9, 465)  # type: ignore[attr-defined]
