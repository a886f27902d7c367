"""Outputs that are safe to open and never destroy what the run needs."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import httpx2
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bulk_update import JobConfig, run_job_async, spreadsheet
from bulk_update.exceptions import ConfigError
from tests.conftest import StartEmulator
from tests.helpers import ID, by_row, cli, store_runs

FORMULAS = ("=1+1", "+1", "-5", "@SUM(A1)", "\tx")


def raw_cells(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def test_csv_outputs_run_no_formulas_and_round_trip(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    rows = [(ID(i), value) for i, value in enumerate(FORMULAS)]
    rows.append(('=HYPERLINK("http://evil")', "=2+2"))  # invalid ID, formula value
    with source.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("conversation_id", "note"), *rows])
    emu = start_emulator("--preload", str(source))
    base = ("--base-url", emu.base_url)
    run = cli("run", str(source), "--output", str(tmp_path / "r.csv"), "--errors-output",
              str(tmp_path / "e.csv"), *base)  # fmt: skip
    assert run.returncode == 1, run.stderr
    for written in ("r.csv", "e.csv"):
        cells = raw_cells(tmp_path / written)
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], written
    results = by_row(tmp_path / "r.csv")
    assert results[6]["conversation_id"] == '\'=HYPERLINK("http://evil")'
    for i, value in enumerate(FORMULAS):  # the server got the exact text
        assert emu.admin(f"conversations/{ID(i)}")["metadata"] == {"note": value}
    # Parquet and JSONL keep the exact text.
    for fmt in (".parquet", ".jsonl"):
        exact = cli("run", str(source), "--output", str(tmp_path / f"r{fmt}"), *base)
        assert exact.returncode == 1
        assert by_row(tmp_path / f"r{fmt}")[6]["conversation_id"] == '=HYPERLINK("http://evil")'
    # The errors file, fixed in place and fed back, sends its values exactly as they were.
    errors = pl.read_csv(tmp_path / "e.csv", infer_schema=False)
    assert errors.rows() == [("6", "'=HYPERLINK(\"http://evil\")", "'=2+2", "invalid",
                              "invalid_id", errors["error_message"][0])]  # fmt: skip
    fixed = errors.with_columns(conversation_id=pl.lit(ID(0)))
    fixed.write_csv(tmp_path / "fixed.csv")
    again = cli("run", str(tmp_path / "fixed.csv"), "--output", str(tmp_path / "r2.csv"), *base)
    assert again.returncode == 0, again.stderr
    # row_number (and status, error_code, error_message) are not metadata.
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {"note": "=2+2"}


def test_outputs_never_overwrite_the_input(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"conversation_id,a\n{ID(1)},v\n")
    before = source.read_bytes()
    same = cli("run", str(source), "--output", str(source))
    assert same.returncode == 2
    assert "is the input: refusing to overwrite it" in same.stderr
    (tmp_path / "b.csv").write_text(f"conversation_id,a\n{ID(2)},v\n")
    globbed = cli("validate", str(tmp_path / "*.csv"), "--output", str(tmp_path / "b.csv"))
    assert globbed.returncode == 2
    errors_on_input = cli("run", str(source), "--output", str(tmp_path / "r.csv"),
                          "--errors-output", str(source))  # fmt: skip
    assert errors_on_input.returncode == 2
    assert "--errors-output" in errors_on_input.stderr
    both = cli("validate", str(source), "--output", str(tmp_path / "r.csv"), "--errors-output",
               str(tmp_path / "r.csv"))  # fmt: skip
    assert both.returncode == 2
    assert "same file" in both.stderr
    metrics_on_input = cli("run", str(source), "--output", str(tmp_path / "r.csv"),
                           "--metrics-file", str(source))  # fmt: skip
    assert metrics_on_input.returncode == 2
    assert "--metrics-file" in metrics_on_input.stderr
    assert "is the input" in metrics_on_input.stderr
    metrics_on_results = cli("run", str(source), "--output", str(tmp_path / "r.csv"),
                             "--metrics-file", str(tmp_path / "r.csv"))  # fmt: skip
    assert metrics_on_results.returncode == 2
    assert "--metrics-file is the same file as --output" in metrics_on_results.stderr
    assert source.read_bytes() == before


def _api(request: httpx2.Request) -> httpx2.Response:
    """Every conversation exists, and an update sets what it is sent."""
    metadata = json.loads(request.content)["metadata"] if request.method == "POST" else {}
    body = {"id": request.url.path.rsplit("/", 1)[-1], "object": "conversation",
            "created_at": 1, "metadata": metadata}  # fmt: skip
    return httpx2.Response(200, json=body)


@pytest.mark.parametrize(
    ("options", "store"),
    [
        ({"errors_output": "out/r.sqlite-x.csv"}, "out/r.sqlite"),
        ({"state_dir": "out", "job_name": "r.csv"}, "out/r.csv.sqlite"),
        ({"errors_output": "out/r.sqlite.csv", "job_name": "r"}, "out/r.sqlite"),
    ],
)
def test_results_and_the_store_never_meet(
    tmp_path: Path, options: dict[str, str], store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store is NAME.sqlite and a results path ends in .csv, .parquet or .jsonl: near misses
    are fine, and the store is left whole (a run writes each file where it belongs, and a
    resume reads the store back)."""
    monkeypatch.chdir(tmp_path)
    Path("in.csv").write_text(f"conversation_id,a\n{ID(1)},v\n")
    config = JobConfig(input="in.csv", output="out/r.csv", base_url="https://api.example/v1",
                       api_key="sk-safety", **options)  # type: ignore[arg-type]  # fmt: skip
    assert config.store_path() == Path(store)
    transport = httpx2.MockTransport(_api)
    assert asyncio.run(run_job_async(config, transport=transport)).exit_code == 0
    assert by_row(Path("out/r.csv"))[1]["status"] == "updated"
    errors = options.get("errors_output")
    if errors is not None:
        assert Path(errors).read_text().startswith("row_number,")  # a CSV: the header only
    assert [run["exit_code"] for run in store_runs(Path(store))] == [0]
    # The same command again: the store read back whole, the run already done.
    assert asyncio.run(run_job_async(config, transport=transport)).exit_code == 0
    assert by_row(Path("out/r.csv"))[1]["status"] == "updated"
    with pytest.raises(ConfigError, match="unknown results format"):
        JobConfig(input="in.csv", output="out/r.sqlite")


def test_the_journal_option_says_where_the_journal_went() -> None:
    with pytest.raises(ConfigError, match=r"journal is now in the job's store"):
        JobConfig.from_options({"input": "i.csv", "output": "o.csv", "journal": "j.sqlite"})


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(cells=st.lists(st.one_of(st.none(), st.text(st.sampled_from("'=+-@\t\r a1\"")))))
def test_the_spreadsheet_escape_round_trips_any_text(cells: list[str | None]) -> None:
    """Escaped, no cell starts a formula; unescaped (a CSV errors file fed back), every cell is
    what it was: a value that starts with ' itself (once stripped as if it were the escape)."""
    frame = pl.DataFrame({"v": cells}, schema={"v": pl.String})
    escaped = spreadsheet.escape(frame)["v"].to_list()
    assert not [c for c in escaped if c is not None and c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert spreadsheet.unescape(spreadsheet.escape(frame))["v"].to_list() == cells
