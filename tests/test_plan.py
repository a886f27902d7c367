"""plan.py, table-driven: one row -> one update or one invalid outcome with a precise message."""

from __future__ import annotations

import datetime as dt
import decimal
from functools import partial
from pathlib import Path

import polars as pl
import pytest

from bulk_update import jsonlines
from bulk_update.exceptions import InputError
from bulk_update.outcome import ROW_NUMBER, RowOutcome, Status
from bulk_update.plan import (
    DUPLICATE_OF,
    HINT_COLUMN,
    HINT_OBJECT,
    PlannedUpdate,
    find_duplicates,
    invalid_outcomes,
    parse_metadata_cell,
    plan_frame,
    plan_row,
    updates,
)
from bulk_update.read import InputTable, open_input

ID = "conv_" + "ab12" * 12


def invalid(planned: PlannedUpdate | RowOutcome) -> tuple[str | None, str | None]:
    assert isinstance(planned, RowOutcome)
    assert planned.status is Status.INVALID
    assert planned.attempts == 0
    return planned.error_code, planned.error_message


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        (ID, ID),
        (f"  {ID}\t", ID),
        ("conv_a", "conv_a"),
        ("conv_A-b_9", "conv_A-b_9"),
        ("conv_" + "x" * 123, "conv_" + "x" * 123),  # 128 characters
    ],
)
def test_valid_ids(raw_id: str, expected: str) -> None:
    planned = plan_row(1, raw_id, [("k", "v")])
    assert isinstance(planned, PlannedUpdate)
    assert planned.conversation_id == expected


@pytest.mark.parametrize(
    "raw_id",
    [None, "", "   ", "conv_", "conv_a/b", "conv_a?x=1", "conv_a#b", "conv_a%2Fb", "conv_..",
     "conv_../x", "conv_a b", "CONV_abc", "abc", "conv_é", "conv_a\nb", "conv_" + "x" * 124, 12],
)  # fmt: skip
def test_unsafe_or_malformed_ids_are_invalid(raw_id: object) -> None:
    code, message = invalid(plan_row(3, raw_id, [("k", "v")]))
    assert code == "invalid_id"
    assert message is not None
    assert "conversation_id" in message


@pytest.mark.parametrize(
    ("pairs", "code", "fragment"),
    [
        ([("k", None), ("j", "")], "no_metadata", "every metadata value is empty"),
        ([], "no_metadata", "every metadata value is empty"),
        ([("k" * 65, "v")], "key_too_long", "65 characters; at most 64"),
        ([("k", "é" * 513)], "value_too_long", "value for 'k' is 513 characters; at most 512"),
        ([("k", "😀" * 513)], "value_too_long", "513 characters"),
        ([(f"k{i}", "v") for i in range(17)], "too_many_pairs", "17 metadata pairs; at most 16"),
        ([("tags", ["a", "b"])], "unsupported_type", "value for 'tags' is a list"),
        ([("s", {"a": 1})], "unsupported_type", "a struct"),
        ([("b", b"\x00")], "unsupported_type", "binary"),
        ([("f", float("nan"))], "unsupported_value", "not a number"),
        ([("", "v")], "invalid_key", "key is empty"),
    ],
)
def test_metadata_rules(pairs: list[tuple[str, object]], code: str, fragment: str) -> None:
    got_code, message = invalid(plan_row(1, ID, pairs))
    assert got_code == code
    assert message is not None
    assert fragment in message


def test_boundaries_are_inclusive() -> None:
    pairs = [(f"k{i:02d}" + "x" * 60, "é" * 512) for i in range(16)]  # 64-char keys
    planned = plan_row(1, ID, pairs)
    assert isinstance(planned, PlannedUpdate)
    assert len(planned.metadata) == 16
    # 17 columns, one of them empty in this row: 16 pairs are sent.
    planned = plan_row(1, ID, [*pairs, ("extra", None)])
    assert isinstance(planned, PlannedUpdate)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("007", "007"),
        ("1.50", "1.50"),
        (" spaced ", " spaced "),
        (7, "7"),
        (-12, "-12"),
        (True, "true"),
        (False, "false"),
        (0.1, "0.1"),
        (1e22, "1e+22"),
        (2.5, "2.5"),
        (decimal.Decimal("1.50"), "1.50"),
        (dt.date(2026, 1, 2), "2026-01-02"),
        (dt.datetime(2026, 1, 2, 3, 4, 5), "2026-01-02T03:04:05"),
        (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05+00:00"),
    ],
)
def test_values_become_text(value: object, text: str) -> None:
    planned = plan_row(1, ID, [("k", value)])
    assert isinstance(planned, PlannedUpdate)
    assert planned.metadata == {"k": text}
    assert planned.sent_metadata == '{"k":"' + text.replace('"', '\\"') + '"}'


