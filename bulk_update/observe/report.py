"""``bulk-update report``: one self-contained HTML page of a run, from the job's store.

The page needs no network to open: the charting library (uPlot 1.6.32, MIT, vendored in
``report_assets/``: 51 KB of JavaScript and 2 KB of CSS) and the run's data are inlined. uPlot
is made for time series: it draws tens of thousands of points on a canvas in milliseconds, has
no dependencies, and is a tenth of Chart.js and a hundredth of Plotly's single-file bundle
(4.6 MB), which would make every report a few MB before its data.

It shows

- requests per second over the run, against the configured ``--rpm``, the limit the server
  announced and the rate the job's limiter allowed, with the 429s, retries and errors of each
  second marked on the same time axis (from the store's timeline). A shard's run shows the
  limiter's rate and ``--rpm`` as what they are, the whole job's (its running shards share
  them at run time: a shard's share is the slots it claimed, its own requests per second);
- request latency percentiles (p50, p90, p99) over the run (from the rows' last requests);
- rows by status and by error code, the most frequent error messages with example row numbers;
- the run's summary and options (the store never holds the key or a password).

Every time on the page is UTC, as in the summary: the charts' time axis is labelled so, its
ticks on whole seconds, minutes, hours or days (a day's tick, or an hour's at midnight, names
the day).

A long run's timeline is summed into at most MAX_POINTS buckets, so the page stays small.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import polars as pl

from bulk_update.exceptions import ConfigError
from bulk_update.observe.history import at_least, counted
from bulk_update.store import RunRecord, Second, StoreLocation, open_existing_store

__all__ = [
    "MAX_POINTS",
    "RunData",
    "configured_rps",
    "latency_series",
    "render",
    "requests_series",
    "write",
]

# Points per time series at most (a longer run's seconds are summed into buckets).
MAX_POINTS = 2000
# Latency percentiles need samples: at most this many buckets.
MAX_LATENCY_POINTS = 200
TOP_ERRORS = 10
EXAMPLE_ROWS = 5
# Under a shard's requests chart: whose the job-wide lines are.
SHARD_NOTE = (
    " This run is a shard: the limiter's rate and --rpm are the whole job's, shared at run "
    "time by its running shards; this shard's share is what it sent (requests/s)."
)


@dataclass(frozen=True, slots=True)
class RunData:
    record: RunRecord
    timeline: list[Second]
    rows: pl.DataFrame  # store.REPORT_COLUMNS


def load(job: str, location: StoreLocation, run_id: int | None) -> RunData:
    """The run's record, timeline and rows: ``run_id``, or the job's newest run."""
    with open_existing_store(location, job) as store:
        runs = store.history(job)
        if not runs:
            raise ConfigError(f"job {job!r} has no run in its store")
        if run_id is None:
            record = runs[0]
        else:
            found = [r for r in runs if r.run_id == run_id]
            if not found:
                known = ", ".join(str(r.run_id) for r in runs[:10])
                raise ConfigError(f"--run {run_id}: job {job!r} has no such run (it has {known})")
            record = found[0]
        if record.compacted_at:
            raise ConfigError(
                f"--run {record.run_id}: its rows were compacted at {record.compacted_at} (the "
                "job keeps the outcomes of each shard's last --keep-runs runs); `bulk-update "
                "history` still shows its counts"
            )
        record = counted(store, record)
        return RunData(record, store.timeline(record.run_id), store.report_rows(record.run_id))


def _bucket_seconds(span: int, points: int) -> int:
    return max(1, math.ceil(span / points))


def requests_series(data: RunData) -> dict[str, Any]:
    """Per bucket (its start, Unix seconds): requests, 429s, retries and errors per second;
    the limiter's rate, the server's announced limit and --rpm, per second."""
    seconds = data.timeline
    if not seconds:
        return {}
    first, last = seconds[0].at, seconds[-1].at
    width = _bucket_seconds(last - first + 1, MAX_POINTS)
    frame = pl.DataFrame(
        [
            (s.at, s.requests, s.rate_limited, s.retries, s.errors, s.limit_rpm, s.announced_rpm)
            for s in seconds
        ],
        schema={"at": pl.Int64, "requests": pl.Int64, "rate_limited": pl.Int64,
                "retries": pl.Int64, "errors": pl.Int64, "limit_rpm": pl.Float64,
                "announced_rpm": pl.Float64},
        orient="row",
    )  # fmt: skip
    # Every bucket from the first to the last, so that a quiet stretch shows as zero.
    buckets = pl.DataFrame({"bucket": pl.int_range(0, (last - first) // width + 1, eager=True)})
    summed = (
        frame.with_columns(bucket=(pl.col("at") - first) // width)
        .group_by("bucket")
        .agg(
            pl.col("requests", "rate_limited", "retries", "errors").sum(),
            pl.col("limit_rpm", "announced_rpm").mean(),
        )
    )
    joined = buckets.join(summed, on="bucket", how="left").sort("bucket")
    counts = ("requests", "rate_limited", "retries", "errors")
    joined = joined.with_columns(
        *(pl.col(name).fill_null(0) / width for name in counts),
        pl.col("limit_rpm", "announced_rpm").forward_fill() / 60,
    )
    at = [first + b * width for b in joined["bucket"].to_list()]
    return {
        "at": at,
        "requests": _rounded(joined["requests"]),
        # Marks: only the buckets that had any (null draws nothing).
        "rate_limited": _marks(joined["rate_limited"]),
        "retries": _marks(joined["retries"]),
        "errors": _marks(joined["errors"]),
        "limit": _rounded(joined["limit_rpm"]),
        "announced": _rounded(joined["announced_rpm"]),
        "configured": [configured_rps(data.record.options, second) for second in at],
        "bucket_s": [width],
        "labels": series_labels(data.record),
    }


def series_labels(record: RunRecord) -> dict[str, str]:
    """The requests chart's names of the job-wide lines: a shard's run says they are the whole
    job's (its own share is its requests per second)."""
    whole = " (whole job)" if record.shard else ""
    return {"limit": f"limiter allowed{whole}", "configured": f"--rpm{whole}"}


