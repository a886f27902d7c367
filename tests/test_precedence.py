"""A value given beats the environment, which beats the default: every option the environment
can give, through the real parser (a table), and every command that takes a store through the
real CLI, with $BULK_UPDATE_STATE_URL pointing at a real PostgreSQL database the flags do not
name (it must stay untouched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bulk_update.cli import _as_given, _job_options, build_parser
from bulk_update.config import JobConfig
from bulk_update.observe.history import job_location
from bulk_update.send import SendSettings
from tests.conftest import StartEmulator
from tests.helpers import cli, write_input
from tests.pg import PostgresServer
from tests.stores import Backend

# Where a variable that a flag overrides would send the job: nothing listens there.
DEAD_BASE_URL = "http://127.0.0.1:9/v1"


def has_store(server: PostgresServer, url: str) -> bool:
    """Whether the job ever used this database as its store (it creates its schema there)."""
    rows = server.query(
        url.rsplit("/", 1)[1],
        "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'bulk_update'",
    )
    return rows == [(1,)]


def test_a_store_given_on_the_command_line_beats_the_variable_in_every_command(
    start_emulator: StartEmulator, backend: Backend, postgres: PostgresServer, tmp_path: Path
) -> None:
    """Once `run --state-dir D` with $BULK_UPDATE_STATE_URL set used the PostgreSQL store (a new
    run: every row sent again) and `history --state-dir D` found nothing. The job file names
    yet another store: the flags beat it too."""
    decoy = postgres.create_database(f"decoy_{backend.name}")
    source = tmp_path / "in.csv"
    write_input(source, 30)
    emu = start_emulator("--preload", str(source))

    def command(*args: str) -> subprocess.CompletedProcess[str]:
        """The real CLI, in an environment that names the decoy store and a dead API."""
        return cli(*args, cwd=tmp_path, BULK_UPDATE_STATE_URL=decoy, OPENAI_BASE_URL=DEAD_BASE_URL)

    other_dir = tmp_path / "file-store"
    job_file = tmp_path / "nightly.toml"
    in_file = f'state-url = "{decoy}"' if backend.url is None else f'state-dir = "{other_dir}"'
    job_file.write_text(f'input = "{source}"\n{in_file}\n')
    common = ("--job-name", "j", "--base-url", emu.base_url, *backend.args)

    results = tmp_path / "out" / "res.csv"
    done = command("run", "--job", str(job_file), "--output", str(results), "--backup", *common)
    assert done.returncode == 0, done.stderr
    assert backend.jobs() == ["j"]
    assert emu.stats()["by_operation"].get("update") == 30

    # validate compares with the state the run set in this store: nothing to send.
    plan = command("validate", str(source), "--output", str(tmp_path / "plan.csv"), *common)
    assert plan.returncode == 0, plan.stderr
    assert "unchanged=30" in plan.stderr, plan.stderr
    assert "would send 0" in plan.stderr, plan.stderr

    # revert finds the run that wrote the results in this store.
    undone = command("revert", str(results), "--output", str(tmp_path / "revert.csv"), *common)
    assert undone.returncode == 0, undone.stderr

    # A run stopped before its end, for status to show.
    emu.admin("config", {"quota_exhausted": True})
    write_input(source, 30, tag="w")
    stopped = command("run", str(source), "--output", str(tmp_path / "out" / "stopped.csv"),
                      *common)  # fmt: skip
    assert stopped.returncode == 3, stopped.stderr

    where = ("--job-name", "j", *backend.args)
    listed = command("history", *where, "--json")
    assert listed.returncode == 0, listed.stderr
    names = [Path(record["results"]).name for record in json.loads(listed.stdout)]
    assert names == ["stopped.csv", "revert.csv", "res.csv"]
    going_on = command("status", *where, "--json")
    assert going_on.returncode == 0, going_on.stderr
    unfinished = json.loads(going_on.stdout)
    assert [Path(found["results"]).name for found in unfinished] == ["stopped.csv"]
    report = tmp_path / "report.html"
    drawn = command("report", *where, "--output", str(report))
    assert drawn.returncode == 0, drawn.stderr
    assert "stopped.csv" in report.read_text()

    assert not has_store(postgres, decoy)  # the variable's store: never opened
    if backend.url is None:
        assert [p.name for p in tmp_path.rglob("*.sqlite")] == ["j.sqlite"]
        assert (backend.directory / "j.sqlite").is_file()
    else:
        assert list(tmp_path.rglob("*.sqlite")) == []  # neither the job file's nor a default


# Three values for each option the environment can give: from the variable, the job file and
# the flag (no password: these stores are never opened).
ENV_URL, FILE_URL, FLAG_URL = (f"postgresql://u@db-{w}:5432/jobs" for w in ("env", "file", "flag"))
ENV_API, FILE_API, FLAG_API = (f"https://api-{w}.example/v1" for w in ("env", "file", "flag"))
STATE, BASE, INDEX = "BULK_UPDATE_STATE_URL", "OPENAI_BASE_URL", "JOB_COMPLETION_INDEX"
ORG, PROJECT = "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"


def resolved(config: JobConfig, option: str) -> object:
    """What the run uses for ``option``: the store it opens, what the sender is given."""
    if option == "store":
        location = config.store_location()
        return location.url if location.url is not None else str(location.path)
    if option == "shard":
        return config.shard
    return getattr(SendSettings.from_config(config).client, option)


@pytest.mark.parametrize(
    ("environment", "in_file", "flags", "option", "expected"),
    [
        # The store: --state-url or --state-dir given (either) beats the variable.
        ({}, {}, [], "store", "out/j.sqlite"),
        ({STATE: ENV_URL}, {}, [], "store", ENV_URL),
        ({STATE: ""}, {}, [], "store", "out/j.sqlite"),
        ({STATE: ENV_URL}, {}, ["--state-dir", "d"], "store", "d/j.sqlite"),
        ({STATE: ENV_URL}, {}, ["--state-url", FLAG_URL], "store", FLAG_URL),
        ({STATE: ENV_URL}, {"state-dir": "f"}, [], "store", "f/j.sqlite"),
        ({STATE: ENV_URL}, {"state-url": FILE_URL}, [], "store", FILE_URL),
        ({STATE: ENV_URL}, {"state-url": FILE_URL}, ["--state-dir", "d"], "store", "d/j.sqlite"),
        ({STATE: ENV_URL}, {"state-dir": "f"}, ["--state-url", FLAG_URL], "store", FLAG_URL),
        ({}, {"state-dir": "f"}, ["--state-dir", "d"], "store", "d/j.sqlite"),
        # The API's base URL.
        ({}, {}, [], "base_url", "https://api.openai.com/v1"),
        ({BASE: ENV_API}, {}, [], "base_url", ENV_API),
        ({BASE: ENV_API}, {"base-url": FILE_API}, [], "base_url", FILE_API),
        ({BASE: ENV_API}, {"base-url": FILE_API}, ["--base-url", FLAG_API], "base_url", FLAG_API),
        ({BASE: ENV_API}, {}, ["--base-url", FLAG_API], "base_url", FLAG_API),
        # The organization and project (a job file's keys; no flag).
        ({}, {}, [], "organization", None),
        ({ORG: "org-env"}, {}, [], "organization", "org-env"),
        ({ORG: "org-env"}, {"organization": "org-file"}, [], "organization", "org-file"),
        ({PROJECT: "proj-env"}, {}, [], "project", "proj-env"),
        ({PROJECT: "proj-env"}, {"project": "proj-file"}, [], "project", "proj-file"),
        # The shard: $JOB_COMPLETION_INDEX is read only where `index/N` asks for it.
        ({INDEX: "3"}, {}, ["--shard", "index/8"], "shard", (3, 8)),
        ({INDEX: "3"}, {}, ["--shard", "1/8"], "shard", (1, 8)),
        ({INDEX: "3"}, {"shard": "index/8"}, [], "shard", (3, 8)),
        ({INDEX: "3"}, {"shard": "index/8"}, ["--shard", "5/8"], "shard", (5, 8)),
        ({INDEX: "3"}, {"shard": "6/8"}, [], "shard", (6, 8)),
    ],
)
def test_a_value_given_beats_the_environment_which_beats_the_default(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    environment: dict[str, str],
    in_file: dict[str, str],
    flags: list[str],
    option: str,
    expected: object,
) -> None:
    """Each option the environment can give, as `bulk-update run` builds it: the flag, else
    the job file, else the variable, else the default."""
    monkeypatch.chdir(tmp_path)
    for variable in (STATE, BASE, INDEX, ORG, PROJECT):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    job = []
    if in_file:
        (tmp_path / "j.toml").write_text("".join(f'{k} = "{v}"\n' for k, v in in_file.items()))
        job = ["--job", "j.toml"]
    args = build_parser().parse_args(["run", "in.csv", "--output", "out/j.csv", *job, *flags])
    config, _ = _job_options(args, _as_given)
    assert resolved(config, option) == expected


@pytest.mark.parametrize(
    ("environment", "flags", "expected"),
    [
        ({STATE: ENV_URL}, [], ENV_URL),
        ({STATE: ENV_URL}, ["--state-dir", "d"], "d/j.sqlite"),
        ({STATE: ENV_URL}, ["--state-url", FLAG_URL], FLAG_URL),
        ({}, ["--state-dir", "d"], "d/j.sqlite"),
    ],
)
@pytest.mark.parametrize("command", ["history", "status", "report"])
def test_history_status_and_report_look_where_run_put_the_store(
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    environment: dict[str, str],
    flags: list[str],
    expected: str,
) -> None:
    monkeypatch.delenv(STATE, raising=False)
    for variable, value in environment.items():
        monkeypatch.setenv(variable, value)
    report = ["--output", "r.html"] if command == "report" else []
    args = build_parser().parse_args([command, "--job-name", "j", *flags, *report])
    location = job_location(args.job_name, args.state_dir, args.state_url)
    assert (location.url if location.url is not None else str(location.path)) == expected


@pytest.mark.parametrize(
    "command",
    [
        ["run", "in.csv", "--output", "o.csv"],
        ["validate", "in.csv", "--output", "o.csv"],
        ["revert", "res.csv", "--output", "o.csv"],
        ["history", "--job-name", "j"],
        ["status", "--job-name", "j"],
        ["report", "--job-name", "j", "--output", "r.html"],
    ],
)
def test_both_stores_given_is_refused_naming_both(tmp_path: Path, command: list[str]) -> None:
    """--state-dir and --state-url together: which one was meant? Exit 2, one line."""
    done = cli(*command, "--state-dir", "d", "--state-url", FLAG_URL, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "bulk-update: error: --state-dir and --state-url exclude each other: give one\n"
    )
    assert list(tmp_path.iterdir()) == []


OPERATOR_STORES = """
import json
from bulk_update.airflow import BulkUpdateOperator
from bulk_update.exceptions import ConfigError
found = []
for given in ({}, {"state_dir": "d"}, {"store_conn_id": "s"}, {"store_conn_id": "s", "state_dir": "d"}):
    operator = BulkUpdateOperator(task_id="t", input="in.csv", results="out/r.csv",
                                  openai_conn_id=None, **given)
    try:
        location = operator.job_config().store_location()
        found.append(location.url or str(location.path))
    except ConfigError as exc:
        found.append(str(exc))
