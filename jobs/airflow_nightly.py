"""Airflow: the nightly incremental run, and a DAG scheduled on its results.

Each night ``bulk_update_nightly`` reads that day's export and sends only the rows whose
metadata changed since the job last set them (its state is in the job's store, the Postgres
connection ``bulk_update_store``). Its results file is an Airflow asset: each run records an
asset event whose extra holds the counts and the paths, and ``bulk_update_nightly_report``
runs on it. README: Airflow.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Asset, Param, task

from bulk_update.airflow import BulkUpdateOperator

RESULTS = Asset("x-bulk-update://conversations_nightly")  # the operator's default, by name

with DAG(
    dag_id="bulk_update_nightly",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["bulk-update"],
    params={"exports": Param("/data/exports", type="string")},
):
    BulkUpdateOperator(
        task_id="update_metadata",
        input="{{ params.exports }}/{{ ds }}/conversations.parquet",
        results="{{ params.exports }}/results/{{ ds }}.parquet",
        errors_output="{{ params.exports }}/results/{{ ds }}-errors.csv",
        job_name="conversations_nightly",
        store_conn_id="bulk_update_store",
        fail_on_row_errors=False,  # rows refused are in the errors file; the night succeeds
        retries=3,
        retry_delay=timedelta(minutes=5),
        outlets=[RESULTS],
    )

with DAG(dag_id="bulk_update_nightly_report", schedule=[RESULTS], tags=["bulk-update"]):

    @task
    def report(**context: object) -> None:
        """What the night did, from its asset event."""
        for event in context["triggering_asset_events"][RESULTS]:  # type: ignore[index]
            print(f"bulk_update_nightly: {event.extra['counts']} -> {event.extra['results']}")

    report()
