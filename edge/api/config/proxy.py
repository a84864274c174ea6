"""``/api/v1/proxy/targets``: the ``proxy:{hostname}`` documents (see ``docs/api.md``).

Documents are validated by :func:`edge.config.schema.decode_item`, exactly as the config
loader will read them, and stored normalised (every field written, hostnames lowercased).
The workers' keyspace watcher applies a write within a second, like any ``redis-cli SET``.

``PUT`` replaces the document: fields left out take their defaults. ``PATCH`` changes only
the fields it sends (:func:`~edge.api.config.store.merged`), in one transaction, so two
PATCHes of different fields never lose each other's change. Three groups of fields
also have their own sub-resource, each replaced as a whole: ``auth`` (``auth_*``), ``mcp``
(``resource_*``) and ``routes`` (``route_mode``, ``enabled_routes``, ``disabled_routes``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from edge.api.config.claims import check_wildcard_claim
from edge.api.config.store import (
    MESSAGE_MAX,
    ConfigScope,
    as_text,
    body_object,
    check_owner,
    delete_visible,
    encode,
    exists_conflict,
    fetch_visible,
    location,
    new_document,
    normalized_field,
    normalized_param,
    only_fields,
    proxy_key,
    refuse_rename,
    replacement,
    stored_item,
    transaction,
    validated,
    visible_raw,
    visible_values,
)
from edge.api.http import Conflict, InvalidBody, NotFound, Response
from edge.api.request import ApiRequest, Authenticator, Endpoint, Handler
from edge.api.router import Router
from edge.config.schema import ProxyConfig, classify_key, normalize_hostname
from edge.store import keys
from edge.store.scan import SCAN_COUNT
from edge.store.transaction import Txn

__all__ = ["AUTH_FIELDS", "MCP_FIELDS", "PREFIX", "ROUTE_FIELDS", "add_proxy_routes"]

PREFIX = "/api/v1/proxy/targets"
_FIELDS: tuple[str, ...] = ProxyConfig.__struct_fields__
AUTH_FIELDS = tuple(f for f in _FIELDS if f.startswith("auth_"))
MCP_FIELDS = tuple(f for f in _FIELDS if f.startswith("resource_"))
ROUTE_FIELDS = ("route_mode", "enabled_routes", "disabled_routes")


def _not_found() -> NotFound:
    return NotFound(code="proxy_not_found", public_message="no proxy with this hostname")


def _hostname(req: ApiRequest[ConfigScope]) -> str:
    """The path's hostname, lowercased; one that cannot be valid is simply not found."""
    return normalized_param(req, "hostname", normalize_hostname, _not_found)


def _body_hostname(body: dict[str, Any]) -> str:
    return normalized_field(body, "hostname", normalize_hostname)


def _any_case_glob(hostname: str) -> str:
    """A SCAN pattern matching ``proxy:{hostname}`` in any letter case."""
    parts = [f"[{c}{c.upper()}]" if c.isalpha() else ("\\*" if c == "*" else c) for c in hostname]
    return keys.PROXY + "".join(parts)


async def _hand_written_alias(txn: Txn, hostname: str) -> bool:
    """Whether a key such as ``proxy:App.example.com`` (written by hand) serves the host.

    The edge serves a host from its lowercase key first, so creating that key would take
    the host over from whoever wrote the other one.
    """
    async for key in txn.reader.scan_iter(match=_any_case_glob(hostname), count=SCAN_COUNT):
        if as_text(key) != proxy_key(hostname):
            return True
    return False


def _proxy(item: object) -> ProxyConfig:
    assert isinstance(item, ProxyConfig)
    return item


def _document(item: ProxyConfig) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(item)
    return doc


# ---------------------------------------------------------------------------- collection


async def list_proxies(req: ApiRequest[ConfigScope]) -> Response:
    found = await visible_values(req.scope, keys.PROXY + "*", lambda k: classify_key(k) == "proxy")
    proxies = []
    for key, raw in found.items():
        try:
            proxies.append(_document(_proxy(stored_item(key, raw))))
        except Conflict:
            continue  # refused by the loader too (edge check, /health list it)
    return Response(200, {"proxies": proxies})


async def create_proxy(req: ApiRequest[ConfigScope]) -> Response:
    body = await body_object(req)
    hostname = _body_hostname(body)
    key = proxy_key(hostname)
    doc, owner = new_document(req.scope, body, {"hostname": hostname})
    item = _proxy(validated(key, doc))

    async def write(txn: Txn) -> None:
        if await txn.exists(key) or await _hand_written_alias(txn, hostname):
            raise exists_conflict("proxy", "hostname")
        await check_wildcard_claim(txn, req.scope, hostname)
        await check_owner(txn, req.scope, owner)
        pipe = txn.writes()
        pipe.set(key, encode(item))

    await transaction(req.scope, [key], write)
    return Response(201, _document(item), location(PREFIX, hostname))


# ---------------------------------------------------------------------------- one proxy


async def get_proxy(req: ApiRequest[ConfigScope]) -> Response:
    key = proxy_key(_hostname(req))
    raw = await fetch_visible(req.scope, key, _not_found)
    return Response(200, _document(_proxy(stored_item(key, raw))))


