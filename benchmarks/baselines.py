"""The loops a user would write instead of bulk-update, as whole programs to time.

    python -m benchmarks.baselines sdk  INPUT BASE_URL CONCURRENCY
    python -m benchmarks.baselines bare INPUT BASE_URL CONCURRENCY

`sdk`: polars + the official AsyncOpenAI + asyncio.Semaphore (the obvious alternative).
`bare`: polars + one httpx2.AsyncClient + asyncio.Semaphore, no retries, no results: a floor
for what any client must spend. Both send the same requests as the job: one metadata update per
row, every column but conversation_id as metadata. The key comes from OPENAI_API_KEY.
"""

from __future__ import annotations

import asyncio
import os
import sys

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
                return response.status_code == 200

        done = await asyncio.gather(*(one(c, m) for c, m in rows(path)))
    return sum(done)


def main() -> None:
    kind, path, base_url, concurrency = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    loop = {"sdk": sdk, "bare": bare}[kind]
    updated = asyncio.run(loop(path, base_url, concurrency))
    print(f"{kind}: {updated} updated")


if __name__ == "__main__":
    main()
