"""listing.py: the listing's plan, its pages through a real Sender over httpx2.MockTransport
(the cursor, retries, the rate limiter), and the table it records (unit level; the end-to-end
tests, through the CLI against the emulator, are in test_listing_e2e.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx2
import polars as pl
import pytest

from bulk_update._constants import MAX_RESPONSE_BYTES
from bulk_update.api.answers import Action, Answer
from bulk_update.config import JobConfig
from bulk_update.exceptions import ConfigError, FatalApiError
from bulk_update.listing import (
    Listing,
    Template,
    judge_page,
    list_all,
    lookup,
    plan_listing,
    write_listing,
)
from bulk_update.send import Sender, SendSettings
from bulk_update.stop import Stop

KEY = "sk-unit-test-key"

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-2024-08-06",
    "metadata": {"team": "a", "a.b": "dotted", "n": "3"},
    "usage": {"total_tokens": 12},
    "choices": [{"finish_reason": "stop"}],
    "temperature": 0.5,
    "stored": True,
}


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("id", "chatcmpl-1"),
        ("metadata.team", "a"),
        ("metadata.a.b", "dotted"),  # a key with a dot, found whole
        ("usage.total_tokens", 12),
        ("choices.0.finish_reason", "stop"),
        ("choices.1.finish_reason", None),
        ("metadata.missing", None),
        ("model.name", None),  # a field of a string
        ("metadata", COMPLETION["metadata"]),
    ],
)
def test_lookup_finds_a_dotted_path(path: str, value: object) -> None:
    assert lookup(COMPLETION, path) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("yes", "yes"),
        ("{metadata.team}", "a"),
        ("{usage.total_tokens}", 12),  # one reference alone keeps its type
        ("{stored}", True),
        ("team-{metadata.team}/{usage.total_tokens}", "team-a/12"),
        ("{stored}:{temperature}", "true:0.5"),
        ("{metadata.missing}", None),  # no value: the key is not sent for that object
        ("x-{metadata.missing}", None),
        ("{metadata}", None),  # a nested value is no value
        ("{{literal}}", "{literal}"),
        (" { metadata.team } ", " a "),
    ],
)
def test_a_set_value_is_a_constant_or_taken_from_the_object(text: str, value: object) -> None:
    assert Template.parse("k", text).render(COMPLETION) == value


@pytest.mark.parametrize("text", ["{", "}", "{}", "{a!r}", "{a:>5}", "x{ }y"])
def test_a_set_value_that_is_no_template_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--set k="):
        Template.parse("k", text)


def test_conversations_cannot_be_listed() -> None:
    with pytest.raises(ConfigError, match="the API cannot list conversations"):
        plan_listing("conversations", [], [("reviewed", "yes")])


def test_the_filters_the_api_takes_are_the_query() -> None:
    plan = plan_listing(
        "chat.completions",
        [("metadata.team", "a"), ("model", "gpt-4o"), ("metadata.env", "prod")],
        [("reviewed", "yes"), ("owner", "{metadata.team}")],
    )
    assert plan.paths == (("chat/completions", ()),)
    assert dict(plan.query) == {
        "metadata[team]": "a", "model": "gpt-4o", "metadata[env]": "prod", "order": "asc",
    }  # fmt: skip
    assert plan.checks == ()
    assert plan.id_columns == ("completion_id",)
    assert [key for key, _ in plan.sets] == ["reviewed", "owner"]


def test_a_vector_stores_files_are_listed_per_vector_store_in_the_order_given() -> None:
    plan = plan_listing(
        "vector_stores.files",
        [("vector_store_id", "vs_2"), ("status", "completed"), ("vector_store_id", "vs_1"),
         ("attributes.lang", "en")],
        [("tagged", "yes")],
    )  # fmt: skip
    assert plan.paths == (
        ("vector_stores/vs_2/files", (("vector_store_id", "vs_2"),)),
        ("vector_stores/vs_1/files", (("vector_store_id", "vs_1"),)),
    )
    assert dict(plan.query) == {"filter": "completed", "order": "asc"}
    assert plan.checks == (("attributes.lang", "en"),)  # the API cannot filter by attributes
    assert plan.id_columns == ("vector_store_id", "file_id")


@pytest.mark.parametrize(
    ("resource", "where", "sets", "message"),
    [
        ("chat.completions", [("owner", "x")], [("k", "v")],
         "--where owner: chat.completions is listed by metadata.KEY, model"),
        ("vector_stores", [("model", "x")], [("k", "v")],
         "--where model: vector_stores is listed by metadata.KEY"),
        ("chat.completions", [("model", "a"), ("model", "b")], [("k", "v")],
         "--where model is given twice"),
        ("vector_stores.files", [], [("k", "v")], "give --where vector_store_id=ID"),
        ("vector_stores.files", [("vector_store_id", "vs_1"), ("vector_store_id", "vs_1")],
         [("k", "v")], "an ID is given twice"),
        ("vector_stores.files", [("vector_store_id", "vs_1"), ("status", "done")],
         [("k", "v")], "--where status=done: one of in_progress, completed"),
        ("chat.completions", [], [], "give what to set, as --set KEY=VALUE"),
        ("chat.completions", [], [("completion_id", "x")], "is the listing's ID column"),
        ("chat.completions", [], [("k", "1"), ("k", "2")], "--set k is given twice"),
        ("chat.completions", [], [("k" * 65, "1")], "a key is at most 64 characters"),
        ("chat.completions", [], [(f"k{i}", "1") for i in range(17)],
         "--set is given 17 times: an update sets 16 keys at most"),
        ("no.such", [], [("k", "v")], "--resource 'no.such': not one of conversations"),
    ],
)  # fmt: skip
def test_what_a_listing_cannot_do_is_one_line(
    resource: str, where: list[tuple[str, str]], sets: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as caught:
        plan_listing(resource, where, sets)
    assert "\n" not in str(caught.value)


def page_answer(body: object, status: int = 200, **headers: str) -> Answer:
    return Answer(http_status=status, headers=headers, body=json.dumps(body).encode())


@pytest.mark.parametrize(
    ("answer", "action", "code"),
    [
        (page_answer({"object": "list", "data": [], "has_more": False}), Action.DONE, None),
        (page_answer({"id": "chatcmpl-1"}), Action.RETRY, "invalid_response"),
        (page_answer({"data": [1, 2]}), Action.RETRY, "invalid_response"),
        (Answer(http_status=200, body=b"{" * MAX_RESPONSE_BYTES), Action.FAIL,
         "page_too_large"),
        (page_answer({"error": {"code": None}}, 500), Action.RETRY, "http_500"),
        (page_answer({"error": {"code": "rate_limit_exceeded"}}, 429), Action.RATE_LIMITED,
         "rate_limit_exceeded"),
        (page_answer({"error": {"code": "invalid_api_key"}}, 401), Action.STOP_JOB,
         "invalid_api_key"),
        (page_answer({"error": {"code": "not_found"}}, 404), Action.FAIL, "not_found"),
        (Answer(transport_error="connect"), Action.RETRY, "connection_error"),
    ],
)  # fmt: skip
def test_a_page_is_judged_as_a_list(answer: Answer, action: Action, code: str | None) -> None:
    verdict = judge_page(answer, 0.0)
    assert (verdict.action, verdict.error_code) == (action, code)


# --- the pages, through a real Sender over a mock transport ----------------------------------


def completions(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"chatcmpl-{i:03d}", "object": "chat.completion", "model": "gpt-4o",
         "metadata": {"team": "a" if i % 2 else "b", "n": str(i)}}
        for i in range(count)
    ]  # fmt: skip


Handler = Callable[[httpx2.Request], httpx2.Response]


def lister(objects: list[dict[str, Any]]) -> tuple[Handler, list[dict[str, str]]]:
    """A list endpoint over ``objects`` (cursor ``after``, ``limit``), recording each query."""
    queries: list[dict[str, str]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        query = dict(parse_qsl(request.url.query.decode()))
        queries.append(query)
        ids = [obj["id"] for obj in objects]
        start = ids.index(query["after"]) + 1 if "after" in query else 0
        data = objects[start : start + int(query["limit"])]
        return httpx2.Response(200, json={
            "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": start + len(data) < len(objects),
        })  # fmt: skip

    return handler, queries


def listed(
    handler: Handler,
    *,
    where: list[tuple[str, str]] | None = None,
    sets: list[tuple[str, str]] | None = None,
    page_size: int = 4,
    resource: str = "chat.completions",
    rpm: int = 10**9,
    stop_after: int | None = None,
) -> tuple[Listing | None, Sender, list[float]]:
    """The listing taken through a real Sender (its fake clock moved by its sleeps);
    ``stop_after``: a SIGTERM comes with that many requests answered."""
    config = JobConfig(
        input="in.csv", output="out.csv", base_url="https://api.example/v1", api_key=KEY,
        rpm=rpm, max_attempts=3,
    )  # fmt: skip
    plan = plan_listing(resource, where or [], sets or [("reviewed", "yes")], page_size)
    slept: list[float] = []
    now = [0.0]
    stop = Stop()
    answered = [0]

    def answer(request: httpx2.Request) -> httpx2.Response:
        answered[0] += 1
        if answered[0] == stop_after:
            stop.on_signal(signal.SIGTERM)
        return handler(request)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def go() -> tuple[Listing | None, Sender]:
        sender = Sender(
            SendSettings.from_config(config), stop,
            transport=httpx2.MockTransport(answer), sleep=sleep, clock=lambda: now[0],
            jitter=lambda: 0.0,
        )  # fmt: skip
        async with sender:
            listing = await list_all(
                plan,
                lambda path: sender.fetch(path, judge_page),
                lambda: stop.is_set,
                clock=lambda: now[0],
            )
        return listing, sender

    listing, sender = asyncio.run(go())
    return listing, sender, slept


def test_the_pages_follow_the_cursor_to_the_end() -> None:
    handler, queries = lister(completions(10))
    listing, sender, _ = listed(
        handler, where=[("metadata.team", "a")], sets=[("owner", "{metadata.team}")]
    )
    assert listing is not None
    table = listing.table()
    assert table.columns == ["completion_id", "owner"]
    assert table["completion_id"].to_list() == [f"chatcmpl-{i:03d}" for i in range(10)]
    assert [q.get("after") for q in queries] == [None, "chatcmpl-003", "chatcmpl-007"]
    assert all(q["limit"] == "4" and q["order"] == "asc" for q in queries)
    assert all(q["metadata[team]"] == "a" for q in queries)  # the server filters
    assert (listing.pages, listing.listed, sender.requests_sent) == (3, 10, 3)


def test_a_failed_page_is_retried_and_a_429_pauses_the_listing() -> None:
    handler, queries = lister(completions(6))
    # The second page's request: a 503, then a 429, then its page.
    answers = {2: httpx2.Response(503), 3: httpx2.Response(429, headers={"retry-after": "7"})}
    seen: list[httpx2.Request] = []

    def flaky(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return answers.get(len(seen)) or handler(request)

    listing, sender, slept = listed(flaky)
    assert listing is not None
    assert listing.table().height == 6
    assert sender.requests_sent == 4
    assert sender.rate_limited == 1
    assert [q.get("after") for q in queries] == [None, "chatcmpl-003"]
    assert seen[1].url == seen[2].url == seen[3].url  # the same page, asked again
    assert 7.0 in slept  # the 429's retry-after, for the whole job


def test_the_listing_takes_the_jobs_rate_and_says_how_far_it_got(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler, _ = lister(completions(12))
    with caplog.at_level(logging.INFO, logger="bulk_update"):
        listing, sender, slept = listed(handler, rpm=6, page_size=3)  # 10 s apart
    assert listing is not None
    assert sender.requests_sent == 4
    # At 6 requests a minute the pages go 10 s apart: the first at once.
    assert sum(slept) == pytest.approx(30.0, abs=0.01)
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "listing"]
    assert said == [f"listing chat.completions: {n} objects in {n // 3} pages so far"
                    for n in (6, 9, 12)]  # fmt: skip


def test_a_page_too_large_is_asked_again_smaller() -> None:
    handler, queries = lister(completions(4))
    big = [True]

    def oversized(request: httpx2.Request) -> httpx2.Response:
        if big.pop() if big else False:
            queries.append({})
            return httpx2.Response(200, content=b"x" * (MAX_RESPONSE_BYTES + 10))
        return handler(request)

    listing, _, _ = listed(oversized, page_size=4)
    assert listing is not None
    assert listing.table().height == 4
    assert [q.get("limit") for q in queries[1:]] == ["2", "2"]


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        (httpx2.Response(404, json={"error": {"code": "not_found", "message": "No store"}}),
         ConfigError, "listing GET /chat/completions: HTTP 404 not_found: No store; nothing "
         "was sent"),
        (httpx2.Response(401, json={"error": {"code": "invalid_api_key", "message": "bad"}}),
         FatalApiError, "HTTP 401 invalid_api_key: bad"),
        (httpx2.Response(500), FatalApiError, "HTTP 500 http_500: .*the same command lists "
         "again"),
        (httpx2.Response(200, json={"object": "list", "data": [{"x": 1}], "has_more": True}),
         FatalApiError, "has more but gives no new cursor"),
    ],
)  # fmt: skip
def test_a_listing_that_cannot_go_on_stops_before_anything_is_sent(
    answer: httpx2.Response, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        listed(lambda request: answer)


def test_the_job_checks_what_the_api_cannot_filter() -> None:
    files = [
        {"id": f"file-{i}", "object": "vector_store.file", "vector_store_id": "vs_1",
         "attributes": {"lang": "en" if i % 3 else "de", "year": 2020 + i, "ok": i % 2 == 0}}
        for i in range(6)
    ]  # fmt: skip
    handler, queries = lister(files)
    listing, _, _ = listed(
        handler, resource="vector_stores.files",
        where=[("vector_store_id", "vs_1"), ("attributes.lang", "en")],
        sets=[("year", "{attributes.year}"), ("ok", "{attributes.ok}"), ("tag", "t")],
    )  # fmt: skip
    assert listing is not None
    table = listing.table()
    assert listing.left_out == 2  # file-0 and file-3 are "de"
    assert table.to_dicts() == [
        {"vector_store_id": "vs_1", "file_id": f"file-{i}", "year": 2020 + i, "ok": i % 2 == 0,
         "tag": "t"}
        for i in (1, 2, 4, 5)
    ]  # fmt: skip
    assert table.schema["year"] == pl.Int64
    assert table.schema["ok"] == pl.Boolean
    assert "attributes" not in " ".join(queries[0])


def test_a_column_of_mixed_kinds_is_text_and_an_object_listed_twice_is_kept_once() -> None:
    plan = plan_listing("vector_stores", [], [("v", "{metadata.v}")])
    listing = Listing(plan)
    listing.add([{"id": "vs_1", "metadata": {"v": 1}}, {"id": "vs_2", "metadata": {}}], {})
    listing.add([{"id": "vs_1", "metadata": {"v": 9}}, {"id": "vs_3", "metadata": {"v": 2.5}}], {})
    listing.add([{"id": "vs_4", "metadata": {"v": True}}], {})
    assert listing.twice == 1
    table = listing.table()
    assert table.to_dicts() == [
        {"vector_store_id": "vs_1", "v": "1"}, {"vector_store_id": "vs_2", "v": None},
        {"vector_store_id": "vs_3", "v": "2.5"}, {"vector_store_id": "vs_4", "v": "true"},
    ]  # fmt: skip


def test_the_listing_file_is_whole_or_none(tmp_path: Path) -> None:
    path = tmp_path / "job.listing-abc.parquet"
    frame = pl.DataFrame({"completion_id": ["chatcmpl-1"], "k": ["v"]})
    write_listing(path, frame)
    assert pl.read_parquet(path).equals(frame)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no .partial left


def test_a_signal_stops_the_listing_between_pages_or_in_a_pages_retries() -> None:
    handler, _ = lister(completions(10))
    listing, sender, _ = listed(handler, stop_after=2)
    assert listing is None
    assert sender.requests_sent == 2
    # A page failing when the stop came is no failure of the listing: stopped, not exit 3.
    listing, sender, _ = listed(lambda request: httpx2.Response(503), stop_after=1)
    assert listing is None
    assert sender.requests_sent == 1
