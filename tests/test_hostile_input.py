"""Hostile input: whatever the file, the job either stops before sending anything
with a message naming the file and the problem (exit 2), or accounts for every data row in the
results, each ``invalid`` row explained. Never a traceback, never a dropped row.

Property tests run the job's dry run in-process (the same reading and planning as a run);
seeded (derandomized) and bounded, so they are reproducible. Fixed hostile files then go
through the real CLI against the emulator, which must see no request when the job refuses."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bulk_update import JobConfig, run_job
from bulk_update.exceptions import BulkUpdateError
from bulk_update.values import is_blank
from tests.conftest import StartEmulator
from tests.helpers import cli, results

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,  # nothing written beside the tests: every run is the same run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Any Unicode text but lone surrogates (no UTF-8 file can hold one): combining marks, emoji,
# right-to-left text, NUL and other controls included.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
CELL = st.one_of(
    TEXT,
    st.sampled_from(["conv_abc", "conv_a-b_c", " conv_pad ", "", "=1+1", "\u202econv_rtl"]),
    st.text(st.sampled_from("ab\u0301\U0001f600"), min_size=600, max_size=3000),  # huge cells
)


def check(path: Path, tmp_path: Path) -> pl.DataFrame | None:
    """Run the dry run; None if it refused (exit 2, naming the file), else the results."""
    output = tmp_path / "results.parquet"
    refused: BulkUpdateError | None = None
    try:
        summary = run_job(JobConfig(input=str(path), output=str(output), dry_run=True))
    except BulkUpdateError as exc:
        refused = exc
    if refused is not None:
        assert refused.exit_code == 2
        assert path.name in str(refused), str(refused)
        event(f"refused: {str(refused).split(': ', 1)[1][:30]}")
        return None
    frame = pl.read_parquet(output)
    event(f"accounted: {'some' if frame.height else 'no'} rows")
    assert summary.total_rows == frame.height
    assert frame["row_number"].to_list() == list(range(1, frame.height + 1))
    invalid = frame.filter(pl.col("status") == "invalid")
    assert invalid["error_message"].null_count() == 0
    assert (invalid["error_message"].str.len_chars() > 0).all()
    return frame


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """A CSV file's bytes, and its number of data rows (None if it cannot be UTF-8 text)."""

    def rarely() -> bool:  # one case in eight: the rest exercise the rows, not the refusals
        return draw(st.integers(0, 7)) == 7  # not 0: hypothesis tries the simplest first

    if rarely():  # any names: empty, repeated, controls
        extra = draw(st.lists(st.one_of(TEXT, st.sampled_from(["a", "a", ""])), max_size=4))
    else:
        extra = draw(st.lists(st.text(st.characters(exclude_categories=["Cs", "Cc"]),
                                      min_size=1, max_size=8), min_size=1, max_size=4,
                              unique=True).filter(lambda names: "conversation_id" not in names))  # fmt: skip
    header = ["conversation_id", *extra]
    width = len(header)
    rows = draw(
        st.lists(
            st.lists(CELL, min_size=0, max_size=width + 1)  # ragged: fewer or more cells
            if rarely()
            else st.lists(CELL, min_size=width, max_size=width),
            max_size=12,
        )
    )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(header)
    writer.writerows(rows)
    encoding = draw(st.sampled_from(["latin-1", "utf-16", "utf-8-sig"])) if rarely() else "utf-8"
    data = text.getvalue().encode(encoding, errors="replace")
    if rarely():
        data = data[: draw(st.integers(0, len(data)))]  # cut anywhere, even mid-character
    try:
        decoded = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data, None
    records = list(csv.reader(io.StringIO(decoded, newline="")))
    return data, max(0, len(records) - 1)


@SETTINGS
@given(case=csv_files())
def test_any_csv_is_refused_or_fully_accounted(
    tmp_path: Path, case: tuple[bytes, int | None]
) -> None:
    data, rows = case
    path = tmp_path / "input.csv"
    path.write_bytes(data)
    frame = check(path, tmp_path)
    if frame is not None:
        assert rows is not None  # what is not UTF-8 is refused, never half read
        assert frame.height == rows, (frame.height, rows)


