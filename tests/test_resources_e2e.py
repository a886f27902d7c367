"""Every resource through the real CLI against a real emulator (``--resource R --preload N``):
planning (each resource's ID patterns and messages), sending (path, body field), the results'
ID columns, the store (state keyed by resource and ID: a job cannot mix them), incremental runs,
``--backup`` and ``revert``, ``validate --check-server``, shards, the report; and typed
attributes (``vector_stores.files``): numbers and booleans sent and kept as JSON, so a second
night of the same Parquet file is all ``unchanged``. Store behaviours run on both stores."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bulk_update import JobConfig, run_job
from bulk_update.emulator import preload_ids
from bulk_update.emulator.process import EmulatorProcess
from bulk_update.resources import RESOURCES, Resource
from tests.conftest import TEST_KEY
from tests.helpers import cli, results
from tests.stores import Backend

OTHERS = ("chat.completions", "vector_stores", "vector_stores.files")
ROWS = 8


@pytest.fixture(scope="module")
def served() -> Iterator[dict[str, EmulatorProcess]]:
    """One emulator per resource (other than conversations), each with ROWS objects."""
    started: dict[str, EmulatorProcess] = {}
    try:
        for name in OTHERS:
            args = ("--api-key", TEST_KEY, "--resource", name, "--preload", str(ROWS))
            started[name] = EmulatorProcess(*args).start()
        yield started
    finally:
        for emulator in started.values():
            emulator.stop()


def ids(name: str, count: int = ROWS) -> list[tuple[str, ...]]:
    return [tuple(preload_ids(name, i)) for i in range(count)]


def key(ids_: tuple[str, ...]) -> str:
    return "/".join(ids_)


def server_map(emulator: EmulatorProcess, resource: Resource, ids_: tuple[str, ...]) -> Any:
    """The object's map as the emulator holds it (its admin route: not counted, no key)."""
    found = emulator.admin(f"{resource.name}/{'/'.join(ids_)}")
    return found[resource.body]


def write_rows(
    path: Path, resource: Resource, rows: list[tuple[tuple[str, ...], dict[str, Any]]]
) -> Path:
    """An input of ``rows`` (IDs, map) with the resource's ID columns, as CSV or Parquet."""
    columns: dict[str, list[Any]] = {c: [] for c in resource.id_columns}
    for ids_, values in rows:
        for column, value in zip(resource.id_columns, ids_, strict=True):
            columns[column].append(value)
        for name, value in values.items():
            columns.setdefault(name, []).append(value)
    frame = pl.DataFrame(columns)
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
    return path


def run(*args: str, emulator: EmulatorProcess, expect: int = 0) -> str:
    done = cli(*args, "--base-url", emulator.base_url, "--quiet")
    assert done.returncode == expect, done.stderr[-3000:]
    return done.stderr


@pytest.mark.parametrize("name", OTHERS)
def test_a_resource_runs_backs_up_resumes_incrementally_and_reverts(
    name: str, served: dict[str, EmulatorProcess], backend: Backend, tmp_path: Path
) -> None:
    """Night 1 (--backup) updates each object on its own path with its own body field; the
    results carry the resource's ID columns; night 2 (same input) is all unchanged with no
    update sent; a check reads (GET) and says so; revert puts the before-images back."""
    emulator, resource = served[name], RESOURCES[name]
    objects = ids(name, 4)
    before = {o: server_map(emulator, resource, o) for o in objects}
    source = write_rows(
        tmp_path / "in.csv",
        resource,
        [(o, {"team": "a", "n": str(i)}) for i, o in enumerate(objects)],
    )
    job = ["--resource", name, "--job-name", "tagging", *backend.args]
    run("run", str(source), "--output", str(tmp_path / "n1.csv"), "--backup", *job,
        emulator=emulator)  # fmt: skip

    night1 = results(tmp_path / "n1.csv")
    assert night1.columns[1 : 1 + len(resource.id_columns)] == list(resource.id_columns)
    assert "conversation_id" not in night1.columns
    assert night1.get_column("status").to_list() == ["updated"] * 4
    for i, o in enumerate(objects):
        assert server_map(emulator, resource, o) == {**before[o], "team": "a", "n": str(i)}
        row = night1.row(i, named=True)
        assert tuple(row[c] for c in resource.id_columns) == o
        assert json.loads(row["previous_metadata"]) == before[o]

    updates = emulator.stats()["by_resource"][name]["update"]
    run("run", str(source), "--output", str(tmp_path / "n2.csv"), *job, emulator=emulator)
    assert results(tmp_path / "n2.csv").get_column("status").to_list() == ["unchanged"] * 4
    assert emulator.stats()["by_resource"][name]["update"] == updates  # nothing sent

    run("validate", str(source), "--output", str(tmp_path / "check.csv"), "--check-server",
        "--resource", name, emulator=emulator)  # fmt: skip
    checked = results(tmp_path / "check.csv")
    assert checked.get_column("status").to_list() == ["unchanged"] * 4
    assert emulator.stats()["by_resource"][name]["update"] == updates  # a check never writes

    run("revert", str(tmp_path / "n1.csv"), "--output", str(tmp_path / "reverted.csv"),
        "--blank-added-keys", *job, emulator=emulator)  # fmt: skip
    for o in objects:
        assert server_map(emulator, resource, o) == {**before[o], "team": "", "n": ""}

    report = tmp_path / "report.html"
    done = cli("report", "--job-name", "tagging", *backend.args, "--output", str(report))
    assert done.returncode == 0, done.stderr
    assert report.stat().st_size > 0


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("chat.completions", ("conv_1",), "completion_id 'conv_1' is not chatcmpl- followed by"),
        ("chat.completions", ("chatcmpl-a/b",), "completion_id 'chatcmpl-a/b' is not chatcmpl-"),
        ("vector_stores", ("",), "vector_store_id is empty"),
        ("vector_stores", ("vs_1?x",), "vector_store_id 'vs_1?x' is not vs_ followed by"),
        ("vector_stores.files", ("vs_1", "file_2"), "file_id 'file_2' is not file- followed by"),
        ("vector_stores.files", ("", "file-2"), "vector_store_id is empty"),
    ],
)
def test_each_resource_checks_its_own_id_pattern_naming_the_column(
    name: str, bad: tuple[str, ...], message: str, served: dict[str, EmulatorProcess],
    tmp_path: Path,
) -> None:  # fmt: skip
    emulator, resource = served[name], RESOURCES[name]
    good = ids(name, 1)[0]
    source = write_rows(tmp_path / "in.csv", resource, [(good, {"k": "v"}), (bad, {"k": "v"})])
    run("validate", str(source), "--output", str(tmp_path / "plan.csv"), "--resource", name,
        emulator=emulator, expect=1)  # fmt: skip
    plan = results(tmp_path / "plan.csv")
    assert plan.get_column("status").to_list() == ["planned", "invalid"]
    assert plan.item(1, "error_code") == "invalid_id"
    assert plan.item(1, "error_message").startswith(message)


