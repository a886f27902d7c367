"""Writes committed in groups: what arrives while a commit runs goes in the next one.

The workers of a run each wait for their row's outcome to be committed before they take the
next row (so at most ``--concurrency`` rows are ever sent without one). Their writes go to one
writer, which commits what has arrived while the last commit ran as the next group (at most
GROUP_MAX), in one transaction; every work of a group gets its error if the commit fails.

``GroupWriter`` (SQLite) commits in a thread of its own, never on the event loop: a store that
makes a commit wait (a file another process holds locked) makes that thread wait, while
signals, heartbeats and metrics go on. ``submit`` is awaited on the event loop, ``run`` blocks
the calling thread (a thread of ``asyncio.to_thread``), ``barrier`` returns once everything
submitted before it is done.

``LoopGroupWriter`` (PostgreSQL) commits in a task on the event loop: a commit's latency is a
worker's idle time, and a thread's every wait on the network ended in a wait for the GIL; its
commit is a coroutine (the driver's, which never blocks the loop).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["CLOSE_WAIT_S", "GROUP_MAX", "GroupWriter", "LoopGroupWriter", "tell"]

Work = TypeVar("Work")

# Works committed together, at most.
GROUP_MAX = 512
# How long ``close`` waits for a commit in progress before it leaves the thread to end alone.
CLOSE_WAIT_S = 5.0


@dataclass(eq=False, slots=True)
class _Entry(Generic[Work]):
    work: Work | None  # None: a barrier
    future: asyncio.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None
    event: threading.Event | None = None
    error: BaseException | None = field(default=None)


def tell(future: asyncio.Future[None], error: BaseException | None) -> None:
    """On the event loop: a waiting future gets its work's result (a cancelled waiter is gone:
    nothing to tell it)."""
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _settle(entries: list[_Entry[Work]]) -> None:
    for entry in entries:
        if entry.future is not None:
            tell(entry.future, entry.error)


class GroupWriter(Generic[Work]):
    """``GroupWriter(commit, name)``; ``close()`` when the run is done."""

    def __init__(self, commit: Callable[[list[Work]], None], name: str) -> None:
        self._commit = commit
        self._queue: collections.deque[_Entry[Work] | None] = collections.deque()
        self._ready = threading.Condition()
        self._closed = False
        self._committing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def submit(self, work: Work | None) -> None:
        """Return once ``work`` is committed (or raise what stopped its group); None: once
        every work submitted before is (``barrier``)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put(_Entry(work, future, loop))
        await future

    def run(self, work: Work) -> None:
        """``submit``, blocking the calling thread (never the writer's own)."""
        event = threading.Event()
        entry: _Entry[Work] = _Entry(work, event=event)
        self._put(entry)
        event.wait()
        if entry.error is not None:
            raise entry.error

    async def barrier(self) -> None:
        """Return once every work submitted before is committed or failed."""
        await self.submit(None)

    def idle(self) -> bool:
        """Nothing queued and no commit under way: a write may go past the thread without
        overtaking one that came before it."""
        return not self._queue and not self._committing

    def _put(self, entry: _Entry[Work]) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("the store's writer is closed")
            self._queue.append(entry)
            self._ready.notify()

    def close(self) -> None:
        """Commit what is queued, then end the thread (waiting a little for a commit in
        progress; a thread stuck on a store that is away ends on its own)."""
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._queue.append(None)
            self._ready.notify()
        self._thread.join(CLOSE_WAIT_S)

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                group: list[_Entry[Work]] = []
                last = False
                self._committing = True
                while self._queue and len(group) < GROUP_MAX:
                    entry = self._queue.popleft()
                    if entry is None:
                        last = True
                        break
                    group.append(entry)
            try:
                self._run_group(group)
            finally:
                self._committing = False
            if last:
                return

    def _run_group(self, group: list[_Entry[Work]]) -> None:
        works = [entry.work for entry in group if entry.work is not None]
        error: BaseException | None = None
        if works:
            try:
                self._commit(works)
            except BaseException as exc:  # every work of the group learns it
                error = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[_Entry[Work]]] = {}
        for entry in group:
            entry.error = error if entry.work is not None else None
            if entry.event is not None:
                entry.event.set()
            elif entry.loop is not None:
                by_loop.setdefault(entry.loop, []).append(entry)
        for loop, entries in by_loop.items():
            # One wake-up of the loop per group, not one per row.
            with contextlib.suppress(RuntimeError):  # the loop has ended: nobody waits
                loop.call_soon_threadsafe(_settle, entries)


class LoopGroupWriter(Generic[Work]):
    """``LoopGroupWriter(commit, ended)``: ``commit`` (a coroutine) commits a group's works in
    order, or raises; ``ended`` is awaited once the writer's task ends (its connection
    closed)."""

    def __init__(
        self,
        commit: Callable[[list[Work]], Awaitable[None]],
        ended: Callable[[], Awaitable[None]],
        name: str,
    ) -> None:
        self._commit = commit
        self._ended = ended
        self._name = name
        self._pending: list[tuple[Work, asyncio.Future[None]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, work: Work) -> None:
        """Return once ``work`` is committed (or raise what stopped its group)."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name=self._name)
        assert self._wake is not None
        done = asyncio.get_running_loop().create_future()
        self._pending.append((work, done))
        self._wake.set()
        await done

    async def _run(self) -> None:
        assert self._wake is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                group, self._pending = self._pending[:GROUP_MAX], self._pending[GROUP_MAX:]
                if self._pending:
                    self._wake.set()
                waiting = [(work, done) for work, done in group if not done.done()]
                if not waiting:
                    continue
                error: Exception | None = None
                try:
                    await self._commit([work for work, _ in waiting])
                except Exception as exc:
                    error = exc
                for _, done in waiting:
                    tell(done, error)
        finally:
            for _, done in self._pending:
                done.cancel()
            await self._ended()

    async def stop(self) -> None:
        """No more commits: the one in progress, if any, is cut (it commits whole or not at
        all), and ``ended`` awaited."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def cancel(self) -> None:
        """``stop`` from any thread, without waiting (a journal closed on an error's way out)."""
        task, self._task = self._task, None
        if task is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended: so has the task
                self._loop.call_soon_threadsafe(task.cancel)