def test_duplicate_is_reported_after_the_id_check() -> None:
    assert invalid(plan_row(9, ID, [("k", "v")], duplicate_of=2)) == (
        "duplicate_id", "duplicate of row 2",
    )  # fmt: skip
    assert invalid(plan_row(9, "bad id", [("k", "v")], duplicate_of=2))[0] == "invalid_id"


@pytest.mark.parametrize(
    ("cell", "pairs"),
    [
        (None, []),
        ("", []),
        ('{"a": "1", "b": 2, "c": null}', [("a", "1"), ("b", "2"), ("c", None)]),
        # Numbers as written: the text the user wrote is the text sent.
        (
            '{"a": 1.0, "b": 1.50, "c": 1e5, "d": -0.0}',
            [("a", "1.0"), ("b", "1.50"), ("c", "1e5"), ("d", "-0.0")],
        ),
        ({"a": "1"}, [("a", "1")]),
    ],
)
def test_metadata_column_cells(cell: object, pairs: list[tuple[str, object]]) -> None:
    assert parse_metadata_cell("meta", cell) == pairs


@pytest.mark.parametrize(
    ("cell", "fragment"),
    [("{not json", "not valid JSON"), ('["a"]', "not an object"), ("3", "not an object")],
)
def test_bad_metadata_column_cells_are_invalid(cell: str, fragment: str) -> None:
    from functools import partial

    code, message = invalid(plan_row(1, ID, partial(parse_metadata_cell, "meta", cell)))
    assert code == "invalid_metadata_json"
    assert message is not None
    assert fragment in message


def test_find_duplicates_and_plan_frame(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(
        "conversation_id,a\nconv_x,1\nconv_y,2\n conv_x ,3\nconv_z,\nconv_y,5\nconv_x,6\n,7\n,8\n"
    )
    table = open_input(str(path), id_column="conversation_id")
    duplicates = find_duplicates(table)
    assert dict(duplicates.select(ROW_NUMBER, DUPLICATE_OF).iter_rows()) == {3: 1, 5: 2, 6: 1}
    plans = [plan_frame(table, batch, duplicates) for batch in table.batches(2)]
    planned = sorted(
        [(u.row_number, "ok") for plan in plans for u in updates(plan)]
        + [(o.row_number, o.error_code) for plan in plans for o in invalid_outcomes(plan)]
    )
    assert [kind for _, kind in planned] == [
        "ok", "ok", "duplicate_id", "no_metadata", "duplicate_id", "duplicate_id", "invalid_id",
        "invalid_id",
    ]  # fmt: skip
    assert [number for number, _ in planned] == list(range(1, 9))


def test_find_duplicates_on_many_rows(tmp_path: Path) -> None:
    ids = [f"conv_{i}" for i in range(50_000)] + ["conv_7", "conv_49999"]
    path = tmp_path / "in.parquet"
    pl.DataFrame({"conversation_id": ids, "a": ["v"] * len(ids)}).write_parquet(path)
    table = open_input(str(path), id_column="conversation_id")
    found = find_duplicates(table, batch_rows=7_000).select(ROW_NUMBER, DUPLICATE_OF)
    assert dict(found.iter_rows()) == {50_001: 8, 50_002: 50_000}


ROW_CASES: list[tuple[object, list[tuple[str, object]]]] = [
    (ID, [("k", "v")]),
    (f"  {ID} ", [("k", "007"), ("j", None), ("i", "")]),
    ("conv_a/b", [("k", "v")]),
    ("conv_" + "x" * 130, [("k", "v")]),
    ("conv_with a space and more than forty characters in it", [("k", "v")]),
    (None, [("k", "v")]),
    (ID, [("k", None)]),
    (ID, [("k" * 65, "v")]),
    (ID, [("k" * 65, None), ("j", "v")]),
    (ID, [("k", "é" * 513)]),
    (ID, [("k", "😀" * 512)]),
    (ID, [(f"k{i}", "v") for i in range(17)]),
    (ID, [(f"k{i}", "v" if i < 16 else None) for i in range(17)]),
    (ID, [("a", 'quote " backslash \\ newline \n tab \t ctl \x01 é 😀')]),
    (ID, [("n", 7), ("b", True), ("f", 2.5), ("d", dt.date(2026, 1, 2))]),
    (ID, [("at", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))]),
    (ID, [("tags", ["a"])]),
    (ID, [("s", {"a": 1})]),
    (ID, [("raw", b"\x00")]),
    (ID, [("x", float("nan"))]),
    (ID, [("x", float("inf"))]),
    (ID, [("a key with spaces, and 'quotes'", "v")]),
    # Keys trimmed, a value of white space only no value, other values as written.
    (ID, [(" tier\t", " gold "), ("note", "   "), ("\u3000", "x")]),
    (ID, [("k", "\u3000\t\n")]),
    (ID, [("k", "\x1c")]),  # not White_Space: a value
]


