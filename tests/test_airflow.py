"""The Airflow DAG in jobs/: it imports cleanly, and `airflow dags test` runs it for real
(SQLite metadata DB, AIRFLOW_HOME in a temp dir) against the emulator."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import StartEmulator
from tests.helpers import ID, wait_for_requests
from tests.monitoring import Pushgateway, samples, total, value
from tests.pg import PASSWORD, USER, PostgresServer

airflow = pytest.importorskip("airflow", reason="the airflow extra is not installed")

ROOT = Path(__file__).parent.parent
CONNECTION_KEY = "sk-from-the-airflow-connection"


def airflow_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "jobs"),
        AIRFLOW_CONN_OPENAI_DEFAULT=json.dumps(
            {"conn_type": "generic", "password": CONNECTION_KEY}
        ),
    )
    return env


def test_dag_imports_cleanly(tmp_path: Path) -> None:
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'jobs')!r})\n"
        "assert bag.import_errors == {}, bag.import_errors\n"
        "assert 'bulk_update_backfill' in bag.dag_ids, bag.dag_ids\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=airflow_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_dags_test_covers_every_row_once(start_emulator: StartEmulator, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text(
        "conversation_id,a\n" + "".join(f"{ID(i)},v{i}\n" for i in range(60)) + "bad id,x\n"
    )
    emu = start_emulator("--api-key", CONNECTION_KEY, "--preload", str(source))
    env = airflow_env(tmp_path / "home")
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run([airflow_bin, "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    out = tmp_path / "out"
    with Pushgateway() as gateway:
        conf = {"input": str(source), "output_prefix": str(out), "shards": 3,
                "base_url": emu.base_url, "fail_on_row_errors": False,
                "pushgateway": gateway.url}  # fmt: skip
        run = subprocess.run([airflow_bin, "dags", "test", "bulk_update_backfill", "-c",
                              json.dumps(conf)], env=env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
        pushed = samples(gateway.scrape())
    del conf["pushgateway"]
    logs = run.stdout + run.stderr
    assert run.returncode == 0, logs[-4000:]
    assert "state=success" in logs
    shards = pl.concat([pl.read_parquet(out / f"shard-{k}-of-3.parquet") for k in range(3)])
    assert sorted(shards["row_number"].to_list()) == list(range(1, 62))  # each row exactly once
    assert shards["status"].value_counts().sort("status").rows() == [
        ("invalid", 1),
        ("updated", 60),
    ]
    # The connection's key was used: 60 updates and each shard's preflight GET, all 200.
    assert emu.stats()["by_status"] == {"200": 63}
    assert emu.stats()["by_operation"] == {"update": 60, "retrieve": 3}
    assert CONNECTION_KEY not in logs
    # Each shard pushed its metrics, grouped by job name and shard.
    for k in range(3):
        mine = pl.read_parquet(out / f"shard-{k}-of-3.parquet")["status"].value_counts()
        for status, n in mine.iter_rows():
            assert value(pushed, "bulk_update_rows", job="bulk_update_backfill",
                         shard=f"{k}/3", status=status) == n  # fmt: skip
    assert total(pushed, "bulk_update_requests_total", job="bulk_update_backfill") == 63
    # Run again with row errors failing the run: every shard resumes finished, sends nothing.
    conf["fail_on_row_errors"] = True
    again = subprocess.run([airflow_bin, "dags", "test", "bulk_update_backfill", "-c", json.dumps(conf)],
                           env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "state=failed" in again.stdout + again.stderr
    assert "did not finish cleanly" in again.stdout + again.stderr
    assert emu.stats()["by_status"] == {"200": 63}  # nothing sent, no preflight either
    # The next night: new results, the shards' shared state: nothing changed, nothing sent.
    conf.update(output_prefix=str(tmp_path / "night-2"), state_dir=str(out))
    night = subprocess.run([airflow_bin, "dags", "test", "bulk_update_backfill", "-c", json.dumps(conf)],
                           env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "state=failed" in night.stdout + night.stderr  # the invalid row, as before
    assert emu.stats()["by_status"] == {"200": 63}  # nothing sent, no preflight either
    statuses = pl.concat(
        [pl.read_parquet(tmp_path / f"night-2/shard-{k}-of-3.parquet") for k in range(3)]
    )["status"]
    assert statuses.value_counts().sort("status").rows() == [("invalid", 1), ("unchanged", 60)]


def test_sigterm_stops_the_task_and_its_retry_resumes(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    import signal

    source = tmp_path / "in.csv"
    source.write_text("conversation_id,a\n" + "".join(f"{ID(i)},v\n" for i in range(120)))
    emu = start_emulator(
        "--api-key", CONNECTION_KEY, "--preload", str(source), "--latency-ms", "200"
    )
    env = {**airflow_env(tmp_path / "home"), "BULK_UPDATE_RETRY_DELAY_S": "1"}
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow_bin, "db", "migrate"], env=env, capture_output=True, timeout=300)
    out = tmp_path / "out"
    conf = {"input": str(source), "output_prefix": str(out), "shards": 1,
            "base_url": emu.base_url, "concurrency": 4, "rpm": 100000}  # fmt: skip
    process = subprocess.Popen(
        [airflow_bin, "dags", "test", "bulk_update_backfill", "-c", json.dumps(conf)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_requests(emu, 12)
    process.send_signal(signal.SIGTERM)  # as a worker shutting down would
    logs, _ = process.communicate(timeout=300)
    assert process.returncode == 0, logs[-4000:]
    assert "SIGTERM: finishing in-flight requests" in logs
    assert "stopped (exit 143)" in logs
    assert "up_for_retry" in logs
    assert "state=success" in logs
    results = pl.read_parquet(out / "shard-0-of-1.parquet")
    assert results["status"].to_list() == ["updated"] * 120
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert len(applied) == 120
    assert max(applied.values()) == 1  # drained, journaled, resumed: nothing sent twice


def test_a_usage_error_fails_the_task_at_once(tmp_path: Path) -> None:
    """A missing input (exit 2) can never succeed: the task fails on its first try, without
    the retries that a resumable stop gets."""
    env = {**airflow_env(tmp_path / "home"), "BULK_UPDATE_RETRY_DELAY_S": "1"}
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow_bin, "db", "migrate"], env=env, capture_output=True, timeout=300)
    missing = tmp_path / "no-such-export.csv"
    conf = {"input": str(missing), "output_prefix": str(tmp_path / "out"), "shards": 2,
            "base_url": "http://127.0.0.1:9/v1"}  # fmt: skip
    run = subprocess.run([airflow_bin, "dags", "test", "bulk_update_backfill", "-c", json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    logs = run.stdout + run.stderr
    assert "state=failed" in logs, logs[-4000:]
    assert f"{missing}: no such file (exit 2)" in logs
    assert "AirflowFailException" in logs
    assert "up_for_retry" not in logs.lower()


def test_the_shards_take_their_store_from_the_airflow_connection(
    start_emulator: StartEmulator, postgres: PostgresServer, tmp_path: Path
) -> None:
    """With the Postgres connection ``bulk_update_store``, every shard's runs, outcomes and
    state are in that database: nothing durable on the worker's disk, no password shown."""
    source = tmp_path / "in.csv"
    source.write_text("conversation_id,a\n" + "".join(f"{ID(i)},v{i}\n" for i in range(40)))
    emu = start_emulator("--api-key", CONNECTION_KEY, "--preload", str(source))
    postgres.create_database("airflow_store")
    connection = {"conn_type": "postgres", "host": "127.0.0.1", "port": postgres.port,
                  "login": USER, "password": PASSWORD, "schema": "airflow_store"}  # fmt: skip
    env = {
        **airflow_env(tmp_path / "home"),
        "AIRFLOW_CONN_BULK_UPDATE_STORE": json.dumps(connection),
    }
    airflow_bin = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow_bin, "db", "migrate"], env=env, capture_output=True, timeout=300)
    out = tmp_path / "out"
    conf = {"input": str(source), "output_prefix": str(out), "shards": 2,
            "base_url": emu.base_url, "job_name": "nightly"}  # fmt: skip
    run = subprocess.run([airflow_bin, "dags", "test", "bulk_update_backfill", "-c", json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    logs = run.stdout + run.stderr
    assert run.returncode == 0, logs[-4000:]
    assert "state=success" in logs
    assert "S3cret" not in logs
    # Each shard's XCom names the store without its password.
    with closing(sqlite3.connect(tmp_path / "home" / "airflow.db")) as db:
        xcoms = [
            str(v) for (v,) in db.execute("SELECT value FROM xcom WHERE task_id = 'run_shard'")
        ]
    summaries = [json.loads(x) for x in xcoms if x.startswith('{"counts"')]
    assert [s["store"] for s in summaries] == [
        f"postgres://{USER}@127.0.0.1:{postgres.port}/airflow_store"
    ] * 2
    assert not any("S3cret" in xcom for xcom in xcoms)
    runs = postgres.query("airflow_store", "SELECT shard, exit_code FROM bulk_update.runs")
    assert sorted(runs) == [("0/2", 0), ("1/2", 0)]
    assert postgres.query("airflow_store", "SELECT count(*) FROM bulk_update.last_set") == [(40,)]
    assert list(out.glob("*.sqlite*")) == []
    assert sorted(p.name for p in out.iterdir()) == [
        "errors-0-of-2.csv", "errors-1-of-2.csv", "shard-0-of-2.parquet", "shard-1-of-2.parquet"
    ]  # fmt: skip