async def replace_proxy(req: ApiRequest[ConfigScope]) -> Response:
    hostname = _hostname(req)
    key = proxy_key(hostname)
    body = await body_object(req)
    refuse_rename(body, "hostname", hostname, "proxy", _body_hostname)

    async def write(txn: Txn) -> ProxyConfig:
        identity = {"hostname": hostname}
        _, item = await replacement(
            txn, req.scope, key, body, identity, _not_found, lambda doc: _proxy(validated(key, doc))
        )
        pipe = txn.writes()
        pipe.set(key, encode(item))
        return item

    item = await transaction(req.scope, [key], write)
    return Response(200, _document(item))


def _known_fields(body: dict[str, Any]) -> None:
    """400 naming every field of ``body`` that a proxy does not have."""
    unknown = [name for name in body if name not in _FIELDS]
    if unknown:
        names = ", ".join(unknown)
        raise InvalidBody(
            "unknown fields",
            public_message=f"unknown field(s) for a proxy: {names}"[:MESSAGE_MAX],
            field=unknown[0],
        )


async def patch_proxy(req: ApiRequest[ConfigScope]) -> Response:
    hostname = _hostname(req)
    key = proxy_key(hostname)
    body = await body_object(req)
    _known_fields(body)
    refuse_rename(body, "hostname", hostname, "proxy", _body_hostname)

    async def write(txn: Txn) -> ProxyConfig:
        identity = {"hostname": hostname}
        _, item = await replacement(
            txn,
            req.scope,
            key,
            body,
            identity,
            _not_found,
            lambda doc: _proxy(validated(key, doc)),
            merge=True,
        )
        pipe = txn.writes()
        pipe.set(key, encode(item))
        return item

    item = await transaction(req.scope, [key], write)
    return Response(200, _document(item))


async def delete_proxy(req: ApiRequest[ConfigScope]) -> Response:
    await delete_visible(req.scope, proxy_key(_hostname(req)), _not_found)
    return Response(204)


# ---------------------------------------------------------------------------- field groups


def _group(item: ProxyConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    doc = _document(item)
    return {f: doc[f] for f in fields}


def _group_handlers(
    fields: tuple[str, ...], what: str, implied: dict[str, Any]
) -> tuple[Handler[ConfigScope], Handler[ConfigScope], Handler[ConfigScope]]:
    """GET, set (the body replaces the group; ``implied`` fills what it leaves out) and
    DELETE (the group back to its defaults) for one group of proxy fields."""

    async def get(req: ApiRequest[ConfigScope]) -> Response:
        key = proxy_key(_hostname(req))
        raw = await fetch_visible(req.scope, key, _not_found)
        return Response(200, _group(_proxy(stored_item(key, raw)), fields))

    async def change(req: ApiRequest[ConfigScope], body: dict[str, Any] | None) -> ProxyConfig:
        key = proxy_key(_hostname(req))

        async def write(txn: Txn) -> ProxyConfig:
            raw = await visible_raw(txn.reader, req.scope, key, _not_found)
            doc = _document(_proxy(stored_item(key, raw)))
            for name in fields:
                del doc[name]
            if body is not None:
                doc.update(implied)
                doc.update(body)
            item = _proxy(validated(key, doc))
            pipe = txn.writes()
            pipe.set(key, encode(item))
            return item

        return await transaction(req.scope, [key], write)

    async def put(req: ApiRequest[ConfigScope]) -> Response:
        body = await body_object(req)
        only_fields(body, fields, what)
        return Response(200, _group(await change(req, body), fields))

    async def delete(req: ApiRequest[ConfigScope]) -> Response:
        await change(req, None)
        return Response(204)

    return get, put, delete


def add_proxy_routes(router: Router[Endpoint[Any]], token: Authenticator[ConfigScope]) -> None:
    router.add("GET", f"{PREFIX}/", Endpoint(token, list_proxies))
    router.add("POST", f"{PREFIX}/", Endpoint(token, create_proxy))
    one = f"{PREFIX}/{{hostname}}"
    router.add("GET", one, Endpoint(token, get_proxy))
    router.add("PUT", one, Endpoint(token, replace_proxy))
    router.add("PATCH", one, Endpoint(token, patch_proxy))
    router.add("DELETE", one, Endpoint(token, delete_proxy))
    groups: tuple[tuple[str, tuple[str, ...], str, dict[str, Any], str], ...] = (
        ("auth", AUTH_FIELDS, "the auth sub-resource", {"auth_enabled": True}, "POST"),
        ("mcp", MCP_FIELDS, "the mcp sub-resource", {}, "POST"),
        ("routes", ROUTE_FIELDS, "the routes sub-resource", {}, "PUT"),
    )
    for name, fields, what, implied, setter in groups:
        get, put, delete = _group_handlers(fields, what, implied)
        router.add("GET", f"{one}/{name}", Endpoint(token, get))
        router.add(setter, f"{one}/{name}", Endpoint(token, put))
        if name != "routes":
            router.add("DELETE", f"{one}/{name}", Endpoint(token, delete))
