"""``POST /port-forward/ticket``: a personal access token buys a one-time tunnel ticket.

Request (a strict JSON body)::

    {"target_type": "resource" | "database", "target_id": "...", "port": 5432}

``port`` is optional: a resource's ``config_port`` by default (else one of its
``config_internal_ports``); a database's own port (giving another is refused). The checks,
in this order, each its own answer:

1. the PAT (:class:`~edge.api.people.auth.PatAuthenticator`: a valid, unrevoked token of an
   accepted member), else 401;
2. the target exists in the configuration of this worker and belongs to the PAT's
   project, else 404 (another project's target is not told apart from a missing one);
3. the member's role has ``resources.port-forward`` (resources) or
   ``databases.show-secrets`` (databases), else 403;
4. the port is allowed, else 400 (``field: port``);
5. a database is ``created``, else 409;
6. the project has a free session slot (:func:`edge.tunnels.sessions.reserve`, atomic
   across nodes), else 429 with ``Retry-After``;

then the ticket (:func:`edge.tunnels.tickets.issue`). The answer is a plain JSON document
(not the public API's envelope: the WebSocket client reads it as is)::

    {"ticket": "<64 characters>", "websocket_path": "/port-forward/databases/db_1?ticket=...",
     "expires_in": 60}

Errors are the API's standard error document. The ticket appears in the answer only: the
API logs fixed texts, the access log paths without their query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Protocol
from urllib.parse import quote, urlencode

import msgspec
from redis.exceptions import RedisError

from edge.api.http import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidBody,
    NotFound,
    Response,
)
from edge.api.identity import PatIdentity
from edge.api.people.auth import PeopleContext
from edge.api.request import ApiRequest, Endpoint, Scoped
from edge.api.router import Router
from edge.auth.roles import has_permission
from edge.config.targets import READY
from edge.http1.exchange import Headers
from edge.tunnels import sessions
from edge.tunnels.tickets import (
    PERMISSION_OF,
    TICKET_TTL,
    TargetType,
    Ticket,
    issue,
    new_session_id,
)

__all__ = [
    "RESERVE_SECONDS",
    "RETRY_AFTER",
    "TICKET_PATH",
    "PortForwardApi",
    "TargetCatalog",
    "TicketRequest",
    "websocket_path",
]

log = logging.getLogger("edge.api")

TICKET_PATH: Final = "/port-forward/ticket"
#: how long a bought ticket holds its session slot: past the ticket's own life, so that a
#: tunnel opened in its last second is heartbeated (by the keeper's next pass) before then
RESERVE_SECONDS: Final = TICKET_TTL + 10
RETRY_AFTER: Final = 5  # seconds: a 429's advice (a slot frees when a tunnel ends)
_SEGMENT: Final = {"resource": "resources", "database": "databases"}

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
TargetId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class TicketRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    target_type: TargetType
    target_id: TargetId
    port: Port | None = None


# What the endpoint reads of the worker's configuration snapshot (edge.config.snapshot:
# ``app_resources`` and ``databases``, edge.config.targets' records): only these fields.
class ResourceLike(Protocol):
    @property
    def project_id(self) -> str: ...
    @property
    def config_port(self) -> int: ...
    def allows(self, port: int) -> bool: ...


class DatabaseLike(Protocol):
    @property
    def project_id(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def status(self) -> str: ...


class TargetCatalog(Protocol):
    @property
    def app_resources(self) -> Mapping[str, ResourceLike]: ...
    @property
    def databases(self) -> Mapping[str, DatabaseLike]: ...


class TooManySessions(ApiError):
    """429: the project holds ``PORT_FORWARD_MAX_SESSIONS`` sessions already."""

    status = 429
    code = "too_many_sessions"
    public_message = "the project has as many live port-forward sessions as it may: close one"

    def headers(self) -> Headers:
        return [(b"retry-after", str(RETRY_AFTER).encode("ascii"))]


def _target_not_found() -> NotFound:
    return NotFound(
        "no such target in the token's project",
        code="target_not_found",
        public_message="no such target in this token's project",
        field="target_id",
    )


def websocket_path(target_type: str, target_id: str, ticket: str, port: int) -> str:
    """Where the tunnel is opened with ``ticket`` (a resource's names its port too)."""
    query: dict[str, str | int] = {"ticket": ticket}
    if target_type == "resource":
        query["port"] = port
    segment = _SEGMENT[target_type]
    return f"/port-forward/{segment}/{quote(target_id, safe='')}?{urlencode(query)}"


@dataclass(frozen=True, slots=True)
class _Target:
    """A target checked for the caller: where the tunnel goes."""

    type: TargetType
    id: str
    port: int


class PortForwardApi:
    """``POST /port-forward/ticket``, with the worker's PAT authenticator (``people.auth``:
    the same verifier and store as ``/public-api/me``) and its configuration snapshot."""

    def __init__(
        self,
        people: PeopleContext,
        targets: Callable[[], TargetCatalog],
        max_sessions: int,
    ) -> None:
        self.people = people
        self.targets = targets
        self.max_sessions = max_sessions

    def register(self, router: Router[Endpoint[Any]]) -> None:
        auth = Scoped(self.people.auth.authenticate, lambda caller: caller)
        router.add("POST", TICKET_PATH, Endpoint(auth, self.buy))

    async def close(self) -> None:
        """Nothing of its own: the people context is the people API's to close."""

    async def buy(self, req: ApiRequest[PatIdentity]) -> Response:
        caller = req.scope
        body = await req.json(TicketRequest)
        assert body is not None  # required=True
        target = self._check(caller, body)
        store = self.people.store
        client = store.redis.client
        pid, session_id = caller.project.id, new_session_id()
        async with asyncio.timeout(store.timeout):
            if not await sessions.reserve(
                client, pid, session_id, self.max_sessions, RESERVE_SECONDS
            ):
                raise TooManySessions(f"cap of {self.max_sessions} reached")
            ticket = Ticket(
                target_type=target.type,
                target_id=target.id,
                port=target.port,
                project_id=pid,
                user_id=caller.user.id,
                pat_id=caller.pat.id,
                session_id=session_id,
                issued_at=time.time(),
            )
            try:
                text = await issue(client, ticket)
            except (RedisError, OSError):
                # no ticket: the slot is given back now rather than held for a minute
                with contextlib.suppress(RedisError, OSError):
                    await sessions.release(client, pid, session_id)
                raise
        log.info(
            "port-forward ticket issued",
            extra={
                "fields": {
                    "request_id": req.ex.request_id,
                    "project_id": pid,
                    "user_id": caller.user.id,
                    "token_id": caller.pat.id,
                    "target": f"{target.type}/{target.id}",
                    "port": target.port,
                }
            },
        )
        return Response(
            201,
            {
                "ticket": text,
                "websocket_path": websocket_path(target.type, target.id, text, target.port),
                "expires_in": TICKET_TTL,
            },
        )

    def _check(self, caller: PatIdentity, body: TicketRequest) -> _Target:
        """Steps 2 to 5 of the module's list, from memory."""
        catalog = self.targets()
        pid = caller.project.id
        if body.target_type == "resource":
            resource = catalog.app_resources.get(body.target_id)
            if resource is None or resource.project_id != pid:
                raise _target_not_found()
            self._permitted(caller, "resource")
            port = resource.config_port if body.port is None else body.port
            if not resource.allows(port):
                raise InvalidBody(
                    "port not allowed",
                    code="port_not_allowed",
                    public_message=(
                        "port must be the resource's config_port or one of its "
                        "config_internal_ports"
                    ),
                    field="port",
                )
            return _Target("resource", body.target_id, port)
        database = catalog.databases.get(body.target_id)
        if database is None or database.project_id != pid:
            raise _target_not_found()
        self._permitted(caller, "database")
        if body.port is not None and body.port != database.port:
            raise InvalidBody(
                "port not the database's",
                code="port_not_allowed",
                public_message="port must be the database's own port (or left out)",
                field="port",
            )
        if database.status != READY:  # "created"; creating, failed...: not now
            raise Conflict(
                "database not ready",
                code="database_not_ready",
                public_message=f"the database is not ready (status {database.status!r})",
            )
        return _Target("database", body.target_id, database.port)

    @staticmethod
    def _permitted(caller: PatIdentity, target_type: TargetType) -> None:
        permission = PERMISSION_OF[target_type]
        if not has_permission(caller.role, permission):
            raise Forbidden(
                f"role {caller.role} lacks {permission}",
                code="permission_denied",
                public_message=f"your role in this project does not grant {permission}",
            )
