"""`bulk-update report`: a run's page, written by the real CLI from the job's store and opened
from its file in Debian's Chromium (headless, through Playwright): the charts render, the
tables say what the results say, nothing is fetched from the network, nothing is logged as an
error. One screenshot is kept in out/test-artifacts/ (not in git)."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bulk_update.observe.report import render
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import ID, cli, results, write_input
from tests.monitoring import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

JOB = "nightly"


def _utc(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def _near(tick: str, started: dt.datetime, ended: dt.datetime) -> bool:
    """Is a tick's time of day (HH:MM or HH:MM:SS, UTC) within a minute of the run's span?"""
    hour, minute, second = (int(part) for part in (tick + ":00")[:8].split(":"))
    for day in (started.date(), ended.date()):
        at = dt.datetime(day.year, day.month, day.day, hour, minute, second, tzinfo=dt.UTC)
        if started - dt.timedelta(minutes=1) <= at <= ended + dt.timedelta(minutes=1):
            return True
    return False


def _open_in_chromium(
    page_file: Path, screenshot: Path, timezone: str = "Asia/Kolkata"
) -> dict[str, Any]:
    """What the page shows once rendered in a browser whose local time is ``timezone``, and
    what went wrong while it was."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: `make test` installs Debian's chromium (apt-get)")
    errors: list[str] = []
    fetched: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # The browser's local time is not UTC (nor a whole hour from it): the page's times
            # must be UTC all the same.
            page = browser.new_page(viewport={"width": 1200, "height": 900},
                                    timezone_id=timezone)  # fmt: skip
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda request: fetched.append(request.url))
            page.goto(page_file.as_uri())
            page.wait_for_selector("#chart-latency .uplot", timeout=30_000)
            shown: dict[str, Any] = page.evaluate(
                """() => {
                  const text = (el) => el.textContent.trim();
                  const table = (id) => Array.from(
                    document.querySelectorAll(`#${id} tbody tr`),
                    (tr) => Array.from(tr.querySelectorAll("td"), text));
                  const charts = Array.from(document.querySelectorAll(".chart"), (chart) => ({
                    id: chart.id,
                    canvases: Array.from(chart.querySelectorAll("canvas"),
                                         (c) => [c.width, c.height]),
                    series: Array.from(chart.querySelectorAll(".u-legend .u-series .u-label"),
                                       text),
                    // Pixels drawn on the canvas (not the background): the lines are there.
                    inked: Array.from(chart.querySelectorAll("canvas"), (c) => {
                      const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                      let n = 0;
                      for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
                      return n;
                    }),
                  }));
                  // The time axis as drawn: its label and its ticks' labels.
                  const axes = {};
                  for (const [name, chart] of Object.entries(window.reportCharts)) {
                    axes[name] = { label: chart.axes[0].label, ticks: chart.axes[0]._values,
                                   legend: chart.series[0].label };
                  }
                  return { charts, axes, status: table("rows-by-status"),
                           errors: table("rows-by-error"), top: table("top-errors"),
                           summary: table("summary") };
                }"""
            )
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    shown["console_errors"] = errors
    shown["fetched"] = fetched
    return shown


