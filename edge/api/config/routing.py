"""``/api/v1/routes``: the ``route:{id}`` documents and their index keys.

Next to each route written here, in the same transaction::

    route:unique:{path_pattern}:{priority}    -> route id   (no two routes share both)
    route:priority:{priority}:{route_id}      -> route id

The edge ignores both (they are not route documents). A ``route:unique:`` key naming a
route that no longer has that path and priority (a hand edit or delete) is stale and is
taken over.

A create without ``route_id`` gets a generated one (``r_`` and 12 base58 characters). Lists
(JSON, and the text table of ``/formatted``) come in evaluation order, the router's own
sort key (:func:`edge.routing.router.evaluation_order`), optionally filtered by ``?scope=``.

A token other than the admin may only write routes of ``scope: "proxy"`` whose
``proxy_hostnames`` are all proxies it owns: a global route, or one on someone else's
proxy, would change how other tokens' hosts are served.
"""

from __future__ import annotations

import secrets
from typing import Any, get_args

import msgspec
from redis.asyncio.client import Pipeline

from edge.api.config.route_table import format_routes
from edge.api.config.store import (
    ConfigScope,
    as_text,
    body_object,
    can_see,
    check_owner,
    encode,
    exists_conflict,
    fetch_visible,
    location,
    loose_doc,
    new_document,
    owner_of,
    proxy_key,
    refuse_rename,
    replacement,
    required_text,
    route_index,
    route_key,
    route_priority_key,
    route_unique_key,
    stored_item,
    transaction,
    validated,
    visible_raw,
    visible_values,
)
from edge.api.http import (
    Conflict,
    Forbidden,
    InvalidBody,
    NotFound,
    Response,
    invalid_query,
    only_query_param,
)
from edge.api.request import ApiRequest, Authenticator, Endpoint
from edge.api.router import Router
from edge.auth.secrets import BASE58_ALPHABET
from edge.config.schema import RouteConfig, RouteScope, classify_key
from edge.routing.router import evaluation_order
from edge.store import keys
from edge.store.transaction import Txn

__all__ = ["PREFIX", "add_routing_routes"]

PREFIX = "/api/v1/routes"
_INDEX_PREFIXES = tuple(prefix[len(keys.ROUTE) :] for prefix in keys.ROUTE_INDEXES)
FORMATTED = "formatted"  # GET /api/v1/routes/formatted: no route can be addressed by this id
_SCOPES: tuple[str, ...] = get_args(RouteScope)
_ID_RANDOM = 12  # base58 characters of a generated id: ~70 bits
_ID_TRIES = 3  # a generated id that exists (never seen in practice) is drawn again


def _not_found() -> NotFound:
    return NotFound(code="route_not_found", public_message="no route with this id")


def _addressable(route_id: str) -> bool:
    return classify_key(route_key(route_id)) == "route"


def _route_id(req: ApiRequest[ConfigScope]) -> str:
    route_id = req.params["route_id"]
    if not _addressable(route_id):
        raise _not_found()  # "unique:..." would address an index key
    return route_id


def _new_route_id() -> str:
    """A fresh id: ``r_`` and 12 base58 characters (URL-safe, no look-alike characters)."""
    return "r_" + "".join(secrets.choice(BASE58_ALPHABET) for _ in range(_ID_RANDOM))


def _body_route_id(body: dict[str, Any]) -> str:
    route_id = required_text(body, "route_id")
    if route_id.startswith(_INDEX_PREFIXES):
        raise InvalidBody(
            "reserved route id",
            public_message="a route id may not start with 'unique:' or 'priority:' "
            "(those are index keys)",
            field="route_id",
        )
    if route_id == FORMATTED:
        raise InvalidBody(
            "reserved route id",
            public_message=f"the route id '{FORMATTED}' is reserved "
            f"({PREFIX}/{FORMATTED} is the routes as a text table)",
            field="route_id",
        )
    return route_id


