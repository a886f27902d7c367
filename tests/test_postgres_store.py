"""The store in PostgreSQL (--state-url): a real PostgreSQL 15 server (tests/pg.py), the real CLI
against the emulator, each "worker" in a working directory of its own."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from bulk_update.config import JobConfig
from bulk_update.emulator.process import EmulatorProcess
from bulk_update.exceptions import ConfigError
from bulk_update.store.url import redact
from tests.conftest import StartEmulator
from tests.helpers import cli, results, start, wait_for_in_flight, wait_for_requests, write_input
from tests.pg import PASSWORD, USER, PostgresServer, wait_until_up


def workers(root: Path, *names: str) -> list[Path]:
    """A working directory per worker (as another machine would have)."""
    made = []
    for name in names:
        (root / name).mkdir()
        made.append(root / name)
    return made


def local_state(*directories: Path) -> list[Path]:
    """Anything durable the job may have left on a worker's disk."""
    found: list[Path] = []
    for directory in directories:
        for pattern in ("**/*.sqlite*", "**/*.lock", "**/*.journal*", "**/.bulk_update"):
            found += directory.glob(pattern)
    return found


def sent_per_id(emu: EmulatorProcess) -> dict[str, int]:
    counts: dict[str, int] = emu.stats(per_id=True)["update_requests_by_id"]
    return counts


def test_a_shard_killed_on_one_worker_resumes_on_another(
    start_emulator: StartEmulator, state_url: str, tmp_path: Path
) -> None:
    n, concurrency = 800, 8
    source = tmp_path / "in.csv"
    write_input(source, n)
    # The shard's 400 rows take 2.5 s at 8 in flight: the kill after 100 lands mid-run.
    emu = start_emulator("--preload", str(source), "--latency-ms", "50")
    a, b, c = workers(tmp_path, "worker-a", "worker-b", "worker-c")
    common = ("--base-url", emu.base_url, "--state-url", state_url, "--job-name", "nightly",
              "--shard", "1/2", "--rpm", "600000", "--concurrency", str(concurrency))  # fmt: skip
    run_a = start(str(source), "--output", "out/shard-1.csv", *common, cwd=a)
    wait_for_requests(emu, 100)
    run_a.send_signal(signal.SIGKILL)
    run_a.wait()
    wait_for_in_flight(emu)  # the server finishes what it had received
    killed_after = sent_per_id(emu)
    assert 0 < len(killed_after) < n // 2  # really cut mid-run

    # Worker B: the same command in another directory resumes the run from the database.
    resumed = cli("run", str(source), "--output", "out/shard-1.csv", *common, cwd=b)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming:" in resumed.stderr
    frame = results(b / "out/shard-1.csv")
    shard_rows = frame.height
    assert 0.4 * n < shard_rows < 0.6 * n
    assert frame["row_number"].n_unique() == shard_rows  # every row of the shard exactly once
    assert set(frame["status"].to_list()) == {"updated"}
    sent = sent_per_id(emu)
    assert set(sent) == set(frame["conversation_id"].to_list())
    resent = sum(sent.values()) - len(sent)
    assert resent <= concurrency, f"{resent} rows sent twice"

    # Night 2 on a third machine: the state is in the database, nothing changed, nothing sent.
    before = emu.stats()["requests"]
    night = cli("run", str(source), "--output", "night-2/shard-1.csv", *common, cwd=c)
    assert night.returncode == 0, night.stderr
    assert set(results(c / "night-2/shard-1.csv")["status"].to_list()) == {"unchanged"}
    assert emu.stats()["requests"] == before
    # A dry run from anywhere compares with the same state.
    dry = cli("run", str(source), "--output", "plan.csv", "--dry-run", *common, cwd=c)
    assert dry.returncode == 0, dry.stderr
    assert set(results(c / "plan.csv")["status"].to_list()) == {"unchanged"}
    assert local_state(a, b, c, tmp_path) == []


