"""The exit codes of ``bulk-update``, shared by the CLI, the summary, the Airflow DAG and the
cron wrapper."""

from __future__ import annotations

import enum
import signal

__all__ = ["RESUMABLE", "ExitCode"]


class ExitCode(enum.IntEnum):
    OK = 0  # every row finished: updated, unchanged (or left unprocessed by --limit)
    ROWS_FAILED = 1  # the run finished; some rows failed or were invalid (see the results)
    USAGE = 2  # bad options, input or store; nothing was sent
    FATAL = 3  # the API said stop (key, quota, breaker, failure streak): resumable
    INTERNAL = 70  # a bug: the traceback is in the log; the store is consistent, resumable
    SIGINT = 128 + signal.SIGINT  # 130: stopped by Ctrl-C, drained: resumable
    SIGTERM = 128 + signal.SIGTERM  # 143: stopped by SIGTERM (a scheduler), drained: resumable

    @classmethod
    def for_signal(cls, signum: signal.Signals) -> ExitCode:
        return cls(128 + int(signum))


# The runs a re-run of the same command resumes: a scheduler retries these.
RESUMABLE = frozenset({ExitCode.FATAL, ExitCode.SIGINT, ExitCode.SIGTERM})
