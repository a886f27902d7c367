"""The whole-request timeout on one timer (``api/client.py``'s ``Deadlines``): a request past
--timeout is a ``timeout`` answer, the others are not touched, and a cancellation that is not
the timeout's (the job stopping) goes through as a cancellation. The end-to-end cases (a
silent server, one dripping a byte at a time) are test_hostile_server's."""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest

from bulk_update.api.answers import Answer
from bulk_update.api.client import ApiClient, ClientSettings, Deadlines, conversation_path

TIMEOUT_S = 0.3
# How long a "slow" answer takes: far past the timeout; a test that waits for it has failed.
NEVER_S = 60.0


def client(delays: dict[str, float], timeout: float = TIMEOUT_S) -> ApiClient:
    """A client whose server answers each conversation after its delay (0 if not listed)."""

    async def handler(request: httpx2.Request) -> httpx2.Response:
        conversation_id = request.url.path.rsplit("/", 1)[-1]
        await asyncio.sleep(delays.get(conversation_id, 0.0))
        return httpx2.Response(200, json={"id": conversation_id, "metadata": {}})

    settings = ClientSettings(base_url="https://api.example/v1", api_key="sk-test",
                              organization=None, project=None, timeout=timeout,
                              concurrency=8)  # fmt: skip
    return ApiClient(settings, transport=httpx2.MockTransport(handler))


async def ask(api: ApiClient, conversation_id: str) -> Answer:
    return await api.exchange("GET", conversation_path(conversation_id), None)


def test_a_request_past_the_timeout_is_a_timeout_answer() -> None:
    async def go() -> tuple[Answer, float]:
        api = client({"conv_slow": NEVER_S})
        await api.open()
        try:
            started = time.monotonic()
            answer = await ask(api, "conv_slow")
            return answer, time.monotonic() - started
        finally:
            await api.close()

    answer, took = asyncio.run(go())
    assert answer.transport_error == "timeout"
    assert answer.transport_detail == f"no complete answer within {TIMEOUT_S:g} s"
    assert answer.http_status is None
    assert TIMEOUT_S <= took < NEVER_S / 2
    assert answer.elapsed_s >= TIMEOUT_S


def test_only_the_requests_past_their_own_deadline_time_out() -> None:
    """Requests started one after another, the slow ones among fast ones: each slow one times
    out at its own deadline, every fast one is answered, whatever ended before it."""

    async def go() -> tuple[dict[str, Answer], Deadlines]:
        slow = {f"conv_slow{i}": NEVER_S for i in range(3)}
        api = client(slow)
        await api.open()
        try:
            tasks: dict[str, asyncio.Task[Answer]] = {}
            for i in range(3):
                for name in (f"conv_fast{i}a", f"conv_slow{i}", f"conv_fast{i}b"):
                    tasks[name] = asyncio.create_task(ask(api, name))
                await asyncio.sleep(TIMEOUT_S / 3)  # each group's deadline a third later
            answers = {name: await task for name, task in tasks.items()}
            # A request after them all still gets its own deadline (the timer is re-armed).
            answers["conv_late"] = await ask(api, "conv_late")
            return answers, api._deadlines
        finally:
            await api.close()

    answers, deadlines = asyncio.run(go())
    for name, answer in answers.items():
        if name.startswith("conv_slow"):
            assert answer.transport_error == "timeout", name
        else:
            assert (answer.http_status, answer.transport_error) == (200, None), name
    assert not deadlines._running  # every request's deadline is gone with it


def test_a_cancellation_that_is_not_the_timeout_goes_through() -> None:
    """The job stopping cancels a worker mid-request: the request raises CancelledError (no
    answer is made up), before its deadline or after it."""

    async def go(cancel_after: float, timeout: float) -> str:
        api = client({"conv_slow": NEVER_S}, timeout=timeout)
        await api.open()
        try:
            task = asyncio.create_task(ask(api, "conv_slow"))
            await asyncio.sleep(cancel_after)
            task.cancel()
            try:
                answer = await task
            except asyncio.CancelledError:
                return "cancelled"
            return f"answered {answer.transport_error}"
        finally:
            await api.close()

    # Well before the deadline.
    assert asyncio.run(go(0.05, NEVER_S)) == "cancelled"

    # Cancelled by the job at the very moment the deadline expires: the task's own
    # cancellation wins (it was asked for twice), as with asyncio.timeout.
    async def both() -> str:
        api = client({"conv_slow": NEVER_S}, timeout=TIMEOUT_S)
        await api.open()
        try:
            task = asyncio.create_task(ask(api, "conv_slow"))
            await asyncio.sleep(0)  # the request has started
            loop = asyncio.get_running_loop()
            deadline = api._deadlines._running[0].at
            loop.call_at(deadline, task.cancel)  # after the deadline's timer, same moment
            try:
                await task
            except asyncio.CancelledError:
                return "cancelled"
            return "answered"
        finally:
            await api.close()

    assert asyncio.run(both()) == "cancelled"


def test_one_client_in_two_event_loops_times_out_in_each() -> None:
    api = client({"conv_slow": NEVER_S})

    async def go() -> str | None:
        answer = await ask(api, "conv_slow")
        return answer.transport_error

    assert asyncio.run(go()) == "timeout"
    assert asyncio.run(go()) == "timeout"


@pytest.mark.parametrize("ended_first", [True, False])
def test_the_timer_is_rearmed_for_the_next_running_request(ended_first: bool) -> None:
    """Deadlines alone: the timer is set for the oldest running request; when it fires after
    that one ended it moves to the next, and cancels only a request past its own deadline."""

    async def go() -> tuple[bool, bool]:
        deadlines = Deadlines(TIMEOUT_S)
        first_ended = asyncio.Event()

        async def request(hold_s: float) -> bool:
            mark = deadlines.start()
            try:
                await asyncio.sleep(hold_s)
            except asyncio.CancelledError:
                return deadlines.end(mark)
            ended = deadlines.end(mark)
            first_ended.set()
            return ended

        first = asyncio.create_task(request(0.0 if ended_first else NEVER_S))
        await asyncio.sleep(TIMEOUT_S / 2)
        second = asyncio.create_task(request(NEVER_S))
        return await first, await second

    first_timed_out, second_timed_out = asyncio.run(go())
    assert first_timed_out is not ended_first
    assert second_timed_out
