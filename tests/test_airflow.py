"""bulk_update in Airflow, for real: ``BulkUpdateOperator`` run by ``airflow dags test``
(Airflow 3.3, SQLite metadata DB, AIRFLOW_HOME in a temp dir) against the emulator, the
provider entry point seen by ``airflow providers list``, the DAGs in jobs/ parsed and run."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import bulk_update
from bulk_update.emulator.process import EmulatorProcess
from tests.conftest import StartEmulator
from tests.helpers import ID, made_once, wait_for_requests
from tests.monitoring import free_port
from tests.pg import PASSWORD, USER, PostgresServer

# Found, not imported: importing Airflow in each pytest worker costs seconds of CPU at collection,
# and only the subprocesses this module starts use it.
if importlib.util.find_spec("airflow") is None:
    pytest.skip("the airflow extra is not installed", allow_module_level=True)

ROOT = Path(__file__).parent.parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
KEY = "sk-from-the-airflow-connection"


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Airflow metadata DB made once for the whole run (``airflow db migrate``, seconds of
    CPU), whichever pytest workers run these tests; each test copies it."""

    def migrate(home: Path) -> None:
        done = subprocess.run([AIRFLOW, "db", "migrate"], env=airflow_env(home),
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]

    return made_once(tmp_path_factory, "airflow-template", migrate) / "airflow.db"


def airflow_env(home: Path, dags: Path = ROOT / "jobs", **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AIRFLOW"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        **extra,
    )
    return env


def connection(**fields: Any) -> str:
    """A connection as AIRFLOW_CONN_* takes it (JSON)."""
    return json.dumps(fields)


class Airflow:
    """One AIRFLOW_HOME: its metadata DB (a copy of the migrated one) and the commands."""

    def __init__(self, home: Path, migrated: Path, env: dict[str, str]) -> None:
        home.mkdir(parents=True, exist_ok=True)
        shutil.copy(migrated, home / "airflow.db")
        self.home, self.env = home, env

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip

    def dags_test(self, dag: str, conf: dict[str, Any] | None = None, *more: str) -> str:
        """``airflow dags test``: its whole output."""
        args = ["dags", "test", dag, *more]
        if conf is not None:
            args += ["-c", json.dumps(conf)]
        done = self.run(*args)
        return done.stdout + done.stderr

    def query(self, sql: str, *arguments: object) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.home / "airflow.db")) as db:
            return db.execute(sql, arguments).fetchall()

    def task_states(self, dag: str) -> dict[str, tuple[str, int]]:
        """Each task's (state, try_number) in the DAG's one run."""
        rows = self.query(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ?", dag
        )
        return {task: (state, tries) for task, state, tries in rows}

    def xcoms(self, dag: str, task: str) -> list[Any]:
        rows = self.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value' "
            "ORDER BY map_index", dag, task,
        )  # fmt: skip
        return [json.loads(value) for (value,) in rows]

    def asset_events(self, uri: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.uri = ? ORDER BY e.id", uri,
        )  # fmt: skip
        return [json.loads(extra) for (extra,) in rows]


def rows_csv(path: Path, count: int, *, invalid: int = 0) -> Path:
    path.write_text(
        "conversation_id,a\n"
        + "".join(f"{ID(i)},v{i}\n" for i in range(count))
        + "".join(f"bad id {i},x\n" for i in range(invalid))
    )
    return path


# What a job needs and a process that only parses DAGs or lists providers must not load.
HEAVY = ("polars", "pyarrow", "httpx2", "aiohttp", "numpy")


