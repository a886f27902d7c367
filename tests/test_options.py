"""Each option is declared once, beside its JobConfig field (``config.Option``); the CLI's
flags, the job file's keys, the Airflow operator's parameters, the sender's settings and the
docs (docs/commands.md, python-api.md, airflow.md) are made from or checked against those
declarations. Here: each surface offers every option it should, and a value given there reaches
the run."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from bulk_update.api.client import ClientSettings
from bulk_update.cli import (
    COMMANDS,
    _as_given,
    _as_revert,
    _as_validate,
    _job_options,
    build_parser,
)
from bulk_update.config import ENVIRONMENT, OPTIONS, JobConfig, default_of, flag_of
from bulk_update.exceptions import ConfigError
from bulk_update.send import SendSettings

DOCS = Path(__file__).parent.parent / "docs"
# The pages of the docs that hold `run`'s option table, the Python API and the operator.
COMMANDS_PAGE = (DOCS / "commands.md").read_text()
PYTHON_API_PAGE = (DOCS / "python-api.md").read_text()
AIRFLOW_PAGE = (DOCS / "airflow.md").read_text()
JOB_COMMANDS = {"run": _as_given, "validate": _as_validate, "revert": _as_revert}
# The CLI's own settings and what is not an option: not JobConfig's.
CLI_ONLY = {"help", "input", "job", "quiet", "verbose", "log_format", "log_file"}
HINTS = typing.get_type_hints(JobConfig)

# A value for each option that is not its default: as a flag takes it, and as the run has it.
TEXT: dict[str, tuple[str, object]] = {
    "output": ("x.csv", "x.csv"),
    "errors_output": ("e.csv", "e.csv"),
    "columns": ("a,b", ("a", "b")),
    "shard": ("1/2", (1, 2)),
    "storage_options": ("k=v", (("k", "v"),)),
    "base_url": ("https://api.example/v1", "https://api.example/v1"),
    "state_url": ("postgresql://u@db/jobs", "postgresql://u@db/jobs"),
    "pushgateway": ("http://gateway:9091", "http://gateway:9091"),
    "delimiter": (";", ";"),
    "quoting": ("none", "none"),
    "metrics_file": ("m.prom", "m.prom"),
    "keep_runs": ("3", 3),  # 7 is its default
    "resource": ("chat.completions", "chat.completions"),
    "number_columns": ("n", ("n",)),
    "boolean_columns": ("b", ("b",)),
    "where": ("model=gpt-4o", (("model", "gpt-4o"),)),
    "set_values": ("k={metadata.team}", (("k", "{metadata.team}"),)),
}
# The listing's options come with --list, a --set, a listable --resource and no INPUT: what
# each needs beside it, as flags and as a job file's keys.
WITH_LISTING: dict[str, tuple[list[str], dict[str, object]]] = {
    "listing": (["--resource", "chat.completions", "--set", "k=v"],
                {"resource": "chat.completions", "set-values": ["k=v"]}),
    "where": (["--resource", "chat.completions", "--list", "--set", "k=v"],
              {"resource": "chat.completions", "listing": True, "set-values": ["k=v"]}),
    "set_values": (["--resource", "chat.completions", "--list"],
                   {"resource": "chat.completions", "listing": True}),
}  # fmt: skip
BY_TYPE: dict[Any, tuple[str, object]] = {
    int: ("7", 7),
    int | None: ("7", 7),
    float: ("7.5", 7.5),
    str | None: ("x", "x"),
    str: ("x", "x"),
}


def sample(name: str) -> tuple[str, object]:
    """``name``'s sample value: its text (for a flag) and its value (for the run)."""
    return TEXT.get(name) or BY_TYPE[HINTS[name]]


