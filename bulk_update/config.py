"""The one configuration object: the CLI, job files and Airflow all build a ``JobConfig``.

The options' defaults are the numbers of ``_constants.py`` (where the API's limits are too);
every caller takes them from ``JobConfig``'s fields, none repeats them.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from bulk_update._constants import (
    AIRFLOW_DRAIN_TIMEOUT_S,
    DEFAULT_BASE_URL,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_BREAKER_TIMEOUT_S,
    DEFAULT_CONCURRENCY,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_KEEP_RUNS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_METRICS_INTERVAL_S,
    DEFAULT_PAGE_SIZE,
    DEFAULT_RPM,
    DEFAULT_STOP_AFTER_FAILURES,
    DEFAULT_STORE_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
)
from bulk_update.exceptions import ConfigError
from bulk_update.paths import is_remote
from bulk_update.resources import (
    DEFAULT_RESOURCE,
    RESOURCES,
    Resource,
    check_resource,
    resource_named,
)
from bulk_update.store.url import ENV as STATE_URL_ENV
from bulk_update.store.url import check_url as check_state_url
from bulk_update.store.url import redact as redact_url

if TYPE_CHECKING:
    from bulk_update.store import StoreLocation

__all__ = [
    "ENVIRONMENT",
    "JOB_NAME",
    "ONE_OF",
    "OPTIONS",
    "JobConfig",
    "Option",
    "check_one_of",
    "default_of",
    "flag_of",
    "given_or_environment",
    "parse_columns",
    "parse_shard",
    "refuse_unknown",
    "store_directory",
]

# Rows read, planned and journaled together (at most; batches are sized by bytes).
DEFAULT_BATCH_ROWS = 20_000

JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

T = TypeVar("T")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str) -> str:
    """The base URL without a trailing slash; plain http only to a loopback host."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (checked: a port that is not a number from 0 to 65535)
    except ValueError as exc:
        raise ConfigError(f"base URL {url!r} is not a valid URL ({exc})") from None
    if parts.username is not None or parts.password is not None:
        # Not echoed: it may hold a password. The key goes as a bearer token, never in the URL.
        raise ConfigError("the base URL must not hold a user name or password")
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(f"base URL {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"refusing plain http to {parts.hostname}: the API key would cross the network in "
            "clear text (http is allowed only to a loopback host, such as the emulator)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"base URL {url!r} must not have a query or fragment")
    return url.rstrip("/")


# The options the environment can give, each with its variable. One rule for all, in
# ``given_or_environment``: a value given (a flag; a job file's key; an operator's parameter; a
# JobConfig field) beats the variable, which beats the option's default. The CLI lays its flags
# over the job file first (``jobfile.overridden``), so a flag beats the file, and both beat the
# environment. ($JOB_COMPLETION_INDEX is read only when asked for, by ``--shard index/N``.)
ENVIRONMENT: dict[str, str] = {
    "api_key": "OPENAI_API_KEY",
    "base_url": "OPENAI_BASE_URL",
    "organization": "OPENAI_ORG_ID",
    "project": "OPENAI_PROJECT_ID",
    "state_url": STATE_URL_ENV,
}

# Options that answer one question each in their own way: at most one of a pair is given. A
# store given as --state-dir is a store given: $BULK_UPDATE_STATE_URL is then not read.
ONE_OF: tuple[tuple[str, str], ...] = (
    ("columns", "metadata_column"),
    ("state_dir", "state_url"),
)


def _is_given(value: object) -> bool:
    """None or empty text is no value (as an empty variable is no value)."""
    return value is not None and value != ""


def given_or_environment(name: str, given: Mapping[str, Any]) -> str | None:
    """Option ``name`` (a key of ENVIRONMENT) as the run uses it: its value in ``given`` (the
    options given, by name); else, if the other option of its pair (ONE_OF) is not given
    either, its variable's; else None, and the option's default applies."""
    value = given.get(name)
    if _is_given(value):
        return str(value)
    others = [b if a == name else a for a, b in ONE_OF if name in (a, b)]
    if any(_is_given(given.get(other)) for other in others):
        return None
    return os.environ.get(ENVIRONMENT[name]) or None


def check_one_of(given: Mapping[str, Any]) -> None:
    """Refuse the two options of a pair (ONE_OF) given together, naming both."""
    for first, second in ONE_OF:
        if _is_given(given.get(first)) and _is_given(given.get(second)):
            shown = f"--{first.replace('_', '-')} and --{second.replace('_', '-')}"
            raise ConfigError(f"{shown} exclude each other: give one")


Bound = Literal["at least 1", "positive", "not negative"]


@dataclass(frozen=True)
class Option:
    """An option, declared once beside its ``JobConfig`` field; every surface is derived from
    it: the CLI's flag (``cli/_options.py``), the Airflow operator's parameter, the checks.

    ``group``: the CLI group of options that offers its flag (None: no flag); ``help``, its
    ``--help`` text (``{default}`` is the default, shown); ``flag``, when not ``--NAME``;
    ``metavar``; ``parse``: a flag's (or a job file's) text to its value; ``repeatable``: the
    flag may be given again, each a value. ``bound`` and ``check`` are enforced by JobConfig
    (the CLI's parser refuses what is out of ``bound`` too). ``airflow``: the operator takes
    it (``airflow_name``: under that name), ``templated`` (a template field),
    ``airflow_default``: its default there, when not JobConfig's."""

    help: str = ""
    group: str | None = None
    flag: str | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    repeatable: bool = False
    bound: Bound | None = None
    check: Callable[[Any], object] | None = None
    airflow: bool = True
    airflow_name: str | None = None
    templated: bool = False
    airflow_default: Any = None  # None: JobConfig's


def declare(help: str = "", **how: Any) -> dict[str, Option]:
    """A field's metadata: its Option (see there)."""
    return {"option": Option(help, **how)}


def option(default: T, help: str = "", *, secret: bool = False, **how: Any) -> T:
    """A JobConfig field with its default and its declaration (``Option``'s fields, by name;
    ``secret``: not in repr)."""
    made: T = field(default=default, repr=not secret, metadata={"option": Option(help, **how)})
    return made


def parse_columns(text: str) -> tuple[str, ...]:
    """``--columns a,b``: the names, trimmed; at least one."""
    columns = tuple(c.strip() for c in text.split(",") if c.strip())
    if not columns:
        raise ConfigError("--columns names no column")
    return columns


# Set by Kubernetes in each pod of an Indexed Job: its completion index, 0 to completions - 1.
COMPLETION_INDEX_ENV = "JOB_COMPLETION_INDEX"


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard K/N`` as ``(K, N)``; the range is checked by JobConfig. ``index/N`` takes K
    from $JOB_COMPLETION_INDEX (a pod of a Kubernetes Indexed Job)."""
    index, slash, count = text.partition("/")
    if index == "index":
        index = os.environ.get(COMPLETION_INDEX_ENV, "")
        if not index:
            raise ConfigError(
                f"--shard {text}: ${COMPLETION_INDEX_ENV} is not set: index/N takes K from it "
                "(Kubernetes sets it in each pod of an Indexed Job); elsewhere give K/N"
            )
    try:
        if not slash:
            raise ValueError(text)
        return int(index), int(count)
    except ValueError:
        raise ConfigError(f"--shard: expected K/N with 0 <= K < N, got {text!r}") from None


def _pair(flag: str) -> Callable[[str], tuple[str, str]]:
    """A parser of ``KEY=VALUE`` (the key trimmed; the value as given: it may hold ``=``)."""

    def parse(text: str) -> tuple[str, str]:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            # Not the value: a storage option's may be a secret.
            raise ConfigError(f"{flag}: expected KEY=VALUE, got {text.split('=')[0]!r}")
        return key.strip(), value

    return parse


parse_where = _pair("--where")
parse_set = _pair("--set")
parse_storage_option = _pair("--storage-option")


def check_delimiter(value: str) -> None:
    if len(value) != 1:
        raise ConfigError(f"--delimiter must be one character, got {value!r}")


QUOTINGS = ("csv", "none")


def check_quoting(value: str) -> None:
    if value not in QUOTINGS:
        raise ConfigError(f"--quoting must be csv or none, got {value!r}")


def check_shard(shard: tuple[int, int]) -> None:
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
        raise ConfigError(f"--shard {index}/{count}: K must be from 0 to N-1")


def check_job_name(name: str) -> None:
    if not JOB_NAME.fullmatch(name):
        raise ConfigError(
            f"--job-name {name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


def check_pushgateway(url: str) -> None:
    if not re.match(r"https?://[^/\s]+", url):
        raise ConfigError(f"--pushgateway {url!r}: give the Pushgateway's URL, http://HOST:PORT")


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything one run needs. Build it directly, from a job file, or from CLI flags.

    ``api_key``, ``organization``, ``project``, ``base_url`` and ``state_url`` not given default
    to the environment (ENVIRONMENT: ``OPENAI_API_KEY``, ...) when the job runs; ``state_url``
    not when ``state_dir`` is given. The key is never shown by ``repr``.

    Each field declares how it is offered (``option``, ``Option``): its flag and the group of
    flags it is in, its help, its bound and check, whether the Airflow operator takes it. Within
    a group, ``--help`` lists the flags in the fields' order.
    """

    input: str = field(default="", metadata=declare(templated=True))  # "": --list
    output: str = field(
        metadata=declare(
            "results file: .parquet, .csv or .jsonl (required)",
            group="files", metavar="PATH", airflow_name="results", templated=True,
        )
    )  # fmt: skip
    errors_output: str | None = option(
        None,
        "failed, invalid and unprocessed rows in the input's own columns, "
        "plus status, error_code, error_message: fix and feed back",
        group="files", metavar="PATH", templated=True,
    )  # fmt: skip
    # Which objects the job updates (``resources.py``): conversations unless told.
    resource: str = option(
        DEFAULT_RESOURCE,
        "which objects: " + ", ".join(RESOURCES) + " (default {default})",
        group="resource", metavar="NAME", check=check_resource,
    )  # fmt: skip
    # None: the resource's (``resolved_id_columns``).
    id_column: str | None = option(
        None,
        "the ID column (default conversation_id); another --resource's: completion_id, "
        "vector_store_id, or for vector_stores.files two, VS,FILE (vector_store_id,file_id)",
        group="mapping", metavar="NAME",
    )  # fmt: skip
    columns: tuple[str, ...] | None = option(
        None, "the metadata columns (default: every column but the ID column)",
        group="mapping", metavar="A,B,...", parse=parse_columns,
    )  # fmt: skip
    metadata_column: str | None = option(
        None, "instead: one column holding a JSON object of key/value pairs",
        group="mapping", metavar="NAME",
    )  # fmt: skip
    # Typed attributes (vector_stores.files): a text input's columns read as numbers, booleans.
    number_columns: tuple[str, ...] | None = option(
        None,
        "vector_stores.files: these text columns' values are sent as JSON numbers (a cell "
        "that is not a number is invalid)",
        group="mapping", metavar="A,B,...", parse=parse_columns,
    )  # fmt: skip
    boolean_columns: tuple[str, ...] | None = option(
        None,
        "vector_stores.files: these text columns' values are sent as JSON booleans (true or "
        "false; a cell that is neither is invalid)",
        group="mapping", metavar="A,B,...", parse=parse_columns,
    )  # fmt: skip
    base_url: str | None = option(
        None, "API base URL (default $OPENAI_BASE_URL, else https://api.openai.com/v1)",
        group="sending", metavar="URL", check=check_base_url,
    )  # fmt: skip
    rpm: int = option(
        DEFAULT_RPM, "requests per minute for the whole job (default {default})",
        group="sending", metavar="N", bound="at least 1",
    )  # fmt: skip
    concurrency: int = option(
        DEFAULT_CONCURRENCY, "requests in flight at most (default {default})",
        group="sending", metavar="N", bound="at least 1",
    )  # fmt: skip
    max_attempts: int = option(
        DEFAULT_MAX_ATTEMPTS,
        "attempts per row for transient failures; 429 waits excluded (default {default})",
        group="sending", metavar="N", bound="at least 1",
    )  # fmt: skip
    timeout: float = option(
        DEFAULT_TIMEOUT_S, "per-request timeout in seconds (default {default})",
        group="sending", metavar="S", bound="positive",
    )  # fmt: skip
    dry_run: bool = option(
        False, "read, validate and plan; send nothing; still write the results",
        group="dry_run",
    )  # fmt: skip
    restart: bool = option(
        False, "ignore saved progress and start over (the old run is kept in the store)",
        group="restart",
    )  # fmt: skip
    # (K, N): rows whose ID hashes to K modulo N
    shard: tuple[int, int] | None = option(
        None,
        "only rows whose ID hashes (CRC-32) to K modulo N (0-based); the running "
        "shards of a job share its --rpm; --concurrency is each shard's",
        group="shard", metavar="K/N", parse=parse_shard, check=check_shard,
    )  # fmt: skip
    # Rows from the API's listing instead of INPUT (``listing.py``).
    listing: bool = option(
        False,
        "take the rows from the API's listing of --resource instead of INPUT: the objects "
        "--where selects, each given the --set values; recorded before anything is sent",
        group="listing", flag="--list",
    )  # fmt: skip
    where: tuple[tuple[str, str], ...] = option(
        (),
        "with --list: only the objects whose FIELD is VALUE (repeatable): chat.completions "
        "metadata.KEY, model; vector_stores metadata.KEY; vector_stores.files "
        "vector_store_id (required, one or more), status, attributes.KEY",
        group="listing", metavar="FIELD=VALUE", parse=parse_where, repeatable=True,
        templated=True,
    )  # fmt: skip
    set_values: tuple[tuple[str, str], ...] = option(
        (),
        "with --list: a key to set on every listed object (repeatable): a constant "
        "(reviewed=yes) or a field of the object in braces (owner={metadata.team})",
        group="listing", flag="--set", metavar="KEY=VALUE", parse=parse_set, repeatable=True,
        templated=True,
    )  # fmt: skip
    page_size: int = option(
        DEFAULT_PAGE_SIZE, "with --list: objects per page, 1 to 100 (default {default})",
        group="listing", metavar="N", bound="at least 1",
    )  # fmt: skip
    api_key: str | None = option(None, secret=True, airflow=False)
    # For s3://, gs://, az:// paths (polars' cloud options); values may be secrets: not in repr.
    storage_options: tuple[tuple[str, str], ...] = option(
        (),
        "for s3://, gs://, az:// paths (repeatable), e.g. aws_region=eu-west-1; "
        "default: the usual environment variables",
        secret=True, group="files", flag="--storage-option", metavar="KEY=VALUE",
        parse=parse_storage_option, repeatable=True,
    )  # fmt: skip
    organization: str | None = option(None)
    project: str | None = option(None)
    batch_rows: int = option(DEFAULT_BATCH_ROWS, bound="at least 1", airflow=False)
    # Consecutive 5xx/connection failures that open the circuit breaker, and how long it may
    # stay open before the job stops (exit 3, resumable).
    breaker_threshold: int = option(DEFAULT_BREAKER_THRESHOLD, bound="at least 1")
    breaker_timeout: float = option(
        DEFAULT_BREAKER_TIMEOUT_S,
        "stop (exit 3, resumable) once the API has failed every probe this long "
        "(default {default})",
        group="limits", metavar="S", bound="positive",
    )  # fmt: skip
    # After SIGTERM/SIGINT, how long in-flight requests may take to finish (in Airflow, less:
    # AIRFLOW_DRAIN_TIMEOUT_S).
    drain_timeout: float = option(
        DEFAULT_DRAIN_TIMEOUT_S,
        "after SIGTERM/SIGINT, how long in-flight requests may take (default {default})",
        group="limits", metavar="S", bound="positive", airflow_default=AIRFLOW_DRAIN_TIMEOUT_S,
    )  # fmt: skip
    limit: int | None = option(
        None,
        "only the first N rows to send (a canary run); the rest unprocessed (no "
        "failure): exit 0 if those N went through and no row before them was invalid, else 1",
        group="limits", metavar="N", bound="not negative",
    )  # fmt: skip
    # The job's store (its runs, their outcomes, its state of what it last set):
    # <state_dir>/<job_name>.sqlite. Defaults: the results file's name without extension, and
    # its directory (see store_path).
    job_name: str | None = option(
        None,
        "the job whose state of what it last set this run compares with and updates "
        "(default: the job file's name, else the results file's name)",
        group="store", metavar="NAME", check=check_job_name, templated=True,
    )  # fmt: skip
    state_dir: str | None = option(
        None,
        "where job stores live, as NAME.sqlite: runs, outcomes and state; given, it "
        "beats $BULK_UPDATE_STATE_URL (default: the results' directory)",
        group="store", metavar="DIR", templated=True,
    )  # fmt: skip
    full: bool = option(
        False, "send every row, even those unchanged since the job last set them",
        group="mapping",
    )  # fmt: skip
    since_state: str | None = option(
        None,
        "compare with the state in this store (another job's NAME.sqlite; with --state-url, "
        "another job's name) instead of this job's own",
        group="mapping", metavar="PATH", templated=True,
    )  # fmt: skip
    delimiter: str | None = option(
        None, "field separator of a text input (default: ',' for .csv, a tab for .tsv)",
        group="mapping", metavar="CHAR", check=check_delimiter,
    )  # fmt: skip
    # Warehouses (PostgreSQL's COPY, Snowflake, BigQuery, Redshift, Hive) write TSV unquoted: a
    # cell starting with '"' is text there, not a quoted cell.
    quoting: str = option(
        "csv",
        "how a text input's cells are quoted: csv (RFC 4180: a cell in double quotes may hold "
        "the separator, quotes, newlines) or none (a '\"' is a character like any other, as "
        "warehouses write TSV) (default {default})",
        group="mapping", metavar="csv|none", check=check_quoting,
    )  # fmt: skip
    retry_failed: bool = option(
        False, "send again the rows this run has as failed; the results are rewritten",
        group="retry_failed",
    )  # fmt: skip
    stop_after_failures: int = option(
        DEFAULT_STOP_AFTER_FAILURES,
        "stop (exit 3, resumable) after N rows in a row failed with the same "
        "non-retryable error code; 0: never (default {default})",
        group="stop_after_failures", metavar="N", bound="not negative",
    )  # fmt: skip
    # The job's store in PostgreSQL (postgresql://USER:PASSWORD@HOST:PORT/DB), instead of the
    # SQLite file; default $BULK_UPDATE_STATE_URL. It may hold a password: not in repr. The
    # operator takes it from a connection (store_conn_id), never from a DAG file.
    state_url: str | None = option(
        None,
        "the job's store in PostgreSQL, postgresql://USER:PASSWORD@HOST:PORT/DB: runs, "
        "outcomes, state, locks and rate budget shared by every machine "
        "(default $BULK_UPDATE_STATE_URL unless --state-dir is given, else the SQLite file)",
        secret=True, group="store", metavar="URL", check=check_state_url,
        airflow=False,
    )  # fmt: skip
    # How long the store's database may stay away mid-run before the job stops (exit 3).
    store_timeout: float = option(
        DEFAULT_STORE_TIMEOUT_S,
        "how long the store may stay away (a database) or locked by another process (a "
        "file) before the job stops, resumable; one clock for the whole stop "
        "(default {default})",
        group="store", metavar="S", bound="positive",
    )  # fmt: skip
    # The store's retention: as a run ends, its shard's runs older than the last N lose their
    # outcomes (history keeps their counts); ``bulk-update compact`` does it now.
    keep_runs: int = option(
        DEFAULT_KEEP_RUNS,
        "keep the row-by-row outcomes of the job's last N runs (in each shard); older runs "
        "keep their counts in history, the job's state is kept whole; 0: keep every run's "
        "(default {default})",
        group="retention", metavar="N", bound="not negative",
    )  # fmt: skip
    # Know the server before writing (``server/check.py``). --backup: read each conversation before
    # its update, keep its before-image, skip rows it already holds, refuse rows that would
    # exceed 16 merged pairs. check_server (validate --check-server): read, never update.
    backup: bool = option(
        False,
        "read each conversation before its update: keep its before-image "
        "(previous_metadata, for bulk-update revert), skip rows the server already holds, "
        "refuse rows that would exceed 16 merged keys",
        group="backup",
    )  # fmt: skip
    check_server: bool = option(
        False,
        "also read each valid row's conversation (GET only; rate limited like a run): "
        "rows past 16 merged keys invalid, rows the server holds unchanged, unknown IDs "
        "invalid; the keys the run would add, per key",
        group="check_server", airflow=False,
    )  # fmt: skip
    # bulk-update revert: the input is a --backup run's results; put back what it changed.
    revert: bool = option(False, airflow=False)
    force: bool = option(
        False, "revert keys changed on the server since the run, too",
        group="revert", airflow=False,
    )  # fmt: skip
    blank_added_keys: bool = option(
        False, "set the keys the run added (which the API cannot remove) to ''",
        group="revert", airflow=False,
    )  # fmt: skip
    # Monitoring (``observe/metrics.py``): a Prometheus textfile (node_exporter's textfile
    # collector), a Pushgateway, and how often both are written (and the run's heartbeat in its
    # store).
    metrics_file: str | None = option(
        None,
        "write the run's Prometheus metrics here (replaced atomically at the start, "
        "every --metrics-interval and at the end): a node_exporter textfile directory",
        group="metrics", metavar="PATH.prom", templated=True,
    )  # fmt: skip
    pushgateway: str | None = option(
        None,
        "push the same to this Prometheus Pushgateway (push-add, grouped by job name "
        "and shard); one that is down is a warning, never the job's failure",
        group="metrics", metavar="URL", check=check_pushgateway,
    )  # fmt: skip
    metrics_interval: float = option(
        DEFAULT_METRICS_INTERVAL_S,
        "seconds between metrics writes and the run's heartbeats in its store "
        "(default {default})",
        group="metrics", metavar="S", bound="positive",
    )  # fmt: skip

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, source: str = "options") -> JobConfig:
        """A JobConfig from a mapping of option names (``errors-output`` or ``errors_output``)
        to values, as a job file, the CLI, the demo or Airflow has them. Lists become tuples,
        ``columns`` may be ``"a,b"``, ``shard`` ``"K/N"``, ``storage-options`` a table; every
        other value must already have its option's type (``rpm = "3000"`` is refused).
        Raises ConfigError naming ``source`` and the option."""
        normalized = {key.replace("-", "_"): value for key, value in options.items()}
        if "journal" in normalized:
            raise ConfigError(
                f"{source}: journal: the journal is now in the job's store "
                "(<state-dir>/<job-name>.sqlite); choose its place with state-dir"
            )
        refuse_unknown(normalized, OPTIONS, source)
        normalized = {name: _given_as(name, value) for name, value in normalized.items()}
        if normalized.get("input") and normalized.get("listing"):
            raise ConfigError("--list takes the rows from the API: give no INPUT")
        required = ("output",) if normalized.get("listing") else ("input", "output")
        for name in required:
            if not normalized.get(name):
                shown = "INPUT (or --list)" if name == "input" else "--output"
                raise ConfigError(f"{shown} is required (on the command line or in the job file)")
        try:
            return cls(**normalized)
        except ConfigError as exc:
            if source == "options":
                raise
            raise ConfigError(f"{source}: {exc}") from None

    def __post_init__(self) -> None:
        _check_types(self)
        check_one_of(vars(self))
        if self.columns is not None and not self.columns:
            raise ConfigError("--columns names no column")
        for option in fields(self):
            value = getattr(self, option.name)
            if value is not None:
                _check_declared(option.name, OPTIONS[option.name], value)
        for flag, path in (("input", self.input), ("--output", self.output),
                           ("--errors-output", self.errors_output)):  # fmt: skip
            if path is not None and is_remote(path):
                try:
                    urlsplit(path).port  # noqa: B018 (checked: a bracket, a port)
                except ValueError as exc:
                    raise ConfigError(f"{flag} {path}: not a valid URL ({exc})") from None
        from bulk_update.formats import result_format  # (polars: not for a DAG's parsing)

        result_format(self.output)
        if self.errors_output is not None:
            result_format(self.errors_output)
        if self.check_server and not self.dry_run:
            raise ConfigError("--check-server is for a dry run (bulk-update validate)")
        if self.revert and (self.columns is not None or self.metadata_column is not None):
            raise ConfigError("revert reads the results' own columns: no --columns")
        if self.revert and self.shard is not None:
            raise ConfigError("revert takes no --shard: it reverts every row of the results")
        if (self.force or self.blank_added_keys) and not self.revert:
            raise ConfigError("--force and --blank-added-keys are options of bulk-update revert")
        if not self.input and not self.listing:
            raise ConfigError("INPUT is required (or --list)")
        if self.listing or self.where or self.set_values:
            from bulk_update.listing import check_config

            check_config(self)

    def check_resource_mapping(self) -> None:
        """The ID columns and the typed columns fit the resource (ConfigError if not). Checked
        as the run opens its input (``resolved_id_columns``), not as the config is built: a
        job file or an operator may set the resource and the columns in either order."""
        resource = self.resolved_resource()
        if self.id_column is not None:
            given = self.id_column.split(",")
            if len(given) != len(resource.id_columns) or not all(c.strip() for c in given):
                wanted = ",".join(resource.id_columns)
                raise ConfigError(
                    f"--id-column {self.id_column!r}: {resource.name} takes "
                    f"{len(resource.id_columns)} ID column(s), e.g. {wanted}"
                )
        typed = {"number_columns": self.number_columns, "boolean_columns": self.boolean_columns}
        for name, named in typed.items():
            if named is None:
                continue
            flag = flag_of(name)
            if not resource.typed:
                raise ConfigError(
                    f"{flag}: {resource.name}'s values are text; typed values are for "
                    + ", ".join(r.name for r in RESOURCES.values() if r.typed)
                )
            if self.metadata_column is not None:
                raise ConfigError(
                    f"{flag} names columns: with --metadata-column, a JSON cell's own types "
                    "are sent"
                )
        if self.number_columns and self.boolean_columns:
            both = sorted(set(self.number_columns) & set(self.boolean_columns))
            if both:
                raise ConfigError(f"{both[0]!r} is in both --number-columns and --boolean-columns")

    def resolved_resource(self) -> Resource:
        """The resource the job updates (``resources.RESOURCES``)."""
        return resource_named(self.resource)

    def resolved_id_columns(self) -> tuple[str, ...]:
        """The input's ID columns: --id-column's (one, or VS,FILE), else the resource's."""
        self.check_resource_mapping()
        if self.id_column is None:
            return self.resolved_resource().id_columns
        return tuple(column.strip() for column in self.id_column.split(","))

    def storage(self) -> dict[str, str] | None:
        """``storage_options`` as polars takes them (None: the environment decides)."""
        return dict(self.storage_options) or None

    def given_or_environment(self, name: str) -> str | None:
        """Option ``name`` as given, else from the environment (``given_or_environment``)."""
        return given_or_environment(name, vars(self))

    def settings_for(self, settings: type[Any]) -> dict[str, Any]:
        """The options a settings dataclass takes, each under its name as the run uses it: the
        base URL and key resolved, the other ENVIRONMENT options given or from the variable,
        the rest as given. Its fields not named after an option are left to the caller. (One
        slice of the config, made in one place: a new option a stage needs is a field there.)"""
        resolved: dict[str, Callable[[], Any]] = {
            "base_url": self.resolved_base_url, "api_key": self.resolved_api_key,
        }  # fmt: skip
        taken: dict[str, Any] = {}
        for wanted in fields(settings):
            name = wanted.name
            if name in resolved:
                taken[name] = resolved[name]()
            elif name in ENVIRONMENT:
                taken[name] = self.given_or_environment(name)
            elif name in OPTIONS:
                taken[name] = getattr(self, name)
        return taken

    def resolved_base_url(self) -> str:
        return check_base_url(self.given_or_environment("base_url") or DEFAULT_BASE_URL)

    def resolved_api_key(self) -> str:
        key = self.given_or_environment("api_key")
        if not key:
            raise ConfigError("no API key: set OPENAI_API_KEY")
        return key

    def resolved_job_name(self) -> str:
        """--job-name, else the results file's name without its extension."""
        if self.job_name is not None:
            return self.job_name
        # A revert is a run of the job it reverts: by default the one its results path names.
        return job_name_from(self.input if self.revert else self.output)

    def resolved_state_url(self) -> str | None:
        """--state-url; else, without --state-dir, $BULK_UPDATE_STATE_URL (empty: none); checked.
        None: the SQLite file (``store_path``)."""
        url = self.given_or_environment("state_url")
        return None if url is None else check_state_url(url)

    def store_location(self) -> StoreLocation:
        from bulk_update.store import StoreLocation

        return StoreLocation(self.store_path(), self.resolved_state_url(), self.store_timeout)

    def store_where(self) -> str:
        """The store as logs and summaries name it (never with a password)."""
        url = self.resolved_state_url()
        return str(self.store_path()) if url is None else redact_url(url)

    def store_path(self) -> Path:
        """The job's store: in --state-dir, else beside a local results file, else under
        ./.bulk_update."""
        if self.state_dir is not None:
            directory = Path(self.state_dir)
        elif self.revert and not is_remote(self.input):
            directory = Path(self.input).parent  # the reverted run's store, beside its results
        else:
            directory = store_directory(self.output)
        return directory / f"{self.resolved_job_name()}.sqlite"

    def check_paths(self, input_files: tuple[str, ...]) -> None:
        """Refuse outputs that would destroy what the run needs: the input or each other (the
        store, ``.sqlite``, cannot be a results path). Every file the run writes must be
        writable. Globs in ``input_files`` are already expanded."""

        def key(path: str | Path) -> str:
            return str(path) if is_remote(path) else str(Path(path).resolve())

        inputs = {key(path) for path in input_files}
        outputs = [("--output", self.output)]
        if self.errors_output is not None:
            outputs.append(("--errors-output", self.errors_output))
        if self.metrics_file is not None:
            outputs.append(("--metrics-file", self.metrics_file))
        seen: dict[str, str] = {}
        for flag, path in outputs:
            target = key(path)
            if target in inputs:
                raise ConfigError(f"{flag} {path} is the input: refusing to overwrite it")
            if target in seen:
                raise ConfigError(f"{flag} is the same file as {seen[target]}")
            seen[target] = flag
        files = list(outputs)
        if not self.dry_run and self.resolved_state_url() is None:
            files.append(("the job's store", str(self.store_path())))
        for what, path in files:
            if not is_remote(path):
                _check_writable(what, Path(path))


