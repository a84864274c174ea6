"""The admin's endpoints for port-forward targets (admin token; see ``docs/api.md``)::

    GET  POST         /api/v1/apps/                      (?project_id=)
    GET  PUT  DELETE  /api/v1/apps/{id}                  (DELETE: with its resources)
    GET  POST         /api/v1/apps/{id}/resources
    GET               /api/v1/app-resources/             (?project_id=)
    GET  PUT  DELETE  /api/v1/app-resources/{id}
    GET  POST         /api/v1/databases/                 (?project_id=)
    GET  PUT  DELETE  /api/v1/databases/{id}

They answer like the other configuration endpoints (plain documents, the standard error
document): lists ``200 {"apps"|"resources"|"databases": [...]}``, create ``201`` with the
record and ``Location``, read and replace ``200``, delete ``204``. What they write is what
``edge redis-cli SET`` would, validated by the same code as the workers
(:mod:`edge.api.targets.records`); a record written by hand is what the next ``GET`` shows.
"""

from __future__ import annotations

from typing import Any

from edge.api.config.store import ConfigScope, body_object, location
from edge.api.http import Response, invalid_query, only_query_param
from edge.api.request import ApiRequest, Authenticator, Endpoint, Handler
from edge.api.router import Router
from edge.api.targets.records import (
    APP,
    DATABASE,
    RESOURCE,
    Kind,
    create,
    delete,
    delete_app,
    document,
    listed,
    path_id,
    read_one,
    replace,
)
from edge.config.targets import ID_PATTERN, ResourceTarget, valid_target_id

__all__ = ["APPS", "APP_RESOURCES", "DATABASES", "add_admin_routes"]

APPS = "/api/v1/apps"
APP_RESOURCES = "/api/v1/app-resources"
DATABASES = "/api/v1/databases"


def _project_filter(req: ApiRequest[ConfigScope]) -> str | None:
    """``?project_id=...`` (once), or None: the only query parameter of the lists."""
    found = only_query_param(req.ex, "project_id")
    if not found:
        return None
    if len(found) > 1 or not valid_target_id(found[0]):
        raise invalid_query("project_id", f"project_id must match {ID_PATTERN}, given once")
    return found[0]


def _list(kind: Kind, name: str) -> Handler[ConfigScope]:
    async def handler(req: ApiRequest[ConfigScope]) -> Response:
        project = _project_filter(req)
        items = await listed(req.scope, kind)
        docs = [document(i) for i in items if project is None or i.project_id == project]
        return Response(200, {name: docs})

    return handler


def _create(kind: Kind, prefix: str) -> Handler[ConfigScope]:
    async def handler(req: ApiRequest[ConfigScope]) -> Response:
        item = await create(req.scope, kind, await body_object(req))
        return Response(201, document(item), location(prefix, item.id))

    return handler


def _get(kind: Kind) -> Handler[ConfigScope]:
    async def handler(req: ApiRequest[ConfigScope]) -> Response:
        tid = path_id(kind, req.params["id"])
        return Response(200, document(await read_one(req.scope, kind, tid)))

    return handler


def _replace(kind: Kind) -> Handler[ConfigScope]:
    async def handler(req: ApiRequest[ConfigScope]) -> Response:
        tid = path_id(kind, req.params["id"])
        body = await body_object(req)
        return Response(200, document(await replace(req.scope, kind, tid, body)))

    return handler


def _delete(kind: Kind) -> Handler[ConfigScope]:
    async def handler(req: ApiRequest[ConfigScope]) -> Response:
        tid = path_id(kind, req.params["id"])
        if kind is APP:
            await delete_app(req.scope, tid)
        else:
            await delete(req.scope, kind, tid)
        return Response(204)

    return handler


async def list_app_resources(req: ApiRequest[ConfigScope]) -> Response:
    """The resources of one app (404 when there is no such app)."""
    app_id = path_id(APP, req.params["id"])
    await read_one(req.scope, APP, app_id)
    items = await listed(req.scope, RESOURCE)
    docs = [document(i) for i in items if isinstance(i, ResourceTarget) and i.app_id == app_id]
    return Response(200, {"resources": docs})


async def create_app_resource(req: ApiRequest[ConfigScope]) -> Response:
    app_id = path_id(APP, req.params["id"])
    item = await create(req.scope, RESOURCE, await body_object(req), app_id)
    return Response(201, document(item), location(APP_RESOURCES, item.id))


def add_admin_routes(router: Router[Endpoint[Any]], admin: Authenticator[ConfigScope]) -> None:
    for kind, prefix, name in ((APP, APPS, "apps"), (DATABASE, DATABASES, "databases")):
        router.add("GET", f"{prefix}/", Endpoint(admin, _list(kind, name)))
        router.add("POST", f"{prefix}/", Endpoint(admin, _create(kind, prefix)))
    router.add("GET", f"{APP_RESOURCES}/", Endpoint(admin, _list(RESOURCE, "resources")))
    for kind, prefix in ((APP, APPS), (RESOURCE, APP_RESOURCES), (DATABASE, DATABASES)):
        one = f"{prefix}/{{id}}"
        router.add("GET", one, Endpoint(admin, _get(kind)))
        router.add("PUT", one, Endpoint(admin, _replace(kind)))
        router.add("DELETE", one, Endpoint(admin, _delete(kind)))
    router.add("GET", f"{APPS}/{{id}}/resources", Endpoint(admin, list_app_resources))
    router.add("POST", f"{APPS}/{{id}}/resources", Endpoint(admin, create_app_resource))
