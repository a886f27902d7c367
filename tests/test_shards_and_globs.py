"""--shard K/N partitions the input exactly and stably; a glob of files is one table."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from bulk_update import ConfigError, JobConfig
from bulk_update.read import shard_of
from bulk_update.send import SendSettings
from tests.conftest import StartEmulator
from tests.helpers import ID, cli, results


def test_shard_assignment_is_crc32_and_stable() -> None:
    ids = pl.Series(["conv_abc", " conv_abc ", "conv_" + "0" * 48, "", None, "conv_xyz"])
    # CRC-32 is fixed by standard (values from zlib.crc32 % N): they must never change between
    # releases, or a resumed sharded job would send rows to the wrong shard.
    assert pl.select(shard_of(pl.lit(ids), 4)).to_series().to_list() == [0, 0, 3, 0, 0, 1]
    assert pl.select(shard_of(pl.lit(ids), 7)).to_series().to_list() == [0, 0, 1, 0, 0, 2]


def test_a_shard_may_use_the_whole_rpm_and_its_own_concurrency() -> None:
    """--rpm is the whole job's: running shards share it at run time through the store's rate
    budget (tests/test_postgres_store.py measures it), never by a static rpm / N."""
    config = JobConfig(input="i.csv", output="o.csv", rpm=900, concurrency=16, shard=(1, 3),
                       api_key="sk-test")  # fmt: skip
    sender = SendSettings.from_config(config)  # what the shard's limiter and pool are given
    assert (sender.rpm, sender.client.concurrency) == (900, 16)
    with pytest.raises(ConfigError, match="K must be from 0 to N-1"):
        JobConfig(input="i.csv", output="o.csv", shard=(3, 3))


def test_the_shard_index_may_come_from_a_kubernetes_indexed_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each pod of an Indexed Job has $JOB_COMPLETION_INDEX: ``--shard index/N`` reads it."""
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    config = JobConfig.from_options({"input": "i.csv", "output": "o.csv", "shard": "index/4"})
    assert config.shard == (2, 4)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "4")
    with pytest.raises(ConfigError, match="K must be from 0 to N-1"):
        JobConfig.from_options({"input": "i.csv", "output": "o.csv", "shard": "index/4"})
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    with pytest.raises(ConfigError, match=r"\$JOB_COMPLETION_INDEX is not set"):
        JobConfig.from_options({"input": "i.csv", "output": "o.csv", "shard": "index/4"})


def test_shards_partition_the_input_exactly(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    rows = [f"{ID(i)},v{i}" for i in range(90)]
    rows[10] = "bad id,x"
    rows[20] = f"{ID(3)},duplicate"
    rows[30] = ",no id"
    source.write_text("conversation_id,a\n" + "\n".join(rows) + "\n")
    emu = start_emulator("--preload", str(source))
    # CRC-32 places rows 21 (the duplicate of row 4) and 31 (no ID) in shard 0, row 11 (a bad
    # ID) in shard 2, none in shard 1: 1 (rows invalid) for shards 0 and 2, 0 for shard 1.
    exit_codes = {0: 1, 1: 0, 2: 1}
    outputs = []
    for k in range(3):
        output = tmp_path / f"shard-{k}.parquet"
        run = cli("run", str(source), "--output", str(output), "--base-url", emu.base_url,
                  "--shard", f"{k}/3", "--rpm", "6000")  # fmt: skip
        assert run.returncode == exit_codes[k], run.stderr
        outputs.append(results(output))
    sizes = [frame.height for frame in outputs]
    assert all(size > 10 for size in sizes)  # a real spread, not all in one shard
    union = pl.concat(outputs).sort("row_number")
    assert union["row_number"].to_list() == list(range(1, 91))  # each row in exactly one shard
    statuses = dict(zip(union["row_number"].to_list(), union["status"].to_list(), strict=True))
    assert statuses[11] == statuses[31] == "invalid"
    assert union.filter(pl.col("row_number") == 21)["error_code"].item() == "duplicate_id"
    assert sum(1 for s in statuses.values() if s == "updated") == 87
    assert emu.stats()["by_operation"]["update"] == 87
    # Re-running a shard is stable: the same rows, nothing sent again.
    again = cli("run", str(source), "--output", str(tmp_path / "shard-1.parquet"), "--base-url",
                emu.base_url, "--shard", "1/3")  # fmt: skip
    # The finished run is found again (every row journaled, none sent): its 30 rows are all
    # `updated`, as before, so exit 0 again.
    assert again.returncode == 0, again.stderr
    assert results(tmp_path / "shard-1.parquet").equals(outputs[1])
    assert emu.stats()["by_operation"]["update"] == 87


def test_a_glob_is_one_table_in_sorted_order(start_emulator: StartEmulator, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "2026-11-02.csv").write_text(f"conversation_id,a\n{ID(3)},c\n{ID(4)},d\n")
    (exports / "2026-11-01.csv").write_text(f"conversation_id,a\n{ID(1)},a\n{ID(2)},b\n")
    (exports / "other.txt").write_text("not matched")
    emu = start_emulator("--preload", str(exports / "2026-11-01.csv"))
    emu.admin("config", {})
    pattern = str(exports / "2026-11-*.csv")
    output = tmp_path / "out.csv"
    run = cli("validate", pattern, "--output", str(output))
    assert run.returncode == 0, run.stderr
    frame = results(output)
    assert frame["conversation_id"].to_list() == [ID(1), ID(2), ID(3), ID(4)]
    assert frame["row_number"].to_list() == [1, 2, 3, 4]
    none = cli("validate", str(exports / "2027-*.csv"), "--output", str(output))
    assert none.returncode == 2
    assert "no file matches" in none.stderr
    # A new file in the glob is a changed input for a run with rows left (its failed rows,
    # under --retry-failed).
    real = cli("run", pattern, "--output", str(tmp_path / "real.csv"), "--base-url", emu.base_url)
    assert real.returncode == 1  # rows 3 and 4 are not on the emulator: 404
    (exports / "2026-11-03.csv").write_text(f"conversation_id,a\n{ID(5)},e\n")
    changed = cli("run", pattern, "--output", str(tmp_path / "real.csv"), "--base-url",
                  emu.base_url, "--retry-failed")  # fmt: skip
    assert changed.returncode == 2
    assert "--restart" in changed.stderr
