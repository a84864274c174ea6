"""``/api/v1/routes``: the ``route:{id}`` documents and their index keys.

Next to each route written here, in the same transaction::

    route:unique:{path_pattern}:{priority}    -> route id   (no two routes share both)
    route:priority:{priority}:{route_id}      -> route id

The edge ignores both (they are not route documents). A ``route:unique:`` key naming a
route that no longer has that path and priority (a hand edit or delete) is stale and is
taken over.

A token other than the admin may only write routes of ``scope: "proxy"`` whose
``proxy_hostnames`` are all proxies it owns: a global route, or one on someone else's
proxy, would change how other tokens' hosts are served.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.asyncio.client import Pipeline

from edge.api.config_store import (
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
from edge.api.http import Conflict, Forbidden, InvalidBody, NotFound, Response
from edge.api.request import Access, ApiRequest, Endpoint
from edge.api.router import Router
from edge.config.schema import RouteConfig, classify_key

__all__ = ["PREFIX", "add_routing_routes"]

PREFIX = "/api/v1/routes"
_INDEX_PREFIXES = ("unique:", "priority:")


def _not_found() -> NotFound:
    return NotFound(code="route_not_found", public_message="no route with this id")


def _addressable(route_id: str) -> bool:
    return classify_key(route_key(route_id)) == "route"


def _route_id(req: ApiRequest) -> str:
    route_id = req.params["route_id"]
    if not _addressable(route_id):
        raise _not_found()  # "unique:..." would address an index key
    return route_id


def _body_route_id(body: dict[str, Any]) -> str:
    route_id = required_text(body, "route_id")
    if route_id.startswith(_INDEX_PREFIXES):
        raise InvalidBody(
            "reserved route id",
            public_message="a route id may not start with 'unique:' or 'priority:' "
            "(those are index keys)",
            field="route_id",
        )
    return route_id


def _route(item: object) -> RouteConfig:
    assert isinstance(item, RouteConfig)
    return item


def _document(item: RouteConfig) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(item)
    return doc


async def _claim(pipe: Pipeline, route: RouteConfig) -> None:
    """409 unless ``route``'s ``route:unique:`` key is free, stale or already its own."""
    unique = route_unique_key(route.path_pattern, route.priority)
    holder = await pipe.get(unique)
    if holder is None or as_text(holder) == route.route_id:
        return
    other = route_key(as_text(holder))
    await pipe.watch(other)
    if route_index(loose_doc(await pipe.get(other))) == (route.path_pattern, route.priority):
        raise Conflict(
            "path and priority taken",
            code="route_conflict",
            public_message="another route has this path_pattern and priority",
            field="path_pattern",
        )


async def _check_scope(pipe: Pipeline, req: ApiRequest, route: RouteConfig) -> None:
    """A token other than the admin: only proxy-scoped routes, on its own proxies."""
    if req.caller.is_admin:
        return
    if route.scope != "proxy":
        raise Forbidden(
            "global route",
            public_message="only the admin token may write global routes; "
            "use scope 'proxy' with proxy_hostnames of your own proxies",
            field="scope",
        )
    keys = [proxy_key(h) for h in route.proxy_hostnames]
    await pipe.watch(*keys)
    for key in keys:
        raw = await pipe.get(key)
        if raw is None or not can_see(req, owner_of(raw)):
            # the same answer for "none" and "someone else's": nothing is revealed
            raise Forbidden(
                "not an own proxy",
                public_message="proxy_hostnames may only name proxies this token owns",
                field="proxy_hostnames",
            )


def _queue_index(pipe: Pipeline, route: RouteConfig) -> None:
    pipe.set(route_unique_key(route.path_pattern, route.priority), route.route_id)
    pipe.set(route_priority_key(route.priority, route.route_id), route.route_id)


async def _old_index(pipe: Pipeline, route_id: str, raw: bytes) -> list[str]:
    """The index keys of the stored route ``route_id`` that are its own (watched)."""
    index = route_index(loose_doc(raw))
    if index is None:
        return []
    unique = route_unique_key(*index)
    await pipe.watch(unique)
    keys = [route_priority_key(index[1], route_id)]
    holder = await pipe.get(unique)
    if holder is not None and as_text(holder) == route_id:
        keys.append(unique)
    return keys


# ---------------------------------------------------------------------------- endpoints


async def list_routes(req: ApiRequest) -> Response:
    found = await visible_values(req, "route:*", lambda k: classify_key(k) == "route")
    routes = []
    for key, raw in found.items():
        try:
            routes.append(_document(_route(stored_item(key, raw))))
        except Conflict:
            continue
    routes.sort(key=lambda r: str(r["route_id"]))
    return Response(200, {"routes": routes})


async def create_route(req: ApiRequest) -> Response:
    body = await body_object(req)
    route_id = _body_route_id(body)
    key = route_key(route_id)
    doc, owner = new_document(req, body, {})
    route = _route(validated(key, doc, "route_id"))
    unique = route_unique_key(route.path_pattern, route.priority)

    async def write(pipe: Pipeline) -> None:
        if await pipe.exists(key):
            raise exists_conflict("route", "route_id")
        await _claim(pipe, route)
        await _check_scope(pipe, req, route)
        await check_owner(pipe, req, owner)
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.set(key, encode(route))
        _queue_index(pipe, route)

    await transaction(req, [key, unique], write)
    return Response(201, _document(route), location(PREFIX, route_id))


async def get_route(req: ApiRequest) -> Response:
    key = route_key(_route_id(req))
    raw = await fetch_visible(req, key, _not_found)
    return Response(200, _document(_route(stored_item(key, raw))))


async def replace_route(req: ApiRequest) -> Response:
    route_id = _route_id(req)
    key = route_key(route_id)
    body = await body_object(req)
    refuse_rename(body, "route_id", route_id, "route")

    async def write(pipe: Pipeline) -> RouteConfig:
        raw, route = await replacement(
            pipe,
            req,
            key,
            body,
            {"route_id": route_id},
            _not_found,
            lambda doc: _route(validated(key, doc)),
        )
        old = await _old_index(pipe, route_id, raw)
        await pipe.watch(route_unique_key(route.path_pattern, route.priority))
        await _claim(pipe, route)
        await _check_scope(pipe, req, route)
        pipe.multi()  # type: ignore[no-untyped-call]
        if old:
            pipe.delete(*old)
        pipe.set(key, encode(route))
        _queue_index(pipe, route)
        return route

    route = await transaction(req, [key], write)
    return Response(200, _document(route))


async def delete_route(req: ApiRequest) -> Response:
    route_id = _route_id(req)
    key = route_key(route_id)

    async def write(pipe: Pipeline) -> None:
        raw = await visible_raw(pipe, req, key, _not_found)
        old = await _old_index(pipe, route_id, raw)
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.delete(key, *old)

    await transaction(req, [key], write)
    return Response(204)


def add_routing_routes(router: Router[Endpoint]) -> None:
    token = Access.TOKEN
    router.add("GET", f"{PREFIX}/", Endpoint(token, list_routes))
    router.add("POST", f"{PREFIX}/", Endpoint(token, create_route))
    one = f"{PREFIX}/{{route_id}}"
    router.add("GET", one, Endpoint(token, get_route))
    router.add("PUT", one, Endpoint(token, replace_route))
    router.add("DELETE", one, Endpoint(token, delete_route))
