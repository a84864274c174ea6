"""``/api/v1/tokens``: admin tokens (see ``docs/api.md``).

A token value is made by :func:`edge.auth.secrets.new_admin_token`, returned once in the
creation answer and never again: Redis holds only its SHA-256 (``edge.api.tokens.store``).

Access: the admin token for everything except ``info`` and ``email``, which any valid token
may call on itself.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from edge.api.http import ApiError, Conflict, InvalidBody, NotFound, Response, Unauthorized
from edge.api.identity import Identity
from edge.api.request import ApiRequest, Endpoint, Scoped
from edge.api.router import Router
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import (
    ADMIN_NAME,
    Cascade,
    Email,
    Name,
    TokenExists,
    TokenRecord,
    TokenStore,
    now_iso,
    valid_name,
)
from edge.auth.secrets import new_admin_token, token_hash

__all__ = ["PREFIX", "RESERVED_NAMES", "TokenApi", "TokenScope"]

PREFIX = "/api/v1/tokens"
# literal segments under /api/v1/tokens/: a token with one of these names could never be
# addressed as /api/v1/tokens/{name} (the literal route wins), so none may be created
RESERVED_NAMES = frozenset({"info", "generate", "email"})
_GENERATE_ATTEMPTS = 5

_NAME_RULE = (
    "name must be 1 to 64 characters of a-z, 0-9, '_', '.' and '-', "
    "starting with a letter or a digit"
)
_EMAIL_RULE = "cert_email must be an e-mail address or null"


class CreateToken(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    name: Name
    cert_email: Email | None = None


class GenerateToken(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    cert_email: Email | None = None


class SetEmail(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    cert_email: Email | None  # required; null clears it


class NotRecoverable(ApiError):
    status = 410
    code = "not_recoverable"
    public_message = (
        "token values are shown once at creation and stored only as hashes; create a new token"
    )


@dataclass(frozen=True, slots=True)
class TokenScope:
    """What the token endpoints act as and through."""

    caller: Identity
    store: TokenStore
    cascade: Cascade


def _token_not_found() -> NotFound:
    return NotFound(code="token_not_found", public_message="no token with this name")


S = TypeVar("S", bound=msgspec.Struct)


async def _body(req: ApiRequest[TokenScope], kind: type[S], required: bool) -> S | None:
    """The decoded body, with the field rules said in words instead of regexes."""
    try:
        return await req.json(kind, required=required)
    except InvalidBody as err:
        msg = err.public_message
        if err.field in ("name", "cert_email") and ("regex" in msg or "length" in msg):
            err.public_message = _NAME_RULE if err.field == "name" else _EMAIL_RULE
        raise


async def _issue(req: ApiRequest[TokenScope], name: str, email: str | None) -> Response:
    """Create token ``name``: 201 with its value, shown this once."""
    token = new_admin_token()
    record = TokenRecord(
        name=name,
        hash=token_hash(token),
        cert_email=email,
        created_at=now_iso(),
        created_by=req.scope.caller.name,
    )
    await req.scope.store.create(record)
    document = {"name": name, "token": token, **record.public()}
    location = f"{PREFIX}/{name}".encode("ascii")
    return Response(201, document, [(b"location", location)])


async def list_tokens(req: ApiRequest[TokenScope]) -> Response:
    records = await req.scope.store.list()
    return Response(200, {"tokens": [r.public() for r in records]})


async def create_token(req: ApiRequest[TokenScope]) -> Response:
    body = await _body(req, CreateToken, required=True)
    assert body is not None
    if body.name in RESERVED_NAMES:
        raise InvalidBody(
            "reserved name", public_message=f"the name {body.name!r} is reserved", field="name"
        )
    try:
        return await _issue(req, body.name, body.cert_email)
    except TokenExists:
        raise Conflict(
            "name taken",
            code="token_exists",
            public_message="a token with this name exists",
            field="name",
        ) from None


async def generate_token(req: ApiRequest[TokenScope]) -> Response:
    body = await _body(req, GenerateToken, required=False)
    email = body.cert_email if body is not None else None
    for _ in range(_GENERATE_ATTEMPTS):
        try:
            return await _issue(req, f"token-{secrets.token_hex(4)}", email)
        except TokenExists:
            continue  # 2**-32 per attempt
    raise RuntimeError("could not pick a free token name")


async def token_info(req: ApiRequest[TokenScope]) -> Response:
    record = await req.scope.store.get(req.scope.caller.name)
    if record is None:  # deleted since it authenticated this request
        raise Unauthorized("token deleted during the request")
    return Response(200, record.public(with_hash=True))


async def set_email(req: ApiRequest[TokenScope]) -> Response:
    body = await _body(req, SetEmail, required=True)
    assert body is not None
    record = await req.scope.store.set_email(req.scope.caller.name, body.cert_email)
    if record is None:
        raise Unauthorized("token deleted during the request")
    return Response(200, record.public(with_hash=True))


def _name(req: ApiRequest[TokenScope]) -> str:
    name = req.params["name"]
    if not valid_name(name):
        # never reaches Redis: "hash:..." or "*" must not address other keys
        raise _token_not_found()
    return name


async def get_token(req: ApiRequest[TokenScope]) -> Response:
    record = await req.scope.store.get(_name(req))
    if record is None:
        raise _token_not_found()
    return Response(200, record.public(with_hash=True))


async def delete_token(req: ApiRequest[TokenScope]) -> Response:
    name = _name(req)
    if name == ADMIN_NAME:
        raise Conflict(
            "admin delete refused",
            code="admin_token_protected",
            public_message="the admin token cannot be deleted; change ADMIN_TOKEN to replace it",
        )
    if not await req.scope.store.delete(name, req.scope.cascade):
        raise _token_not_found()
    return Response(204)


async def reveal_token(req: ApiRequest[TokenScope]) -> Response:
    if await req.scope.store.get(_name(req)) is None:
        raise _token_not_found()
    raise NotRecoverable("token values are not stored")


class TokenApi:
    """``/api/v1/tokens``: the token store, and the cascade a token's delete runs (what
    the token owns elsewhere, found by the caller's code)."""

    def __init__(self, store: TokenStore, cascade: Cascade) -> None:
        self.store = store
        self.cascade = cascade

    def _scope(self, caller: Identity) -> TokenScope:
        return TokenScope(caller, self.store, self.cascade)

    def register(self, router: Router[Endpoint[Any]]) -> None:
        admin = Scoped(TokenAuth(self.store, admin_only=True), self._scope)
        own = Scoped(TokenAuth(self.store, admin_only=False), self._scope)
        router.add("GET", f"{PREFIX}/", Endpoint(admin, list_tokens))
        router.add("POST", f"{PREFIX}/", Endpoint(admin, create_token))
        router.add("POST", f"{PREFIX}/generate", Endpoint(admin, generate_token))
        router.add("GET", f"{PREFIX}/info", Endpoint(own, token_info))
        router.add("PUT", f"{PREFIX}/email", Endpoint(own, set_email))
        router.add("GET", f"{PREFIX}/{{name}}", Endpoint(admin, get_token))
        router.add("DELETE", f"{PREFIX}/{{name}}", Endpoint(admin, delete_token))
        router.add("GET", f"{PREFIX}/{{name}}/reveal", Endpoint(admin, reveal_token))

    async def close(self) -> None:
        """Nothing of its own to close (the Redis handle is the worker's)."""
