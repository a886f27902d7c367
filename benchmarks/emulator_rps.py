"""How many requests a second the emulator serves, so it is never the benchmarks' bottleneck.

Starts `bulk-update emulator --resource R --preload N` as a real server and sends updates of one
kind of object to it (conversations by default) from a bare httpx2 async loop (one shared client,
a semaphore) at several concurrencies, then prints a table. Re-run:
`.venv/bin/python -m benchmarks.emulator_rps [--requests N] [--resource NAME]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx2

from bulk_update.emulator import preload_ids
from bulk_update.emulator.objects import KINDS
from bulk_update.emulator.process import EmulatorProcess

KEY = "sk-bench"


async def hammer(
    base_url: str, requests: int, concurrency: int, resource: str = "conversations"
) -> tuple[float, int]:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"authorization": f"Bearer {KEY}"}
    gate = asyncio.Semaphore(concurrency)
    failures = 0
    kind = KINDS[resource]
    # Each object's path, made before the clock starts.
    paths = [
        kind.path.removeprefix("/v1").format_map(
            dict(zip(kind.id_columns, preload_ids(resource, i), strict=True))
        )
        for i in range(1000)
    ]

    async with httpx2.AsyncClient(base_url=base_url, limits=limits, headers=headers) as client:

        async def one(i: int) -> None:
            nonlocal failures
            async with gate:
                response = await client.post(paths[i % 1000], json={kind.field: {"n": str(i)}})
                failures += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return time.perf_counter() - started, failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--resource", choices=tuple(KINDS), default="conversations")
    args = parser.parse_args()
    print(f"{'concurrency':>11} {'requests':>9} {'seconds':>8} {'req/s':>8} {'failed':>6}")
    with EmulatorProcess("--resource", args.resource, "--preload", "1000") as emulator:
        for concurrency in (1, 16, 64):
            seconds, failed = asyncio.run(
                hammer(emulator.base_url, args.requests, concurrency, args.resource)
            )
            rate = args.requests / seconds
            print(f"{concurrency:>11} {args.requests:>9} {seconds:>8.2f} {rate:>8.0f} {failed:>6}")


if __name__ == "__main__":
    main()
