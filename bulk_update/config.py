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
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bulk_update._constants import (
    DEFAULT_BASE_URL,
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_BREAKER_TIMEOUT_S,
    DEFAULT_CONCURRENCY,
    DEFAULT_DRAIN_TIMEOUT_S,
    DEFAULT_ID_COLUMN,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_METRICS_INTERVAL_S,
    DEFAULT_RPM,
    DEFAULT_STOP_AFTER_FAILURES,
    DEFAULT_STORE_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
)
from bulk_update.exceptions import ConfigError
from bulk_update.formats import result_format
from bulk_update.paths import is_remote
from bulk_update.store import StoreLocation
from bulk_update.store.url import ENV as STATE_URL_ENV
from bulk_update.store.url import check_url as check_state_url
from bulk_update.store.url import redact as redact_url

__all__ = [
    "ENVIRONMENT",
    "JOB_NAME",
    "ONE_OF",
    "JobConfig",
    "check_one_of",
    "given_or_environment",
    "parse_columns",
    "parse_shard",
]

# Rows read, planned and journaled together (at most; batches are sized by bytes).
DEFAULT_BATCH_ROWS = 20_000

JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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


@dataclass(frozen=True, kw_only=True)
class JobConfig:
    """Everything one run needs. Build it directly, from a job file, or from CLI flags.

    ``api_key``, ``organization``, ``project``, ``base_url`` and ``state_url`` not given default
    to the environment (ENVIRONMENT: ``OPENAI_API_KEY``, ...) when the job runs; ``state_url``
    not when ``state_dir`` is given. The key is never shown by ``repr``.
    """

    input: str
    output: str
    errors_output: str | None = None
    id_column: str = DEFAULT_ID_COLUMN
    columns: tuple[str, ...] | None = None
    metadata_column: str | None = None
    base_url: str | None = None
    rpm: int = DEFAULT_RPM
    concurrency: int = DEFAULT_CONCURRENCY
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT_S
    dry_run: bool = False
    restart: bool = False
    limit: int | None = None
    shard: tuple[int, int] | None = None  # (K, N): rows whose ID hashes to K modulo N
    api_key: str | None = field(default=None, repr=False)
    # For s3://, gs://, az:// paths (polars' cloud options); values may be secrets: not in repr.
    storage_options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    organization: str | None = None
    project: str | None = None
    batch_rows: int = DEFAULT_BATCH_ROWS
    # Consecutive 5xx/connection failures that open the circuit breaker, and how long it may
    # stay open before the job stops (exit 3, resumable).
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    breaker_timeout: float = DEFAULT_BREAKER_TIMEOUT_S
    # After SIGTERM/SIGINT, how long in-flight requests may take to finish.
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S
    # The job's store (its runs, their outcomes, its state of what it last set):
    # <state_dir>/<job_name>.sqlite. Defaults: the results file's name without extension, and
    # its directory (see store_path).
    job_name: str | None = None
    state_dir: str | None = None
    full: bool = False  # send every row, even those unchanged since the job last set them
    since_state: str | None = None  # compare with another job's store (its state) instead
    delimiter: str | None = None  # CSV/TSV field separator; default from the extension
    retry_failed: bool = False  # send again the rows this run's journal has as failed
    stop_after_failures: int = DEFAULT_STOP_AFTER_FAILURES
    # The job's store in PostgreSQL (postgresql://USER:PASSWORD@HOST:PORT/DB), instead of the
    # SQLite file; default $BULK_UPDATE_STATE_URL. It may hold a password: not in repr.
    state_url: str | None = field(default=None, repr=False)
    # How long the store's database may stay away mid-run before the job stops (exit 3).
    store_timeout: float = DEFAULT_STORE_TIMEOUT_S
    # Know the server before writing (``server/check.py``). --backup: read each conversation before
    # its update, keep its before-image, skip rows it already holds, refuse rows that would
    # exceed 16 merged pairs. check_server (validate --check-server): read, never update.
    backup: bool = False
    check_server: bool = False
    # bulk-update revert: the input is a --backup run's results; put back what it changed.
    revert: bool = False
    force: bool = False  # revert keys someone changed since the run, too
    blank_added_keys: bool = False  # revert: set the keys the run added to ""
    # Monitoring (``observe/metrics.py``): a Prometheus textfile (node_exporter's textfile
    # collector), a Pushgateway, and how often both are written (and the run's heartbeat in its
    # store).
    metrics_file: str | None = None
    pushgateway: str | None = None
    metrics_interval: float = DEFAULT_METRICS_INTERVAL_S

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, source: str = "options") -> JobConfig:
        """A JobConfig from a mapping of option names (``errors-output`` or ``errors_output``)
        to values, as a job file, the CLI, the demo or Airflow has them. Lists become tuples,
        ``columns`` may be ``"a,b"``, ``shard`` ``"K/N"``, ``storage-options`` a table; every
        other value must already have its option's type (``rpm = "3000"`` is refused).
        Raises ConfigError naming ``source`` and the option."""
        known = {f.name for f in fields(cls)}
        normalized = {key.replace("-", "_"): value for key, value in options.items()}
        if "journal" in normalized:
            raise ConfigError(
                f"{source}: journal: the journal is now in the job's store "
                "(<state-dir>/<job-name>.sqlite); choose its place with state-dir"
            )
        unknown = sorted(set(normalized) - known)
        if unknown:
            shown = ", ".join(name.replace("_", "-") for name in unknown)
            close = [
                match
                for name in unknown
                for match in difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
            ]
            guess = f" (did you mean {', '.join(m.replace('_', '-') for m in close)}?)"
            raise ConfigError(f"{source}: unknown option(s) {shown}{guess if close else ''}")
        columns = normalized.get("columns")
        if isinstance(columns, str):
            normalized["columns"] = parse_columns(columns)
        elif isinstance(columns, list):
            normalized["columns"] = tuple(columns)
        shard = normalized.get("shard")
        if isinstance(shard, str):
            normalized["shard"] = parse_shard(shard)
        elif isinstance(shard, list):
            normalized["shard"] = tuple(shard)
        storage = normalized.get("storage_options")
        if isinstance(storage, Mapping):
            normalized["storage_options"] = tuple((str(k), str(v)) for k, v in storage.items())
        elif isinstance(storage, list):
            normalized["storage_options"] = tuple(
                tuple(pair) if isinstance(pair, list) else pair for pair in storage
            )
        for required in ("input", "output"):
            if not normalized.get(required):
                name = "INPUT" if required == "input" else "--output"
                raise ConfigError(f"{name} is required (on the command line or in the job file)")
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
        for name, value in (
            ("rpm", self.rpm),
            ("concurrency", self.concurrency),
            ("max-attempts", self.max_attempts),
            ("batch-rows", self.batch_rows),
            ("breaker-threshold", self.breaker_threshold),
        ):
            if value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        for seconds_name, seconds in (
            ("timeout", self.timeout),
            ("breaker-timeout", self.breaker_timeout),
            ("drain-timeout", self.drain_timeout),
            ("store-timeout", self.store_timeout),
            ("metrics-interval", self.metrics_interval),
        ):
            if not seconds > 0:
                raise ConfigError(f"--{seconds_name} must be positive, got {seconds}")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"--limit must not be negative, got {self.limit}")
        if self.stop_after_failures < 0:
            raise ConfigError(
                f"--stop-after-failures must not be negative, got {self.stop_after_failures}"
            )
        if self.delimiter is not None and len(self.delimiter) != 1:
            raise ConfigError(f"--delimiter must be one character, got {self.delimiter!r}")
        if self.shard is not None:
            index, count = self.shard
            if not (count >= 1 and 0 <= index < count):
                raise ConfigError(f"--shard {index}/{count}: K must be from 0 to N-1")
        if self.job_name is not None and not JOB_NAME.fullmatch(self.job_name):
            raise ConfigError(
                f"--job-name {self.job_name!r}: use 1 to 100 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        for flag, path in (("input", self.input), ("--output", self.output),
                           ("--errors-output", self.errors_output)):  # fmt: skip
            if path is not None and is_remote(path):
                try:
                    urlsplit(path).port  # noqa: B018 (checked: a bracket, a port)
                except ValueError as exc:
                    raise ConfigError(f"{flag} {path}: not a valid URL ({exc})") from None
        result_format(self.output)
        if self.errors_output is not None:
            result_format(self.errors_output)
        if self.base_url is not None:
            check_base_url(self.base_url)
        if self.state_url is not None:
            check_state_url(self.state_url)
        if self.pushgateway is not None and not re.match(r"https?://[^/\s]+", self.pushgateway):
            raise ConfigError(
                f"--pushgateway {self.pushgateway!r}: give the Pushgateway's URL, http://HOST:PORT"
            )
        if self.check_server and not self.dry_run:
            raise ConfigError("--check-server is for a dry run (bulk-update validate)")
        if self.revert and (self.columns is not None or self.metadata_column is not None):
            raise ConfigError("revert reads the results' own columns: no --columns")
        if self.revert and self.shard is not None:
            raise ConfigError("revert takes no --shard: it reverts every row of the results")
        if (self.force or self.blank_added_keys) and not self.revert:
            raise ConfigError("--force and --blank-added-keys are options of bulk-update revert")

    @property
    def shard_count(self) -> int:
        return 1 if self.shard is None else self.shard[1]

    @property
    def effective_rpm(self) -> float:
        """A shard's ceiling: the whole --rpm. Running shards share it through the store's rate
        budget, so that together they never exceed it (``ratelimit``)."""
        return float(self.rpm)

    @property
    def effective_concurrency(self) -> int:
        """--concurrency applies to each running shard."""
        return self.concurrency

    def storage(self) -> dict[str, str] | None:
        """``storage_options`` as polars takes them (None: the environment decides)."""
        return dict(self.storage_options) or None

    def given_or_environment(self, name: str) -> str | None:
        """Option ``name`` as given, else from the environment (``given_or_environment``)."""
        return given_or_environment(name, vars(self))

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
        elif is_remote(self.output):
            directory = Path(".bulk_update")
        else:
            directory = Path(self.output).parent
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
                f"--shard {text}: ${COMPLETION_INDEX_ENV} is not set (Kubernetes sets it in "
                "each pod of an Indexed Job)"
            )
    try:
        if not slash:
            raise ValueError(text)
        return int(index), int(count)
    except ValueError:
        raise ConfigError(f"--shard: expected K/N with 0 <= K < N, got {text!r}") from None


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
    hints = typing.get_type_hints(type(config))
    for option in fields(config):
        value = getattr(config, option.name)
        kind = hints[option.name]
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
