"""While a run goes on: its metrics written (and pushed) and its heartbeat committed to its
store, every --metrics-interval (``Monitor``); and when the job last succeeded (``last_success``,
for ``bulk_update_last_success_timestamp_seconds``)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator

from bulk_update.exceptions import first_line
from bulk_update.observe.metrics import MetricsOutputs, Telemetry
from bulk_update.observe.progress import Tally
from bulk_update.store import TIMESTAMP_FORMAT, Journal, RunBeat, RunRecord

__all__ = ["Monitor", "last_success"]

log = logging.getLogger("bulk_update")

# The exit codes of a run that finished its rows (some may have failed): a success for
# ``bulk_update_last_success_timestamp_seconds``.
FINISHED_ROWS = (0, 1)


def last_success(runs: list[RunRecord], shard: str) -> float | None:
    """When a run of the job (of this shard) last finished its rows, as Unix time."""
    ends = [
        end
        for r in runs
        if r.shard == shard and r.exit_code in FINISHED_ROWS and (end := r.ended_at) is not None
    ]
    if not ends:
        return None
    latest = max(ends)
    return dt.datetime.strptime(latest, TIMESTAMP_FORMAT).replace(tzinfo=dt.UTC).timestamp()


class Monitor:
    """Every ``interval`` seconds while the run goes on: its metrics written (and pushed), its
    heartbeat and timeline committed to its store. Neither may stop the job: a failure is a
    warning. The metrics never wait for the heartbeat: a store that makes a heartbeat wait (held
    by another process, away: up to --store-timeout) does not hold them (``running``)."""

    def __init__(
        self,
        telemetry: Telemetry,
        outputs: MetricsOutputs,
        journal: Journal,
        tally: Tally,
        interval: float,
    ) -> None:
        self.telemetry = telemetry
        self.outputs = outputs
        self.journal = journal
        self.tally = tally
        self.interval = interval
        self._beat_failed = False

    async def ended(self, counts: dict[str, int], exit_code: int) -> None:
        """The run's end: its final counts and exit code in its metrics, written once more."""
        self.telemetry.counts(counts, self.tally.total)
        self.telemetry.ended_with(exit_code, finished_rows=exit_code in FINISHED_ROWS)
        await self.outputs.write()

    async def tick(self) -> None:
        """The metrics written, then the heartbeat committed (at the run's start)."""
        await self.write_metrics()
        await self.beat()

    async def write_metrics(self) -> None:
        self.telemetry.counts(self.tally.counts, self.tally.total)
        await self.outputs.write()

    async def beat(self, *, final: bool = False) -> None:
        seconds = self.telemetry.take_seconds(all_of_them=final)
        try:
            tally = self.tally
            await self.journal.beat(
                RunBeat(
                    tally.total,
                    tally.done,
                    tally.requests(),
                    tally.rate_limited(),
                    dict(tally.counts),
                ),
                seconds,
            )
        except Exception as exc:
            if not self._beat_failed:
                self._beat_failed = True
                log.warning(
                    "the run's heartbeat was not recorded in its store: %s",
                    first_line(exc),
                    extra={"event": "heartbeat_failed"},
                )
        else:
            self._beat_failed = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Every ``interval`` while the block runs: the metrics written, and a heartbeat begun
        beside them unless the last one is still under way (waiting for the store: the next
        one takes the seconds of the timeline it skipped). So the metrics go on while the
        store is held or away. (They were one tick with the heartbeat: a store held made the
        tick wait, and the metrics stopped for as long as --store-timeout.) A heartbeat is
        never cut short (a beat cut in the middle would leave the store unsure what it
        counted): the block's end waits for the one in hand."""
        over = asyncio.Event()
        beating: asyncio.Task[None] | None = None

        async def loop() -> None:
            nonlocal beating
            while True:
                try:
                    await asyncio.wait_for(over.wait(), self.interval)
                    return
                except TimeoutError:
                    await self.write_metrics()
                    if beating is None or beating.done():
                        beating = asyncio.create_task(self.beat(), name="heartbeat")

        task = asyncio.create_task(loop(), name="monitor")
        try:
            yield
        finally:
            over.set()
            await task
            if beating is not None:
                await beating
