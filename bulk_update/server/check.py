"""Know the server before writing: what a row would do to the map the server holds.

Pure rules, no I/O. The Conversations API merges an update into the stored map, caps the merged
map at 16 pairs, and cannot delete a key once set; so before an update is sent
(``validate --check-server``, ``run --backup``, ``revert``) the job reads the conversation and
``judge`` decides:

- ``unchanged``: the server already holds every value of the row: nothing to send;
- ``invalid`` ``merged_too_many_pairs``: the merged map would exceed 16 pairs;
- ``invalid`` ``drifted`` (a revert): a key the run set has another value now: someone changed
  it since, and a revert must not write over that (``--force`` does);
- ``send``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from bulk_update._constants import MAX_PAIRS
from bulk_update.plan import clip

__all__ = ["NOT_FOUND", "REPLACED", "judge", "new_keys", "parse_map", "replaced_keys"]

MERGED_TOO_MANY_PAIRS = "merged_too_many_pairs"
DRIFTED = "drifted"
NOT_FOUND = "not_found"
REPLACED = "replaced_not_merged"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["send", "unchanged", "invalid"]
    error_code: str | None = None
    error_message: str | None = None


SEND = Decision("send")
UNCHANGED = Decision("unchanged")


def parse_map(text: str | None) -> dict[str, object]:
    """A metadata map from its JSON text (None: no map). Values keep their JSON types: a
    vector store file's attribute ``12`` is not ``"12"``."""
    if text is None:
        return {}
    value = json.loads(text)
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else {}


def same_value(a: object, b: object) -> bool:
    """Two JSON values alike: a string is only ever its string, a boolean its boolean (never
    1 or 0), a number any number equal to it (``12`` and ``12.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def new_keys(row: Mapping[str, object], server: Mapping[str, object]) -> list[str]:
    """The row's keys the server's map does not have yet (they cannot be removed once set)."""
    return [key for key in row if key not in server]


def judge(
    row: Mapping[str, object],
    server: Mapping[str, object],
    *,
    expect: Mapping[str, object] | None = None,
    force: bool = False,
) -> Decision:
    """What to do with ``row`` (the map to send) given ``server`` (the map the server holds).
    ``expect``: a revert's guard, what the reverted run set for each of the row's keys."""
    if all(key in server and same_value(server[key], value) for key, value in row.items()):
        return UNCHANGED
    if expect is not None and not force:
        drifted = [
            key
            for key, value in row.items()
            if not (
                same_value(server.get(key), value) or same_value(server.get(key), expect.get(key))
            )
        ]
        if drifted:
            shown = "; ".join(
                f"'{clip(key)}' is {_shown(server.get(key))} (the run set "
                f"{_shown(expect.get(key))})"
                for key in drifted
            )
            return Decision(
                "invalid",
                DRIFTED,
                f"changed since the run: {shown}; left alone (--force reverts anyway)",
            )
    added = new_keys(row, server)
    if len(server) + len(added) > MAX_PAIRS:
        return Decision(
            "invalid",
            MERGED_TOO_MANY_PAIRS,
            f"the server holds {len(server)} keys; with this row's {len(added)} new "
            f"key{'s' if len(added) != 1 else ''} it would hold {len(server) + len(added)}; "
            f"at most {MAX_PAIRS}",
        )
    return SEND


def replaced_keys(
    before: Mapping[str, object], row: Mapping[str, object], answer: Mapping[str, object]
) -> list[str]:
    """Keys the server held before, that the row did not set, and that its answer lacks: the
    server replaced the map instead of merging into it."""
    return [key for key in before if key not in row and key not in answer]


def _shown(value: object) -> str:
    if value is None:
        return "absent"
    return repr(clip(value)) if isinstance(value, str) else json.dumps(value)