def subparser(command: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[command]
            return found
    raise AssertionError("no subcommands")


def offered(command: str) -> dict[str, list[str]]:
    """The options a command's parser offers: dest -> its flags."""
    return {
        action.dest: list(action.option_strings)
        for action in subparser(command)._actions
        if action.dest not in CLI_ONLY
    }


def test_every_declared_flag_is_offered_under_its_name_and_every_flag_is_declared() -> None:
    """A flag of a job command is a JobConfig option, made from its declaration; every option
    declared with a group of flags is offered by a command (the table in cli/__init__.py)."""
    everywhere: set[str] = set()
    for command in JOB_COMMANDS:
        for dest, flags in offered(command).items():
            assert dest in OPTIONS, (command, dest)
            assert flags == [flag_of(dest)], (command, dest)
            assert OPTIONS[dest].group is not None
            everywhere.add(dest)
    assert everywhere == {name for name, declared in OPTIONS.items() if declared.group}


def test_commands_that_take_a_group_take_all_of_it() -> None:
    """A group is all or nothing: a command offering one of a group's flags offers all."""
    groups: dict[str, set[str]] = {}
    for name, declared in OPTIONS.items():
        if declared.group is not None:
            groups.setdefault(declared.group, set()).add(name)
    for command in JOB_COMMANDS:
        dests = set(offered(command))
        for group, names in groups.items():
            assert not dests & names or names <= dests, (command, group)
    assert len(COMMANDS["run"].groups) >= 10


@pytest.mark.parametrize("name", sorted(n for n, d in OPTIONS.items() if d.group))
def test_a_flag_given_reaches_the_run(name: str, tmp_path: Path) -> None:
    """Each flag, on the first job command that offers it, sets its JobConfig field."""
    command = next(c for c in JOB_COMMANDS if name in offered(c))
    argv = [command, "in.csv", "--output", "o.csv", flag_of(name)]
    if name in WITH_LISTING:
        argv = [command, "--output", "o.csv", *WITH_LISTING[name][0], flag_of(name)]
    expected: object = True
    if HINTS[name] is not bool:
        text, expected = sample(name)
        argv.append(text)
    config, _ = _job_options(build_parser().parse_args(argv), JOB_COMMANDS[command])
    assert getattr(config, name) == expected
    assert expected != default_of(name)


@pytest.mark.parametrize("name", sorted(set(OPTIONS) - {"input", "output", "api_key"}))
def test_every_option_is_a_job_file_key(name: str) -> None:
    """A job file (or the demo's mapping) takes each option under its flag's name."""
    value = True if HINTS[name] is bool else sample(name)[1]
    if isinstance(value, tuple):
        value = list(value)  # TOML has arrays
    extra: dict[str, object] = {"dry_run": True} if name == "check_server" else {}
    extra |= {"revert": True} if name in {"force", "blank_added_keys"} else {}
    given = {"output": "o.csv"} if name in WITH_LISTING else {"input": "in.csv", "output": "o.csv"}
    extra |= WITH_LISTING[name][1] if name in WITH_LISTING else {}
    options = {**given, name.replace("_", "-"): value, **extra}
    config = JobConfig.from_options(options, source="j.toml")
    assert getattr(config, name) not in (default_of(name), None)


def test_a_bound_is_the_flags_and_the_configs() -> None:
    """One bound declared: the parser refuses the flag, JobConfig the value, both naming it."""
    bounded = [name for name, declared in OPTIONS.items() if declared.bound]
    assert {"rpm", "concurrency", "timeout", "limit", "batch_rows"} <= set(bounded)
    for name in bounded:
        value = 0 if OPTIONS[name].bound != "not negative" else -1
        out_of_bound: dict[str, Any] = {name: value}
        with pytest.raises(ConfigError, match=f"^--{name.replace('_', '-')} must "):
            JobConfig(input="in.csv", output="o.csv", **out_of_bound)
        if OPTIONS[name].group is not None:
            command = next(c for c in JOB_COMMANDS if name in offered(c))
            with pytest.raises(SystemExit):
                subparser(command).parse_args(["in.csv", flag_of(name), str(value)])


def test_the_senders_settings_are_the_options_of_their_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SendSettings and ClientSettings take each option of their fields' names, as given; the
    base URL, key, organization and project resolved as the environment rule says."""
    for variable in ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    taken = {
        name
        for settings in (SendSettings, ClientSettings)
        for name in typing.get_type_hints(settings)
        if name in OPTIONS
    }
    assert {"rpm", "max_attempts", "timeout", "concurrency", "breaker_timeout"} <= taken
    values: dict[str, Any] = {name: sample(name)[1] for name in taken - set(ENVIRONMENT)}
    values |= {"rpm": 9, "concurrency": 3, "max_attempts": 2, "breaker_threshold": 4}
    config = JobConfig(input="in.csv", output="o.csv", api_key="sk-test",
                       organization="org-1", **values)  # fmt: skip
    sent = SendSettings.from_config(config)
    for name in taken:
        where = sent.client if name in typing.get_type_hints(ClientSettings) else sent
        want = {"base_url": "https://api.openai.com/v1", "api_key": "sk-test"}.get(name)
        assert getattr(where, name) == (want or getattr(config, name)), name


def docs_section(page: str, start: str, end: str) -> str:
    return page[page.index(start) : page.index(end, page.index(start))]


def test_the_docs_run_table_lists_every_flag_with_its_default() -> None:
    """The option table of `bulk-update run` (docs/commands.md) has a row for each of its
    flags (and none that is not one), and says each declared default."""
    section = docs_section(COMMANDS_PAGE, "## `bulk-update run`", "## `bulk-update validate`")
    rows = re.findall(r"^\| (`-.*?`) \| .* \| (.*) \|$", section, re.M)
    in_readme = {
        flag: default for cell, default in rows for flag in re.findall(r"`(-[-\w]+)", cell)
    }
    flags = {flag for action in subparser("run")._actions for flag in action.option_strings}
    assert set(in_readme) == flags - {"-h", "--help"}
    for dest in offered("run"):
        default = default_of(dest)
        if default not in (None, False, ()):
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            if default is dataclasses.MISSING:
                shown = "required"
            assert re.search(rf"(?<![\w.]){re.escape(shown)}(?![\w.])", in_readme[flag_of(dest)]), (
                dest
            )


def readme_names(text: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", text))


def test_the_docs_name_the_options_that_are_no_flag() -> None:
    """The Python API's paragraph (docs/python-api.md) names each JobConfig field that `run`
    has no flag for."""
    start = PYTHON_API_PAGE.index("`JobConfig` is a frozen, keyword-only dataclass")
    paragraph = PYTHON_API_PAGE[start : PYTHON_API_PAGE.index("\n\n", start)]
    flagless = set(OPTIONS) - set(offered("run")) - {"input"}
    assert flagless <= readme_names(paragraph)


OPERATOR = """
import inspect, json
from bulk_update.airflow.operator import BulkUpdateOperator, JOB_OPTIONS
from bulk_update.config import OPTIONS, default_of

given = json.loads(INPUT)
found = {}
signature = inspect.signature(BulkUpdateOperator)
found["parameters"] = {name: repr(p.default) for name, p in signature.parameters.items()
                       if p.kind is p.KEYWORD_ONLY}
found["templated"] = list(BulkUpdateOperator.template_fields)
operator = BulkUpdateOperator(task_id="t", openai_conn_id=None, **given)
config = operator.job_config()
found["config"] = {name: getattr(config, name) for name in OPTIONS}
other = dict(given, columns=None, metadata_column="m")  # the other of the pair (ONE_OF)
config = BulkUpdateOperator(task_id="t1", openai_conn_id=None, **other).job_config()
found["config"]["metadata_column"] = config.metadata_column
for wrong in ({"rmp": 1, "max_attempt": 2}, {"api_key": "sk-x"}):
    try:
        BulkUpdateOperator(task_id="t2", input="in.csv", results="r.csv", **wrong)
    except TypeError as exc:
        found.setdefault("refused", []).append(str(exc))
try:
    BulkUpdateOperator(task_id="t3", input="in.csv", results="r.csv", asset_events="sometimes")
except ValueError as exc:
    found["refused"].append(str(exc))
# The listing's options, with no input (they exclude one, and a shard).
config = BulkUpdateOperator(
    task_id="t4", openai_conn_id=None, results="r.csv", resource="chat.completions",
    listing=True, where=["model=gpt-4o", "metadata.team=a"], set_values={"k": "{metadata.team}"},
).job_config()
found["listing"] = [config.listing, config.where, config.set_values, config.input]
# A fixed results path is the whole job's outlet; a shard's is the job's asset.
found["outlets"] = [
    [outlet.uri for outlet in BulkUpdateOperator(task_id=f"t{index}", input="in.csv",
                                                 results="/data/r.csv", **shard).outlets]
    for index, shard in enumerate(({}, {"shard": "0/2"}))
]
print(json.dumps(found))
"""


def test_the_operator_takes_every_option_it_should(tmp_path: Path) -> None:
    """The operator's parameters are the options declared for Airflow (under their names,
    ``results`` for ``output``) with JobConfig's defaults (``drain_timeout``: 3 s), then its
    own; each given reaches the run's JobConfig; the templated ones are its template fields; a
    name it does not take fails, naming it."""
    pytest.importorskip("airflow", reason="the airflow extra is not installed")
    taken = {name for name, declared in OPTIONS.items() if declared.airflow}
    assert {"input", "output", "rpm", "storage_options"} <= taken
    assert not {"api_key", "state_url", "revert"} & taken
    given: dict[str, object] = {"input": "in.csv", "results": "out/r.csv"}
    for name in taken - {"input", "output"} - set(WITH_LISTING):
        value = True if HINTS[name] is bool else sample(name)[1]
        given[name] = list(value) if isinstance(value, tuple) else value
    given["storage_options"] = {"k": "v"}
    del given["metadata_column"]  # with columns: below, instead of them
    given["shard"] = "1/2"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AIRFLOW"))}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               OPENAI_API_KEY="sk-env")  # fmt: skip
    script = OPERATOR.replace("INPUT", repr(json.dumps(given)))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.splitlines()[-1])

    names = ["results" if n == "output" else n for n in OPTIONS if n in taken]
    own = ["openai_conn_id", "store_conn_id", "fail_on_row_errors", "asset_events"]
    assert list(found["parameters"]) == names + own
    for name in taken - {"input", "output"}:
        default = 3.0 if name == "drain_timeout" else default_of(name)
        assert found["parameters"][name] == repr(default), name
    assert found["parameters"]["results"] == repr(inspect.Parameter.empty)
    assert found["parameters"]["input"] == repr("")  # none with listing=True

    config = found["config"]
    skipped = {"input", "output", "shard", "storage_options", "columns", *WITH_LISTING}
    for name in taken - skipped:
        assert config[name] == given.get(name, "m"), name
    assert found["listing"] == [
        True,
        [["model", "gpt-4o"], ["metadata.team", "a"]],
        [["k", "{metadata.team}"]],
        "",
    ]
    assert (config["input"], config["output"]) == ("in.csv", "out/r.csv")
    assert config["shard"] == [1, 2]
    assert config["storage_options"] == [["k", "v"]]
    assert config["columns"] == ["a", "b"]

    templated = ["results" if n == "output" else n for n in OPTIONS if OPTIONS[n].templated]
    assert found["templated"] == templated
    assert found["refused"] == [
        "BulkUpdateOperator (task_id: t2): unknown parameter(s) max_attempt, rmp "
        "(did you mean max_attempts?)",
        "BulkUpdateOperator (task_id: t2): unknown parameter(s) api_key",
        "BulkUpdateOperator (task_id: t3): asset_events must be 'always' or 'updated', got "
        "'sometimes'",
    ]
    assert found["outlets"] == [["file:///data/r.csv"], ["x-bulk-update://t1"]]

    start = AIRFLOW_PAGE.index("Its parameters are the job's options, `JobConfig`'s fields")
    paragraph = AIRFLOW_PAGE[start : AIRFLOW_PAGE.index("| parameter | meaning | default |", start)]
    not_taken = paragraph[paragraph.index("Not taken:") :].split(". ")[0]
    assert readme_names(not_taken) == set(OPTIONS) - taken
    sentence = AIRFLOW_PAGE[AIRFLOW_PAGE.index("are templated: `{{ ds }}`") - 200 :]
    sentence = sentence[: sentence.index("are templated")].split("\n\n")[-1]
    assert readme_names(sentence) == set(found["templated"])
