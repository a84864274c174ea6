"""What a project's members may list with their personal access token (``docs/api.md``)::

    GET /public-api/apps                   apps.read     the project's apps
    GET /public-api/apps/{id}/resources    apps.read     an app's resources (404: not the project's)
    GET /public-api/databases              project.read  the project's databases

Answered in the envelope of the PAT endpoints, ``{"data": [...], "errors": null}``; the
project is the PAT's, the role the caller's membership's as it is now (checked with
:func:`edge.auth.roles.has_permission`).

The targets are read from the worker's configuration snapshot, not from Redis: what a
listing shows is what this edge serves (a rejected value shows its last good one), it is
live (the config watcher applies a change within a second) and costs no Redis call beyond
the PAT's own checks. The hosting platform's secrets, registry and storage listings are
not an edge's and have no endpoint here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edge.api.http import Forbidden, Response
from edge.api.identity import PatIdentity
from edge.api.request import ApiRequest, Authenticator, Endpoint
from edge.api.router import Router
from edge.api.targets.records import app_not_found, document
from edge.auth.roles import has_permission
from edge.config.snapshot import Snapshot
from edge.config.targets import Target, valid_target_id

__all__ = ["PUBLIC_APPS", "PUBLIC_DATABASES", "TargetScope", "add_public_routes"]

PUBLIC_APPS = "/public-api/apps"
PUBLIC_DATABASES = "/public-api/databases"


@dataclass(frozen=True, slots=True)
class TargetScope:
    """A PAT request: who asks (user, project, role), and the configuration it reads."""

    pat: PatIdentity
    snapshot: Callable[[], Snapshot]

    def require(self, permission: str) -> str:
        """The caller's project id, once its role grants ``permission`` (else 403)."""
        if not has_permission(self.pat.role, permission):
            raise Forbidden(
                "permission missing",
                code="permission_denied",
                public_message=f"your role in this project does not grant {permission}",
            )
        return self.pat.project.id


def _of_project(items: Iterable[Target], project_id: str) -> list[dict[str, Any]]:
    """The project's items as documents, by name then id (a stable order to read)."""
    mine = sorted((i for i in items if i.project_id == project_id), key=lambda i: (i.name, i.id))
    return [document(i) for i in mine]


async def list_apps(req: ApiRequest[TargetScope]) -> Response:
    project = req.scope.require("apps.read")
    return Response(200, _of_project(req.scope.snapshot().apps.values(), project))


async def list_app_resources(req: ApiRequest[TargetScope]) -> Response:
    project = req.scope.require("apps.read")
    snapshot = req.scope.snapshot()
    app_id = req.params["id"]
    app = snapshot.apps.get(app_id) if valid_target_id(app_id) else None
    if app is None or app.project_id != project:
        raise app_not_found()  # another project's app is no more there than a missing one
    resources = (r for r in snapshot.app_resources.values() if r.app_id == app_id)
    return Response(200, _of_project(resources, project))


async def list_databases(req: ApiRequest[TargetScope]) -> Response:
    project = req.scope.require("project.read")
    return Response(200, _of_project(req.scope.snapshot().databases.values(), project))


def add_public_routes(router: Router[Endpoint[Any]], pat: Authenticator[TargetScope]) -> None:
    router.add("GET", PUBLIC_APPS, Endpoint(pat, list_apps, envelope=True))
    router.add(
        "GET", f"{PUBLIC_APPS}/{{id}}/resources", Endpoint(pat, list_app_resources, envelope=True)
    )
    router.add("GET", PUBLIC_DATABASES, Endpoint(pat, list_databases, envelope=True))
