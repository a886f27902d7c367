"""Know the server before writing, with the real CLI against the emulator: validate
--check-server, run --backup (before-images), and revert (never over someone else's change)."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from pathlib import Path

import httpx2

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import ID, by_row, cli, start, wait_for_requests

FULL = {f"f{n}": "x" for n in range(15)}  # a conversation another tool filled to 15 keys


def text(metadata: dict[str, str]) -> str:
    """A map as the job writes JSON text (the server's key order kept)."""
    return json.dumps(metadata, ensure_ascii=False, separators=(",", ":"))


def write_server(path: Path, maps: dict[str, dict[str, str]]) -> None:
    """A --preload file: conversation_id and its metadata (a JSON object)."""
    lines = ["conversation_id,metadata"]
    lines += [f'{cid},"{text(m).replace(chr(34), chr(34) * 2)}"' for cid, m in maps.items()]
    path.write_text("\n".join(lines) + "\n")


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")


def stored(emu: EmulatorProcess, conversation_id: str) -> dict[str, str]:
    metadata: dict[str, str] = emu.admin(f"conversations/{conversation_id}")["metadata"]
    return metadata


def updates(emu: EmulatorProcess) -> int:
    return int(emu.stats()["by_operation"].get("update", 0))


def summary_line(stderr: str) -> str:
    return next(line for line in stderr.splitlines() if line.startswith("bulk-update: "))


def test_check_server_reads_every_row_and_sends_nothing(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    server = {
        ID(0): FULL,  # + owner: 16, the most there may be
        ID(1): FULL,  # + owner + queue: 17
        ID(2): {"owner": "ana", "queue": "q1"},  # the row's values: unchanged
        **{ID(i): {"queue": "q0"} for i in range(4, 10)},  # + owner
        ID(10): {**FULL, "f15": "x"},  # 16 keys; the row changes one of them: no new key
    }
    write_server(tmp_path / "server.csv", server)
    emu = start_emulator("--preload", str(tmp_path / "server.csv"))
    rows = [
        [ID(0), "bob", "", ""],
        [ID(1), "bob", "q2", ""],
        [ID(2), "ana", "q1", ""],
        [ID(3), "bob", "", ""],  # the server does not have it
        *([ID(i), "bob", "q0", ""] for i in range(4, 10)),
        [ID(10), "", "", "y"],
        ["conv_bad id", "bob", "", ""],  # invalid before any request
    ]
    source = tmp_path / "change.csv"
    write_rows(source, ["conversation_id", "owner", "queue", "f0"], rows)
    output = tmp_path / "check.csv"
    done = cli("validate", str(source), "--output", str(output), "--check-server",
               "--base-url", emu.base_url, "--log-format", "json")  # fmt: skip
    assert done.returncode == 1, done.stderr
    result = by_row(output)
    assert [result[n]["status"] for n in range(1, 13)] == [
        "planned", "invalid", "unchanged", "invalid", *["planned"] * 6, "planned", "invalid",
    ]  # fmt: skip
    assert result[2]["error_code"] == "merged_too_many_pairs"
    assert result[2]["error_message"] == (
        "the server holds 15 keys; with this row's 2 new keys it would hold 17; at most 16"
    )
    assert result[4]["error_code"] == "not_found"
    assert result[12]["error_code"] == "invalid_id"
    for n, row in result.items():
        conversation_id = row["conversation_id"]
        expected = text(server[conversation_id]) if conversation_id in server else None
        assert row["server_metadata"] == expected, n
        assert row["previous_metadata"] is None
    assert updates(emu) == 0  # nothing is ever sent
    by_operation = emu.stats()["by_operation"]
    assert by_operation["retrieve"] == 11 + 1  # each valid row once, and the preflight
    line = summary_line(done.stderr)
    assert "11 reads" in line
    assert "would add key 'owner' to 7 conversations; keys cannot be removed" in line
    assert "'queue'" not in line  # the six hold it already; row 2 is refused
    events = [json.loads(e) for e in done.stderr.splitlines() if e.startswith("{")]
    added = [(e["key"], e["conversations"]) for e in events if e.get("event") == "adds_key"]
    assert added == [("owner", 7)]
    assert not list(tmp_path.glob("*.sqlite"))  # a check writes nothing of the job's


def test_reads_count_against_the_emulators_rate_limit(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--api-key", TEST_KEY, "--preload", "3", "--rpm", "60")
    headers = {"authorization": f"Bearer {TEST_KEY}"}
    from bulk_update.emulator import preload_id

    with httpx2.Client(base_url=emu.base_url, headers=headers) as client:
        answers = [client.get(f"/conversations/{preload_id(i % 3)}") for i in range(10)]
        answers.append(client.get("/conversations/conv_unknown"))
    limited = [a for a in answers if a.status_code == 429]
    assert limited, [a.status_code for a in answers]
    assert all("retry-after" in a.headers for a in limited)
    assert answers[0].status_code == 200
    assert "x-ratelimit-limit-requests" in answers[0].headers


def backup_fixture(tmp_path: Path) -> tuple[dict[str, dict[str, str]], Path]:
    """20 conversations to update (tier changed, owner added), one that would get a 17th key,
    one whose values the server holds, one the server does not have."""
    server = {ID(i): {"tier": "old", "region": "eu"} if i % 3 == 0 else {"tier": "old"}
              for i in range(20)}  # fmt: skip
    server[ID(20)] = FULL
    server[ID(21)] = {"tier": "new", "owner": "o21"}
    write_server(tmp_path / "server.csv", server)
    source = tmp_path / "fix.csv"
    write_rows(source, ["conversation_id", "tier", "owner"],
               [[ID(i), "new", f"o{i}"] for i in range(23)])  # fmt: skip
    return server, source


def test_backup_keeps_before_images_and_revert_puts_them_back(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    server, source = backup_fixture(tmp_path)
    emu = start_emulator("--preload", str(tmp_path / "server.csv"))
    url = ("--base-url", emu.base_url, "--rpm", "1000000")
    results = tmp_path / "fix.parquet"
    done = cli("run", str(source), "--output", str(results), "--backup", "--concurrency", "4", *url)
    assert done.returncode == 1, done.stderr  # the 17th key and the unknown conversation
    rows = by_row(results)
    assert {n: rows[n]["status"] for n in (21, 22, 23)} == {
        21: "invalid", 22: "unchanged", 23: "failed"
    }  # fmt: skip
    assert rows[21]["error_code"] == "merged_too_many_pairs"
    assert rows[23]["error_code"] == "not_found"
    for i in range(20):
        assert rows[i + 1]["status"] == "updated"
        # Byte for byte what the server held before.
        assert rows[i + 1]["previous_metadata"] == text(server[ID(i)])
    assert rows[22]["previous_metadata"] == text(server[ID(21)])
    requested = emu.stats(per_id=True)["update_requests_by_id"]
    assert set(requested) == {ID(i) for i in range(20)}  # no update for the other three
    line = summary_line(done.stderr)
    assert "(23 reads)" in line
    assert "added key 'owner' to 20 conversations; keys cannot be removed" in line
    with sqlite3.connect(tmp_path / "fix.sqlite") as db:  # the images are in the store
        kept = dict(db.execute("SELECT row_number, previous_metadata FROM run_outcomes"))
    assert kept[1] == text(server[ID(0)])

    # Someone changes conversation 5's tier after the run.
    emu_post(emu, ID(5), {"tier": "manual"})
    sent = updates(emu)
    dry = cli("revert", str(results), "--output", str(tmp_path / "revert-plan.csv"),
              "--dry-run", *url)  # fmt: skip
    assert dry.returncode == 1, dry.stderr
    plan = by_row(tmp_path / "revert-plan.csv")
    assert [plan[i + 1]["status"] for i in range(20)].count("planned") == 19
    assert plan[6]["status"] == "invalid"
    assert plan[6]["error_code"] == "drifted"
    assert plan[1]["sent_metadata"] == text({"tier": "old"})
    assert updates(emu) == sent  # a dry run sends nothing

    revert = tmp_path / "revert.csv"
    undone = cli("revert", str(results), "--output", str(revert), *url)
    assert undone.returncode == 1, undone.stderr
    reverted = by_row(revert)
    assert sorted(reverted) == list(range(1, 24))
    assert reverted[6]["status"] == "invalid"
    assert reverted[6]["error_message"] == (
        "changed since the run: 'tier' is 'manual' (the run set 'new'); left alone "
        "(--force reverts anyway)"
    )
    assert {reverted[n]["status"] for n in (21, 22, 23)} == {"unchanged"}  # nothing to revert
    for i in range(20):
        if i == 5:
            assert stored(emu, ID(i)) == {"tier": "manual", "owner": "o5"}
            continue
        assert reverted[i + 1]["status"] == "updated"
        # The key the run changed is back; the key it added stays (the API cannot remove it).
        assert stored(emu, ID(i)) == {**server[ID(i)], "owner": f"o{i}"}
    assert "key 'owner' stays on 20 conversations" in summary_line(undone.stderr)

    again = cli("revert", str(results), "--output", str(revert), *url)
    assert again.returncode == 1
    assert "0 requests" in summary_line(again.stderr)  # the same command: the run is done

    forced = cli("revert", str(results), "--output", str(tmp_path / "forced.csv"), "--force", *url)
    assert forced.returncode == 0, forced.stderr
    assert by_row(tmp_path / "forced.csv")[6]["status"] == "updated"
    assert stored(emu, ID(5)) == {"tier": "old", "owner": "o5"}

    blank = cli("revert", str(results), "--output", str(tmp_path / "blank.csv"),
                "--blank-added-keys", *url)  # fmt: skip
    assert blank.returncode == 0, blank.stderr
    assert "stays on" not in summary_line(blank.stderr)
    for i in range(20):
        assert stored(emu, ID(i)) == {**server[ID(i)], "owner": ""}

    # The job's state follows the reverts: the next run of the same change sends the reverted
    # rows again (not "unchanged"), and not the row whose values the server held.
    before = emu.stats(per_id=True)["update_requests_by_id"]
    nightly = cli("run", str(source), "--output", str(tmp_path / "fix-again.csv"),
                  "--job-name", "fix", *url)  # fmt: skip
    after = emu.stats(per_id=True)["update_requests_by_id"]
    assert nightly.returncode == 1  # the 17th key, now refused by the server itself
    assert {ID(i) for i in range(20)} <= {c for c in after if after[c] > before.get(c, 0)}
    assert by_row(tmp_path / "fix-again.csv")[22]["status"] == "unchanged"


def emu_post(emu: EmulatorProcess, conversation_id: str, metadata: dict[str, str]) -> None:
    answer = httpx2.post(
        f"{emu.base_url}/conversations/{conversation_id}",
        json={"metadata": metadata},
        headers={"authorization": f"Bearer {TEST_KEY}"},
        timeout=30,
    )
    answer.raise_for_status()


def kill_at_random_moments(
    emu: EmulatorProcess, args: tuple[str, ...], command: str, seed: int
) -> int:
    rng = random.Random(seed)
    kills = 0
    for _ in range(3):
        process = start(*args, command=command)
        wait_for_requests(emu, emu.stats()["requests"] + 4)
        time.sleep(rng.uniform(0.0, 0.6))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    return kills


def test_backup_and_revert_killed_with_kill_9_resume_with_every_image(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    n = 400
    server = {ID(i): {"tier": "old", "n": str(i)} for i in range(n)}
    write_server(tmp_path / "server.csv", server)
    source = tmp_path / "in.csv"
    write_rows(source, ["conversation_id", "tier"], [[ID(i), "new"] for i in range(n)])
    emu = start_emulator("--preload", str(tmp_path / "server.csv"), "--latency-ms", "20")
    results = tmp_path / "out.csv"
    common = ("--base-url", emu.base_url, "--concurrency", "8", "--rpm", "1000000")
    args = (str(source), "--output", str(results), "--backup", *common)
    kills = kill_at_random_moments(emu, args, "run", 20261128)
    assert kills >= 2
    final = cli("run", *args)
    assert final.returncode == 0, final.stderr
    rows = by_row(results)
    assert sorted(rows) == list(range(1, n + 1))
    for i in range(n):
        assert rows[i + 1]["status"] == "updated"
        # Never the row's own values: a row sent by a killed invocation keeps the image that
        # invocation read before sending it.
        assert rows[i + 1]["previous_metadata"] == text(server[ID(i)]), i
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert set(applied) == set(server)
    # A row whose update landed before the kill is found so on the re-read: never sent twice.
    assert max(applied.values()) == 1

    revert = tmp_path / "revert.csv"
    revert_args = (str(results), "--output", str(revert), *common)
    kills = kill_at_random_moments(emu, revert_args, "revert", 7)
    assert kills >= 2
    done = cli("revert", *revert_args)
    assert done.returncode == 0, done.stderr
    reverted = by_row(revert)
    assert sorted(reverted) == list(range(1, n + 1))
    assert {row["status"] for row in reverted.values()} == {"updated"}
    for i in range(0, n, 7):
        assert stored(emu, ID(i)) == server[ID(i)]
        assert reverted[i + 1]["previous_metadata"] == text({"tier": "new", "n": str(i)})
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert max(applied.values()) == 2  # the run's update and the revert's, each once


def test_revert_refuses_results_without_before_images(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_rows(source, ["conversation_id", "tier"], [[ID(i), "new"] for i in range(5)])
    emu = start_emulator("--preload", str(source))
    results = tmp_path / "plain.csv"
    assert (
        cli("run", str(source), "--output", str(results), "--base-url", emu.base_url).returncode
        == 0
    )
    sent = emu.stats()["requests"]
    refused = cli("revert", str(results), "--output", str(tmp_path / "r.csv"),
                  "--base-url", emu.base_url)  # fmt: skip
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert "plain.csv" in lines[0]
    assert "--backup" in lines[0]
    not_results = cli("revert", str(source), "--output", str(tmp_path / "r.csv"),
                      "--base-url", emu.base_url)  # fmt: skip
    assert not_results.returncode == 2
    assert "not a results file" in not_results.stderr
    assert emu.stats()["requests"] == sent  # nothing was sent
    assert not (tmp_path / "r.csv").exists()


def test_backup_stops_when_the_server_replaces_instead_of_merging(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    before = {f"k{k}": f"v{k}" for k in range(8)}
    server = {ID(i): before for i in range(50)}
    write_server(tmp_path / "server.csv", server)
    source = tmp_path / "in.csv"
    write_rows(source, ["conversation_id", "tier"], [[ID(i), "new"] for i in range(50)])
    emu = start_emulator("--preload", str(tmp_path / "server.csv"))
    emu.admin("config", {"replace_metadata": True})
    results = tmp_path / "out.csv"
    done = cli("run", str(source), "--output", str(results), "--backup", "--concurrency", "1",
               "--base-url", emu.base_url)  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"{ID(0)}: the server replaced its metadata instead of merging" in done.stderr
    assert "key(s) 'k0', 'k1', 'k2', 'k3', 'k4' and 3 more that it held" in done.stderr
    rows = by_row(results)
    assert rows[1]["status"] == "updated"
    assert rows[1]["previous_metadata"] == text(before)  # the way back is kept
    assert [rows[n]["status"] for n in range(2, 51)] == ["unprocessed"] * 49
    assert updates(emu) == 1  # stopped before a second conversation lost a key
    assert stored(emu, ID(0)) == {"tier": "new"}

    # The revert puts back what the server dropped (nobody's change: not drift), on the same
    # replacing server: the whole before-image, so the run's own key goes too.
    undo = tmp_path / "undo.csv"
    undone = cli("revert", str(results), "--output", str(undo), "--base-url", emu.base_url)
    assert undone.returncode == 0, undone.stderr
    assert by_row(undo)[1]["status"] == "updated"
    assert stored(emu, ID(0)) == before
    assert "added key" not in undone.stderr  # it put keys back; it added none
    assert updates(emu) == 2
    # On a server that merges (the replacing was a fault since mended), the same: the key the
    # run added stays (the API cannot remove it), counted.
    emu_post(emu, ID(0), {"tier": "new"})  # as the run left it (replacing: only its key)
    emu.admin("config", {"replace_metadata": False})
    assert stored(emu, ID(0)) == {"tier": "new"}
    again = cli("revert", str(results), "--output", str(tmp_path / "undo2.csv"),
                "--base-url", emu.base_url)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert stored(emu, ID(0)) == {**before, "tier": "new"}
    assert "key 'tier' stays on 1 conversation" in again.stderr
