"""``BulkUpdateOperator``: the job as an Airflow task, run in the worker.

Everything the job does is ``run_job``'s; the operator only translates between Airflow and it:
its parameters and the two connections into a ``JobConfig`` (``connections.py``), the job's exit
code into Airflow's meaning (fail for good, fail the try so a retry resumes, or succeed), its
summary into the task's XCom and the asset event's extra, and ``on_kill`` into the stop SIGTERM
makes (``Interrupt``).

The job runs in a thread of the task's process: Airflow's own SIGTERM handler stays in place
(the job installs none outside the main thread) and calls ``on_kill``, which stops the run the
way SIGTERM stops the CLI: no new rows, the requests in flight finished, the results written,
exit 143; the task fails this try, and the next one (a retry, unless the task was marked
failed; a clear) resumes the run from the job's store. The Airflow modules and the option table
load with this module; the job (polars, httpx2) only when a task runs: a DAG file importing the
operator is parsed again and again.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import signal
import threading
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.sdk.log import mask_secret

from bulk_update.airflow.connections import openai_connection, store_url
from bulk_update.config import JOB_NAME, OPTIONS, JobConfig, default_of, refuse_unknown
from bulk_update.exceptions import BulkUpdateError, ConfigError
from bulk_update.exitcodes import RESUMABLE, ExitCode
from bulk_update.observe.draw import ProgressLog
from bulk_update.observe.summary import JobSummary
from bulk_update.outcome import Status
from bulk_update.paths import is_remote
from bulk_update.stop import Interrupt

if TYPE_CHECKING:
    from airflow.sdk import DAG, Context
    from airflow.sdk.definitions.mappedoperator import OperatorPartial

__all__ = ["BulkUpdateOperator", "default_job_name", "default_outlets", "shards"]


# The job's options the operator takes, by its name for each (JobConfig's, but ``results`` for
# ``output``: every operator's ``output`` is its XComArg), with JobConfig's name: every option
# declared ``airflow`` (not the key and the store's URL, which come from connections, never
# from a DAG file; not the CLI's revert and check).
JOB_OPTIONS: dict[str, str] = {
    declared.airflow_name or name: name for name, declared in OPTIONS.items() if declared.airflow
}
# Each one's default: JobConfig's, unless declared otherwise for Airflow (``drain_timeout``).
DEFAULTS: dict[str, Any] = {
    parameter: default_of(name) if OPTIONS[name].airflow_default is None
    else OPTIONS[name].airflow_default
    for parameter, name in JOB_OPTIONS.items()
}  # fmt: skip
# What a DAG may give beyond an option's type: what from_options turns into it.
GIVEN_AS: dict[str, Any] = {
    "columns": str | Sequence[str] | None,
    "shard": str | Sequence[int] | None,
    "storage_options": Mapping[str, str] | Sequence[Sequence[str]],
    "where": Sequence[str] | Sequence[Sequence[str]] | Mapping[str, str],
    "set_values": Mapping[str, str] | Sequence[str] | Sequence[Sequence[str]],
}
# BaseOperator's parameters (and what Airflow's wrapper of __init__ passes on).
BASE_PARAMETERS = set(inspect.signature(BaseOperator.__init__).parameters) | {"default_args"}


def operator_signature(init: Callable[..., None]) -> inspect.Signature:
    """The signature Airflow and ``help()`` see (Airflow checks ``default_args``, ``partial``
    and ``expand`` against it): each option with its type and default, then the operator's own
    parameters (``init``'s), then BaseOperator's in ``**kwargs``."""
    hints = typing.get_type_hints(JobConfig)
    options = []
    for parameter, name in JOB_OPTIONS.items():
        default = DEFAULTS[parameter]
        options.append(
            inspect.Parameter(
                parameter, inspect.Parameter.KEYWORD_ONLY,
                default=inspect.Parameter.empty if default is MISSING else default,
                annotation=GIVEN_AS.get(name, hints[name]),
            )
        )  # fmt: skip
    own_hints = typing.get_type_hints(init)
    own = [
        parameter.replace(annotation=own_hints.get(parameter.name, parameter.annotation))
        for parameter in inspect.signature(init).parameters.values()
    ]
    return inspect.Signature([own[0], *options, *own[1:]])


def refuse_unknown_parameters(operator: str, kwargs: Mapping[str, Any]) -> None:
    """TypeError naming the parameters that are neither the job's options nor BaseOperator's,
    with a guess (Airflow's own check shows them as a dict)."""
    known = set(JOB_OPTIONS) | BASE_PARAMETERS
    unknown = {name: None for name in kwargs if name not in known and not name.startswith("_")}
    try:
        where = f"{operator} (task_id: {kwargs.get('task_id')})"
        refuse_unknown(unknown, dict.fromkeys(known), where, what="parameter")
    except ConfigError as exc:
        raise TypeError(str(exc)) from None


def what_next(*, started: bool, retry: str | None, killed: bool = False) -> str:
    """What a failed try's message ends with: what takes the job up again, and only what
    will. ``started``: the run had begun (the next try resumes it; else nothing was sent, and
    it tries again). ``retry``: the next try's number (``try 2 of 3``) if one is due, else
    None. ``killed``: stopped by ``on_kill``, which cannot tell a task marked failed (no retry
    will come) from one cleared or a worker stopping (a retry may)."""
    does = "resumes the run" if started else "tries again"
    sent = "" if started else "nothing was sent; "
    if killed:
        maybe = f" (so does the retry, {retry}, unless the task was marked failed)" if retry else ""
        return f"{sent}a clear of the task {does}{maybe}"
    if retry:
        return f"{sent}the retry ({retry}) {does}"
    return f"{sent}no retry left: a clear of the task {does}"


def shards(count: int) -> list[str]:
    """``["0/N", ..., "N-1/N"]``: what ``.expand(shard=...)`` takes to fan a job out."""
    if count < 1:
        raise ValueError(f"shards({count}): the count must be at least 1")
    return [f"{index}/{count}" for index in range(count)]


def _templated(value: object) -> bool:
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def default_job_name(dag_id: str | None, task_id: str) -> str:
    """The job an operator without ``job_name`` runs: its DAG's and its own id. Stable from
    one DAG run to the next (a name taken from a templated results path would change every
    night, and the job would never find what it set the night before) and shared by the
    shards of a mapped task."""
    name = f"{dag_id}.{task_id}" if dag_id else task_id
    if JOB_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip("._-")
    return f"{cleaned[:90]}-{digest}"


def default_outlets(
    results: object,
    job_name: object,
    dag: DAG | None,
    task_id: str,
    dry_run: object = False,
    *,
    sharded: bool = False,
) -> list[Asset]:
    """The outlet an operator has unless given ``outlets``: the results file's URI when its
    path is fixed (an absolute local path, or an object store URL) and the task is the whole
    job; else the job's own asset, ``x-bulk-update://JOB``. A shard (``sharded``: ``shard``
    given, or a mapped task) always has the job's: its results are a part of the job's, and the
    job's run gets its one event when its last shard ends. No outlet for a dry run (it changes
    nothing downstream can act on) or when the job's name is itself templated (no stable
    name)."""
    if dry_run:
        return []
    if isinstance(results, str) and not _templated(results) and not sharded:
        if is_remote(results):
            return [Asset(uri=results)]
        if Path(results).is_absolute():
            return [Asset(uri=Path(results).as_uri())]
    if _templated(job_name):
        return []
    dag_id = dag.dag_id if dag is not None else None
    job = job_name if isinstance(job_name, str) else default_job_name(dag_id, task_id)
    return [Asset(uri=f"x-bulk-update://{job}")]


# When the task's outlets get their asset event: "always" (every run that succeeds), or
# "updated" (only a run that updated at least one row).
ASSET_EVENTS = ("always", "updated")


def check_asset_events(value: object, task_id: object) -> None:
    """ValueError naming the task unless ``value`` is one of ASSET_EVENTS."""
    if value not in ASSET_EVENTS:
        raise ValueError(
            f"BulkUpdateOperator (task_id: {task_id}): asset_events must be 'always' or "
            f"'updated', got {value!r}"
        )


class BulkUpdateOperator(BaseOperator):
    """Bulk-update the metadata of OpenAI conversations from a table (CSV, TSV, JSON Lines or
    Parquet): the whole ``bulk-update run`` (rate-limited, concurrent, retried, resumable), in
    the worker.

    The parameters are ``JobConfig``'s options under its names (see the README's option table),
    with the same defaults and checks, except the results path, ``results``: every operator's
    ``output`` is its XComArg. ``inspect.signature(BulkUpdateOperator)`` lists them with their
    types and defaults (``JOB_OPTIONS``: each one declared ``airflow`` in ``config.py``). Those
    declared ``templated`` are template fields (``{{ ds }}``, ``{{ run_id }}``,
    ``{{ ti.map_index }}``): ``input``, ``results``, ``errors_output``, ``job_name``,
    ``state_dir``, ``since_state`` and ``metrics_file``. A name that is neither an option nor
    BaseOperator's is refused, naming it.

    :param openai_conn_id: the ``openai`` connection, read as the OpenAI provider's hook reads
        it (the key in its password or ``extra.openai_client_kwargs.api_key``; the base URL in
        ``openai_client_kwargs.base_url`` or its host; ``organization`` and ``project`` in
        ``openai_client_kwargs``). A connection that does not exist, or None, leaves the
        worker's environment (OPENAI_API_KEY, ...). ``base_url``, ``organization`` and
        ``project`` given here win over the connection's.
    :param store_conn_id: a Postgres connection: the job's store (runs, outcomes, state, rate
        budget) in that database, shared by every worker. Else a SQLite file in ``state_dir``
        if it is given (one machine only; not with ``store_conn_id``), else
        $BULK_UPDATE_STATE_URL, else a SQLite file beside the results: a parameter given beats
        the environment, as a flag does.
    :param shard: ``"K/N"``, as ``--shard`` takes it: ``.partial(...).expand(shard=shards(4))``
        fans the job out; the shards share the job's store and its ``rpm``.
    :param job_name: default ``DAG_ID.TASK_ID``: the same every night and for every shard.
    :param fail_on_row_errors: rows ``failed`` or ``invalid`` (exit 1) fail the task, for good
        (a retry would find them finished); False: the task succeeds and logs the counts.
    :param asset_events: ``"always"`` (the default): each outlet gets an event whenever the
        job's run succeeds, rows updated or not (the results were written, and a consumer that
        reads them or reports on each run runs every time); ``"updated"``: only when the
        job's run (all its shards) updated at least one row.
    :param drain_timeout: 3 s, not the CLI's 10: Airflow's supervisor sends SIGKILL 5 s after
        the SIGTERM that kills a task, and the results need the rest.

    Exit codes: 0 succeeds; 2 (options, input, a connection it cannot use: nothing sent) raises
    ``AirflowFailException``, no retry can mend it, unless it may pass (``may_pass``: the API or
    the store not reachable, the run held by another process), which fails the try; 3, 130,
    143 (the API said stop, a signal, ``on_kill``, ``execution_timeout``) and 70 (a bug; the
    store is consistent) fail the try, and the next try resumes the run: the message says which
    will come (``what_next``: the retry, if one is due; else only a clear).

    The return value (the XCom) is the summary's ``as_dict()`` and the shard: counts, exit
    code, results and errors paths, the store without its password, never the key. Each outlet
    (default: ``default_outlets``) gets an asset event whose extra holds the counts and paths:
    one per job run, also when the job is sharded (mapped tasks, ``shard``): the shard that
    ends the job's run last emits it, with every shard's counts (``Store.settle`` decides
    which, in the job's store); the others drop their outlets for the try, as Airflow 3
    registers an event for each outlet a task still has when it succeeds.

    Not deferrable, on purpose: the updates are sent from this worker. A trigger is re-run
    after a triggerer restarts, and would send them again.
    """

    template_fields: Sequence[str] = tuple(
        parameter for parameter, name in JOB_OPTIONS.items() if OPTIONS[name].templated
    )
    ui_color = "#e8f4ea"
    # The running job's, for on_kill (called by Airflow's SIGTERM handler, in the main thread).
    _interrupt: Interrupt | None = None
    # The next try if Airflow will retry this one when it fails (``try 2 of 3``), else None.
    _retry: str | None = None
    # Set by __init__ from the parameters: those this class reads itself.
    input: str
    results: str
    job_name: str | None
    state_dir: str | None
    _dry_run: bool  # BaseOperator.dry_run is a method (it renders the templates)

    def __init__(
        self,
        *,
        openai_conn_id: str | None = "openai_default",
        store_conn_id: str | None = None,
        fail_on_row_errors: bool = True,
        asset_events: str = "always",
        **kwargs: Any,
    ) -> None:
        """The job's options (``JOB_OPTIONS``, by name) and BaseOperator's parameters, in
        ``kwargs``; the signature Airflow and ``help()`` see is ``operator_signature``'s."""
        given = {name: kwargs.pop(name) for name in list(kwargs) if name in JOB_OPTIONS}
        refuse_unknown_parameters(type(self).__name__, kwargs)
        check_asset_events(asset_events, kwargs.get("task_id"))
        super().__init__(**kwargs)
        for name, default in DEFAULTS.items():  # (input and results: Airflow saw them given)
            setattr(self, "_dry_run" if name == "dry_run" else name, given.get(name, default))
        if "outlets" not in kwargs:
            self.outlets = default_outlets(
                self.results, self.job_name, self.get_dag(), self.task_id, self._dry_run,
                sharded=given.get("shard") is not None,
            )  # fmt: skip
        self.openai_conn_id = openai_conn_id
        self.store_conn_id = store_conn_id
        self.fail_on_row_errors = fail_on_row_errors
        self.asset_events = asset_events

    # Before the class is made: Airflow's metaclass reads the signature when it wraps __init__.
    __init__.__signature__ = operator_signature(__init__)  # type: ignore[attr-defined]

    @classmethod
    def partial(cls, **kwargs: Any) -> OperatorPartial:
        """As ``BaseOperator.partial``, with the default outlet: a mapped task's outlets are
        read from here when the DAG is parsed, before any ``__init__`` runs."""
        check_asset_events(kwargs.get("asset_events", "always"), kwargs.get("task_id"))
        partial: OperatorPartial = super().partial(**kwargs)
        if "outlets" not in kwargs:  # a mapped task: its map indexes are shards of one job
            partial.kwargs["outlets"] = default_outlets(
                kwargs.get("results"), kwargs.get("job_name"), partial.kwargs.get("dag"),
                partial.kwargs["task_id"], kwargs.get("dry_run"), sharded=True,
            )  # fmt: skip
        return partial

    def job_config(self) -> JobConfig:
        """The run's JobConfig, from the (rendered) parameters and the connections. Raises
        ConfigError naming what is wrong."""
        options: dict[str, Any] = {
            name: getattr(self, "_dry_run" if name == "dry_run" else parameter)
            for parameter, name in JOB_OPTIONS.items()
        }
        options["job_name"] = self.job_name or default_job_name(self.dag_id, self.task_id)
        api = openai_connection(self.openai_conn_id)
        if api.ignored:
            self.log.info(
                "connection %s: openai_client_kwargs %s configure the SDK's client, which "
                "bulk_update does not use (its own: timeout, max_attempts)",
                self.openai_conn_id, ", ".join(api.ignored),
            )  # fmt: skip
        if api.api_key is not None:
            # Airflow masks a connection's password, not a key inside its extra's JSON.
            mask_secret(api.api_key)
        options["api_key"] = api.api_key
        for name in ("base_url", "organization", "project"):
            options[name] = options[name] or getattr(api, name)
        if self.store_conn_id is not None:
            options["state_url"], ignored = store_url(self.store_conn_id)
            if self.state_dir is not None:  # JobConfig refuses it too, in the CLI's words
                raise ConfigError("store_conn_id and state_dir exclude each other: give one")
            if ignored:
                self.log.info(
                    "connection %s: extra %s are not libpq parameters; not used",
                    self.store_conn_id, ", ".join(ignored),
                )  # fmt: skip
        given = {name: value for name, value in options.items() if value is not None}
        return JobConfig.from_options(given, source=f"task {self.task_id}")

    def execute(self, context: Context) -> dict[str, Any]:
        # Made first: an on_kill while the connections are read stops the job at its start.
        interrupt = self._interrupt = Interrupt()
        self._retry = _retry_due(context)
        try:
            try:
                config = self.job_config()
            except ConfigError as exc:
                raise AirflowFailException(f"task {self.task_id}: {exc} (exit 2)") from None
            shard = f"{config.shard[0]}/{config.shard[1]}" if config.shard else None
            # What the task's messages call the run: the job by name, and its shard.
            name = f"bulk-update job {config.job_name}" + (f", shard {shard}" if shard else "")
            self.log.info(
                "%s: %s -> %s; store %s; rpm %d, concurrency %d", name, config.input,
                config.output, config.store_where(), config.rpm, config.concurrency,
            )  # fmt: skip
            with _quiet_http_logs():
                summary = self._run(config, name, interrupt)
        finally:
            self._interrupt = None
        self.log.info("%s", summary.line())
        result = summary.as_dict()
        result["shard"] = shard
        code = summary.exit_code
        if code == ExitCode.OK or (code == ExitCode.ROWS_FAILED and not self.fail_on_row_errors):
            if code == ExitCode.ROWS_FAILED:
                self.log.warning(
                    "%s finished with %s (fail_on_row_errors=False)", name, _row_errors(summary)
                )
            self._record_assets(context, result, config, name)
            return result
        if code == ExitCode.ROWS_FAILED:
            raise AirflowFailException(f"{name} finished with {_row_errors(summary)}")
        if code in RESUMABLE or code == ExitCode.INTERNAL:
            reason = (summary.fatal_error or summary.stopped_by or "an internal error").rstrip(".")
            after = what_next(started=True, retry=self._retry, killed=bool(summary.stopped_by))
            raise AirflowException(f"{name} stopped (exit {int(code)}): {reason}; {after}")
        raise AirflowFailException(f"{name} failed (exit {int(code)}): {summary.line()}")

    def _run(self, config: JobConfig, name: str, interrupt: Interrupt) -> JobSummary:
        """The job, in a thread: this (main) thread keeps Airflow's signal handling, and waits.
        Whatever cuts the wait short (an ``execution_timeout``, Ctrl-C) stops the job as a
        signal would, and waits for it to drain and write its results before going on (the
        next try must not start while this one still sends)."""
        from bulk_update.job import run_job  # (polars, httpx2: in the task, not the DAG's parsing)

        outcome: list[JobSummary | BaseException] = []
        ended = threading.Event()

        def work() -> None:
            try:
                outcome.append(run_job(config, progress=ProgressLog(), interrupt=interrupt))
            except BaseException as exc:
                outcome.append(exc)
            finally:
                ended.set()

        threading.Thread(target=work, name=f"bulk_update {name}", daemon=True).start()
        try:
            ended.wait()
        except BaseException as exc:
            # Not Thread.join: in Python 3.11 a join cut short by an exception leaves the thread
            # marked as ended, and a second join returns at once. The Event waits for real.
            signum = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
            self.log.warning("%s: stopping the run (as %s)", type(exc).__name__, signum.name)
            interrupt(signum)
            while not ended.wait(1.0):
                pass
            if outcome and isinstance(outcome[0], JobSummary):
                self.log.warning("%s", outcome[0].line())
            raise
        (done,) = outcome
        if isinstance(done, BulkUpdateError):
            if done.exit_code in RESUMABLE or done.may_pass:
                # An API or store not reachable now, a run held by another process: it may
                # pass. (The rest of exit 2 no retry can mend.)
                after = what_next(started=False, retry=self._retry)
                raise AirflowException(f"{name} failed: {done} (exit {done.exit_code}); {after}")
            raise AirflowFailException(f"{name} failed: {done} (exit {done.exit_code})") from None
        if isinstance(done, BaseException):
            raise done
        return done

    def on_kill(self) -> None:
        """The task is killed (Airflow's SIGTERM: the task marked failed or cleared, a worker
        shutting down): stop the run as SIGTERM stops the CLI (drained within
        ``drain_timeout``, results written, exit 143); the try fails, and a clear of the task
        resumes it (so does a retry, if one is due: not after a mark-failed). A second call
        stops at once."""
        interrupt = self._interrupt
        if interrupt is not None:
            self.log.warning(
                "on_kill: stopping the run: finishing the requests in flight, writing the "
                "results; %s", what_next(started=True, retry=self._retry, killed=True),
            )  # fmt: skip
            interrupt(signal.SIGTERM)

    def _record_assets(
        self, context: Context, result: Mapping[str, Any], config: JobConfig, name: str
    ) -> None:
        """Each outlet's asset event carries the job's run's counts and where its results are:
        the run's own; a shard's, only if it ends the job's run (``_settle``), with every
        shard's. No event (the outlets dropped for this try) from a shard that does not end
        it, nor with ``asset_events="updated"`` from a job's run that updated no row."""
        if not any(isinstance(outlet, Asset) for outlet in self.outlets):
            return  # none (a dry run), or aliases only: their events are the user's to add
        extra: dict[str, Any] | None = {
            "job_name": result["job_name"], "shard": result["shard"], "dry_run": result["dry_run"],
            "counts": result["counts"], "total_rows": result["total_rows"],
            "exit_code": result["exit_code"], "results": result["output"],
            "errors_output": result["errors_output"],
        }  # fmt: skip
        if config.shard is not None:
            extra = self._settle(context, config, name)
        if (
            extra is not None
            and self.asset_events == "updated"
            and not extra["counts"].get(Status.UPDATED.value)
        ):
            self.log.info("%s updated no row: no asset event (asset_events='updated')", name)
            extra = None
        if extra is None:
            # Airflow 3 registers an event for each outlet the task has when it succeeds (the
            # task runner sends ``task.outlets``); none left, none registered.
            self.outlets = []
            return
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra = dict(extra)

    def _settle(self, context: Context, config: JobConfig, name: str) -> dict[str, Any] | None:
        """This shard's run ended for good in this DAG run: settled in the job's store, which
        says if it is the job's run's last shard there. Returns the job's run's event extra
        (every shard's counts and paths) if it is; None if not (logged)."""
        from bulk_update.store import RunKey, open_store

        assert config.shard is not None
        key = RunKey(config.resolved_job_name(), config.output, config.shard)
        wave = f"{self.dag_id}/{context['run_id']}"
        try:
            with open_store(config.store_location()) as store:
                settled = store.settle(key, wave)
        except BulkUpdateError as exc:
            raise AirflowException(
                f"{name}: its end could not be recorded for the job's asset event: {exc}; "
                f"{what_next(started=True, retry=self._retry)}"
            ) from None
        if not settled.runs:
            waiting = ", ".join(settled.waiting)
            self.log.info(
                "%s: the job's asset event %s", name,
                f"waits for shard {waiting} (the shard that ends the job's run last emits it)"
                if waiting else "was emitted by another shard of this run",
            )  # fmt: skip
            return None
        runs = settled.runs
        counts: Counter[str] = Counter()
        for run in runs:
            counts.update(run.counts)
        self.log.info("%s ends the job's run (%d shards): the job's asset event", name, len(runs))
        return {
            "job_name": key.job, "shards": settled.shards, "dry_run": False,
            "counts": dict(counts), "total_rows": sum(run.total_rows or 0 for run in runs),
            "exit_code": max(run.exit_code or 0 for run in runs),
            "results": [run.results for run in runs],
            "errors_output": [run.options.get("errors_output") for run in runs],
        }  # fmt: skip


def _retry_due(context: Context) -> str | None:
    """``try N of M`` if a failure of this try is retried (Airflow retries while the try's
    number is at most ``max_tries``: the task's ``retries``, raised by a clear), else None."""
    ti = context.get("ti")
    tries, most = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    if not isinstance(tries, int) or not isinstance(most, int) or tries > most:
        return None
    return f"try {tries + 1} of {most + 1}"


@contextlib.contextmanager
def _quiet_http_logs() -> Iterator[None]:
    """httpx2 logs each request at INFO, and Airflow shows INFO: a line a row in the task's
    log. The job's own log says what was sent; httpx2's warnings still show."""
    http = logging.getLogger("httpx2")
    before = http.level
    http.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        http.setLevel(before)


def _row_errors(summary: JobSummary) -> str:
    bad = {s: summary.counts.get(s, 0) for s in (Status.FAILED.value, Status.INVALID.value)}
    listed = ", ".join(f"{n} {s}" for s, n in bad.items() if n)
    where = summary.errors_output or summary.output
    return f"{listed} of {summary.total_rows} rows: see {where}"
