"""What an API endpoint is (who may call it, its handler) and what its handler receives.

An endpoint's :class:`Authenticator` decides who may call it and turns the request into
the endpoint group's *scope*: the caller and whatever the group's handlers act through
(its store). A handler receives an :class:`ApiRequest` carrying that scope, so a new area
of the API (OAuth, tunnels) brings its own authenticator and scope type and widens
neither this module nor :class:`~edge.api.app.ApiApp`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from edge.api.http import (
    BODY_LIMIT,
    InvalidBody,
    Response,
    UnsupportedMediaType,
    decode_json,
    is_json_type,
    read_body,
)
from edge.api.router import Router
from edge.http1.exchange import Exchange

__all__ = ["ApiRequest", "Authenticator", "Endpoint", "EndpointGroup", "Handler", "Scoped"]

S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)
K = TypeVar("K")


@dataclass(slots=True)
class ApiRequest(Generic[S]):
    """One authenticated API request as its handler sees it."""

    ex: Exchange
    params: dict[str, str]
    scope: S  # what the endpoint's authenticator made of the caller
    body_limit: int = BODY_LIMIT

    async def json(self, kind: type[K], *, required: bool = True) -> K | None:
        """The JSON body decoded into the strict Struct ``kind``.

        A body must be sent as ``application/json`` (415 otherwise); none at all is a 400
        when ``required``, else ``None``. Larger than ``body_limit``: 413. Invalid: 400 with
        the field at fault.
        """
        ex = self.ex
        if ex.has_body and not is_json_type(ex):
            raise UnsupportedMediaType()
        data = await read_body(ex, self.body_limit)
        if not data.strip():
            if required:
                raise InvalidBody("no body", public_message="a JSON request body is required")
            return None
        return decode_json(data, kind)


class Authenticator(Protocol[S_co]):
    """Who may call an endpoint: the scope its handler acts in, or an error (401 when
    the credentials are missing or wrong, 403 when they are right but not enough, 503
    when they cannot be checked now). Every failure is raised, never answered here."""

    async def __call__(self, ex: Exchange) -> S_co: ...


Handler = Callable[[ApiRequest[S]], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint(Generic[S]):
    """A routed endpoint.

    ``handler`` runs in a task (it talks to Redis) after ``auth``; ``auth`` None is a
    public endpoint. ``inline`` is for public endpoints that only read memory: answered
    inside the connection's callback, no task, no Redis (``/health``, which load balancers
    poll). ``envelope`` endpoints (the project and PAT surface) answer
    ``{"data": ..., "errors": null}`` and fail with
    ``{"data": null, "errors": [{"code", "message", "field"}]}``. ``upgrade`` is for
    endpoints that take the connection over (a WebSocket answered by the edge itself):
    called inside the connection's callback with the exchange and the path's parameters,
    with no task and no authenticator; it answers, or runs tasks of its own, itself.
    """

    auth: Authenticator[S] | None
    handler: Handler[S] | None = None
    inline: Callable[[Exchange], None] | None = None
    #: answers (errors included) in the ``{"data": ..., "errors": ...}`` envelope
    envelope: bool = False
    upgrade: Callable[[Exchange, dict[str, str]], None] | None = None


A = TypeVar("A")


class Scoped(Generic[A, S]):
    """An authenticator whose caller is handed to ``scope`` (the group adds its stores)."""

    __slots__ = ("auth", "scope")

    def __init__(self, auth: Authenticator[A], scope: Callable[[A], S]) -> None:
        self.auth = auth
        self.scope = scope

    async def __call__(self, ex: Exchange) -> S:
        return self.scope(await self.auth(ex))


class EndpointGroup(Protocol):
    """An area of the API: registers its endpoints, holds what they need, closes it."""

    def register(self, router: Router[Endpoint[Any]]) -> None: ...

    async def close(self) -> None: ...
