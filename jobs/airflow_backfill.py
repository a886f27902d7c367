"""Airflow: a bulk-update backfill fanned out over N shards (Airflow 3, TaskFlow API).

Each mapped task runs ``run_job(JobConfig(..., shard=(k, N)))`` and returns the small summary
dict (an XCom). A killed task (SIGTERM) stops gracefully and its retry resumes its run from the
job's store; a task retried after success finds every row finished and sends nothing; a later
run of the DAG sends only the rows that changed since the job last set them (the shards share
the job's store; ``full`` sends all). The last task combines the shard summaries and fails the
run if any shard did not finish cleanly.

The store: the Postgres connection ``bulk_update_store`` if it exists (its URI, through the
official Postgres provider's connection type), so that a shard retried on another worker
resumes, the state survives the pods, and the running shards share one ``rpm``; else
$BULK_UPDATE_STATE_URL; else one SQLite file, ``<state_dir>/<job_name>.sqlite``, which only
works when every task runs on one machine (LocalExecutor).

The API key comes from the Airflow connection ``openai_default`` (its password, or the
``api_key`` extra), else from the environment's OPENAI_API_KEY. It is handed to JobConfig,
whose repr hides it; it is never logged.

Metrics: with the ``pushgateway`` param (or $BULK_UPDATE_PUSHGATEWAY), each shard pushes its
Prometheus metrics to that Pushgateway, grouped by job name and shard, periodically and at its
end.

Trigger: airflow dags trigger bulk_update_backfill --conf '{"input": "...", "shards": 8}'
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

# A stopped shard is retried (and resumes its run) after this long. A stop is resumable
# (bulk_update.RESUMABLE: the API said stop, or a signal); exit 2 (usage, config or input)
# fails the task without retries.
RETRY_DELAY = timedelta(seconds=float(os.environ.get("BULK_UPDATE_RETRY_DELAY_S", "30")))


STORE_CONNECTION = "bulk_update_store"


def _state_url() -> str | None:
    """The store's URL from the ``bulk_update_store`` connection (a Postgres connection: host,
    port, login, password, schema = the database; its extra may hold libpq parameters such as
    ``sslmode``), else None. It holds a password: handed to JobConfig, whose repr hides it."""
    from airflow.sdk import Connection

    try:
        connection = Connection.get(STORE_CONNECTION)
    except Exception:  # no such connection: $BULK_UPDATE_STATE_URL, else SQLite
        return None
    uri: str = connection.get_uri()
    return uri


def _api_key() -> str | None:
    """The key from the ``openai_default`` connection, else None (the environment is used)."""
    from airflow.sdk import Connection

    try:
        connection = Connection.get("openai_default")
    except Exception:  # no such connection: fall back to OPENAI_API_KEY
        return None
    extra = connection.extra_dejson or {}
    key = connection.password or extra.get("api_key")
    return str(key) if key else None


@dag(
    dag_id="bulk_update_backfill",
    schedule=None,
    catchup=False,
    tags=["bulk-update"],
    params={
        "input": Param("exports/conversations-*.parquet", type="string"),
        "output_prefix": Param("out/backfill", type="string"),
        "shards": Param(4, type="integer", minimum=1),
        "rpm": Param(3000, type="integer", minimum=1),
        "concurrency": Param(32, type="integer", minimum=1),
        "base_url": Param("", type="string", description="empty: OPENAI_BASE_URL or the API"),
        "fail_on_row_errors": Param(True, type="boolean"),
        # Every shard shares the job's store (the bulk_update_store connection, else
        # <state_dir>/<job_name>.sqlite): a re-run sends only the rows changed since the job
        # last set them, unless "full".
        "job_name": Param("bulk_update_backfill", type="string"),
        "state_dir": Param("", type="string", description="empty: the output_prefix directory"),
        "full": Param(False, type="boolean"),
        # Each shard pushes its metrics here (grouped by job name and shard); a Pushgateway
        # that is down is a warning, never the task's failure.
        "pushgateway": Param(
            "", type="string", description="empty: $BULK_UPDATE_PUSHGATEWAY, else none"
        ),
    },
)
def bulk_update_backfill() -> None:
    @task
    def shard_numbers() -> list[int]:
        params = get_current_context()["params"]
        return list(range(int(params["shards"])))

    @task(retries=3, retry_delay=RETRY_DELAY)
    def run_shard(shard: int) -> dict[str, Any]:
        from bulk_update import RESUMABLE, BulkUpdateError, JobConfig, run_job

        params = get_current_context()["params"]
        count = int(params["shards"])
        options = {
            "input": params["input"],
            "output": f"{params['output_prefix']}/shard-{shard}-of-{count}.parquet",
            "errors_output": f"{params['output_prefix']}/errors-{shard}-of-{count}.csv",
            "shard": (shard, count),
            "job_name": params["job_name"],
            "state_dir": params["state_dir"] or params["output_prefix"],
            "full": bool(params["full"]),
            "rpm": int(params["rpm"]),
            "concurrency": int(params["concurrency"]),
            "base_url": params["base_url"] or os.environ.get("OPENAI_BASE_URL") or None,
            "api_key": _api_key(),
            "state_url": _state_url(),
            "pushgateway": params["pushgateway"]
            or os.environ.get("BULK_UPDATE_PUSHGATEWAY")
            or None,
        }
        try:
            summary = run_job(JobConfig.from_options(options, source="DAG params"))
        except BulkUpdateError as exc:
            if exc.exit_code in RESUMABLE:
                raise  # an ordinary failure: Airflow retries it, and the retry resumes
            # Exit 2 (a missing input, a bad option, another run holding the shard): no retry
            # can mend it. Fail the task at once.
            raise AirflowFailException(
                f"shard {shard}/{count}: {exc} (exit {exc.exit_code})"
            ) from None
        result = summary.as_dict()
        result["shard"] = shard
        if summary.exit_code in RESUMABLE:
            # Fail the try so that Airflow retries it; the retry resumes the run.
            reason = summary.fatal_error or summary.stopped_by
            raise RuntimeError(
                f"shard {shard}/{count} stopped (exit {summary.exit_code}): {reason}; "
                "a retry resumes"
            )
        return result

    @task
    def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
        params = get_current_context()["params"]
        totals: dict[str, int] = {}
        for summary in summaries:
            for status, count in summary["counts"].items():
                totals[status] = totals.get(status, 0) + count
        worst = max(summary["exit_code"] for summary in summaries)
        combined = {"shards": len(summaries), "counts": totals, "worst_exit_code": worst,
                    "rows": sum(s["total_rows"] for s in summaries)}  # fmt: skip
        failed = [s["shard"] for s in summaries if s["exit_code"] != 0]
        if failed and (worst != 1 or params["fail_on_row_errors"]):
            raise RuntimeError(f"shards {failed} did not finish cleanly: {combined}")
        return combined

    combine(run_shard.expand(shard=shard_numbers()))


bulk_update_backfill()
