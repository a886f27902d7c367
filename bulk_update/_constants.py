"""The numbers of the API and of the job's defaults, in one place (as openai-python's
``_constants.py``). Nothing here imports anything of the package: every layer may read it.

The API's numbers are the ones README.md states (Sending, Input rules); a default here is the
value a flag takes when it is not given (the CLI, job files, the demo and Airflow all read these
through ``JobConfig``).
"""

import re

__all__ = [
    "AIRFLOW_DRAIN_TIMEOUT_S",
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "DEFAULT_BASE_URL",
    "DEFAULT_BREAKER_THRESHOLD",
    "DEFAULT_BREAKER_TIMEOUT_S",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_DRAIN_TIMEOUT_S",
    "DEFAULT_ID_COLUMN",
    "DEFAULT_KEEP_RUNS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_METRICS_INTERVAL_S",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_RATE_LIMIT_PAUSE_S",
    "DEFAULT_RPM",
    "DEFAULT_STOP_AFTER_FAILURES",
    "DEFAULT_STORE_TIMEOUT_S",
    "DEFAULT_TIMEOUT_S",
    "FATAL_STATUSES",
    "ID_PATTERN",
    "ID_REGEX",
    "MAX_ID_CHARS",
    "MAX_KEY_CHARS",
    "MAX_PAGE_SIZE",
    "MAX_PAIRS",
    "MAX_RATE_LIMITED_PER_ROW",
    "MAX_RESPONSE_BYTES",
    "MAX_RETRY_AFTER_S",
    "MAX_VALUE_CHARS",
    "RETRYABLE_STATUSES",
    "STORE_SEARCH_DEPTH",
]

# The API.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Metadata: at most 16 pairs, keys of at most 64 characters, values of at most 512.
MAX_PAIRS = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 512
MAX_ID_CHARS = 128
ID_PATTERN = re.compile(r"conv_[A-Za-z0-9_-]+")
ID_REGEX = r"^conv_[A-Za-z0-9_-]+$"
# Answers worth another attempt, and answers that end the whole job (a key that is not valid).
RETRYABLE_STATUSES = frozenset({408, 409, 429})
FATAL_STATUSES = frozenset({401, 403})
# The longest `retry-after` honoured; a server asking for more fails the row instead of stalling
# the whole job (the SDK's own cap).
MAX_RETRY_AFTER_S = 120.0
# Exponential backoff with jitter between attempts when the server names no wait.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# 429s do not use up --max-attempts, but a row does not wait on them for ever.
MAX_RATE_LIMITED_PER_ROW = 100
# A conversation is a few hundred bytes; an answer is never read past this.
MAX_RESPONSE_BYTES = 1 << 20
# When a 429 names no wait: hold the whole job back this long.
DEFAULT_RATE_LIMIT_PAUSE_S = 1.0

# The job's defaults.
DEFAULT_ID_COLUMN = "conversation_id"
DEFAULT_RPM = 500
DEFAULT_CONCURRENCY = 16
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_BREAKER_THRESHOLD = 10
DEFAULT_BREAKER_TIMEOUT_S = 300.0
DEFAULT_DRAIN_TIMEOUT_S = 10.0
# Airflow's supervisor sends SIGKILL 5 s after the SIGTERM that kills a task (a task marked
# failed or cleared, a timeout): the operator's drain leaves 2 s of those for the results.
AIRFLOW_DRAIN_TIMEOUT_S = 3.0
# Consecutive rows failed with the same non-retryable error code that stop the job (0: never).
DEFAULT_STOP_AFTER_FAILURES = 100
DEFAULT_STORE_TIMEOUT_S = 60.0
# The store's retention: each shard of a job keeps the row-by-row outcomes of its last N runs
# (a week of a nightly job's reports); older runs keep their counts (docs/performance.md).
DEFAULT_KEEP_RUNS = 7
# How often a run writes its metrics, pushes them and beats its heartbeat in the store.
DEFAULT_METRICS_INTERVAL_S = 5.0
# How deep below the current directory history, status and report look for a job's store
# given no --state-dir (run puts it beside the results: out/JOB.sqlite).
STORE_SEARCH_DEPTH = 3
# A listing's page (``limit``): the API takes 1 to 100 objects (its own default is 20).
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = MAX_PAGE_SIZE
