"""The progress screens' pure pieces, table-driven: the rate and time left (none from the first
instant, none from rows a resumed run counted done), and the bar's line fitted to a width."""

from __future__ import annotations

import pytest

from bulk_update.observe.draw import BAR_MAX, BAR_MIN, LABEL, fit, rate_text
from bulk_update.observe.progress import ESTIMATE_AFTER_S, Tally, estimate
from bulk_update.observe.summary import Bound, Progress
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


@pytest.mark.parametrize(
    ("bound", "limit", "expected"),
    [
        (Bound(500, 4, 0.2), "rpm",  # the trial's task: 8.3 rows/s where 20 were possible
         "limited by rpm 500 (8.3 requests/s); concurrency 4 at 200 ms would allow 20"),
        (Bound(100_000, 4, 0.25), "concurrency",
         "limited by concurrency 4 at 250 ms (16 requests/s); rpm 100000 would allow 1667"),
        (Bound(1200, 4, 0.2, shards=4), "rpm",  # each shard's part while the 4 run
         "limited by rpm 1200 shared by 4 shards (5.0 requests/s each); concurrency 4 at 200 ms "
         "would allow 20"),
        (Bound(6000, 2, 0.4, shards=2), "concurrency",
         "limited by concurrency 2 at 400 ms (5.0 requests/s); rpm 6000 shared by 2 shards "
         "would allow 50 each"),
        (Bound(1200, 4, 0.2), "rpm", "limited by rpm 1200 (20 requests/s); concurrency 4 at "
         "200 ms would allow 20"),  # equal: the rpm, the one a user sets for the API's sake
    ],
)  # fmt: skip
def test_which_bound_limits_the_sending(bound: Bound, limit: str, expected: str) -> None:
    assert (bound.limit, str(bound)) == (limit, expected)


def test_the_tally_tells_the_bound_once_it_tells_a_rate() -> None:
    """From the requests' mean latency, with the run's rpm, concurrency and shards; none
    before ESTIMATE_AFTER_S of sending (as the rate), none without limits or a latency."""
    clock, shown = Clock(), list[Progress]()
    tally = Tally(1000, shown.append, limits=(500, 4, 1), clock=clock)
    assert tally.bound() is None  # nothing sent
    for latency in (0.1, 0.3):
        tally.sent += 1
        tally.answered(latency)
        tally.add(Status.UPDATED)
    tally.answered(None)  # a row sent nothing: no latency
    assert shown[-1].bound is None  # the first instant
    clock.now += ESTIMATE_AFTER_S
    tally.sent += 40
    tally.add(Status.UPDATED, 40)
    assert shown[-1].bound == Bound(500, 4, 0.2) == tally.bound()
    assert Tally(1000, None, clock=clock).bound() is None  # no limits: a caller's own tally


def test_the_progress_log_says_the_bound_first_then_each_minute_or_when_it_changes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bulk_update.observe.draw import PROGRESS_LOG_INTERVAL_S, ProgressLog

    rpm, concurrency = Bound(500, 4, 0.2), Bound(500, 4, 0.6)
    log, step = ProgressLog(), PROGRESS_LOG_INTERVAL_S
    with caplog.at_level("INFO", logger="bulk_update"):
        for n, bound in enumerate([rpm, rpm, rpm, rpm, rpm, rpm, rpm, concurrency], start=1):
            log(_progress(elapsed_s=n * step, bound=bound))
    said = [r.getMessage().partition("; ")[2].removesuffix(")") for r in caplog.records]
    assert said == [
        str(rpm),
        "",
        "",
        "",
        "",
        "",
        str(rpm),  # the first line, then 60 s later
        "limited by concurrency 4 at 600 ms (6.7 requests/s); rpm 500 would allow 8.3",
    ]
    assert [r.limited_by for r in caplog.records] == ["rpm"] * 7 + ["concurrency"]  # type: ignore[attr-defined]
    assert caplog.records[0].getMessage() == f"progress 503/20000 (42 rows/s, 7m45s left; {rpm})"
