"""The API's objects a job updates: one table, ``RESOURCES``, one frozen ``Resource`` each.

A resource is data, not a code path: its update's path template, the body's field
(``metadata`` or ``attributes``), its ID columns and their patterns, whether its values keep
their JSON types, its list endpoint and the ``object`` its answers name. Planning, sending, the
store, the results, revert, ``--backup``, ``--check-server``, shards and the report read it here.

The facts are the API reference's (docs/resources.md says where each comes from):

- ``conversations``: ``POST /conversations/{conversation_id}``, body ``metadata``; no listing.
- ``chat.completions``: ``POST /chat/completions/{completion_id}`` (a completion created with
  ``store=true``), body ``metadata``; ``GET /chat/completions`` lists them.
- ``vector_stores``: ``POST /vector_stores/{vector_store_id}``, body ``metadata``;
  ``GET /vector_stores`` lists them.
- ``vector_stores.files``: ``POST /vector_stores/{vector_store_id}/files/{file_id}``, body
  ``attributes``, whose values are strings (at most 512 characters), numbers or booleans;
  ``GET /vector_stores/{vector_store_id}/files`` lists a store's files.

Each takes at most 16 pairs, keys of at most 64 characters. Every ID is its prefix followed by
``[A-Za-z0-9_-]`` (at most ``MAX_ID_CHARS``), so that no ID can change a URL's path or query.

A row's **key** is its ID, or for a resource of two IDs (a vector store's file) the IDs joined
by ``/`` (``vs_abc/file-xyz``): no ID holds a ``/``, so the key names the pair exactly. The key
is what the store keeps (its ``conversation_id`` column), what finds duplicates and what a
shard hashes; ``ids_of`` splits it back into the results' ID columns and the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from bulk_update._constants import MAX_ID_CHARS
from bulk_update.exceptions import ConfigError

__all__ = [
    "CONVERSATIONS",
    "DEFAULT_RESOURCE",
    "KEY_SEPARATOR",
    "RESOURCES",
    "Resource",
    "check_resource",
    "resource_named",
]

# The characters after an ID's prefix (as conversations' always were).
ID_BODY = "[A-Za-z0-9_-]+"
# Between the IDs of a two-ID key; never in an ID.
KEY_SEPARATOR = "/"

BodyField = Literal["metadata", "attributes"]


@dataclass(frozen=True)
class Resource:
    """One kind of object the API updates (see the module's docstring).

    ``path``: the update's (and the read's) path under the base URL, with a ``{column}`` per ID
    column; ``body``: the request's field; ``id_columns``: the default ID columns, in the path's
    order; ``prefixes``: each ID's prefix (``conv_``), in the same order; ``typed``: values are
    sent as JSON strings, numbers and booleans (else every value is text); ``list_path``: the
    listing's path (None: the API lists none); ``object``: the ``object`` its answers name;
    ``noun``: how messages name one (``conversation``); ``created``: the answer's field of its
    creation time (unix seconds)."""

    name: str
    path: str
    body: BodyField
    id_columns: tuple[str, ...]
    prefixes: tuple[str, ...]
    typed: bool
    list_path: str | None
    object: str
    noun: str
    created: str = "created_at"

    def __post_init__(self) -> None:
        assert len(self.id_columns) == len(self.prefixes) >= 1
        assert all("{" + column + "}" in self.path for column in self.id_columns)

    @property
    def id_patterns(self) -> tuple[re.Pattern[str], ...]:
        """Each ID's whole pattern (``conv_[A-Za-z0-9_-]+``), in ``id_columns``' order."""
        return tuple(re.compile(re.escape(prefix) + ID_BODY) for prefix in self.prefixes)

    @property
    def id_regexes(self) -> tuple[str, ...]:
        """Each ID's pattern as a regex anchored at both ends (for polars' ``str.contains``)."""
        return tuple(f"^{re.escape(prefix)}{ID_BODY}$" for prefix in self.prefixes)

    @property
    def key_regex(self) -> str:
        """A whole key's anchored regex: the IDs joined by ``KEY_SEPARATOR``."""
        joined = KEY_SEPARATOR.join(re.escape(p) + ID_BODY for p in self.prefixes)
        return f"^{joined}$"

    @property
    def key_column(self) -> str:
        """The results' first ID column, where the key's first ID is (``conversation_id``)."""
        return self.id_columns[0]

    @property
    def paired(self) -> bool:
        """Is a row's key two IDs (a vector store's file)?"""
        return len(self.id_columns) > 1

    @property
    def max_key_chars(self) -> int:
        """The longest key: each ID at most ``MAX_ID_CHARS``."""
        return len(self.id_columns) * MAX_ID_CHARS + len(self.id_columns) - 1

    def key_of(self, ids: tuple[str, ...]) -> str:
        """The key of a row's IDs (already checked)."""
        return KEY_SEPARATOR.join(ids)

    def ids_of(self, key: str) -> tuple[str, ...]:
        """A key's IDs, in ``id_columns``' order (a key not of this resource: as many pieces
        as it splits into, at most the columns' count)."""
        if not self.paired:
            return (key,)
        return tuple(key.split(KEY_SEPARATOR, len(self.id_columns) - 1))

    def path_of(self, key: str) -> str:
        """The object's path under the base URL (no leading ``/``), each ID percent-encoded (a
        checked ID needs none: quoting anyway keeps the path the path)."""
        path = self.path
        for column, value in zip(self.id_columns, self.ids_of(key), strict=True):
            path = path.replace("{" + column + "}", quote(value, safe=""))
        return path

    def answer_id(self, key: str) -> str:
        """The ``id`` an answer about the row's object has (a file's: its file ID)."""
        return self.ids_of(key)[-1]

    def body_of(self, sent: str) -> bytes:
        """The update's body: the JSON object ``sent`` (already encoded) under ``body``."""
        return b'{"' + self.body.encode() + b'":' + sent.encode() + b"}"

    def shown(self, key: str) -> str:
        """A row's object as messages name it: ``conversation conv_1``; ``vector store file
        file-1 in vs_1``."""
        ids = self.ids_of(key)
        if len(ids) == 2:
            return f"{self.noun} {ids[1]} in {ids[0]}"
        return f"{self.noun} {key}"


