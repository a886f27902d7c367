"""The Python API: JobConfig, run_job, run_job_async, and an explicit, complete __all__."""

from __future__ import annotations

import asyncio
import json
import pkgutil
from pathlib import Path

import pytest

import bulk_update
from bulk_update import ConfigError, JobConfig, JobSummary, Progress, run_job, run_job_async
from tests.conftest import TEST_KEY, StartEmulator


def test_all_is_complete_and_importable() -> None:
    public = {name for name in dir(bulk_update) if not name.startswith("_")}
    modules = {module.name for module in pkgutil.iter_modules(bulk_update.__path__)}
    assert public - modules == set(bulk_update.__all__) - {"__version__"}
    for name in bulk_update.__all__:
        assert getattr(bulk_update, name) is not None


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"rpm": 0}, "--rpm must be at least 1"),
        ({"concurrency": 0}, "--concurrency"),
        ({"timeout": 0}, "--timeout"),
        ({"output": "out.xlsx"}, "unknown results format"),
        ({"columns": ("a",), "metadata_column": "m"}, "exclude each other"),
        ({"base_url": "http://api.example.com/v1"}, "refusing plain http"),
        ({"base_url": "ftp://x/v1"}, r"not an http\(s\) URL"),
        ({"base_url": "https://me:pw@api.example.com/v1"}, r"^the base URL must not hold a user"),
    ],
)
def test_config_is_checked_when_built(options: dict[str, object], fragment: str) -> None:
    base: dict[str, object] = {"input": "in.csv", "output": "out.csv"}
    with pytest.raises(ConfigError, match=fragment):
        JobConfig(**{**base, **options})  # type: ignore[arg-type]


def test_loopback_http_is_allowed() -> None:
    for url in ("http://127.0.0.1:8787/v1", "http://localhost/v1", "http://[::1]:1/v1"):
        assert JobConfig(input="i.csv", output="o.csv", base_url=url).resolved_base_url() == url


def test_run_job_and_its_async_form(
    start_emulator: StartEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("conversation_id,a\n" + "".join(f"conv_{i},v\n" for i in range(25)) + ",x\n")
    emu = start_emulator("--preload", str(source))
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    seen: list[Progress] = []
    config = JobConfig(input=str(source), output=str(tmp_path / "out.parquet"),
                       base_url=emu.base_url, rpm=6000)  # fmt: skip
    summary = run_job(config, progress=seen.append)
    assert isinstance(summary, JobSummary)
    assert summary.counts == {"updated": 25, "invalid": 1}
    assert summary.exit_code == 1
    assert summary.requests_sent == 26  # 25 updates and the preflight's GET
    assert seen
    assert seen[-1].done == 26
    assert seen[-1].total == 26
    small = summary.as_dict()
    assert json.loads(json.dumps(small)) == small
    assert len(json.dumps(small)) < 1024  # fits an Airflow XCom easily

    async def in_a_loop() -> JobSummary:
        return await run_job_async(
            JobConfig(
                input=str(source),
                output=str(tmp_path / "again.csv"),
                base_url=emu.base_url,
                rpm=6000,
                dry_run=True,
            )
        )

    dry = asyncio.run(in_a_loop())
    assert dry.counts == {"planned": 25, "invalid": 1}
    assert dry.exit_code == 1
