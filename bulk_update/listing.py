"""Rows from the API's listing: a run's input taken from a resource's list endpoint (``--list``)
instead of a file.

The listing is paged with the API's cursor (``after``: the page's ``last_id``, while
``has_more``), oldest first (``order=asc``), every page a GET through the job's sender: its
client, its rate limiter (the same ``--rpm`` budget as the updates that follow: the sender that
sends them takes the listing's limiter over), its retries and its circuit breaker. The listing
is **materialized**: written whole to a Parquet file (``listing_path``: beside the job's store,
named by the run) before anything is sent, and that file is the run's input, so the rest of the
engine is unchanged: planning, sending, the store, the results (``row_number`` is the object's
position in the listing). The file is written under another name and moved into place once
complete: a kill during the listing leaves no listing, and the next invocation lists again.

Which listing a run reads (``recorded_listing``): an unfinished run of the job for the same
results (its end never recorded, a signal or a fatal answer stopped it, rows left; with
``--retry-failed``, failed rows too) reads the listing it recorded (its input, in the store), so
that a resume never lists a moving target again; a new run (none yet, the last one finished, or
``--restart``) lists again. A changed ``--where`` or ``--set`` is part of the run's fingerprint
(``fingerprint``): the unfinished run refuses it, as it refuses another input file.

Each listed object becomes one row: its ID column(s) (the resource's), then one column per
``--set KEY=VALUE`` (column name = the key), its value a constant or taken from the object
(``Template``: ``{metadata.team}``, ``{attributes.year}``; text around a reference makes text;
``{{`` and ``}}`` are braces). A ``--where`` is a filter: those the API takes are sent as the
list endpoint's query (``metadata.KEY``, ``model`` for stored chat completions; ``status`` for
a vector store's files), the others are checked here on each listed object (``metadata.KEY`` of
vector stores, ``attributes.KEY`` of files): every object is still listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import string
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import httpx2
import polars as pl

from bulk_update._constants import MAX_KEY_CHARS, MAX_PAGE_SIZE, MAX_PAIRS, MAX_RESPONSE_BYTES
from bulk_update.api.answers import Action, Answer, Verdict, classify
from bulk_update.api.retry import Attempt
from bulk_update.exceptions import ConfigError, FatalApiError
from bulk_update.resources import Resource, resource_named
from bulk_update.send import Sender, SendSettings

if TYPE_CHECKING:
    from bulk_update.api.ratelimit import RateLimiter
    from bulk_update.config import JobConfig
    from bulk_update.modes import Mode
    from bulk_update.stop import Stop

__all__ = [
    "FILTERS",
    "Listed",
    "Listing",
    "ListingPlan",
    "Template",
    "check_config",
    "fingerprint",
    "judge_page",
    "list_all",
    "listing_path",
    "lookup",
    "plan_listing",
    "recorded_listing",
    "take_listing",
    "write_listing",
]

log = logging.getLogger("bulk_update")

# The listing's rows held in memory before they are made a frame (a page is at most 100).
FRAME_ROWS = 10_000
# How often a listing says how far it got (it comes before the run: no progress bar yet).
PROGRESS_S = 10.0


@dataclass(frozen=True, slots=True)
class Filters:
    """The ``--where`` keys a resource's listing takes: those the API takes as query
    parameters (``(key, parameter)``; a key ending in ``.`` is a prefix: ``metadata.KEY`` is
    ``metadata[KEY]``), and the prefixes of those the job checks itself on each listed object.
    The list path's own parameters (``{vector_store_id}``) are ``--where`` keys too: one
    listing per value given."""

    server: tuple[tuple[str, str], ...] = ()
    client: tuple[str, ...] = ()


# Per resource the API lists (``Resource.list_path``), what its listing filters by: the API
# reference's query parameters (stored chat completions: ``metadata[KEY]``, ``model``; a vector
# store's files: ``filter``, their status); vector stores and their files' attributes are
# filtered by the job.
FILTERS: dict[str, Filters] = {
    "chat.completions": Filters(server=(("metadata.", "metadata[{}]"), ("model", "model"))),
    "vector_stores": Filters(client=("metadata.",)),
    "vector_stores.files": Filters(server=(("status", "filter"),), client=("attributes.",)),
}
# A vector store file's status, the values its list's ``filter`` takes.
FILE_STATUSES = ("in_progress", "completed", "failed", "cancelled")


# --- the objects' fields ------------------------------------------------------------------


_MISSING = object()


def lookup(obj: object, path: str) -> Any:
    """The value at a dotted ``path`` in a listed object (``metadata.team``, ``attributes.year``,
    ``model``); ``None`` if it has none. A key that holds dots is found whole (the longest key
    that matches wins); a list is indexed by number (``choices.0.finish_reason``)."""
    parts = path.split(".")
    value: Any = obj
    at = 0
    while at < len(parts):
        if isinstance(value, Mapping):
            for end in range(len(parts), at, -1):
                found = value.get(".".join(parts[at:end]), _MISSING)
                if found is not _MISSING:
                    value, at = found, end
                    break
            else:
                return None
        elif isinstance(value, list) and parts[at].isdigit() and int(parts[at]) < len(value):
            value, at = value[int(parts[at])], at + 1
        else:
            return None
    return value


def text_of(value: object) -> str | None:
    """A scalar as text (JSON's spelling: ``true``, ``12``, ``1.5``); None for no value or a
    nested one."""
    if value is None or isinstance(value, Mapping | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)


@dataclass(frozen=True, slots=True)
class Template:
    """A ``--set`` value: text with ``{path}`` references to the listed object's fields
    (``{{``, ``}}``: braces). One reference alone keeps the field's type (a number stays a
    number, for typed attributes); a field the object lacks (or a nested one) gives no value:
    the key is not sent for that row."""

    text: str
    pieces: tuple[tuple[str, str | None], ...]  # (literal text, then a field's path or None)

    @classmethod
    def parse(cls, key: str, text: str) -> Template:
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(
                f"--set {key}={text}: {exc} (a brace is written {{{{ or }}}})"
            ) from None
        pieces: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in parsed:
            if name is not None and (not name.strip() or spec or conversion):
                raise ConfigError(
                    f"--set {key}={text}: a reference is a field's dotted path in braces, as "
                    "{metadata.team} (no format, no conversion; a brace is written {{ or }})"
                )
            pieces.append((literal, None if name is None else name.strip()))
        return cls(text, tuple(pieces))

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.pieces if name is not None)

    def render(self, obj: Mapping[str, Any]) -> Any:
        """The value for ``obj``: a constant, the field itself (one reference alone), or text."""
        if len(self.pieces) == 1 and self.pieces[0][0] == "" and self.pieces[0][1] is not None:
            value = lookup(obj, self.pieces[0][1])
            return None if isinstance(value, Mapping | list) else value
        made = []
        for literal, name in self.pieces:
            made.append(literal)
            if name is not None:
                text = text_of(lookup(obj, name))
                if text is None:
                    return None
                made.append(text)
        return "".join(made)


# --- the listing's plan --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListingPlan:
    """What to list and how each object becomes a row: the list paths (one per vector store
    given, in the order given), the query every page sends, the filters the job checks, the ID
    columns and the ``--set`` columns."""

    resource: str
    paths: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (path, its path parameters)
    query: tuple[tuple[str, str], ...]
    checks: tuple[tuple[str, str], ...]  # (field path, text) each listed object must match
    id_fields: tuple[tuple[str, str], ...]
    sets: tuple[tuple[str, Template], ...]
    page_size: int = MAX_PAGE_SIZE

    @property
    def id_columns(self) -> tuple[str, ...]:
        return tuple(column for column, _ in self.id_fields)

    def row(self, obj: Mapping[str, Any], params: Mapping[str, str]) -> list[Any] | None:
        """The listed object's row (ID columns, then the --set columns), or None if a check
        the job makes (``checks``) leaves it out."""
        for path, wanted in self.checks:
            if not _matches(lookup(obj, path), wanted):
                return None
        ids = [params.get(source) or text_of(lookup(obj, source)) for _, source in self.id_fields]
        return [*ids, *(template.render(obj) for _, template in self.sets)]


def _matches(value: object, wanted: str) -> bool:
    """A field's value is the --where's text: as text, or as the same number."""
    text = text_of(value)
    if text == wanted:
        return True
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            return float(wanted) == value
    return False


def _listable(name: str) -> Resource:
    """The resource, if the API lists it."""
    resource = resource_named(name)
    if resource.list_path is None:
        raise ConfigError(
            f"--list: the API cannot list {name} (it has no list endpoint): give an input "
            f"file of {resource.noun} IDs"
        )
    return resource


def plan_listing(
    resource: str,
    where: Iterable[tuple[str, str]],
    sets: Iterable[tuple[str, str]],
    page_size: int = MAX_PAGE_SIZE,
) -> ListingPlan:
    """The listing that ``--resource``, ``--where`` and ``--set`` ask for (pure). ConfigError,
    naming the flag, for what the resource's listing cannot do."""
    listed = _listable(resource)
    assert listed.list_path is not None
    filters = FILTERS[resource]
    query: dict[str, str] = {}
    checks: list[tuple[str, str]] = []
    path_values: dict[str, list[str]] = {name: [] for name in _parameters(listed.list_path)}
    for key, value in where:
        if key in path_values:
            if not value.strip():
                raise ConfigError(f"--where {key}=: give the {key}")
            path_values[key].append(value.strip())
            continue
        parameter = _server_parameter(filters, key)
        if parameter is not None:
            if parameter in query:
                raise ConfigError(f"--where {key} is given twice: the API filters by one value")
            if key == "status" and value not in FILE_STATUSES:
                raise ConfigError(f"--where status={value}: one of {', '.join(FILE_STATUSES)}")
            query[parameter] = value
        elif any(key.startswith(prefix) and len(key) > len(prefix)
                 for prefix in filters.client):  # fmt: skip
            checks.append((key, value))
        else:
            taken = _wheres(filters, tuple(path_values))
            raise ConfigError(f"--where {key}: {resource} is listed by {taken}")
    for name, values in path_values.items():
        if not values:
            raise ConfigError(
                f"--list {resource}: give --where {name}=ID (repeat it for several): the API "
                f"lists them per {name.removesuffix('_id').replace('_', ' ')}"
            )
        if len(set(values)) != len(values):
            raise ConfigError(f"--where {name}: an ID is given twice")
    paths: list[tuple[str, tuple[tuple[str, str], ...]]] = (
        [] if path_values else [(listed.list_path, ())]
    )
    for name, values in path_values.items():
        for value in values:
            filled = listed.list_path.replace("{" + name + "}", quote(value, safe=""))
            paths.append((filled, ((name, value),)))
    templates: list[tuple[str, Template]] = []
    for key, text in sets:
        if key in listed.id_columns:
            raise ConfigError(f"--set {key}: {key} is the listing's ID column")
        if key in {k for k, _ in templates}:
            raise ConfigError(f"--set {key} is given twice")
        if len(key) > MAX_KEY_CHARS:
            raise ConfigError(f"--set {key[:20]}…: a key is at most {MAX_KEY_CHARS} characters")
        templates.append((key, Template.parse(key, text)))
    if not templates:
        raise ConfigError("--list: give what to set, as --set KEY=VALUE (repeatable)")
    if len(templates) > MAX_PAIRS:
        raise ConfigError(
            f"--set is given {len(templates)} times: an update sets {MAX_PAIRS} keys at most"
        )
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ConfigError(f"--page-size must be from 1 to {MAX_PAGE_SIZE}, got {page_size}")
    query["order"] = "asc"
    # Each ID column from its path parameter (a file's vector store), else the object's id.
    id_fields = tuple((c, c if c in path_values else "id") for c in listed.id_columns)
    return ListingPlan(
        resource=resource,
        paths=tuple(paths),
        query=tuple(query.items()),
        checks=tuple(checks),
        id_fields=id_fields,
        sets=tuple(templates),
        page_size=page_size,
    )


