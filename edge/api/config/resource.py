"""``/api/v1/resources``: protected-resource records, ``resource:{uri}``.

A protected resource (RFC 9728) is identified by its URI. The record says what it is and
which scopes it knows; the edge's router does not read these keys (they are metadata for
the authorization work to come). The schema is strict like the configuration's:
:func:`decode_resource` is the one validation, for API writes and stored records alike.

In a path the URI is one percent-encoded segment:
``/api/v1/resources/https%3A%2F%2Fmcp.example.com%2Fmcp``.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from functools import partial
from typing import Annotated, Any

import msgspec

from edge.api.config.store import (
    ConfigScope,
    body_object,
    check_owner,
    delete_visible,
    encode,
    exists_conflict,
    fetch_visible,
    invalid,
    invalid_document,
    location,
    new_document,
    normalized_field,
    normalized_param,
    refuse_rename,
    replacement,
    resource_key,
    transaction,
    visible_values,
)
from edge.api.http import Conflict, NotFound, Response
from edge.api.request import ApiRequest, Authenticator, Endpoint
from edge.api.router import Router
from edge.auth.secrets import is_token_hash
from edge.config.msgspec_errors import Wording, translate
from edge.config.schema import ConfigError, validate_url
from edge.store import keys
from edge.store.transaction import Txn

__all__ = [
    "PREFIX",
    "RESOURCE_PREFIX",
    "ResourceRecord",
    "add_resource_routes",
    "decode_resource",
    "normalize_resource_uri",
]

PREFIX = "/api/v1/resources"
RESOURCE_PREFIX = keys.RESOURCE
URI_MAX = 2048
NAME_MAX = 200
DESCRIPTION_MAX = 4000
SCOPES_MAX = 100


class ResourceRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Value of ``resource:{uri}``."""

    uri: Annotated[str, msgspec.Meta(max_length=URI_MAX)]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX)]
    description: Annotated[str, msgspec.Meta(max_length=DESCRIPTION_MAX)] = ""
    scopes: Annotated[tuple[str, ...], msgspec.Meta(max_length=SCOPES_MAX)] = ()
    owner_token_hash: str | None = None
    created_at: str | None = None
    created_by: str | None = None


_DECODER = msgspec.json.Decoder(ResourceRecord)
# RFC 6749 section 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
_SCOPE_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # tab and newlines allowed
# A resource record names its field beside each message, and says nothing more about where
# in a list the bad value sits; a document that is not an object keeps msgspec's capital.
_WORDING = Wording(locate=False, lower_document=False)


def _loopback(host: str) -> bool:
    host = host.lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalize_resource_uri(value: str) -> str:
    """An absolute ``https://`` URL (``http://`` for a loopback host), without query,
    fragment or user information; returned with its host lowercased. Raises ValueError."""
    if len(value) > URI_MAX:
        raise ValueError(f"must be at most {URI_MAX} characters")
    validate_url(value)
    scheme, _, rest = value.partition("://")
    authority, slash, path = rest.partition("/")
    if authority.startswith("["):
        host = authority[: authority.index("]") + 1]
    else:
        host = authority.partition(":")[0]
    if scheme != "https" and not _loopback(host):
        raise ValueError(
            f"must be an https:// URL (http:// only for a loopback host), got {value!r}"
        )
    return f"{scheme}://{authority.lower()}{slash}{path}"


