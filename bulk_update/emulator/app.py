"""The emulator's ASGI application (Starlette): the API's four kinds of objects (conversations,
stored chat completions, vector stores, vector store files: ``emulator.objects``) plus admin
routes.

Every ``/v1`` request goes through the same gate, in this order: authentication (401), the
server-side rate limit (429, which counts every authenticated request), the configured latency,
then an injected fault (reset, 5xx, slow) if one is drawn, then the operation itself.
``/_emulator/*`` routes are outside the API: no key, no limit, no faults, not counted.

``in_flight`` in the stats counts the requests received and not yet finished with: from the moment
the server has a request's head to the moment its answer is written (or its connection dropped,
or its client gone), the latency and faults included. A test that kills a client polls it down
to 0 to know the server has applied everything it received.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, replace
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bulk_update.emulator.config import EmulatorConfig
from bulk_update.emulator.faults import FaultKind, FaultPlan
from bulk_update.emulator.limits import TokenBucket
from bulk_update.emulator.objects import CONVERSATIONS, KINDS, VECTOR_STORES, Kind
from bulk_update.emulator.store import (
    MAX_ITEMS,
    ApiError,
    ConversationStore,
    Item,
    ObjectStore,
    key_of,
)

# The ASGI extension in which the server offers ``{"abort": callable}`` to drop the connection
# with a TCP reset (see server.py).
ABORT_EXTENSION = "bulk_update.abort"

JSON_TYPE = "application/json"

# The routes outside the API (see the module's docstring).
ADMIN_PREFIX = "/_emulator/"
# What ``GET /_emulator/stats`` adds, each for its flag (``?per_id=true&timeline=true``).
STATS_FLAGS = ("per_id", "timeline")


class ConnectionDropped(Exception):
    """Raised when a reset is drawn but the server offers no way to drop the connection."""


Handler = Callable[[Request], Awaitable[Response]]


class Emulator:
    """State shared by all requests: the store, the limit, the faults and the counters."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.monotonic):
        # One store per kind of object; ``store`` is the conversations'.
        self.stores: dict[str, ObjectStore] = {name: kind.store() for name, kind in KINDS.items()}
        store = self.stores[CONVERSATIONS]
        assert isinstance(store, ConversationStore)
        self.store = store
        self.clock = clock
        self.by_status: Counter[str] = Counter()
        self.by_operation: Counter[str] = Counter()
        # The same by kind of object: {"chat.completions": {"update": 3}}.
        self.by_resource: dict[str, Counter[str]] = {name: Counter() for name in KINDS}
        # Answers by whole second since start, and by status: for benchmarks of rate riding.
        self.started = clock()
        self.timeline: dict[int, Counter[str]] = {}
        self.first_ok: float | None = None
        self.last_ok: float | None = None
        # Requests received and not yet finished with (see InFlight): never reset.
        self.in_flight = 0
        # Per bearer key (its ``key_id``): requests, and the first and last one's arrival in
        # seconds since start: which client sent when, never the key itself.
        self.by_key: dict[str, list[float]] = {}
        # Requests by the organization and project they name (OpenAI-Organization,
        # OpenAI-Project; "-" for none), as "ORG/PROJECT".
        self.by_scope: Counter[str] = Counter()
        self.configure(config)

    def configure(self, config: EmulatorConfig) -> None:
        self.config = config
        self.bucket = TokenBucket(config.rpm, self.clock()) if config.rpm > 0 else None
        self.faults = FaultPlan(
            error_rate=config.error_rate,
            reset_rate=config.reset_rate,
            slow_rate=config.slow_rate,
            seed=config.random_seed,
        )

    def count(self, status: str) -> None:
        self.by_status[status] += 1
        elapsed = self.clock() - self.started
        self.timeline.setdefault(int(elapsed), Counter())[status] += 1
        if status == "200":
            self.first_ok = elapsed if self.first_ok is None else self.first_ok
            self.last_ok = elapsed

    def arrived(self, headers: Mapping[str, str]) -> None:
        """An API request arrived: counted under its key's ``key_id``, and its scope."""
        scope = (headers.get("openai-organization"), headers.get("openai-project"))
        self.by_scope["/".join(part or "-" for part in scope)] += 1
        _, _, key = (headers.get("authorization") or "").partition(" ")
        at = self.clock() - self.started
        seen = self.by_key.setdefault(key_id(key.strip()), [0, at, at])
        seen[0] += 1
        seen[2] = at

    def stats(self, per_id: bool, timeline: bool = False) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "requests": sum(self.by_operation.values()),
            "by_status": dict(self.by_status),
            "by_operation": dict(self.by_operation),
            "conversations": len(self.store),
            "objects": {name: len(store) for name, store in self.stores.items()},
            "by_resource": {
                name: dict(counts) for name, counts in self.by_resource.items() if counts
            },
            "in_flight": self.in_flight,
            "by_key": {
                key: {"requests": int(n), "first_s": first, "last_s": last}
                for key, (n, first, last) in self.by_key.items()
            },
            "by_scope": dict(self.by_scope),
        }
        if per_id:
            # Every kind's, by key (a file's is VS_ID/FILE_ID): the kinds' IDs do not overlap.
            stores = self.stores.values()
            stats["update_requests_by_id"] = {
                key: n for store in stores for key, n in store.update_requests.items()
            }
            stats["updates_applied_by_id"] = {
                key: n for store in stores for key, n in store.updates_applied.items()
            }
        if timeline:
            stats["timeline"] = {
                str(second): dict(counts) for second, counts in sorted(self.timeline.items())
            }
            stats["first_ok_s"] = self.first_ok
            stats["last_ok_s"] = self.last_ok
        return stats

    def reset_counters(self) -> None:
        self.by_status.clear()
        self.by_operation.clear()
        for counts in self.by_resource.values():
            counts.clear()
        self.timeline.clear()
        self.by_key.clear()
        self.by_scope.clear()
        self.first_ok = self.last_ok = None
        for store in self.stores.values():
            store.update_requests.clear()
            store.updates_applied.clear()