def test_the_entry_point_and_a_dag_file_load_nothing_heavy() -> None:
    """In a fresh interpreter: ``import bulk_update`` and the provider entry point import no
    Airflow (Airflow imports the entry point while it starts); they, the operator and a DAG
    file's work (operators made, mapped over shards) load none of polars, pyarrow, httpx2,
    aiohttp: the dag-processor parses every DAG file again and again. The job loads them when
    it runs (``run_job``: asked for last, and seen to)."""
    code = (
        "import sys\n"
        f"heavy = {HEAVY!r}\n"
        "def loaded(): return [m for m in heavy if m in sys.modules]\n"
        "import bulk_update, bulk_update.airflow.provider\n"
        "bulk_update.__version__, bulk_update.ConfigError, bulk_update.Status\n"
        "bulk_update.airflow.provider.get_provider_info()\n"
        "assert loaded() == [], ('the entry point', loaded())\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'airflow'], 'Airflow'\n"
        "from bulk_update.airflow import BulkUpdateOperator, shards\n"
        "assert 'airflow.sdk' in sys.modules\n"
        "from airflow.sdk import DAG\n"
        "with DAG('parsed', schedule=None):\n"
        "    BulkUpdateOperator(task_id='one', input='s3://b/in.csv', results='/tmp/r.parquet')\n"
        "    BulkUpdateOperator.partial(task_id='many', input='in.csv',\n"
        "        results='out/{{ ti.map_index }}.parquet').expand(shard=shards(4))\n"
        "assert loaded() == [], ('a DAG file', loaded())\n"
        "from bulk_update import run_job\n"
        "assert {'polars', 'httpx2'} <= set(loaded()), loaded()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


# ``airflow ARGS`` as the console script runs it, saying at exit which modules of ours it
# loaded and which of HEAVY.
PROBE = (
    f"HEAVY = {HEAVY!r}"
    + """
import atexit, json, os, sys
def said():
    loaded = {m for m in sys.modules if m.split('.')[0] == 'bulk_update'}
    report = {"ours": sorted(loaded), "heavy": [m for m in HEAVY if m in sys.modules]}
    os.write(2, ("PROBE " + json.dumps(report) + "\\n").encode())
atexit.register(said)
sys.argv = ["airflow", *sys.argv[1:]]
from airflow.__main__ import main
sys.exit(main())
"""
)


def test_airflows_own_processes_load_nothing_heavy_of_ours(migrated: Path, tmp_path: Path) -> None:
    """Real Airflow commands on a DAG file that imports the operator: listing the providers
    (the package among them, its version and operator) and the DAGs (the file's among them)
    loads the entry point only; parsing the file (``dags reserialize``, what the dag-processor
    does to each file) and listing its tasks load the operator, and none of polars, pyarrow,
    httpx2, aiohttp. (One Airflow process per command, each a few seconds of CPU: what each
    says is checked on the same run.)"""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "users_dag.py").write_text(
        "from airflow.sdk import DAG\n"
        "from bulk_update.airflow import BulkUpdateOperator, shards\n"
        "with DAG('users_dag', schedule=None):\n"
        "    BulkUpdateOperator.partial(task_id='backfill', input='/data/in.csv',\n"
        "        results='/data/out/{{ ti.map_index }}.parquet').expand(shard=shards(4))\n"
    )
    af = Airflow(tmp_path / "home", migrated, airflow_env(tmp_path / "home", dags=dags))
    entry = ["bulk_update", "bulk_update._lazy", "bulk_update._version", "bulk_update.airflow",
             "bulk_update.airflow.provider"]  # fmt: skip
    said: dict[str, str] = {}  # each command's output
    for command, operator in [
        (["providers", "list", "-o", "json"], False),
        (["dags", "reserialize"], True),
        (["dags", "list", "-o", "plain"], False),
        (["tasks", "list", "users_dag"], True),
    ]:
        done = subprocess.run([sys.executable, "-c", PROBE, *command], env=af.env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, (command, done.stderr[-3000:])
        (line,) = [x for x in done.stderr.splitlines() if x.startswith("PROBE ")]
        probe = json.loads(line.removeprefix("PROBE "))
        assert probe["heavy"] == [], (command, probe)
        if operator:  # the file was parsed
            assert "bulk_update.airflow.operator" in probe["ours"], (command, probe)
        else:
            assert probe["ours"] == entry, (command, probe)
        said[" ".join(command[:2])] = done.stdout
    assert "users_dag" in said["dags list"]
    providers = said["providers list"]
    listed = json.loads(providers[providers.index("[") :])
    mine = [p for p in listed if p["package_name"] == "bulk-update"]
    assert len(mine) == 1, listed
    assert mine[0]["version"] == bulk_update.__version__
    assert "BulkUpdateOperator" in mine[0]["description"]


def test_the_docs_map_each_parameter_to_a_real_airflow_neighbour() -> None:
    """docs/airflow.md's table of neighbours: each name in its first column is a parameter of
    the operator, each in its second one of BaseOperator's parameters or attributes (or the
    a mapped one's ``expand``, the task instance's ``map_index``), and the pairs the issue asked for are there."""
    import inspect

    from airflow.sdk import BaseOperator
    from airflow.sdk.definitions.mappedoperator import OperatorPartial
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    from bulk_update.airflow import BulkUpdateOperator

    page = (ROOT / "docs" / "airflow.md").read_text()
    table = page[page.index("| the operator's | Airflow's |") :].split("\n\n")[0]
    rows = [line.split(" | ")[:2] for line in table.splitlines()[2:]]
    ours = set(inspect.signature(BulkUpdateOperator).parameters)
    airflows = set(inspect.signature(BaseOperator.__init__).parameters)
    pairs = set()
    for mine, theirs in rows:
        (name,) = re.findall(r"`(\w+)`", mine)
        assert name in ours, name
        for neighbour in re.findall(r"`(\w+)(?:\(\))?`", theirs):
            assert (
                neighbour in airflows
                or hasattr(BaseOperator, neighbour)
                or hasattr(OperatorPartial, neighbour)  # .partial(...).expand(...)
                or neighbour in RuntimeTaskInstance.model_fields
            ), neighbour
            pairs.add((name, neighbour))
    wanted = {("timeout", "execution_timeout"), ("max_attempts", "retries"), ("rpm", "pool"),
              ("concurrency", "max_active_tis_per_dag")}  # fmt: skip
    assert wanted <= pairs, pairs


def test_the_dags_parse_with_their_assets(migrated: Path, tmp_path: Path) -> None:
    """The DAGs in jobs/ import cleanly; each operator has its results' asset as an outlet,
    the mapped one too (its outlets are read at parse time, before any __init__)."""
    code = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'jobs')!r})\n"
        "assert bag.import_errors == {}, bag.import_errors\n"
        "print(json.dumps({dag_id: {t.task_id: [o.uri for o in t.outlets] for t in dag.tasks}"
        " for dag_id, dag in bag.dags.items()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=airflow_env(tmp_path / "home"),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outlets = json.loads(done.stdout.strip().splitlines()[-1])
    assert outlets == {
        "bulk_update_backfill": {
            "backfill": ["x-bulk-update://conversations_backfill"],
            "report": [],
        },
        "bulk_update_nightly": {"update_metadata": ["x-bulk-update://conversations_nightly"]},
        "bulk_update_nightly_report": {"report": []},
    }


