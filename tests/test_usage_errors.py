"""A user's mistakes are usage errors: exit 2, one line naming the option or the path, before
anything is sent. The job file, the Python API and the CLI check options in one place
(``JobConfig``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bulk_update import ConfigError, JobConfig
from tests.conftest import StartEmulator
from tests.helpers import cli, write_input


def one_line_usage_error(done: object, *fragments: str) -> None:
    returncode = getattr(done, "returncode", None)
    stderr: str = getattr(done, "stderr", "")
    assert returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bulk-update: error: "), stderr
    assert "Traceback" not in stderr
    assert "internal error" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], stderr


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"columns": "tier,region"}, "columns must be a list of text"),
        ({"rpm": 1.5}, "rpm must be a whole number, got 1.5 (float)"),
        ({"rpm": "3000"}, "rpm must be a whole number, got '3000' (str)"),
        ({"full": "yes"}, "full must be true or false, got 'yes' (str)"),
        ({"limit": True}, "limit must be a whole number (or left out), got True (bool)"),
        ({"timeout": "10"}, "timeout must be a number"),
        ({"shard": (0, "4")}, "shard must be a list of 2"),
        ({"id_column": 7}, "id-column must be text"),
        ({"api_key": 12345}, "api-key must be text (or left out), got (hidden)"),
        ({"stop_after_failures": -1}, "--stop-after-failures must not be negative"),
        ({"delimiter": ";;"}, "--delimiter must be one character"),
    ],
)
def test_the_python_api_refuses_loose_types(options: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        JobConfig(input="in.csv", output="out.csv", **options)  # type: ignore[arg-type]
    assert fragment in str(info.value)
    assert "12345" not in str(info.value)  # a key is never shown, even a wrong one


def test_from_options_is_the_one_constructor() -> None:
    config = JobConfig.from_options(
        {"input": "in.csv", "output": "o.csv", "columns": "a, b", "shard": "1/4",
         "storage-options": {"aws_region": "eu-west-1"}, "errors-output": "e.csv"}
    )  # fmt: skip
    assert config.columns == ("a", "b")
    assert config.shard == (1, 4)
    assert config.storage_options == (("aws_region", "eu-west-1"),)
    assert config.errors_output == "e.csv"
    with pytest.raises(ConfigError, match="unknown option"):
        JobConfig.from_options({"input": "i.csv", "output": "o.csv", "rmp": 5})
    with pytest.raises(ConfigError, match="--output is required"):
        JobConfig.from_options({"input": "i.csv"})


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('rpm = "3000"', "rpm must be a whole number, got '3000' (str)"),
        ("rpm = 1.5", "rpm must be a whole number, got 1.5"),
        ('full = "yes"', "full must be true or false"),
        ("limit = true", "limit must be a whole number"),
        ("columns = 5", "columns must be a list of text"),
        ('quiet = "no"', "quiet must be true or false"),
        ('log-format = "xml"', "log-format must be one of text, json"),
        ("rmp = 3000", "unknown option(s) rmp"),
    ],
)
def test_a_job_file_value_of_the_wrong_type_is_exit_2(
    tmp_path: Path, line: str, fragment: str
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 3)
    job = tmp_path / "job.toml"
    job.write_text(f'input = "{source}"\noutput = "{tmp_path / "r.csv"}"\n{line}\n')
    done = cli("run", "--job", str(job), "--base-url", "http://127.0.0.1:9/v1")
    one_line_usage_error(done, str(job), fragment)
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        ("a-file/results.csv", "a-file is a file, not a directory"),
        ("a-file/deeper/results.csv", "a-file is a file, not a directory"),
        ("a-directory", "is a directory; name a file in it"),
    ],
)
def test_a_bad_output_path_is_refused_before_anything_is_sent(
    start_emulator: StartEmulator, tmp_path: Path, output: str, fragment: str
) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 20)
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "a-directory.csv").mkdir()
    emu = start_emulator("--preload", str(source))
    target = tmp_path / output if output != "a-directory" else tmp_path / "a-directory.csv"
    for flag in ("--output", "--errors-output"):
        other = tmp_path / "ok.csv"
        outputs = (flag, str(target)) + (("--output", str(other)) if flag != "--output" else ())
        done = cli("run", str(source), *outputs, "--base-url", emu.base_url)
        one_line_usage_error(done, flag, fragment)
    assert emu.stats()["requests"] == 0


def test_a_log_file_in_a_missing_directory_is_exit_2(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_input(source, 3)
    log_file = tmp_path / "no-such-dir" / "log.jsonl"
    done = cli("validate", str(source), "--output", str(tmp_path / "p.csv"),
               "--log-file", str(log_file))  # fmt: skip
    one_line_usage_error(done, "--log-file", "No such file or directory")


def test_emulator_preload_of_a_file_without_the_column_is_exit_2(tmp_path: Path) -> None:
    wrong = tmp_path / "ids.csv"
    wrong.write_text("id,x\nconv_1,a\n")
    done = cli("emulator", "--port", "0", "--preload", str(wrong))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"bulk-update emulator: --preload {wrong}: the file has no 'conversation_id' column "
        "(columns: 'id', 'x'): give --id-column the column that holds the conversation IDs"
    )
    missing = cli("emulator", "--port", "0", "--preload", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2
    assert "no such file" in missing.stderr


def test_outputs_get_the_mode_of_any_new_file(
    start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Results and errors files are not left 0600 by their temporary file: the user's umask
    decides, as for every other file the job writes."""
    source = tmp_path / "in.csv"
    write_input(source, 5)
    emu = start_emulator("--preload", str(source))
    outputs = {
        "run": ("run", "--base-url", emu.base_url),
        "validate": ("validate",),
    }
    for umask in (0o022, 0o027):
        for name, command in outputs.items():
            results = tmp_path / f"{name}-{umask:o}.csv"
            errors = tmp_path / f"{name}-{umask:o}-errors.parquet"
            old = os.umask(umask)
            try:
                done = cli(command[0], str(source), "--output", str(results),
                           "--errors-output", str(errors), *command[1:])  # fmt: skip
            finally:
                os.umask(old)
            assert done.returncode == 0, done.stderr
            for path in (results, errors):
                assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, (path, umask)


