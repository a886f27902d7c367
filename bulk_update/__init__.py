"""bulk_update: bulk-update the metadata of OpenAI conversations from a CSV or Parquet table.

from bulk_update import JobConfig, run_job
summary = run_job(JobConfig(input="rows.csv", output="out/results.parquet"))
summary.exit_code, summary.as_dict()
"""

from bulk_update._version import __version__
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