def test_a_file_is_keyed_by_its_pair_duplicates_and_shards_alike(
    served: dict[str, EmulatorProcess], tmp_path: Path
) -> None:
    """The same file ID in two vector stores is two rows; the same pair twice is a duplicate;
    each shard holds the rows whose pair (VS/FILE) hashes (CRC-32) to it, every row once."""
    name = "vector_stores.files"
    emulator, resource = served[name], RESOURCES[name]
    objects = ids(name)
    rows = [(o, {"i": str(i)}) for i, o in enumerate(objects)] + [(objects[0], {"i": "again"})]
    source = write_rows(tmp_path / "in.csv", resource, rows)
    seen: dict[int, str] = {}
    for shard in (0, 1):
        out = tmp_path / f"s{shard}.csv"
        run("run", str(source), "--output", str(out), "--resource", name, "--shard",
            f"{shard}/2", emulator=emulator, expect=1 if shard == zlib.crc32(key(objects[0]).encode()) % 2 else 0)  # fmt: skip
        for row in results(out).iter_rows(named=True):
            pair = (row["vector_store_id"], row["file_id"])
            assert zlib.crc32(key(pair).encode()) % 2 == shard
            assert row["row_number"] not in seen
            seen[row["row_number"]] = row["status"]
    assert sorted(seen) == list(range(1, len(rows) + 1))
    assert seen[len(rows)] == "invalid"  # the pair again: a duplicate of row 1
    assert list(seen.values()).count("updated") == len(objects)


def test_a_job_updates_one_resource(
    served: dict[str, EmulatorProcess], backend: Backend, tmp_path: Path
) -> None:
    """A job's state is keyed by its resource's IDs: a run of another resource in the same job
    is refused in one line (exit 2), nothing sent; conversations stay the default."""
    emulator = served["vector_stores"]
    resource = RESOURCES["vector_stores"]
    source = write_rows(tmp_path / "in.csv", resource, [(ids("vector_stores", 1)[0], {"k": "v"})])
    job = ["--job-name", "tags", *backend.args]
    run("run", str(source), "--output", str(tmp_path / "a.csv"), "--resource", "vector_stores",
        *job, emulator=emulator)  # fmt: skip
    other = tmp_path / "conv.csv"
    other.write_text("conversation_id,k\nconv_1,v\n")
    requests = emulator.stats()["requests"]
    stderr = run("run", str(other), "--output", str(tmp_path / "b.csv"), *job,
                 emulator=emulator, expect=2)  # fmt: skip
    assert "job 'tags' updates vector_stores (run 1), not conversations" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert emulator.stats()["requests"] == requests


def typed_rows() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    return [
        (o, {"n": i * 6, "ok": i % 2 == 0, "score": 0.5 + i, "team": "a"})
        for i, o in enumerate(ids("vector_stores.files", 4))
    ]


