"""What is sent, in every input format, through the real CLI against the real emulator (which
keeps exactly what it received): keys without their surrounding white space, a value of white
space only as no value, every other value exactly as written; nested values never sent (a row
with one is invalid, the others go on; a mapped column of them is named in one warning before
sending, with the --columns that leave it out)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import StartEmulator
from tests.helpers import ID, by_row, cli

# Rows as written in every format: a header (or key) with spaces around it, a value with spaces
# around it (kept), a value of white space only (no value), a value with inner spaces (kept).
ROWS: list[dict[str, str]] = [
    {"conversation_id": ID(0), " tier ": " gold ", "note": "   ", "team": "a  b"},
    {"conversation_id": ID(1), " tier ": "\u3000\u00a0", "note": "x", "team": " "},
    {"conversation_id": ID(2), " tier ": " ", "note": "\x0b\x0c", "team": ""},
]
# What the server holds afterwards, per conversation.
HELD = [{"tier": " gold ", "team": "a  b"}, {"note": "x"}, {}]
FORMATS = ("csv", "tsv", "jsonl", "parquet", "metadata-json", "metadata-struct")


def _write(fmt: str, path: Path, rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """``rows`` as a file of format ``fmt``; the flags that map it."""
    names = list(rows[0])
    if fmt in ("csv", "tsv"):
        mark = "," if fmt == "csv" else "\t"
        lines = [mark.join(names)] + [mark.join(row[n] for n in names) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return ()
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return ()
    if fmt == "parquet":
        pl.DataFrame(rows).write_parquet(path)
        return ()
    ids = [row["conversation_id"] for row in rows]
    objects = [{k: v for k, v in row.items() if k != "conversation_id"} for row in rows]
    if fmt == "metadata-json":
        pl.DataFrame({"conversation_id": ids, "meta": [json.dumps(o) for o in objects]}).write_csv(
            path
        )
    else:
        pl.DataFrame({"conversation_id": ids, "meta": objects}).write_parquet(path)
    return ("--metadata-column", "meta")


SUFFIX = {"metadata-json": "csv", "metadata-struct": "parquet"}


def _emulator(start_emulator: StartEmulator, tmp_path: Path, n: int) -> EmulatorProcess:
    """An emulator holding the conversations ID(0) to ID(n-1), with no metadata."""
    preload = tmp_path / "ids.csv"
    preload.write_text("conversation_id\n" + "".join(f"{ID(i)}\n" for i in range(n)))
    return start_emulator("--preload", str(preload))


def _source(tmp_path: Path, fmt: str, name: str = "in") -> Path:
    return tmp_path / f"{name}.{SUFFIX.get(fmt, fmt)}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_keys_are_trimmed_and_blank_values_are_no_value(
    start_emulator: StartEmulator, tmp_path: Path, fmt: str
) -> None:
    source = _source(tmp_path, fmt)
    flags = _write(fmt, source, ROWS)
    emu = _emulator(start_emulator, tmp_path, 3)
    output = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url, *flags)
    assert done.returncode == 1, done.stderr  # the third row has nothing to send
    for i, held in enumerate(HELD[:2]):
        assert emu.admin(f"conversations/{ID(i)}")["metadata"] == held, fmt
    rows = by_row(output)
    assert json.loads(rows[1]["sent_metadata"]) == HELD[0]
    assert (rows[3]["status"], rows[3]["error_code"]) == ("invalid", "no_metadata")
    assert emu.stats(per_id=True)["updates_applied_by_id"] == {ID(0): 1, ID(1): 1}


def test_columns_name_a_column_by_its_trimmed_name(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f" conversation_id , tier ,note\n{ID(0)},gold,n\n")
    emu = _emulator(start_emulator, tmp_path, 1)
    done = cli("run", str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
               emu.base_url, "--columns", "tier")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {"tier": "gold"}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "metadata-struct"])
def test_two_columns_the_same_key_once_trimmed_exit_2_naming_both(
    start_emulator: StartEmulator, tmp_path: Path, fmt: str
) -> None:
    source = _source(tmp_path, fmt)
    flags = _write(fmt, source, [{"conversation_id": ID(0), "tier": "a", "tier ": "b"}])
    emu = start_emulator()
    done = cli("run", str(source), "--output", str(tmp_path / "out.csv"), "--base-url",
               emu.base_url, *flags)  # fmt: skip
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line
    assert f"{source}: " in line
    assert "'tier' and 'tier ' are the same key 'tier' once surrounding white space" in line
    assert emu.stats()["requests"] == 0


def test_two_keys_of_a_metadata_cell_the_same_once_trimmed_make_the_row_invalid(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    pl.DataFrame(
        {
            "conversation_id": [ID(0), ID(1)],
            "meta": ['{"tier": "a", " tier": "b"}', '{"tier": "a", " tier": "  "}'],
        }
    ).write_csv(source)
    emu = _emulator(start_emulator, tmp_path, 2)
    output = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
               "--metadata-column", "meta")  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = by_row(output)
    assert (rows[1]["status"], rows[1]["error_code"]) == ("invalid", "invalid_key")
    assert (
        rows[1]["error_message"] == "metadata keys 'tier' and ' tier' are the same key once trimmed"
    )
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {"tier": "a"}  # the blank: no value
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {}


# Nested values: never sent, in any format.


def _warned_before_sending(stderr: str, warning: str) -> None:
    """``warning`` said before the run started, and again among its summary's warnings."""
    assert stderr.count(f"WARNING {warning}\n") == 2, stderr
    assert stderr.index(warning) < stderr.index("job started"), stderr
    assert f"warning: {warning}" in stderr.strip().splitlines()[-1], stderr


