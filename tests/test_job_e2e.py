"""The real `bulk-update run` against the real emulator, over inputs that cover every rule."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import (
    ID,
    by_row,
    cli,
    results,
    start,
    store_runs,
    wait_for_requests,
    write_input,
)

# (row content, expected status, expected error_code); rows in input order.


def boundary_csv(path: Path) -> dict[int, tuple[str, str | None]]:
    """A CSV with BOM and CRLF covering the validation rules; returns row -> expectation."""
    key64, key65 = "k" * 64, "q" * 65
    extra = [f"x{i}" for i in range(14)]  # with tier and note: 16 metadata columns...
    header = ["conversation_id", "tier", "note", *extra, key64, key65]
    blank = [""] * len(header)

    def row(cid: str, **cells: str) -> list[str]:
        values = dict(zip(header, blank, strict=True))
        values["conversation_id"] = cid
        values.update(cells)
        return [values[h] for h in header]

    def quote(cell: str) -> str:
        return '"' + cell.replace('"', '""') + '"' if any(c in cell for c in ',"\r\n') else cell

    all16 = dict.fromkeys(["tier", "note", *extra], "v")
    rows: list[tuple[list[str], str, str | None]] = [
        (row(ID(1), tier="007", note="1.50"), "updated", None),  # leading zeros, text numbers
        (row(f"  {ID(2)} ", note='say "hi", then\r\nbye'), "updated", None),  # trim; quoting
        (row(ID(3), note="é" * 512), "updated", None),  # 512 two-byte characters: allowed
        (row(ID(4), note="é" * 513), "invalid", "value_too_long"),
        (row(ID(5), **all16), "updated", None),  # exactly 16 pairs
        (row(ID(6), **all16, **{key64: "v"}), "invalid", "too_many_pairs"),  # 17 pairs
        (row(ID(7), **{key64: "v"}), "updated", None),  # a 64-character key
        (row(ID(8), **{key65: "v"}), "invalid", "key_too_long"),  # a 65-character key
        (row(ID(9)), "invalid", "no_metadata"),  # every cell empty
        (row(ID(1), tier="again"), "invalid", "duplicate_id"),  # duplicate of row 1
        (row("conv_a/b", tier="x"), "invalid", "invalid_id"),
        (row("conv_a?x=1", tier="x"), "invalid", "invalid_id"),
        (row("conv_a#b", tier="x"), "invalid", "invalid_id"),
        (row("conv_%2e%2e", tier="x"), "invalid", "invalid_id"),
        (row("conv_..", tier="x"), "invalid", "invalid_id"),
        (row("conv_a b", tier="x"), "invalid", "invalid_id"),
        (row("", tier="x"), "invalid", "invalid_id"),
        (row(ID(10), tier="😀 emoji, RTL עברית"), "updated", None),
        (row(ID(99), tier="x"), "failed", "http_404"),  # not on the server
    ]
    text = "\r\n".join(",".join(quote(c) for c in line) for line in [header, *[r[0] for r in rows]])
    path.write_bytes(b"\xef\xbb\xbf" + text.encode() + b"\r\n")
    return {i + 1: (status, code) for i, (_, status, code) in enumerate(rows)}


def preload_file(tmp_path: Path, ids: list[str]) -> Path:
    path = tmp_path / "preload.csv"
    path.write_text("conversation_id\n" + "\n".join(ids) + "\n")
    return path


@pytest.mark.parametrize(
    ("input_fmt", "fmt"),
    [(".csv", ".csv"), (".csv", ".parquet"), (".csv", ".jsonl"), (".parquet", ".csv")],
)
def test_every_rule_against_a_faulty_rate_limited_server(
    start_emulator: StartEmulator, tmp_path: Path, input_fmt: str, fmt: str
) -> None:
    source = tmp_path / "input.csv"
    expected = boundary_csv(source)
    if input_fmt == ".parquet":
        # The same rows as a Parquet file of strings (empty cells as nulls).
        parquet = tmp_path / "input.parquet"
        pl.read_csv(source, infer_schema=False).write_parquet(parquet)
        source = parquet
    emu = start_emulator(
        "--api-key", TEST_KEY, "--rpm", "1200", "--error-rate", "0.2", "--reset-rate", "0.1",
        "--random-seed", "11", "--preload", str(preload_file(tmp_path, [ID(i) for i in range(1, 11)])),
    )  # fmt: skip
    output = tmp_path / f"results{fmt}"
    errors = tmp_path / "errors.csv"
    run = cli("run", str(source), "--output", str(output), "--errors-output", str(errors),
              "--base-url", emu.base_url, "--rpm", "2400", "--concurrency", "4",
              "--max-attempts", "10")  # fmt: skip
    assert run.returncode == 1, run.stderr
    rows = by_row(output)
    assert sorted(rows) == list(range(1, len(expected) + 1))  # every row exactly once, in order
    assert results(output)["row_number"].to_list() == sorted(rows)
    for number, (status, code) in expected.items():
        assert (rows[number]["status"], rows[number]["error_code"]) == (status, code), number
    stats = emu.stats(per_id=True)
    requested = stats["update_requests_by_id"]
    for number, row in rows.items():
        conversation_id = row["conversation_id"]
        if row["status"] == "invalid":
            assert int(row["attempts"]) == 0
            assert conversation_id not in requested or expected[number][1] == "duplicate_id"
            assert row["error_message"]
        if row["status"] == "updated":
            sent = json.loads(row["sent_metadata"])
            stored = emu.admin(f"conversations/{conversation_id}")["metadata"]
            assert stored == sent == json.loads(row["metadata"])
            assert int(row["http_status"]) == 200
            assert row["request_id"].startswith("req_")
            assert int(row["created_at"]) > 0
            # Each request the row sent reached the server or was dropped by a reset.
            assert int(row["attempts"]) >= requested[conversation_id]
    # Stored exactly as typed: leading zeros, quoting, CRLF inside a quoted cell, multi-byte.
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {"tier": "007", "note": "1.50"}
    assert emu.admin(f"conversations/{ID(2)}")["metadata"] == {"note": 'say "hi", then\r\nbye'}
    assert emu.admin(f"conversations/{ID(3)}")["metadata"]["note"] == "é" * 512
    # Rows that never passed validation never reached the server (the duplicate's ID did, once,
    # for row 1): no path-changing ID was ever requested.
    assert not any("/" in i or "?" in i or "#" in i or " " in i for i in requested)
    # Faults and the server's limit were really met, and retried through.
    by_status = stats["by_status"]
    assert by_status.get("reset", 0) + sum(n for s, n in by_status.items() if s.startswith("5")) > 0
    assert any(int(r["attempts"]) > 1 for r in rows.values() if r["status"] == "updated")
    # The errors file holds the failed and invalid rows in the input's own columns.
    errors_frame = pl.read_csv(errors, infer_schema=False)
    assert errors_frame.columns[:4] == ["row_number", "conversation_id", "tier", "note"]
    failing = [n for n, (status, _) in expected.items() if status != "updated"]
    assert errors_frame["row_number"].cast(pl.Int64).to_list() == failing
    assert errors_frame.columns[-3:] == ["status", "error_code", "error_message"]
    assert errors_frame.height == sum(1 for s, _ in expected.values() if s != "updated")
    assert "bulk-update: 19 rows:" in run.stderr.strip().splitlines()[-1]


def test_rides_the_server_limit_without_429s(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """Told the server's own rate, the smooth limiter never trips the server's limit."""
    source = tmp_path / "in.csv"
    write_input(source, 60)
    emu = start_emulator("--rpm", "1200", "--preload", str(source))  # 20 a second
    run = cli("run", str(source), "--output", str(tmp_path / "o.csv"), "--base-url", emu.base_url,
              "--rpm", "1200", "--concurrency", "16")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert emu.stats()["by_status"] == {"200": 61}  # 60 updates and the preflight's GET


def test_rerun_resumes_and_sends_nothing_again(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 40)
    emu = start_emulator("--preload", str(source))
    output = tmp_path / "out.parquet"
    args = (
        "run",
        str(source),
        "--output",
        str(output),
        "--base-url",
        emu.base_url,
        "--rpm",
        "6000",
    )
    assert cli(*args).returncode == 0
    assert emu.stats()["by_operation"]["update"] == 40
    again = cli(*args)
    assert again.returncode == 0
    assert emu.stats()["by_operation"]["update"] == 40  # nothing sent twice
    assert results(output)["status"].to_list() == ["updated"] * 40
    # --restart forgets the progress, not what the job set: every row is now unchanged.
    restarted = cli(*args, "--restart")
    assert restarted.returncode == 0
    assert emu.stats()["by_operation"]["update"] == 40
    assert results(output)["status"].to_list() == ["unchanged"] * 40
    runs = store_runs(tmp_path / "out.sqlite")
    assert [(r["results"], r["replaced"]) for r in runs] == [
        (str(output), True),
        (str(output), False),
    ]
    assert cli(*args, "--restart", "--full").returncode == 0
    assert emu.stats()["by_operation"]["update"] == 80
    assert results(output)["status"].to_list() == ["updated"] * 40


def test_parquet_values_become_text(start_emulator: StartEmulator, tmp_path: Path) -> None:
    import datetime as dt

    source = tmp_path / "typed.parquet"
    pl.DataFrame(
        {
            "conversation_id": [ID(1), ID(2), ID(3)],
            "n": [7, -3, None],
            "flag": [True, False, None],
            "score": [0.1, 2.5, 1e22],
            "day": [dt.date(2026, 1, 2), None, None],
            "at": [dt.datetime(2026, 1, 2, 3, 4, 5), None, None],
            "tags": [None, None, ["a", "b"]],
        }
    ).write_parquet(source)
    emu = start_emulator("--preload", str(preload_file(tmp_path, [ID(1), ID(2), ID(3)])))
    output = tmp_path / "out.csv"
    run = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    assert run.returncode == 1, run.stderr  # the list column's row invalid, the rest sent
    assert (
        "WARNING column 'tags' is a list: its rows with a value are invalid (metadata values "
        "are text); leave it out with --columns n,flag,score,day,at\n"
    ) in run.stderr
    rows = by_row(output)
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {
        "n": "7", "flag": "true", "score": "0.1", "day": "2026-01-02", "at": "2026-01-02T03:04:05",
    }  # fmt: skip
    assert emu.admin(f"conversations/{ID(2)}")["metadata"] == {
        "n": "-3", "flag": "false", "score": "2.5",
    }  # fmt: skip
    assert (rows[3]["status"], rows[3]["error_code"]) == ("invalid", "unsupported_type")
    assert "value for 'tags' is a list" in rows[3]["error_message"]


NUMBERS = ("1.0", "1.50", "1e5", "-0.0", "12345678901234567890", "0.1", "7")


def test_numbers_are_sent_as_written(start_emulator: StartEmulator, tmp_path: Path) -> None:
    """A JSON number is sent as the file writes it, from JSON Lines and from a --metadata-column
    cell alike (polars' reader would print 1.0 as 1, 1.50 as 1.5, 1e5 as 100000)."""
    ids = [ID(i) for i in range(len(NUMBERS))]
    emu = start_emulator("--preload", str(preload_file(tmp_path, ids)))
    lines = "".join(
        f'{{"conversation_id": "{c}", "n": {n}, "o": {{"k": {n}}}}}\n'
        for c, n in zip(ids, NUMBERS, strict=True)
    )
    (tmp_path / "in.jsonl").write_text(lines)
    cells = "".join(f'{c},"{{""n"": {n}}}"\n' for c, n in zip(ids, NUMBERS, strict=True))
    (tmp_path / "in.csv").write_text("conversation_id,meta\n" + cells)
    for source, extra in (("in.jsonl", ("--columns", "n")), ("in.csv", ("--metadata-column",
                                                                          "meta"))):  # fmt: skip
        done = cli("run", str(tmp_path / source), "--output", str(tmp_path / f"{source}.csv"),
                   "--base-url", emu.base_url, *extra)  # fmt: skip
        assert done.returncode == 0, done.stderr
        sent = [emu.admin(f"conversations/{c}")["metadata"]["n"] for c in ids]
        assert sent == list(NUMBERS), source
    # An object is a nested value: never sent, even asked for (its rows invalid).
    objects = cli("run", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.csv"),
                  "--base-url", emu.base_url, "--columns", "o", "--full")  # fmt: skip
    assert objects.returncode == 1, objects.stderr
    assert set(results(tmp_path / "o.csv")["error_code"].to_list()) == {"unsupported_type"}
    assert "o" not in emu.admin(f"conversations/{ids[1]}")["metadata"]


def test_a_json_lines_error_names_its_row_and_line(tmp_path: Path) -> None:
    """The row as the results would number it (blank lines no rows), and its line."""
    source = tmp_path / "in.jsonl"
    source.write_text(f'{{"conversation_id": "{ID(1)}", "n": 1}}\n\n{{"conversation_id": 2,}}\n')
    done = cli("run", str(source), "--output", str(tmp_path / "o.csv"))
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert (
        f"{source}: row 2 (line 3), column 23: not JSON Lines (expected a key in double "
        "quotes)" in line
    )
    (tmp_path / "list.jsonl").write_text('{"conversation_id": "a"}\n[1, 2]\n')
    done = cli("validate", str(tmp_path / "list.jsonl"), "--output", str(tmp_path / "p.csv"))
    assert done.returncode == 2
    assert "list.jsonl: row 2 (line 2), column 1: not JSON Lines (not a JSON object)" in done.stderr


def test_metadata_column_and_columns_options(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f'id,meta,skip\n{ID(1)},"{{""a"": ""1"", ""b"": 2}}",x\n{ID(2)},not json,x\n')
    emu = start_emulator("--preload", str(preload_file(tmp_path, [ID(1), ID(2)])))
    output = tmp_path / "out.jsonl"
    run = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
              "--id-column", "id", "--metadata-column", "meta")  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {"a": "1", "b": "2"}
    assert by_row(output)[2]["error_code"] == "invalid_metadata_json"
    output2 = tmp_path / "out2.csv"
    run = cli("run", str(source), "--output", str(output2), "--base-url", emu.base_url,
              "--id-column", "id", "--columns", "skip")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert emu.admin(f"conversations/{ID(2)}")["metadata"] == {"skip": "x"}