@SETTINGS
@given(
    frame=st.integers(0, 30).flatmap(
        lambda n: st.fixed_dictionaries(
            {
                "conversation_id": st.lists(st.one_of(st.none(), CELL), min_size=n, max_size=n),
                "a": st.lists(st.one_of(st.none(), TEXT), min_size=n, max_size=n),
                "n": st.lists(
                    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n
                ),
            }
        )
    ),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_any_parquet_is_refused_or_fully_accounted(
    tmp_path: Path, frame: dict[str, list[object]], cut: float | None
) -> None:
    path = tmp_path / "input.parquet"
    table = pl.DataFrame(
        frame, schema={"conversation_id": pl.String, "a": pl.String, "n": pl.Int64}
    )
    table.write_parquet(path)
    if cut is not None:  # a file cut off while it was copied
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * cut)])
    result = check(path, tmp_path)
    if result is not None:
        assert cut is None or cut == 1.0
        assert result.height == table.height


HOSTILE = {
    "latin1.csv": (
        "conversation_id,a\nconv_1,x\nconv_2,caf\u00e9\n".encode("latin-1"),
        "line 3: not UTF-8",
    ),
    "utf16.csv": ("conversation_id,a\nconv_1,x\n".encode("utf-16"), "UTF-16"),
    "ragged.csv": (b"conversation_id,a\nconv_1,x\nconv_2,y,z\n", "line 3: 3 fields"),
    "quote.csv": (b'conversation_id,a\nconv_1,x\nconv_2,"y\n', "never closed"),
    "empty.csv": (b"", "empty"),
    "dup.csv": (b"conversation_id,a,a\nconv_1,x,y\n", "more than once"),
    "junk.csv": (bytes(range(256)) * 8, "binary"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_stop_the_cli_before_sending(
    start_emulator: StartEmulator, tmp_path: Path, name: str
) -> None:
    data, problem = HOSTILE[name]
    path = tmp_path / name
    path.write_bytes(data)
    emu = start_emulator()
    run = cli("run", str(path), "--output", str(tmp_path / "r.csv"), "--base-url", emu.base_url)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    line = run.stderr.strip().splitlines()[-1]
    assert line.startswith(f"bulk-update: error: {path}: ")
    assert problem in line
    assert emu.stats()["requests"] == 0


def test_header_only_and_fewer_fields_are_accounted(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("conversation_id,a,b\n")
    done = cli("validate", str(path), "--output", str(tmp_path / "r.csv"))
    assert done.returncode == 0
    assert results(tmp_path / "r.csv").height == 0
    path.write_text("conversation_id,a,b\nconv_1,x,1\nconv_2\n\nconv_3,,\n")
    done = cli("validate", str(path), "--output", str(tmp_path / "r.csv"))
    assert done.returncode == 1
    assert results(tmp_path / "r.csv")["status"].to_list() == [
        "planned", "invalid", "invalid", "invalid",
    ]  # fmt: skip


def test_a_cell_of_megabytes_is_an_explained_invalid_row(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    huge = "\U0001f600" * 2_000_000  # 8 MB of four-byte characters in one cell
    path.write_text(f"conversation_id,a\nconv_1,x\nconv_2,{huge}\nconv_3,y\n", encoding="utf-8")
    done = cli("validate", str(path), "--output", str(tmp_path / "r.parquet"))
    assert done.returncode == 1, done.stderr
    frame = results(tmp_path / "r.parquet")
    assert frame["status"].to_list() == ["planned", "invalid", "planned"]
    assert frame["error_message"][1] == "value for 'a' is 2000000 characters; at most 512"


# A JSON value as written in a file, and the text a row sends for it (None: no value). Numbers,
# arrays and objects are sent as written; a string decoded; true/false as such.
Written = tuple[str, str | None]
JSON_SCALARS: st.SearchStrategy[Written] = st.one_of(
    st.none().map(lambda _: ("null", None)),
    st.booleans().map(lambda b: ("true", "true") if b else ("false", "false")),
    st.integers().map(lambda n: (str(n), str(n))),
    st.integers(2**63 - 2, 2**130).map(lambda n: (str(n), str(n))),  # past any 64-bit type
    st.integers(4000, 5000).map(lambda n: ("9" * n, "9" * n)),  # past Python's int() limit
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: (repr(f), repr(f))),
    st.sampled_from(["1.0", "1.50", "1e3", "1E+3", "-0.0", "-0", "1e400", "0.1e-999"]).map(
        lambda t: (t, t)
    ),
    TEXT.map(lambda s: (json.dumps(s), s or None)),
    TEXT.map(lambda s: (json.dumps(s, ensure_ascii=False), s or None)),
)


def _nested(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """An array or an object of ``children`` (JSON texts), spaced or not."""
    space = st.sampled_from(["", " ", "\t"])
    array = st.tuples(st.lists(children, max_size=4), space).map(
        lambda c: "[" + ("," + c[1]).join(c[0]) + "]"
    )
    members = st.lists(st.tuples(TEXT.map(json.dumps), children), max_size=4)
    obj = st.tuples(members, space).map(
        lambda c: "{" + ("," + c[1]).join(f"{k}:{c[1]}{v}" for k, v in c[0]) + "}"
    )
    return st.one_of(array, obj)


JSON_VALUES: st.SearchStrategy[Written] = st.one_of(
    JSON_SCALARS,
    _nested(st.recursive(JSON_SCALARS.map(lambda w: w[0]), _nested, max_leaves=8)).map(
        lambda t: (t, t)
    ),
)
KEYS = ("a", "b", "c")


@settings(SETTINGS, max_examples=150)
@given(
    rows=st.lists(
        st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=len(KEYS)), max_size=12
    ),
    space=st.sampled_from(["", " ", "  \t"]),
)
def test_any_json_value_is_sent_as_written_or_its_row_invalid(
    tmp_path: Path, rows: list[dict[str, Written]], space: str
) -> None:
    """Any JSON value in any cell, columns mixing objects, arrays, numbers of any size, strings
    and nulls across rows: each row is sent as written (one rule: a number as its text in the
    file, a string of white space only no value) or is ``invalid`` for itself (an array or an
    object: a nested value, never sent), a key holding nothing but objects and arrays too; the
    file never fails (an array of an object then a number was exit 70 for the whole file)."""
    path = tmp_path / "input.jsonl"
    lines = []
    for number, row in enumerate(rows):
        pairs = [f'"conversation_id":{space}"conv_{number}"']
        pairs += [f'"{key}":{space}{written}' for key, (written, _) in row.items()]
        lines.append("{" + f",{space}".join(pairs) + "}\n")
    path.write_text("".join(lines) or "\n", encoding="utf-8")
    frame = check(path, tmp_path)
    if not any(rows):
        assert frame is None  # no object, or no key but the ID: refused, exit 2
        return

    def nested(written: str) -> bool:
        return written.startswith(("[", "{"))

    assert frame is not None
    assert frame.height == len(rows)
    for row, result in zip(rows, frame.iter_rows(named=True), strict=True):
        sent = {
            key: text
            for key, (written, text) in row.items()
            if not nested(written) and text is not None and not is_blank(text)
        }
        if any(nested(written) for written, _ in row.values()):
            assert result["status"] == "invalid", result
            assert result["error_code"] in ("unsupported_type", "value_too_long"), result
        elif not sent:
            assert result["error_code"] == "no_metadata"
        elif any(len(text) > 512 for text in sent.values()):
            assert result["error_code"] == "value_too_long"
        else:
            assert result["status"] == "planned", result
            assert json.loads(result["sent_metadata"]) == sent
