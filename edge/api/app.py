"""The JSON API: served on ``API_PORT`` and, through the public listeners, on ``API_HOSTNAME``.

The API is a set of endpoint groups (:class:`~edge.api.request.EndpointGroup`: tokens,
configuration, people, each holding what its handlers need), registered on one router.
Per request: route (404/405 before anything else, so an unknown path never costs a Redis
call) -> ``/health`` answered inline -> otherwise a tracked task: the endpoint's own
authenticator (401/403, or the scope its handler acts in), the endpoint (request body,
Redis) -> JSON answer. Every :class:`~edge.errors.EdgeError` (the
API's own, the stores') becomes the API's JSON error document, or its envelope form for
envelope endpoints, in one place (:meth:`ApiApp._error`, rendered by
:func:`edge.http1.render.api_error`); an unexpected exception is logged with the request id
and answered 500 with a generic message.

Tasks are fine here: the admin API is not the proxy's hot path, and its handlers wait on
Redis. Every task is kept in :attr:`ApiApp.tasks` until done (cancelled by :meth:`close`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from redis.exceptions import RedisError

from edge.api.config.acme import AcmeDefaults
from edge.api.config.cascade import prepare_cascade
from edge.api.config.routes import ConfigApi
from edge.api.http import (
    BODY_LIMIT,
    ApiError,
    Busy,
    ClientGone,
    RedisUnavailable,
    error_response,
    json_response,
)
from edge.api.logs.endpoints import LogsApi
from edge.api.oauth.endpoints import OAuthAdminApi, OAuthAdminDeps
from edge.api.people.auth import PeopleContext
from edge.api.people.directory import PeopleApi
from edge.api.request import ApiRequest, Endpoint, EndpointGroup
from edge.api.router import Router
from edge.api.targets.endpoints import TargetsApi
from edge.api.tokens.endpoints import TokenApi
from edge.api.tokens.store import TokenStore
from edge.api.tunnels.endpoints import PortForwardApi
from edge.auth.secrets import AuthOverloaded
from edge.config.snapshot import Snapshot
from edge.errors import EdgeError
from edge.http1.exchange import Exchange

__all__ = ["ApiApp", "build_router"]

log = logging.getLogger("edge.api")
_json = msgspec.json.Encoder()


def default_groups(
    store: TokenStore,
    *,
    pat_cache_ttl: float = 30.0,
    acme: AcmeDefaults | None = None,
    oauth: OAuthAdminDeps | None = None,
    targets: Callable[[], Snapshot] | None = None,
    max_sessions: int = 5,
    log_retention_hours: int = 24,
    log_slow_ms: int = 1000,
) -> list[EndpointGroup]:
    """Every area of the API, wired to the worker's token store (and its Redis handle);
    ``acme``: the certificate orders' defaults (without it, no issuance endpoints);
    ``oauth``: the authorization server's parts (without it, ``oauth_disabled``);
    ``targets``: the configuration snapshot of the moment, for port-forward tickets (with
    the same PAT verifier as ``/public-api``; without it, no ticket endpoint), at most
    ``max_sessions`` live tunnel sessions per project, and the targets' public listings
    (without it, only the admin's target endpoints); ``log_retention_hours`` and
    ``log_slow_ms``: LOG_RETENTION_HOURS and LOG_SLOW_MS, for the request log's queries."""
    people = PeopleContext(store.redis, store.timeout, cache_ttl=pat_cache_ttl)
    groups: list[EndpointGroup] = [
        TokenApi(store, prepare_cascade),
        ConfigApi(store, acme, oauth),
        PeopleApi(store, people),
        OAuthAdminApi(store, oauth),
        TargetsApi(store, people, targets),
        LogsApi(store, retention_hours=log_retention_hours, slow_ms=log_slow_ms),
    ]
    if targets is not None:
        groups.append(PortForwardApi(people, targets, max_sessions))
    return groups


def build_router(
    health: Callable[[Exchange], None], groups: Sequence[EndpointGroup]
) -> Router[Endpoint[Any]]:
    router: Router[Endpoint[Any]] = Router()
    router.add("GET", "/health", Endpoint(None, inline=health))
    for group in groups:
        group.register(router)
    return router


class ApiApp:
    """The API handler (``edge.http1.exchange.Handler``) of one worker."""

    def __init__(
        self,
        health: Callable[[], dict[str, Any]],
        groups: Sequence[EndpointGroup],
        body_limit: int = BODY_LIMIT,
    ) -> None:
        self.health = health
        self.groups = tuple(groups)
        self.body_limit = body_limit
        self.started = time.time()
        self.router = build_router(self._health, self.groups)
        self.tasks: set[asyncio.Task[None]] = set()

    def handle(self, ex: Exchange) -> None:
        try:
            match = self.router.match(ex.method.decode("latin-1"), ex.path)
        except ApiError as err:
            self._error(ex, err)
            return
        endpoint = match.target
        if endpoint.inline is not None:
            endpoint.inline(ex)
            return
        if endpoint.upgrade is not None:
            endpoint.upgrade(ex, match.params)
            return
        task = asyncio.get_running_loop().create_task(
            self._run(ex, endpoint, match.params), name=f"api-{ex.request_id}"
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _health(self, ex: Exchange) -> None:
        report = self.health()
        # degraded (redis down, rejected keys) still serves traffic: only draining is 503
        status = 503 if report.get("status") == "draining" else 200
        ex.respond(status, _json.encode(report) + b"\n", b"application/json")

    async def _run(self, ex: Exchange, endpoint: Endpoint[Any], params: dict[str, str]) -> None:
        assert endpoint.handler is not None
        rid = ex.request_id
        envelope = endpoint.envelope
        try:
            scope = None if endpoint.auth is None else await endpoint.auth(ex)
            response = await endpoint.handler(ApiRequest(ex, params, scope, self.body_limit))
        except ClientGone:
            return  # the client left mid-body: nobody to answer
        except AuthOverloaded:
            self._error(ex, Busy("token verification queue full"), envelope)
            return
        except EdgeError as err:  # the API's own errors, the stores' (certificates...)
            self._error(ex, err, envelope)
            return
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            # redis-py messages name the server address, never a key's value
            fields = {"request_id": rid, "error": type(exc).__name__, "detail": str(exc)[:200]}
            log.warning("api: redis unavailable", extra={"fields": fields})
            self._error(ex, RedisUnavailable(), envelope)
            return
        except Exception:
            log.exception("api handler failed", extra={"fields": {"request_id": rid}})
            self._error(ex, ApiError("handler failed"), envelope)
            return
        if envelope:
            response.document = {"data": response.document, "errors": None}
        json_response(ex, response)

    def _error(self, ex: Exchange, err: EdgeError, envelope: bool = False) -> None:
        fields = {
            "request_id": ex.request_id,
            "status": err.status,
            "error": err.code,
            "detail": str(err),  # fixed texts only: never request data or token values
        }
        log.log(err.log_level, "api request failed", extra={"fields": fields})
        ex.error = err.code
        error_response(ex, err, envelope=envelope)

    async def close(self) -> None:
        """Cancel what is still running (after the drain), then close every group (the
        Redis handle they share is the worker's to close)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for group in self.groups:
            await group.close()
