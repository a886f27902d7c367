"""The job in process, through its transport seam: ``run_job_async(transport=...)`` with an
httpx2 ``MockTransport`` standing in for the API. Fast enough to try every combination of
resume x --limit x unchanged rows x a fatal answer; the subprocess tests keep kill -9, signals,
Airflow and the real emulator."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import httpx2
import pytest

from bulk_update import ExitCode, JobConfig, JobSummary, run_job_async
from tests.helpers import by_row, state_entries, store_runs, write_input


class FakeApi:
    """Conversations' metadata in a dict. POSTs after ``fail_after`` successful ones are
    answered 401 (a revoked key) until it is set back to None."""

    def __init__(self, ids: list[str]) -> None:
        self.metadata: dict[str, dict[str, str]] = {c: {} for c in ids}
        self.applied: Counter[str] = Counter()
        self.posts = 0
        self.fail_after: int | None = None

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        conversation_id = request.url.path.rsplit("/", 1)[-1]
        if request.method == "POST":
            self.posts += 1
            if self.fail_after is not None and sum(self.applied.values()) >= self.fail_after:
                error = {"message": "revoked", "type": "invalid_request_error", "param": None,
                         "code": "invalid_api_key"}  # fmt: skip
                return httpx2.Response(401, json={"error": error})
            self.metadata[conversation_id].update(json.loads(request.content)["metadata"])
            self.applied[conversation_id] += 1
        body = {"id": conversation_id, "object": "conversation", "created_at": 1,
                "metadata": self.metadata[conversation_id]}  # fmt: skip
        return httpx2.Response(200, json=body, headers={"x-request-id": "req_1"})


def run(api: FakeApi, source: Path, output: Path, **options: object) -> JobSummary:
    config = JobConfig(input=str(source), output=str(output), base_url="https://api.example/v1",
                       api_key="sk-in-process", rpm=10**6, concurrency=1, job_name="job",
                       **options)  # type: ignore[arg-type]  # fmt: skip
    return asyncio.run(run_job_async(config, transport=httpx2.MockTransport(api)))


@pytest.mark.parametrize("edited", [0, 6])
@pytest.mark.parametrize("limit", [None, 4])
@pytest.mark.parametrize("fail_after", [None, 2])
def test_resume_limit_unchanged_and_fatal(
    tmp_path: Path, edited: int, limit: int | None, fail_after: int | None
) -> None:
    n = 20
    source = tmp_path / "in.csv"
    ids = write_input(source, n, tag="t0")
    api = FakeApi(ids)
    first = run(api, source, tmp_path / "1.csv")
    assert (first.exit_code, first.counts) == (ExitCode.OK, {"updated": n})

    # Night 2: `edited` rows change; a canary --limit, and the key revoked after `fail_after`.
    write_input(source, n, dict.fromkeys(range(edited), "t1"), tag="t0")
    api.applied.clear()
    api.fail_after = fail_after
    output = tmp_path / "2.csv"
    night = run(api, source, output, limit=limit)
    sent_ok = min(
        edited, limit if limit is not None else n, fail_after if fail_after is not None else n
    )
    fatal = fail_after is not None and fail_after < min(edited, limit or n)
    assert night.exit_code == (ExitCode.FATAL if fatal else ExitCode.OK)
    rows = by_row(output)
    assert len(rows) == n  # every row accounted for
    statuses = Counter(row["status"] for row in rows.values())
    assert statuses["unchanged"] == n - edited
    assert statuses["updated"] == sent_ok
    assert statuses["unprocessed"] == edited - sent_ok
    if fatal:
        stopped = [r for r in rows.values() if r["status"] == "unprocessed"]
        assert {r["error_code"] for r in stopped} == {"invalid_api_key"}
    assert sum(api.applied.values()) == sent_ok

    # The key is mended; the same command, without the canary, resumes the run.
    api.fail_after = None
    resumed = run(api, source, output)
    assert (resumed.exit_code, resumed.sent_this_run) == (ExitCode.OK, edited - sent_ok)
    statuses = Counter(row["status"] for row in by_row(output).values())
    assert statuses == Counter(
        {"unchanged": n - edited, "updated": edited} if edited else {"unchanged": n}
    )
    assert set(api.applied) == set(ids[:edited])
    assert max(api.applied.values(), default=1) == 1  # nothing applied twice
    assert {c: m["tier"] for c, m in api.metadata.items()} == {
        c: "t1" if i < edited else "t0" for i, c in enumerate(ids)
    }
    # The state knows every row: night 3 sends nothing.
    assert len(state_entries(tmp_path / "job.sqlite")) == n
    posts = api.posts
    third = run(api, source, tmp_path / "3.csv")
    assert (third.exit_code, third.counts, api.posts) == (ExitCode.OK, {"unchanged": n}, posts)
    # One run per results path; the resumed one was invoked twice, and says how it ended.
    runs = store_runs(tmp_path / "job.sqlite")
    assert [(Path(r["results"]).name, r["invocations"], r["exit_code"]) for r in runs] == [
        ("1.csv", 1, 0),
        ("2.csv", 2, 0),
        ("3.csv", 1, 0),
    ]
    assert json.loads(runs[1]["counts"]) == {k: v for k, v in statuses.items() if v}


def test_retry_failed_sends_only_the_failed_rows_again(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    ids = write_input(source, 10)
    api = FakeApi(ids)
    refused = set(ids[3:5])

    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.url.path.rsplit("/", 1)[-1] in refused:
            error = {"message": "no", "type": "invalid_request_error", "param": None, "code": None}
            return httpx2.Response(404, json={"error": error})
        return api(request)

    output = tmp_path / "r.csv"
    config = JobConfig(input=str(source), output=str(output), base_url="https://api.example/v1",
                       api_key="sk-in-process", rpm=10**6)  # fmt: skip
    summary = asyncio.run(run_job_async(config, transport=httpx2.MockTransport(handler)))
    assert (summary.exit_code, summary.counts) == (
        ExitCode.ROWS_FAILED,
        {"updated": 8, "failed": 2},
    )
    refused.clear()
    again = asyncio.run(
        run_job_async(
            JobConfig.from_options({**config.__dict__, "retry_failed": True}),
            transport=httpx2.MockTransport(handler),
        )
    )
    assert (again.exit_code, again.sent_this_run, again.counts) == (ExitCode.OK, 2, {"updated": 10})
    assert max(api.applied.values()) == 1


def test_a_database_that_is_not_a_store_is_left_alone(tmp_path: Path) -> None:
    """--state-dir pointing where another program keeps a database of the same name: exit 2,
    and that database unchanged."""
    from bulk_update import JournalError

    source = tmp_path / "in.csv"
    ids = write_input(source, 3)
    with closing(sqlite3.connect(tmp_path / "job.sqlite")) as db, db:
        db.execute("CREATE TABLE invoices (n INTEGER)")
    with pytest.raises(JournalError, match="not a bulk-update store"):
        run(FakeApi(ids), source, tmp_path / "r.csv")
    with pytest.raises(JournalError, match="not a bulk-update store"):
        run(FakeApi(ids), source, tmp_path / "r.csv", dry_run=True)
    with closing(sqlite3.connect(tmp_path / "job.sqlite")) as db:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
    assert tables == {"invoices"}


def test_an_interrupt_stops_the_job_in_its_thread_as_sigterm_does(tmp_path: Path) -> None:
    """The job in a thread of its own handles no signal; ``Interrupt`` (an Airflow operator's
    on_kill) takes the path SIGTERM takes: the request in flight finished, the results written,
    exit 143; the same run resumed sends only the rest, nothing twice."""
    import signal
    import threading

    from bulk_update import Interrupt

    n = 30
    source = tmp_path / "in.csv"
    ids = write_input(source, n)
    reached, interrupted = threading.Event(), threading.Event()

    class Paused(FakeApi):
        def __call__(self, request: httpx2.Request) -> httpx2.Response:
            if request.method == "POST" and self.posts == 5:
                reached.set()
                interrupted.wait(30)  # the 6th request is in flight when the interrupt comes
            return super().__call__(request)

    api = Paused(ids)
    interrupt = Interrupt()
    summaries: list[JobSummary] = []
    config = JobConfig(input=str(source), output=str(tmp_path / "r.csv"), job_name="job",
                       base_url="https://api.example/v1", api_key="sk-in-process", rpm=10**6,
                       concurrency=1)  # fmt: skip

    def work() -> None:
        summaries.append(
            asyncio.run(
                run_job_async(config, transport=httpx2.MockTransport(api), interrupt=interrupt)
            )
        )

    worker = threading.Thread(target=work)
    worker.start()
    assert reached.wait(60)
    interrupt(signal.SIGTERM)
    interrupted.set()
    worker.join(60)
    (stopped,) = summaries
    assert (stopped.exit_code, stopped.stopped_by) == (ExitCode.SIGTERM, "SIGTERM")
    rows = by_row(tmp_path / "r.csv")
    statuses = Counter(r["status"] for r in rows.values())
    done = statuses["updated"]  # the 6th, in flight, finished; the loop may have begun a few more
    assert 6 <= done <= 10
    assert statuses == {"updated": done, "unprocessed": n - done}
    assert {r["error_code"] for r in rows.values() if r["status"] == "unprocessed"} == {
        "interrupted"
    }
    interrupt(signal.SIGTERM)  # after the job ended: nothing to stop, no error
    resumed = run(api, source, tmp_path / "r.csv")
    assert (resumed.exit_code, resumed.sent_this_run) == (ExitCode.OK, n - done)
    assert sorted(api.applied) == sorted(ids)
    assert max(api.applied.values()) == 1


def test_an_interrupt_before_the_job_is_under_way_stops_it_at_its_start(tmp_path: Path) -> None:
    import signal

    from bulk_update import Interrupt

    source = tmp_path / "in.csv"
    api = FakeApi(write_input(source, 10))
    interrupt = Interrupt()
    interrupt(signal.SIGTERM)  # on_kill before the job's thread got going
    config = JobConfig(input=str(source), output=str(tmp_path / "r.csv"), job_name="job",
                       base_url="https://api.example/v1", api_key="sk-in-process")  # fmt: skip
    summary = asyncio.run(
        run_job_async(config, transport=httpx2.MockTransport(api), interrupt=interrupt)
    )
    assert (summary.exit_code, api.posts) == (ExitCode.SIGTERM, 0)
    assert summary.counts == {"unprocessed": 10}