@pytest.fixture
def store_connection(postgres: PostgresServer, request: pytest.FixtureRequest) -> str:
    database = "af_" + request.node.name.lower()[5:40]
    postgres.create_database(database)
    return connection(conn_type="postgres", host="127.0.0.1", port=postgres.port,
                      login=USER, password=PASSWORD, schema=database)  # fmt: skip


def test_the_mapped_backfill_on_a_postgres_store(
    start_emulator: StartEmulator,
    postgres: PostgresServer,
    store_connection: str,
    migrated: Path,
    tmp_path: Path,
) -> None:
    """jobs/airflow_backfill.py, 4 shards: every row once, the shards' runs in the PostgreSQL
    store, each result at its templated path, the summaries as XComs; no asset event (a shard
    failed: the job's run did not end); run again, nothing is sent (the shards' shared
    state)."""
    source = rows_csv(tmp_path / "in.csv", 80, invalid=1)
    emu = start_emulator("--api-key", KEY, "--preload", str(source))
    env = airflow_env(
        tmp_path / "home",
        AIRFLOW_CONN_OPENAI_DEFAULT=connection(conn_type="openai", password=KEY, host=emu.base_url),
        AIRFLOW_CONN_BULK_UPDATE_STORE=store_connection,
    )
    af = Airflow(tmp_path / "home", migrated, env)
    out = tmp_path / "out"
    logs = af.dags_test("bulk_update_backfill", {"input": str(source), "output_prefix": str(out)})
    # Rows invalid fail their shard (fail_on_row_errors): the one with the bad row.
    states = af.task_states("bulk_update_backfill")
    assert states["backfill"][0] in {"success", "failed"}, logs[-4000:]
    (run_id,) = [r for (r,) in af.query("SELECT run_id FROM dag_run")]
    results = sorted((out / run_id).glob("shard-*.parquet"))  # {{ run_id }}, {{ ti.map_index }}
    assert [p.name for p in results] == [f"shard-{k}.parquet" for k in range(4)], logs[-4000:]
    table = pl.concat([pl.read_parquet(p) for p in results])
    assert sorted(table["row_number"].to_list()) == list(range(1, 82))  # every row, once
    assert table["status"].value_counts().sort("status").rows() == [("invalid", 1),
                                                                    ("updated", 80)]  # fmt: skip
    assert emu.stats()["by_operation"] == {"update": 80, "retrieve": 4}  # + each preflight
    ended = af.query(
        "SELECT map_index, state, try_number FROM task_instance WHERE task_id = 'backfill'"
    )
    bad_shard = next(
        k for k, p in enumerate(results) if "invalid" in pl.read_parquet(p)["status"].to_list()
    )
    assert sorted(ended) == [
        (k, "failed" if k == bad_shard else "success", 1) for k in range(4)
    ]  # the shard with an invalid row: failed for good, not retried
    assert "AirflowFailException" in logs
    assert (
        f"bulk-update job conversations_backfill, shard {bad_shard}/4 finished with 1 invalid of "
        in logs
    )
    runs = postgres.query(store_database(store_connection),
                          "SELECT job, shard, exit_code FROM bulk_update.runs ORDER BY shard")  # fmt: skip
    assert runs == [("conversations_backfill", f"{k}/4", 1 if k == bad_shard else 0)
                    for k in range(4)]  # fmt: skip
    # The XComs: each successful shard's summary (the store named without its password).
    summaries = af.xcoms("bulk_update_backfill", "backfill")
    assert len(summaries) == 3
    assert {s["shard"] for s in summaries} == {f"{k}/4" for k in range(4) if k != bad_shard}
    assert {s["store"] for s in summaries} == {
        f"postgresql://{USER}@127.0.0.1:{postgres.port}/{store_database(store_connection)}"
    }
    # No asset event: the job's run ends with its last shard, and one of them failed.
    assert af.asset_events("x-bulk-update://conversations_backfill") == []
    assert f"the job's asset event waits for shard {bad_shard}/4 (the shard" in logs
    for secret in (KEY, PASSWORD, "S3cret"):
        assert secret not in logs
        assert secret not in json.dumps(summaries)
    # Again (a new DAG run, new results): the shards' shared state, nothing sent.
    again = af.dags_test("bulk_update_backfill", {"input": str(source), "output_prefix": str(out)},
                         "--logical-date", "2026-11-30T00:00:00+00:00")  # fmt: skip
    assert emu.stats()["by_operation"] == {"update": 80, "retrieve": 4}, again[-3000:]


