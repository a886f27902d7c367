"""A canary API key appears in no output of a run: stdout, stderr, logs, results, errors, journal."""

from __future__ import annotations

from pathlib import Path

from bulk_update import JobConfig
from tests.conftest import StartEmulator
from tests.helpers import cli

CANARY = "sk-canary-7f3a9b2c4d5e6f708192a3b4c5d6e7f8"


def scan(paths: list[Path], texts: list[str]) -> list[str]:
    found = [f"text #{i}" for i, text in enumerate(texts) if CANARY in text]
    for path in paths:
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            if CANARY.encode() in file.read_bytes():
                found.append(str(file))
    return found


def test_canary_key_never_leaks(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    ids = [f"conv_{i:048x}" for i in range(30)]
    source.write_text("conversation_id,a\n" + "".join(f"{i},v\n" for i in ids) + "bad id,v\n")
    emu = start_emulator("--api-key", CANARY, "--preload", str(source), "--error-rate", "0.2",
                         "--reset-rate", "0.1", "--random-seed", "5")  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    outputs = []
    for fmt, extra in ((".csv", ()), (".parquet", ("--log-format", "json")), (".jsonl", ())):
        run = cli("run", str(source), "--output", str(work / f"r{fmt}"), "--errors-output",
                  str(work / f"e{fmt}"), "--base-url", emu.base_url, "--log-file",
                  str(work / "log.txt"), *extra, key=CANARY)  # fmt: skip
        assert run.returncode == 1, run.stderr
        outputs += [run.stdout, run.stderr]
    # A rejected key (fatal 401) goes through the error paths too.
    rejected = cli("run", str(source), "--output", str(work / "rej.csv"), "--base-url",
                   emu.base_url, "--restart", key=CANARY + "-wrong")  # fmt: skip
    assert rejected.returncode == 3
    outputs += [rejected.stdout, rejected.stderr]
    assert (work / "log.txt").stat().st_size > 0
    assert scan([work], outputs) == []


def test_key_not_in_config_repr() -> None:
    config = JobConfig(input="in.csv", output="out.csv", api_key=CANARY)
    assert CANARY not in repr(config)
    assert CANARY not in str(config)
