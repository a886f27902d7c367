"""Formats people export (JSON Lines, TSV, any delimiter), Parquet values CSV cannot hold, and
the results and errors files of the runs a new user makes first: a canary, an empty export, a
retry of the failed rows in place. The real CLI against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import StartEmulator
from tests.helpers import ID, by_row, cli, results, write_input


def test_nested_parquet_values_and_a_csv_errors_file(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Lists, structs and binary cannot be sent: those rows are invalid (unsupported_type),
    and the CSV errors file carries such cells as JSON text (binary as hex). Exit 1, on every
    run, never an internal error."""
    source = tmp_path / "nested.parquet"
    pl.DataFrame(
        {
            "conversation_id": [ID(0), ID(1), ID(2), ID(3)],
            "tier": ["gold", "silver", "bronze", "tin"],
            "tags": [["a", "b"], None, [], None],
            "info": [None, {"k": 1, "v": "x"}, None, None],
            "blob": [None, None, None, b"\x00\xff"],
        }
    ).write_parquet(source)
    emu = start_emulator("--preload", str(source))
    output, errors = tmp_path / "results.csv", tmp_path / "errors.csv"
    args = ("run", str(source), "--output", str(output), "--errors-output", str(errors),
            "--base-url", emu.base_url)  # fmt: skip
    # Mapped by default, such columns make their rows invalid, and are named once before
    # sending with the --columns that leave them out.
    warning = (
        "columns 'tags' (a list), 'info' (a struct), 'blob' (binary) cannot be text: their rows "
        "with a value are invalid (metadata values are text); leave them out with --columns tier"
    )
    for _ in range(2):  # the re-run too
        done = cli(*args)
        assert done.returncode == 1, done.stderr
        assert f"WARNING {warning}\n" in done.stderr
        assert "internal error" not in done.stderr
        rows = by_row(output)
        assert [(rows[n]["status"], rows[n]["error_code"]) for n in (1, 2, 3, 4)] == [
            ("invalid", "unsupported_type"),
            ("invalid", "unsupported_type"),
            ("invalid", "unsupported_type"),  # an empty list is still a list
            ("invalid", "unsupported_type"),
        ]
        assert "is a list" in rows[1]["error_message"]
        assert "is a struct" in rows[2]["error_message"]
        assert "is binary" in rows[4]["error_message"]
        written = pl.read_csv(errors, infer_schema=False)
        assert written.columns == ["row_number", "conversation_id", "tier", "tags", "info",
                                   "blob", "status", "error_code", "error_message"]  # fmt: skip
        assert written["row_number"].to_list() == ["1", "2", "3", "4"]
        assert json.loads(written["tags"][0]) == ["a", "b"]
        assert written["tags"][2] == "[]"
        assert json.loads(written["info"][1]) == {"k": 1, "v": "x"}
        assert written["blob"][3] == "00ff"
    assert emu.stats()["requests"] == 0
    # A dry run writes the same errors file, streamed.
    dry = cli("validate", str(source), "--output", str(tmp_path / "plan.csv"), "--errors-output",
              str(tmp_path / "plan-errors.csv"))  # fmt: skip
    assert dry.returncode == 1, dry.stderr
    assert pl.read_csv(tmp_path / "plan-errors.csv", infer_schema=False).equals(written)