def test_typed_attributes_are_sent_and_kept_as_json_numbers_and_booleans(
    served: dict[str, EmulatorProcess], backend: Backend, tmp_path: Path
) -> None:
    """A Parquet Int64 12 is sent as 12 and a boolean as true; the results and the store keep
    them so; night 2 of the same file is all unchanged; a CSV's 12 (text) is a change against
    the stored 12 and is sent as "12", unless --number-columns says it is a number."""
    name = "vector_stores.files"
    emulator, resource = served[name], RESOURCES[name]
    rows = typed_rows()
    parquet = write_rows(tmp_path / "in.parquet", resource, rows)
    job = ["--resource", name, "--job-name", "typed", *backend.args]
    run("run", str(parquet), "--output", str(tmp_path / "n1.parquet"), *job, emulator=emulator)
    night1 = results(tmp_path / "n1.parquet")
    (o, values), row = rows[2], night1.row(2, named=True)
    assert row["sent_metadata"] == '{"n":12,"ok":true,"score":2.5,"team":"a"}'
    assert server_map(emulator, resource, o) | values == server_map(emulator, resource, o)
    assert isinstance(server_map(emulator, resource, o)["n"], int)
    assert json.loads(row["metadata"])["ok"] is True

    run("run", str(parquet), "--output", str(tmp_path / "n2.parquet"), *job, emulator=emulator)
    assert results(tmp_path / "n2.parquet").get_column("status").to_list() == ["unchanged"] * 4

    csv = tmp_path / "in.csv"
    pl.read_parquet(parquet).with_columns(
        pl.col("ok").cast(pl.String).str.to_lowercase()
    ).write_csv(csv)
    typed = ["--number-columns", "n,score", "--boolean-columns", "ok"]
    run("run", str(csv), "--output", str(tmp_path / "n3.csv"), *job, *typed, emulator=emulator)
    assert results(tmp_path / "n3.csv").get_column("status").to_list() == ["unchanged"] * 4

    run("run", str(csv), "--output", str(tmp_path / "n4.csv"), *job, emulator=emulator)
    night4 = results(tmp_path / "n4.csv")
    assert night4.get_column("status").to_list() == ["updated"] * 4
    assert json.loads(night4.item(2, "sent_metadata"))["n"] == "12"
    assert server_map(emulator, resource, o)["n"] == "12"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"n": float("nan")}, "value for 'n' is NaN, not a number"),
        ({"n": 2**53 + 1}, "value for 'n' is 9007199254740993: past 2**53"),
        ({"n": [1, 2]}, "value for 'n' is a list"),
    ],
)
def test_a_value_json_cannot_hold_is_invalid_in_one_line(
    values: dict[str, Any], message: str, served: dict[str, EmulatorProcess], tmp_path: Path
) -> None:
    name = "vector_stores.files"
    emulator, resource = served[name], RESOURCES[name]
    source = write_rows(tmp_path / "in.parquet", resource, [(ids(name, 1)[0], values)])
    run("validate", str(source), "--output", str(tmp_path / "plan.csv"), "--resource", name,
        emulator=emulator, expect=1)  # fmt: skip
    plan = results(tmp_path / "plan.csv")
    assert plan.item(0, "status") == "invalid"
    assert plan.item(0, "error_message").startswith(message)
    assert "\n" not in plan.item(0, "error_message")


def test_a_csv_cell_that_is_not_its_named_type_is_invalid_naming_row_and_field(
    served: dict[str, EmulatorProcess], tmp_path: Path
) -> None:
    name = "vector_stores.files"
    emulator = served[name]
    (vs, file), (vs2, file2) = ids(name, 2)
    source = tmp_path / "in.csv"
    source.write_text(f"vector_store_id,file_id,n,ok\n{vs},{file},12,true\n{vs2},{file2},12a,yes\n")
    run("validate", str(source), "--output", str(tmp_path / "plan.csv"), "--resource", name,
        "--number-columns", "n", "--boolean-columns", "ok", emulator=emulator, expect=1)  # fmt: skip
    plan = results(tmp_path / "plan.csv")
    assert plan.item(0, "sent_metadata") == '{"n":12,"ok":true}'
    assert (plan.item(1, "row_number"), plan.item(1, "error_message")) == (
        2, "value for 'n' is '12a', not a number (--number-columns)",
    )  # fmt: skip


def test_the_python_api_and_its_summary_say_which_resource(
    served: dict[str, EmulatorProcess], tmp_path: Path
) -> None:
    """``JobConfig(resource=...)`` (what a job file and the operator build) updates that
    resource; the summary, the operator's XCom, says which."""
    name = "chat.completions"
    emulator, resource = served[name], RESOURCES[name]
    (completion,) = ids(name, 1)
    source = write_rows(tmp_path / "in.csv", resource, [(completion, {"reviewed": "yes"})])
    config = JobConfig(input=str(source), output=str(tmp_path / "out.csv"), resource=name,
                       api_key=TEST_KEY, base_url=emulator.base_url)  # fmt: skip
    summary = run_job(config).as_dict()
    assert (summary["resource"], summary["counts"]) == (name, {"updated": 1})
    assert server_map(emulator, resource, completion)["reviewed"] == "yes"
