"""Admin and public API for users, projects and personal access tokens (``docs/api.md``).

Admin token (standard answers and error documents, like ``/api/v1/tokens``)::

    GET  POST   /api/v1/users/
    GET         /api/v1/users/{user_id}                          (with memberships)
    GET  POST   /api/v1/projects/
    GET         /api/v1/projects/{project_id}                    (with members)
    PUT  DELETE /api/v1/projects/{project_id}/members/{user_id}

PATs (:mod:`edge.api.people.pats`; ``{"data": ..., "errors": ...}`` envelope)::

    GET  POST   /api/v1/projects/{project_id}/tokens             (admin, acting for a user)
    DELETE      /api/v1/projects/{project_id}/tokens/{token_id}  (admin, acting for a user)
    GET         /public-api/me                                   (a PAT)
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from edge.api.http import Conflict, Response
from edge.api.people.auth import PeopleContext
from edge.api.people.common import (
    DisplayName,
    LastOwnerConflict,
    PeopleScope,
    member_not_found,
    project_not_found,
    project_param,
    read_json,
    user_not_found,
    user_param,
)
from edge.api.people.pats import add_pat_routes
from edge.api.people.store import Duplicate, LastOwner, Missing, PeopleStore
from edge.api.request import ApiRequest, Endpoint, Scoped
from edge.api.router import Router
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import Email, Name, TokenStore

__all__ = ["PROJECTS", "USERS", "PeopleApi"]

USERS = "/api/v1/users"
PROJECTS = "/api/v1/projects"


class CreateUser(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: DisplayName
    email: Email


class CreateProject(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: Name


class PutMember(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    role: Literal["owner", "maintainer", "modifier", "viewer"]
    accepted: bool = False  # false: an invitation, which grants nothing yet


def _store(req: ApiRequest[PeopleScope]) -> PeopleStore:
    return req.scope.people.store


# ---------------------------------------------------------------------------- users


async def list_users(req: ApiRequest[PeopleScope]) -> Response:
    users = await _store(req).list_users()
    return Response(200, {"users": [u.public() for u in users]})


async def create_user(req: ApiRequest[PeopleScope]) -> Response:
    body = await read_json(req, CreateUser)
    try:
        user = await _store(req).create_user(body.name, body.email)
    except Duplicate:
        raise Conflict(
            "email taken",
            code="email_taken",
            public_message="a user with this e-mail address exists",
            field="email",
        ) from None
    location = f"{USERS}/{user.id}".encode("ascii")
    return Response(201, user.public(), [(b"location", location)])


async def get_user(req: ApiRequest[PeopleScope]) -> Response:
    uid = user_param(req)
    store = _store(req)
    user = await store.get_user(uid)
    if user is None:
        raise user_not_found()
    memberships = await store.user_memberships(uid)
    projects = [m.public(pid, uid) for pid, m in memberships]
    return Response(200, {**user.public(), "projects": projects})


# ---------------------------------------------------------------------------- projects


async def list_projects(req: ApiRequest[PeopleScope]) -> Response:
    projects = await _store(req).list_projects()
    return Response(200, {"projects": [p.public() for p in projects]})


async def create_project(req: ApiRequest[PeopleScope]) -> Response:
    body = await read_json(req, CreateProject, project_name=True)
    try:
        project = await _store(req).create_project(body.name)
    except Duplicate:
        raise Conflict(
            "project name taken",
            code="project_exists",
            public_message="a project with this name exists",
            field="name",
        ) from None
    location = f"{PROJECTS}/{project.id}".encode("ascii")
    return Response(201, project.public(), [(b"location", location)])


async def get_project(req: ApiRequest[PeopleScope]) -> Response:
    pid = project_param(req)
    store = _store(req)
    project = await store.get_project(pid)
    if project is None:
        raise project_not_found()
    members = [m.public(pid, uid) for uid, m in await store.project_members(pid)]
    return Response(200, {**project.public(), "members": members})


# ---------------------------------------------------------------------------- members


async def put_member(req: ApiRequest[PeopleScope]) -> Response:
    pid, uid = project_param(req), user_param(req)
    body = await read_json(req, PutMember)
    try:
        member, created = await _store(req).put_member(pid, uid, body.role, body.accepted)
    except Missing as missing:
        raise (project_not_found() if missing.kind == "project" else user_not_found()) from None
    except LastOwner:
        raise LastOwnerConflict("last owner demoted") from None
    return Response(201 if created else 200, member.public(pid, uid))


async def delete_member(req: ApiRequest[PeopleScope]) -> Response:
    pid, uid = project_param(req), user_param(req)
    store = _store(req)
    try:
        revoked = await store.delete_member(pid, uid)
    except LastOwner:
        raise LastOwnerConflict("last owner removed") from None
    if revoked is None:
        project, user, _ = await store.lookup(pid, uid)
        if project is None:
            raise project_not_found()
        if user is None:
            raise user_not_found()
        raise member_not_found()
    return Response(204)


class PeopleApi:
    """Users, projects, memberships, their PATs (the admin token), and ``/public-api``
    (a PAT): the people store and PAT verifier of the worker, which it closes."""

    def __init__(self, tokens: TokenStore, people: PeopleContext) -> None:
        self.tokens = tokens
        self.people = people

    def register(self, router: Router[Endpoint[Any]]) -> None:
        people = self.people
        admin = Scoped(TokenAuth(self.tokens, admin_only=True), lambda _: PeopleScope(people))
        router.add("GET", f"{USERS}/", Endpoint(admin, list_users))
        router.add("POST", f"{USERS}/", Endpoint(admin, create_user))
        router.add("GET", f"{USERS}/{{user_id}}", Endpoint(admin, get_user))
        router.add("GET", f"{PROJECTS}/", Endpoint(admin, list_projects))
        router.add("POST", f"{PROJECTS}/", Endpoint(admin, create_project))
        router.add("GET", f"{PROJECTS}/{{project_id}}", Endpoint(admin, get_project))
        member = f"{PROJECTS}/{{project_id}}/members/{{user_id}}"
        router.add("PUT", member, Endpoint(admin, put_member))
        router.add("DELETE", member, Endpoint(admin, delete_member))
        add_pat_routes(router, PROJECTS, self.tokens, people)

    async def close(self) -> None:
        """Stop the Argon2 pool."""
        self.people.close()
