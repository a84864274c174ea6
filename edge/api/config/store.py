"""What the configuration endpoints share: transactions, ownership, validation, errors.

Every write is one ``WATCH``/``MULTI``/``EXEC`` transaction (:func:`transaction`): the
keys it reads are watched before they are read, the checks (exists? visible? conflicts?)
run on what was read, and the writes are queued after ``MULTI``. A concurrent write to a
watched key makes ``EXEC`` fail and the whole body runs again (bounded attempts, then the
same 503 as an unreachable Redis).

Ownership: a record's ``owner_token_hash`` is the ``sha256:<hex>`` of the token that owns
it. The admin token sees every record; another token sees only its own, and a record it
cannot see answers exactly like a missing one (404), so existence is never revealed.

Tokens being deleted: a token's delete (one transaction, see
:mod:`edge.api.config.cascade`) first sets ``edge:token-deleting:{hash}``, outside its
transaction, then scans for what the token owns. Every write made by a token other than
the admin, and every write giving a record to a token, watches that key and the token's
keys and refuses (401/400) when the marker is set or the token gone. So a write racing
the delete either commits before the scan (and its record is deleted with the token) or
fails: no record outlives its owner, and a token busy writing cannot starve its own
delete (its writes never touch what the delete watches).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from edge.api.http import ApiError, Conflict, Forbidden, InvalidBody, Unauthorized
from edge.api.identity import Identity
from edge.api.redis_store import RedisHandle
from edge.api.request import ApiRequest
from edge.api.tokens.store import now_iso, valid_name
from edge.auth.secrets import is_token_hash, same_hash
from edge.config.schema import ConfigError, ConfigItem, decode_item
from edge.store import keys
from edge.store.scan import as_text, scan_values
from edge.store.transaction import Txn
from edge.store.transaction import transaction as store_transaction

__all__ = [
    "DELETING_TTL",
    "MESSAGE_MAX",
    "READ_ONLY_FIELDS",
    "SERVICES_SET",
    "ConfigScope",
    "as_text",
    "body_object",
    "can_see",
    "cert_key",
    "check_owner",
    "delete_visible",
    "deleting_key",
    "encode",
    "exists_conflict",
    "external_key",
    "fetch_visible",
    "invalid",
    "invalid_document",
    "location",
    "loose_doc",
    "merged",
    "new_document",
    "normalized_field",
    "normalized_param",
    "only_fields",
    "owner_of",
    "proxy_key",
    "read",
    "refuse_rename",
    "replacement",
    "requested_owner",
    "required_text",
    "resource_key",
    "route_index",
    "route_key",
    "route_priority_key",
    "route_unique_key",
    "server_fields",
    "service_url_key",
    "stored_item",
    "transaction",
    "validated",
    "visible_raw",
    "visible_values",
]

log = logging.getLogger("edge.api")

MESSAGE_MAX = 300  # a validation message shown to the client is cut here
READ_ONLY_FIELDS = ("created_at", "created_by")

R = TypeVar("R")
T = TypeVar("T")
encode = msgspec.json.Encoder().encode


# ---------------------------------------------------------------------------- scope


@dataclass(frozen=True, slots=True)
class ConfigScope:
    """What reading and writing config records needs of a request: who asks, and the
    Redis it goes through. The persistence functions here take this, never the HTTP
    request, so the API's handlers, and later other callers, share them."""

    caller: Identity
    redis: RedisHandle
    timeout: float


# ---------------------------------------------------------------------------- redis


async def read(scope: ConfigScope, work: Awaitable[R]) -> R:
    """``work`` bounded by the store's timeout (every round trip included)."""
    async with asyncio.timeout(scope.timeout):
        return await work


async def transaction(
    scope: ConfigScope, keys: Sequence[str], body: Callable[[Txn], Awaitable[R]]
) -> R:
    """Run ``body`` with ``keys`` watched; it may watch more, then ``writes()`` and queue.

    Retried from the start when a watched key changed before ``EXEC``. An exception from
    ``body`` (an :class:`ApiError`) abandons the transaction: nothing is written. A caller
    other than the admin whose token is being deleted is refused (401).
    """
    caller = scope.caller
    marker = None if caller.is_admin else deleting_key(caller.token_hash)
    watched = [*keys, marker] if marker is not None else list(keys)

    async def guarded(txn: Txn) -> R:
        if marker is not None and await txn.exists(marker):
            raise Unauthorized("token being deleted")
        return await body(txn)

    return await read(scope, store_transaction(scope.redis.client, watched, guarded))