@pytest.mark.parametrize(("raw_id", "pairs"), ROW_CASES)
def test_vectorised_plan_matches_the_row_path(
    raw_id: object, pairs: list[tuple[str, object]]
) -> None:
    """plan_frame (used for every batch) and plan_row (the reference, and the path of
    --metadata-column) give the same code, message and JSON for the same row."""
    frame = pl.DataFrame(
        [pl.Series(ROW_NUMBER, [5], dtype=pl.UInt32), pl.Series("conversation_id", [raw_id])]
        + [pl.Series(key, [value]) for key, value in pairs],
        strict=False,
    )
    table = InputTable(
        path="memory", format="parquet", schema=frame.drop(ROW_NUMBER).schema,
        id_column="conversation_id", metadata_columns=tuple(k for k, _ in pairs),
        metadata_column=None,
    )  # fmt: skip
    empty = pl.DataFrame(schema={ROW_NUMBER: pl.UInt32, "__bulk_update_duplicate_of": pl.UInt32})
    plan = plan_frame(table, frame, empty)
    vectorised = (updates(plan) + invalid_outcomes(plan))[0]
    reference = plan_row(5, raw_id, pairs, hint=HINT_COLUMN)
    if isinstance(reference, PlannedUpdate):
        assert isinstance(vectorised, PlannedUpdate)
        assert vectorised == reference
    else:
        assert isinstance(vectorised, RowOutcome)
        assert (vectorised.error_code, vectorised.error_message) == (
            reference.error_code, reference.error_message,
        )  # fmt: skip
        assert vectorised.conversation_id == reference.conversation_id


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"a": 1.0, "b": 1.50, "c": 1e5, "d": -0.0, "e": 007.5e-3}', None),  # not JSON: 007
        ('{"a": 1.0, "b": 1.50, "c": 1e5, "d": -0.0}',
         {"a": "1.0", "b": "1.50", "c": "1e5", "d": "-0.0"}),
        ('{"s": "\\u00e9\\"q\\"", "t": true, "f": false, "n": null}',
         {"s": 'é"q"', "t": "true", "f": "false", "n": None}),
        ('{"o": {"k": 1.50,  "l": [1, 2.0]}, "x": 1}',
         {"o": '{"k": 1.50,  "l": [1, 2.0]}', "x": "1"}),
        ("  {}  ", {}),
    ],
)  # fmt: skip
def test_json_lines_values_are_their_text_as_written(
    line: str, expected: dict[str, str | None] | None, tmp_path: Path
) -> None:
    if expected is None:
        with pytest.raises(ValueError, match=r"Expecting|expected"):
            jsonlines.fields(line)
        return
    assert jsonlines.fields(line) == expected
    # The same through the file reader, whose fast path parses whole chunks at once.
    source = tmp_path / "in.jsonl"
    source.write_text((line + "\n") * 3 + "\n")
    parts = jsonlines.as_text_parts(str(source), tmp_path)
    frame = pl.concat([pl.read_ipc(part) for part in parts], how="diagonal")
    assert frame.height == 3
    assert frame[jsonlines.LINE].to_list() == [1, 2, 3]
    own = frame.select(c for c in frame.columns if not jsonlines.is_hidden(c))
    assert own.rows(named=True)[0] == expected if expected else own.width == 0


def test_a_shards_batch_with_invalid_ids_is_planned(tmp_path: Path) -> None:
    """A shard's batch comes in several chunks; polars 2 panicked formatting its messages."""
    path = tmp_path / "in.csv"
    rows = [f"conv_{i:048x},v" for i in range(10)] + [f"bad-{i},v" for i in range(8)]
    path.write_text("conversation_id,tier\n" + "\n".join(rows) + "\n")
    table = open_input(str(path), id_column="conversation_id", shard=(0, 2))
    planned = pl.concat(
        [plan_frame(table, batch, find_duplicates(table)) for batch in table.batches(1000)]
    )
    invalid = planned.filter(pl.col("error_code").is_not_null())
    assert invalid.height > 0
    assert all("is not conv_ followed by" in m for m in invalid["error_message"])


def test_a_lone_surrogate_is_an_invalid_row_or_a_named_line(tmp_path: Path) -> None:
    """'\\ud800' is valid JSON but no character: once an exit 70 for the whole file."""
    code, message = invalid(
        plan_row(1, ID, partial(parse_metadata_cell, "meta", '{"n": "\\ud800"}'))
    )
    assert code == "unsupported_value"
    assert message is not None
    assert "\\ud800, half of a surrogate pair" in message
    key = invalid(plan_row(1, ID, partial(parse_metadata_cell, "meta", '{"\\ud800": "v"}')))
    assert key[0] == "unsupported_value"
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"conversation_id": "conv_a", "n": "x"}\n{"conversation_id": "conv_b", "n": "\\ud800"}\n'
    )
    with pytest.raises(
        InputError, match=r"row 2 \(line 2\), column 1: .*\\ud800 is half of a surrogate"
    ):
        open_input(str(source), id_column="conversation_id")


