"""What an API endpoint is (handler + who may call it) and what its handler receives."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from edge.api.http import (
    BODY_LIMIT,
    InvalidBody,
    Response,
    UnsupportedMediaType,
    decode_json,
    is_json_type,
    read_body,
)
from edge.api.people.auth import PatIdentity, PeopleContext
from edge.api.tokens.auth import Identity
from edge.api.tokens.store import TokenStore
from edge.http1.exchange import Exchange

__all__ = ["Access", "ApiRequest", "Endpoint"]

S = TypeVar("S")


class Access(enum.Enum):
    PUBLIC = "public"  # no token (``/health``)
    TOKEN = "token"  # any valid token, acting on itself
    ADMIN = "admin"  # the admin token only (403 for others)
    PAT = "pat"  # a personal access token only (``/public-api/*``)


@dataclass(slots=True)
class ApiRequest:
    """One authenticated API request as its handler sees it."""

    ex: Exchange
    params: dict[str, str]
    identity: Identity | None
    store: TokenStore
    people: PeopleContext
    body_limit: int = BODY_LIMIT
    pat: PatIdentity | None = None

    @property
    def caller(self) -> Identity:
        """The authenticated token (every ``TOKEN`` and ``ADMIN`` endpoint has one)."""
        assert self.identity is not None
        return self.identity

    @property
    def pat_caller(self) -> PatIdentity:
        """The user, project and role behind the PAT (every ``PAT`` endpoint has one)."""
        assert self.pat is not None
        return self.pat

    async def json(self, kind: type[S], *, required: bool = True) -> S | None:
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


Handler = Callable[[ApiRequest], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A routed endpoint.

    ``handler`` runs in a task (it talks to Redis) after authentication. ``inline`` is for
    ``PUBLIC`` endpoints that only read memory: answered inside the connection's callback,
    no task, no Redis (``/health``, which load balancers poll). ``envelope`` endpoints (the
    project and PAT surface) answer ``{"data": ..., "errors": null}`` and fail with
    ``{"data": null, "errors": [{"code", "message", "field"}]}``.
    """

    access: Access
    handler: Handler | None = None
    inline: Callable[[Exchange], None] | None = None
    #: answers (errors included) in the ``{"data": ..., "errors": ...}`` envelope
    envelope: bool = False