class InFlight:
    """ASGI middleware keeping ``Emulator.in_flight``: up when a request (outside the admin
    routes) reaches the app, down when the app is done with it whichever way it ends: its answer
    written, its connection dropped (an injected reset), its client gone mid-body or mid-wait,
    an error, or the server's shutdown cancelling it."""

    def __init__(self, app: ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        self.emulator.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.emulator.in_flight -= 1


def key_id(key: str) -> str:
    """How the admin stats name a bearer key: a short hash, never the key."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def _json(status: int, body: object, headers: dict[str, str]) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False), status_code=status, headers=headers,
        media_type=JSON_TYPE,
    )  # fmt: skip


def _error(error: ApiError, headers: dict[str, str]) -> Response:
    return _json(error.status, error.body(), headers)


def _check_auth(authorization: str | None, expected: str | None) -> None:
    scheme, _, key = (authorization or "").partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        )
    if expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
        # Unlike the real API, not even a redacted form of the key is echoed.
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")


async def _read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)",
        ) from None
    if not isinstance(body, dict):
        raise ApiError(
            400, "Invalid body: expected a JSON object.", param=None, code="invalid_type"
        )
    return body


class _Api:
    """The Conversations API: each operation behind the gate (see the module's docstring)."""

    def __init__(self, state: Emulator) -> None:
        self.state = state
        self.store = state.store

    def gated(self, operation: str, handler: Handler, resource: str = CONVERSATIONS) -> Handler:
        """``handler`` behind the gate, counted as ``operation``, in total and for ``resource``."""
        state = self.state
        by_resource = state.by_resource[resource]

        async def gate(request: Request) -> Response:
            started = time.perf_counter()
            state.by_operation[operation] += 1
            by_resource[operation] += 1
            state.arrived(request.headers)
            headers = {"x-request-id": "req_" + uuid.uuid4().hex}
            try:
                response = await self._through_gate(request, handler, headers)
            except ClientDisconnect:
                # Gone before its body was complete: nothing to answer, nothing to log.
                return Response(status_code=499)  # never reaches the client
            if response is None:
                return await self._reset(request)
            state.count(str(response.status_code))
            response.headers["openai-processing-ms"] = str(
                int((time.perf_counter() - started) * 1000)
            )
            return response

        return gate

    async def _reset(self, request: Request) -> Response:
        """An injected reset: the connection dropped, no answer."""
        self.state.count("reset")
        extension = request.scope.get("extensions", {}).get(ABORT_EXTENSION, {})
        abort = extension.get("abort")
        if not callable(abort):
            raise ConnectionDropped("injected connection reset")
        abort()
        await asyncio.sleep(0)  # let the server see the connection is gone
        return Response(status_code=500)  # never reaches the client

    def _refused(self, request: Request, headers: dict[str, str]) -> Response | None:
        """The key, the rate limit and the quota, in that order: the refusal, if any."""
        state, config = self.state, self.state.config
        try:
            _check_auth(request.headers.get("authorization"), config.api_key)
        except ApiError as error:
            return _error(error, headers)
        if state.bucket is not None:
            admission = state.bucket.admit(state.clock())
            headers.update(admission.headers())
            if not admission.allowed:
                return _error(
                    ApiError(
                        429,
                        f"Rate limit reached for requests per min (RPM): Limit {config.rpm}. "
                        f"Please try again in {admission.retry_after_seconds * 1000:.0f}ms.",
                        type="requests",
                        code="rate_limit_exceeded",
                    ),
                    headers,
                )
        if config.quota_exhausted:
            return _error(
                ApiError(
                    429,
                    "You exceeded your current quota, please check your plan and billing details.",
                    type="insufficient_quota",
                    code="insufficient_quota",
                ),
                headers,
            )
        return None

    async def _through_gate(
        self, request: Request, handler: Handler, headers: dict[str, str]
    ) -> Response | None:
        """The request's answer (None: a reset is drawn)."""
        refused = self._refused(request, headers)
        if refused is not None:
            return refused
        config = self.state.config
        fault = self.state.faults.draw() if self.state.faults.active else None
        # The request is received in full before the server works on it: a client that goes
        # away during the latency does not undo it (as with the real API). Starlette caches it.
        await request.body()
        if config.latency_ms > 0:
            await asyncio.sleep(config.latency_ms / 1000)
        if fault is not None:
            if fault.kind is FaultKind.RESET:
                return None
            if fault.kind is FaultKind.ERROR and fault.answer is not None:
                answer = fault.answer
                return Response(
                    answer.body, status_code=answer.status, headers=headers,
                    media_type=answer.content_type,
                )  # fmt: skip
            if fault.kind is FaultKind.SLOW:
                await asyncio.sleep(config.slow_ms / 1000)
        try:
            response = await handler(request)
        except ApiError as error:
            return _error(error, headers)
        response.headers.update(headers)
        return response

    async def create(self, request: Request) -> Response:
        body = await _read_json(request)
        items = body.get("items")
        if items is not None and (not isinstance(items, list) or len(items) > MAX_ITEMS):
            raise ApiError(
                400,
                f"Invalid 'items': expected an array of at most {MAX_ITEMS} items.",
                param="items",
                code="invalid_value",
            )
        return _json(200, self.store.create(body.get("metadata")).resource(), {})

    async def retrieve(self, request: Request) -> Response:
        conversation = self.store.get(request.path_params["conversation_id"])
        return _json(200, conversation.resource(), {})

    async def update(self, request: Request) -> Response:
        conversation_id = request.path_params["conversation_id"]
        self.store.count_update_request(conversation_id)
        # As the live API: no body at all is a missing parameter, like {}.
        body = await _read_json(request) if await request.body() else {}
        if "metadata" not in body:
            raise ApiError(
                400,
                "Missing required parameter: 'metadata'.",
                param="metadata",
                code="missing_required_parameter",
            )
        merge = not self.state.config.replace_metadata
        updated = self.store.update(conversation_id, body["metadata"], merge)
        return _json(200, updated.resource(), {})

    async def delete(self, request: Request) -> Response:
        conversation_id = request.path_params["conversation_id"]
        self.store.delete(conversation_id)
        return _json(
            200, {"id": conversation_id, "object": "conversation.deleted", "deleted": True}, {}
        )


# A listing's page size: the API's default, and its bounds.
LIST_LIMIT = 20
MAX_LIST_LIMIT = 100


def _list_query(request: Request) -> tuple[int, bool | None, str | None]:
    """A listing's ``limit``, ``order`` (True: desc, None: the kind's default) and ``after``."""
    query = request.query_params
    limit_text = query.get("limit")
    try:
        limit = LIST_LIMIT if limit_text is None else int(limit_text)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ApiError(
            400,
            f"Invalid 'limit': expected an integer from 1 to {MAX_LIST_LIMIT}, "
            f"but got {limit_text!r} instead.",
            param="limit",
            code="invalid_value",
        )
    order = query.get("order")
    if order not in (None, "asc", "desc"):
        raise ApiError(
            400,
            f"Invalid 'order': expected 'asc' or 'desc', but got {order!r} instead.",
            param="order",
            code="invalid_value",
        )
    return limit, None if order is None else order == "desc", query.get("after")


class _Objects:
    """The API of one kind of object other than conversations: retrieve, update and list (a
    file's within its vector store), each behind the same gate as conversations'."""

    def __init__(self, api: _Api, kind: Kind) -> None:
        self.state = api.state
        self.kind = kind
        self.store = api.state.stores[kind.name]
        # A file's vector store must exist for its routes.
        self.parents = api.state.stores[VECTOR_STORES] if len(kind.id_columns) > 1 else None

    def _ids(self, request: Request) -> tuple[str, ...]:
        ids = tuple(request.path_params[name] for name in self.kind.id_columns)
        if self.parents is not None:
            self.parents.get(ids[0])
        return ids

    def _render(self, item: Item) -> dict[str, Any]:
        return self.kind.render(item, self.state.stores)

    async def retrieve(self, request: Request) -> Response:
        ids = self._ids(request)
        return _json(200, self._render(self.store.get(key_of(ids), ids)), {})

    async def update(self, request: Request) -> Response:
        ids = self._ids(request)
        key, field = key_of(ids), self.kind.field
        self.store.count_update_request(key)
        body = await _read_json(request) if await request.body() else {}
        unknown = sorted(set(body) - {field, *self.kind.also})
        if unknown:  # e.g. `metadata` sent to a file, whose map is `attributes`
            raise ApiError(
                400,
                f"Unrecognized request argument supplied: {unknown[0]}",
                param=unknown[0],
                code="unknown_parameter",
            )
        if field not in body and self.kind.required:
            raise ApiError(
                400,
                f"Missing required parameter: '{field}'.",
                param=field,
                code="missing_required_parameter",
            )
        if field not in body:  # a vector store's name or expiry only: its metadata unchanged
            return _json(200, self._render(self.store.get(key, ids)), {})
        given = body[field]
        if given is None and self.kind.typed:
            # The reference types a file's attributes "object or null": null clears them.
            given, merge = {}, False
        else:
            merge = not self.state.config.replace_metadata
        return _json(200, self._render(self.store.update(key, given, merge)), {})

    async def list(self, request: Request) -> Response:
        limit, descending, after = _list_query(request)
        parent = ""
        if self.parents is not None:
            parent = request.path_params[self.kind.id_columns[0]]
            self.parents.get(parent)
        query = request.query_params
        wanted = {
            key[len("metadata[") : -1]: value
            for key, value in query.multi_items()
            if key.startswith("metadata[") and key.endswith("]")
        }
        model = query.get("model")

        def match(item: Item) -> bool:
            if model is not None and item.model != model:
                return False
            return all(item.metadata.get(k) == v for k, v in wanted.items())

        filtered = model is not None or bool(wanted)
        page = self.store.page(
            parent=parent,
            after=None if after is None else key_of((parent, after) if parent else (after,)),
            limit=limit,
            descending=self.kind.descending if descending is None else descending,
            match=match if filtered else None,
        )
        data = [self._render(item) for item in page.items]
        return _json(
            200,
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": page.has_more,
            },
            {},
        )


class _Admin:
    """The routes outside the API (``/_emulator/...``): no key, no limit, no faults."""

    def __init__(self, state: Emulator) -> None:
        self.state = state

    async def stats(self, request: Request) -> Response:
        def flag(name: str) -> bool:
            return request.query_params.get(name, "").lower() in {"1", "true", "yes"}

        return _json(200, self.state.stats(*map(flag, STATS_FLAGS)), {})

    def object(self, kind: Kind) -> Handler:
        """``GET /_emulator/{resource}/{id}`` for ``kind`` (a file's: ``.../{vs_id}/{file_id}``)."""
        state = self.state

        async def read(request: Request) -> Response:
            ids = tuple(request.path_params[name] for name in kind.id_columns)
            try:
                item = state.stores[kind.name].get(key_of(ids), ids)
            except ApiError as error:
                return _error(error, {})
            return _json(200, kind.render(item, state.stores), {})

        return read

    async def reset_counters(self, request: Request) -> Response:
        self.state.reset_counters()
        return _json(200, self.state.stats(per_id=False), {})

    async def config(self, request: Request) -> Response:
        """GET shows the settings; POST changes some of them (faults, limit, latency)."""
        state = self.state
        if request.method == "POST":
            changes = await request.json()
            allowed = set(EmulatorConfig.__dataclass_fields__) - {"api_key"}
            unknown = set(changes) - allowed
            if unknown:
                return _json(400, {"error": f"unknown settings: {sorted(unknown)}"}, {})
            try:
                state.configure(replace(state.config, **changes))
            except (TypeError, ValueError) as exc:
                return _json(400, {"error": str(exc)}, {})
        settings = asdict(state.config)
        settings["api_key"] = None if state.config.api_key is None else "***"
        return _json(200, settings, {})


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = f"Invalid URL ({request.method} {request.url.path})"
    return _error(ApiError(status, message), {"x-request-id": "req_" + uuid.uuid4().hex})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(exc, {})


def create_app(config: EmulatorConfig | None = None, emulator: Emulator | None = None) -> Starlette:
    """Build the ASGI app. Pass ``emulator`` to share or inspect its state (tests)."""
    state = emulator or Emulator(config or EmulatorConfig())
    api, admin = _Api(state), _Admin(state)
    path = KINDS[CONVERSATIONS].path
    routes = [
        Route("/v1/conversations", api.gated("create", api.create), methods=["POST"]),
        Route(path, api.gated("retrieve", api.retrieve), methods=["GET"]),
        Route(path, api.gated("update", api.update), methods=["POST"]),
        Route(path, api.gated("delete", api.delete), methods=["DELETE"]),
        Route("/_emulator/stats", admin.stats, methods=["GET"]),
        Route("/_emulator/reset-counters", admin.reset_counters, methods=["POST"]),
        Route("/_emulator/config", admin.config, methods=["GET", "POST"]),
    ]
    # Each kind's object read by the admin (/_emulator/conversations/{conversation_id}, ...);
    # the other kinds' API: each object's GET and POST, and the listing (a file's in its store).
    for name, kind in KINDS.items():
        admin_path = ADMIN_PREFIX + name + "/" + "/".join(f"{{{c}}}" for c in kind.id_columns)
        routes.append(Route(admin_path, admin.object(kind), methods=["GET"]))
        if name == CONVERSATIONS:
            continue
        objects = _Objects(api, kind)
        routes += [
            Route(kind.path, api.gated("retrieve", objects.retrieve, name), methods=["GET"]),
            Route(kind.path, api.gated("update", objects.update, name), methods=["POST"]),
            Route(
                kind.path.rpartition("/")[0],
                api.gated("list", objects.list, name),
                methods=["GET"],
            ),
        ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(InFlight, emulator=state)],
        exception_handlers={HTTPException: _not_found, ApiError: _api_error},
    )
    app.state.emulator = state
    return app
