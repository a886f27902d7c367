"""Job files: the ``run`` options in TOML, so a scheduled job is one reviewed file.

    input = "exports/conversations.csv"
    output = "out/results.parquet"
    errors-output = "out/errors.csv"
    columns = ["tier", "region"]
    rpm = 3000
    storage-options = { aws_region = "eu-west-1" }   # for s3://, gs://, az:// paths

Keys are the long option names (``errors-output`` or ``errors_output``). Relative paths are
relative to the directory the command runs in, as on the command line. Flags override the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bulk_update.exceptions import ConfigError

# Job-file keys that are not JobConfig fields but CLI settings.
CLI_KEYS = frozenset({"quiet", "log_format", "log_file"})


def load_job_file(path: str, config_fields: frozenset[str]) -> dict[str, Any]:
    """The file's options with ``-`` turned into ``_``; unknown keys are an error."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML job file: {exc}") from None
    options = {key.replace("-", "_"): value for key, value in raw.items()}
    unknown = sorted(set(options) - config_fields - CLI_KEYS - {"api_key"})
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}")
    if "api_key" in options:
        raise ConfigError(f"{path}: the API key never goes in a file; set OPENAI_API_KEY")
    if isinstance(options.get("columns"), str):
        options["columns"] = [c.strip() for c in options["columns"].split(",") if c.strip()]
    if options.get("columns") is not None:
        options["columns"] = tuple(options["columns"])
    storage = options.get("storage_options")
    if isinstance(storage, dict):
        options["storage_options"] = tuple((str(k), str(v)) for k, v in storage.items())
    shard = options.get("shard")
    if isinstance(shard, str):
        index, _, count = shard.partition("/")
        try:
            options["shard"] = (int(index), int(count))
        except ValueError:
            raise ConfigError(f'{path}: shard must be "K/N", got {shard!r}') from None
    elif isinstance(shard, list):
        options["shard"] = tuple(shard)
    return options
