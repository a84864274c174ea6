"""``/api/v1/logs``: the request log, read by any API token, cleared by the admin token
(see ``docs/logs.md``)::

    GET     /api/v1/logs/ip/{ip}            GET  /api/v1/logs/errors
    GET     /api/v1/logs/host/{hostname}    GET  /api/v1/logs/slow
    GET     /api/v1/logs/client/{client_id} GET  /api/v1/logs/events
    GET     /api/v1/logs/user/{user}        GET  /api/v1/logs/search
    GET     /api/v1/logs/stats              GET  /api/v1/logs/follow
    DELETE  /api/v1/logs                    (admin)

Lists answer ``{"entries": [...], "next_cursor": str | null, "partial": bool}``, newest
first; ``next_cursor`` goes back as ``cursor`` for the next page. Every list takes
``hours`` (default 1, at most LOG_RETENTION_HOURS), ``limit`` (default 100, at most 1000),
``cursor`` and the search filters (``host``, ``ip``, ``status`` (``404`` or ``4xx``),
``method``, ``path`` (a prefix), ``user``, ``client``, ``min_ms``) but the one its path
names; ``/search`` also ``errors`` and ``slow`` (true/false). ``/follow`` long-polls:
``after`` (a stream id, or ``$``: from now), ``wait`` (seconds, at most 25) and the
search filters, answering ``{"entries": [...], "next": "<stream id>"}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from edge.api.http import ApiError, Response, invalid_query
from edge.api.identity import Identity
from edge.api.logs.params import (
    LIST_PARAMS,
    SEARCH_PARAMS,
    cursor_of,
    filters_of,
    follow_after,
    hours_of,
    limit_of,
    one_each,
    wait_of,
)
from edge.api.request import ApiRequest, Endpoint, Scoped
from edge.api.router import Router
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import TokenStore
from edge.errors import Fault
from edge.observe import reqlog_query as query
from edge.observe.reqlog_query import Filters, InvalidCursor

__all__ = ["MAX_FOLLOWERS", "PREFIX", "LogScope", "LogsApi"]

PREFIX = "/api/v1/logs"
MAX_FOLLOWERS = 32  # follow calls waiting at once per worker; more: 503 and Retry-After
STATS_DEFAULT_HOURS = 24


class TooManyFollowers(ApiError):
    status = 503
    code = "too_many_followers"
    public_message = f"{MAX_FOLLOWERS} follow calls are already waiting here; retry shortly"
    peer_fault = Fault.NONE

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


@dataclass(frozen=True, slots=True)
class LogScope:
    """What the logs endpoints act as and through."""

    caller: Identity
    api: LogsApi

    @property
    def redis(self) -> Redis:
        return self.api.store.redis.client


class LogsApi:
    """The request log's endpoints. ``retention_hours``: the longest window a query may
    ask for (LOG_RETENTION_HOURS: nothing older is kept); ``slow_ms``: LOG_SLOW_MS, what
    ``slow`` means to a follow (stream entries do not say whether they were indexed so)."""

    def __init__(self, store: TokenStore, *, retention_hours: int = 24, slow_ms: int = 1000):
        self.store = store
        self.retention_hours = retention_hours
        self.slow_ms = slow_ms
        self.followers = 0

    def _scope(self, caller: Identity) -> LogScope:
        return LogScope(caller, self)

    def register(self, router: Router[Endpoint[Any]]) -> None:
        reader = Scoped(TokenAuth(self.store, admin_only=False), self._scope)
        admin = Scoped(TokenAuth(self.store, admin_only=True), self._scope)
        for name, field in (("ip", "ip"), ("host", "host"), ("client", "client"), ("user", "user")):
            router.add("GET", f"{PREFIX}/{name}/{{value}}", Endpoint(reader, self._by(field)))
        router.add("GET", f"{PREFIX}/errors", Endpoint(reader, self._flagged(errors=True)))
        router.add("GET", f"{PREFIX}/slow", Endpoint(reader, self._flagged(slow=True)))
        router.add("GET", f"{PREFIX}/events", Endpoint(reader, self._flagged(events=True)))
        router.add("GET", f"{PREFIX}/search", Endpoint(reader, self.search))
        router.add("GET", f"{PREFIX}/stats", Endpoint(reader, self.stats))
        router.add("GET", f"{PREFIX}/follow", Endpoint(reader, self.follow))
        router.add("DELETE", PREFIX, Endpoint(admin, self.clear))

    async def close(self) -> None:
        """Nothing of its own to close (the Redis handle is the worker's)."""

    # ------------------------------------------------------------ the lists

    async def _list(
        self, req: ApiRequest[LogScope], params: dict[str, str], filters: Filters
    ) -> Response:
        hours = hours_of(params, 1, self.retention_hours)
        limit = limit_of(params)
        cursor = cursor_of(params)
        try:
            async with asyncio.timeout(self.store.timeout):
                page = await query.search(
                    req.scope.redis, filters, hours=hours, limit=limit, cursor=cursor
                )
        except InvalidCursor:
            raise invalid_query("cursor", "cursor must be a next_cursor of this list") from None
        document = {
            "entries": page.entries,
            "next_cursor": page.next_cursor,
            "partial": page.partial,
        }
        return Response(200, document)

    def _by(self, field: str) -> Callable[[ApiRequest[LogScope]], Awaitable[Response]]:
        allowed = [p for p in LIST_PARAMS if p != field]

        async def handler(req: ApiRequest[LogScope]) -> Response:
            params = one_each(req.ex, allowed)
            return await self._list(req, params, filters_of(params, {field: req.params["value"]}))

        return handler

    def _flagged(
        self, *, errors: bool = False, slow: bool = False, events: bool = False
    ) -> Callable[[ApiRequest[LogScope]], Awaitable[Response]]:
        async def handler(req: ApiRequest[LogScope]) -> Response:
            params = one_each(req.ex, LIST_PARAMS)
            filters = filters_of(params, errors=errors, slow=slow)
            if events:
                filters = dataclasses.replace(filters, events=True)
            return await self._list(req, params, filters)

        return handler

    async def search(self, req: ApiRequest[LogScope]) -> Response:
        params = one_each(req.ex, SEARCH_PARAMS)
        return await self._list(req, params, filters_of(params))

    # ------------------------------------------------------------ stats, follow, clear

    async def stats(self, req: ApiRequest[LogScope]) -> Response:
        params = one_each(req.ex, ("hours", "host"))
        hours = int(hours_of(params, STATS_DEFAULT_HOURS, self.retention_hours, whole=True))
        host = params.get("host")
        if host is not None and not 1 <= len(host) <= 253:
            raise invalid_query("host", "host must be a hostname")
        async with asyncio.timeout(self.store.timeout):
            rows = await query.stats(req.scope.redis, hours=hours, host=host)
        return Response(200, {"hours": rows})

    async def follow(self, req: ApiRequest[LogScope]) -> Response:
        params = one_each(req.ex, ("after", "wait", "limit", *SEARCH_PARAMS[3:]))
        filters = filters_of(params)
        after = follow_after(params)
        wait = wait_of(params)
        limit = limit_of(params)
        if self.followers >= MAX_FOLLOWERS:
            raise TooManyFollowers(f"{self.followers} follow calls waiting")
        self.followers += 1
        try:
            # its own deadline: the wait, then the usual bound for the reads around it
            async with asyncio.timeout(wait + self.store.timeout):
                page = await query.follow(
                    req.scope.redis,
                    filters,
                    after=after,
                    wait=wait,
                    limit=limit,
                    slow_ms=self.slow_ms,
                )
        finally:
            self.followers -= 1
        return Response(200, {"entries": page.entries, "next": page.next})

    async def clear(self, req: ApiRequest[LogScope]) -> Response:
        one_each(req.ex, ())
        async with asyncio.timeout(4 * self.store.timeout):
            deleted, complete = await query.clear(req.scope.redis)
        return Response(200, {"deleted": deleted, "complete": complete})