def store_database(store_connection: str) -> str:
    return str(json.loads(store_connection)["schema"])


def cases(tmp_path: Path, migrated: Path, **connections: str) -> Airflow:
    """An Airflow running tests/airflow_dags, its files in ``tmp_path``."""
    env = airflow_env(
        tmp_path / "home",
        dags=ROOT / "tests" / "airflow_dags",
        BULK_UPDATE_TEST_DIR=str(tmp_path),
        **{f"AIRFLOW_CONN_{name.upper()}": value for name, value in connections.items()},
    )
    return Airflow(tmp_path / "home", migrated, env)


def behind_a_slow_api(
    start_emulator: StartEmulator, migrated: Path, tmp_path: Path, rows: int
) -> tuple[Path, EmulatorProcess, Airflow]:
    """``rows`` rows in in.csv, the emulator holding them and answering in 200 ms, and the
    test DAGs' Airflow with it as ``openai_default``."""
    source = rows_csv(tmp_path / "in.csv", rows)
    emu = start_emulator("--api-key", KEY, "--preload", str(source), "--latency-ms", "200")
    af = cases(
        tmp_path, migrated,
        openai_default=connection(conn_type="openai", password=KEY, host=emu.base_url),
    )  # fmt: skip
    return source, emu, af


def test_the_openai_connection_read_as_the_provider_reads_it(
    start_emulator: StartEmulator, migrated: Path, tmp_path: Path
) -> None:
    """The key in the password and the base URL as the host; the key, base URL, organization
    and project in ``openai_client_kwargs`` (which win over the password and the host); a
    connection made with ``airflow connections add`` as the README shows; no connection: the
    worker's environment."""
    source = rows_csv(tmp_path / "in.csv", 10)
    emu = start_emulator("--api-key", KEY, "--preload", str(source))
    kwargs = {"api_key": KEY, "base_url": emu.base_url, "organization": "org-a",
              "project": "proj-b", "timeout": 10}  # fmt: skip
    af = cases(
        tmp_path, migrated,
        key_in_password=connection(conn_type="openai", password=KEY, host=emu.base_url),
        key_in_client_kwargs=connection(
            conn_type="openai", password="sk-not-this-one", host="https://wrong.invalid/v1",
            extra={"openai_client_kwargs": kwargs},
        ),
    )  # fmt: skip
    af.env.update(OPENAI_API_KEY=KEY, OPENAI_BASE_URL=emu.base_url)  # for from_the_environment
    added = af.run("connections", "add", "added_with_the_cli", "--conn-type", "openai",
                   "--conn-extra", json.dumps({"openai_client_kwargs": {"api_key": KEY,
                                                                        "base_url": emu.base_url}}))  # fmt: skip
    assert added.returncode == 0, added.stderr[-3000:]
    logs = af.dags_test("bulk_update_connections")
    assert af.task_states("bulk_update_connections") == dict.fromkeys(("key_in_password", "key_in_client_kwargs", "added_with_the_cli", "from_the_environment"), ("success", 1)), logs[-5000:]  # fmt: skip
    for task in ("key_in_password", "key_in_client_kwargs", "added_with_the_cli"):
        statuses = pl.read_parquet(tmp_path / "out" / f"{task}.parquet")["status"]
        assert statuses.to_list() == ["updated"] * 10
    # Every request with the one key; the organization and project of the client kwargs.
    stats = emu.stats()
    assert stats["by_status"] == {"200": 44}  # 4 tasks: 10 updates and a preflight each
    assert stats["by_scope"] == {"org-a/proj-b": 11, "-/-": 33}
    assert "openai_client_kwargs timeout configure the SDK's client" in logs
    assert KEY not in logs
    # No job_name: each task's job is DAG_ID.TASK_ID, its store named so.
    assert sorted(p.name for p in (tmp_path / "state").glob("*.sqlite")) == [
        f"bulk_update_connections.{task}.sqlite"
        for task in ("added_with_the_cli", "from_the_environment", "key_in_client_kwargs",
                     "key_in_password")
    ]  # fmt: skip


