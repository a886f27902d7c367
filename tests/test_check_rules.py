"""The pure rules of knowing the server (check.py) and of a revert (revert.py)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from bulk_update.config import JobConfig
from bulk_update.emulator.process import EmulatorProcess
from bulk_update.emulator.server import preload_from
from bulk_update.exceptions import ConfigError
from bulk_update.outcome import OUTCOME_UNKNOWN, ROW_NUMBER
from bulk_update.plan import PlannedUpdate
from bulk_update.server.check import judge, new_keys, replaced_keys
from bulk_update.server.revert import plan_batch, revert_row, settled

FIFTEEN = {f"k{n}": "v" for n in range(15)}


def test_the_sixteen_pair_budget_counts_only_new_keys() -> None:
    assert judge({"owner": "a"}, FIFTEEN).action == "send"  # 15 + 1 = 16
    two = judge({"owner": "a", "queue": "q"}, FIFTEEN)
    assert (two.action, two.error_code) == ("invalid", "merged_too_many_pairs")
    assert two.error_message == (
        "the server holds 15 keys; with this row's 2 new keys it would hold 17; at most 16"
    )
    sixteen = {**FIFTEEN, "k15": "v"}
    assert judge({"k0": "changed"}, sixteen).action == "send"  # no new key
    one = judge({"new": "x"}, sixteen)
    assert one.error_message == (
        "the server holds 16 keys; with this row's 1 new key it would hold 17; at most 16"
    )
    assert new_keys({"k0": "v", "owner": "a"}, FIFTEEN) == ["owner"]


def test_a_row_the_server_holds_is_unchanged_even_past_the_budget() -> None:
    sixteen = {**FIFTEEN, "k15": "v"}
    assert judge({"k3": "v", "k15": "v"}, sixteen).action == "unchanged"
    assert judge({"k3": "other"}, sixteen).action == "send"


def test_a_revert_leaves_a_drifted_key_alone_unless_forced() -> None:
    expect = {"tier": "new"}  # what the run set
    assert judge({"tier": "old"}, {"tier": "new"}, expect=expect).action == "send"
    assert judge({"tier": "old"}, {"tier": "old"}, expect=expect).action == "unchanged"
    drifted = judge({"tier": "old"}, {"tier": "gold"}, expect=expect)
    assert (drifted.action, drifted.error_code) == ("invalid", "drifted")
    assert "'tier' is 'gold' (the run set 'new')" in (drifted.error_message or "")
    gone = judge({"tier": "old"}, {}, expect=expect)
    assert "'tier' is absent" in (gone.error_message or "")
    assert judge({"tier": "old"}, {"tier": "gold"}, expect=expect, force=True).action == "send"


def test_a_replacing_server_is_recognised() -> None:
    before = {"region": "eu", "tier": "old"}
    assert replaced_keys(before, {"tier": "new"}, {"tier": "new"}) == ["region"]
    assert replaced_keys(before, {"tier": "new"}, {"region": "eu", "tier": "new"}) == []


@pytest.mark.parametrize(
    ("sent", "previous", "blank", "target", "kept"),
    [
        ('{"tier":"new"}', '{"tier":"old"}', False, {"tier": "old"}, []),
        ('{"tier":"new","owner":"o"}', '{"tier":"old"}', False, {"tier": "old"}, ["owner"]),
        ('{"tier":"new","owner":"o"}', '{"tier":"old"}', True, {"tier": "old", "owner": ""}, []),
        ('{"tier":"old"}', '{"tier":"old"}', False, {}, []),  # the run changed nothing
        ('{"owner":""}', "{}", True, {}, []),  # blanking an empty value: nothing to do
    ],
)
def test_what_a_revert_puts_back(
    sent: str, previous: str, blank: bool, target: dict[str, str], kept: list[str]
) -> None:
    row = revert_row(sent, previous, blank_added_keys=blank)
    assert (row.target, row.kept) == (target, kept)
    assert set(row.expect) == set(row.target)


@pytest.mark.parametrize(
    ("sent", "previous", "returned", "target", "expect", "kept"),
    [
        # A merging server: its answer has the before-image's keys.
        ('{"t":"new"}', '{"t":"old","r":"eu"}', '{"t":"new","r":"eu"}',
         {"t": "old"}, {"t": "new"}, []),
        # A replacing server dropped 'r': the whole before-image goes back ('r' was absent).
        ('{"t":"new"}', '{"t":"old","r":"eu"}', '{"t":"new"}',
         {"t": "old", "r": "eu"}, {"t": "new"}, []),
        # ... even when the run changed no value of it (it only added a key).
        ('{"o":"x"}', '{"r":"eu","s":"1"}', '{"o":"x"}',
         {"r": "eu", "s": "1"}, {}, ["o"]),
    ],
)  # fmt: skip
def test_a_revert_puts_back_what_a_replacing_server_dropped(
    sent: str,
    previous: str,
    returned: str,
    target: dict[str, str],
    expect: dict[str, str],
    kept: list[str],
) -> None:
    row = revert_row(sent, previous, returned, blank_added_keys=False)
    assert (row.target, row.expect, row.kept) == (target, expect, kept)
    assert row.whole == (target.keys() != {"t"})
    # A key it puts back that someone set since is drift; absent, or the value, is not.
    assert judge(row.target, {"t": "new", "o": "x"}, expect=row.expect).action == "send"
    if "r" in target:
        assert judge(row.target, {"r": "us"}, expect=row.expect).error_code == "drifted"


def test_an_edited_results_row_that_is_not_json_is_invalid_not_a_crash() -> None:
    batch = pl.DataFrame(
        {ROW_NUMBER: [1, 2], "conversation_id": ["conv_a", "conv_b"],
         "status": ["updated", "updated"], "error_code": [None, None],
         "sent_metadata": ['{"t":"new"}', '{"t":"new"}'],
         "previous_metadata": ['{"t":"old"}', "{edited by hand"]},
        schema_overrides={ROW_NUMBER: pl.UInt32},
    )  # fmt: skip
    plan = plan_batch(batch.with_columns(metadata=pl.col("sent_metadata")), blank_added_keys=False)
    assert [(u.row_number, u.conversation_id, u.sent_metadata) for u in plan.to_send] == [
        (1, "conv_a", '{"t":"old"}')
    ]
    assert [(o.row_number, o.error_code) for o in plan.invalid] == [(2, "unreadable_before_image")]


def test_a_row_that_may_have_been_applied_is_reverted_as_applied() -> None:
    before = '{"t":"old","r":"eu"}'
    batch = pl.DataFrame(
        {ROW_NUMBER: [1, 2, 3], "conversation_id": ["conv_a", "conv_b", "conv_c"],
         "status": ["unprocessed"] * 3,
         "error_code": [OUTCOME_UNKNOWN, "replaced_not_merged", OUTCOME_UNKNOWN],
         "sent_metadata": ['{"t":"new","o":"x"}'] * 3,
         "previous_metadata": [before, before, None], "metadata": [None] * 3},
        schema_overrides={ROW_NUMBER: pl.UInt32},
    )  # fmt: skip
    plan = plan_batch(batch, blank_added_keys=False)
    # Its answer unknown, so whether the server merged too: the whole image, guarded by what
    # the run sent for its own keys ('o' was added: it stays).
    [update] = plan.to_send
    assert (update.row_number, update.metadata, update.whole) == (1, {"t": "old", "r": "eu"}, True)
    assert update.expect == '{"t":"new"}'
    assert plan.unchanged[ROW_NUMBER].to_list() == [2]  # "not sent": nothing to put back
    assert [(o.row_number, o.error_code) for o in plan.invalid] == [(3, "no_before_image")]


@pytest.mark.parametrize(
    ("server", "action", "sent"),
    [
        ({"t": "old", "r": "eu"}, "unchanged", None),  # never applied
        ({"t": "new", "r": "eu", "o": "x"}, "send", {"t": "old"}),  # applied, merged
        ({"t": "new", "r": "us"}, "send", {"t": "old"}),  # merged; 'r' changed since: theirs
        ({"t": "new", "o": "x"}, "send", {"t": "old", "r": "eu"}),  # applied, 'r' dropped
        ({"t": "gold", "r": "eu"}, "invalid", None),  # someone's change since: drift
        ({"t": "gold"}, "invalid", None),  # dropped, and changed since: drift
    ],
)
def test_a_whole_image_is_settled_against_what_the_server_holds(
    server: dict[str, str], action: str, sent: dict[str, str] | None
) -> None:
    row = revert_row('{"t":"new","o":"x"}', '{"t":"old","r":"eu"}', None,
                     blank_added_keys=False, unsure=True)  # fmt: skip
    update = PlannedUpdate(1, "conv_a", json.dumps(row.target), json.dumps(row.expect), whole=True)
    update = settled(update, server)
    decision = judge(update.metadata, server, expect=json.loads(update.expect or "{}"))
    assert decision.action == action, decision
    if sent is not None:
        assert update.metadata == sent
        assert update.whole == ("r" in sent)


def test_a_revert_is_a_run_of_the_job_it_reverts() -> None:
    reverting = JobConfig(input="out/fix.parquet", output="undo/fix-undo.csv", revert=True)
    assert reverting.resolved_job_name() == "fix"
    assert reverting.store_path() == Path("out/fix.sqlite")
    named = JobConfig(input="out/fix.parquet", output="u.csv", revert=True, job_name="nightly",
                      state_dir="state")  # fmt: skip
    assert named.store_path() == Path("state/nightly.sqlite")
    with pytest.raises(ConfigError, match="no --shard"):
        JobConfig(input="out/fix.parquet", output="u.csv", revert=True, shard=(0, 2))
    with pytest.raises(ConfigError, match="--force and --blank-added-keys"):
        JobConfig(input="in.csv", output="u.csv", force=True)
    with pytest.raises(ConfigError, match="--check-server is for a dry run"):
        JobConfig(input="in.csv", output="u.csv", check_server=True)


def test_the_emulator_preloads_metadata_from_a_json_column(tmp_path: Path) -> None:
    path = tmp_path / "server.csv"
    path.write_text('conversation_id,metadata\nconv_a,"{""owner"":""ana""}"\nconv_b,\n')
    assert list(preload_from(str(path))) == [
        (("conv_a",), {"owner": "ana"}, None), (("conv_b",), None, None),
    ]  # fmt: skip
    path.write_text("conversation_id,metadata\nconv_a,{not json\n")
    with pytest.raises(ValueError, match=r"row 1 \(conv_a\), column metadata: not JSON"):
        list(preload_from(str(path)))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("server.tsv", 'conversation_id\tmetadata\nconv_a\t{"owner":"ana"}\nconv_b\t\n'),
        ("server.jsonl", '{"conversation_id":"conv_a","metadata":{"owner":"ana"}}\n'
                         '{"conversation_id":"conv_b"}\n'),
    ],
)  # fmt: skip
def test_the_emulator_preloads_every_input_format_of_the_job(
    tmp_path: Path, name: str, text: str
) -> None:
    """`emulator --preload rows.tsv` once read a TSV as CSV ("no conversation_id column")."""
    path = tmp_path / name
    path.write_text(text)
    assert list(preload_from(str(path))) == [
        (("conv_a",), {"owner": "ana"}, None), (("conv_b",), None, None),
    ]  # fmt: skip
    with EmulatorProcess("--preload", str(path)) as emu:
        assert emu.stats()["conversations"] == 2
        assert emu.admin("conversations/conv_a")["metadata"] == {"owner": "ana"}
