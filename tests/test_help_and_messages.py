"""What the help and the messages say is true and plain (issue 36, point 6): the formats INPUT
and --preload read, where history and status look for a store, what the demo does; a column's
type in words, the emulator's preload errors with their row and column, one line for a mistake
argparse catches, the notes on keys in grammar. With the real CLI (and the emulator)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from bulk_update.cli import _runs, build_parser
from bulk_update.values import kind
from tests.conftest import StartEmulator
from tests.helpers import ID, cli


def help_of(*command: str) -> str:
    done = cli(*command, "--help", key=None)
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())  # argparse's wrapping aside


def every_command() -> list[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    raise AssertionError("no subcommands")


def one_line(done: Any, *fragments: str) -> str:
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "usage:" not in done.stderr
    for fragment in fragments:
        assert fragment in line, done.stderr
    return str(line)


def test_no_help_says_csv_or_parquet_or_here() -> None:
    """Every command's help: the four input formats, never "CSV or Parquet" alone, and no
    "(default: here)" where the store is looked for below too."""
    for command in ["", *every_command()]:
        text = help_of(*filter(None, [command]))
        assert "CSV or Parquet" not in text, command
        assert "CSV/Parquet" not in text, command
        assert "(default: here)" not in text, command


@pytest.mark.parametrize("command", ["run", "validate"])
def test_input_help_names_every_format(command: str) -> None:
    assert "INPUT the table to read: CSV, TSV, JSON Lines or Parquet" in help_of(command)


def test_preload_help_says_what_it_reads() -> None:
    text = help_of("emulator")
    assert "Parquet (.parquet), JSON Lines (.jsonl, .ndjson), TSV (.tsv) or else CSV" in text


@pytest.mark.parametrize("command", ["history", "status", "report"])
def test_the_lookups_help_says_where_they_look(command: str) -> None:
    text = help_of(command)
    assert "in the current directory or up to 3 levels below it" in text
    assert "--job FILE.toml the job file run took" in text
    assert "--job-name NAME the job's name" in text


def test_demo_help_says_its_three_steps() -> None:
    text = help_of("demo")
    assert "twice" not in text
    assert "in three steps: every row; the same job over the sample with three rows edited" in text
    assert "validate --check-server" in text


@pytest.mark.parametrize(
    ("dtype", "shown"),
    [
        (pl.Duration("us"), "a duration"),
        (pl.List(pl.String), "a list"),
        (pl.Array(pl.Int8, 2), "a list"),
        (pl.Struct({"a": pl.Int8}), "a struct"),
        (pl.Binary, "binary"),
        (pl.Int64, "a whole number"),
        (pl.UInt128, "a whole number"),
        (pl.Float32, "a number"),
        (pl.Decimal(10, 2), "a decimal number"),
        (pl.Datetime("us", "UTC"), "a date and time"),
        (pl.Date(), "a date"),
        (pl.Date, "a date"),
        (pl.Time, "a time of day"),
        (pl.Boolean, "true/false"),
        (pl.String, "text"),
        (pl.Categorical, "text"),
        (pl.Null, "empty"),
        (pl.Object, "a Python object"),
        (pl.Unknown, "an unknown value"),
    ],
)
def test_a_type_in_plain_words(dtype: Any, shown: str) -> None:
    assert kind(dtype) == shown
    assert "(" not in kind(dtype)  # never polars' repr: Duration(time_unit='us')


def test_a_duration_id_column_is_named_in_words(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """A Parquet ID column of durations: one line, "holds a duration", never polars' repr
    (Duration(time_unit='us')); a list column's rows are "a list" in the same words."""
    source = tmp_path / "ids.parquet"
    pl.DataFrame({"conversation_id": [dt.timedelta(seconds=1)], "t": ["x"]}).write_parquet(source)
    emu = start_emulator("--preload", "0")
    refused = cli("run", str(source), "--output", str(tmp_path / "o.csv"), "--base-url",
                  emu.base_url)  # fmt: skip
    line = one_line(refused, "the ID column 'conversation_id' holds a duration, not text")
    assert "Duration(" not in line

    listed = tmp_path / "in.parquet"
    pl.DataFrame(
        {"conversation_id": [ID(0)], "wait": [dt.timedelta(seconds=5)], "tags": [["a"]]}
    ).write_parquet(listed)
    done = cli("validate", str(listed), "--output", str(tmp_path / "plan.csv"))
    assert done.returncode == 1, done.stderr
    (message,) = pl.read_csv(tmp_path / "plan.csv", infer_schema=False)["error_message"]
    assert message.startswith("value for 'tags' is a list; only text, numbers"), message


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        (
            "p.csv",
            'conversation_id,metadata\nconv_a,"{""a"": ""b""}"\nconv_b,"{""a"": 1}"\n',
            "p.csv: row 2 (conv_b), column metadata: Invalid type for 'metadata.a': expected a "
            "string, but got an integer instead.",
        ),
        (
            "p.csv",
            'conversation_id,metadata\nconv_a,"{bad"\n',
            "p.csv: row 1 (conv_a), column metadata: not JSON (",
        ),
        (
            "p.jsonl",
            '{"conversation_id": "conv_a"}\n'
            + json.dumps(
                {"conversation_id": "conv_b", "metadata": {f"k{i}": "v" for i in range(17)}}
            )
            + "\n",
            "p.jsonl: row 2 (conv_b), column metadata: Invalid 'metadata': too many properties.",
        ),
    ],
)
def test_a_preload_error_names_the_row_and_column(
    tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    (tmp_path / name).write_text(text)
    done = cli("emulator", "--port", "0", "--preload", name, cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"bulk-update emulator: --preload {name}: row "), line
    assert fragment in line, line


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--shard", "index/3"],
         ["argument --shard: $JOB_COMPLETION_INDEX is not set: index/N takes K from it",
          "elsewhere give K/N", "(see bulk-update run --help)"]),
        (["--rpm", "0"], ["argument --rpm: expected a whole number >= 1, got '0'"]),
        (["--no-such-flag"], ["unrecognized arguments: --no-such-flag"]),
    ],
)  # fmt: skip
def test_a_mistake_argparse_catches_is_one_line(
    tmp_path: Path, flags: list[str], fragments: list[str]
) -> None:
    """--shard index/3 without its variable says what is missing, in one line, not the whole
    usage; so does every mistake on the command line."""
    done = cli("run", "in.csv", "--output", "o.csv", *flags, cwd=tmp_path, JOB_COMPLETION_INDEX="")
    line = one_line(done, *fragments)
    assert line.startswith("bulk-update: error: ")