def _scope_filter(req: ApiRequest[ConfigScope]) -> str | None:
    """``?scope=global|proxy`` (once), or None: the only query parameter of the lists."""
    scopes = only_query_param(req.ex, "scope")
    if not scopes:
        return None
    if len(scopes) > 1 or scopes[0] not in _SCOPES:
        allowed = " or ".join(f"'{s}'" for s in _SCOPES)
        raise invalid_query("scope", f"scope must be {allowed}, given once")
    return scopes[0]


def _route(item: object) -> RouteConfig:
    assert isinstance(item, RouteConfig)
    return item


def _document(item: RouteConfig) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(item)
    return doc


async def _claim(txn: Txn, route: RouteConfig) -> None:
    """409 unless ``route``'s ``route:unique:`` key is free, stale or already its own."""
    unique = route_unique_key(route.path_pattern, route.priority)
    holder = await txn.get(unique)
    if holder is None or as_text(holder) == route.route_id:
        return
    other = route_key(as_text(holder))
    await txn.watch(other)
    if route_index(loose_doc(await txn.get(other))) == (route.path_pattern, route.priority):
        raise Conflict(
            "path and priority taken",
            code="route_conflict",
            public_message="another route has this path_pattern and priority",
            field="path_pattern",
        )


async def _check_scope(txn: Txn, scope: ConfigScope, route: RouteConfig) -> None:
    """A token other than the admin: only proxy-scoped routes, on its own proxies."""
    if scope.caller.is_admin:
        return
    if route.scope != "proxy":
        raise Forbidden(
            "global route",
            public_message="only the admin token may write global routes; "
            "use scope 'proxy' with proxy_hostnames of your own proxies",
            field="scope",
        )
    keys = [proxy_key(h) for h in route.proxy_hostnames]
    await txn.watch(*keys)
    for key in keys:
        raw = await txn.get(key)
        if raw is None or not can_see(scope, owner_of(raw)):
            # the same answer for "none" and "someone else's": nothing is revealed
            raise Forbidden(
                "not an own proxy",
                public_message="proxy_hostnames may only name proxies this token owns",
                field="proxy_hostnames",
            )
    if route.target_type == "hostname":
        await _check_hostname_target(txn, scope, route.target_value)


async def _check_hostname_target(txn: Txn, scope: ConfigScope, target: str) -> None:
    """A hostname route serves the request with that host's proxy (its target, headers
    and auth): only a proxy this token owns, found as the router finds it (the exact name,
    then the most specific wildcard)."""
    host = target.rsplit(":", 1)[0] if not target.startswith("[") else target
    labels = host.split(".")
    keys = [proxy_key(host)] + [
        proxy_key("*." + ".".join(labels[i:])) for i in range(1, len(labels))
    ]
    await txn.watch(*keys)
    for raw in await txn.mget(keys):
        if raw is not None:
            if can_see(scope, owner_of(raw)):
                return
            break
    raise Forbidden(
        "hostname target not an own proxy",
        public_message="a hostname target may only name a proxy this token owns",
        field="target_value",
    )


def _queue_index(pipe: Pipeline, route: RouteConfig) -> None:
    pipe.set(route_unique_key(route.path_pattern, route.priority), route.route_id)
    pipe.set(route_priority_key(route.priority, route.route_id), route.route_id)


async def _old_index(txn: Txn, route_id: str, raw: bytes) -> list[str]:
    """The index keys of the stored route ``route_id`` that are its own (watched)."""
    index = route_index(loose_doc(raw))
    if index is None:
        return []
    unique = route_unique_key(*index)
    await txn.watch(unique)
    keys = [route_priority_key(index[1], route_id)]
    holder = await txn.get(unique)
    if holder is not None and as_text(holder) == route_id:
        keys.append(unique)
    return keys


# ---------------------------------------------------------------------------- endpoints