def _parameters(path: str) -> list[str]:
    """A list path's parameters (``vector_stores/{vector_store_id}/files``)."""
    return re.findall(r"\{(\w+)\}", path)


def _server_parameter(filters: Filters, key: str) -> str | None:
    for name, parameter in filters.server:
        if name.endswith(".") and key.startswith(name) and len(key) > len(name):
            return parameter.format(key[len(name) :])
        if key == name:
            return parameter
    return None


def _wheres(filters: Filters, path_parameters: tuple[str, ...]) -> str:
    named = [name + ("KEY" if name.endswith(".") else "") for name, _ in filters.server]
    named += [prefix + "KEY" for prefix in filters.client]
    named += list(path_parameters)
    return ", ".join(named) if named else "nothing: it takes no --where"


# --- the pages -----------------------------------------------------------------------------


PAGE_TOO_LARGE = "page_too_large"


def judge_page(answer: Answer, now_epoch: float) -> Verdict:
    """What a list page's answer means (pure): a 2xx whose body is a list
    (``{"object": "list", "data": [...], "has_more": ...}``) is done, its body parsed in the
    verdict; a body cut at the job's cap on an answer (``MAX_RESPONSE_BYTES``) fails as
    ``page_too_large`` (the listing asks for smaller pages); any other answer as an update's."""
    status = answer.http_status or 0
    if answer.transport_error is not None or not 200 <= status < 300:
        return classify(answer, now_epoch, "")
    if len(answer.body) >= MAX_RESPONSE_BYTES:
        return Verdict(
            Action.FAIL,
            error_type="invalid_response",
            error_code=PAGE_TOO_LARGE,
            error_message=f"a page larger than {MAX_RESPONSE_BYTES} bytes",
        )
    try:
        parsed: Any = json.loads(answer.body)
    except ValueError:
        parsed = None
    if (
        not isinstance(parsed, dict)
        or not isinstance(parsed.get("data"), list)
        or not all(isinstance(item, dict) for item in parsed["data"])
    ):
        return Verdict(
            Action.RETRY,
            error_type="invalid_response",
            error_code="invalid_response",
            error_message="2xx answer whose body is not a list page",
        )
    return Verdict(Action.DONE, conversation=parsed)