def test_each_ending_is_airflows(
    start_emulator: StartEmulator, migrated: Path, tmp_path: Path
) -> None:
    """Exit 2 (a missing input, an auth_type the job cannot use) fails at once, without the
    retries the task has; rows invalid fail the task for good, or not with
    fail_on_row_errors=False, which succeeds and logs the counts; a key the API refuses (exit
    3: the API said stop) and an API that cannot be reached (exit 2, but it may pass) fail each
    try, and are retried (2 retries); a store connection that is not Postgres fails at once."""
    rows_csv(tmp_path / "in.csv", 5)
    rows_csv(tmp_path / "with-invalid.csv", 5, invalid=2)
    emu = start_emulator("--api-key", KEY, "--preload", str(tmp_path / "with-invalid.csv"))
    af = cases(
        tmp_path, migrated,
        openai_default=connection(conn_type="openai", password=KEY, host=emu.base_url),
        workload_identity=connection(
            conn_type="openai", host=emu.base_url,
            extra={"auth_type": "workload_identity", "identity_provider_id": "idp-1",
                   "service_account_id": "sa-1", "workload_identity_provider": "kubernetes"},
        ),
        key_refused=connection(conn_type="openai", password="sk-revoked", host=emu.base_url),
        api_unreachable=connection(conn_type="openai", password=KEY,
                                   host="http://127.0.0.1:9/v1"),
        store_not_postgres=connection(conn_type="generic", host="db.internal",
                                      password="pg-S3cret"),
    )  # fmt: skip
    logs = af.dags_test("bulk_update_endings")
    states = af.task_states("bulk_update_endings")
    assert states == {
        "missing_input": ("failed", 1),
        "workload_identity": ("failed", 1),
        "rows_invalid_fail": ("failed", 1),
        "rows_invalid_pass": ("success", 1),
        "key_refused": ("failed", 3),
        "api_unreachable": ("failed", 3),
        "store_not_postgres": ("failed", 1),
    }, logs[-5000:]
    assert f"{tmp_path}/no-such-export.csv: no such file (exit 2)" in logs
    assert "auth_type 'workload_identity' is not supported" in logs
    assert (
        "bulk-update job bulk_update_endings.rows_invalid_fail finished with 2 invalid of 7 rows: "
        "see"
    ) in logs
    assert "2 invalid of 7 rows" in logs
    assert "(fail_on_row_errors=False)" in logs
    # Each try says what comes next, and only what will: the retry while one is due, then a
    # clear only (after the last try, no retry will come).
    refused = (
        "bulk-update job bulk_update_endings.key_refused stopped (exit 3): preflight: HTTP 401 "
        "invalid_api_key: Incorrect API key provided; "
    )
    for after in ("the retry (try 2 of 3) resumes the run",
                  "the retry (try 3 of 3) resumes the run",
                  "no retry left: a clear of the task resumes the run"):  # fmt: skip
        assert refused + after in logs, logs[-5000:]
    # An API that cannot be reached may come back: retried (exit 2 for the CLI, nothing sent),
    # and nothing had started: nothing resumes, the next try tries again.
    unreachable = re.findall(
        r"bulk-update job bulk_update_endings\.api_unreachable failed: cannot reach "
        r"http://127\.0\.0\.1:9/v1: [^\n]*\(exit 2\); ([^\n]*?)(?:\x1b|\n|$)",
        logs,
    )
    assert unreachable[:3] == [
        "nothing was sent; the retry (try 2 of 3) tries again",
        "nothing was sent; the retry (try 3 of 3) tries again",
        "nothing was sent; no retry left: a clear of the task tries again",
    ], unreachable
    assert "the task run again" not in logs
    assert "the run:" not in logs  # the task's messages name the job, never "the run"
    assert (
        "task store_not_postgres: store_conn_id 'store_not_postgres': its conn_type is "
        "'generic'; the store needs a Postgres connection (conn_type postgres) (exit 2)"
    ) in logs
    assert "pg-S3cret" not in logs
    (summary,) = af.xcoms("bulk_update_endings", "rows_invalid_pass")
    assert summary["counts"] == {"updated": 5, "invalid": 2}
    assert summary["exit_code"] == 1
    assert summary["output"] == f"{tmp_path}/out/rows_invalid_pass.parquet"
    # Only the two tasks that ran sent: 5 updates and a preflight each; the refused key's 3
    # tries, a preflight each (the key is refused before any update).
    assert emu.stats()["by_operation"] == {"update": 10, "retrieve": 5}


@pytest.mark.parametrize(
    ("started", "retry", "killed", "expected"),
    [
        (True, "try 2 of 3", False, "the retry (try 2 of 3) resumes the run"),
        (True, None, False, "no retry left: a clear of the task resumes the run"),
        (False, "try 2 of 3", False, "nothing was sent; the retry (try 2 of 3) tries again"),
        (False, None, False, "nothing was sent; no retry left: a clear of the task tries again"),
        # on_kill: marked failed (no retry comes), cleared or a worker's SIGTERM (one may)
        (True, "try 2 of 2", True, "a clear of the task resumes the run (so does the retry, "
                                   "try 2 of 2, unless the task was marked failed)"),
        (True, None, True, "a clear of the task resumes the run"),
    ],
)  # fmt: skip
def test_what_a_failed_try_says_comes_next(
    started: bool, retry: str | None, killed: bool, expected: str
) -> None:
    """Only what will come: no retry promised without one due, nor after a kill that may be
    a mark-failed; nothing to resume where nothing had started."""
    from bulk_update.airflow.operator import _retry_due, what_next

    assert what_next(started=started, retry=retry, killed=killed) == expected

    class TaskInstance:
        def __init__(self, try_number: int, max_tries: int) -> None:
            self.try_number, self.max_tries = try_number, max_tries

    due = [_retry_due({"ti": TaskInstance(n, 2)}) for n in (1, 2, 3)]  # type: ignore[typeddict-item]
    assert due == ["try 2 of 3", "try 3 of 3", None]