# Every option's declaration, by JobConfig's name for it.
OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in fields(JobConfig)}


_FIELDS = {f.name: f for f in fields(JobConfig)}


def default_of(name: str) -> Any:
    """JobConfig's default for option ``name`` (``dataclasses.MISSING``: it has none)."""
    return _FIELDS[name].default


def flag_of(name: str) -> str:
    """The option's flag, as messages name it (``--max-attempts``)."""
    return OPTIONS[name].flag or "--" + name.replace("_", "-")


_BOUNDS: dict[Bound, tuple[Callable[[Any], bool], str]] = {
    "at least 1": (lambda value: value >= 1, "must be at least 1"),
    "positive": (lambda value: value > 0, "must be positive"),
    "not negative": (lambda value: value >= 0, "must not be negative"),
}


def _check_declared(name: str, declared: Option, value: Any) -> None:
    """An option's own rules: its bound, its check."""
    if declared.bound is not None:
        within, rule = _BOUNDS[declared.bound]
        if not within(value):
            raise ConfigError(f"--{name.replace('_', '-')} {rule}, got {value}")
    if declared.check is not None:
        declared.check(value)


def _given_as(name: str, value: Any) -> Any:
    """A value as a job file, the CLI or Airflow may give it, in its field's type: the text of
    an option that parses text (``columns = "a,b"``, ``shard = "K/N"``), a list as a tuple (of
    tuples), a table as pairs. Anything else stays as given, for JobConfig to check."""
    declared = OPTIONS[name]
    if isinstance(value, str) and declared.parse is not None and not declared.repeatable:
        return declared.parse(value)
    if not _is_tuple(_HINTS[name]):
        return value
    if isinstance(value, Mapping) and declared.repeatable:
        return tuple((str(k), str(v)) for k, v in value.items())
    if isinstance(value, list) and declared.repeatable and declared.parse is not None:
        # Each item as its flag gives it ("KEY=VALUE"), or already parsed (["KEY", "VALUE"]).
        return tuple(declared.parse(item) if isinstance(item, str) else
                     tuple(item) if isinstance(item, list) else item for item in value)  # fmt: skip
    if isinstance(value, list):
        return tuple(tuple(item) if isinstance(item, list) else item for item in value)
    return value