# ---------------------------------------------------------------------------- ownership


def loose_doc(raw: bytes | str | None) -> dict[str, Any]:
    """The stored JSON object as a dict, however invalid it is otherwise ({} if not one)."""
    if raw is None:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {}
    return doc if isinstance(doc, dict) else {}


def owner_of(raw: bytes | str | None) -> str | None:
    """The record's ``owner_token_hash``, read leniently (a record the schema refuses
    still belongs to its owner: the owner can fix it, and a token's delete removes it)."""
    owner = loose_doc(raw).get("owner_token_hash")
    return owner if isinstance(owner, str) else None


def can_see(scope: ConfigScope, owner: str | None) -> bool:
    caller = scope.caller
    if caller.is_admin:
        return True
    return owner is not None and same_hash(owner, caller.token_hash)


async def visible_raw(
    reader: aioredis.Redis, scope: ConfigScope, key: str, missing: Callable[[], ApiError]
) -> bytes:
    """The value of ``key`` if the caller may see it; ``missing()`` (404) otherwise.

    A key holding another type than a string (a hand edit) is the admin's to see: 409.
    """
    try:
        raw = await reader.get(key)
    except ResponseError as exc:
        if not str(exc).startswith("WRONGTYPE"):
            raise
        if not scope.caller.is_admin:
            raise missing() from None
        raise Conflict(
            "wrong type",
            code="invalid_document",
            public_message="the key holds another Redis type than a string",
        ) from None
    if raw is None or not can_see(scope, owner_of(raw)):
        raise missing()
    return raw if isinstance(raw, bytes) else raw.encode()


async def visible_values(
    scope: ConfigScope, pattern: str, wanted: Callable[[str], bool]
) -> dict[str, bytes]:
    """``scan_values`` limited to what the caller may see."""
    found = await read(scope, scan_values(scope.redis.client, pattern, wanted))
    return {k: v for k, v in found.items() if can_see(scope, owner_of(v))}


def requested_owner(scope: ConfigScope, body: dict[str, Any], default: str | None) -> str | None:
    """The owner a write asks for: ``default`` (the caller on create, the stored owner on
    update) unless the body names one. Only the admin may name another token (or ``null``:
    no owner); for another token, naming itself is the only accepted value."""
    caller = scope.caller
    if "owner_token_hash" not in body:
        return default
    value = body["owner_token_hash"]
    if caller.is_admin:
        if value is None:
            return None
        if not isinstance(value, str) or not is_token_hash(value):
            raise InvalidBody(
                "bad owner",
                public_message="owner_token_hash must be 'sha256:' and 64 lowercase hex "
                "digits (a token's hash), or null",
                field="owner_token_hash",
            )
        return value
    if isinstance(value, str) and same_hash(value, caller.token_hash):
        return caller.token_hash
    raise Forbidden(
        "owner change refused",
        public_message="only the admin token may give a record another owner",
        field="owner_token_hash",
    )


async def check_owner(txn: Txn, scope: ConfigScope, owner: str | None) -> None:
    """Watch the token that will own a record and check it exists and is not being deleted.

    The caller's own token gone meanwhile is a 401; an unknown hash named by the admin a
    400. Watched, so a delete of that token committing before our ``EXEC`` makes it fail.
    """
    if owner is None:
        return
    index, marker = keys.token_by_hash(owner), deleting_key(owner)
    await txn.watch(index, marker)
    name = await txn.get(index)
    if name is not None and valid_name(as_text(name)) and not await txn.exists(marker):
        key = keys.token(as_text(name))
        await txn.watch(key)
        stored = loose_doc(await txn.get(key)).get("hash")
        if isinstance(stored, str) and same_hash(stored, owner):
            return
    if same_hash(owner, scope.caller.token_hash):
        raise Unauthorized("token deleted during the request")
    raise InvalidBody(
        "unknown owner", public_message="no token has this hash", field="owner_token_hash"
    )