def test_one_writer_per_shard_across_machines(
    start_emulator: StartEmulator, state_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 1000)
    emu = start_emulator("--preload", str(source), "--latency-ms", "50")
    a, b = workers(tmp_path, "worker-a", "worker-b")
    common = ("--base-url", emu.base_url, "--state-url", state_url, "--job-name", "j",
              "--rpm", "600000", "--concurrency", "64")  # fmt: skip
    # The holder must still hold its shard when the last refusal is tried: its 500 rows one at
    # a time take 25 s, however slow the machine is at starting the other processes.
    holder = start(str(source), "--output", "s0.csv", "--shard", "0/2", *common,
                   "--concurrency", "1", cwd=a)  # fmt: skip
    try:
        wait_for_requests(emu, 5)
        second = cli("run", str(source), "--output", "s0.csv", "--shard", "0/2", *common, cwd=b)
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert f"pid {holder.pid} on {socket.gethostname()}" in line
        assert "already running" in line
        # Shards of another N would overlap this one's rows: refused too.
        other_n = cli("run", str(source), "--output", "q.csv", "--shard", "0/4", *common, cwd=b)
        assert other_n.returncode == 2, other_n.stderr
        assert "a shard of 2 (not 4)" in other_n.stderr
        # The whole input would overlap every shard.
        whole = cli("run", str(source), "--output", "w.csv", *common, cwd=b)
        assert whole.returncode == 2, whole.stderr
        # The other shard runs beside it.
        other = cli("run", str(source), "--output", "s1.csv", "--shard", "1/2", *common, cwd=b)
        assert other.returncode == 0, other.stderr
    finally:
        holder.send_signal(signal.SIGKILL)  # a lost machine: no clean exit
        holder.wait()
    # Its session ended with it: the server freed the lock at once, no human needed.
    taken = cli("run", str(source), "--output", "s0.csv", "--shard", "0/2", *common, cwd=b)
    assert taken.returncode == 0, taken.stderr
    assert set(results(b / "s0.csv")["status"].to_list()) == {"updated"}


def test_a_postgres_restart_mid_run_loses_nothing(
    start_emulator: StartEmulator, postgres: PostgresServer, state_url: str, tmp_path: Path
) -> None:
    n, concurrency = 600, 8
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source))
    common = ("--base-url", emu.base_url, "--state-url", state_url, "--rpm", "6000",
              "--concurrency", str(concurrency))  # fmt: skip
    job = start(str(source), "--output", "out.csv", *common, cwd=tmp_path)
    wait_for_requests(emu, 100)
    postgres.restart()  # every session is dropped; the server is back in about a second
    _, stderr = job.communicate(timeout=120)
    assert job.returncode == 0, stderr
    assert "the store is unreachable" in stderr
    assert "the store is back" in stderr
    frame = results(tmp_path / "out.csv")
    assert frame.height == n
    assert set(frame["status"].to_list()) == {"updated"}
    sent = sent_per_id(emu)
    assert len(sent) == n
    assert sum(sent.values()) - n <= concurrency