CONVERSATIONS = Resource(
    name="conversations",
    path="conversations/{conversation_id}",
    body="metadata",
    id_columns=("conversation_id",),
    prefixes=("conv_",),
    typed=False,
    list_path=None,
    object="conversation",
    noun="conversation",
)

# Every resource, by its name on the command line (the SDK's path: client.chat.completions).
RESOURCES: dict[str, Resource] = {
    resource.name: resource
    for resource in (
        CONVERSATIONS,
        Resource(
            name="chat.completions",
            path="chat/completions/{completion_id}",
            body="metadata",
            id_columns=("completion_id",),
            prefixes=("chatcmpl-",),
            typed=False,
            list_path="chat/completions",
            object="chat.completion",
            noun="chat completion",
            created="created",
        ),
        Resource(
            name="vector_stores",
            path="vector_stores/{vector_store_id}",
            body="metadata",
            id_columns=("vector_store_id",),
            prefixes=("vs_",),
            typed=False,
            list_path="vector_stores",
            object="vector_store",
            noun="vector store",
        ),
        Resource(
            name="vector_stores.files",
            path="vector_stores/{vector_store_id}/files/{file_id}",
            body="attributes",
            id_columns=("vector_store_id", "file_id"),
            prefixes=("vs_", "file-"),
            typed=True,
            list_path="vector_stores/{vector_store_id}/files",
            object="vector_store.file",
            noun="vector store file",
        ),
    )
}

DEFAULT_RESOURCE = CONVERSATIONS.name


def check_resource(name: str) -> None:
    """Refuse (ConfigError, one line) a resource the table does not have."""
    if name not in RESOURCES:
        known = ", ".join(RESOURCES)
        raise ConfigError(f"--resource {name!r}: not one of {known}")


def resource_named(name: str) -> Resource:
    """The resource of that name (ConfigError if none)."""
    check_resource(name)
    return RESOURCES[name]
