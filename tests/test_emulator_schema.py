"""Every kind of emulator response body validates against the official OpenAPI schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest
import yaml

from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import TEST_KEY, StartEmulator

SPEC = yaml.safe_load((Path(__file__).parent / "openapi" / "conversations.yaml").read_text())
HEADERS = {"authorization": f"Bearer {TEST_KEY}"}


def validate(body: Any, schema_name: str) -> None:
    # The whole document is the root, so the schemas' internal $refs resolve.
    schema = {**SPEC, "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema).validate(body)


def test_schema_check_can_fail() -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate({"id": "conv_x", "object": "conversation", "metadata": {}}, "ConversationResource")


def test_success_bodies_match_schemas(emulator: EmulatorProcess) -> None:
    with httpx2.Client(base_url=emulator.base_url, headers=HEADERS) as client:
        created = client.post("/conversations", json={"metadata": {"a": "b"}, "items": []})
        validate(created.json(), "ConversationResource")
        conversation_id = created.json()["id"]
        updated = client.post(f"/conversations/{conversation_id}", json={"metadata": {"c": "d"}})
        validate(updated.json(), "ConversationResource")
        validate(client.get(f"/conversations/{conversation_id}").json(), "ConversationResource")
        validate(client.delete(f"/conversations/{conversation_id}").json(),
                 "DeletedConversationResource")  # fmt: skip
        validate(client.post("/conversations", json={}).json(), "ConversationResource")


def test_error_bodies_match_schema(emulator: EmulatorProcess) -> None:
    with httpx2.Client(base_url=emulator.base_url, headers=HEADERS) as client:
        conversation_id = client.post("/conversations", json={}).json()["id"]
        answers = [
            client.post(f"/conversations/{conversation_id}", json={"metadata": {"k": 1}}),
            client.post(f"/conversations/{conversation_id}", json={}),
            client.post(f"/conversations/{conversation_id}", content=b"not json"),
            client.get("/conversations/conv_missing"),
            client.post("/conversations", json={"items": [{}] * 21}),
            client.get("/no/such/route"),
            client.put(f"/conversations/{conversation_id}", json={}),
            httpx2.get(f"{emulator.base_url}/conversations/{conversation_id}"),  # no key
        ]
    assert [a.status_code for a in answers] == [400, 400, 400, 404, 400, 404, 405, 401]
    for answer in answers:
        validate(answer.json(), "ErrorResponse")


def test_rate_limit_and_fault_json_bodies_match_schema(start_emulator: StartEmulator) -> None:
    emu = start_emulator("--rpm", "60")
    with httpx2.Client(base_url=emu.base_url, headers=HEADERS) as client:
        client.post("/conversations", json={})
        limited = client.post("/conversations", json={})
    assert limited.status_code == 429
    validate(limited.json(), "ErrorResponse")
    emu = start_emulator("--error-rate", "1", "--random-seed", "0")
    with httpx2.Client(base_url=emu.base_url, headers=HEADERS) as client:
        for _ in range(20):
            answer = client.post("/conversations", json={})
            if answer.headers["content-type"].startswith("application/json"):
                validate(answer.json(), "ErrorResponse")