def test_a_wrong_key_is_caught_by_the_preflight(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """One GET checks the key before the first update: a wrong key stops the job with exit 3
    and not one update sent; every row is unprocessed and says why; the right key resumes."""
    source = tmp_path / "in.csv"
    write_input(source, 200)
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(source))
    output = tmp_path / "out.csv"
    run = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
              "--concurrency", "4", key="sk-wrong-key")  # fmt: skip
    assert run.returncode == 3, run.stderr
    frame = results(output)
    assert frame["status"].to_list() == ["unprocessed"] * 200
    assert set(frame["error_code"].to_list()) == {"invalid_api_key"}
    assert emu.stats()["by_operation"] == {"retrieve": 1}  # the preflight, and no update
    assert "stopped: preflight: HTTP 401 invalid_api_key" in run.stderr
    # Resumable: with the right key every row is sent, once.
    fixed = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
                "--rpm", "60000")  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr
    assert results(output)["status"].to_list() == ["updated"] * 200
    assert set(emu.stats(per_id=True)["updates_applied_by_id"].values()) == {1}


def test_a_fatal_answer_mid_run_leaves_its_row_unprocessed(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """The quota runs out mid-run: the rows that met insufficient_quota were not refused for
    themselves. They are unprocessed (code and message kept), and the re-run sends them."""
    source = tmp_path / "in.csv"
    write_input(source, 300)
    emu = start_emulator("--preload", str(source), "--latency-ms", "20")
    output = tmp_path / "out.csv"
    # 20 rows a second: the quota runs out long before the 300 rows are done, however loaded
    # the machine.
    process = start(str(source), "--output", str(output), "--base-url", emu.base_url,
                    "--concurrency", "8", "--rpm", "1200")  # fmt: skip
    wait_for_requests(emu, 40)
    emu.admin("config", {"quota_exhausted": True})
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 3, stderr
    frame = results(output)
    refused = frame.filter(pl.col("error_code") == "insufficient_quota")
    met_it = refused.filter(pl.col("attempts") > 0)  # the rows that met the answer themselves
    assert 1 <= met_it.height <= 8
    assert set(met_it["status"].to_list()) == {"unprocessed"}
    assert all("quota" in message for message in met_it["error_message"].to_list())
    assert "failed" not in frame["status"].to_list()
    emu.admin("config", {"quota_exhausted": False})
    again = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
                "--rpm", "60000")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert results(output)["status"].to_list() == ["updated"] * 300
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert all(applied.get(i) == 1 for i in met_it["conversation_id"].to_list())


