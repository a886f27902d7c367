"""jobs/cron-wrapper.sh as cron runs it: quiet on success, a summary when a human should look."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import ID

ROOT = Path(__file__).parent.parent


def wrapper(job: Path, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "env"
    env_file.write_text(f"OPENAI_API_KEY={TEST_KEY}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(BULK_UPDATE_ENV=str(env_file), BULK_UPDATE_LOG_DIR=str(tmp_path / "logs"))
    return subprocess.run([str(ROOT / "jobs" / "cron-wrapper.sh"), str(job), *flags],
                          capture_output=True, text=True, env=env, timeout=120)  # fmt: skip


def nightly_job(start_emulator: StartEmulator, tmp_path: Path) -> tuple[Path, Path]:
    """A job file over 5 rows against an emulator that holds them: (job, its input)."""
    source = tmp_path / "in.csv"
    source.write_text("conversation_id,a\n" + "".join(f"{ID(i)},v\n" for i in range(5)))
    emu = start_emulator("--api-key", TEST_KEY, "--preload", str(source))
    job = tmp_path / "nightly.toml"
    job.write_text(f'input = "{source}"\noutput = "{tmp_path / "out.csv"}"\n'
                   f'base-url = "{emu.base_url}"\n')  # fmt: skip
    return job, source


def test_cron_wrapper(start_emulator: StartEmulator, tmp_path: Path) -> None:
    job, source = nightly_job(start_emulator, tmp_path)
    ok = wrapper(job, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == ""  # cron sends no mail
    log = [
        json.loads(line) for line in (tmp_path / "logs" / "nightly.jsonl").read_text().splitlines()
    ]
    assert log[-1]["event"] == "finish"
    assert log[-1]["counts"] == {"updated": 5}
    assert TEST_KEY not in (tmp_path / "logs" / "nightly.jsonl").read_text()
    source.write_text(source.read_text() + "bad id,v\n")
    partial = wrapper(job, tmp_path, "--restart")
    assert partial.returncode == 1
    assert "some rows failed or invalid" in partial.stdout  # mailed, with the summary
    assert "invalid=1" in partial.stdout


def test_cron_wrapper_on_a_canary_and_an_empty_export(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    job, source = nightly_job(start_emulator, tmp_path)
    canary = wrapper(job, tmp_path, "--limit", "2")
    assert canary.returncode == 0, canary.stdout
    assert canary.stdout == ""  # a clean canary is no failure: no mail
    source.write_text("conversation_id,a\n")
    empty = wrapper(job, tmp_path, "--restart")
    assert empty.returncode == 0
    assert "finished with a warning" in empty.stdout  # mailed: the export had no rows
    assert "warning: the input has no data rows" in empty.stdout