def _is_tuple(kind: Any) -> bool:
    return any(typing.get_origin(arg) is tuple for arg in (kind, *typing.get_args(kind)))


def refuse_unknown(
    given: Mapping[str, Any], known: Mapping[str, Any], source: str, *, what: str = "option"
) -> None:
    """ConfigError naming the ``what``s in ``given`` not in ``known``, with a guess. Options
    are named as flags and job files spell them (``max-attempts``), parameters as Python does."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return

    def spelled(name: str) -> str:
        return name.replace("_", "-") if what == "option" else name

    close = [
        match
        for name in unknown
        for match in difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
    ]
    guess = f" (did you mean {', '.join(map(spelled, close))}?)" if close else ""
    shown = ", ".join(map(spelled, unknown))
    raise ConfigError(f"{source}: unknown {what}(s) {shown}{guess}")


def store_directory(results: str) -> Path:
    """Where a job's store is by default: beside a local results file, else under
    ./.bulk_update."""
    return Path(".bulk_update") if is_remote(results) else Path(results).parent


def job_name_from(results: str) -> str:
    """The job name a results path gives by default: its file name without the extension."""
    stem = Path(urlsplit(results).path if is_remote(results) else results).stem
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-")[:100] or "results"


def _check_writable(what: str, path: Path) -> None:
    """A file the run will write: not a directory, in a directory that exists or can be made
    and can be written. Checked before anything is read or sent, so that a typo does not
    surface only after every row was sent."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; name a file in it")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if read_only else "cannot be written (permissions)"
        raise ConfigError(f"{what} {path}: {existing} {why}")