def server_fields(
    scope: ConfigScope, body: dict[str, Any], stored: dict[str, Any] | None
) -> dict[str, Any]:
    """``created_at``/``created_by``: set by the server on create and kept afterwards.

    A body may repeat the stored values (a record read, edited and sent back), nothing else.
    """
    for name in READ_ONLY_FIELDS:
        if name in body and (stored is None or body[name] != stored.get(name)):
            raise InvalidBody(
                "read-only field", public_message=f"{name} is set by the server", field=name
            )
    if stored is None:
        return {"created_at": now_iso(), "created_by": scope.caller.name}
    kept: dict[str, Any] = {}
    created_at = stored.get("created_at")
    ok = isinstance(created_at, str | int | float) and not isinstance(created_at, bool)
    kept["created_at"] = created_at if ok else None
    created_by = stored.get("created_by")
    kept["created_by"] = created_by if isinstance(created_by, str) else None
    return kept


# ---------------------------------------------------------------------------- one record


def normalized_param(
    req: ApiRequest[ConfigScope],
    name: str,
    normalize: Callable[[str], str],
    missing: Callable[[], ApiError],
) -> str:
    """A path parameter in its normal form; one that has none names nothing (404)."""
    try:
        return normalize(req.params[name])
    except ValueError:
        raise missing() from None


def normalized_field(body: dict[str, Any], field: str, normalize: Callable[[str], str]) -> str:
    """A required text field in its normal form; one that has none is a 400 naming it."""
    value = required_text(body, field)
    try:
        return normalize(value)
    except ValueError as exc:
        raise InvalidBody(
            f"bad {field}", public_message=str(exc)[:MESSAGE_MAX], field=field
        ) from None


async def fetch_visible(scope: ConfigScope, key: str, missing: Callable[[], ApiError]) -> bytes:
    """GET: the value of ``key`` if the caller may see it, else ``missing()``."""
    return await read(scope, visible_raw(scope.redis.client, scope, key, missing))


def new_document(
    scope: ConfigScope, body: dict[str, Any], identity: dict[str, Any]
) -> tuple[dict[str, Any], str | None]:
    """POST: the document to validate (the body, its normalized ``identity``, the server's
    fields and the owner), and that owner (to :func:`check_owner` in the transaction)."""
    owner = requested_owner(scope, body, scope.caller.token_hash)
    doc = {**body, **identity, **server_fields(scope, body, None), "owner_token_hash": owner}
    return doc, owner


def exists_conflict(what: str, field: str) -> Conflict:
    return Conflict(
        f"{what} exists",
        code=f"{what}_exists",
        public_message=f"a {what} with this {field} exists",
        field=field,
    )


def refuse_rename(
    body: dict[str, Any],
    field: str,
    current: str,
    what: str,
    normalized: Callable[[dict[str, Any]], str] | None = None,
) -> None:
    """PUT: the body may repeat its record's identity ``current`` (compared in its
    ``normalized`` form when given), never change it."""
    if field not in body:
        return
    given = body[field] if normalized is None else normalized(body)
    if given != current:
        raise InvalidBody(
            f"{field} differs",
            public_message=f"{field} does not match the path (a {what} cannot be renamed)",
            field=field,
        )


