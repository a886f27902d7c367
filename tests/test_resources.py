"""The resource table (``resources.py``) and ``--resource``'s declaration: each resource's path,
body, ID columns and patterns; the option refused where it does not fit, in one line."""

from __future__ import annotations

from typing import Any

import pytest

from bulk_update.config import JobConfig
from bulk_update.exceptions import ConfigError
from bulk_update.resources import DEFAULT_RESOURCE, RESOURCES, resource_named


def test_the_table_holds_the_four_resources_as_the_api_names_them() -> None:
    assert list(RESOURCES) == [
        "conversations", "chat.completions", "vector_stores", "vector_stores.files",
    ]  # fmt: skip
    assert DEFAULT_RESOURCE == "conversations"
    files = RESOURCES["vector_stores.files"]
    assert (files.body, files.typed, files.id_columns) == (
        "attributes", True, ("vector_store_id", "file_id"),
    )  # fmt: skip
    assert all(not r.typed and r.body == "metadata" for r in RESOURCES.values() if r is not files)


@pytest.mark.parametrize(
    ("name", "key", "path"),
    [
        ("conversations", "conv_1", "conversations/conv_1"),
        ("chat.completions", "chatcmpl-AbC_1", "chat/completions/chatcmpl-AbC_1"),
        ("vector_stores", "vs_9", "vector_stores/vs_9"),
        ("vector_stores.files", "vs_9/file-Ab1", "vector_stores/vs_9/files/file-Ab1"),
    ],
)
def test_each_resource_fills_its_path_from_a_key(name: str, key: str, path: str) -> None:
    resource = RESOURCES[name]
    assert resource.path_of(key) == path
    assert resource.key_of(resource.ids_of(key)) == key


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("conversations", "conv_abc-1", ["chatcmpl-1", "conv_", "conv_a/b"]),
        ("chat.completions", "chatcmpl-B9MBs8Cj", ["chatcmpl_1", "conv_1", "chatcmpl-a?b"]),
        ("vector_stores", "vs_abc123", ["vs-1", "file-1", "vs_a b"]),
    ],
)
def test_an_id_matches_only_its_own_resources_pattern(name: str, good: str, bad: list[str]) -> None:
    (pattern,) = RESOURCES[name].id_patterns
    assert pattern.fullmatch(good)
    assert not any(pattern.fullmatch(other) for other in bad)


def test_a_file_key_is_the_pair_and_only_the_pair() -> None:
    import re

    files = RESOURCES["vector_stores.files"]
    regex = re.compile(files.key_regex)
    assert regex.match("vs_1/file-2")
    for bad in ("file-2/vs_1", "vs_1", "vs_1/file-2/x", "vs_1//file-2", "vs_1/file-2?"):
        assert not regex.match(bad), bad
    assert files.shown("vs_1/file-2") == "vector store file file-2 in vs_1"
    assert files.body_of('{"n":12}') == b'{"attributes":{"n":12}}'


def test_an_unknown_resource_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"--resource 'files': not one of conversations, "):
        resource_named("files")
    with pytest.raises(ConfigError, match="not one of"):
        JobConfig(input="in.csv", output="out.csv", resource="vector_store")


def test_the_id_columns_default_to_the_resources() -> None:
    def columns(**given: Any) -> tuple[str, ...]:
        return JobConfig(input="in.csv", output="out.csv", **given).resolved_id_columns()

    assert columns() == ("conversation_id",)
    assert columns(resource="chat.completions") == ("completion_id",)
    assert columns(resource="vector_stores.files") == ("vector_store_id", "file_id")
    assert columns(resource="vector_stores.files", id_column="vs, f") == ("vs", "f")
    with pytest.raises(ConfigError, match=r"vector_stores\.files takes 2 ID column"):
        columns(resource="vector_stores.files", id_column="file_id")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"number_columns": ("n",)}, "--number-columns: conversations's values are text"),
        ({"resource": "vector_stores", "boolean_columns": ("b",)}, "values are text"),
        (
            {"resource": "vector_stores.files", "number_columns": ("n",),
             "boolean_columns": ("n",)},
            "'n' is in both",
        ),
        (
            {"resource": "vector_stores.files", "number_columns": ("n",),
             "metadata_column": "m"},
            "with --metadata-column",
        ),
    ],
)  # fmt: skip
def test_typed_columns_are_refused_where_they_do_not_fit(
    given: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        JobConfig(input="in.csv", output="out.csv", **given).check_resource_mapping()