print(json.dumps(found))
"""


def test_the_airflow_operator_takes_a_store_given_over_the_variable(tmp_path: Path) -> None:
    """``state_dir`` given to the operator beats $BULK_UPDATE_STATE_URL, as --state-dir does;
    ``store_conn_id`` beats both, and is refused beside ``state_dir``."""
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    conn = json.dumps({"conn_type": "postgres", "host": "db-conn", "login": "u", "schema": "jobs"})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AIRFLOW"))}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW_CONN_S=conn, BULK_UPDATE_STATE_URL=ENV_URL, OPENAI_API_KEY="sk-env")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", OPERATOR_STORES], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [
        ENV_URL,
        "d/adhoc_airflow.t.sqlite",
        "postgresql://u@db-conn/jobs",
        "store_conn_id and state_dir exclude each other: give one",
    ]


@pytest.mark.parametrize(
    ("in_file", "flags", "expected"),
    [
        ('columns = ["a", "b"]\n', ["--metadata-column", "m"], (None, "m")),
        ('metadata-column = "m"\n', ["--columns", "a,b"], (("a", "b"), None)),
        ('columns = ["a", "b"]\n', [], (("a", "b"), None)),
    ],
)
def test_a_flag_replaces_the_job_files_choice_of_the_pair(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    in_file: str,
    flags: list[str],
    expected: tuple[object, object],
) -> None:
    """Flags override the job file, also where the flag's option excludes the file's (once:
    exit 2, "--columns and --metadata-column exclude each other", for one flag given)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "j.toml").write_text(in_file)
    argv = ["run", "in.csv", "--output", "o.csv", "--job", "j.toml", *flags]
    config, _ = _job_options(build_parser().parse_args(argv), _as_given)
    assert (config.columns, config.metadata_column) == expected
