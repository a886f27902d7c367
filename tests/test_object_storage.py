"""Inputs and outputs on object storage: a local S3-compatible server (moto, on loopback)
started by the test; the real CLI reads a glob from it and writes results and errors to it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import StartEmulator
from tests.helpers import ID, cli

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

BUCKET = "bulk-update-test"


@pytest.fixture
def s3() -> Iterator[tuple[str, Any]]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


def read_object(client: Any, key: str) -> pl.DataFrame:
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    if key.endswith(".parquet"):
        return pl.read_parquet(io.BytesIO(body))
    if key.endswith(".jsonl"):
        return pl.read_ndjson(io.BytesIO(body))
    return pl.read_csv(io.BytesIO(body), infer_schema=False)


def test_s3_round_trip_with_environment_credentials(
    s3: tuple[str, Any], start_emulator: StartEmulator, tmp_path: Path
) -> None:
    endpoint, client = s3
    day1 = f"conversation_id,a\n{ID(1)},x\n{ID(2)},y\n"
    day2 = f"conversation_id,a\n{ID(3)},z\nbad id,w\n"
    client.put_object(Bucket=BUCKET, Key="exports/2026-11-02.csv", Body=day2.encode())
    client.put_object(Bucket=BUCKET, Key="exports/2026-11-01.csv", Body=day1.encode())
    preload = tmp_path / "ids.csv"
    preload.write_text(day1 + f"{ID(3)},z\n")
    emu = start_emulator("--preload", str(preload))
    aws: dict[str, Any] = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_ALLOW_HTTP": "true"}  # fmt: skip
    run = cli("run", f"s3://{BUCKET}/exports/2026-11-*.csv",
              "--output", f"s3://{BUCKET}/results/run.parquet",
              "--errors-output", f"s3://{BUCKET}/results/errors.csv",
              "--base-url", emu.base_url, cwd=tmp_path, **aws)  # fmt: skip
    assert run.returncode == 1, run.stderr
    results = read_object(client, "results/run.parquet")
    assert results["row_number"].to_list() == [1, 2, 3, 4]  # the glob in sorted order
    assert results["status"].to_list() == ["updated", "updated", "updated", "invalid"]
    assert emu.admin(f"conversations/{ID(3)}")["metadata"] == {"a": "z"}
    errors = read_object(client, "results/errors.csv")
    assert errors["conversation_id"].to_list() == ["bad id"]
    assert errors.columns == [
        "row_number", "conversation_id", "a", "status", "error_code", "error_message",
    ]  # fmt: skip
    # The store stays on local disk; a re-run resumes from it and sends nothing.
    assert list((tmp_path / ".bulk_update").glob("*.sqlite"))
    again = cli("run", f"s3://{BUCKET}/exports/2026-11-*.csv",
                "--output", f"s3://{BUCKET}/results/run.parquet",
                "--base-url", emu.base_url, cwd=tmp_path, **aws)  # fmt: skip
    assert again.returncode == 1
    assert emu.stats()["by_operation"]["update"] == 3


def test_s3_with_storage_options_and_a_dry_run(s3: tuple[str, Any], tmp_path: Path) -> None:
    endpoint, client = s3
    client.put_object(Bucket=BUCKET, Key="in/rows.csv",
                      Body=f"conversation_id,a\n{ID(1)},x\n,y\n".encode())  # fmt: skip
    options = [
        f"--storage-option=aws_endpoint_url={endpoint}",
        "--storage-option=aws_access_key_id=testing",
        "--storage-option=aws_secret_access_key=testing-secret",
        "--storage-option=aws_region=us-east-1",
        "--storage-option=aws_allow_http=true",
    ]
    run = cli("validate", f"s3://{BUCKET}/in/rows.csv", "--output",
              f"s3://{BUCKET}/plans/plan.jsonl", "--errors-output",
              f"s3://{BUCKET}/plans/errors.csv", *options, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 1, run.stderr
    plan = read_object(client, "plans/plan.jsonl")
    assert plan["status"].to_list() == ["planned", "invalid"]
    assert read_object(client, "plans/errors.csv")["status"].to_list() == ["invalid"]
    assert "testing-secret" not in run.stdout + run.stderr