async def _listed(req: ApiRequest[ConfigScope]) -> list[RouteConfig]:
    """The routes the caller may see, of the ``?scope=`` asked for, in evaluation order."""
    scope = _scope_filter(req)
    found = await visible_values(req.scope, keys.ROUTE + "*", lambda k: classify_key(k) == "route")
    routes = []
    for key, raw in found.items():
        try:
            route = _route(stored_item(key, raw))
        except Conflict:
            continue  # refused by the loader too (edge check, /health list it)
        if scope is None or route.scope == scope:
            routes.append(route)
    routes.sort(key=evaluation_order)
    return routes


async def list_routes(req: ApiRequest[ConfigScope]) -> Response:
    return Response(200, {"routes": [_document(r) for r in await _listed(req)]})


async def formatted_routes(req: ApiRequest[ConfigScope]) -> Response:
    return Response(200, text=format_routes(await _listed(req)))


async def create_route(req: ApiRequest[ConfigScope]) -> Response:
    body = await body_object(req)
    if body.get("route_id") is None:
        for _ in range(_ID_TRIES - 1):
            try:
                return await _create(req.scope, {**body, "route_id": _new_route_id()})
            except Conflict as exc:
                if exc.code != "route_exists":
                    raise
        body = {**body, "route_id": _new_route_id()}
    return await _create(req.scope, body)


async def _create(scope: ConfigScope, body: dict[str, Any]) -> Response:
    route_id = _body_route_id(body)
    key = route_key(route_id)
    doc, owner = new_document(scope, body, {})
    route = _route(validated(key, doc, "route_id"))
    unique = route_unique_key(route.path_pattern, route.priority)

    async def write(txn: Txn) -> None:
        if await txn.exists(key):
            raise exists_conflict("route", "route_id")
        await _claim(txn, route)
        await _check_scope(txn, scope, route)
        await check_owner(txn, scope, owner)
        pipe = txn.writes()
        pipe.set(key, encode(route))
        _queue_index(pipe, route)

    await transaction(scope, [key, unique], write)
    return Response(201, _document(route), location(PREFIX, route_id))


async def get_route(req: ApiRequest[ConfigScope]) -> Response:
    key = route_key(_route_id(req))
    raw = await fetch_visible(req.scope, key, _not_found)
    return Response(200, _document(_route(stored_item(key, raw))))


async def replace_route(req: ApiRequest[ConfigScope]) -> Response:
    route_id = _route_id(req)
    key = route_key(route_id)
    body = await body_object(req)
    refuse_rename(body, "route_id", route_id, "route")

    async def write(txn: Txn) -> RouteConfig:
        raw, route = await replacement(
            txn,
            req.scope,
            key,
            body,
            {"route_id": route_id},
            _not_found,
            lambda doc: _route(validated(key, doc)),
        )
        old = await _old_index(txn, route_id, raw)
        await txn.watch(route_unique_key(route.path_pattern, route.priority))
        await _claim(txn, route)
        await _check_scope(txn, req.scope, route)
        pipe = txn.writes()
        if old:
            pipe.delete(*old)
        pipe.set(key, encode(route))
        _queue_index(pipe, route)
        return route

    route = await transaction(req.scope, [key], write)
    return Response(200, _document(route))


async def delete_route(req: ApiRequest[ConfigScope]) -> Response:
    route_id = _route_id(req)
    key = route_key(route_id)

    async def write(txn: Txn) -> None:
        raw = await visible_raw(txn.reader, req.scope, key, _not_found)
        old = await _old_index(txn, route_id, raw)
        pipe = txn.writes()
        pipe.delete(key, *old)

    await transaction(req.scope, [key], write)
    return Response(204)


def add_routing_routes(router: Router[Endpoint[Any]], token: Authenticator[ConfigScope]) -> None:
    router.add("GET", f"{PREFIX}/", Endpoint(token, list_routes))
    router.add("POST", f"{PREFIX}/", Endpoint(token, create_route))
    router.add("GET", f"{PREFIX}/{FORMATTED}", Endpoint(token, formatted_routes))
    one = f"{PREFIX}/{{route_id}}"
    router.add("GET", one, Endpoint(token, get_route))
    router.add("PUT", one, Endpoint(token, replace_route))
    router.add("DELETE", one, Endpoint(token, delete_route))
