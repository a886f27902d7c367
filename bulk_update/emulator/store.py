"""The emulator's in-memory objects and the server-side rules on their metadata (or attributes).

The rules are written here independently of the job's own validation (``bulk_update.plan``):
the emulator plays the server, so a test that runs the job against it cross-checks the two.
Which objects there are (conversations, stored chat completions, vector stores and their files)
is in ``emulator.objects``; one ``ObjectStore`` holds each kind.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

MAX_PAIRS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
MAX_ITEMS = 20

# A value of a stored map: a string (metadata), or also a number or a boolean (attributes).
Value = str | int | float | bool


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
class Item:
    """One stored object: a conversation, a chat completion, a vector store or a file in one.

    ``parent`` is a file's vector store; ``model`` a chat completion's model."""

    id: str
    created_at: int
    metadata: dict[str, Value] = field(default_factory=dict)
    parent: str | None = None
    model: str | None = None

    def resource(self) -> dict[str, Any]:
        """As a conversation (``ObjectStore.render`` gives each kind's own form)."""
        return {
            "id": self.id,
            "object": "conversation",
            "created_at": self.created_at,
            "metadata": dict(self.metadata),
        }


# The name the conversations' code has always used.
Conversation = Item


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


def _invalid_type(param: str, expected: str, value: object) -> ApiError:
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {_type_name(value)} instead.",
        param=param,
        code="invalid_type",
    )