def test_a_revert_says_the_keys_it_leaves_in_grammar(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """One key: "key 'owner' stays on 3 conversations"; two: "keys stay: 'owner' on 3
    conversations, 'queue' on 3 conversations", never "keys 'owner' stays"."""
    preload = tmp_path / "server.csv"
    preload.write_text(
        "conversation_id,metadata\n"
        + "".join(f'{ID(i)},"{{""tier"": ""old""}}"\n' for i in range(6))
    )
    emu = start_emulator("--preload", str(preload))
    url = ("--base-url", emu.base_url)
    for first, keys, expected in (
        (0, ("owner",), "key 'owner' stays on 3 conversations (the run added it;"),
        (3, ("owner", "queue"),
         "keys stay: 'owner' on 3 conversations, 'queue' on 3 conversations (the run added them;"),
    ):  # fmt: skip
        name = "-".join(keys)
        ids = [ID(i) for i in range(first, first + 3)]  # conversations the run had not touched
        source = tmp_path / f"{name}.csv"
        source.write_text(
            "conversation_id,tier," + ",".join(keys) + "\n"
            + "".join(f"{i},new," + ",".join("x" for _ in keys) + "\n" for i in ids)
        )  # fmt: skip
        results = tmp_path / f"{name}-results.csv"
        done = cli("run", str(source), "--output", str(results), "--backup", *url)
        assert done.returncode == 0, done.stderr
        undone = cli("revert", str(results), "--output", str(tmp_path / f"{name}-r.csv"), *url)
        assert undone.returncode == 0, undone.stderr
        summary = undone.stderr.strip().splitlines()[-1]
        assert expected in summary, summary
        assert "keys 'owner' stays" not in summary


def test_the_tables_titles_count_runs_in_grammar() -> None:
    """history's and status's titles (on a terminal): "job x: 1 run", "job x: 2 runs"."""
    assert [_runs(n) for n in (0, 1, 2)] == ["0 runs", "1 run", "2 runs"]