def configured_rps(options: dict[str, Any], second: float) -> float | None:
    """The --rpm (per second) of the invocation that ran at ``second``: a run resumed with
    another --rpm has each invocation's options, with when it started (``invoked_at``)."""
    invocations = options.get("invocations") or [options]
    rpm = invocations[0].get("rpm")
    for invocation in invocations:
        started = invocation.get("invoked_at")
        if started is not None and float(started) <= second + 1:
            rpm = invocation.get("rpm")
    return None if rpm is None else round(float(rpm) / 60, 4)


def _rounded(column: pl.Series) -> list[float | None]:
    return [None if v is None else round(v, 4) for v in column.to_list()]


def _marks(column: pl.Series) -> list[float | None]:
    return [round(v, 4) if v else None for v in column.to_list()]


def latency_series(data: RunData) -> dict[str, list[Any]]:
    """Per bucket: p50, p90 and p99 of the rows' last request latency (ms)."""
    rows = data.rows.filter(
        pl.col("latency_ms").is_not_null() & pl.col("answered_at").is_not_null()
    )
    if rows.is_empty():
        return {}
    first = math.floor(rows["answered_at"].min())  # type: ignore[arg-type]
    last = math.floor(rows["answered_at"].max())  # type: ignore[arg-type]
    width = _bucket_seconds(last - first + 1, MAX_LATENCY_POINTS)
    per = (
        rows.with_columns(bucket=((pl.col("answered_at").floor().cast(pl.Int64) - first) // width))
        .group_by("bucket")
        .agg(
            p50=pl.col("latency_ms").quantile(0.5, interpolation="linear"),
            p90=pl.col("latency_ms").quantile(0.9, interpolation="linear"),
            p99=pl.col("latency_ms").quantile(0.99, interpolation="linear"),
        )
        .sort("bucket")
    )
    return {
        "at": [first + b * width for b in per["bucket"].to_list()],
        "p50": _rounded(per["p50"]),
        "p90": _rounded(per["p90"]),
        "p99": _rounded(per["p99"]),
    }


def status_counts(data: RunData) -> list[tuple[str, int]]:
    counts = data.record.counts or dict(data.rows.group_by("status").len().iter_rows())
    return sorted(counts.items(), key=lambda item: -item[1])


def error_codes(data: RunData) -> list[tuple[str, str, int]]:
    """(status, error code, rows), most rows first."""
    found = (
        data.rows.filter(pl.col("error_code").is_not_null())
        .group_by("status", "error_code")
        .len()
        .sort("len", "error_code", descending=[True, False])
    )
    return [(s, c, n) for s, c, n in found.iter_rows()]


def top_errors(data: RunData) -> list[tuple[str, str, int, list[int]]]:
    """The most frequent error messages: (error code, message, rows, example row numbers)."""
    found = (
        data.rows.filter(pl.col("error_message").is_not_null())
        .group_by("error_code", "error_message")
        .agg(rows=pl.len(), examples=pl.col("row_number").sort().head(EXAMPLE_ROWS))
        .sort("rows", "error_message", descending=[True, False])
        .head(TOP_ERRORS)
    )
    return [(c or "", m, n, list(e)) for c, m, n, e in found.iter_rows()]


def _table(table_id: str, header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    if not rows:
        return f'<p class="none" id="{table_id}">none</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _summary(record: RunRecord, timeline: list[Second]) -> list[tuple[str, str]]:
    # Rows finished: not those left unprocessed (a stopped run's), as the other screens count.
    done = sum(record.counts.values()) - record.counts.get("unprocessed", 0)
    return [
        ("run", str(record.run_id)),
        ("input", record.input or ""),
        ("results", record.results),
        ("shard", record.shard or "-"),
        ("started (UTC)", record.started_at),
        ("ended (UTC)", record.ended_at or "not ended"),
        ("invocations", str(record.invocations)),
        ("exit code", "" if record.exit_code is None else str(record.exit_code)),
        ("stopped by", record.stopped_by or ""),
        ("rows", f"{done} of {record.total_rows}" if record.total_rows else str(done)),
        ("requests", at_least(record.requests, record)),
        ("429s", at_least(record.rate_limited, record)),
        ("host, pid", f"{record.host or ''} {record.pid or ''}".strip()),
        *_shard_rate(record, timeline),
    ]


def _shard_rate(record: RunRecord, timeline: list[Second]) -> list[tuple[str, str]]:
    """A shard's line of the summary: --rpm is the whole job's budget, shared by its running
    shards; this shard's own share is what it sent (on average and at its busiest second)."""
    if not record.shard:
        return []
    busy = [s for s in timeline if s.requests]
    rpm = record.options.get("rpm")
    whole = f"--rpm {rpm:g} for the whole job" if isinstance(rpm, int | float) else "--rpm"
    if not busy:
        return [("rate", f"{whole}, shared by its running shards; this shard sent none")]
    span = busy[-1].at - busy[0].at + 1
    average = sum(s.requests for s in busy) / span * 60
    peak = max(s.requests for s in busy) * 60
    return [
        (
            "rate",
            f"{whole}, shared by its running shards; this shard's share: "
            f"{average:.0f}/min on average, {peak}/min at its busiest second",
        )
    ]


def _asset(name: str) -> str:
    return resources.files("bulk_update.observe").joinpath("report_assets", name).read_text("utf-8")


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element."""
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/")


def render(job: str, data: RunData) -> str:
    record = data.record
    payload = {"requests": requests_series(data), "latency": latency_series(data)}
    options = sorted((k, json.dumps(v)) for k, v in record.options.items())
    title = f"bulk-update: job {job}, run {record.run_id}"
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        '<h2>Requests per second</h2><div class="chart" id="chart-requests"></div>',
        '<p class="note">Marks: the 429s, retries and errors of each second. Lines: the rate '
        "the job's limiter allowed, the limit the server announced, and the configured --rpm "
        f"(per second).{SHARD_NOTE if record.shard else ''} Times are UTC.</p>",
        '<h2>Latency of each row\'s last request</h2><div class="chart" id="chart-latency"></div>',
        "<h2>Rows by status</h2>",
        _table("rows-by-status", ("status", "rows"), status_counts(data)),
        "<h2>Rows by error code</h2>",
        _table("rows-by-error", ("status", "error code", "rows"), error_codes(data)),
        "<h2>Top error messages</h2>",
        _table(
            "top-errors",
            ("error code", "message", "rows", "example rows"),
            [(c, m, n, ", ".join(map(str, e))) for c, m, n, e in top_errors(data)],
        ),
        "<h2>Summary</h2>",
        _table("summary", ("", ""), _summary(record, data.timeline)),
        "<h2>Options</h2>",
        _table("options", ("option", "value"), options),
    ]
    return _PAGE.format(
        title=html.escape(title),
        css=_asset("uPlot.min.css"),
        uplot=_asset("uPlot.iife.min.js"),
        body="\n".join(sections),
        data=_script_json(payload),
        script=_SCRIPT,
    )


def write(job: str, location: StoreLocation, run_id: int | None, output: str) -> RunData:
    data = load(job, location, run_id)
    page = render(job, data)
    target = Path(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_text(page, encoding="utf-8")
        partial.replace(target)
    except OSError as exc:
        raise ConfigError(f"--output {output}: {exc.strerror or exc}") from None
    return data


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; margin-top: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; vertical-align: top; }}
.note, .none {{ color: #666; }}
.chart {{ min-height: 50px; }}
</style></head>
<body>
{body}
<script type="application/json" id="report-data">{data}</script>
<script>{uplot}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  function width(el) { return Math.max(400, el.clientWidth || 1000); }
  function none(el, text) { var p = document.createElement("p");
    p.className = "none"; p.textContent = text; el.appendChild(p); }
  function marks(label, color) {
    return { label: label, stroke: color, fill: color, width: 0,
             paths: function () { return null; },
             points: { show: true, size: 8, stroke: color, fill: color } };
  }
  // Times are UTC, as the summary's: ticks on whole seconds, minutes, hours or days.
  function utc(ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); }
  var MINUTE = 60, HOUR = 3600, DAY = 86400;
  var INCRS = [1, 2, 5, 10, 15, 30, MINUTE, 2 * MINUTE, 5 * MINUTE, 10 * MINUTE, 15 * MINUTE,
               30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY,
               7 * DAY, 14 * DAY, 30 * DAY];
  function iso(ts) { return new Date(ts * 1e3).toISOString(); }
  function tick(ts, incr) {
    var text = iso(ts);
    // A day's ticks, and an hour tick at midnight, name the day.
    if (incr >= DAY || (incr >= HOUR && text.slice(11, 16) === "00:00")) {
      return text.slice(0, 10);
    }
    return incr >= MINUTE ? text.slice(11, 16) : text.slice(11, 19);
  }
  function timeAxis() {
    return { label: "time (UTC)", incrs: INCRS,
             values: function (u, splits, axis, space, incr) {
               return splits.map(function (ts) { return tick(ts, incr); }); } };
  }
  function timeSeries() {
    return { label: "time (UTC)", value: function (u, ts) {
      return ts == null ? "" : iso(ts).slice(0, 19).replace("T", " "); } };
  }
  var charts = window.reportCharts = {};
  var req = data.requests, el = document.getElementById("chart-requests");
  if (!req.at) { none(el, "no requests in this run"); } else {
    charts.requests = new uPlot({
      width: width(el), height: 320,
      tzDate: utc, scales: { x: { time: true } },
      axes: [timeAxis(), { label: "requests / s" }],
      series: [
        timeSeries(),
        { label: "requests/s", stroke: "#1f77b4", width: 1.5 },
        { label: req.labels.limit, stroke: "#2ca02c", dash: [6, 4] },
        { label: "server limit", stroke: "#9467bd", dash: [2, 3] },
        { label: req.labels.configured, stroke: "#7f7f7f", dash: [10, 4] },
        marks("429s/s", "#d62728"),
        marks("retries/s", "#ff7f0e"),
        marks("errors/s", "#8c564b")
      ]
    }, [req.at, req.requests, req.limit, req.announced, req.configured, req.rate_limited,
        req.retries, req.errors], el);
  }
  var lat = data.latency, el2 = document.getElementById("chart-latency");
  if (!lat.at) { none(el2, "no answered requests in this run"); } else {
    charts.latency = new uPlot({
      width: width(el2), height: 260,
      tzDate: utc, scales: { x: { time: true } },
      axes: [timeAxis(), { label: "ms" }],
      series: [
        timeSeries(),
        { label: "p50", stroke: "#1f77b4" },
        { label: "p90", stroke: "#ff7f0e" },
        { label: "p99", stroke: "#d62728" }
      ]
    }, [lat.at, lat.p50, lat.p90, lat.p99], el2);
  }
})();
"""
