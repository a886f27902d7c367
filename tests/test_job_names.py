"""One meaning per flag in every command: ``--job`` is a job file, ``--job-name`` a job's name.
``history``, ``status`` and ``report`` read a job file as ``run`` does (its name, its store);
a job's name given to ``--job`` is refused in one line that says to use ``--job-name``. With
the real CLI against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import StartEmulator
from tests.helpers import cli, write_input
from tests.stores import Backend

LOOKUPS = (("history",), ("status",), ("report", "--output", "r.html"))


def one_line(done: object, *fragments: str) -> str:
    returncode = getattr(done, "returncode", None)
    stderr: str = getattr(done, "stderr", "")
    assert returncode == 2, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("bulk-update: error: "), stderr
    for fragment in fragments:
        assert fragment in line, stderr
    return line


def runs(*args: str, cwd: Path) -> list[dict[str, object]]:
    done = cli("history", *args, "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    found: list[dict[str, object]] = json.loads(done.stdout)
    return found


def test_history_status_and_report_read_the_job_file_run_took(
    start_emulator: StartEmulator, backend: Backend, tmp_path: Path
) -> None:
    """The job file names the job and its store (a state-dir or a state-url): `history --job
    FILE` finds the runs `run --job FILE` made, on both stores; --job-name finds them too."""
    write_input(tmp_path / "in.csv", 4)
    emu = start_emulator("--preload", str(tmp_path / "in.csv"))
    store = (f'state-dir = "{backend.directory}"' if backend.url is None
             else f'state-url = "{backend.url}"')  # fmt: skip
    job = tmp_path / "jobs" / "nightly.toml"
    job.parent.mkdir()
    job.write_text(f'input = "in.csv"\noutput = "out/n.csv"\n{store}\n')
    done = cli("run", "--job", "jobs/nightly.toml", "--base-url", emu.base_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    (run,) = runs("--job", "jobs/nightly.toml", cwd=tmp_path)  # the name: the file's
    assert (run["results"], run["exit_code"]) == ("out/n.csv", 0)
    assert runs("--job-name", "nightly", *backend.args, cwd=tmp_path) == [run]
    status = cli("status", "--job", "jobs/nightly.toml", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "job nightly: no run going on or unfinished" in status.stdout
    report = cli("report", "--job", "jobs/nightly.toml", "--output", "r.html", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert f"report of job nightly run {run['run_id']}: r.html" in report.stderr
    assert (tmp_path / "r.html").stat().st_size > 0

    # A flag given wins over the file, as with run: another name, then nowhere found.
    other = cli("history", "--job", "jobs/nightly.toml", "--job-name", "other", cwd=tmp_path)
    one_line(other, "'other'")


def test_a_job_file_without_a_store_finds_it_beside_its_results(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """`bulk-update history --job jobs/demo.toml` just works: the job file names its results,
    and run put the store beside them; its job-name key names the job."""
    write_input(tmp_path / "in.csv", 3)
    emu = start_emulator("--preload", str(tmp_path / "in.csv"))
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "demo.toml").write_text('input = "in.csv"\noutput = "out/d.csv"\n')
    (tmp_path / "jobs" / "named.toml").write_text(
        'input = "in.csv"\noutput = "elsewhere/e.csv"\njob-name = "fixes"\n'
    )
    for name in ("demo", "named"):
        done = cli("run", "--job", f"jobs/{name}.toml", "--base-url", emu.base_url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "demo.sqlite").is_file()
    (run,) = runs("--job", "jobs/demo.toml", cwd=tmp_path)
    assert run["results"] == "out/d.csv"
    (named,) = runs("--job", "jobs/named.toml", cwd=tmp_path)
    assert named["results"] == "elsewhere/e.csv"
    # The same runs by name: the store found in the directory or below it.
    assert runs("--job-name", "demo", cwd=tmp_path) == [run]
    assert runs("--job-name", "fixes", cwd=tmp_path) == [named]


@pytest.mark.parametrize("command", LOOKUPS)
def test_a_job_name_given_to_job_is_refused_in_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """The old form, `history --job nightly`, where nightly is no file: exit 2, one line that
    says to use --job-name; so does run's, and no flag at all names what is missing."""
    one_line(cli(*command, "--job", "nightly", cwd=tmp_path),
             "nightly: no such job file", "give --job-name nightly")  # fmt: skip
    one_line(cli(*command, cwd=tmp_path), "give --job-name NAME", "or --job FILE")
    one_line(cli(*command, "--job", "nightly.toml", cwd=tmp_path), "nightly.toml: no such job file")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out").mkdir()  # a job named after its results' directory
    one_line(cli(*command, "--job", "out", cwd=tmp_path),
             "out: is a directory, not a job file", "give --job-name out")  # fmt: skip


