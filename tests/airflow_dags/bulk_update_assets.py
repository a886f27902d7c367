"""DAGs for tests/test_airflow.py's asset tests: a job fanned out over mapped shards, and a DAG
scheduled on the job's asset that notes each run and the events that triggered it. Paths come
from the environment the test sets (BULK_UPDATE_TEST_DIR)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from airflow.sdk import DAG, Asset, task

from bulk_update.airflow import BulkUpdateOperator, shards

HERE = os.environ.get("BULK_UPDATE_TEST_DIR", "/nonexistent")
SHARDS = 4
JOB = Asset("x-bulk-update://sharded_job")  # the operator's default outlet, by name


def sharded_job(results: str, **options: Any) -> None:
    """The job's mapped shards, each writing ``results``-K.parquet of the DAG run."""
    BulkUpdateOperator.partial(
        task_id="shard",
        input=f"{HERE}/in.csv",
        results=f"{HERE}/out/{{{{ run_id }}}}/{results}-{{{{ ti.map_index }}}}.parquet",
        job_name="sharded_job",
        state_dir=f"{HERE}/state",
        rpm=100_000,
        **options,
    ).expand(shard=shards(SHARDS))


with DAG("bulk_update_sharded", schedule=None, tags=["test"]):
    # Two shards at a time, one request each at a time: some end together, some apart.
    sharded_job("shard", concurrency=1, max_active_tis_per_dagrun=2)

# Only when rows were updated: a run that updated none emits no event.
with DAG("bulk_update_sharded_updated_only", schedule=None, tags=["test"]):
    sharded_job("updated-only", asset_events="updated")

with DAG("bulk_update_after_shards", schedule=[JOB], tags=["test"]):

    @task
    def after(**context: Any) -> None:
        """One line a run: when it ran and the extras of the events that triggered it."""
        extras = [event.extra for event in context["triggering_asset_events"][JOB]]
        with open(f"{HERE}/after.jsonl", "a") as noted:
            noted.write(json.dumps({"at": time.time(), "extras": extras}) + "\n")

    after()
