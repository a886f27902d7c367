"""The real `bulk-update` command: help texts, bad flags, the emulator's start-up."""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import pytest

from bulk_update.cli import build_parser
from bulk_update.exitcodes import ExitCode
from tests import helpers
from tests.conftest import StartEmulator


def _commands() -> list[str]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return sorted(action.choices)
    return []


COMMANDS = _commands()


bulk_update = partial(helpers.cli, key=None, timeout=60)


def test_there_are_commands() -> None:
    assert "emulator" in COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = bulk_update(command, "--help")
    assert result.returncode == 0
    assert f"usage: bulk-update {command}" in result.stdout
    assert len(result.stdout.splitlines()) > 3


def test_top_level_help_lists_every_command() -> None:
    result = bulk_update("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("emulator", "--error-rate", "1.5"),
        ("emulator", "--rpm", "-1"),
        ("emulator", "--port", "x"),
        ("nonsense",),
    ],
)
def test_bad_flags_exit_2(args: tuple[str, ...]) -> None:
    result = bulk_update(*args)
    assert result.returncode == 2
    assert "error" in result.stderr


def test_emulator_prints_base_url_and_preloads_a_file(
    start_emulator: StartEmulator, tmp_path: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    ids = ["conv_a1", " conv_b2 ", "", "conv_c3"]
    path = tmp_path / "ids.csv"
    path.write_text("conversation_id,x\n" + "".join(f"{i},1\n" for i in ids))
    emu = start_emulator("--preload", str(path))
    assert emu.base_url.startswith("http://127.0.0.1:")
    assert emu.base_url.endswith("/v1")
    assert emu.stats()["conversations"] == 3
    assert emu.admin("conversations/conv_b2")["id"] == "conv_b2"


def test_emulator_preloads_n(start_emulator: StartEmulator) -> None:
    from bulk_update.emulator import preload_id

    emu = start_emulator("--preload", "250")
    assert emu.stats()["conversations"] == 250
    assert emu.admin(f"conversations/{preload_id(249)}")["metadata"] == {}


def test_emulator_port_in_use_exits_2(start_emulator: StartEmulator) -> None:
    emu = start_emulator()
    port = emu.base_url.split(":")[-1].split("/")[0]
    result = bulk_update("emulator", "--port", port)
    assert result.returncode == 2
    assert "Address already in use" in result.stderr


def test_an_unexpected_exception_is_one_line_and_exit_70(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from bulk_update import cli, job

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.setattr(job, "run_job", broken)
    source = tmp_path / "in.csv"
    source.write_text("conversation_id,a\nconv_1,x\n")
    log_file = tmp_path / "log.txt"
    code = cli.main(["validate", str(source), "--output", str(tmp_path / "r.csv"),
                     "--log-file", str(log_file)])  # fmt: skip
    assert code == 70
    assert ExitCode(code) is ExitCode.INTERNAL
    err = capsys.readouterr().err
    assert "internal error (RuntimeError: a bug)" in err
    assert "Traceback" not in err
    assert "Traceback" in log_file.read_text()


def test_run_help_shows_defaults_exit_codes_and_an_example() -> None:
    text = bulk_update("run", "--help").stdout
    for default in ("(default 500)", "(default 16)", "(default 6)", "(default 60)",
                    "(default 300)", "(default 10)", "(default 100)", "(default conversation_id)"):  # fmt: skip
        assert default in text, default
    assert "exit codes:" in text
    for code in ("0 ", "1 ", "2 ", "3 ", "130", "70 "):
        assert f"\n  {code}" in text, code
    assert "example:\n  export OPENAI_API_KEY=sk-..." in text
    assert "--retry-failed" in text
    assert "--stop-after-failures" in text


def test_validate_help_names_unchanged() -> None:
    text = bulk_update("validate", "--help").stdout
    assert "unchanged (the same as the job last" in text
    assert "planned" in text
    assert "exit codes:" in text


def test_the_emulators_help_matches_the_docs() -> None:
    """Every option in the docs' emulator table (docs/commands.md) is in --help, with the same
    default."""
    import re

    docs = (Path(__file__).parent.parent / "docs" / "commands.md").read_text()
    section = docs[docs.index("## `bulk-update emulator`") : docs.index("## `bulk-update demo`")]
    table = section[section.index("| option | meaning | default |") :]
    rows = re.findall(
        r"^\| `(--[a-z-]+)[^`]*`(?:, `(--[a-z-]+)[^`]*`)? \| .* \| (.*) \|$", table, re.M
    )
    assert len(rows) >= 8
    text = " ".join(bulk_update("emulator", "--help").stdout.split())
    for first, second, default in rows:
        for option in filter(None, (first, second)):
            assert option in text, option
        shown = [d.strip(" `") for d in default.split(",")]
        if shown and shown[0] not in {"none", "random"}:
            assert f"(default {shown[-1]})" in text, (first, default)


def test_the_emulator_without_its_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bulk_update.emulator
    from bulk_update import cli

    monkeypatch.setattr(bulk_update.emulator, "missing_dependency", lambda: "starlette")
    for command in (["emulator", "--port", "0"], ["demo"]):
        assert cli.main(command) == 2
        err = capsys.readouterr().err
        assert "pip install 'bulk-update[emulator]'" in err
        assert "starlette is not installed" in err