def _describe(kind: Any) -> str:
    if kind is bool:
        return "true or false"
    if kind is int:
        return "a whole number"
    if kind is float:
        return "a number"
    if kind is str:
        return "text"
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return f"a list of {_describe(args[0]).removeprefix('a ')}"
    if origin is tuple:
        return f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
    return str(kind)


def _matches(value: object, kind: Any) -> bool:
    """Does ``value`` have type ``kind`` (one of JobConfig's annotations)? ``bool`` is not a
    number here, and a whole number is a number."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if kind is type(None):
        return value is None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(item, args[0]) for item in value)
        return len(value) == len(args) and all(
            _matches(item, arg) for item, arg in zip(value, args, strict=True)
        )
    raise TypeError(f"no check for {kind!r}")  # pragma: no cover - a new field's annotation


def _check_types(config: JobConfig) -> None:
    """Every option has its annotated type, or ConfigError names it: the one place where the
    CLI, job files and the Python API are checked alike."""
    for option in fields(config):
        value = getattr(config, option.name)
        kind = _HINTS[option.name]
        if _matches(value, kind):
            continue
        wanted = " or ".join(
            _describe(arg) for arg in typing.get_args(kind) or (kind,) if arg is not type(None)
        )
        optional = type(None) in typing.get_args(kind)
        shown = "(hidden)" if not option.repr else repr(value)
        raise ConfigError(
            f"{option.name.replace('_', '-')} must be {wanted}"
            + (" (or left out)" if optional else "")
            + f", got {shown} ({type(value).__name__})"
        )


_HINTS = typing.get_type_hints(JobConfig)
