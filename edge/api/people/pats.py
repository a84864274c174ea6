"""Personal access token endpoints and ``/public-api/me``, answered in an envelope::

    {"data": <document>, "errors": null}
    {"data": null, "errors": [{"code": "...", "message": "...", "field": "..." | null}]}

The token management endpoints take the admin token acting for the user
named by ``user_id``; ``/public-api/me`` takes a PAT only (:class:`PatAuthenticator`: the worker's
:class:`~edge.api.people.auth.PatAuthenticator`, which refuses a mistyped PAT before any
Redis command). Every answer, authentication and Redis failures included, is an envelope;
only the router's 404/405 (before any endpoint runs) are the standard error document.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from edge.api.http import (
    InvalidBody,
    Response,
)
from edge.api.identity import PatIdentity
from edge.api.people.auth import PeopleContext
from edge.api.people.common import (
    DisplayName,
    NotAMember,
    PeopleScope,
    TokenLimit,
    UserId,
    not_token_owner,
    pat_not_found,
    project_not_found,
    project_param,
    query_user,
    read_json,
    user_not_found,
)
from edge.api.people.store import (
    MAX_ACTIVE_PATS,
    LimitReached,
    NotMember,
    PatRecord,
    iso_utc,
    new_id,
    valid_id,
)
from edge.api.request import ApiRequest, Endpoint, Scoped
from edge.api.router import Router
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import TokenStore, now_iso
from edge.auth.pat import new_pat
from edge.auth.roles import has_permission

__all__ = ["ME", "add_pat_routes"]

ME = "/public-api/me"

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class CreatePat(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    user_id: UserId
    name: DisplayName
    expires_at: AwareTime | None = None


async def _acting_member(context: PeopleContext, pid: str, uid: str) -> str:
    """The acting user's role in the project (404 unknown user/project, 403 not a member)."""
    project, user, member = await context.store.lookup(pid, uid)
    if project is None:
        raise project_not_found()
    if user is None:
        raise user_not_found()
    if member is None or not member.active:
        raise NotAMember()
    return member.role


async def create_pat(req: ApiRequest[PeopleScope]) -> Response:
    context = req.scope.people
    pid = project_param(req)
    body = await read_json(req, CreatePat)
    now = datetime.now(UTC)
    if body.expires_at is not None and body.expires_at <= now:
        raise InvalidBody(
            "expiry in the past",
            public_message="expires_at must be in the future",
            field="expires_at",
        )
    await _acting_member(context, pid, body.user_id)  # fail fast, before hashing
    minted = await asyncio.get_running_loop().run_in_executor(context.executor, new_pat)
    record = PatRecord(
        id=new_id("t"),
        user_id=body.user_id,
        project_id=pid,
        name=body.name,
        token_hash=minted.secret_hash,
        token_prefix=minted.prefix,
        expires_at=iso_utc(body.expires_at) if body.expires_at is not None else None,
        created_at=now_iso(),
    )
    try:
        await context.store.create_pat(record)  # checks membership and the limit atomically
    except NotMember:
        raise NotAMember() from None
    except LimitReached:
        raise TokenLimit(
            "too many active tokens",
            public_message=(
                f"at most {MAX_ACTIVE_PATS} active tokens per user and project: revoke one first"
            ),
        ) from None
    return Response(201, {**record.public(now), "token": minted.token})


async def list_pats(req: ApiRequest[PeopleScope]) -> Response:
    context = req.scope.people
    pid, uid = project_param(req), query_user(req)
    await _acting_member(context, pid, uid)
    now = datetime.now(UTC)
    return Response(200, [r.public(now) for r in await context.store.list_pats(pid, uid)])


async def revoke_pat(req: ApiRequest[PeopleScope]) -> Response:
    context = req.scope.people
    pid, uid = project_param(req), query_user(req)
    tid = req.params["token_id"]
    role = await _acting_member(context, pid, uid)
    record = await context.store.get_pat(tid) if valid_id("t", tid) else None
    if record is None or record.project_id != pid:
        raise pat_not_found()
    if record.user_id != uid and not has_permission(role, "tokens.manage"):
        raise not_token_owner()
    revoked = await context.store.revoke_pat(tid)
    if revoked is None:  # deleted meanwhile (nothing deletes PAT records today)
        raise pat_not_found()
    return Response(200, revoked.public(datetime.now(UTC)))


async def me(req: ApiRequest[PatScope]) -> Response:
    caller = req.scope.pat
    pat = caller.pat
    return Response(
        200,
        {
            "user": caller.user.public(),
            "project": caller.project.public(),
            "role": caller.role,
            "token": {"id": pat.id, "name": pat.name, "expires_at": pat.expires_at},
        },
    )


@dataclass(frozen=True, slots=True)
class PatScope:
    """A PAT request: who it acts as, and the people store it reads."""

    pat: PatIdentity
    people: PeopleContext


def add_pat_routes(
    router: Router[Endpoint[Any]], projects: str, tokens: TokenStore, people: PeopleContext
) -> None:
    admin = Scoped(TokenAuth(tokens, admin_only=True), lambda _: PeopleScope(people))
    pat = Scoped(people.auth.authenticate, lambda caller: PatScope(caller, people))
    tokens_path = f"{projects}/{{project_id}}/tokens"
    router.add("GET", tokens_path, Endpoint(admin, list_pats, envelope=True))
    router.add("POST", tokens_path, Endpoint(admin, create_pat, envelope=True))
    router.add("DELETE", f"{tokens_path}/{{token_id}}", Endpoint(admin, revoke_pat, envelope=True))
    router.add("GET", ME, Endpoint(pat, me, envelope=True))