def check_map(
    given: object,
    existing: Mapping[str, Value] | None = None,
    *,
    name: str = "metadata",
    typed: bool = False,
) -> dict[str, Value]:
    """Validate the map ``given`` as the server does; return the map it would store after a
    merge into ``existing`` (None: a create, or an update that replaces). ``name`` is the body
    field (``metadata`` or ``attributes``); ``typed``: values may also be numbers and booleans
    (a vector store file's attributes), never null, an object or an array. Raises ApiError."""
    if not isinstance(given, dict):
        raise _invalid_type(name, "an object", given)
    for key, value in given.items():
        if len(key) > MAX_KEY_CHARS:
            raise ApiError(
                400,
                f"Invalid '{name}': key '{key[:20]}…' is too long. Expected a key with maximum "
                f"length {MAX_KEY_CHARS}, but got a key with length {len(key)} instead.",
                param=name,
                code="string_above_max_length",
            )
        if len(key) == 0:
            raise ApiError(
                400,
                f"Invalid '{name}': keys must be non-empty strings.",
                param=name,
                code="empty_string",
            )
        if isinstance(value, str):
            if len(value) > MAX_VALUE_CHARS:
                raise ApiError(
                    400,
                    f"Invalid '{name}.{key}': string too long. Expected a string with maximum "
                    f"length {MAX_VALUE_CHARS}, but got a string with length {len(value)} "
                    "instead.",
                    param=f"{name}.{key}",
                    code="string_above_max_length",
                )
        elif not typed:
            raise _invalid_type(f"{name}.{key}", "a string", value)
        elif not isinstance(value, int | float):  # bool is an int
            raise _invalid_type(f"{name}.{key}", "a string, a number or a boolean", value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ApiError(
                400,
                f"Invalid '{name}.{key}': expected a finite number, but got {value}.",
                param=f"{name}.{key}",
                code="invalid_value",
            )
    merged = {**(existing or {}), **given}
    if len(merged) > MAX_PAIRS:
        raise ApiError(
            400,
            f"Invalid '{name}': too many properties. Expected an object with at most "
            f"{MAX_PAIRS} properties, but got an object with {len(merged)} properties instead.",
            param=name,
            code="object_above_max_properties",
        )
    return merged


def check_metadata(
    metadata: object, existing: Mapping[str, Value] | None = None
) -> dict[str, Value]:
    """``check_map`` for ``metadata`` (string values only)."""
    return check_map(metadata, existing)


def new_conversation_id() -> str:
    return "conv_" + secrets.token_hex(24)


def preload_id(index: int) -> str:
    """The ID ``--preload N`` gives its ``index``-th conversation (0-based), stable everywhere.

    Benchmarks and tests build inputs for a preloaded emulator from this.
    """
    return "conv_" + hashlib.sha256(f"preload:{index}".encode()).hexdigest()[:48]


def not_found(conversation_id: str) -> ApiError:
    return ApiError(404, f"Conversation with id '{conversation_id}' not found.", code=None)


# How a kind of object says one of its keys is missing (its key's parts: one ID, or a vector
# store's and a file's).
NotFound = Callable[[tuple[str, ...]], ApiError]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing: its objects, and whether more follow."""

    items: list[Item]
    has_more: bool


def key_of(ids: tuple[str, ...]) -> str:
    """An object's key in its store and in the per-ID stats: its ID, or ``VS_ID/FILE_ID``."""
    return ids[0] if len(ids) == 1 else "/".join(ids)


class ObjectStore:
    """Objects of one kind by key (``key_of``), in creation order for listings (a file's among
    its vector store's files), plus per-key counters the tests and benchmarks read."""

    def __init__(self, not_found: NotFound, *, field: str = "metadata", typed: bool = False):
        self.not_found = not_found
        self.field = field
        self.typed = typed
        self._items: dict[str, Item] = {}
        # Keys in creation order, by parent ("" for objects without one), and each key's place.
        self._order: dict[str, list[str]] = {}
        self._place: dict[str, int] = {}
        self.update_requests: dict[str, int] = {}
        self.updates_applied: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def check(self, given: object, existing: Mapping[str, Value] | None = None) -> dict[str, Value]:
        return check_map(given, existing, name=self.field, typed=self.typed)

    def add(self, key: str, item: Item) -> Item:
        order = self._order.setdefault(item.parent or "", [])
        self._place[key] = len(order)
        order.append(key)
        self._items[key] = item
        return item

    def preload(self, objects: Iterable[tuple[tuple[str, ...], object, str | None]]) -> int:
        """Create these objects (their IDs, their map or None, a chat completion's model),
        checked as a create's map is (ApiError); a key that exists is left as it is."""
        now = int(time.time())
        added = 0
        for ids, given, model in objects:
            key = key_of(ids)
            if key not in self._items:
                stored = {} if given is None else self.check(given)
                parent = ids[0] if len(ids) > 1 else None
                self.add(key, Item(ids[-1], now, stored, parent, model))
                added += 1
        return added

    def get(self, key: str, ids: tuple[str, ...] | None = None) -> Item:
        try:
            return self._items[key]
        except KeyError:
            raise self.not_found(ids or (key,)) from None

    def update(self, key: str, given: object, merge: bool = True) -> Item:
        item = self._items.get(key)
        if item is None:
            raise self.not_found(tuple(key.split("/")))
        item.metadata = self.check(given, item.metadata if merge else None)
        self.updates_applied[key] = self.updates_applied.get(key, 0) + 1
        return item

    def count_update_request(self, key: str) -> None:
        self.update_requests[key] = self.update_requests.get(key, 0) + 1

    def children(self, parent: str) -> int:
        """How many objects ``parent`` holds (a vector store's files)."""
        return len(self._order.get(parent, ()))

    def page(
        self,
        *,
        parent: str = "",
        after: str | None = None,
        limit: int = 20,
        descending: bool = False,
        match: Callable[[Item], bool] | None = None,
    ) -> Page:
        """Up to ``limit`` objects that ``match``, in creation order (or its reverse), starting
        after the object keyed ``after`` (a key of this parent: 400 if there is none)."""
        order = self._order.get(parent, [])
        start = 0
        if after is not None:
            place = self._place.get(after)
            if place is None or order[place] != after:
                raise ApiError(
                    400,
                    f"Invalid 'after': no object with id '{after.rpartition('/')[2]}' here.",
                    param="after",
                    code="invalid_value",
                )
            start = len(order) - place if descending else place + 1
        keys = islice(reversed(order) if descending else order, start, None)
        found: list[Item] = []
        for key in keys:
            item = self._items.get(key)  # None: deleted (conversations only)
            if item is None or (match is not None and not match(item)):
                continue
            if len(found) == limit:
                return Page(found, True)
            found.append(item)
        return Page(found, False)


class ConversationStore(ObjectStore):
    """Conversations by ID: they are also created and deleted through the API."""

    def __init__(self) -> None:
        super().__init__(lambda ids: not_found(ids[0]))

    def create(self, metadata: object) -> Item:
        stored = {} if metadata is None else check_metadata(metadata)
        conversation = Item(new_conversation_id(), int(time.time()), stored)
        return self.add(conversation.id, conversation)

    def delete(self, conversation_id: str) -> None:
        if self._items.pop(conversation_id, None) is None:
            raise not_found(conversation_id)
        self._place.pop(conversation_id, None)
