"""The resource table (``resources.py``) and ``--resource``'s declaration: each resource's path,
body, ID columns and patterns; the option refused where it does not fit, in one line."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bulk_update.config import JobConfig
from bulk_update.exceptions import ConfigError, InputError
from bulk_update.plan import find_duplicates, plan_frame
from bulk_update.read import open_input
from bulk_update.resources import DEFAULT_RESOURCE, RESOURCES, resource_named
from bulk_update.server.check import same_value


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


FILES = RESOURCES["vector_stores.files"]


def planned(path: Path, **given: Any) -> list[tuple[Any, ...]]:
    """Each row's (key, error_code, error_message, sent_metadata), planned as a file's."""
    table = open_input(str(path), id_column=FILES.id_columns, resource=FILES, **given)
    duplicates = find_duplicates(table)
    frames = [plan_frame(table, batch, duplicates) for batch in table.batches(100)]
    return [row[1:] for frame in frames for row in frame.iter_rows()]


def test_parquet_numbers_and_booleans_are_sent_as_json(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pl.DataFrame(
        {
            "vector_store_id": ["vs_1", "vs_1", "vs_1", "vs_2"],
            "file_id": ["file-a", "file-b", "file-c", "file-a"],
            "n": pl.Series([12, 2**53, 2**53 + 1, -(2**53) - 1], dtype=pl.Int64),
            "ok": [True, False, None, True],
            "score": [1.5, 2.0, 0.1, float("inf")],
            "day": [dt.date(2025, 1, 2)] * 4,
        }
    ).write_parquet(path)
    rows = planned(path)
    assert rows[0] == ("vs_1/file-a", None, None,
                       '{"n":12,"ok":true,"score":1.5,"day":"2025-01-02"}')  # fmt: skip
    assert rows[1][3] == '{"n":9007199254740992,"ok":false,"score":2.0,"day":"2025-01-02"}'
    assert rows[2][1:3] == ("unsupported_value", "value for 'n' is 9007199254740993: past 2**53, "
                            "a number JSON does not hold exactly (send it as text)")  # fmt: skip
    assert rows[3][1] == "unsupported_value"


def test_csv_text_stays_a_string_unless_its_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "vector_store_id,file_id,n,ok,note\n"
        "vs_1,file-a,12,TRUE,12\n"
        "vs_1,file-b,1.50,false,x\n"
        "vs_1,file-c,,,\n"
        "vs_1,file-d,1e3,yes,y\n"
        "vs_1,file-e,nan,true,z\n"
    )
    assert planned(path)[0][3] == '{"n":"12","ok":"TRUE","note":"12"}'
    rows = planned(path, number_columns=("n",), boolean_columns=("ok",))
    assert [row[3] for row in rows[:2]] == ['{"n":12,"ok":true,"note":"12"}',
                                            '{"n":1.5,"ok":false,"note":"x"}']  # fmt: skip
    assert rows[2][1:3] == ("no_metadata", "no metadata: every metadata value is empty")
    assert rows[3][2] == "value for 'ok' is 'yes', not true or false (--boolean-columns)"
    assert rows[4][2] == "value for 'n' is 'nan', not a number (--number-columns)"
    with pytest.raises(InputError, match="--number-columns 'm' is not a metadata column"):
        planned(path, number_columns=("m",))


def test_json_lines_values_are_what_each_line_wrote(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"vector_store_id":"vs_1","file_id":"file-a","n":12,"s":"12","ok":true,"f":1.50}\n'
        '{"vector_store_id":"vs_1","file_id":"file-b","n":"x","s":7,"ok":"true","f":1e999}\n'
        '{"vector_store_id":"vs_1","file_id":"file-c","n":9007199254740993}\n'
        '{"vector_store_id":"vs_1","file_id":"file-d","n":[1]}\n'
    )
    rows = planned(path)
    assert rows[0][3] == '{"n":12,"s":"12","ok":true,"f":1.5}'
    assert rows[1][2] == "value for 'f' is 1e999, past what a JSON number holds (a double)"
    assert rows[2][2].startswith("value for 'n' is 9007199254740993: past 2**53")
    assert rows[3][2].startswith("value for 'n' is a JSON array")
    # The same file for a resource of text values: every value its text, as before.
    table = open_input(str(path), id_column="vector_store_id", columns=("n", "s"),
                       resource=RESOURCES["vector_stores"])  # fmt: skip
    (batch,) = table.batches(100)
    plan = plan_frame(table, batch, find_duplicates(table))
    assert plan.item(0, "sent_metadata") == '{"n":"12","s":"12"}'


def test_a_metadata_column_keeps_its_json_types_for_files_only(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('vector_store_id,file_id,m\nvs_1,file-a,"{""n"": 12, ""ok"": true}"\n')
    assert planned(path, metadata_column="m")[0][3] == '{"n":12,"ok":true}'
    conversations = tmp_path / "c.csv"
    conversations.write_text('conversation_id,m\nconv_1,"{""n"": 12, ""ok"": true}"\n')
    table = open_input(str(conversations), id_column="conversation_id", metadata_column="m")
    (batch,) = table.batches(100)
    assert plan_frame(table, batch, find_duplicates(table)).item(0, "sent_metadata") == (
        '{"n":"12","ok":"true"}'
    )


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [(12, 12, True), (12, 12.0, True), (12, "12", False), (True, 1, False), (True, True, True),
     ("a", "a", True), (None, None, True), (None, "", False)],
)  # fmt: skip
def test_maps_compare_json_values_by_type(a: object, b: object, same: bool) -> None:
    assert same_value(a, b) is same
    assert same_value(b, a) is same
