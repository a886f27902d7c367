"""Rows from the API's listing (``--list``), end to end: the real CLI against the emulator, the
store on both backends where the store is involved (the recorded listing is tied to a run)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx2
import pytest

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import cli, results, start, wait_for_in_flight, wait_for_requests
from tests.stores import Backend

COMPLETIONS = 24


def completion_id(index: int) -> str:
    return f"chatcmpl-list{index:04d}"


def team(index: int) -> str:
    return "a" if index % 3 else "b"  # 1, 2, 4, 5, 7, ...: a; 0, 3, 6, ...: b


def model(index: int) -> str:
    return "gpt-4o" if index % 4 else "gpt-4o-mini"


def wanted(count: int = COMPLETIONS) -> list[str]:
    """The completions of team a made by gpt-4o, in the listing's order (created order)."""
    return [completion_id(i) for i in range(count) if team(i) == "a" and model(i) == "gpt-4o"]


def preload_completions(tmp_path: Path, count: int = COMPLETIONS) -> Path:
    path = tmp_path / "completions.jsonl"
    lines = [
        json.dumps({"completion_id": completion_id(i), "model": model(i),
                    "metadata": json.dumps({"team": team(i), "n": str(i)})})
        for i in range(count)
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def completions_emulator(
    start_emulator: StartEmulator, tmp_path: Path, *args: str
) -> EmulatorProcess:
    preload = preload_completions(tmp_path)
    return start_emulator(
        "--api-key", TEST_KEY, "--resource", "chat.completions", "--preload", str(preload), *args
    )


def stored(emu: EmulatorProcess, resource: str, ids: str) -> dict[str, Any]:
    found: dict[str, Any] = emu.admin(f"{resource}/{ids}")
    return found


LIST_ARGS = (
    "--resource", "chat.completions", "--list", "--where", "metadata.team=a",
    "--where", "model=gpt-4o", "--set", "reviewed=yes", "--set", "owner=team-{metadata.team}",
)  # fmt: skip


def run_listing(emu: EmulatorProcess, out: Path, *args: str) -> Any:
    return cli(
        "run", *LIST_ARGS, "--output", str(out), "--base-url", emu.base_url, "--quiet", *args
    )


def killed(emu: EmulatorProcess, args: list[str], requests: int) -> None:
    """``bulk-update run ARGS`` killed -9 once the emulator has seen ``requests`` requests,
    and what it had sent finished with."""
    job = start(*args)
    wait_for_requests(emu, requests)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    wait_for_in_flight(emu)


def test_a_listing_updates_every_listed_completion_once(
    start_emulator: StartEmulator, tmp_path: Path, backend: Backend
) -> None:
    emu = completions_emulator(start_emulator, tmp_path)
    out = tmp_path / "out" / "reviewed.parquet"
    done = run_listing(emu, out, "--page-size", "3", *backend.args)
    assert done.returncode == 0, done.stderr
    frame = results(out)
    listed = wanted()
    assert frame["completion_id"].to_list() == listed  # the listing's order
    assert frame["row_number"].to_list() == list(range(1, len(listed) + 1))
    assert set(frame["status"]) == {"updated"}
    for index in range(COMPLETIONS):
        metadata = stored(emu, "chat.completions", completion_id(index))["metadata"]
        if completion_id(index) in listed:
            assert metadata == {"team": "a", "n": str(index), "reviewed": "yes", "owner": "team-a"}
        else:
            assert "reviewed" not in metadata
    stats = emu.stats()
    # 24 completions filtered by the server: 12 of them, in pages of 3 (the fourth ends it).
    assert len(listed) == 12
    assert stats["by_operation"]["list"] == 4
    # The listing is recorded beside the job's store, named by the run.
    directory = backend.directory if backend.url is None else out.parent
    assert len(list(directory.glob("reviewed.listing-*.parquet"))) == 1
    [run] = backend.history("reviewed")
    assert run.input is not None
    assert ".listing-" in run.input
    # Again: the last run finished, so the API is listed again; nothing changed: nothing sent.
    again = run_listing(emu, out, "--page-size", "3", *backend.args)
    assert again.returncode == 0, again.stderr
    assert emu.stats()["by_operation"]["list"] == 8
    assert emu.stats()["by_operation"].get("update") == len(listed)


def test_kill_9_while_sending_resumes_from_the_recorded_listing(
    start_emulator: StartEmulator, tmp_path: Path, backend: Backend
) -> None:
    emu = completions_emulator(start_emulator, tmp_path)
    out = tmp_path / "out" / "killed.parquet"
    listed = wanted()
    # A request a second: the kill comes with 10 of its 14 requests to go.
    args = [*LIST_ARGS, "--output", str(out), "--base-url", emu.base_url, "--rpm", "60",
            "--concurrency", "2", *backend.args]  # fmt: skip
    killed(emu, args, 4)  # the listing, the preflight, two updates
    lists = emu.stats()["by_operation"]["list"]
    # Meanwhile a listed completion leaves the filter: a new listing would not have it.
    moved = listed[-1]
    answer = httpx2.post(
        f"{emu.base_url}/chat/completions/{moved}",
        json={"metadata": {"team": "b"}}, headers={"authorization": f"Bearer {TEST_KEY}"},
    )  # fmt: skip
    assert answer.status_code == 200
    resumed = cli("run", *args, "--rpm", "6000", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert emu.stats()["by_operation"]["list"] == lists  # read from the recording, not listed
    frame = results(out)
    assert frame["completion_id"].to_list() == listed  # every listed row, once
    assert set(frame["status"]) == {"updated"}
    assert stored(emu, "chat.completions", moved)["metadata"]["reviewed"] == "yes"
    # --restart lists again: the moved completion is no longer there.
    restarted = cli("run", *args, "--rpm", "6000", "--restart", "--quiet")
    assert restarted.returncode == 0, restarted.stderr
    assert results(out)["completion_id"].to_list() == listed[:-1]


def test_kill_9_while_listing_lists_again(
    start_emulator: StartEmulator, tmp_path: Path, backend: Backend
) -> None:
    emu = completions_emulator(start_emulator, tmp_path)
    out = tmp_path / "out" / "cut.parquet"
    args = [*LIST_ARGS, "--output", str(out), "--base-url", emu.base_url, "--page-size", "1",
            "--rpm", "60", *backend.args]  # fmt: skip
    killed(emu, args, 3)  # a page a second: three pages of twelve
    assert emu.stats()["by_operation"].get("update") is None  # nothing sent yet
    lists = emu.stats()["by_operation"]["list"]
    assert lists < len(wanted())
    resumed = cli("run", *args, "--rpm", "6000", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    # Listed whole again: a page of one for each (the last one says there is no more).
    assert emu.stats()["by_operation"]["list"] == lists + len(wanted())
    assert results(out)["completion_id"].to_list() == wanted()
    assert not list(out.parent.glob("*.partial"))
    assert not list(backend.directory.glob("*.partial"))


def test_the_listings_requests_count_against_the_rpm(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    emu = completions_emulator(start_emulator, tmp_path)
    out = tmp_path / "paced.parquet"
    rpm = 300  # a request every 0.2 s
    done = run_listing(emu, out, "--page-size", "1", "--rpm", str(rpm), "--concurrency", "4")
    assert done.returncode == 0, done.stderr
    stats = emu.stats()
    [client] = stats["by_key"].values()
    lists, updates = stats["by_operation"]["list"], stats["by_operation"]["update"]
    assert (lists, updates) == (len(wanted()), len(wanted()))
    # Every request of the job, the listing's pages included, one interval after the last: the
    # span of n requests is at least n - 1 intervals (less a little for the network's jitter).
    # Were the pages not paced, the span would be short of them: 8 intervals (1.6 s) less.
    assert client["requests"] == lists + updates + 1  # and the preflight
    span = client["last_s"] - client["first_s"]
    assert span >= 0.9 * (client["requests"] - 1) * 60 / rpm


def test_a_vector_stores_files_keep_their_types(
    start_emulator: StartEmulator, tmp_path: Path, backend: Backend
) -> None:
    preload = tmp_path / "files.jsonl"
    rows = [
        {"vector_store_id": vs, "file_id": f"file-{vs[-1]}{i}",
         "attributes": json.dumps({"year": 2020 + i, "lang": "en" if i % 2 else "de"})}
        for vs in ("vs_one1", "vs_two2") for i in range(4)
    ]  # fmt: skip
    preload.write_text("".join(json.dumps(row) + "\n" for row in rows))
    emu = start_emulator(
        "--api-key", TEST_KEY, "--resource", "vector_stores.files", "--preload", str(preload)
    )
    out = tmp_path / "tagged.jsonl"
    done = cli(
        "run", "--resource", "vector_stores.files", "--list", "--where",
        "vector_store_id=vs_two2", "--where", "vector_store_id=vs_one1", "--where",
        "attributes.lang=en", "--set", "tagged=yes", "--set", "since={attributes.year}",
        "--output", str(out), "--base-url", emu.base_url, "--quiet", *backend.args,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frame = results(out)
    pairs = list(zip(frame["vector_store_id"], frame["file_id"], strict=True))
    # Per vector store in the order given; the job's own check left the "de" files out.
    assert pairs == [("vs_two2", "file-21"), ("vs_two2", "file-23"),
                     ("vs_one1", "file-11"), ("vs_one1", "file-13")]  # fmt: skip
    attributes = stored(emu, "vector_stores.files", "vs_one1/file-13")["attributes"]
    assert attributes == {"year": 2023, "lang": "en", "tagged": "yes", "since": 2023}


def test_a_dry_run_lists_and_plans_without_a_recording(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    emu = completions_emulator(start_emulator, tmp_path)
    out = tmp_path / "planned.csv"
    done = cli("validate", *LIST_ARGS, "--output", str(out), "--base-url", emu.base_url, "--quiet")
    assert done.returncode == 0, done.stderr
    frame = results(out)
    assert frame["completion_id"].to_list() == wanted()
    assert set(frame["status"]) == {"planned"}
    assert emu.stats()["by_operation"].get("update") is None
    assert emu.stats()["by_operation"]["list"] == 1
    assert "; 1 requests, " in done.stderr  # the listing's, the dry run's only ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["completions.jsonl", "planned.csv"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resource", "conversations", "--list", "--set", "k=v"],
         "bulk-update: error: --list: the API cannot list conversations (it has no list "
         "endpoint): give an input file of conversation IDs\n"),
        (["in.csv", "--resource", "chat.completions", "--list", "--set", "k=v"],
         "bulk-update: error: --list takes the rows from the API: give no INPUT\n"),
        (["in.csv", "--resource", "chat.completions", "--where", "model=x"],
         "bulk-update: error: --where and --set take the rows from the API's listing: give "
         "--list\n"),
        (["--resource", "vector_stores.files", "--list", "--set", "k=v"],
         "bulk-update: error: --list vector_stores.files: give --where vector_store_id=ID "
         "(repeat it for several): the API lists them per vector store\n"),
    ],
)  # fmt: skip
def test_a_listing_the_api_cannot_give_is_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = cli("run", *args, "--output", str(tmp_path / "out.csv"), cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, message)


def test_sigterm_while_listing_stops_with_nothing_recorded(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    emu = completions_emulator(start_emulator, tmp_path)
    out = tmp_path / "stopped.parquet"
    args = [*LIST_ARGS, "--output", str(out), "--base-url", emu.base_url, "--page-size", "1",
            "--rpm", "60"]  # fmt: skip
    job = start(*args)
    wait_for_requests(emu, 2)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 143, stderr
    assert "stopped while listing: nothing was sent and the results were not written" in stderr
    assert emu.stats()["by_operation"].get("update") is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["completions.jsonl"]
    done = cli("run", *args, "--rpm", "6000", "--quiet")
    assert done.returncode == 0, done.stderr
    assert results(out)["completion_id"].to_list() == wanted()


def test_an_unfinished_run_refuses_another_set_and_a_listing_gone(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    emu = completions_emulator(start_emulator, tmp_path)
    out = tmp_path / "gone.parquet"
    args = [*LIST_ARGS, "--output", str(out), "--base-url", emu.base_url, "--rpm", "60"]
    killed(emu, args, 3)
    # Its recorded listing holds what the first --set gave: another is refused, not ignored.
    changed = cli("run", *args, "--set", "extra=1", "--quiet")
    assert changed.returncode == 2
    assert "started with another input or mapping (changed: listing)" in changed.stderr
    assert changed.stderr.count("\n") == 1
    [listing] = tmp_path.glob("gone.listing-*.parquet")
    listing.unlink()
    refused = cli("run", *args, "--quiet")
    assert refused.returncode == 2
    assert refused.stderr.startswith("bulk-update: error: run 1 of job 'gone' is unfinished")
    assert f"its listing {listing} is not here" in refused.stderr
    assert refused.stderr.count("\n") == 1
    restarted = cli("run", *args, "--rpm", "6000", "--restart", "--quiet")
    assert restarted.returncode == 0, restarted.stderr
    assert results(out)["completion_id"].to_list() == wanted()


def test_vector_stores_are_filtered_by_the_job_oldest_first(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    preload = tmp_path / "stores.jsonl"
    owners = ["search", "legal", "search", "search", "legal"]
    ids = [f"vs_store{i}" for i in range(len(owners))]
    preload.write_text("".join(
        json.dumps({"vector_store_id": vs, "metadata": json.dumps({"owner": owner})}) + "\n"
        for vs, owner in zip(ids, owners, strict=True)
    ))  # fmt: skip
    emu = start_emulator(
        "--api-key", TEST_KEY, "--resource", "vector_stores", "--preload", str(preload)
    )
    out = tmp_path / "stores.csv"
    done = cli(
        "run", "--resource", "vector_stores", "--list", "--where", "metadata.owner=search",
        "--set", "tier=gold", "--page-size", "2", "--output", str(out),
        "--base-url", emu.base_url, "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The API lists vector stores newest first unless asked: the job asks for the oldest first.
    searched = [vs for vs, owner in zip(ids, owners, strict=True) if owner == "search"]
    assert results(out)["vector_store_id"].to_list() == searched
    assert emu.stats()["by_operation"]["list"] == 3  # every store listed: 5 in pages of 2
    for vs, owner in zip(ids, owners, strict=True):
        metadata = stored(emu, "vector_stores", vs)["metadata"]
        assert metadata == (
            {"owner": owner, "tier": "gold"} if owner == "search" else {"owner": owner}
        )
