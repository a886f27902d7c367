"""The official openai SDK, unchanged, as the emulator's client (a real server on loopback)."""

from __future__ import annotations

import httpx2
import openai
import pytest

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator


@pytest.fixture(scope="module")
def client(emulator: EmulatorProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=emulator.base_url, api_key=TEST_KEY, max_retries=0)


def test_create_update_merges_retrieve_delete(client: openai.OpenAI) -> None:
    created = client.conversations.create(metadata={"team": "support", "tier": "gold"})
    assert created.id.startswith("conv_")
    assert len(created.id) == 53
    assert all(c in "0123456789abcdef" for c in created.id[5:])
    assert created.object == "conversation"
    assert isinstance(created.created_at, int)

    updated = client.conversations.update(created.id, metadata={"tier": "platinum", "n": "7"})
    assert updated.metadata == {"team": "support", "tier": "platinum", "n": "7"}

    fetched = client.conversations.retrieve(created.id)
    assert fetched.metadata == updated.metadata
    assert fetched.created_at == created.created_at

    deleted = client.conversations.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (
        created.id, "conversation.deleted", True,
    )  # fmt: skip
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve(created.id)


def test_request_id_header_on_every_response(client: openai.OpenAI) -> None:
    raw = client.conversations.with_raw_response.create(metadata={})
    assert raw.headers["x-request-id"].startswith("req_")
    missing = client.conversations.with_raw_response
    with pytest.raises(openai.NotFoundError) as info:
        missing.retrieve("conv_" + "0" * 48)
    assert info.value.response.headers["x-request-id"].startswith("req_")
    assert info.value.request_id is not None


@pytest.mark.parametrize(
    ("metadata", "param", "code"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata", "object_above_max_properties"),
        ({"k" * 65: "v"}, "metadata", "string_above_max_length"),
        ({"k": "é" * 513}, "metadata.k", "string_above_max_length"),
        ({"k": 5}, "metadata.k", "invalid_type"),
        ({"k": None}, "metadata.k", "invalid_type"),
    ],
)
def test_metadata_rules_raise_bad_request(
    client: openai.OpenAI, metadata: dict[str, object], param: str, code: str
) -> None:
    conversation = client.conversations.create(metadata={})
    with pytest.raises(openai.BadRequestError) as info:
        client.conversations.update(conversation.id, metadata=metadata)  # type: ignore[arg-type]
    assert info.value.param == param
    assert info.value.code == code
    # Nothing was stored by the rejected update.
    assert client.conversations.retrieve(conversation.id).metadata == {}


def test_metadata_limits_are_inclusive_and_count_characters(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(metadata={})
    # 512 two-byte characters (1024 bytes) and a 64-character key are allowed.
    value = "é" * 512
    updated = client.conversations.update(conversation.id, metadata={"k" * 64: value})
    assert updated.metadata == {"k" * 64: value}
    full = {f"k{i}": "v" for i in range(15)}
    assert client.conversations.update(conversation.id, metadata=full).metadata == {
        "k" * 64: value,
        **full,
    }


def test_sixteen_pairs_apply_to_the_merged_map(client: openai.OpenAI) -> None:
    conversation = client.conversations.create(metadata={f"a{i}": "v" for i in range(10)})
    with pytest.raises(openai.BadRequestError) as info:
        client.conversations.update(conversation.id, metadata={f"b{i}": "v" for i in range(7)})
    assert info.value.code == "object_above_max_properties"
    # Overwriting existing keys does not grow the map.
    same = client.conversations.update(conversation.id, metadata={f"a{i}": "w" for i in range(10)})
    assert same.metadata == {f"a{i}": "w" for i in range(10)}


def test_unknown_id_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.conversations.update("conv_" + "f" * 48, metadata={"a": "b"})


def test_malformed_json_and_missing_metadata_are_400(emulator: EmulatorProcess) -> None:
    client = openai.OpenAI(base_url=emulator.base_url, api_key=TEST_KEY, max_retries=0)
    conversation = client.conversations.create(metadata={})
    headers = {"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"}
    url = f"{emulator.base_url}/conversations/{conversation.id}"
    malformed = httpx2.post(url, content=b'{"metadata": {', headers=headers)
    assert malformed.status_code == 400
    assert "could not parse the JSON body" in malformed.json()["error"]["message"]
    missing = httpx2.post(url, json={}, headers=headers)
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_required_parameter"
    no_body = httpx2.post(url, headers={"authorization": f"Bearer {TEST_KEY}"})
    assert no_body.status_code == 400
    assert no_body.json()["error"]["code"] == "missing_required_parameter"
    assert no_body.json()["error"]["param"] == "metadata"
    # As the live API (although the OpenAPI document marks it nullable): null is refused.
    null = httpx2.post(url, json={"metadata": None}, headers=headers)
    assert null.status_code == 400
    assert (null.json()["error"]["code"], null.json()["error"]["param"]) == (
        "invalid_type", "metadata",
    )  # fmt: skip
    with pytest.raises(openai.BadRequestError) as info:
        client.conversations.update(conversation.id, metadata=None)
    assert info.value.code == "invalid_type"


def test_wrong_or_missing_key_is_authentication_error(emulator: EmulatorProcess) -> None:
    wrong = openai.OpenAI(base_url=emulator.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        wrong.conversations.create(metadata={})
    assert info.value.code == "invalid_api_key"
    assert "sk-wrong" not in str(info.value)
    anonymous = httpx2.post(f"{emulator.base_url}/conversations", json={})
    assert anonymous.status_code == 401


def test_without_api_key_flag_any_nonempty_key_passes(start_emulator: StartEmulator) -> None:
    emu = start_emulator()
    client = openai.OpenAI(base_url=emu.base_url, api_key="anything", max_retries=0)
    assert client.conversations.create(metadata={"a": "b"}).metadata == {"a": "b"}


def test_rpm_limit_answers_rate_limit_error(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--rpm", "120")  # two a second
    client = openai.OpenAI(base_url=emu.base_url, api_key=TEST_KEY, max_retries=0)
    ok = client.conversations.with_raw_response.create(metadata={})
    assert ok.headers["x-ratelimit-limit-requests"] == "120"
    assert "x-ratelimit-remaining-requests" in ok.headers
    assert "x-ratelimit-reset-requests" in ok.headers
    client.conversations.create(metadata={})
    with pytest.raises(openai.RateLimitError) as info:
        client.conversations.create(metadata={})
    assert info.value.code == "rate_limit_exceeded"
    headers = info.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert 0 < float(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    stats = emu.stats()
    assert stats["by_status"] == {"200": 2, "429": 1}


def test_sdk_retries_through_rate_limit_and_faults(start_emulator: StartEmulator) -> None:
    """The SDK's own retry policy copes with the emulator's 429s and 5xx (headers honoured)."""
    emu = start_emulator("--rpm", "600", "--error-rate", "0.2", "--random-seed", "3")
    client = openai.OpenAI(base_url=emu.base_url, api_key=TEST_KEY, max_retries=8)
    ids = [client.conversations.create(metadata={"i": str(i)}).id for i in range(15)]
    assert len(set(ids)) == 15
    by_status = emu.stats()["by_status"]
    assert by_status["200"] == 15
    assert sum(n for status, n in by_status.items() if status != "200") > 0
