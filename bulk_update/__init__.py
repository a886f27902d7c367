"""bulk_update: bulk-update the metadata of OpenAI conversations from a table (CSV, TSV, JSON
Lines or Parquet).

from bulk_update import JobConfig, run_job
summary = run_job(JobConfig(input="rows.csv", output="out/results.parquet"))
summary.exit_code, summary.as_dict()

The names below are loaded when first asked for (PEP 562), not when the package is imported:
``python -m bulk_update`` imports the package before its ``__main__``, which must take SIGINT
and SIGTERM over before the libraries (polars, numpy, pyarrow: 0.4 s and more) load.
"""

from __future__ import annotations

from bulk_update._lazy import lazy
from bulk_update._version import __version__

TYPE_CHECKING = False  # not typing's: loading typing (and re) here costs 10 ms of that start
if TYPE_CHECKING:
    from bulk_update.config import JobConfig
    from bulk_update.exceptions import (
        BulkUpdateError,
        ConfigError,
        FatalApiError,
        InputError,
        JournalError,
    )
    from bulk_update.exitcodes import RESUMABLE, ExitCode
    from bulk_update.job import run_job, run_job_async
    from bulk_update.observe.summary import JobSummary, Progress
    from bulk_update.outcome import RowOutcome, Status
    from bulk_update.stop import Interrupt

__all__ = [
    "RESUMABLE",
    "BulkUpdateError",
    "ConfigError",
    "ExitCode",
    "FatalApiError",
    "InputError",
    "Interrupt",
    "JobConfig",
    "JobSummary",
    "JournalError",
    "Progress",
    "RowOutcome",
    "Status",
    "__version__",
    "run_job",
    "run_job_async",
]

# Where each public name lives (the imports above, for type checkers, say the same).
_HOMES = {
    "JobConfig": "config",
    "BulkUpdateError": "exceptions",
    "ConfigError": "exceptions",
    "FatalApiError": "exceptions",
    "InputError": "exceptions",
    "JournalError": "exceptions",
    "RESUMABLE": "exitcodes",
    "ExitCode": "exitcodes",
    "run_job": "job",
    "run_job_async": "job",
    "JobSummary": "observe.summary",
    "Progress": "observe.summary",
    "RowOutcome": "outcome",
    "Status": "outcome",
    "Interrupt": "stop",
}

__getattr__ = lazy(__name__, _HOMES)


def __dir__() -> list[str]:
    """The public names, loaded or not, and the submodules loaded (as before they were lazy)."""
    return sorted({*globals(), *__all__} - {"TYPE_CHECKING", "annotations", "lazy"})
