"""DAGs for tests/test_airflow.py: the operator under each connection form and each way a
task ends. Paths come from the environment the test sets (BULK_UPDATE_TEST_DIR)."""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import DAG

from bulk_update.airflow import BulkUpdateOperator

HERE = os.environ.get("BULK_UPDATE_TEST_DIR", "/nonexistent")
SOURCE = f"{HERE}/in.csv"


def update(task_id: str, **options: object) -> BulkUpdateOperator:
    options.setdefault("input", SOURCE)
    options.setdefault("results", f"{HERE}/out/{task_id}.parquet")
    options.setdefault("state_dir", f"{HERE}/state")
    return BulkUpdateOperator(task_id=task_id, **options)  # type: ignore[arg-type]


# The openai connection in each of the provider's forms (the test makes them).
with DAG("bulk_update_connections", schedule=None, tags=["test"]):
    update("key_in_password", openai_conn_id="key_in_password")
    update("key_in_client_kwargs", openai_conn_id="key_in_client_kwargs")
    update("added_with_the_cli", openai_conn_id="added_with_the_cli")
    update("from_the_environment", openai_conn_id="no_such_connection")

# Each way a task ends: exit 2 fails at once, rows in error fail or not, the API's stop (exit
# 3) is retried.
with DAG(
    "bulk_update_endings",
    schedule=None,
    tags=["test"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=1)},
):
    update("missing_input", input=f"{HERE}/no-such-export.csv")
    update("workload_identity", openai_conn_id="workload_identity")
    update("rows_invalid_fail", input=f"{HERE}/with-invalid.csv")
    update("rows_invalid_pass", input=f"{HERE}/with-invalid.csv", fail_on_row_errors=False)
    update("key_refused", openai_conn_id="key_refused")
    update("api_unreachable", openai_conn_id="api_unreachable")
    update("store_not_postgres", store_conn_id="store_not_postgres")

# A task past its execution_timeout: stopped as SIGTERM stops it, its results written.
with DAG("bulk_update_timeout", schedule=None, tags=["test"]):
    update("slow", concurrency=2, rpm=100_000, execution_timeout=timedelta(seconds=4))

# A task killed mid-run (SIGTERM: on_kill), retried.
with DAG(
    "bulk_update_killed",
    schedule=None,
    tags=["test"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
):
    update("slow", concurrency=4, rpm=100_000)

# A task held by its rpm (5 requests/s) where its concurrency would allow more: its log says so.
with DAG("bulk_update_paced", schedule=None, tags=["test"]):
    update("paced", rpm=300, concurrency=8)
