"""What ``--help`` says of the command and of each subcommand (the options' own help is with
them, in ``_options.py``)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ABOUT", "DESCRIPTION", "EXIT_CODES_HELP"]

DESCRIPTION = (
    "Bulk-update the metadata of OpenAI conversations from a CSV, TSV, JSON Lines or Parquet table."
)

EXIT_CODES_HELP = """exit codes:
  0    every row updated or unchanged (rows left unprocessed by --limit are no failure)
  1    finished; some rows failed or invalid (see the results or --errors-output)
  2    bad usage, config, input or store, or another run holds the job: nothing sent
  3    stopped: 401/403, insufficient_quota, the API down (circuit breaker),
       --stop-after-failures rows in a row failed alike, or a server that replaced a map
       (--backup); the rest unprocessed: re-run to resume
  130  stopped by SIGINT (Ctrl-C) / 143 by SIGTERM, after a drain: re-run to resume
  70   an internal error (a bug): the traceback is in the log; re-run to resume
  (a dry run, validate, keeps nothing: re-run, it starts over)"""

RUN_EPILOG = f"""example:
  export OPENAI_API_KEY=sk-...
  bulk-update validate exports/conversations.csv --output out/plan.csv --job-name conversations
  bulk-update run exports/conversations.csv --output out/results.parquet \\
      --job-name conversations --errors-output out/errors.csv --rpm 3000 --concurrency 32

{EXIT_CODES_HELP}"""

VALIDATE_EPILOG = f"""Every row ends planned (would be sent), unchanged (the same as the job last
set: would not be sent) or invalid (with the reason); the summary ends with "would send N".

example:
  bulk-update validate exports/conversations.csv --output out/plan.csv --job-name conversations

{EXIT_CODES_HELP}"""


REVERT_EPILOG = f"""example:
  bulk-update run exports/fix.csv --output out/fix.parquet --backup
  bulk-update revert out/fix.parquet --output out/fix-revert.parquet --dry-run
  bulk-update revert out/fix.parquet --output out/fix-revert.parquet

{EXIT_CODES_HELP}"""


class About(NamedTuple):
    """A subcommand's line in the command's help, and its own help's head and tail."""

    help: str
    description: str
    epilog: str | None = None


ABOUT = {
    "run": About(
        help="update conversations' metadata from a table",
        description="Update the metadata of one conversation per input row (CSV, TSV, JSON "
        "Lines or Parquet). Resumes where the last run on the same --output stopped; sends only "
        "the rows changed since the job last set them. The API key comes from $OPENAI_API_KEY.",
        epilog=RUN_EPILOG,
    ),
    "validate": About(
        help="validate and plan only (= run --dry-run): send nothing",
        description="Read, validate and plan every row; send nothing; need no API key. With "
        "--check-server, also read each valid row's conversation (GET only, with the API key): "
        "what the server holds decides.",
        epilog=VALIDATE_EPILOG,
    ),
    "revert": About(
        help="undo a --backup run, never over others' changes",
        description="Put back what a run with --backup changed, from its results file: each "
        "updated row's keys go back to their before-image values. A key changed on the server "
        "since the run is left alone (the row is invalid, drifted) unless --force. Keys the run "
        "added cannot be removed through the API: the summary names them. A revert is a run of "
        "the same job (its store beside RESULTS, or give --job-name/--state-dir as the run had "
        "them): journaled, resumable, rate limited.",
        epilog=REVERT_EPILOG,
    ),
    "history": About(
        help="a job's runs, newest first, from its store",
        description="One line per run of the job, newest first: when it started and ended, its "
        "results path and shard, how many invocations, its exit code and what stopped it, the "
        "requests it sent and how many were answered 429, and its rows by status. Reads the "
        "job's store: STATE_DIR/JOB.sqlite, or the PostgreSQL store of --state-url. Name the "
        "job as run did: --job its job file, or --job-name its name.",
        epilog="example:\n  bulk-update history --job jobs/nightly.toml\n"
        "  bulk-update history --job-name nightly --state-dir state/\n"
        "  bulk-update history --job-name nightly --json | jq '.[0].exit_code'",
    ),
    "status": About(
        help="a job's runs going on or unfinished now: done/total, rate, time left, holder",
        description="The job's runs that are going on now, or stopped before their end (killed, "
        "signalled, or stopped by the API): rows done of the total, the rate over the last "
        "minute, the time left at that rate, and the host and pid that hold the run. Works from "
        "any shell or machine that reaches the job's store. A run that beats no heartbeat for "
        "3 x --metrics-interval + 5 s (20 s by default) is shown as gone.",
        epilog="example:\n  bulk-update status --job jobs/nightly.toml\n"
        "  bulk-update status --job-name nightly --state-dir state/\n"
        "  bulk-update status --job-name nightly --state-url postgresql://... --json",
    ),
    "report": About(
        help="one self-contained HTML page of a run: its rate, latency, errors, options",
        description="Write one HTML file (no network needed to open it) showing a run of the "
        "job: requests per second against --rpm and the server's announced limit, with 429s, "
        "retries and errors marked; latency percentiles; rows by status and error code; the top "
        "error messages with example rows; the run's summary and options. The newest run "
        "unless --run.",
        epilog="example:\n  bulk-update report --job jobs/nightly.toml --output nightly.html\n"
        "  bulk-update report --job-name nightly --state-dir state/ --output nightly.html\n"
        "  bulk-update history --job-name nightly   # the run IDs for --run",
    ),
    "compact": About(
        help="drop old runs' outcomes now and reclaim the store's space; history keeps them",
        description="The job's runs older than each shard's last --keep-runs lose their "
        "row-by-row outcomes (report can no longer draw them); each keeps its row in history, "
        "with its counts. Never the job's last run, a run going on or unfinished, or the job's "
        "state (what the next run compares with). Then the space is reclaimed: SQLite's file "
        "is vacuumed; PostgreSQL's outcomes table is vacuumed (its space reused by later runs, "
        "its files not shrunk). Takes the job's lock as a run does: refused while one runs. "
        "A run does the same as it ends, with the job's --keep-runs (without the vacuum).",
        epilog="example:\n  bulk-update compact --job jobs/nightly.toml\n"
        "  bulk-update compact --job-name nightly --state-dir state/ --keep-runs 1",
    ),
    "emulator": About(
        help="serve a local, in-memory stand-in for the Conversations API",
        description=(
            "Serve a local, in-memory stand-in for the OpenAI Conversations API, for demos, "
            "rehearsals, tests and benchmarks. Prints 'bulk-update emulator serving "
            "http://HOST:PORT/v1' once it accepts connections. Admin routes (no key, not "
            "counted): GET /_emulator/stats, GET /_emulator/conversations/ID, "
            "POST /_emulator/reset-counters, GET/POST /_emulator/config."
        ),
        epilog="example:\n  bulk-update emulator --port 0 --rpm 600 --latency-ms 20 "
        "--error-rate 0.05 --random-seed 7 --preload 1000",
    ),
    "demo": About(
        help="what `make demo` runs",
        description="Start the emulator on a free loopback port and run jobs/demo.toml against "
        "it in three steps: every row; the same job over the sample with three rows edited "
        "(only those three are sent); then validate --check-server over a change that adds two "
        "keys, which catches the conversation it would take past 16 keys. Run it from the "
        "project's root; the results are under out/.",
    ),
}
