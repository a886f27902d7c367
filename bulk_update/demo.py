"""``bulk-update demo`` (what ``make demo`` runs): the job over the sample data, against the
emulator on a free loopback port with a little latency and some injected faults.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import httpx2
import polars as pl

from bulk_update import emulator as emulators
from bulk_update.config import JobConfig
from bulk_update.emulator.process import EmulatorProcess
from bulk_update.exceptions import ConfigError
from bulk_update.job import run_job
from bulk_update.jobfile import load_job_file

__all__ = ["run_demo"]

DEMO_JOB = "jobs/demo.toml"
DEMO_KEY = "sk-demo-not-a-real-key"
# Fast enough to take a second or two (300 rows at 500/s), with faults enough that a few rows
# are retried and few need a third try (the backoff's 0.5 s, 1 s, 2 s ... would be the demo's
# tail).
EMULATOR_ARGS = (
    "--api-key", DEMO_KEY, "--rpm", "30000", "--latency-ms", "20",
    "--error-rate", "0.02", "--reset-rate", "0.01", "--random-seed", "7",
)  # fmt: skip


EDITED_ROWS = 3


def _edit_three_rows(source: str, target: Path) -> Path:
    """The demo's input with ``ticket_status`` changed on the first rows that have an ID."""
    frame = pl.read_csv(source, infer_schema=False)
    ids = frame.get_column("conversation_id")
    edited = (ids.str.starts_with("conv_").fill_null(False).cum_sum() <= EDITED_ROWS) & (
        ids.str.starts_with("conv_").fill_null(False)
    )
    frame = frame.with_columns(
        pl.when(edited).then(pl.lit("reopened")).otherwise("ticket_status").alias("ticket_status")
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(target)
    return target


NEW_KEYS = ("owner", "queue")
FILLED_KEYS = 15


def _check_new_keys(config: JobConfig, base_url: str) -> str:
    """Before a change that adds keys: ``validate --check-server`` reads each conversation and
    catches the one that would get a 17th key (another tool has filled it to 15), which the
    API would refuse, and which no local check can see."""
    frame = pl.read_csv(config.input, infer_schema=False)
    ids = [i for i in frame.get_column("conversation_id").to_list() if i and i.startswith("conv_")]
    chosen = ids[:3]
    full = ids[0]
    url = f"{base_url}/conversations/{full}"
    stored = _api("GET", url)
    extra = {f"crm_field_{n}": "x" for n in range(FILLED_KEYS - len(stored["metadata"]))}
    _api("POST", url, {"metadata": extra})
    target = Path(config.output).with_name("demo-new-keys.csv")
    rows = "".join(
        f"{i},{name},tier2\n" for i, name in zip(chosen, ("ana", "ben", "cy"), strict=True)
    )
    target.write_text("conversation_id," + ",".join(NEW_KEYS) + "\n" + rows)
    output = str(Path(config.output).with_name("demo-check.csv"))
    print(
        f"\na change that adds two keys ({', '.join(NEW_KEYS)}) to 3 conversations, one of which "
        f"another tool has filled to {FILLED_KEYS} keys: validate --check-server reads each one "
        "first\n",
        flush=True,
    )
    summary = run_job(
        dataclasses.replace(
            config,
            input=str(target),
            output=output,
            errors_output=None,
            dry_run=True,
            check_server=True,
            job_name="demo-check",
        )
    )
    print(summary.line(), file=sys.stderr, flush=True)
    checked = pl.read_csv(output, infer_schema=False)
    for row in checked.iter_rows(named=True):
        reason = f" {row['error_code']}: {row['error_message']}" if row["error_code"] else ""
        print(f"  {row['conversation_id'][:16]}…  {row['status']}{reason}")
    return output


def _api(method: str, url: str, body: dict[str, object] | None = None) -> dict[str, Any]:
    """One request to the demo's emulator, through its injected faults."""
    for _ in range(20):
        try:
            response = httpx2.request(
                method,
                url,
                json=body,
                headers={"authorization": f"Bearer {DEMO_KEY}"},
                timeout=30,
            )
        except httpx2.TransportError:
            continue
        if response.status_code < 500:
            response.raise_for_status()
            answer: dict[str, Any] = response.json()
            return answer
    raise RuntimeError(f"the demo's emulator did not answer {method} {url}")


def run_demo(job_file: str = DEMO_JOB) -> int:
    missing = emulators.missing_dependency()
    if missing is not None:
        raise ConfigError(f"{emulators.EXTRA_HINT} ({missing} is not installed)")
    if not Path(job_file).is_file():
        print(f"bulk-update demo: run it from the project's root ({job_file} not found)")
        return 2
    # As `bulk-update run --job jobs/demo.toml` builds it: the job is named after its file, so
    # that both runs below (two results files) share one job's state.
    options = {"job_name": Path(job_file).stem, **load_job_file(job_file)}
    config = JobConfig.from_options(options, source=job_file)
    with EmulatorProcess(*EMULATOR_ARGS, "--preload", config.input) as emulator:
        print(f"emulator serving {emulator.base_url} ({' '.join(EMULATOR_ARGS[2:])})")
        print(f"running {job_file}: {config.input} -> {config.output}\n", flush=True)
        # A fresh emulator each time: start the job over and send every row (the old run is
        # kept in the store; the state of an earlier demo says nothing about this emulator).
        config = dataclasses.replace(
            config, base_url=emulator.base_url, api_key=DEMO_KEY, restart=True
        )
        summary = run_job(dataclasses.replace(config, full=True))
        stats = emulator.stats()
        print(summary.line(), file=sys.stderr, flush=True)
        edited = _edit_three_rows(config.input, Path(config.output).with_name("demo-edited.csv"))
        print(
            f"\nthe next night's export ({edited}): the same rows, {EDITED_ROWS} of them "
            "edited; only those are sent",
            flush=True,
        )
        rerun = str(Path(config.output).with_name("demo-rerun-results.csv"))
        again = run_job(
            dataclasses.replace(config, input=str(edited), output=rerun, errors_output=None)
        )
        print(again.line(), file=sys.stderr, flush=True)
        check = _check_new_keys(config, emulator.base_url)
    results = pl.read_csv(config.output, infer_schema=False)
    retried = results.filter(pl.col("attempts").cast(pl.Int64) > 1)
    print(f"\nthe emulator answered: {stats['by_status']}")
    print(f"{retried.height} rows needed retries, e.g.:")
    with pl.Config(tbl_rows=10, fmt_str_lengths=60, tbl_hide_dataframe_shape=True):
        print(retried.select("row_number", "status", "attempts", "request_id").head(5))
        print("invalid rows never reach the server:")
        invalid = results.filter(pl.col("status") == "invalid")
        print(invalid.select("row_number", "conversation_id", "error_code", "error_message"))
    print(f"\nresults: {config.output}   rows to fix and feed back: {config.errors_output}")
    print(f"the check against the server: {check}")
    # The sample holds invalid rows on purpose, so the job's exit code is 1; the demo worked.
    return 0 if summary.exit_code in (0, 1) else summary.exit_code
