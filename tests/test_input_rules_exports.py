"""Exports as warehouses write them, through the real CLI against the real emulator: unquoted
TSV (--quoting none), the emulator's --preload with --id-column, a revert at the pace of the
run it reverts, JSON Lines row numbers that count data rows (blank lines no rows), which every
message names too."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from tests.conftest import StartEmulator
from tests.helpers import ID, by_row, cli, results
from tests.stores import Backend


def test_an_unquoted_tsv_is_read_with_quoting_none(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A warehouse's TSV holds '"' as a character: quoted reading refuses it in one line that
    shows a tab as \\t and names --quoting none; with it every cell is sent as written."""
    source = tmp_path / "export.tsv"
    source.write_text(
        "conversation_id\tnote\ttier\n"
        f'{ID(0)}\t"quoted" at the start\tgold\n'
        f'{ID(1)}\tsays "hi"\t"\n'
        f'{ID(2)}\t"never closed\tx\n'
    )
    preload = tmp_path / "ids.csv"
    preload.write_text("conversation_id\n" + "".join(f"{ID(i)}\n" for i in range(3)))
    emu = start_emulator("--preload", str(preload))
    output = tmp_path / "out.csv"
    args = ("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    quoted = cli(*args)
    assert quoted.returncode == 2, quoted.stderr
    assert quoted.stderr.strip() == (
        f"bulk-update: error: {source}: line 2: '\\t' expected after '\"'; if the file is not "
        "quoted (as warehouses write TSV), give --quoting none"
    )
    assert "\t" not in quoted.stderr
    assert emu.stats()["requests"] == 0
    done = cli(*args, "--quoting", "none")
    assert done.returncode == 0, done.stderr
    held = {i: emu.admin(f"conversations/{ID(i)}")["metadata"] for i in range(3)}
    assert held == {
        0: {"note": '"quoted" at the start', "tier": "gold"},
        1: {"note": 'says "hi"', "tier": '"'},
        2: {"note": '"never closed', "tier": "x"},
    }


def test_quoting_is_checked(tmp_path: Path) -> None:
    source = tmp_path / "in.tsv"
    source.write_text(f"conversation_id\ttier\n{ID(0)}\tgold\n")
    done = cli("validate", str(source), "--output", str(tmp_path / "o.csv"), "--quoting", "no")
    assert done.returncode == 2
    assert "--quoting must be csv or none, got 'no'" in done.stderr


def test_the_emulator_preloads_a_file_by_its_id_column(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "export.csv"
    source.write_text(f'id,metadata\n{ID(0)},"{{""a"": ""1""}}"\n {ID(1)} ,\n')
    emu = start_emulator("--preload", str(source), "--id-column", "id")
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {"a": "1"}
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {}
    assert emu.stats()["conversations"] == 2
    # The job reads the same file with the same flag.
    done = cli("run", str(source), "--output", str(tmp_path / "o.csv"), "--base-url",
               emu.base_url, "--id-column", "id", "--metadata-column", "metadata")  # fmt: skip
    assert done.returncode == 1, done.stderr  # the second row's metadata is empty
    missing = cli("emulator", "--port", "0", "--preload", str(source), timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"bulk-update emulator: --preload {source}: the file has no 'conversation_id' column "
        "(columns: 'id', 'metadata'): give --id-column the column that holds the conversation IDs"
    )


def test_the_emulator_preloads_an_unquoted_tsv_with_quoting_none(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A warehouse TSV (a quote is text) preloads with --quoting none, as run reads it."""
    source = tmp_path / "export.tsv"
    source.write_text(f'conversation_id\tnote\tmetadata\n{ID(0)}\t"6 in\t{{"a": "1"}}\n')
    refused = cli("emulator", "--port", "0", "--preload", str(source), timeout=60)
    assert refused.returncode == 2, refused.stderr
    assert f"--preload {source}: cannot read it" in refused.stderr
    emu = start_emulator("--preload", str(source), "--quoting", "none")
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {"a": "1"}
    done = cli("run", str(source), "--output", str(tmp_path / "o.csv"), "--base-url",
               emu.base_url, "--quoting", "none", "--columns", "note")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {"a": "1", "note": '"6 in'}


def test_a_revert_goes_at_the_pace_of_the_run_it_reverts(
    start_emulator: StartEmulator, tmp_path: Path, backend: Backend
) -> None:
    """Without --rpm and --concurrency, a revert takes the reverted run's; given, its own."""
    source = tmp_path / "in.csv"
    source.write_text("conversation_id,tier\n" + "".join(f"{ID(i)},new\n" for i in range(4)))
    preload = tmp_path / "before.jsonl"
    preload.write_text(
        "".join(json.dumps({"conversation_id": ID(i), "metadata": {"tier": "old"}}) + "\n"
                for i in range(4))
    )  # fmt: skip
    emu = start_emulator("--preload", str(preload))
    run = tmp_path / "run.csv"
    store = [*backend.args, "--job-name", "paced"]
    done = cli("run", str(source), "--output", str(run), "--base-url", emu.base_url, "--backup",
               "--rpm", "240", "--concurrency", "3", *store)  # fmt: skip
    assert done.returncode == 0, done.stderr
    back = cli("revert", str(run), "--output", str(tmp_path / "back.csv"), "--base-url",
               emu.base_url, *store)  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {"tier": "old"}
    runs = {record.results: record.options for record in backend.history("paced")}
    assert (runs[str(tmp_path / "back.csv")]["rpm"], runs[str(tmp_path / "back.csv")]["concurrency"]) == (
        240, 3,
    )  # fmt: skip
    # Given on revert's own command line (and in a job file), they win.
    job = tmp_path / "revert.toml"
    job.write_text("concurrency = 5\n")
    again = cli("revert", str(run), "--output", str(tmp_path / "again.csv"), "--base-url",
                emu.base_url, "--rpm", "600", "--job", str(job), *store)  # fmt: skip
    assert again.returncode == 0, again.stderr
    runs = {record.results: record.options for record in backend.history("paced")}
    assert (runs[str(tmp_path / "again.csv")]["rpm"], runs[str(tmp_path / "again.csv")]["concurrency"]) == (
        600, 5,
    )  # fmt: skip


def test_json_lines_row_numbers_count_data_rows(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Blank lines are no rows: row_number counts data rows (header-less, 1-based), and the
    results, "duplicate of row N", the errors file and the messages that name a row agree (a
    message that names a line says both: "row 4 (line 6)")."""
    source = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"conversation_id": ID(0), "tier": "a"}),
        "",
        "   ",
        json.dumps({"conversation_id": ID(1), "tier": "b"}),
        "",
        json.dumps({"conversation_id": ID(0), "tier": "c"}),  # row 3 (line 6): of row 1
        json.dumps({"conversation_id": "conv_a/b", "tier": "d"}),
    ]
    source.write_text("\n".join(lines) + "\n\n")
    preload = tmp_path / "ids.csv"
    preload.write_text(f"conversation_id\n{ID(0)}\n{ID(1)}\n")
    emu = start_emulator("--preload", str(preload))
    output, errors = tmp_path / "out.csv", tmp_path / "errors.jsonl"
    done = cli("run", str(source), "--output", str(output), "--errors-output", str(errors),
               "--base-url", emu.base_url)  # fmt: skip
    assert done.returncode == 1, done.stderr
    rows = by_row(output)
    assert sorted(rows) == [1, 2, 3, 4]
    assert rows[2]["conversation_id"] == ID(1)
    assert rows[3]["error_message"] == "duplicate of row 1"
    assert rows[4]["error_code"] == "invalid_id"
    assert pl.read_ndjson(errors)["row_number"].to_list() == [3, 4]
    # A glob of two files: the rows counted over both, blank lines not.
    (tmp_path / "b.jsonl").write_text("\n" + json.dumps({"conversation_id": ID(5), "t": "x"}))
    (tmp_path / "a.jsonl").write_text(json.dumps({"conversation_id": ID(4), "t": "y"}) + "\n\n")
    globbed = tmp_path / "glob.csv"
    plan = cli("validate", str(tmp_path / "[ab].jsonl"), "--output", str(globbed))
    assert plan.returncode == 0, plan.stderr
    assert results(globbed)["row_number"].to_list() == [1, 2]
    # A line that is not JSON: its row as the results number it, and its line.
    lines[5] = '{"conversation_id": oops}'
    source.write_text("\n".join(lines) + "\n")
    bad = cli("validate", str(source), "--output", str(tmp_path / "plan.csv"))
    assert bad.returncode == 2
    assert f"{source}: row 3 (line 6), column 21: not JSON Lines" in bad.stderr
    # In a glob's second file: the row over the files, the line in its file.
    (tmp_path / "b.jsonl").write_text("\n" + json.dumps({"conversation_id": ID(5)})[:-1])
    bad = cli("validate", str(tmp_path / "[ab].jsonl"), "--output", str(tmp_path / "g2.csv"))
    assert bad.returncode == 2
    assert f"{tmp_path / 'b.jsonl'}: row 2 (line 2), column " in bad.stderr
    # Not UTF-8: named the same way.
    source.write_bytes(b'\n{"conversation_id": "\xff"}\n')
    bad = cli("validate", str(source), "--output", str(tmp_path / "plan.csv"))
    assert bad.returncode == 2
    assert f"{source}: row 1 (line 2): not UTF-8 text" in bad.stderr
