"""Airflow: a one-off backfill fanned out over 4 shards (one mapped task a shard).

    airflow dags trigger bulk_update_backfill --conf '{"input": "/data/exports/*.parquet"}'

The shards share the job's store (the Postgres connection ``bulk_update_store``) and its
``rpm``: a shard retried on another worker resumes its run, sending only what it had not. A
shard killed (its worker's SIGTERM, a task marked failed) drains and fails its try; the retry
resumes. An input or option error fails at once, without retries. The key and the base URL
come from the ``openai_default`` connection, as the OpenAI provider reads it. README: Airflow.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from bulk_update.airflow import BulkUpdateOperator, shards

with DAG(
    dag_id="bulk_update_backfill",
    schedule=None,
    tags=["bulk-update"],
    params={
        "input": Param("exports/conversations-*.parquet", type="string"),
        "output_prefix": Param("out/backfill", type="string"),
    },
):
    shard_runs = BulkUpdateOperator.partial(
        task_id="backfill",
        input="{{ params.input }}",
        results="{{ params.output_prefix }}/{{ run_id }}/shard-{{ ti.map_index }}.parquet",
        errors_output="{{ params.output_prefix }}/{{ run_id }}/errors-{{ ti.map_index }}.csv",
        job_name="conversations_backfill",
        store_conn_id="bulk_update_store",
        rpm=3000,
        concurrency=32,
        retries=3,
        retry_delay=timedelta(seconds=30),
    ).expand(shard=shards(4))

    @task
    def report(summaries: list[dict[str, Any]]) -> dict[str, int]:
        """The shards' counts, added up (each shard's XCom is its summary)."""
        totals: dict[str, int] = {}
        for summary in summaries:
            for status, count in summary["counts"].items():
                totals[status] = totals.get(status, 0) + count
        return totals

    report(shard_runs.output)