def test_a_database_that_stays_away_stops_the_job_resumable(
    start_emulator: StartEmulator, postgres: PostgresServer, state_url: str, tmp_path: Path
) -> None:
    n = 400
    source = tmp_path / "in.csv"
    write_input(source, n)
    emu = start_emulator("--preload", str(source))
    common = ("--base-url", emu.base_url, "--state-url", state_url, "--rpm", "3000",
              "--concurrency", "4", "--store-timeout", "3")  # fmt: skip
    job = start(str(source), "--output", "out.csv", *common, cwd=tmp_path)
    wait_for_requests(emu, 40)
    postgres.stop()
    try:
        _, stderr = job.communicate(timeout=120)
    finally:
        postgres.start()
    assert job.returncode == 3, stderr
    assert "Traceback" not in stderr
    assert "has been unreachable for" in stderr
    assert PASSWORD not in stderr
    wait_until_up(state_url)
    resumed = cli("run", str(source), "--output", "out.csv", *common, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    frame = results(tmp_path / "out.csv")
    assert frame["row_number"].to_list() == list(range(1, n + 1))
    assert set(frame["status"].to_list()) == {"updated"}
    sent = sent_per_id(emu)
    assert sum(sent.values()) - n <= 4 + 4  # the rows in flight, and those awaiting a commit


def _timeline(emu: EmulatorProcess) -> dict[int, int]:
    """Requests answered per whole second since the emulator started (any status)."""
    seconds = emu.stats(timeline=True)["timeline"]
    return {int(s): sum(counts.values()) for s, counts in seconds.items()}


def _shard_runs(
    source: Path, emu: EmulatorProcess, shards: list[int], count: int, rpm: int, store: list[str]
) -> list[str]:
    common = ["--base-url", emu.base_url, "--rpm", str(rpm), "--concurrency", "8",
              "--job-name", "pooled", *store]  # fmt: skip
    outputs = {k: f"{source.parent}/s{k}.csv" for k in shards}
    jobs = [start(str(source), "--output", outputs[k], "--shard", f"{k}/{count}", *common)
            for k in shards]  # fmt: skip
    errors = []
    for job in jobs:
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr
        errors.append(stderr)
    return errors


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_running_shards_share_the_rpm(
    start_emulator: StartEmulator, postgres: PostgresServer, tmp_path: Path, backend: str
) -> None:
    """4 of a job's 8 shards run, each told --rpm R, against a server that allows R: together
    they ride R (the budget is shared at run time, not split by 8), and 429s stay rare."""
    rpm = 2400  # 40 requests a second
    source = tmp_path / "in.csv"
    write_input(source, 1600)  # about 800 rows in 4 of 8 shards: 20 s at R
    emu = start_emulator("--preload", str(source), "--rpm", str(rpm))
    store = (
        ["--state-url", postgres.create_database(f"pool_{backend}")]
        if backend == "postgres"
        else ["--state-dir", str(tmp_path / "state")]
    )
    _shard_runs(source, emu, [0, 2, 4, 6], 8, rpm, store)
    seconds = _timeline(emu)
    first, last = min(seconds), max(seconds)
    steady = [seconds.get(s, 0) for s in range(first + 2, last - 1)]  # start-up and tail out
    rate_per_minute = sum(steady) / len(steady) * 60
    statuses = emu.stats()["by_status"]
    limited = statuses.get("429", 0) / sum(statuses.values())
    print(f"{backend}: {rate_per_minute:.0f} rpm of {rpm}, {limited:.2%} answered 429")
    assert rate_per_minute >= 0.95 * rpm
    assert limited <= 0.02


def test_all_shards_together_never_exceed_the_rpm(
    start_emulator: StartEmulator, state_url: str, tmp_path: Path
) -> None:
    rpm = 1200  # 20 a second: at most 200 in any 10 s
    source = tmp_path / "in.csv"
    write_input(source, 320)
    emu = start_emulator("--preload", str(source))  # no server limit: the job's own pacing
    _shard_runs(source, emu, list(range(8)), 8, rpm, ["--state-url", state_url])
    seconds = _timeline(emu)
    first, last = min(seconds), max(seconds)
    assert last - first >= 12  # 8 shards at their shared R, not 8 R
    windows = [sum(seconds.get(s, 0) for s in range(t, t + 10)) for t in range(first, last - 8)]
    print(f"busiest 10 s: {max(windows)} requests (R allows {rpm // 6})")
    # The job's slots are at most R/6 in any 10 s of the shared timeline. What the server sees
    # can hold a little more: a slot may be sent up to one interval late (a later one is
    # dropped), a shard places its claimed slots on its own clock to within half the claim's
    # round trip, and requests reach the server with the delivery jitter of a loaded machine
    # (202 were seen once beside a CPU burner and a benchmark, when a claim's slots were
    # anchored at the end of its round trip; 196-199 since they are anchored at its middle).
    # Three requests (150 ms at R) cover the three; a shard that caught up in a burst would put
    # tens more in one window.
    assert max(windows) <= rpm // 6 + 3


def test_the_password_is_never_shown(
    start_emulator: StartEmulator, postgres: PostgresServer, state_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 30)
    emu = start_emulator("--preload", str(source))
    log_file = tmp_path / "job.log"
    done = cli("run", str(source), "--output", "out.csv", "--base-url", emu.base_url,
               "--log-format", "json", "--log-file", str(log_file), cwd=tmp_path,
               BULK_UPDATE_STATE_URL=state_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr + log_file.read_text() + (tmp_path / "out.csv").read_text()
    assert redact(state_url) in shown  # the store is named, without its password
    for secret in (PASSWORD, "S3cret", state_url.split("@")[0].split(":")[-1]):
        assert secret not in shown
    stored = postgres.query(state_url.rsplit("/", 1)[1], "SELECT options FROM bulk_update.runs")
    assert all("S3cret" not in str(row) for row in stored)

    # A wrong password: exit 2, one line, naming the store without either password.
    wrong = postgres.url(state_url.rsplit("/", 1)[1], password="Wr0ng-secret")
    refused = cli("run", str(source), "--output", "o2.csv", "--base-url", emu.base_url,
                  "--state-url", wrong, cwd=tmp_path)  # fmt: skip
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "password authentication failed" in refused.stderr
    assert "Wr0ng" not in refused.stderr
    assert "S3cret" not in refused.stderr

    # The password written as it is, '@' and '/' not percent-encoded: Python and libpq would
    # read other hosts out of it. Refused before any connection, saying how to encode it, and
    # nothing of the URL is shown, masked or not (no letter of other text is ever masked).
    port = state_url.rsplit(":", 1)[1].split("/")[0]
    for raw in (f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/x",
                f"postgresql://{USER}:pg@ss:w0rd@127.0.0.1:{port}/x"):  # fmt: skip
        plain = cli("run", str(source), "--output", "o3.csv", "--base-url", emu.base_url,
                    "--state-url", raw, cwd=tmp_path)  # fmt: skip
        assert plain.returncode == 2
        (line,) = plain.stderr.strip().splitlines()
        assert "percent-encode the password" in line
        assert "%40" in line
        assert "%2F" in line
        assert "S3cret" not in line
        assert "w0rd" not in line
        assert "***" not in line
        listed = cli("history", "--job-name", "x", "--state-url", raw, cwd=tmp_path)
        assert listed.returncode == 2
        assert "percent-encode" in listed.stderr

    # Not a PostgreSQL URL.
    with pytest.raises(ConfigError, match="use postgresql://"):
        JobConfig(input="i.csv", output="o.csv", state_url="mysql://u:Secret9@h/db")
    config = JobConfig(input="i.csv", output="o.csv", state_url=state_url)
    assert "S3cret" not in repr(config)
    assert redact("postgres://u:p%40ss@db.example:5432/jobs?sslmode=require&password=x") == (
        "postgres://u@db.example:5432/jobs?sslmode=require"
    )


def test_runs_and_state_are_in_the_database(
    start_emulator: StartEmulator, postgres: PostgresServer, state_url: str, tmp_path: Path
) -> None:
    """What an operator finds in the schema: one run per results path, its outcomes, the job's
    state; --since-state names another job in the same database."""
    source = tmp_path / "in.csv"
    write_input(source, 50)
    emu = start_emulator("--preload", str(source))
    common = ("--base-url", emu.base_url, "--state-url", state_url)
    assert cli("run", str(source), "--output", "a.csv", *common, cwd=tmp_path).returncode == 0
    database = state_url.rsplit("/", 1)[1]
    runs = postgres.query(database, "SELECT job, results, shard, exit_code FROM bulk_update.runs")
    assert runs == [("a", "a.csv", "", 0)]
    entries = postgres.query(database, "SELECT count(*) FROM bulk_update.last_set")
    assert entries == [(50,)]
    # Another job compares with job "a": nothing to send.
    since = cli("run", str(source), "--output", "b.csv", "--since-state", "a", *common,
                cwd=tmp_path)  # fmt: skip
    assert since.returncode == 0, since.stderr
    assert set(results(tmp_path / "b.csv")["status"].to_list()) == {"unchanged"}
    missing = cli("run", str(source), "--output", "c.csv", "--since-state", "nope", *common,
                  cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2
    assert "--since-state nope: no job of that name" in missing.stderr
    runs_by_job = postgres.query(database, "SELECT job, count(*) FROM bulk_update.runs GROUP BY 1")
    assert sorted(runs_by_job) == [("a", 1), ("b", 1)]
    statuses = postgres.query(database, "SELECT status FROM bulk_update.run_outcomes")
    frame = pl.DataFrame(statuses, schema=["status"], orient="row")
    assert frame["status"].value_counts().sort("status").rows() == [("updated", 50)]
    # b's unchanged rows: a count (one span for its one batch), not outcomes.
    spans = postgres.query(database, "SELECT count(*), sum(rows) FROM bulk_update.unchanged_spans")
    assert spans == [(1, 50)]
    assert json.loads(str(postgres.query(database, "SELECT counts FROM bulk_update.runs")[0][0]))


def test_the_state_url_from_a_job_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql://u:Secret9@db.example:5432/jobs"
    job = JobConfig.from_options({"input": "i.csv", "output": "o.csv", "state-url": url})
    assert job.resolved_state_url() == url
    assert job.store_where() == "postgresql://u@db.example:5432/jobs"
    monkeypatch.setenv("BULK_UPDATE_STATE_URL", "postgres://v:Secret8@db2/jobs")
    plain = JobConfig(input="i.csv", output="o.csv")
    assert plain.resolved_state_url() == "postgres://v:Secret8@db2/jobs"  # the flag wins above
    assert JobConfig(input="i.csv", output="o.csv", state_url=url).resolved_state_url() == url
    monkeypatch.setenv("BULK_UPDATE_STATE_URL", "")
    assert plain.resolved_state_url() is None  # empty: the SQLite file
    # The Airflow Postgres hook's SQLAlchemy form is the plain one.
    hook = JobConfig(input="i.csv", output="o.csv", state_url="postgresql+psycopg://u:p@h/d")
    assert hook.resolved_state_url() == "postgresql://u:p@h/d"


def test_without_psycopg_a_state_url_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 3)
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "from bulk_update.cli import main\n"
        f"sys.argv = ['bulk-update', 'run', {str(source)!r}, '--output', 'o.csv', "
        "'--base-url', 'http://127.0.0.1:9/v1', '--state-url', 'postgresql://u:Pw1@h/d']\n"
        "raise SystemExit(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={"OPENAI_API_KEY": "sk-x", "PATH": "/usr/bin"})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pip install 'bulk-update[postgres]'" in done.stderr
    assert "Pw1" not in done.stderr


def test_a_store_that_cannot_be_reached_may_pass_a_wrong_password_does_not(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Both are exit 2 for the CLI (nothing was sent); a scheduler may retry the first
    (``may_pass``: the Airflow operator does), never the second."""
    from bulk_update.exceptions import Unreachable
    from bulk_update.store import StoreLocation, open_store

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = f"postgresql://{USER}:pw@127.0.0.1:{closed}/postgres?connect_timeout=3"
    with pytest.raises(Unreachable, match="cannot use the store") as raised:
        open_store(StoreLocation(tmp_path / "j.sqlite", down, 5.0))
    assert raised.value.may_pass
    wrong = postgres.url("postgres", password="Wr0ng-pw")
    with pytest.raises(ConfigError, match="password authentication failed") as refused:
        open_store(StoreLocation(tmp_path / "j.sqlite", wrong, 5.0))
    assert not refused.value.may_pass