def test_a_clean_canary_exits_0(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """Rows --limit leaves unprocessed are no failure: exit 0 (the cron wrapper stays quiet)."""
    source = tmp_path / "in.csv"
    write_input(source, 40)
    emu = start_emulator("--preload", str(source))
    output = tmp_path / "canary.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
               "--limit", "5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "updated=5 unprocessed=35" in done.stderr
    statuses = results(output)["status"].to_list()
    assert statuses == ["updated"] * 5 + ["unprocessed"] * 35
    dry = cli("run", "--dry-run", str(source), "--output", str(tmp_path / "plan.csv"),
              "--limit", "5", "--job-name", "other")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    # The rest of the file, then: exit 0 with every row updated.
    rest = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    assert rest.returncode == 0, rest.stderr
    assert results(output)["status"].to_list() == ["updated"] * 40
    assert emu.stats()["by_operation"]["update"] == 40


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_header_only_input_warns_and_exits_0(
    start_emulator: StartEmulator, tmp_path: Path, command: str
) -> None:
    source = tmp_path / "empty-export.csv"
    source.write_text("conversation_id,tier\n")
    emu = start_emulator()
    extra = ("--base-url", emu.base_url) if command == "run" else ()
    done = cli(command, str(source), "--output", str(tmp_path / "r.csv"), *extra)
    assert done.returncode == 0, done.stderr
    summary = done.stderr.strip().splitlines()[-1]
    assert "0 rows" in summary
    assert "warning: the input has no data rows (a header only)" in summary
    assert results(tmp_path / "r.csv").height == 0


def test_retry_failed_sends_the_failed_rows_again_in_place(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    ids = write_input(source, 30)
    source.write_text(source.read_text() + "not-an-id,x,30\n")
    empty = start_emulator()  # no conversations yet: every update is a 404
    output, errors = tmp_path / "r.parquet", tmp_path / "e.csv"
    common = ("run", str(source), "--output", str(output), "--errors-output", str(errors))
    failing = cli(*common, "--base-url", empty.base_url)
    assert failing.returncode == 1, failing.stderr
    assert results(output)["status"].value_counts().sort("status").rows() == [
        ("failed", 30), ("invalid", 1),
    ]  # fmt: skip
    # The errors file traces every row back to the input.
    assert pl.read_csv(errors)["row_number"].to_list() == list(range(1, 32))
    emu = start_emulator("--preload", str(source))  # now the conversations exist
    plain = cli(*common, "--base-url", emu.base_url)  # failed rows are finished: none sent
    assert plain.returncode == 1
    assert emu.stats()["requests"] == 0
    retried = cli(*common, "--base-url", emu.base_url, "--retry-failed")
    assert retried.returncode == 1, retried.stderr  # the invalid row stays invalid
    rows = by_row(output)
    assert [rows[n]["status"] for n in range(1, 31)] == ["updated"] * 30
    assert rows[31]["status"] == "invalid"
    assert set(emu.stats(per_id=True)["updates_applied_by_id"]) == set(ids)
    assert pl.read_csv(errors)["row_number"].to_list() == [31]
    again = cli(*common, "--base-url", emu.base_url, "--retry-failed")  # nothing failed now
    assert again.returncode == 1
    assert sum(emu.stats(per_id=True)["updates_applied_by_id"].values()) == 30


def _rows(ids: list[str]) -> list[dict[str, object]]:
    return [{"conversation_id": c, "tier": f"00{i}", "score": 1.50} for i, c in enumerate(ids)]


@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_json_lines_input_is_read_as_text(
    start_emulator: StartEmulator, tmp_path: Path, suffix: str
) -> None:
    ids = [ID(i) for i in range(4)]
    source = tmp_path / f"export{suffix}"
    lines = [json.dumps(row) for row in _rows(ids[:3])]
    lines.append("")  # a blank line is no row: the next row is row 4
    # A key that first appears late, a null (no value), an object (never sent).
    lines.append(json.dumps({"conversation_id": ids[3], "tier": None, "late": {"a": 1}}))
    source.write_text("\n".join(lines) + "\n")
    preload = tmp_path / "ids.csv"
    preload.write_text("conversation_id\n" + "\n".join(ids) + "\n")
    emu = start_emulator("--preload", str(preload))
    output = tmp_path / "r.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    assert done.returncode == 1, done.stderr  # 'late' holds only objects: its row invalid
    assert "column 'late' is a JSON object: its rows with a value are invalid" in done.stderr
    assert "leave it out with --columns tier,score" in done.stderr
    assert results(output)["row_number"].to_list() == [1, 2, 3, 4]
    assert emu.admin(f"conversations/{ids[0]}")["metadata"] == {"tier": "000", "score": "1.5"}
    assert (by_row(output)[4]["status"], by_row(output)[4]["error_code"]) == (
        "invalid", "unsupported_type",
    )  # fmt: skip
    assert emu.admin(f"conversations/{ids[3]}")["metadata"] == {}


@pytest.mark.parametrize(
    ("name", "text", "extra"),
    [
        ("export.tsv", "conversation_id\ttier\tnote\n{id}\tgold\tsays, hi\n", ()),
        ("export.csv", "conversation_id;tier;note\n{id};gold;says, hi\n", ("--delimiter", ";")),
        ("export.txt", "conversation_id|tier|note\n{id}|gold|says, hi\n", ("--delimiter", "|")),
    ],
)
def test_tsv_and_other_delimiters(
    start_emulator: StartEmulator, tmp_path: Path, name: str, text: str, extra: tuple[str, ...]
) -> None:
    source = tmp_path / name
    source.write_text(text.format(id=ID(7)))
    preload = tmp_path / "ids.csv"
    preload.write_text(f"conversation_id\n{ID(7)}\n")
    emu = start_emulator("--preload", str(preload))
    done = cli("run", str(source), "--output", str(tmp_path / "r.csv"), "--base-url",
               emu.base_url, *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert emu.admin(f"conversations/{ID(7)}")["metadata"] == {"tier": "gold", "note": "says, hi"}


def test_unsupported_inputs_get_a_clear_message(tmp_path: Path) -> None:
    sheet = tmp_path / "export.xlsx"
    sheet.write_bytes(b"PK\x03\x04 a zip, as xlsx files are")
    done = cli("validate", str(sheet), "--output", str(tmp_path / "r.csv"))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"bulk-update: error: {sheet}: unsupported input format '.xlsx': use .csv, .tsv, "
        ".jsonl, .ndjson or .parquet (save the sheet as CSV)"
    )
    folder = tmp_path / "exports"
    folder.mkdir()
    done = cli("validate", str(folder), "--output", str(tmp_path / "r.csv"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"bulk-update: error: {folder}: is a directory, not an input file"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    done = cli("validate", str(empty), "--output", str(tmp_path / "r.csv"))
    assert done.returncode == 2
    assert done.stderr.strip() == f"bulk-update: error: {empty}: the file is empty: no JSON object"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"conversation_id": "conv_1", "a": "x"}\n{not json\n')
    done = cli("validate", str(broken), "--output", str(tmp_path / "r.csv"))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_fed_back_errors_file_keeps_the_first_inputs_row_numbers(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    long = "x" * 513
    source.write_text(f"conversation_id,note\n{ID(1)},ok\nbad id,fine\n{ID(3)},{long}\n")
    emu = start_emulator("--preload", str(source))
    first = tmp_path / "errors-1.csv"
    done = cli("run", str(source), "--output", str(tmp_path / "r1.csv"), "--errors-output",
               str(first), "--base-url", emu.base_url)  # fmt: skip
    assert done.returncode == 1
    fixed = pl.read_csv(first, infer_schema=False).with_columns(
        pl.when(pl.col("conversation_id") == "bad id").then(pl.lit(ID(2)))
        .otherwise(pl.col("conversation_id")).alias("conversation_id")
    )  # fmt: skip
    fixed.write_csv(tmp_path / "fixed.csv")
    second = tmp_path / "errors-2.csv"
    again = cli("run", str(tmp_path / "fixed.csv"), "--output", str(tmp_path / "r2.csv"),
                "--errors-output", str(second), "--base-url", emu.base_url)  # fmt: skip
    assert again.returncode == 1
    rows = pl.read_csv(second, infer_schema=False)
    # ID(2) is not on the server (404); row 3 is still too long: both under their first numbers.
    assert rows.select("row_number", "status", "error_code").rows() == [
        ("2", "failed", "http_404"), ("3", "invalid", "value_too_long"),
    ]  # fmt: skip
    assert rows.columns == ["row_number", "conversation_id", "note", "status", "error_code",
                            "error_message"]  # fmt: skip
    plan = tmp_path / "errors-3.csv"
    dry = cli("validate", str(tmp_path / "fixed.csv"), "--output", str(tmp_path / "p.csv"),
              "--errors-output", str(plan))  # fmt: skip
    assert dry.returncode == 1
    assert pl.read_csv(plan, infer_schema=False).select("row_number", "status").rows() == [
        ("3", "invalid"),
    ]


# Text that a path could change: a spreadsheet's formula starts, the escape itself, controls,
# quotes, numbers and JSON as text.
TRICKY_TEXT = [
    "'=literal", "'-7", "'", "''", "'plain", "=1+1", "+1", "-5", "@SUM(A1)", "\tx", "\rx",
    "a\r\nb", 'say "hi", then', " '=spaced", "007", "1.50", "-0.0", "1e3", "true",
    '{"a": 1.50}', '[{"d":1},2]', "2025-03-30T03:30:00.000000+0200", "é😀",
]  # fmt: skip


def _tricky_input(fmt: str, path: Path, ids: list[str]) -> None:
    """The same tricky values, one per row under key ``v`` (Parquet: one typed column each),
    for ``ids``: CSV text, JSON Lines as written (numbers, arrays, objects), Parquet typed."""
    import csv
    import datetime as dt
    import decimal

    if fmt == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["conversation_id", "v"])
            writer.writerows(zip(ids, TRICKY_TEXT, strict=False))
        return
    if fmt == ".jsonl":
        written = [json.dumps(text) for text in TRICKY_TEXT] + [
            "1e3", "-0.0", "1.0", "1.50", "123456789012345678901234567890", "true", "null",
            '[{"d":1},2]', '[1,"x"]', '{"a": 1.50, "b": [true, null]}', "9" * 600,
        ]  # fmt: skip
        lines = [
            f'{{"conversation_id": "{i}", "v": {v}}}\n' for i, v in zip(ids, written, strict=False)
        ]
        path.write_text("".join(lines), encoding="utf-8")
        return
    paris = dt.datetime(2025, 3, 30, 1, 30, tzinfo=dt.UTC)
    typed: dict[str, pl.Series] = {
        "zoned": pl.Series([paris]).dt.convert_time_zone("Europe/Paris"),
        "naive": pl.Series([dt.datetime(2025, 3, 30, 3, 30, 0, 500000)]),
        "nanos": pl.Series([dt.datetime(2025, 3, 30, 3, 30, 0, 1)]).cast(pl.Datetime("ns")),
        "date": pl.Series([dt.date(2025, 3, 30)]),
        "time": pl.Series([dt.time(3, 30, 0, 1)]),
        "duration": pl.Series([dt.timedelta(days=-1, seconds=5)]),
        "thousand": pl.Series([1e3]),
        "negative_zero": pl.Series([-0.0]),
        "one": pl.Series([1.0]),
        "small": pl.Series([1e-5]),
        "float32": pl.Series([0.1], dtype=pl.Float32),
        "big": pl.Series([2**63 - 1]),
        "unsigned": pl.Series([2**64 - 1], dtype=pl.UInt64),
        "decimal": pl.Series([decimal.Decimal("1.50")], dtype=pl.Decimal(10, 2)),
        "boolean": pl.Series([False]),
        "tags": pl.Series([["a", "b"]]),  # a list: invalid, on every path
        "nan": pl.Series([float("nan")]),  # invalid, on every path
        "text": pl.Series(["'=literal"]),
    }
    columns = [pl.Series("conversation_id", ids)]
    for k, (name, series) in enumerate(typed.items()):  # row k holds the k-th value
        before, after = (pl.Series([None] * n, dtype=series.dtype) for n in (k, len(ids) - k - 1))
        columns.append(pl.concat([before, series, after]).alias(name))
    pl.DataFrame(columns).write_parquet(path)


@pytest.mark.parametrize("fmt", [".csv", ".jsonl", ".parquet"])
def test_a_value_reaches_the_api_the_same_by_any_path(
    start_emulator: StartEmulator, tmp_path: Path, fmt: str
) -> None:
    """Tricky values (timestamps zoned and naive, dates, times, durations, 1e3, -0.0, 1.0, big
    integers, booleans, text that starts with ' = + - @, a tab or a CR, quotes, nested JSON)
    sent from the input directly; then every row forced to fail (a server without these
    conversations: 404) with its errors file and its results file in each format, each fed
    back as INPUT (the results file by its sent_metadata): the server ends up holding, for each
    row, exactly what the direct run made it hold (a zoned timestamp was sent in another form
    fed back, and a real leading ' was lost)."""
    rows = 40
    blocks = {"direct": 0, ".csv": 1, ".jsonl": 2, ".parquet": 3}
    known = tmp_path / "known.csv"
    known.write_text("conversation_id\n" + "".join(f"{ID(i)}\n" for i in range(rows * 4)))
    server = start_emulator("--preload", str(known))
    by_results = start_emulator("--preload", str(known))
    empty = start_emulator()  # every row fails there: 404, no such conversation

    def ids(block: int) -> list[str]:
        return [ID(block * rows + i) for i in range(rows)]

    def run(source: Path, emu: EmulatorProcess, *more: str) -> None:
        done = cli("run", str(source), "--output", str(tmp_path / f"r-{source.stem}.csv"),
                   "--base-url", emu.base_url, *more)  # fmt: skip
        assert done.returncode in (0, 1), done.stderr

    for block in blocks.values():
        _tricky_input(fmt, tmp_path / f"in{block}{fmt}", ids(block))
    run(tmp_path / f"in0{fmt}", server)
    for errors_format, block in blocks.items():
        if block == 0:
            continue
        errors, output = (
            tmp_path / f"e{block}{errors_format}",
            tmp_path / f"o{block}{errors_format}",
        )
        failed = cli("run", str(tmp_path / f"in{block}{fmt}"), "--output", str(output),
                     "--errors-output", str(errors), "--base-url", empty.base_url)  # fmt: skip
        assert failed.returncode == 1, failed.stderr
        statuses = set(results(output)["status"].to_list())
        assert statuses <= {"failed", "invalid"}, statuses
        assert "failed" in statuses
        run(errors, server)
        run(output, by_results, "--metadata-column", "sent_metadata")

    def held(emu: EmulatorProcess, block: int) -> dict[int, dict[str, str]]:
        return {i: emu.admin(f"conversations/{ID(block * rows + i)}")["metadata"]
                for i in range(rows)}  # fmt: skip

    direct = held(server, 0)
    for name, block in blocks.items():
        if block:
            assert held(server, block) == direct, f"{fmt} through the {name} errors file"
            assert held(by_results, block) == direct, f"{fmt} through the {name} results file"
    sent = [value for metadata in direct.values() for value in metadata.values()]
    assert len(sent) >= 16, direct  # most rows were sent (a few are invalid on every path)
    assert "'=literal" in sent
    if fmt == ".parquet":
        assert "2025-03-30T03:30:00+02:00" in sent
        assert "03:30:00.000001" in sent  # a time's fraction was cut off
