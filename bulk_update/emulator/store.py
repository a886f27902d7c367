"""The emulator's in-memory conversation store and the server-side metadata rules.

The rules are written here independently of the job's own validation (``bulk_update.plan``):
the emulator plays the server, so a test that runs the job against it cross-checks the two.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_PAIRS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
MAX_ITEMS = 20


class ApiError(Exception):
    """An error answer: HTTP status plus OpenAI's ``{"error": {...}}`` body fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(slots=True)
class Conversation:
    id: str
    created_at: int
    metadata: dict[str, str] = field(default_factory=dict)

    def resource(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": dict(self.metadata),
        }


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def check_metadata(metadata: object, existing: dict[str, str] | None = None) -> dict[str, str]:
    """Validate ``metadata`` as the server does; return the map it would store after a merge.

    ``existing`` is the stored map an update merges into (None for a create). Raises ApiError.
    """
    if not isinstance(metadata, dict):
        raise ApiError(
            400,
            f"Invalid type for 'metadata': expected an object, but got {_type_name(metadata)} "
            "instead.",
            param="metadata",
            code="invalid_type",
        )
    for key, value in metadata.items():
        if len(key) > MAX_KEY_CHARS:
            raise ApiError(
                400,
                f"Invalid 'metadata': key '{key[:20]}…' is too long. Expected a key with maximum "
                f"length {MAX_KEY_CHARS}, but got a key with length {len(key)} instead.",
                param="metadata",
                code="string_above_max_length",
            )
        if len(key) == 0:
            raise ApiError(
                400,
                "Invalid 'metadata': keys must be non-empty strings.",
                param="metadata",
                code="empty_string",
            )
        if not isinstance(value, str):
            raise ApiError(
                400,
                f"Invalid type for 'metadata.{key}': expected a string, but got "
                f"{_type_name(value)} instead.",
                param=f"metadata.{key}",
                code="invalid_type",
            )
        if len(value) > MAX_VALUE_CHARS:
            raise ApiError(
                400,
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length {MAX_VALUE_CHARS}, but got a string with length {len(value)} instead.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    merged = {**(existing or {}), **metadata}
    if len(merged) > MAX_PAIRS:
        raise ApiError(
            400,
            "Invalid 'metadata': too many properties. Expected an object with at most "
            f"{MAX_PAIRS} properties, but got an object with {len(merged)} properties instead.",
            param="metadata",
            code="object_above_max_properties",
        )
    return merged


def new_conversation_id() -> str:
    return "conv_" + secrets.token_hex(24)


def preload_id(index: int) -> str:
    """The ID ``--preload N`` gives its ``index``-th conversation (0-based), stable everywhere.

    Benchmarks and tests build inputs for a preloaded emulator from this.
    """
    return "conv_" + hashlib.sha256(f"preload:{index}".encode()).hexdigest()[:48]


def not_found(conversation_id: str) -> ApiError:
    return ApiError(404, f"Conversation with id '{conversation_id}' not found.", code=None)


class ConversationStore:
    """Conversations by ID, plus per-ID counters the tests and benchmarks read."""

    def __init__(self) -> None:
        self._items: dict[str, Conversation] = {}
        self.update_requests: dict[str, int] = {}
        self.updates_applied: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def preload(self, conversations: Iterable[tuple[str, object]]) -> int:
        """Create these conversations (ID, metadata or None), checked as a create's metadata
        is (ApiError); an ID that exists is left as it is."""
        now = int(time.time())
        added = 0
        for conversation_id, metadata in conversations:
            if conversation_id not in self._items:
                stored = {} if metadata is None else check_metadata(metadata)
                self._items[conversation_id] = Conversation(conversation_id, now, stored)
                added += 1
        return added

    def create(self, metadata: object) -> Conversation:
        stored = {} if metadata is None else check_metadata(metadata)
        conversation = Conversation(new_conversation_id(), int(time.time()), stored)
        self._items[conversation.id] = conversation
        return conversation

    def get(self, conversation_id: str) -> Conversation:
        try:
            return self._items[conversation_id]
        except KeyError:
            raise not_found(conversation_id) from None

    def update(self, conversation_id: str, metadata: object, merge: bool = True) -> Conversation:
        conversation = self.get(conversation_id)
        # `metadata: null` is refused (400 invalid_type, param metadata), as by the live API,
        # although the OpenAPI document marks it nullable.
        conversation.metadata = check_metadata(metadata, conversation.metadata if merge else None)
        self.updates_applied[conversation_id] = self.updates_applied.get(conversation_id, 0) + 1
        return conversation

    def delete(self, conversation_id: str) -> None:
        if self._items.pop(conversation_id, None) is None:
            raise not_found(conversation_id)

    def count_update_request(self, conversation_id: str) -> None:
        self.update_requests[conversation_id] = self.update_requests.get(conversation_id, 0) + 1
