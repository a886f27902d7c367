"""`make demo` (`bulk-update demo`) shows what it says, on a fresh checkout: every row sent,
then the next night's export with three rows edited, of which only those three are sent, then a
--check-server validate catching a conversation that would get a 17th key."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.helpers import cli

ROOT = Path(__file__).parent.parent


def test_the_demo_sends_only_what_changed_on_its_second_run(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    shutil.copy(ROOT / "jobs" / "demo.toml", tmp_path / "jobs")
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    done = cli("demo", cwd=tmp_path, key=None)  # the demo brings its own key
    assert done.returncode == 0, done.stdout + done.stderr
    summaries = [line for line in done.stderr.splitlines() if line.startswith("bulk-update: ")]
    assert len(summaries) == 3, done.stderr
    assert "updated=294 invalid=6" in summaries[0]
    assert "updated=3 unchanged=291 invalid=6" in summaries[1]
    assert "invalid=1 planned=2" in summaries[2]
    assert (
        "would add keys 'owner' to 2 conversations, 'queue' to 2 conversations; keys cannot be "
        "removed" in summaries[2]
    )  # one note for every key added, not one per key
    assert "the server holds 15 keys; with this row's 2 new keys it would hold 17" in done.stdout
    sent = re.search(r"; (\d+) requests", summaries[1])
    assert sent is not None
    assert int(sent.group(1)) <= 3 + 1 + 3  # the three, the preflight, a few fault retries
    assert (tmp_path / "out" / "demo-results.csv").is_file()
    assert (tmp_path / "out" / "demo-errors.csv").is_file()


def test_make_demo_installs_only_the_package_and_the_emulator() -> None:
    """The demo needs neither Airflow nor the dev tools (they cost a fresh clone a minute); a
    production install needs not even the emulator's web server."""
    import tomllib

    plan = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "demo"], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    installs = [line for line in plan.splitlines() if " install " in line and "-e " in line]
    assert len(installs) == 1, plan
    # The package and its emulator extra, and pip for whoever activates the venv; nothing
    # compiled ahead (a fresh clone's demo compiles only what it imports).
    assert installs[0].endswith(" install --quiet --disable-pip-version-check --no-compile "
                                "-e '.[emulator]' pip"), plan  # fmt: skip
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    assert "starlette" not in base
    assert "uvicorn" not in base
    assert any("starlette" in d for d in project["optional-dependencies"]["emulator"])
    tests = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "unit"], capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert "-e '.[dev,airflow]'" in tests


def quick_start_commands() -> list[list[str]]:
    """The README's "A real run" lines, as argument lists (continuations joined, comments cut)."""
    import shlex

    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("A real run:") :].split("```")[1]
    joined = block.replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [command[1:] for command in commands if command[:1] == ["bulk-update"]]


def test_the_quick_start_validate_predicts_what_run_sends(tmp_path: Path) -> None:
    from bulk_update.emulator.process import EmulatorProcess
    from tests.conftest import TEST_KEY
    from tests.helpers import write_input

    commands = quick_start_commands()
    assert [c[0] for c in commands] == ["validate", "run"]
    (tmp_path / "exports").mkdir()
    source = tmp_path / "exports" / "conversations.csv"
    write_input(source, 60)
    with EmulatorProcess("--api-key", TEST_KEY, "--preload", str(source)) as emu:
        validate, run = ([*c, "--base-url", emu.base_url] if c[0] == "run" else c for c in commands)
        assert cli(*run, cwd=tmp_path).returncode == 0  # the first night: every row
        write_input(source, 60, {4: "edited", 9: "edited", 30: "edited"})  # the next export
        plan = cli(*validate, cwd=tmp_path)
        assert plan.returncode == 0, plan.stderr
        assert "would send 3" in plan.stderr
        sent_before = emu.stats()["by_operation"]["update"]
        # The same results path with a new export: --restart starts a new run (the job's state
        # is kept); a nightly job writes a dated path instead.
        done = cli(*run, "--restart", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert emu.stats()["by_operation"]["update"] - sent_before == 3