def test_insufficient_quota_is_fatal(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 50)
    emu = start_emulator("--preload", str(source))
    emu.admin("config", {"quota_exhausted": True})
    output = tmp_path / "out.csv"
    run = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
              "--concurrency", "2")  # fmt: skip
    assert run.returncode == 3
    assert results(output)["error_code"].drop_nulls().to_list()[0] == "insufficient_quota"
    assert emu.stats()["requests"] <= 2


def test_dry_run_and_validate_send_nothing(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "input.csv"
    expected = boundary_csv(source)
    emu = start_emulator()
    for args in (("validate",), ("run", "--dry-run", "--base-url", emu.base_url)):
        output = tmp_path / f"{args[0]}.csv"
        run = cli(args[0], str(source), "--output", str(output), *args[1:], key=None)
        assert run.returncode == 1, run.stderr
        rows = by_row(output)
        for number, (status, code) in expected.items():
            assert rows[number]["status"] == ("invalid" if status == "invalid" else "planned")
            assert rows[number]["error_code"] == (code if status == "invalid" else None)
            assert rows[number]["attempts"] == 0
    assert emu.stats()["requests"] == 0
    assert not list(tmp_path.glob("*.sqlite"))  # a dry run leaves no store


def test_limit_is_a_canary(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("conversation_id,a\nbad id,v\n" + "".join(f"{ID(i)},v\n" for i in range(20)))
    emu = start_emulator("--preload", str(source))
    output = tmp_path / "out.csv"
    run = cli(
        "run", str(source), "--output", str(output), "--base-url", emu.base_url, "--limit", "5"
    )
    assert run.returncode == 1
    statuses = results(output)["status"].to_list()
    assert statuses == ["invalid"] + ["updated"] * 5 + ["unprocessed"] * 15
    assert emu.stats()["by_operation"]["update"] == 5
    # The same command without --limit finishes the job.
    run = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url)
    assert results(output)["status"].to_list() == ["invalid"] + ["updated"] * 20
    assert emu.stats()["by_operation"]["update"] == 20
    # As the help says: exit 0 when the N went through and no row before them was invalid.
    later = tmp_path / "later.csv"
    later.write_text("conversation_id,a\n" + "".join(f"{ID(i)},w\n" for i in range(8)) + "bad,v\n")
    canary = cli("run", str(later), "--output", str(tmp_path / "c.csv"), "--base-url",
                 emu.base_url, "--limit", "5")  # fmt: skip
    assert canary.returncode == 0, canary.stderr
    assert results(tmp_path / "c.csv")["status"].to_list()[5:] == ["unprocessed"] * 4
    assert "no row before them was invalid" in " ".join(cli("run", "--help").stdout.split())


def test_errors_file_can_be_fixed_and_fed_back(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"conversation_id,tier\n{ID(1)},gold\n{ID(2)},{'x' * 600}\n{ID(1)},bronze\n")
    emu = start_emulator("--preload", str(source))
    errors = tmp_path / "errors.csv"
    run = cli("run", str(source), "--output", str(tmp_path / "r1.csv"), "--errors-output",
              str(errors), "--base-url", emu.base_url)  # fmt: skip
    assert run.returncode == 1
    # Fed back unedited: the duplicate stays out (its first occurrence, row 1, was sent).
    again = cli("run", str(errors), "--output", str(tmp_path / "r0.csv"), "--base-url",
                emu.base_url)  # fmt: skip
    assert again.returncode == 1, again.stderr
    unedited = by_row(tmp_path / "r0.csv")
    assert unedited[2]["error_code"] == "duplicate_id"
    assert unedited[2]["error_message"] == "duplicate of row 1"
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {"tier": "gold"}
    # Fixed (the long value), and the duplicate's error_code cleared: both are sent.
    fixed = pl.read_csv(errors, infer_schema=False).with_columns(
        pl.when(pl.col("tier").str.len_chars() > 512).then(pl.lit("silver"))
        .otherwise(pl.col("tier")).alias("tier"),
        pl.lit(None, dtype=pl.String).alias("error_code"),
    )  # fmt: skip
    fixed.write_csv(errors)
    run = cli("run", str(errors), "--output", str(tmp_path / "r2.csv"), "--base-url", emu.base_url)
    assert run.returncode == 0, run.stderr
    # status/error_code/error_message of the fed-back file are not sent as metadata.
    assert emu.admin(f"conversations/{ID(2)}")["metadata"] == {"tier": "silver"}
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {"tier": "bronze"}


def test_bad_input_exits_2_before_sending(start_emulator: StartEmulator, tmp_path: Path) -> None:
    emu = start_emulator()
    source = tmp_path / "in.csv"
    source.write_text(f"id,a\n{ID(1)},v\n")
    cases = [
        ((str(source),), "missing_id"),
        ((str(source), "--id-column", "id", "--columns", "a,zzz"), "'zzz'"),
        ((str(tmp_path / "nope.csv"),), "no such file"),
        ((str(source), "--id-column", "id", "--base-url", "http://10.1.2.3/v1"), "plain http"),
    ]
    for args, fragment in cases:
        run = cli("run", "--output", str(tmp_path / "o.csv"), "--base-url", emu.base_url, *args)
        assert run.returncode == 2, (args, run.stderr)
        message = run.stderr.strip().splitlines()[-1]
        assert message.startswith("bulk-update: error:")
        if fragment != "missing_id":
            assert fragment in message
        else:
            assert str(source) in message
            assert "'conversation_id'" in message
    no_key = cli("run", str(source), "--id-column", "id", "--output", str(tmp_path / "o.csv"),
                 "--base-url", emu.base_url, key=None)  # fmt: skip
    assert no_key.returncode == 2
    assert "OPENAI_API_KEY" in no_key.stderr
    assert emu.stats()["requests"] == 0


def test_job_file_with_flags_overriding(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(f"conversation_id,a,b\n{ID(1)},1,2\n")
    emu = start_emulator("--preload", str(source))
    job = tmp_path / "job.toml"
    job.write_text(
        f'input = "{source}"\noutput = "{tmp_path / "from-file.csv"}"\ncolumns = ["a"]\n'
        f'rpm = 600\nbase-url = "{emu.base_url}"\nlog-format = "json"\n'
    )
    run = cli("run", "--job", str(job), "--output", str(tmp_path / "from-flag.jsonl"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "from-flag.jsonl").exists()
    assert not (tmp_path / "from-file.csv").exists()
    assert emu.admin(f"conversations/{ID(1)}")["metadata"] == {"a": "1"}
    log_lines = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert {line["event"] for line in log_lines} >= {"start", "finish"}
    bad = tmp_path / "bad.toml"
    bad.write_text('input = "x"\nspeed = 3\n')
    run = cli("run", "--job", str(bad), "--output", str(tmp_path / "o.csv"))
    assert run.returncode == 2
    assert "unknown option(s) speed" in run.stderr


def test_sdk_sees_what_the_job_set(emulator: EmulatorProcess, tmp_path: Path) -> None:
    import openai

    client = openai.OpenAI(base_url=emulator.base_url, api_key=TEST_KEY, max_retries=0)
    conversation = client.conversations.create(metadata={"kept": "yes"})
    source = tmp_path / "in.csv"
    source.write_text(f"conversation_id,tier\n{conversation.id},gold\n")
    run = cli(
        "run", str(source), "--output", str(tmp_path / "o.csv"), "--base-url", emulator.base_url
    )
    assert run.returncode == 0, run.stderr
    assert client.conversations.retrieve(conversation.id).metadata == {
        "kept": "yes",
        "tier": "gold",
    }
    # The results report what the server returned (the merged map), not only what was sent.
    row = by_row(tmp_path / "o.csv")[1]
    assert json.loads(row["metadata"]) == {"kept": "yes", "tier": "gold"}
    assert json.loads(row["sent_metadata"]) == {"tier": "gold"}
