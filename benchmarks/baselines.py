"""The programs a user would write instead of bulk-update, each a whole program to time.

    python -m benchmarks.baselines KIND INPUT BASE_URL CONCURRENCY

KIND is one of:

`sdk`: polars + the official AsyncOpenAI (its default client, httpx2) + asyncio.Semaphore: the
    obvious alternative.
`sdk-aiohttp`: the same on `AsyncOpenAI(http_client=DefaultAioHttpClient())`, what
    `pip install openai[aiohttp]` offers: a 20-line script.
`bare-aiohttp`: polars + one aiohttp.ClientSession + asyncio.Semaphore: POST the JSON, parse the
    JSON answer, no retries, no results kept: the machine's ceiling for any Python client.
`bare`: the same loop on one httpx2.AsyncClient (context: what httpx2 itself costs).

Each sends the same requests as the job: one metadata update per row, every column but
conversation_id as metadata. The key comes from OPENAI_API_KEY. Each prints how many rows the
server answered with 200.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import httpx2
import polars as pl


def rows(path: str) -> list[tuple[str, dict[str, str]]]:
    frame = pl.read_csv(path, infer_schema=False)
    keys = [c for c in frame.columns if c != "conversation_id"]
    return [
        (row[0], {k: v for k, v in zip(keys, row[1:], strict=True) if v is not None})
        for row in frame.iter_rows()
    ]


async def sdk(path: str, base_url: str, concurrency: int) -> int:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url)
    gate = asyncio.Semaphore(concurrency)

    async def one(conversation_id: str, metadata: dict[str, str]) -> bool:
        async with gate:
            await client.conversations.update(conversation_id, metadata=metadata)
            return True

    done = await asyncio.gather(*(one(c, m) for c, m in rows(path)))
    await client.close()
    return sum(done)


async def sdk_aiohttp(path: str, base_url: str, concurrency: int) -> int:
    from openai import AsyncOpenAI, DefaultAioHttpClient

    client = AsyncOpenAI(base_url=base_url, http_client=DefaultAioHttpClient())
    gate = asyncio.Semaphore(concurrency)

    async def one(conversation_id: str, metadata: dict[str, str]) -> bool:
        async with gate:
            await client.conversations.update(conversation_id, metadata=metadata)
            return True

    done = await asyncio.gather(*(one(c, m) for c, m in rows(path)))
    await client.close()
    return sum(done)


async def bare_aiohttp(path: str, base_url: str, concurrency: int) -> int:
    headers = {"authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(conversation_id: str, metadata: dict[str, str]) -> bool:
            async with (
                gate,
                session.post(
                    f"{base_url}/conversations/{conversation_id}", json={"metadata": metadata}
                ) as response,
            ):
                await response.json()
                return response.status == 200

        done = await asyncio.gather(*(one(c, m) for c, m in rows(path)))
    return sum(done)


async def bare(path: str, base_url: str, concurrency: int) -> int:
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"authorization": f"Bearer {os.environ['OPENAI_API_KEY']}"}
    gate = asyncio.Semaphore(concurrency)
    async with httpx2.AsyncClient(base_url=base_url, limits=limits, headers=headers) as client:

        async def one(conversation_id: str, metadata: dict[str, str]) -> bool:
            async with gate:
                response = await client.post(
                    f"/conversations/{conversation_id}", json={"metadata": metadata}
                )
                response.json()
                return response.status_code == 200

        done = await asyncio.gather(*(one(c, m) for c, m in rows(path)))
    return sum(done)


PEERS: dict[str, Callable[[str, str, int], Coroutine[Any, Any, int]]] = {
    "sdk": sdk,
    "sdk-aiohttp": sdk_aiohttp,
    "bare-aiohttp": bare_aiohttp,
    "bare": bare,
}


def main() -> None:
    if len(sys.argv) != 5 or sys.argv[1] not in PEERS:
        sys.exit(f"usage: python -m benchmarks.baselines {{{','.join(PEERS)}}} INPUT BASE_URL N")
    kind, path, base_url, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    updated = asyncio.run(PEERS[kind](path, base_url, concurrency))
    print(f"{kind}: {updated} updated")


if __name__ == "__main__":
    main()