# ``fetch(path)``: the sender's retried, rate-limited GET of a path, its last attempt.
Fetch = Callable[[str], Awaitable[Attempt]]


def page_url(path: str, query: Iterable[tuple[str, str]], limit: int, after: str | None) -> str:
    pairs = [*query, ("limit", str(limit))] + ([("after", after)] if after else [])
    return f"{path}?{urlencode(pairs)}"


async def pages(
    fetch: Fetch,
    path: str,
    query: tuple[tuple[str, str], ...],
    page_size: int,
    stopped: Callable[[], bool],
) -> AsyncIterator[list[dict[str, Any]]]:
    """The objects of one listing, a page at a time, following the cursor, until the last page
    or ``stopped`` (a signal: a page whose retries it cut is no failure). A page too large for
    the job's cap is asked for again at half the size (down to one object)."""
    after: str | None = None
    size = page_size
    while True:
        last = await fetch(page_url(path, query, size, after))
        if stopped():
            return
        if last.verdict.error_code == PAGE_TOO_LARGE and size > 1:
            size = max(1, size // 2)
            log.info(
                "listing %s: a page was larger than %d bytes; asking for %d objects a page",
                path, MAX_RESPONSE_BYTES, size, extra={"event": "listing_page_size"},
            )  # fmt: skip
            continue
        page = _page_of(path, last)
        data: list[dict[str, Any]] = page["data"]
        yield data
        if page.get("has_more") is not True:
            return
        cursor = page.get("last_id") or (data[-1].get("id") if data else None)
        if not isinstance(cursor, str) or not cursor or cursor == after:
            raise FatalApiError(
                f"listing {path}: the API says it has more but gives no new cursor "
                f"(last_id {cursor!r}); nothing was sent",
                http_status=None,
                error_code="listing_cursor",
            )
        after = cursor


def _page_of(path: str, last: Attempt) -> Mapping[str, Any]:
    """The page of a listing's last attempt, or the error that ends the listing: the key or
    the quota refused, or a page that kept failing (exit 3: the same command lists again), or
    one the API refused for itself (a filter or a vector store it does not know: exit 2)."""
    verdict, answer = last.verdict, last.answer
    if verdict.action is Action.DONE and verdict.conversation is not None:
        return verdict.conversation
    if last.fatal is not None:
        raise last.fatal
    status = f"HTTP {answer.http_status} " if answer.http_status else ""
    said = f"GET /{path.split('?')[0]}: {status}{verdict.error_code}: {verdict.error_message}"
    if verdict.action is Action.FAIL:
        raise ConfigError(f"listing {said}; nothing was sent")
    raise FatalApiError(
        f"listing {said}; nothing was sent (the same command lists again)",
        http_status=answer.http_status,
        error_code=verdict.error_code or "listing_failed",
    )


# --- the listing, materialized ---------------------------------------------------------------


def _series(name: str, values: list[Any]) -> pl.Series:
    """A column of listed values, typed as its values are: text, booleans, whole numbers or
    numbers (whole numbers past what a JSON number holds exactly stay whole, never floats);
    none at all: ``Null``; a mix of kinds: each value as text."""
    kinds = {type(value) for value in values if value is not None}
    if not kinds:
        return pl.Series(name, values, dtype=pl.Null)
    if kinds <= {str}:
        return pl.Series(name, values, dtype=pl.String)
    if kinds == {bool}:
        return pl.Series(name, values, dtype=pl.Boolean)
    if kinds == {int} and all(v is None or -(2**63) <= v < 2**63 for v in values):
        return pl.Series(name, values, dtype=pl.Int64)
    exact = all(v is None or isinstance(v, float) or abs(v) <= 2**53 for v in values)
    if kinds <= {int, float} and exact:
        return pl.Series(name, [None if v is None else float(v) for v in values], pl.Float64)
    return pl.Series(name, [text_of(value) for value in values], dtype=pl.String)


def _frame(columns: tuple[str, ...], rows: list[list[Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        [_series(name, [row[at] for row in rows]) for at, name in enumerate(columns)]
    )


def _one_table(columns: tuple[str, ...], frames: list[pl.DataFrame]) -> pl.DataFrame:
    """The frames as one, each column of one type: its frames' type where they agree (``Null``
    frames aside; whole numbers beside numbers: numbers), else text."""
    if not frames:
        return pl.DataFrame(schema=dict.fromkeys(columns, pl.String))
    schema = pl.Schema()
    for name in columns:
        kinds = {frame.schema[name] for frame in frames} - {pl.Null()}
        if not kinds:
            schema[name] = pl.String()
        elif len(kinds) == 1:
            schema[name] = kinds.pop()
        elif kinds == {pl.Int64(), pl.Float64()}:
            schema[name] = pl.Float64()
        else:
            schema[name] = pl.String()
    return pl.concat([frame.cast(schema) for frame in frames], how="vertical")


def write_listing(path: Path, frame: pl.DataFrame) -> None:
    """The listing written whole under another name, synced, then moved into place: a kill
    leaves the listing whole or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    frame.write_parquet(partial)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)


@dataclass(slots=True)
class Listing:
    """The rows of a listing as it goes (``add``), in frames of FRAME_ROWS rows; an object
    listed twice (under a cursor that moved) is kept once, where it came first."""

    plan: ListingPlan
    frames: list[pl.DataFrame] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    listed: int = 0  # objects listed
    pages: int = 0
    left_out: int = 0  # by the job's own --where checks
    twice: int = 0

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.plan.id_columns, *(key for key, _ in self.plan.sets))

    def add(self, objects: list[dict[str, Any]], params: Mapping[str, str]) -> None:
        self.pages += 1
        self.listed += len(objects)
        ids = len(self.plan.id_fields)
        for obj in objects:
            row = self.plan.row(obj, params)
            if row is None:
                self.left_out += 1
                continue
            key = tuple(row[:ids])
            if key in self.seen:
                self.twice += 1
                continue
            self.seen.add(key)
            self.rows.append(row)
            if len(self.rows) >= FRAME_ROWS:
                self.frames.append(_frame(self.columns, self.rows))
                self.rows = []

    def table(self) -> pl.DataFrame:
        if self.rows:
            self.frames.append(_frame(self.columns, self.rows))
            self.rows = []
        return _one_table(self.columns, self.frames)


async def list_all(
    plan: ListingPlan,
    fetch: Fetch,
    stopped: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
) -> Listing | None:
    """Every listing of the plan, in order, its pages one after another; None if ``stopped``
    (a signal) between two pages. How far it got is logged every PROGRESS_S (a million objects
    are 10,000 pages: 20 minutes at 500 requests a minute, before the run starts)."""
    listing = Listing(plan)
    said = clock()
    for path, params in plan.paths:
        async for objects in pages(fetch, path, plan.query, plan.page_size, stopped):
            listing.add(objects, dict(params))
            if clock() - said >= PROGRESS_S:
                said = clock()
                log.info(
                    "listing %s: %d objects in %d pages so far", plan.resource, listing.listed,
                    listing.pages, extra={"event": "listing", "objects": listing.listed,
                                          "pages": listing.pages},
                )  # fmt: skip
        if stopped():
            return None
    return listing


# --- a run's listing -------------------------------------------------------------------------


def fingerprint(config: JobConfig) -> dict[str, Any]:
    """What a listing run adds to its fingerprint (``job.run_fingerprint``): its ``--where`` and
    ``--set``, so that an unfinished run refuses others (its recorded listing holds the values
    the first ones gave); nothing for a file's run."""
    if not config.listing:
        return {}
    return {"listing": {"where": [list(p) for p in config.where],
                        "set": [list(p) for p in config.set_values]}}  # fmt: skip


def check_config(config: JobConfig) -> None:
    """The listing options' rules (``JobConfig.__post_init__``): ConfigError, one line."""
    from bulk_update.config import flag_of

    if not config.listing:
        if config.where or config.set_values:
            raise ConfigError("--where and --set take the rows from the API's listing: give --list")
        return
    if config.revert:
        raise ConfigError("revert reads the results it reverts: no --list")
    if config.shard is not None:
        raise ConfigError(
            "--shard: a listing is one run's (each shard would list every object): list in one "
            "run without --shard"
        )
    mapped = ("id_column", "columns", "metadata_column", "number_columns", "boolean_columns")
    given = [flag_of(name) for name in mapped if getattr(config, name) is not None]
    if given:
        raise ConfigError(
            f"--list: the rows' columns are the resource's ID columns and the --set keys, with "
            f"the listed values' types: no {', '.join(given)}"
        )
    plan_of(config)


def plan_of(config: JobConfig) -> ListingPlan:
    return plan_listing(config.resource, config.where, config.set_values, config.page_size)


def listing_path(config: JobConfig) -> Path:
    """Where a run's listing is recorded: beside the job's store (``JobConfig.store_path``'s
    directory: --state-dir, else beside a local results file), named by the run: its job, and
    a digest of its results path as given (the run's key)."""
    digest = hashlib.blake2b(config.output.encode(), digest_size=5).hexdigest()
    return config.store_path().parent / f"{config.resolved_job_name()}.listing-{digest}.parquet"


def recorded_listing(config: JobConfig) -> str | None:
    """The listing that the job's unfinished run for the same results recorded (its input), for
    this invocation to resume with; None if there is none (no run yet, the last one finished,
    compacted, or not a listing's: the store then judges the run as it judges a file's).
    ConfigError if that listing's file is gone (another machine's, or removed)."""
    from bulk_update.store import open_existing_store, unfinished_because, unfinished_statuses

    job = config.resolved_job_name()
    location = config.store_location()
    if location.url is None and not location.path.is_file():
        return None
    with open_existing_store(location, job) as store:
        runs = [run for run in store.history(job)
                if run.results == config.output and not run.shard and not run.replaced]  # fmt: skip
    if not runs:
        return None
    last = max(runs, key=lambda run: run.run_id)
    left = unfinished_statuses(config.retry_failed)
    why = unfinished_because(last.ended_at, last.counts, last.stopped_by, left)
    if why is None or last.compacted_at is not None or not last.options.get("listing"):
        return None
    recorded = last.input
    if not recorded or not Path(recorded).is_file():
        raise ConfigError(
            f"run {last.run_id} of job {job!r} is unfinished ({why}) and its listing "
            f"{recorded} is not here (it ran on {last.host}): resume it there, or run with "
            "--restart to list again"
        )
    return recorded


@dataclass(frozen=True, slots=True)
class Listed:
    """A run's listing, taken: the config that reads it (its ``input`` the listing's file), and
    the listing's own requests and rate limiter (None: read from an earlier invocation's
    recording), for the run's sender to go on with. ``stopped``: a signal stopped the listing,
    nothing recorded."""

    config: JobConfig
    rows: int = 0
    requests: int = 0
    limiter: RateLimiter | None = None
    stopped: bool = False


async def take_listing(
    config: JobConfig,
    mode: Mode,
    stop: Stop,
    transport: httpx2.AsyncBaseTransport | None,
    scratch: contextlib.ExitStack,
) -> Listed:
    """The run's rows from the API's listing (see the module): an unfinished run's recorded
    listing, else a new one, listed and recorded (a dry run's or a check's in ``scratch``, a
    temporary directory: nobody resumes them). Raises ConfigError (exit 2) or FatalApiError
    (exit 3) if the listing cannot be taken; nothing is sent either way."""
    if config.input:
        raise ConfigError("--list takes the rows from the API: give no INPUT")
    plan = plan_of(config)
    records = mode.records and not mode.dry  # a run of the job's: resumed, recorded
    if records and not config.restart:
        recorded = await asyncio.to_thread(recorded_listing, config)
        if recorded is not None:
            log.info(
                "resuming with the run's recorded listing %s (--restart lists again)", recorded,
                extra={"event": "listing_resumed", "listing": recorded},
            )  # fmt: skip
            return Listed(dataclasses.replace(config, input=recorded))
    if records:
        path = listing_path(config)
    else:
        directory = scratch.enter_context(tempfile.TemporaryDirectory(prefix="bulk-update-"))
        path = Path(directory) / "listing.parquet"
    started = time.monotonic()
    async with Sender(SendSettings.from_config(config), stop, transport=transport) as sender:

        async def fetch(page: str) -> Attempt:
            return await sender.fetch(page, judge_page)

        listing = await list_all(plan, fetch, lambda: stop.is_set)
        if listing is None:
            return Listed(config, requests=sender.requests_sent, stopped=True)
        table = listing.table()
        await asyncio.to_thread(write_listing, path, table)
    log.info(
        "listed %d %s in %d pages (%d requests, %.1f s): %d rows into %s%s",
        listing.listed, plan.resource, listing.pages, sender.requests_sent,
        time.monotonic() - started, table.height, path, _left_out(listing),
        extra={"event": "listed", "listing": str(path), "rows": table.height,
               "objects": listing.listed, "pages": listing.pages,
               "requests": sender.requests_sent},
    )  # fmt: skip
    listed = dataclasses.replace(config, input=str(path))
    return Listed(listed, table.height, sender.requests_sent, sender.limiter)


def _left_out(listing: Listing) -> str:
    said = []
    if listing.left_out:
        said.append(f"{listing.left_out} left out by --where")
    if listing.twice:
        said.append(f"{listing.twice} listed twice, kept once")
    return f" ({'; '.join(said)})" if said else ""
