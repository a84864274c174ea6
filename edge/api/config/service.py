"""``/api/v1/services/external``: named external upstreams.

A service is three keys, always written and deleted together in one transaction::

    service:external:{name}   the ExternalService document
    service:url:{name}        its target_url (what route targets of type "service" use)
    services:external         a set of the names (SADD / SREM)
"""

from __future__ import annotations

from typing import Any

import msgspec

from edge.api.config.store import (
    SERVICES_SET,
    ConfigScope,
    body_object,
    check_owner,
    delete_visible,
    encode,
    exists_conflict,
    external_key,
    fetch_visible,
    location,
    new_document,
    required_text,
    service_url_key,
    stored_item,
    transaction,
    validated,
    visible_values,
)
from edge.api.http import Conflict, NotFound, Response
from edge.api.request import ApiRequest, Authenticator, Endpoint
from edge.api.router import Router
from edge.config.schema import ExternalService, ServiceURL, classify_key
from edge.store import keys
from edge.store.transaction import Txn

__all__ = ["PREFIX", "add_service_routes"]

PREFIX = "/api/v1/services/external"


def _not_found() -> NotFound:
    return NotFound(code="service_not_found", public_message="no external service with this name")


def _name(req: ApiRequest[ConfigScope]) -> str:
    name = req.params["name"]
    if classify_key(external_key(name)) != "service_external":
        raise _not_found()
    return name


def _service(item: object) -> ExternalService:
    assert isinstance(item, ExternalService)
    return item


def _document(item: ExternalService) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(item)
    return doc


async def list_services(req: ApiRequest[ConfigScope]) -> Response:
    found = await visible_values(
        req.scope, keys.SERVICE_EXTERNAL + "*", lambda k: classify_key(k) == "service_external"
    )
    services = []
    for key, raw in found.items():
        try:
            services.append(_document(_service(stored_item(key, raw))))
        except Conflict:
            continue
    # and the plain service:url:{name} keys (set by hand or by a seed) that routes use
    # too: service_type "url", read-only here (no owner: the admin sees them)
    named = {service["service_name"] for service in services}
    urls = await visible_values(
        req.scope, keys.SERVICE_URL + "*", lambda k: classify_key(k) == "service_url"
    )
    for key, raw in sorted(urls.items()):
        try:
            item = stored_item(key, raw)
        except Conflict:
            continue
        assert isinstance(item, ServiceURL)
        if item.name not in named:
            services.append(
                {"service_name": item.name, "target_url": item.url, "service_type": "url"}
            )
    return Response(200, {"services": services})


async def create_service(req: ApiRequest[ConfigScope]) -> Response:
    body = await body_object(req)
    name = required_text(body, "service_name")
    key, url_key = external_key(name), service_url_key(name)
    doc, owner = new_document(req.scope, body, {})
    service = _service(validated(key, doc, "service_name"))
    validated(url_key, service.target_url, "target_url")  # the loader reads this key too

    async def write(txn: Txn) -> None:
        if await txn.exists(key, url_key):
            raise exists_conflict("service", "service_name")
        await check_owner(txn, req.scope, owner)
        pipe = txn.writes()
        pipe.set(key, encode(service))
        pipe.set(url_key, service.target_url)
        pipe.sadd(SERVICES_SET, name)

    await transaction(req.scope, [key, url_key], write)
    return Response(201, _document(service), location(PREFIX, name))


async def get_service(req: ApiRequest[ConfigScope]) -> Response:
    key = external_key(_name(req))
    raw = await fetch_visible(req.scope, key, _not_found)
    return Response(200, _document(_service(stored_item(key, raw))))


async def delete_service(req: ApiRequest[ConfigScope]) -> Response:
    name = _name(req)
    await delete_visible(
        req.scope,
        external_key(name),
        _not_found,
        also=[service_url_key(name)],
        then=lambda pipe: pipe.srem(SERVICES_SET, name),
    )
    return Response(204)


def add_service_routes(router: Router[Endpoint[Any]], token: Authenticator[ConfigScope]) -> None:
    router.add("GET", f"{PREFIX}/", Endpoint(token, list_services))
    router.add("POST", f"{PREFIX}/", Endpoint(token, create_service))
    router.add("GET", f"{PREFIX}/{{name}}", Endpoint(token, get_service))
    router.add("DELETE", f"{PREFIX}/{{name}}", Endpoint(token, delete_service))