def test_an_unasked_nested_parquet_column_makes_its_rows_invalid_not_the_run(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A list column mapped by default: its rows with a value are invalid (unsupported_type),
    the others are sent; one warning before sending names it and the --columns that leave it
    out; the run is not refused."""
    source = tmp_path / "in.parquet"
    pl.DataFrame(
        {"conversation_id": [ID(0), ID(1)], "tier": ["a", "b"], "tags": [None, ["x", "y"]]}
    ).write_parquet(source)
    emu = _emulator(start_emulator, tmp_path, 2)
    output = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    assert done.returncode == 1, done.stderr
    _warned_before_sending(
        done.stderr,
        "column 'tags' is a list: its rows with a value are invalid (metadata values are text); "
        "leave it out with --columns tier",
    )
    rows = by_row(output)
    assert rows[1]["status"] == "updated"
    assert (rows[2]["status"], rows[2]["error_code"]) == ("invalid", "unsupported_type")
    assert rows[2]["error_message"] == (
        "value for 'tags' is a list; only text, numbers, booleans and dates can be sent "
        "(leave the column out: --columns)"
    )
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {"tier": "a"}
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {}


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_nested_value_asked_for_is_an_invalid_row_that_names_columns(
    start_emulator: StartEmulator, tmp_path: Path, fmt: str
) -> None:
    """Asked for by --columns (or, in JSON Lines, a key that also holds text), the rows with a
    nested value are invalid, their message saying how to leave the column out; the rest sent."""
    source = tmp_path / f"in.{fmt}"
    if fmt == "parquet":
        pl.DataFrame(
            {"conversation_id": [ID(0), ID(1)], "tier": ["a", "b"], "tags": [None, ["x"]]}
        ).write_parquet(source)
        flags: tuple[str, ...] = ("--columns", "tier,tags")
        kind = "a list"
    else:
        source.write_text(
            json.dumps({"conversation_id": ID(0), "tier": "a", "tags": "x"}) + "\n"
            + json.dumps({"conversation_id": ID(1), "tier": "b", "tags": {"k": "v"}}) + "\n"
        )  # fmt: skip
        flags = ()
        kind = "a JSON object"
    emu = _emulator(start_emulator, tmp_path, 2)
    output = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url, *flags)
    assert done.returncode == 1, done.stderr
    rows = by_row(output)
    assert (rows[2]["status"], rows[2]["error_code"]) == ("invalid", "unsupported_type")
    assert rows[2]["error_message"] == (
        f"value for 'tags' is {kind}; only text, numbers, booleans and dates can be sent "
        "(leave the column out: --columns)"
    )
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {}
    expected = {"tier": "a", "tags": "x"} if fmt == "jsonl" else {"tier": "a"}
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == expected
    # A dry run with an errors file (every input column read) plans the same.
    plan, errors = tmp_path / "plan.csv", tmp_path / "errors.csv"
    dry = cli("validate", str(source), "--output", str(plan), "--errors-output", str(errors),
              *flags)  # fmt: skip
    assert dry.returncode == 1, dry.stderr
    assert by_row(plan)[2]["error_message"] == rows[2]["error_message"]
    assert pl.read_csv(errors)["row_number"].to_list() == [2]
    assert "__bulk_update" not in errors.read_text()


def test_a_json_lines_key_of_only_objects_and_arrays_is_warned_of(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        json.dumps({"conversation_id": ID(0), "tier": "a", "tags": ["x"]}) + "\n"
        + json.dumps({"conversation_id": ID(1), "tier": "b", "tags": None}) + "\n"
        + json.dumps({"conversation_id": ID(2), "tier": "c", "tags": {"k": 1}}) + "\n"
    )  # fmt: skip
    emu = _emulator(start_emulator, tmp_path, 3)
    output = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    assert done.returncode == 1, done.stderr
    _warned_before_sending(
        done.stderr,
        "column 'tags' is a JSON array: its rows with a value are invalid (metadata values are "
        "text); leave it out with --columns tier",
    )
    rows = by_row(output)
    assert [rows[n]["status"] for n in (1, 2, 3)] == ["invalid", "updated", "invalid"]
    assert rows[3]["error_message"] == (
        "value for 'tags' is a JSON object; only text, numbers, booleans and dates can be sent "
        "(leave the column out: --columns)"
    )
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {"tier": "b"}
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {}
    assert emu.admin(f"conversations/{ID(2)}")["metadata"] == {}


@pytest.mark.parametrize("fmt", ["metadata-json", "metadata-struct"])
def test_a_nested_value_in_a_metadata_column_is_an_invalid_row(
    start_emulator: StartEmulator, tmp_path: Path, fmt: str
) -> None:
    source = _source(tmp_path, fmt)
    rows: list[dict[str, Any]] = [
        {"conversation_id": ID(0), "tier": "a", "tags": None},
        {"conversation_id": ID(1), "tier": "b", "tags": ["x"]},
    ]
    flags = _write(fmt, source, rows)
    emu = _emulator(start_emulator, tmp_path, 2)
    output = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url, *flags)
    assert done.returncode == 1, done.stderr
    found = by_row(output)
    assert (found[2]["status"], found[2]["error_code"]) == ("invalid", "unsupported_type")
    assert found[2]["error_message"] == (
        "value for 'tags' is a list; only text, numbers, booleans and dates can be sent "
        "(give it as a string to send its text)"
    )
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {"tier": "a"}
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {}
