"""jobs/k8s-indexed-job.yaml: Kubernetes cannot run here, so its pods are played by processes
with what Kubernetes would give them ($JOB_COMPLETION_INDEX, $(VAR) expanded in the args, the
Secrets as environment variables), against the emulator and a real PostgreSQL store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from tests.conftest import TEST_KEY, StartEmulator
from tests.helpers import write_input
from tests.pg import PostgresServer

ROOT = Path(__file__).parent.parent


def load_job() -> dict[str, Any]:
    job: dict[str, Any] = yaml.safe_load((ROOT / "jobs" / "k8s-indexed-job.yaml").read_text())
    return job


def test_the_manifest_is_an_indexed_job_whose_index_is_the_shard() -> None:
    job = load_job()
    spec = job["spec"]
    assert (job["kind"], spec["completionMode"]) == ("Job", "Indexed")
    container = spec["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--shard") + 1] == f"index/{spec['completions']}"
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert secrets == {"OPENAI_API_KEY": "openai-api-key", "BULK_UPDATE_STATE_URL": "state-url"}


def test_each_pod_runs_its_shard(
    start_emulator: StartEmulator, postgres: PostgresServer, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 400)
    emu = start_emulator("--preload", str(source))
    state_url = postgres.create_database("k8s")
    spec = load_job()["spec"]
    args: list[str] = spec["template"]["spec"]["containers"][0]["args"]
    # The cluster's paths become local ones; everything else is the manifest's.
    local = [
        str(source) if arg.endswith("*.parquet") else arg.replace("s3://exports", str(tmp_path))
        for arg in args
    ]
    pods = []
    for index in range(spec["completions"]):
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        env.update(OPENAI_API_KEY=TEST_KEY, BULK_UPDATE_STATE_URL=state_url,
                   JOB_COMPLETION_INDEX=str(index))  # fmt: skip
        expanded = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in local]  # noqa: B023
        command = [sys.executable, "-m", "bulk_update", *expanded, "--base-url", emu.base_url]
        pods.append(subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True))
    for pod in pods:
        _, stderr = pod.communicate(timeout=300)
        assert pod.returncode == 0, stderr
    results = tmp_path / "results" / "backfill-2026-11"
    frames = [pl.read_parquet(results / f"shard-{k}.parquet") for k in range(len(pods))]
    assert all(frame.height > 0 for frame in frames)
    rows = pl.concat(frames)["row_number"].sort().to_list()
    assert rows == list(range(1, 401))  # every row exactly once over the pods
    shards = postgres.query("k8s", "SELECT shard FROM bulk_update.runs ORDER BY shard")
    assert [shard for (shard,) in shards] == [f"{k}/8" for k in range(8)]