def _check(key: str, field: str, ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(key, field, message)


def decode_resource(key: str, raw: bytes | str) -> ResourceRecord:
    """Decode and validate the value of ``resource:{uri}``; :class:`ConfigError` if invalid.

    The ``uri`` (normalised) must be the key's suffix. The returned record carries the
    normalised URI.
    """
    try:
        record = _DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(key, *translate(exc, _WORDING)) from None
    try:
        uri = normalize_resource_uri(record.uri)
    except ValueError as exc:
        raise ConfigError(key, "uri", str(exc)) from None
    _check(key, "uri", key == RESOURCE_PREFIX + uri, "uri does not match the key")
    name_ok = bool(record.name.strip()) and not _CONTROL_RE.search(record.name)
    _check(key, "name", name_ok and "\n" not in record.name, "must be one line of text")
    _check(
        key,
        "description",
        not _CONTROL_RE.search(record.description),
        "must be text without control characters",
    )
    for scope in record.scopes:
        _check(
            key,
            "scopes",
            _SCOPE_RE.fullmatch(scope) is not None,
            f"invalid scope {scope!r}: printable ASCII without spaces, '\"' or '\\'",
        )
    _check(key, "scopes", len(set(record.scopes)) == len(record.scopes), "scopes repeat")
    owner = record.owner_token_hash
    _check(
        key,
        "owner_token_hash",
        owner is None or is_token_hash(owner),
        "must be 'sha256:' and 64 lowercase hex digits, or null",
    )
    if record.created_at is not None:
        try:
            datetime.fromisoformat(record.created_at)
        except ValueError:
            raise ConfigError(key, "created_at", "must be an ISO 8601 timestamp") from None
    if uri != record.uri:
        record = msgspec.structs.replace(record, uri=uri)
    return record


# ---------------------------------------------------------------------------- endpoints


def _not_found() -> NotFound:
    return NotFound(code="resource_not_found", public_message="no resource with this uri")


def _uri(req: ApiRequest[ConfigScope]) -> str:
    return normalized_param(req, "uri", normalize_resource_uri, _not_found)


def _body_uri(body: dict[str, Any]) -> str:
    return normalized_field(body, "uri", normalize_resource_uri)


def _validated(key: str, doc: dict[str, Any]) -> ResourceRecord:
    try:
        return decode_resource(key, encode(doc))
    except ConfigError as exc:
        raise invalid(exc) from None


def _stored(key: str, raw: bytes) -> ResourceRecord:
    try:
        return decode_resource(key, raw)
    except ConfigError as exc:
        raise invalid_document(exc) from None


def _document(record: ResourceRecord) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(record)
    return doc


async def list_resources(req: ApiRequest[ConfigScope]) -> Response:
    found = await visible_values(req.scope, f"{RESOURCE_PREFIX}*", lambda k: k != RESOURCE_PREFIX)
    resources = []
    for key, raw in found.items():
        try:
            resources.append(_document(_stored(key, raw)))
        except Conflict:
            continue
    return Response(200, {"resources": resources})


async def create_resource(req: ApiRequest[ConfigScope]) -> Response:
    body = await body_object(req)
    uri = _body_uri(body)
    key = resource_key(uri)
    doc, owner = new_document(req.scope, body, {"uri": uri})
    record = _validated(key, doc)

    async def write(txn: Txn) -> None:
        if await txn.exists(key):
            raise exists_conflict("resource", "uri")
        await check_owner(txn, req.scope, owner)
        pipe = txn.writes()
        pipe.set(key, encode(record))

    await transaction(req.scope, [key], write)
    return Response(201, _document(record), location(PREFIX, uri))


async def get_resource(req: ApiRequest[ConfigScope]) -> Response:
    key = resource_key(_uri(req))
    raw = await fetch_visible(req.scope, key, _not_found)
    return Response(200, _document(_stored(key, raw)))


async def replace_resource(req: ApiRequest[ConfigScope]) -> Response:
    uri = _uri(req)
    key = resource_key(uri)
    body = await body_object(req)
    refuse_rename(body, "uri", uri, "resource", _body_uri)

    async def write(txn: Txn) -> ResourceRecord:
        validate = partial(_validated, key)
        _, record = await replacement(txn, req.scope, key, body, {"uri": uri}, _not_found, validate)
        pipe = txn.writes()
        pipe.set(key, encode(record))
        return record

    record = await transaction(req.scope, [key], write)
    return Response(200, _document(record))


async def delete_resource(req: ApiRequest[ConfigScope]) -> Response:
    await delete_visible(req.scope, resource_key(_uri(req)), _not_found)
    return Response(204)


def add_resource_routes(router: Router[Endpoint[Any]], token: Authenticator[ConfigScope]) -> None:
    router.add("GET", f"{PREFIX}/", Endpoint(token, list_resources))
    router.add("POST", f"{PREFIX}/", Endpoint(token, create_resource))
    one = f"{PREFIX}/{{uri}}"
    router.add("GET", one, Endpoint(token, get_resource))
    router.add("PUT", one, Endpoint(token, replace_resource))
    router.add("DELETE", one, Endpoint(token, delete_resource))
