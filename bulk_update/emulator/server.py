"""Serving the emulator with uvicorn on a socket it binds itself (``--port 0`` picks a free one).

uvicorn gives an ASGI app no way to drop a connection without answering, which is the fault a
``--reset-rate`` must inject. ``ResettableHttpToolsProtocol`` offers one: it puts an ``abort``
callable in each request's ASGI extensions that closes the socket with a TCP reset (RST). It
also turns Nagle's algorithm off, which costs 40 ms a request otherwise (see connection_made).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import polars as pl
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bulk_update.emulator.app import ABORT_EXTENSION, Emulator, create_app
from bulk_update.emulator.config import EmulatorConfig
from bulk_update.emulator.objects import (
    CHAT_COMPLETIONS,
    CONVERSATIONS,
    KINDS,
    PRELOAD_MODEL,
    VECTOR_STORE_FILES,
    VECTOR_STORES,
)
from bulk_update.emulator.store import ApiError, check_map


class ResettableHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # uvicorn writes a response's head and body separately; with Nagle on, the body
            # waits for the client's delayed ACK (40 ms a request). uvloop leaves it on for
            # sockets it is handed.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        transport = self.transport

        def abort() -> None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0: close() sends RST instead of FIN, as a crashed proxy would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

        extensions = self.scope.setdefault("extensions", {})
        extensions[ABORT_EXTENSION] = {"abort": abort}


PRELOAD_METADATA = "metadata"
PRELOAD_ID = "conversation_id"
# A chat completion's model, optional in a --preload file.
PRELOAD_MODEL_COLUMN = "model"

Preloaded = tuple[tuple[str, ...], object, str | None]


def preload_from(
    spec: str,
    id_column: str | None = None,
    quoting: str = "csv",
    resource: str = CONVERSATIONS,
) -> Iterator[Preloaded]:
    """Objects of ``resource`` for ``--preload``: (IDs, map or None, model or None).

    ``spec`` is a whole number N (``preload_ids(resource, 0..N-1)``, no map), or a file in one
    of the job's input formats (CSV, TSV, JSON Lines, Parquet: by its extension, as the job reads
    them) with the ID column(s) ``id_column`` (``--id-column``, comma-separated for a file's two;
    default the resource's), its map column (``metadata``, a file's ``attributes``: a JSON
    object) if it has one and, for chat completions, a ``model`` column if it has one.
    ``quoting`` "none": a CSV or TSV cell's quote is text (``--quoting none``, as run's)."""
    kind = KINDS[resource]
    model = PRELOAD_MODEL if resource == CHAT_COMPLETIONS else None
    if spec.isdigit():
        yield from ((kind.preload_ids(i), None, model) for i in range(int(spec)))
        return
    columns = kind.id_columns if id_column is None else tuple(id_column.split(","))
    if len(columns) != len(kind.id_columns):
        wanted = ",".join(kind.id_columns)
        raise ValueError(f"--id-column {id_column}: {resource} needs {len(kind.id_columns)} ID "
                         f"column(s), comma-separated (as {wanted})")  # fmt: skip
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"--preload {spec}: no such file (nor a whole number)")
    field = kind.field
    try:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            scan = pl.scan_parquet(path)
        elif suffix in (".jsonl", ".ndjson"):
            scan = pl.scan_ndjson(path, infer_schema_length=None)
        else:
            separator = "\t" if suffix == ".tsv" else ","
            quote_char = None if quoting == "none" else '"'
            scan = pl.scan_csv(path, infer_schema=False, separator=separator, quote_char=quote_char)
        schema = scan.collect_schema()
        names = schema.names()
        for column in columns:
            if column not in names:
                shown = ", ".join(repr(name) for name in names[:20])
                noun = "conversation IDs" if resource == CONVERSATIONS else "IDs"
                raise ValueError(
                    f"--preload {spec}: the file has no {column!r} column (columns: {shown}): "
                    f"give --id-column the column that holds the {noun}"
                )
        trimmed = [pl.col(c).cast(pl.String).str.strip_chars().alias(f"id{i}")
                   for i, c in enumerate(columns)]  # fmt: skip
        values = pl.col(field) if field in names else pl.lit(None)
        if isinstance(schema.get(field), pl.Struct):  # a JSON Lines object
            values = values.struct.json_encode()
        models = pl.lit(model)
        if model is not None and PRELOAD_MODEL_COLUMN in names:
            models = pl.col(PRELOAD_MODEL_COLUMN).cast(pl.String).fill_null(model)
        rows = scan.select(
            *trimmed, values.cast(pl.String).alias(field), models.cast(pl.String).alias("model")
        ).collect()
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--preload {spec}: cannot read it: {first}") from None
    # Rows are counted as the job's results count them (header not counted); the message names
    # the row, its object and the column, with what the server says of its map.
    for row, (*ids, text, row_model) in enumerate(rows.iter_rows(), start=1):
        if not all(ids):
            continue
        where = f"--preload {spec}: row {row} ({'/'.join(ids)}), column {field}"
        try:
            given = None if not text else json.loads(text)
            if given is not None:
                check_map(given, name=field, typed=kind.typed)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not JSON ({exc.msg})") from None
        except ApiError as exc:
            raise ValueError(f"{where}: {exc.message}") from None
        yield tuple(ids), given, row_model


def _preload(emulator: Emulator, resource: str, objects: list[Preloaded]) -> str:
    """Create ``objects`` (a file's vector store too): what the emulator prints of it."""
    stores = emulator.stores
    if resource == VECTOR_STORE_FILES:
        parents = {ids[0] for ids, _, _ in objects}
        stores[VECTOR_STORES].preload(((parent,), None, None) for parent in sorted(parents))
        added = stores[resource].preload(objects)
        return f"preloaded {added} {resource} in {len(parents)} vector stores"
    return f"preloaded {stores[resource].preload(objects)} {resource}"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening before the base URL is printed: a client that connects at once waits in the
    # backlog until uvicorn accepts, instead of being refused.
    sock.listen(4096)
    return sock


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def serve(
    config: EmulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    preload: str | None = None,
    id_column: str | None = None,
    quoting: str = "csv",
    resource: str = CONVERSATIONS,
    out: TextIO = sys.stdout,
) -> None:
    """Run the emulator until interrupted. Prints its base URL once it is ready to serve."""
    emulator = Emulator(config)
    if preload is not None:
        try:
            done = _preload(
                emulator, resource, list(preload_from(preload, id_column, quoting, resource))
            )
        except ApiError as exc:
            raise ValueError(f"--preload {preload}: {exc}") from None
        print(done, file=out, flush=True)
    app = create_app(emulator=emulator)
    sock = bind(host, port)
    uv_config = uvicorn.Config(
        app,
        http=ResettableHttpToolsProtocol,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        # Stopping must not wait for requests held by --latency-ms or --slow-ms.
        timeout_graceful_shutdown=1,
        backlog=4096,
    )
    server = uvicorn.Server(uv_config)
    print(f"bulk-update emulator serving {base_url(sock)}", file=out, flush=True)
    asyncio.run(server.serve(sockets=[sock]))