def test_report_page_renders_the_run_in_a_real_browser(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 200)
    emu = start_emulator("--preload", str(source), "--api-key", TEST_KEY, "--latency-ms", "5",
                         "--error-rate", "0.1", "--random-seed", "3")  # fmt: skip
    with source.open("a") as f:
        f.write("not an id!,v,0\n" + ID(10**6) + ",v,0\n")
    output = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
               "--job-name", JOB, "--state-dir", str(tmp_path), "--rpm", "6000",
               "--concurrency", "4")  # fmt: skip
    assert done.returncode == 1, done.stderr
    page_file = tmp_path / "report.html"
    wrong = cli("report", "--job-name", JOB, "--state-dir", str(tmp_path), "--run", "99", "--output",
                str(page_file))  # fmt: skip
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1
    assert "--run 99: job 'nightly' has no such run (it has 1)" in wrong.stderr
    none = cli("report", "--job-name", "other", "--state-dir", str(tmp_path), "--output",
               str(page_file))  # fmt: skip
    assert none.returncode == 2
    assert "no store of job 'other'" in none.stderr
    assert not page_file.exists()
    written = cli(
        "report", "--job-name", JOB, "--state-dir", str(tmp_path), "--output", str(page_file)
    )
    assert written.returncode == 0, written.stderr
    assert f"run 1: {page_file}" in written.stderr
    html = page_file.read_text()
    assert len(html.encode()) < 3_000_000
    assert TEST_KEY not in html

    shown = _open_in_chromium(page_file, ARTIFACTS / "report.png")
    assert shown["console_errors"] == []
    # Opened from its file, the page fetched nothing else: no CDN, no font, no image.
    assert shown["fetched"] == [page_file.as_uri()]
    charts = {chart["id"]: chart for chart in shown["charts"]}
    requests, latency = charts["chart-requests"], charts["chart-latency"]
    assert requests["series"][1:] == ["requests/s", "limiter allowed", "server limit", "--rpm",
                                      "429s/s", "retries/s", "errors/s"]  # fmt: skip
    assert latency["series"][1:] == ["p50", "p90", "p99"]
    for chart in (requests, latency):
        assert chart["canvases"]
        assert all(w > 300 and h > 100 for w, h in chart["canvases"])
        assert max(chart["inked"]) > 1000

    counts = results(output).group_by("status").len()
    expected = {status: str(n) for status, n in counts.iter_rows()}
    assert dict(shown["status"]) == expected
    codes = {(status, code): int(n) for status, code, n in shown["errors"]}
    assert codes[("failed", "http_404")] == 1
    assert codes[("invalid", "invalid_id")] == 1
    # The top messages name example rows: the invalid ID is row 201, the unknown one row 202.
    examples = {row[0]: row[3] for row in shown["top"]}
    assert examples == {"invalid_id": "201", "http_404": "202"}
    summary = dict(shown["summary"])
    # The time axes in UTC, as the summary: labelled so, ticks on whole seconds or minutes
    # (never ":05.250"), each within the run's span in UTC (Kolkata's would be 5.5 h off).
    started, ended = (_utc(summary[f"{end} (UTC)"]) for end in ("started", "ended"))
    assert set(shown["axes"]) == {"requests", "latency"}
    for axis in shown["axes"].values():
        assert axis["label"] == "time (UTC)"
        assert axis["legend"] == "time (UTC)"
        assert axis["ticks"], axis
        for tick in axis["ticks"]:
            assert re.fullmatch(r"\d\d:\d\d(:\d\d)?", tick), axis
            assert _near(tick, started, ended), (tick, started, ended)
    assert summary["exit code"] == "1"
    assert summary["rows"] == "202 of 202"
    assert int(summary["requests"]) == emu.stats()["requests"]


def test_a_shard_s_report_tells_its_share_from_the_whole_job_s(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A shard's page draws the limiter's rate and --rpm as the whole job's (which they are),
    and its summary gives the shard's own share beside the job's --rpm."""
    source = tmp_path / "in.csv"
    write_input(source, 60)
    emu = start_emulator("--preload", str(source))
    done = cli("run", str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
               emu.base_url, "--job-name", JOB, "--state-dir", str(tmp_path), "--rpm", "1200",
               "--shard", "0/2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    page_file = tmp_path / "report.html"
    written = cli(
        "report", "--job-name", JOB, "--state-dir", str(tmp_path), "--output", str(page_file)
    )
    assert written.returncode == 0, written.stderr
    html = page_file.read_text()
    payload = json.loads(html.split('id="report-data">')[1].split("</script>")[0])
    assert payload["requests"]["labels"] == {
        "limit": "limiter allowed (whole job)",
        "configured": "--rpm (whole job)",
    }
    rate = re.search(r"<td>rate</td><td>([^<]*)</td>", html)
    assert rate is not None
    found = re.fullmatch(
        r"--rpm 1200 for the whole job, shared by its running shards; this shard&#x27;s "
        r"share: (\d+)/min on average, (\d+)/min at its busiest second",
        rate.group(1),
    )
    assert found is not None, rate.group(1)
    average, busiest = int(found.group(1)), int(found.group(2))
    assert 0 < average <= busiest
    assert "This run is a shard" in html


def test_a_long_run_s_axis_names_the_days_in_utc(tmp_path: Path) -> None:
    """Three days of a run, in a browser whose local time is eight hours behind UTC: the ticks
    are whole hours (HH:MM) and the days they cross (YYYY-MM-DD), all in UTC."""
    from tests.test_report_units import _long_run

    data = _long_run(3 * 86400, 2000)
    page_file = tmp_path / "long.html"
    page_file.write_text(render("nightly", data))
    shown = _open_in_chromium(page_file, ARTIFACTS / "report-long.png", "America/Los_Angeles")
    assert shown["console_errors"] == []
    first = dt.datetime.fromtimestamp(data.timeline[0].at, dt.UTC)
    days = {(first + dt.timedelta(days=n)).strftime("%Y-%m-%d") for n in range(4)}
    for axis in shown["axes"].values():
        ticks = axis["ticks"]
        dates = [tick for tick in ticks if re.fullmatch(r"\d{4}-\d\d-\d\d", tick)]
        hours = [tick for tick in ticks if re.fullmatch(r"\d\d:00", tick)]
        assert dates, ticks
        assert set(dates) <= days, ticks  # the UTC days, not Los Angeles'
        assert len(dates) + len(hours) == len(ticks), ticks
