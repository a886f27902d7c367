"""The official openai SDK, unchanged, against the emulator's other objects (a real server on
loopback): stored chat completions, vector stores and vector store files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from bulk_update.emulator import preload_ids
from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator

HEADERS = {"authorization": f"Bearer {TEST_KEY}"}


def sdk(emulator: EmulatorProcess, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.base_url, api_key=TEST_KEY, max_retries=retries)


# Chat completions: 12 preloaded from a file, half of team a; of those, a third with model o3.
COMPLETIONS = [
    {
        "completion_id": f"chatcmpl-{i:029d}",
        "metadata": json.dumps({"team": "a" if i % 2 == 0 else "b", "i": str(i)}),
        "model": "o3" if i % 3 == 0 else "gpt-4.1-mini",
    }
    for i in range(12)
]


@pytest.fixture(scope="module")
def completions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    path = tmp_path_factory.mktemp("preload") / "completions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in COMPLETIONS))
    args = ("--api-key", TEST_KEY, "--resource", "chat.completions", "--preload", str(path))
    with EmulatorProcess(*args) as emu:
        yield emu


@pytest.fixture(scope="module")
def files() -> Iterator[EmulatorProcess]:
    with EmulatorProcess("--api-key", TEST_KEY, "--resource", "vector_stores.files",
                         "--preload", "30") as emu:  # fmt: skip
        yield emu


def test_chat_completion_retrieve_update_merges(completions: EmulatorProcess) -> None:
    client = sdk(completions)
    completion_id = COMPLETIONS[4]["completion_id"]
    fetched = client.chat.completions.retrieve(completion_id)
    assert (fetched.id, fetched.object, fetched.model) == (
        completion_id, "chat.completion", "gpt-4.1-mini",
    )  # fmt: skip
    assert fetched.choices[0].message.role == "assistant"
    assert fetched.metadata == {"team": "a", "i": "4"}
    updated = client.chat.completions.update(completion_id, metadata={"reviewed": "yes"})
    assert updated.metadata == {"team": "a", "i": "4", "reviewed": "yes"}
    again = client.chat.completions.retrieve(completion_id)
    assert again.metadata == updated.metadata
    admin = completions.admin(f"chat.completions/{completion_id}")
    assert admin["metadata"] == updated.metadata


def test_chat_completion_list_filters_and_pages(completions: EmulatorProcess) -> None:
    client = sdk(completions)
    before = completions.stats()["by_resource"]["chat.completions"].get("list", 0)
    team_a = client.chat.completions.list(metadata={"team": "a"}, limit=2)
    # The SDK's auto-pager follows `after` across pages: 6 rows, 3 pages (the last says no more).
    ids = [completion.id for completion in team_a]
    assert ids == [row["completion_id"] for row in COMPLETIONS[::2]]
    assert completions.stats()["by_resource"]["chat.completions"]["list"] - before == 3
    by_model = client.chat.completions.list(metadata={"team": "a"}, model="o3", limit=1)
    assert [c.id for c in by_model] == [COMPLETIONS[i]["completion_id"] for i in (0, 6)]
    newest = client.chat.completions.list(order="desc", limit=3)
    assert [c.id for c in newest.data] == [row["completion_id"] for row in COMPLETIONS[:-4:-1]]
    assert newest.has_more
    assert [c.id for c in client.chat.completions.list(model="none")] == []


def test_list_rejects_bad_paging(completions: EmulatorProcess) -> None:
    client = sdk(completions)
    for bad in ({"after": "chatcmpl-missing"}, {"limit": 0}, {"limit": 101}, {"order": "up"}):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.list(**bad)
        assert info.value.param == next(iter(bad))


@pytest.mark.parametrize(
    ("metadata", "param", "code"),
    [
        ({f"k{i}": "v" for i in range(15)}, "metadata", "object_above_max_properties"),
        ({"k" * 65: "v"}, "metadata", "string_above_max_length"),
        ({"k": "é" * 513}, "metadata.k", "string_above_max_length"),
        ({"k": 5}, "metadata.k", "invalid_type"),
        ({"k": True}, "metadata.k", "invalid_type"),
        (None, "metadata", "invalid_type"),
    ],
)
def test_chat_completion_metadata_rules(
    completions: EmulatorProcess, metadata: object, param: str, code: str
) -> None:
    client = sdk(completions)
    completion_id = COMPLETIONS[1]["completion_id"]  # two pairs stored: 15 more make 17
    before = client.chat.completions.retrieve(completion_id).metadata
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.update(completion_id, metadata=metadata)  # type: ignore[arg-type]
    assert (info.value.param, info.value.code) == (param, code)
    assert client.chat.completions.retrieve(completion_id).metadata == before


def test_missing_body_field_and_unknown_ids(completions: EmulatorProcess) -> None:
    with httpx2.Client(base_url=completions.base_url, headers=HEADERS) as client:
        url = f"/chat/completions/{COMPLETIONS[2]['completion_id']}"
        missing = client.post(url, json={})
        assert missing.status_code == 400
        assert missing.json()["error"]["code"] == "missing_required_parameter"
        assert client.get("/chat/completions/chatcmpl-nope").status_code == 404
        # A body field another kind uses (a file's map is `attributes`) is refused, not ignored.
        store = client.post(f"/vector_stores/{preload_ids('vector_stores', 0)[0]}",
                            json={"attributes": {"a": "b"}})  # fmt: skip
        assert (store.status_code, store.json()["error"]["param"]) == (400, "attributes")
        assert client.post("/vector_stores/vs_nope", json={"metadata": {}}).status_code == 404
        assert client.get("/vector_stores/vs_nope/files").status_code == 404
    per_id = completions.stats(per_id=True)
    assert per_id["update_requests_by_id"]["vs_nope"] == 1  # asked, as conversations count it
    assert "vs_nope" not in per_id["updates_applied_by_id"]


def test_vector_store_retrieve_update_list(files: EmulatorProcess) -> None:
    client = sdk(files)
    stores = [preload_ids("vector_stores", i)[0] for i in range(4)]
    store = client.vector_stores.retrieve(stores[1])
    assert (store.id, store.object, store.file_counts.total) == (stores[1], "vector_store", 8)
    client.vector_stores.update(stores[1], metadata={"owner": "search"})
    updated = client.vector_stores.update(stores[1], metadata={"tier": "gold"})
    assert updated.metadata == {"owner": "search", "tier": "gold"}
    # A vector store's update may leave its metadata out (its name only): nothing changes.
    assert client.vector_stores.update(stores[1], name="x").metadata == updated.metadata
    # Newest first by default (the API's default order for vector stores), then pages of one.
    listed = [s.id for s in client.vector_stores.list(limit=1)]
    assert sorted(listed) == sorted(stores)
    assert [s.id for s in client.vector_stores.list(order="asc", limit=3)] == listed[::-1]


def test_vector_store_files_typed_attributes(files: EmulatorProcess) -> None:
    client = sdk(files)
    store, file_id = preload_ids("vector_stores.files", 5)
    assert store == preload_ids("vector_stores", 1)[0]  # file i in store i % 4
    fetched = client.vector_stores.files.retrieve(file_id, vector_store_id=store)
    assert (fetched.object, fetched.vector_store_id, fetched.attributes) == (
        "vector_store.file", store, {},
    )  # fmt: skip
    client.vector_stores.files.update(file_id, vector_store_id=store, attributes={"a": "x"})
    updated = client.vector_stores.files.update(
        file_id, vector_store_id=store, attributes={"n": 12, "ok": True, "r": 0.5}
    )
    assert updated.attributes == {"a": "x", "n": 12, "ok": True, "r": 0.5}
    # The wire keeps 12 an integer (the SDK's model reads every number as a float).
    raw = files.admin(f"vector_stores.files/{store}/{file_id}")["attributes"]
    assert json.dumps(raw, sort_keys=True) == '{"a": "x", "n": 12, "ok": true, "r": 0.5}'
    stats = files.stats(per_id=True)
    assert stats["updates_applied_by_id"][f"{store}/{file_id}"] == 2
    # attributes: null (the reference's type allows it) clears them.
    cleared = client.vector_stores.files.update(file_id, vector_store_id=store, attributes=None)
    assert cleared.attributes == {}
    with pytest.raises(openai.NotFoundError):  # a file of another store
        client.vector_stores.files.retrieve(
            file_id, vector_store_id=preload_ids("vector_stores", 0)[0]
        )


@pytest.mark.parametrize(
    ("attributes", "param", "code"),
    [
        ({"k": {"nested": "x"}}, "attributes.k", "invalid_type"),
        ({"k": ["x"]}, "attributes.k", "invalid_type"),
        ({"k": None}, "attributes.k", "invalid_type"),
        ({"k": "v" * 513}, "attributes.k", "string_above_max_length"),
        ({"k" * 65: 1}, "attributes", "string_above_max_length"),
        ({f"k{i}": i for i in range(17)}, "attributes", "object_above_max_properties"),
    ],
)
def test_vector_store_file_attribute_rules(
    files: EmulatorProcess, attributes: dict[str, object], param: str, code: str
) -> None:
    client = sdk(files)
    store, file_id = preload_ids("vector_stores.files", 7)
    with pytest.raises(openai.BadRequestError) as info:
        client.vector_stores.files.update(
            file_id,
            vector_store_id=store,
            attributes=attributes,  # type: ignore[arg-type]
        )
    assert (info.value.param, info.value.code) == (param, code)
    assert client.vector_stores.files.retrieve(file_id, vector_store_id=store).attributes == {}


def test_non_finite_attribute_is_refused(files: EmulatorProcess) -> None:
    store, file_id = preload_ids("vector_stores.files", 9)
    url = f"{files.base_url}/vector_stores/{store}/files/{file_id}"
    answer = httpx2.post(url, content=b'{"attributes": {"x": NaN}}', headers=HEADERS)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "attributes.x"


def test_vector_store_files_list_pages_within_a_store(files: EmulatorProcess) -> None:
    client = sdk(files)
    store = preload_ids("vector_stores", 2)[0]
    expected = [preload_ids("vector_stores.files", i)[1] for i in range(2, 30, 4)]
    listed = [f.id for f in client.vector_stores.files.list(store, order="asc", limit=3)]
    assert listed == expected
    newest = [f.id for f in client.vector_stores.files.list(store, limit=100)]
    assert newest == expected[::-1]


def test_stats_per_resource_and_in_total(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--resource", "chat.completions", "--preload", "3")
    client = sdk(emu)
    conversation = client.conversations.create(metadata={})
    client.conversations.update(conversation.id, metadata={"a": "b"})
    completion_id = preload_ids("chat.completions", 2)[0]
    client.chat.completions.update(completion_id, metadata={"a": "b"})
    client.chat.completions.list()
    stats = emu.stats()
    assert stats["by_operation"] == {"create": 1, "update": 2, "list": 1}
    assert stats["by_resource"] == {
        "conversations": {"create": 1, "update": 1},
        "chat.completions": {"update": 1, "list": 1},
    }
    assert stats["conversations"] == 1
    assert stats["objects"] == {
        "conversations": 1, "chat.completions": 3, "vector_stores": 0, "vector_stores.files": 0,
    }  # fmt: skip
    assert stats["requests"] == 4
    emu.admin("reset-counters", {})
    assert emu.stats()["by_resource"] == {}


def test_limit_and_faults_apply_to_every_resource(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--rpm", "60", "--resource", "vector_stores", "--preload", "1")
    store = preload_ids("vector_stores", 0)[0]
    client = sdk(emu)
    client.vector_stores.retrieve(store)
    with pytest.raises(openai.RateLimitError):
        client.vector_stores.list()
    assert emu.stats()["by_status"] == {"200": 1, "429": 1}
    emu = start_emulator("--error-rate", "0.3", "--random-seed", "5",
                         "--resource", "vector_stores.files", "--preload", "8")  # fmt: skip
    client = sdk(emu, retries=10)
    for i in range(8):
        store, file_id = preload_ids("vector_stores.files", i)
        client.vector_stores.files.update(file_id, vector_store_id=store, attributes={"i": i})
    by_status = emu.stats()["by_status"]
    assert by_status["200"] == 8
    assert sum(n for status, n in by_status.items() if status != "200") > 0


def test_preload_ids_look_real_and_are_stable() -> None:
    completion = preload_ids("chat.completions", 0)[0]
    assert (completion[:9], len(completion)) == ("chatcmpl-", 38)
    store = preload_ids("vector_stores", 0)[0]
    assert (store[:3], len(store)) == ("vs_", 35)
    pairs = [preload_ids("vector_stores.files", i) for i in range(100)]
    assert {pair[0] for pair in pairs} == {preload_ids("vector_stores", i)[0] for i in range(4)}
    assert len({pair[1] for pair in pairs}) == 100
    assert all(pair[1].startswith("file-") and len(pair[1]) == 27 for pair in pairs)
    # Stable everywhere: an input built for a preloaded emulator names what another process holds.
    assert completion == "chatcmpl-CKoogsydBVexv9baByI4k8iN9PM8j"
    assert (
        preload_ids("conversations", 7)[0]
        == "conv_79c2bd592e4876864447029bb01d6d6699b404fe0e2a9e38"
    )


def test_preload_file_of_files_creates_their_stores(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "files.csv"
    path.write_text(
        "store,file,attributes\n"
        'vs_one,file-a,"{""n"": 3, ""ok"": false}"\n'
        "vs_one,file-b,\n"
        "vs_two,file-a,\n"
    )
    emu = start_emulator("--resource", "vector_stores.files", "--preload", str(path),
                         "--id-column", "store,file")  # fmt: skip
    assert emu.admin("vector_stores.files/vs_one/file-a")["attributes"] == {"n": 3, "ok": False}
    assert emu.stats()["objects"]["vector_stores"] == 2
    assert [f.id for f in sdk(emu).vector_stores.files.list("vs_one", order="asc")] == [
        "file-a", "file-b",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--resource", "vector_stores.files", "--id-column", "file_id"], "needs 2 ID column"),
        (["--resource", "chat.completions"], "no 'completion_id' column"),
        (["--resource", "vector_stores.files", "--id-column", "a,b"], "no 'a' column"),
    ],
)
def test_preload_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "ids.csv"
    path.write_text("conversation_id,attributes\nconv_1,\n")
    done = subprocess.run(
        [sys.executable, "-m", "bulk_update", "emulator", "--port", "0",
         "--preload", str(path), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_attributes_in_preload_file_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "files.jsonl"
    path.write_text(json.dumps({"vector_store_id": "vs_1", "file_id": "file-1",
                                "attributes": {"k": {"deep": 1}}}) + "\n")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "bulk_update", "emulator", "--port", "0",
         "--resource", "vector_stores.files", "--preload", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "row 1 (vs_1/file-1), column attributes: Invalid type" in done.stderr
