"""The input rules of tests/test_input_rules_keys_and_values.py for a JSON Lines file on object
storage (s3://, moto on loopback), which polars reads, not bulk_update.jsonlines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import StartEmulator
from tests.helpers import ID, by_row, cli
from tests.test_input_rules_keys_and_values import _emulator
from tests.test_object_storage import BUCKET
from tests.test_object_storage import s3 as s3  # the fixture


def test_a_remote_json_lines_file_follows_the_same_rule(
    s3: tuple[str, Any], start_emulator: StartEmulator, tmp_path: Path
) -> None:
    """Read by polars (s3://), a JSON Lines file's objects and arrays are nested values too:
    their rows are invalid, asked for or not (unasked, one warning before sending names the
    column and --columns); the run goes on; keys trimmed."""
    endpoint, client = s3
    lines = [
        {"conversation_id": ID(0), " tier ": " a ", "o": {"k": 1}},
        {"conversation_id": ID(1), " tier ": "  ", "o": None},
    ]
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()
    client.put_object(Bucket=BUCKET, Key="in/rows.jsonl", Body=body)
    emu = _emulator(start_emulator, tmp_path, 2)
    options = [
        f"--storage-option=aws_endpoint_url={endpoint}",
        "--storage-option=aws_access_key_id=testing",
        "--storage-option=aws_secret_access_key=testing",
        "--storage-option=aws_region=us-east-1",
        "--storage-option=aws_allow_http=true",
    ]
    args = ("run", f"s3://{BUCKET}/in/rows.jsonl", "--base-url", emu.base_url,
            *options)  # fmt: skip
    for output, flags in (("unasked.csv", ()), ("asked.csv", ("--columns", "tier,o"))):
        done = cli(*args, "--output", str(tmp_path / output), *flags)
        assert done.returncode == 1, done.stderr
        warned = "column 'o' is a struct: its rows with a value are invalid (metadata values are"
        assert warned in done.stderr, done.stderr
        rows = by_row(tmp_path / output)
        codes = (rows[1]["error_code"], rows[2]["error_code"])
        assert codes == ("unsupported_type", "no_metadata")
    assert emu.admin(f"conversations/{ID(0)}")["metadata"] == {}
    assert emu.stats()["requests"] == 0
