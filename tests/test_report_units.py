"""The report's data, one function at a time: a long run's timeline summed into buckets keeps
every request, the page stays small, and nothing in it can close its script element."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from bulk_update.observe.report import MAX_POINTS, RunData, latency_series, render, requests_series
from bulk_update.store import RunRecord, Second, report_frame


def _record(**options: object) -> RunRecord:
    return RunRecord(
        run_id=7, results="out/r.csv", shard="", input="in.csv", started_at="2026-11-29T00:00:00Z",
        ended_at="2026-11-29T10:00:00Z", invocations=1, counts={"updated": 10}, exit_code=0,
        total_rows=10, requests=10, rate_limited=0, stopped_by=None, host="h", pid=1,
        replaced=False, options=dict(options),
    )  # fmt: skip


def _long_run(seconds: int, rows: int) -> RunData:
    generator = random.Random(5)
    start = 1_800_000_000
    timeline = [
        Second(start + t, requests=generator.randint(0, 60), rate_limited=t % 97 == 0,
               retries=t % 13 == 0, errors=t % 31 == 0, rows=10, limit_rpm=3000.0,
               announced_rpm=5000.0)
        for t in range(seconds)
        if t % 50 != 7  # some quiet seconds: no row in the timeline
    ]  # fmt: skip
    frame = report_frame(
        [
            (n, "updated", 200, 1, None, None, start + n * seconds / rows,
             start + n * seconds / rows + 0.05, generator.randint(20, 400))
            for n in range(rows)
        ]
    )  # fmt: skip
    return RunData(_record(rpm=3000, api_key_present=False), timeline, frame)


def test_a_long_timeline_is_summed_into_buckets_and_keeps_every_request() -> None:
    data = _long_run(10 * 3600, 100_000)
    series = requests_series(data)
    width = series["bucket_s"][0]
    assert len(series["at"]) <= MAX_POINTS
    assert width == 18  # 36,000 s in at most 2,000 buckets
    sent = sum(s.requests for s in data.timeline)
    # Per second, to 4 decimals: the sums come back to within a request.
    assert sum(series["requests"]) * width == pytest.approx(sent, abs=1)
    marked = sum(v for v in series["rate_limited"] if v) * width
    assert marked == pytest.approx(sum(s.rate_limited for s in data.timeline), abs=1)
    assert series["configured"][0] == 50.0  # --rpm 3000, per second
    assert series["announced"][0] == round(5000 / 60, 4)
    assert series["at"] == sorted(series["at"])

    latency = latency_series(data)
    assert 100 <= len(latency["at"]) <= 200
    assert all(a <= b <= c for a, b, c in zip(latency["p50"], latency["p90"], latency["p99"],
                                              strict=True))  # fmt: skip

    page = render("nightly", data)
    # Ten hours of one row a second, 100,000 rows: still a small page.
    assert len(page.encode()) < 400_000


def test_a_run_without_requests_has_no_charts_to_draw() -> None:
    empty = RunData(_record(), [], report_frame([]))
    assert requests_series(empty) == {}
    assert latency_series(empty) == {}
    page = render("nightly", empty)
    data = page.split('id="report-data">')[1].split("</script>")[0]
    assert json.loads(data) == {"requests": {}, "latency": {}}


def test_text_from_the_store_cannot_close_the_page_s_script() -> None:
    hostile = "</script><script>alert(1)</script>"
    frame = report_frame([(1, "failed", 400, 1, "http_400", hostile, None, None, None)])
    data = RunData(_record(rpm=60, note=hostile), [], frame)
    page = render("nightly", data)
    assert "<script>alert(1)" not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page


def test_the_rpm_line_follows_each_invocation() -> None:
    from bulk_update.observe.report import configured_rps

    first = {"rpm": 600, "invoked_at": 1000.0}
    second = {"rpm": 6000, "invoked_at": 2000.0}
    resumed = {**second, "invocations": [first, second]}
    assert [configured_rps(resumed, t) for t in (1000, 1500, 2000, 2500)] == [10, 10, 100, 100]
    assert configured_rps({"rpm": 60}, 5) == 1  # a run of an older version: one invocation
    assert configured_rps({}, 5) is None


def test_a_shard_s_report_says_whose_limiter_and_rpm_it_draws() -> None:
    from bulk_update.observe.report import series_labels

    timeline = [Second(100, requests=4, limit_rpm=600.0), Second(101, requests=0),
                Second(102, requests=2, limit_rpm=600.0)]  # fmt: skip
    whole = _record(rpm=600)
    assert series_labels(whole) == {"limit": "limiter allowed", "configured": "--rpm"}
    shard = dataclasses.replace(whole, shard="0/2")
    assert series_labels(shard) == {
        "limit": "limiter allowed (whole job)",
        "configured": "--rpm (whole job)",
    }
    page = render("nightly", RunData(shard, timeline, report_frame([])))
    payload = json.loads(page.split('id="report-data">')[1].split("</script>")[0])
    assert payload["requests"]["labels"] == series_labels(shard)
    # The shard's own share beside the job's: 6 requests over 3 s is 120/min, 4 in its
    # busiest second 240/min.
    assert (
        "<td>rate</td><td>--rpm 600 for the whole job, shared by its running shards; this "
        "shard&#x27;s share: 120/min on average, 240/min at its busiest second</td>"
    ) in page
    assert "This run is a shard" in page
    plain = render("nightly", RunData(whole, timeline, report_frame([])))
    assert "<td>rate</td>" not in plain
    assert "This run is a shard" not in plain


def test_the_summary_counts_finished_rows_not_those_left_unprocessed() -> None:
    stopped = dataclasses.replace(_record(), counts={"updated": 4, "unprocessed": 6})
    page = render("nightly", RunData(stopped, [], report_frame([])))
    assert "<td>rows</td><td>4 of 10</td>" in page
