"""Personal access token endpoints and ``/public-api/me``, answered in an envelope::

    {"data": <document>, "errors": null}
    {"data": null, "errors": [{"code": "...", "message": "...", "field": "..." | null}]}

These endpoints authenticate themselves (they are routed as ``Access.PUBLIC``, so the app
runs no bearer lookup of its own): the token management endpoints with the admin token,
acting for the user named by ``user_id``; ``/public-api/me`` with a PAT only, through the
worker's :class:`~edge.api.people_auth.PatAuthenticator` (a mistyped PAT is refused before
any Redis command). Every answer, authentication and Redis failures included, is an
envelope; only the router's 404/405 (before any endpoint runs) are the standard error
document.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from redis.exceptions import RedisError

from edge.api.auth import authenticate
from edge.api.http import (
    ApiError,
    ClientGone,
    Forbidden,
    InvalidBody,
    RedisUnavailable,
    Response,
)
from edge.api.people_auth import PatIdentity, PeopleContext, people_context
from edge.api.people_common import (
    DisplayName,
    NotAMember,
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
from edge.api.people_store import (
    MAX_ACTIVE_PATS,
    LimitReached,
    NotMember,
    PatRecord,
    iso_utc,
    new_id,
    valid_id,
)
from edge.api.request import Access, ApiRequest, Endpoint, Handler
from edge.api.router import Router
from edge.api.store import now_iso
from edge.auth.pat import new_pat
from edge.auth.roles import has_permission
from edge.auth.secrets import AuthOverloaded
from edge.http1.exchange import Headers

__all__ = ["ME", "add_pat_routes", "envelope_error"]

log = logging.getLogger("edge.api")
ME = "/public-api/me"
_FIELD_MAX = 100

AwareTime = Annotated[datetime, msgspec.Meta(tz=True)]


class CreatePat(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    user_id: UserId
    name: DisplayName
    expires_at: AwareTime | None = None


class Busy(ApiError):
    status = 503
    code = "auth_overloaded"
    public_message = AuthOverloaded.public_message

    def headers(self) -> Headers:
        return [(b"retry-after", str(AuthOverloaded.retry_after).encode("ascii"))]


# ---------------------------------------------------------------------------- envelope


def envelope_error(error: ApiError) -> dict[str, Any]:
    field = error.field[:_FIELD_MAX] if error.field is not None else None
    return {
        "data": None,
        "errors": [{"code": error.code, "message": error.public_message, "field": field}],
    }


def _failed(req: ApiRequest, error: ApiError) -> Response:
    level = logging.WARNING if error.status >= 500 else logging.INFO
    fields = {
        "request_id": req.ex.request_id,
        "status": error.status,
        "error": error.code,
        "detail": str(error),  # fixed texts (and a PAT prefix, which is not secret)
    }
    log.log(level, "api request failed", extra={"fields": fields})
    return Response(error.status, envelope_error(error), error.headers())


async def _enveloped(req: ApiRequest, work: Awaitable[Response]) -> Response:
    try:
        response = await work
    except ClientGone:
        raise
    except ApiError as err:
        return _failed(req, err)
    except AuthOverloaded:
        return _failed(req, Busy("token verification queue full"))
    except (RedisError, OSError) as exc:  # TimeoutError is an OSError
        fields = {
            "request_id": req.ex.request_id,
            "error": type(exc).__name__,
            "detail": str(exc)[:200],
        }
        log.warning("api: redis unavailable", extra={"fields": fields})
        return _failed(req, RedisUnavailable())
    except Exception:
        log.exception("api handler failed", extra={"fields": {"request_id": req.ex.request_id}})
        return _failed(req, ApiError("handler failed"))
    response.document = {"data": response.document, "errors": None}
    return response


AdminHandler = Callable[[ApiRequest, PeopleContext], Awaitable[Response]]
PatHandler = Callable[[ApiRequest, PeopleContext, PatIdentity], Awaitable[Response]]


def as_admin(handler: AdminHandler) -> Handler:
    """``handler`` behind the admin token, answered in the envelope."""

    async def guarded(req: ApiRequest) -> Response:
        context = people_context(req.store)

        async def work() -> Response:
            identity = await authenticate(req.ex, req.store)
            if not identity.is_admin:
                raise Forbidden(f"token {identity.name!r} is not the admin token")
            return await handler(req, context)

        return await _enveloped(req, work())

    return guarded


def with_pat(handler: PatHandler) -> Handler:
    """``handler`` behind a personal access token, answered in the envelope."""

    async def guarded(req: ApiRequest) -> Response:
        context = people_context(req.store)

        async def work() -> Response:
            caller = await context.auth.authenticate(req.ex)
            return await handler(req, context, caller)

        return await _enveloped(req, work())

    return guarded


# ---------------------------------------------------------------------------- token endpoints


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


async def create_pat(req: ApiRequest, context: PeopleContext) -> Response:
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


async def list_pats(req: ApiRequest, context: PeopleContext) -> Response:
    pid, uid = project_param(req), query_user(req)
    await _acting_member(context, pid, uid)
    now = datetime.now(UTC)
    return Response(200, [r.public(now) for r in await context.store.list_pats(pid, uid)])


async def revoke_pat(req: ApiRequest, context: PeopleContext) -> Response:
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


async def me(req: ApiRequest, context: PeopleContext, caller: PatIdentity) -> Response:
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


def add_pat_routes(router: Router[Endpoint], projects: str) -> None:
    # Access.PUBLIC: the app does no authentication; as_admin / with_pat do it themselves
    public = Access.PUBLIC
    tokens = f"{projects}/{{project_id}}/tokens"
    router.add("GET", tokens, Endpoint(public, as_admin(list_pats)))
    router.add("POST", tokens, Endpoint(public, as_admin(create_pat)))
    router.add("DELETE", f"{tokens}/{{token_id}}", Endpoint(public, as_admin(revoke_pat)))
    router.add("GET", ME, Endpoint(public, with_pat(me)))