def merged(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """PATCH: the ``stored`` document with each field ``patch`` names replaced as a whole.

    Like RFC 7396 (JSON Merge Patch) at the top level: ``null`` removes a field, so it
    takes its default, except ``owner_token_hash`` whose ``null`` is a value ("no owner",
    checked like a PUT's). Unlike RFC 7396, an object value replaces the stored object
    instead of being merged into it (a header map sent is the header map stored). The
    server and owner fields are left for :func:`replacement` to fill in.
    """
    kept = (*READ_ONLY_FIELDS, "owner_token_hash")
    doc = {name: value for name, value in stored.items() if name not in kept}
    for name, value in patch.items():
        if value is None and name != "owner_token_hash":
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc


async def replacement(
    txn: Txn,
    scope: ConfigScope,
    key: str,
    body: dict[str, Any],
    identity: dict[str, Any],
    missing: Callable[[], ApiError],
    validate: Callable[[dict[str, Any]], T],
    *,
    merge: bool = False,
) -> tuple[bytes, T]:
    """PUT, inside the transaction: the stored value, and the validated record that
    replaces it (the body with the stored server fields; the owner kept unless the body
    names another, which is checked and watched). With ``merge`` (PATCH) the body is
    :func:`merged` onto the stored document first, and the result validated as a whole."""
    raw = await visible_raw(txn.reader, scope, key, missing)
    current = owner_of(raw)
    stored = loose_doc(raw)
    if merge:
        server_fields(scope, body, stored)  # the read-only fields sent, checked as a PUT's
        body = merged(stored, body)
    owner = requested_owner(scope, body, current)
    doc = {**body, **identity, **server_fields(scope, body, stored)}
    doc["owner_token_hash"] = owner
    record = validate(doc)
    await check_owner(txn, scope, owner if owner != current else None)
    return raw, record


async def delete_visible(
    scope: ConfigScope,
    key: str,
    missing: Callable[[], ApiError],
    also: Sequence[str] = (),
    then: Callable[[Pipeline], object] | None = None,
) -> None:
    """DELETE: ``key`` and the keys ``also`` that belong to it (``then`` queues more)."""

    async def write(txn: Txn) -> None:
        await visible_raw(txn.reader, scope, key, missing)
        pipe = txn.writes()
        pipe.delete(key, *also)
        if then is not None:
            then(pipe)

    await transaction(scope, [key, *also], write)


# ---------------------------------------------------------------------------- validation


async def body_object(req: ApiRequest[ConfigScope]) -> dict[str, Any]:
    """The request body: a JSON object (required)."""
    body = await req.json(dict[str, Any])
    assert body is not None
    return body


def invalid(exc: ConfigError, field: str | None = None) -> InvalidBody:
    """400 for a document the configuration schema refuses (the loader's own message)."""
    return InvalidBody(
        "configuration validation failed",
        public_message=exc.message[:MESSAGE_MAX],
        field=exc.field or field,
    )


def invalid_document(exc: ConfigError) -> Conflict:
    """409 for a stored record the schema refuses (a hand edit): the admin may replace or
    delete it, nothing else can be done with it through the API."""
    where = f"{exc.field}: " if exc.field else ""
    return Conflict(
        "stored document invalid",
        code="invalid_document",
        public_message=f"the stored document is invalid ({where}{exc.message})"[:MESSAGE_MAX],
    )


def validated(key: str, doc: dict[str, Any] | str, field: str | None = None) -> ConfigItem:
    """``doc`` as the config loader would decode it from ``key``; 400 if it refuses it."""
    raw = doc if isinstance(doc, str) else encode(doc)
    try:
        return decode_item(key, raw)
    except ConfigError as exc:
        raise invalid(exc, field) from None


def stored_item(key: str, raw: bytes) -> ConfigItem:
    try:
        return decode_item(key, raw)
    except ConfigError as exc:
        raise invalid_document(exc) from None


def location(prefix: str, name: str) -> list[tuple[bytes, bytes]]:
    return [(b"location", f"{prefix}/{quote(name, safe='')}".encode("ascii"))]


def required_text(body: dict[str, Any], field: str) -> str:
    """A required string field of ``body``; 400 naming it otherwise."""
    if field not in body:
        raise InvalidBody("missing", public_message="required field is missing", field=field)
    value = body[field]
    if not isinstance(value, str):
        raise InvalidBody("not a string", public_message="expected a string", field=field)
    return value


def only_fields(body: dict[str, Any], allowed: Iterable[str], what: str) -> None:
    """400 naming the first field of ``body`` that is not one of ``allowed``."""
    names = set(allowed)
    for name in body:
        if name not in names:
            raise InvalidBody(
                "unknown field", public_message=f"unknown field for {what}", field=name
            )


# ---------------------------------------------------------------------------- keys

SERVICES_SET = keys.SERVICES_SET
DELETING_PREFIX = keys.TOKEN_DELETING
DELETING_TTL = 30  # seconds: a delete that failed half-way stops blocking writes after this

deleting_key = keys.token_deleting
proxy_key = keys.proxy
route_key = keys.route
route_unique_key = keys.route_unique
route_priority_key = keys.route_priority


def route_index(doc: dict[str, Any]) -> tuple[str, int] | None:
    """``(path_pattern, priority)`` of a stored route document, read leniently."""
    pattern = doc.get("path_pattern")
    priority = doc.get("priority", 50)
    if not isinstance(pattern, str) or not isinstance(priority, int) or isinstance(priority, bool):
        return None
    return pattern, priority


external_key = keys.service_external
service_url_key = keys.service_url
cert_key = keys.cert
resource_key = keys.resource
