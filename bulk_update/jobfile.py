"""Job files: the ``run`` options in TOML, so a scheduled job is one reviewed file.

    input = "exports/conversations.csv"
    output = "out/results.parquet"
    errors-output = "out/errors.csv"
    columns = ["tier", "region"]
    rpm = 3000
    storage-options = { aws_region = "eu-west-1" }   # for s3://, gs://, az:// paths

Keys are the long option names (``errors-output`` or ``errors_output``). Relative paths are
relative to the directory the command runs in, as on the command line. Flags override the file
(``overridden``), and both the environment (``config.given_or_environment``). Values are
checked by ``JobConfig.from_options``, as the CLI's and the Python API's are.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from bulk_update.config import JOB_NAME, ONE_OF
from bulk_update.exceptions import ConfigError

__all__ = ["load_job_file", "overridden", "split_cli_settings", "store_of"]

# Job-file keys that are not JobConfig fields but CLI settings, and the values each takes.
CLI_KEYS: dict[str, tuple[type, ...]] = {
    "quiet": (bool,), "verbose": (bool,), "log_format": (str,), "log_file": (str,),
}  # fmt: skip
LOG_FORMATS = ("text", "json")


def load_job_file(path: str) -> dict[str, Any]:
    """The file's options, keys with ``-`` turned into ``_``. The key never goes in a file."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such job file{_name_hint(path)}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a job file{_name_hint(path)}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML job file: {exc}") from None
    options = {key.replace("-", "_"): value for key, value in raw.items()}
    if "api_key" in options:
        raise ConfigError(f"{path}: the API key never goes in a file; set OPENAI_API_KEY")
    return options


def _name_hint(path: str) -> str:
    """--job is a job file, never a job's name: a job's name given there is told so."""
    if path.endswith(".toml") or not JOB_NAME.fullmatch(path):
        return ""
    return f" (--job takes a job file; for the job named {path}, give --job-name {path})"


def store_of(path: str, flags: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What ``history``, ``status`` and ``report`` take from a job file, as ``run`` reads it:
    the job's name (its ``job-name``, else the file's name) and where its store is
    (``state-dir``, ``state-url``, ``output``), the ``flags`` given (``job_name``,
    ``state_dir``, ``state_url``) laid over them."""
    options = overridden(load_job_file(path), flags)
    for key in ("job_name", "state_dir", "state_url", "output"):
        value = options.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(
                f"{path}: {key.replace('_', '-')} must be text, got {type(value).__name__}"
            )
    name = options.get("job_name") or Path(path).stem
    return name, {key: options.get(key) for key in ("state_dir", "state_url", "output")}


def overridden(options: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """The job file's ``options`` with the ``flags`` given laid over them. A flag replaces the
    file's value of its option and of the other option of its pair (ONE_OF): ``--state-dir``
    drops the file's ``state-url``, ``--metadata-column`` its ``columns``."""
    merged = dict(options)
    for first, second in ONE_OF:
        if first in flags or second in flags:
            merged.pop(first, None)
            merged.pop(second, None)
    merged.update(flags)
    return merged


def split_cli_settings(options: dict[str, Any], source: str) -> dict[str, Any]:
    """Take the CLI's own settings (quiet, log-format, log-file) out of ``options``, checked."""
    settings = {key: options.pop(key) for key in list(options) if key in CLI_KEYS}
    for key, value in settings.items():
        if not isinstance(value, CLI_KEYS[key]):
            wanted = "true or false" if CLI_KEYS[key] == (bool,) else "text"
            raise ConfigError(f"{source}: {key.replace('_', '-')} must be {wanted}, got {value!r}")
    if settings.get("log_format", "text") not in LOG_FORMATS:
        raise ConfigError(
            f"{source}: log-format must be one of {', '.join(LOG_FORMATS)}, "
            f"got {settings['log_format']!r}"
        )
    return settings
