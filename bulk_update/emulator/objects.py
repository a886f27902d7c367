"""The kinds of objects the emulator serves, as the API shapes them (``--resource NAME``).

The emulator's own table, written independently of the job's (``bulk_update.resources``): it
plays the server. Each kind names its path parameters (which are its ID columns for
``--preload``), the body field an update sends (``metadata``, or a file's ``attributes`` whose
values may also be numbers and booleans), the default order of its listing, the object it
answers and the IDs ``--preload N`` gives it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bulk_update.emulator.store import (
    ApiError,
    ConversationStore,
    Item,
    ObjectStore,
    preload_id,
)

CONVERSATIONS = "conversations"
CHAT_COMPLETIONS = "chat.completions"
VECTOR_STORES = "vector_stores"
VECTOR_STORE_FILES = "vector_stores.files"

# ``--preload N`` of vector_stores.files: file i is in the i % PRELOAD_STORES-th vector store
# that ``--resource vector_stores --preload N`` creates (so at most this many stores).
PRELOAD_STORES = 4
# The model of a chat completion preloaded without one.
PRELOAD_MODEL = "gpt-4o-mini"

Stores = Mapping[str, ObjectStore]
Render = Callable[[Item, Stores], dict[str, Any]]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _digest(resource: str, index: int, alphabet: str, length: int) -> str:
    """``length`` characters of ``alphabet`` from a hash of (resource, index): stable
    everywhere, never random."""
    number = int.from_bytes(hashlib.sha256(f"preload:{resource}:{index}".encode()).digest())
    chars = []
    for _ in range(length):
        number, digit = divmod(number, len(alphabet))
        chars.append(alphabet[digit])
    return "".join(chars)


def _conversation(item: Item, stores: Stores) -> dict[str, Any]:
    return item.resource()


def _chat_completion(item: Item, stores: Stores) -> dict[str, Any]:
    return {
        "id": item.id,
        "object": "chat.completion",
        "created": item.created_at,
        "model": item.model or PRELOAD_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Stored by the bulk-update emulator.",
                    "refusal": None,
                    "annotations": [],
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
        "service_tier": "default",
        "system_fingerprint": None,
        "metadata": dict(item.metadata),
    }


def _vector_store(item: Item, stores: Stores) -> dict[str, Any]:
    files = stores[VECTOR_STORE_FILES].children(item.id)
    return {
        "id": item.id,
        "object": "vector_store",
        "created_at": item.created_at,
        "name": "",
        "usage_bytes": 0,
        "file_counts": {
            "in_progress": 0,
            "completed": files,
            "failed": 0,
            "cancelled": 0,
            "total": files,
        },
        "status": "completed",
        "last_active_at": item.created_at,
        "expires_after": None,
        "expires_at": None,
        "metadata": dict(item.metadata),
    }


def _vector_store_file(item: Item, stores: Stores) -> dict[str, Any]:
    return {
        "id": item.id,
        "object": "vector_store.file",
        "usage_bytes": 0,
        "created_at": item.created_at,
        "vector_store_id": item.parent,
        "status": "completed",
        "last_error": None,
        "chunking_strategy": {
            "type": "static",
            "static": {"max_chunk_size_tokens": 800, "chunk_overlap_tokens": 400},
        },
        "attributes": dict(item.metadata),
    }


def _not_found(noun: str) -> Callable[[tuple[str, ...]], ApiError]:
    def error(ids: tuple[str, ...]) -> ApiError:
        where = f" in vector store '{ids[0]}'" if len(ids) > 1 else ""
        return ApiError(404, f"No {noun} found with id '{ids[-1]}'{where}.")

    return error


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of object: see the module's docstring."""

    name: str
    # One object's route; its listing's is the same without the last part.
    path: str
    # The path parameters naming one object, outermost first: also --preload's ID columns.
    id_columns: tuple[str, ...]
    # The update's body field; whether its values may be numbers and booleans; whether an
    # update must send it (a vector store's update may change only its name).
    field: str
    typed: bool
    required: bool
    render: Render
    # What else an update's body may hold beside ``field`` (accepted, not kept).
    also: tuple[str, ...]
    # The listing's order when the request names none (the API's defaults differ).
    descending: bool
    noun: str

    def store(self) -> ObjectStore:
        if self.name == CONVERSATIONS:
            return ConversationStore()
        return ObjectStore(_not_found(self.noun), field=self.field, typed=self.typed)

    def preload_ids(self, index: int) -> tuple[str, ...]:
        """The IDs ``--preload N`` gives this kind's ``index``-th object (0-based)."""
        if self.name == CONVERSATIONS:
            return (preload_id(index),)
        if self.name == CHAT_COMPLETIONS:
            return ("chatcmpl-" + _digest(self.name, index, _BASE62, 29),)
        if self.name == VECTOR_STORES:
            return ("vs_" + _digest(self.name, index, "0123456789abcdef", 32),)
        store = KINDS[VECTOR_STORES].preload_ids(index % PRELOAD_STORES)[0]
        return (store, "file-" + _digest(self.name, index, _BASE62, 22))


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        # Conversations keep their own handlers (app._Api): an update's other fields pass.
        Kind(
            CONVERSATIONS, "/v1/conversations/{conversation_id}", ("conversation_id",),
            "metadata", typed=False, required=True, render=_conversation, also=(),
            descending=False, noun="conversation",
        ),
        Kind(
            CHAT_COMPLETIONS, "/v1/chat/completions/{completion_id}", ("completion_id",),
            "metadata", typed=False, required=True, render=_chat_completion, also=(),
            descending=False, noun="chat completion",
        ),
        Kind(
            VECTOR_STORES, "/v1/vector_stores/{vector_store_id}", ("vector_store_id",),
            "metadata", typed=False, required=False, render=_vector_store,
            also=("name", "expires_after"), descending=True, noun="vector store",
        ),
        Kind(
            VECTOR_STORE_FILES, "/v1/vector_stores/{vector_store_id}/files/{file_id}",
            ("vector_store_id", "file_id"), "attributes", typed=True, required=True,
            render=_vector_store_file, also=(), descending=True, noun="file",
        ),
    )
}  # fmt: skip


def preload_ids(resource: str, index: int) -> tuple[str, ...]:
    """The IDs ``--resource RESOURCE --preload N`` gives its ``index``-th object (0-based), stable
    everywhere: one ID, or for ``vector_stores.files`` the pair (vector store, file)."""
    return KINDS[resource].preload_ids(index)