@pytest.mark.parametrize(
    ("files", "args", "fragments"),
    [
        ({"in.csv": "conversation_id;tier\nconv_a;x\n"}, ["in.csv"],
         ["no ID column 'conversation_id'", "looks ';'-separated: give --delimiter ';'"]),
        ({"in.csv": "id,tier\nconv_a,x\n"}, ["in.csv"],
         ["give --id-column the column that holds the conversation IDs"]),
        ({"job.toml": 'input = "in.csv"\noutput = "o.csv"\nconcurency = 4\n',
          "in.csv": "conversation_id,t\nconv_a,x\n"}, ["--job", "job.toml"],
         ["unknown option(s) concurency (did you mean concurrency?)"]),
        ({"part-1.csv": "conversation_id,t\nconv_a,x\n",
          "part-2.csv": "conversation_id,t\nconv_b,x\n"}, ["part-1.csv", "part-2.csv"],
         ["unrecognized arguments: part-2.csv", "quote it"]),
        ({"part-1.csv": "conversation_id,t\nconv_a,x\n",
          "part-2.csv": "conversation_id,t,u\nconv_b,x,y\n"}, ["part-*.csv"],
         ["part-2.csv: its columns ('conversation_id', 't', 'u') differ from those of",
          "part-1.csv"]),
    ],
)  # fmt: skip
def test_a_mistake_gets_a_hint_of_what_to_do(
    tmp_path: Path, files: dict[str, str], args: list[str], fragments: list[str]
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    output = [] if "--job" in args else ["--output", "o.csv"]
    done = cli("validate", *args, *output, cwd=tmp_path)
    one_line_usage_error(done, *fragments)  # argparse's own errors too: one line, no usage


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--base-url", "http://127.0.0.1:99999/v1", "Port out of range"),
        ("--base-url", "http://127.0.0.1:abc/v1", "is not a valid URL"),
        ("--base-url", "http://[::1", "Invalid IPv6 URL"),
        ("--state-url", "postgresql://bulk:x@[::1/postgres", "--state-url: not a valid URL"),
        ("--output", "s3://[::1/x.csv", "--output s3://[::1/x.csv: not a valid URL"),
    ],
)
def test_a_malformed_url_is_a_usage_error(
    tmp_path: Path, option: str, value: str, fragment: str
) -> None:
    """Once an exit 70 (an OverflowError or ValueError out of the URL parser)."""
    (tmp_path / "in.csv").write_text("conversation_id,t\nconv_a,x\n")
    output = [] if option == "--output" else ["--output", "o.csv"]
    done = cli("run", "in.csv", *output, option, value, cwd=tmp_path)
    one_line_usage_error(done, fragment)
