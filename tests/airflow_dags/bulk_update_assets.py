"""DAGs for tests/test_airflow.py's asset tests: a job fanned out over mapped shards, and a DAG
scheduled on the job's asset that notes each run and the events that triggered it. Paths and
the shard count come from the environment the test sets (BULK_UPDATE_TEST_DIR,
BULK_UPDATE_TEST_SHARDS)."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Asset, task

from bulk_update.airflow import BulkUpdateOperator, shards

HERE = os.environ.get("BULK_UPDATE_TEST_DIR", "/nonexistent")
SHARDS = int(os.environ.get("BULK_UPDATE_TEST_SHARDS", "3"))
JOB = Asset("x-bulk-update://sharded_job")  # the operator's default outlet, by name

with DAG(
    "bulk_update_sharded",
    schedule=None,
    tags=["test"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    BulkUpdateOperator.partial(
        task_id="shard",
        input=f"{HERE}/in.csv",
        results=f"{HERE}/out/{{{{ run_id }}}}/shard-{{{{ ti.map_index }}}}.parquet",
        job_name="sharded_job",
        state_dir=f"{HERE}/state",
        concurrency=1,
        rpm=100_000,
        max_active_tis_per_dagrun=2,  # two shards at a time: some end together, some apart
    ).expand(shard=shards(SHARDS))

# Only when rows were updated: a run that updated none emits no event.
with DAG("bulk_update_sharded_updated_only", schedule=None, tags=["test"]):
    BulkUpdateOperator.partial(
        task_id="shard",
        input=f"{HERE}/in.csv",
        results=f"{HERE}/out/{{{{ run_id }}}}/updated-only-{{{{ ti.map_index }}}}.parquet",
        job_name="sharded_job",
        state_dir=f"{HERE}/state",
        rpm=100_000,
        asset_events="updated",
    ).expand(shard=shards(SHARDS))

with DAG("bulk_update_after_shards", schedule=[JOB], tags=["test"]):

    @task
    def after(**context: Any) -> None:
        """One line a run: when it ran and the extras of the events that triggered it."""
        extras = [event.extra for event in context["triggering_asset_events"][JOB]]
        with open(f"{HERE}/after.jsonl", "a") as noted:
            noted.write(json.dumps({"at": time.time(), "extras": extras}) + "\n")

    after()