def test_run_and_revert_say_the_same_of_a_name_given_to_job(tmp_path: Path) -> None:
    for command in (("run", "in.csv", "--output", "o.csv"), ("validate", "in.csv", "--output",
                    "o.csv"), ("revert", "r.csv", "--output", "o.csv")):  # fmt: skip
        one_line(cli(*command, "--job", "nightly", cwd=tmp_path), "give --job-name nightly")


def test_a_job_files_bad_store_value_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "j.toml").write_text('output = "o.csv"\nstate-dir = 3\n')
    one_line(cli("status", "--job", "j.toml", cwd=tmp_path), "j.toml: state-dir must be text")
    (tmp_path / "k.toml").write_text('job-name = "a b"\n')
    one_line(cli("status", "--job", "k.toml", cwd=tmp_path), "k.toml: --job-name 'a b'")


FILE_URL, ENV_URL, FLAG_URL = (f"postgresql://u@db-{w}:5432/jobs" for w in ("file", "env", "flag"))


@pytest.mark.parametrize(
    ("in_file", "environment", "flags"),
    [
        ("", None, []),
        ("", ENV_URL, []),
        ('state-dir = "s"\n', ENV_URL, []),
        (f'state-url = "{FILE_URL}"\n', None, []),
        (f'state-url = "{FILE_URL}"\n', None, ["--state-dir", "d"]),
        ('state-dir = "s"\n', None, ["--state-url", FLAG_URL]),
        ('job-name = "named"\n', None, []),
        ('job-name = "named"\n', None, ["--job-name", "flagged"]),
        ('output = "s3://bucket/x.csv"\n', None, []),
    ],
)
@pytest.mark.parametrize("command", ["history", "status", "report"])
def test_the_lookups_find_the_store_run_chose_from_the_same_job_file(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    command: str,
    in_file: str,
    environment: str | None,
    flags: list[str],
) -> None:
    """`history --job FILE` looks where `run --job FILE` puts the store, with the same flags and
    environment: the file's store, else the variable, else beside the results; flags win."""
    from bulk_update.cli import _as_given, _job_options, _lookup, build_parser

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BULK_UPDATE_STATE_URL", raising=False)
    if environment is not None:
        monkeypatch.setenv("BULK_UPDATE_STATE_URL", environment)
    text = 'input = "in.csv"\n' + in_file
    if "output" not in in_file:
        text += 'output = "out/j.csv"\n'
    (tmp_path / "j.toml").write_text(text)
    config, _ = _job_options(build_parser().parse_args(["run", "--job", "j.toml", *flags]),
                             _as_given)  # fmt: skip
    report = ["--output", "r.html"] if command == "report" else []
    name, location = _lookup(build_parser().parse_args([command, "--job", "j.toml", *flags,
                                                        *report]))  # fmt: skip
    assert name == config.resolved_job_name()
    run_chose = config.store_location()
    assert location.url == run_chose.url
    if location.url is None:  # a SQLite file (a PostgreSQL store has no path)
        assert location.path == run_chose.path