def test_a_killed_task_stops_on_kill_and_its_retry_resumes(
    start_emulator: StartEmulator, migrated: Path, tmp_path: Path
) -> None:
    """SIGTERM to the task (Airflow calls on_kill): the run drains and writes its results, the
    try fails (exit 143), the retry resumes: every row updated, none twice."""
    source, emu, af = behind_a_slow_api(start_emulator, migrated, tmp_path, 120)
    process = subprocess.Popen(
        [AIRFLOW, "dags", "test", "bulk_update_killed"], env=af.env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_requests(emu, 12)
    process.send_signal(signal.SIGTERM)  # as the supervisor does to a task it kills
    logs, _ = process.communicate(timeout=300)
    assert "on_kill: stopping the run" in logs, logs[-5000:]
    # on_kill cannot tell a mark-failed (no retry comes) from a clear or a worker's SIGTERM.
    after = (
        "a clear of the task resumes the run (so does the retry, try 2 of 2, unless the task "
        "was marked failed)"
    )
    assert f"on_kill: stopping the run: finishing the requests in flight, writing the results; {after}" in logs  # fmt: skip
    assert f"bulk-update job bulk_update_killed.slow stopped (exit 143): SIGTERM; {after}" in logs
    assert af.task_states("bulk_update_killed") == {"slow": ("success", 2)}, logs[-5000:]
    assert "resuming:" in logs
    assert "HTTP Request" not in logs  # httpx2's line a request is kept out of the task's log
    assert (
        f"bulk-update job bulk_update_killed.slow: {source} -> {tmp_path}/out/slow.parquet; "
        f"store {tmp_path}/state/bulk_update_killed.slow.sqlite; rpm 100000, concurrency 4"
    ) in logs
    results = pl.read_parquet(tmp_path / "out" / "slow.parquet")
    assert results["status"].to_list() == ["updated"] * 120
    applied = emu.stats(per_id=True)["updates_applied_by_id"]
    assert len(applied) == 120
    assert max(applied.values()) == 1  # drained, journaled, resumed: nothing sent twice


def test_the_task_log_says_the_pace_and_which_bound_limits_it(
    start_emulator: StartEmulator, migrated: Path, tmp_path: Path
) -> None:
    """rpm 300 (5 requests/s), concurrency 8 at the emulator's 200 ms (40 a second; still
    more than 5 at eight times the latency, on a loaded machine): a progress line with the
    rate, the time left and the bound (100 rows, 20 s of sending: a line 10 or 20 s in has
    seen 5 s of it, however long the start took), the summary line and the XCom naming the
    rpm as the limit."""
    _, _, af = behind_a_slow_api(start_emulator, migrated, tmp_path, 100)
    logs = af.dags_test("bulk_update_paced")
    assert af.task_states("bulk_update_paced") == {"paced": ("success", 1)}, logs[-5000:]
    limit = (
        r"limited by rpm 300 \(5\.0 requests/s\); concurrency 8 at (\d+) ms would allow ([\d.]+)"
    )
    progress = re.search(
        r"progress \d+/100 \([\d.]+ rows/s, \d+m\d\ds left; " + limit + r"\)", logs
    )
    assert progress is not None, logs[-5000:]
    latency_ms, allows = int(progress[1]), float(progress[2])
    assert 200 <= latency_ms < 1600
    assert allows == pytest.approx(8000 / latency_ms, abs=0.5)
    assert re.search(r"bulk-update: 100 rows: updated=100; .*; exit 0; " + limit, logs), logs[
        -3000:
    ]
    (summary,) = af.xcoms("bulk_update_paced", "paced")
    assert re.fullmatch(limit, summary["limited_by"]), summary


def test_the_nightly_dag_renders_its_paths_and_schedules_its_report(
    start_emulator: StartEmulator, store_connection: str, migrated: Path, tmp_path: Path
) -> None:
    """jobs/airflow_nightly.py for one night: {{ ds }} in every path, the asset event with the
    counts, the report DAG queued on it; the next night sends only what changed."""
    exports = tmp_path / "exports"
    (exports / "2026-11-28").mkdir(parents=True)
    rows_csv(exports / "2026-11-28" / "in.csv", 30)
    pl.read_csv(exports / "2026-11-28" / "in.csv").write_parquet(
        exports / "2026-11-28" / "conversations.parquet"
    )
    emu = start_emulator("--api-key", KEY, "--preload", str(exports / "2026-11-28" / "in.csv"))
    env = airflow_env(
        tmp_path / "home",
        AIRFLOW_CONN_OPENAI_DEFAULT=connection(conn_type="openai", password=KEY, host=emu.base_url),
        AIRFLOW_CONN_BULK_UPDATE_STORE=store_connection,
    )
    af = Airflow(tmp_path / "home", migrated, env)
    assert af.run("dags", "reserialize").returncode == 0  # the report DAG is known,
    assert af.run("dags", "unpause", "bulk_update_nightly_report").returncode == 0  # and on
    logs = af.dags_test("bulk_update_nightly", {"exports": str(exports)}, "2026-11-28")
    assert af.task_states("bulk_update_nightly") == {"update_metadata": ("success", 1)}, logs[
        -5000:
    ]
    results = pl.read_parquet(exports / "results" / "2026-11-28.parquet")
    assert results["status"].to_list() == ["updated"] * 30
    (event,) = af.asset_events("x-bulk-update://conversations_nightly")
    assert event == {
        "job_name": "conversations_nightly", "shard": None, "dry_run": False,
        "counts": {"updated": 30},
        "total_rows": 30, "exit_code": 0,
        "results": f"{exports}/results/2026-11-28.parquet",
        "errors_output": f"{exports}/results/2026-11-28-errors.csv",
    }  # fmt: skip
    queued = af.query("SELECT target_dag_id FROM asset_dag_run_queue")
    assert queued == [("bulk_update_nightly_report",)]
    # The next night: the same conversations, 5 of them changed.
    (exports / "2026-11-29").mkdir()
    pl.read_parquet(exports / "2026-11-28" / "conversations.parquet").with_columns(
        a=pl.when(pl.int_range(pl.len()) < 5).then(pl.lit("new")).otherwise(pl.col("a"))
    ).write_parquet(exports / "2026-11-29" / "conversations.parquet")
    logs = af.dags_test("bulk_update_nightly", {"exports": str(exports)}, "2026-11-29")
    night = pl.read_parquet(exports / "results" / "2026-11-29.parquet")["status"]
    assert night.value_counts().sort("status").rows() == [("unchanged", 25), ("updated", 5)], logs[
        -4000:
    ]
    assert emu.stats()["by_operation"]["update"] == 35


def test_a_task_past_its_execution_timeout_drains_before_it_fails(
    start_emulator: StartEmulator, migrated: Path, tmp_path: Path
) -> None:
    """execution_timeout cuts the operator's wait: the job is stopped as SIGTERM stops it and
    waited for (drained, results written) before the task fails, so that no retry can start
    while it still sends."""
    _, emu, af = behind_a_slow_api(start_emulator, migrated, tmp_path, 200)
    logs = af.dags_test("bulk_update_timeout")
    assert af.task_states("bulk_update_timeout") == {"slow": ("failed", 1)}, logs[-5000:]
    stopped = logs.index("AirflowTaskTimeout: stopping the run (as SIGTERM)")
    summary = logs.index("; exit 143; stopped by SIGTERM", stopped)
    assert summary < logs.index("Task failed with exception", stopped)
    statuses = pl.read_parquet(tmp_path / "out" / "slow.parquet")["status"].value_counts()
    counts = dict(statuses.iter_rows())
    assert counts["updated"] + counts["unprocessed"] == 200
    assert 0 < counts["updated"] < 200
    requests = emu.stats()["requests"]
    assert requests == counts["updated"] + 1  # + the preflight: nothing sent after the end


def assets_env(tmp_path: Path, migrated: Path, emu: EmulatorProcess) -> Airflow:
    """An Airflow running tests/airflow_dags (bulk_update_assets.py: 4 mapped shards of
    ``sharded_job``, and ``bulk_update_after_shards`` scheduled on its asset)."""
    return cases(
        tmp_path, migrated,
        openai_default=connection(conn_type="openai", password=KEY, host=emu.base_url),
    )  # fmt: skip


def test_a_sharded_jobs_run_emits_one_asset_event_with_every_shards_counts(
    start_emulator: StartEmulator, migrated: Path, tmp_path: Path
) -> None:
    """``dags test`` of 4 mapped shards (one after another): the job's asset gets one event,
    from the last shard, with the counts and results of all four; the XComs keep each
    shard's. With ``asset_events="updated"``, a run that updated no row emits none."""
    source = rows_csv(tmp_path / "in.csv", 40)
    emu = start_emulator("--api-key", KEY, "--preload", str(source))
    af = assets_env(tmp_path, migrated, emu)
    logs = af.dags_test("bulk_update_sharded")
    summaries = af.xcoms("bulk_update_sharded", "shard")
    assert sorted(s["shard"] for s in summaries) == [f"{k}/4" for k in range(4)], logs[-5000:]
    (event,) = af.asset_events("x-bulk-update://sharded_job")
    (run_id,) = [r for (r,) in af.query("SELECT run_id FROM dag_run")]
    assert event == {
        "job_name": "sharded_job", "shards": 4, "dry_run": False, "counts": {"updated": 40},
        "total_rows": 40, "exit_code": 0, "errors_output": [None] * 4,
        "results": [f"{tmp_path}/out/{run_id}/shard-{k}.parquet" for k in range(4)],
    }  # fmt: skip
    assert sum(s["total_rows"] for s in summaries) == 40  # each shard's part, in its XCom
    assert logs.count("the job's asset event waits for shard") == 3
    assert "ends the job's run (4 shards): the job's asset event" in logs
    # Nothing changed since: every row unchanged, no event with asset_events="updated".
    logs = af.dags_test("bulk_update_sharded_updated_only")
    summaries = af.xcoms("bulk_update_sharded_updated_only", "shard")
    assert sum(s["counts"].get("unchanged", 0) for s in summaries) == 40, logs[-5000:]
    assert len(af.asset_events("x-bulk-update://sharded_job")) == 1
    assert "updated no row: no asset event (asset_events='updated')" in logs
    assert emu.stats()["by_operation"]["update"] == 40


class Deployment:
    """A real Airflow: its API server, scheduler and dag processor as separate processes
    (LocalExecutor, the SQLite metadata DB of ``af``), each in a process group of its own,
    all killed when the block ends, however it ends."""

    def __init__(self, af: Airflow, logs: Path) -> None:
        port = free_port()
        af.env.update(
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(port),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
            AIRFLOW__API_AUTH__JWT_SECRET="bulk-update-test-" + "x" * 32,
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="2",
            AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.5",
        )
        self.af, self.logs = af, logs
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> Deployment:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            for part in ("api-server", "scheduler", "dag-processor"):
                with open(self.logs / f"{part}.log", "wb") as log:
                    self.processes[part] = subprocess.Popen(
                        [AIRFLOW, part], env=self.af.env, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for process in self.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
            deadline = time.monotonic() + 15
            for process in self.processes.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(max(0.1, deadline - time.monotonic()))
        for process in self.processes.values():  # the groups too: the executor's task processes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def tail(self) -> str:
        """The end of each process's log, for an assertion's message."""
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
            for path in sorted(self.logs.glob("*.log"))
        )

    def wait_for(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        while not check():
            for part, process in self.processes.items():
                assert process.poll() is None, f"airflow {part} exited\n{self.tail()}"
            assert time.monotonic() < deadline, f"not within the time given: {what}\n{self.tail()}"
            time.sleep(0.5)


def test_under_a_real_scheduler_a_downstream_dag_runs_once_per_sharded_run(
    start_emulator: StartEmulator, migrated: Path, tmp_path: Path
) -> None:
    """Airflow's API server, scheduler and dag processor (LocalExecutor), started here: the
    producer (4 mapped shards, two at a time, the API answering in 100 ms, so that some end
    together and some seconds apart) triggered twice, one run after the other. The DAG
    scheduled on the job's asset runs exactly once per producer run, after its last shard
    ended, with the whole run's counts (the second run's: every row unchanged, still an event:
    ``asset_events`` is "always" by default)."""
    started = time.monotonic()
    deadline = started + 240  # a hard bound; ~40-60 s on 2 loaded cores
    source = rows_csv(tmp_path / "in.csv", 120)
    emu = start_emulator("--api-key", KEY, "--preload", str(source), "--latency-ms", "100")
    af = assets_env(tmp_path, migrated, emu)
    producer, consumer = "bulk_update_sharded", "bulk_update_after_shards"

    def runs(dag: str) -> list[tuple[str, str]]:
        return af.query("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id", dag)

    def ran(night: int) -> Callable[[], bool]:
        """The producer's ``night`` runs and the consumer's, all succeeded."""
        return lambda: all(
            [state for _, state in runs(dag)] == ["success"] * night for dag in (producer, consumer)
        )

    def both_parsed() -> bool:
        found = af.query("SELECT dag_id FROM dag WHERE dag_id IN (?, ?)", producer, consumer)
        return len(found) == 2

    with Deployment(af, tmp_path / "logs") as airflow:
        airflow.wait_for("the DAGs parsed", both_parsed, deadline)
        for night in (1, 2):
            done = af.run("dags", "trigger", producer, timeout=120)
            assert done.returncode == 0, done.stderr[-3000:]
            airflow.wait_for(f"producer run {night}, then the consumer's", ran(night), deadline)
        elapsed = time.monotonic() - started
        time.sleep(3)  # a late, extra consumer run would be queued by now
        assert len(runs(consumer)) == 2, airflow.tail()
    noted = [json.loads(line) for line in (tmp_path / "after.jsonl").read_text().splitlines()]
    assert len(noted) == 2
    for (run_id, _), note, counts in zip(
        runs(producer), noted, ({"updated": 120}, {"unchanged": 120}), strict=True
    ):
        (extra,) = note["extras"]  # one event triggered each consumer run
        assert extra["counts"] == counts
        assert (extra["shards"], extra["total_rows"]) == (4, 120)
        assert extra["results"] == [f"{tmp_path}/out/{run_id}/shard-{k}.parquet" for k in range(4)]
        (last_end,) = af.query(
            "SELECT max(end_date) FROM task_instance WHERE dag_id = ? AND run_id = ?",
            producer, run_id,
        )[0]  # fmt: skip
        assert note["at"] > datetime.fromisoformat(last_end).replace(tzinfo=UTC).timestamp()
    ends = af.query(
        "SELECT end_date FROM task_instance WHERE dag_id = ? AND task_id = 'shard' ORDER BY end_date",
        producer,
    )  # fmt: skip
    assert len(ends) == 8
    assert len(af.asset_events("x-bulk-update://sharded_job")) == 2
    assert emu.stats()["by_operation"]["update"] == 120
    print(f"two producer runs and their consumer's, under a real scheduler: {elapsed:.0f} s")