def _planned(table: InputTable) -> list[tuple[str | None, str | None, str | None]]:
    """Each row's (error_code, error_message, sent_metadata), in order."""
    frames = [plan_frame(table, batch, find_duplicates(table)) for batch in table.batches(1000)]
    plan = pl.concat(frames).sort(ROW_NUMBER)
    return list(plan.select("error_code", "error_message", "sent_metadata").iter_rows())


def test_a_struct_metadata_column_is_planned_as_its_fields(tmp_path: Path) -> None:
    """The same values in a struct --metadata-column as in columns of their own: the same text
    sent, the same message (a struct's float was Python's repr, 1e-05 for polars' 0.00001, its
    datetime 03:30:00.500000 for 03:30:00.500)."""
    values = {
        "small": [1e-5, None, None, 2.5],
        "at": [dt.datetime(2025, 3, 30, 3, 30, 0, 500000), None, None, None],
        "time": [dt.time(3, 30, 0, 1), None, None, None],
        "wait": [dt.timedelta(seconds=5), None, None, None],
        "n": [7, None, 8, None],
        "tags": [None, ["a"], None, None],
        "nan": [None, None, float("nan"), None],
    }
    ids = [ID, "conv_b", "conv_c", "conv_d"]
    columns = tmp_path / "columns.parquet"
    pl.DataFrame({"conversation_id": ids, **values}).write_parquet(columns)
    struct = tmp_path / "struct.parquet"
    frame = pl.DataFrame({"conversation_id": ids, **values})
    frame.select("conversation_id", pl.struct(*values).alias("meta")).write_parquet(struct)
    # The list column asked for by name (unasked, it exits 2 before anything is sent).
    asked = open_input(str(columns), id_column="conversation_id", columns=tuple(values))
    expected = _planned(asked)
    got = _planned(open_input(str(struct), id_column="conversation_id", metadata_column="meta"))
    # The same message but for what to do about it: a column can be left out, a field not.
    assert expected[1][1] is not None
    assert expected[1][1].endswith(HINT_COLUMN)
    assert got[1][1] is not None
    assert got[1][1].endswith(HINT_OBJECT)
    assert got[1][1].removesuffix(HINT_OBJECT) == expected[1][1].removesuffix(HINT_COLUMN)
    assert got[:1] + got[2:] == expected[:1] + expected[2:]
    assert expected[0][2] == (
        '{"small":"0.00001","at":"2025-03-30T03:30:00.500","time":"03:30:00.000001",'
        '"wait":"PT5S","n":"7"}'
    )
    assert [code for code, _, _ in expected] == [
        None,
        "unsupported_type",
        "unsupported_value",
        None,
    ]


def test_a_fed_back_row_invalid_for_its_type_stays_invalid(tmp_path: Path) -> None:
    """A text errors file holds a list as its JSON text, NaN as NaN: a row still marked
    unsupported_type or unsupported_value stays invalid, with its message, as a duplicate does,
    until its error_code is cleared."""
    path = tmp_path / "errors.csv"
    path.write_text(
        "row_number,conversation_id,tags,status,error_code,error_message\n"
        '1,conv_a,"[""a""]",invalid,unsupported_type,value for \'tags\' is a list; only text\n'
        "2,conv_b,NaN,invalid,unsupported_value,\n"
        '3,conv_c,"[""c""]",invalid,,\n'
        "4,conv_d,x,failed,http_404,not found\n"
    )
    table = open_input(str(path), id_column="conversation_id")
    assert _planned(table) == [
        ("unsupported_type", "value for 'tags' is a list; only text", None),
        ("unsupported_value", "unsupported_value", None),
        (None, None, '{"tags":"[\\"c\\"]"}'),
        (None, None, '{"tags":"x"}'),
    ]


def test_white_space_is_the_same_set_in_python_and_polars() -> None:
    """A value of white space only is no value on both paths (plan_row and plan_frame): the set
    values.WHITESPACE spells out is the one polars finds blank (values.blank)."""
    from bulk_update.values import WHITESPACE, blank, is_blank

    every = [chr(c) for c in range(0x3001)]
    found = pl.select(blank(pl.lit(pl.Series(every)))).to_series()
    assert {c for c, b in zip(every, found, strict=True) if b} == set(WHITESPACE)
    assert {c for c in every if is_blank(c)} == set(WHITESPACE)
    assert pl.select(blank(pl.lit(pl.Series(["", " \u3000 ", " a ", "a\n"])))).to_series().to_list() == [
        True, True, False, False,
    ]  # fmt: skip
