"""``/api/v1/resources``: protected-resource records, ``resource:{uri}``.

A protected resource (RFC 9728) is identified by its URI. The record says what it is and
which scopes it knows; the edge's router does not read these keys (they are metadata for
the authorization work to come). The schema is strict like the configuration's:
:func:`decode_resource` is the one validation, for API writes and stored records alike.

In a path the URI is one percent-encoded segment:
``/api/v1/resources/https%3A%2F%2Fmcp.example.com%2Fmcp``.

Two actions go with the records:

* ``POST /api/v1/resources/{uri}/validate-token``: whether a token is an access token of
  the edge's own OAuth server, alive and for this resource, checked from memory as a
  protected proxy checks it (signature, issuer, lifetime, revocation, ``aud``). The token
  is neither logged nor stored. Callers: those who may read the record.
* ``POST /api/v1/resources/auto-register`` (admin token): a record for every proxy that
  protects a resource (``auth_enabled`` and a ``resource_*`` field), where none exists.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from edge.api.config.store import (
    MESSAGE_MAX,
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
    only_fields,
    read,
    refuse_rename,
    replacement,
    required_text,
    resource_key,
    transaction,
    visible_values,
)
from edge.api.http import ApiError, Conflict, NotFound, Response
from edge.api.request import ApiRequest, Authenticator, Endpoint, Handler
from edge.api.router import Router
from edge.auth.secrets import is_token_hash
from edge.config.msgspec_errors import Wording, translate
from edge.config.schema import ConfigError, ProxyConfig, classify_key, decode_item, validate_url
from edge.oauth.errors import OAuthError
from edge.store import keys
from edge.store.scan import scan_values
from edge.store.transaction import Txn

if TYPE_CHECKING:
    from edge.api.oauth.endpoints import OAuthAdminDeps

__all__ = [
    "PREFIX",
    "RESOURCE_PREFIX",
    "OAuthUnavailable",
    "ResourceRecord",
    "add_resource_routes",
    "decode_resource",
    "normalize_resource_uri",
    "proxy_resource_uri",
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


# ---------------------------------------------------------------------------- tokens


class OAuthUnavailable(ApiError):
    """``validate-token`` on an edge without an OAuth server of its own."""

    status = 503
    code = "oauth_disabled"
    public_message = (
        "the OAuth server is not enabled on this edge (set AUTH_HOSTNAME, BASE_DOMAIN or "
        "OAUTH_ISSUER): it has no tokens of its own to validate"
    )


# Why SigningKeys.verify refused a token: its detail starts with its own check or with
# PyJWT's exception name (never the token). Each becomes a short reason; anything else
# (a claim of the wrong type) is "invalid_claims".
_REFUSALS: tuple[tuple[str, str], ...] = (
    ("token longer than", "malformed"),
    ("malformed token", "malformed"),
    ("DecodeError", "malformed"),
    ("typ is not", "not_an_access_token"),
    ("alg is not", "invalid_signature"),
    ("header ", "invalid_signature"),  # jku, x5u, jwk, x5c, crit: a key of the sender's
    ("unknown kid", "invalid_signature"),
    ("InvalidSignatureError", "invalid_signature"),
    ("InvalidAlgorithmError", "invalid_signature"),
    ("InvalidKeyError", "invalid_signature"),
    ("ExpiredSignatureError", "expired"),
    ("ImmatureSignatureError", "not_yet_valid"),
    ("InvalidIssuerError", "wrong_issuer"),
    ("InvalidAudienceError", "wrong_audience"),
    ("MissingRequiredClaimError", "missing_claim"),
)
_DESCRIPTIONS = {
    "malformed": "not a signed JWT",
    "not_an_access_token": "the token's typ is not at+jwt: not an access token",
    "invalid_signature": "not signed by a key of this edge's OAuth server",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet (nbf or iat in the future)",
    "wrong_issuer": "the token was issued by another server (iss)",
    "wrong_audience": "the token's aud does not name this resource",
    "missing_claim": "a required claim is missing",
    "invalid_claims": "a claim has the wrong type",
    "revoked": "the token has been revoked",
}
CLAIMS = ("sub", "login", "email", "scope", "client_id", "aud", "exp", "iat", "jti")


def refusal_reason(exc: OAuthError) -> str:
    """The short reason for a refusal of :meth:`~edge.oauth.signing.SigningKeys.verify`."""
    detail = str(exc)
    for prefix, reason in _REFUSALS:
        if detail.startswith(prefix):
            return reason
    return "invalid_claims"


def _claims_view(claims: dict[str, Any]) -> dict[str, Any]:
    view = {name: claims.get(name) for name in CLAIMS}
    aud = view["aud"]
    view["aud"] = [aud] if isinstance(aud, str) else aud
    return view


def _not_valid(uri: str, reason: str) -> Response:
    doc = {
        "valid": False,
        "error": reason,
        "error_description": _DESCRIPTIONS[reason],
        "resource": uri,
    }
    return Response(200, doc)


def check_token(server: OAuthAdminDeps, uri: str, token: str) -> Response:
    """The answer of ``validate-token``: memory only, as a protected proxy checks a token
    (its signature, ``iss``, ``exp``/``nbf`` with the leeway, ``aud``, then revocation)."""
    try:
        claims = server.signing.verify(token, audience=uri)
    except OAuthError as exc:
        return _not_valid(uri, refusal_reason(exc))
    jti = claims.get("jti")
    if not isinstance(jti, str) or server.revoked.is_revoked(jti):
        return _not_valid(uri, "revoked")
    return Response(200, {"valid": True, "claims": _claims_view(claims), "resource": uri})


def _validate_token(server: OAuthAdminDeps | None) -> Handler[ConfigScope]:
    async def validate_token(req: ApiRequest[ConfigScope]) -> Response:
        uri = _uri(req)
        body = await body_object(req)
        only_fields(body, ("token",), "validate-token")
        token = required_text(body, "token")
        await fetch_visible(req.scope, resource_key(uri), _not_found)
        if server is None:
            raise OAuthUnavailable("no OAuth issuer configured")
        return check_token(server, uri, token)

    return validate_token


# ---------------------------------------------------------------------------- auto-register


def proxy_resource_uri(proxy: ProxyConfig) -> str:
    """The resource a proxy protects: ``resource_endpoint`` when it is a full URL, else
    ``https://{hostname}{resource_endpoint}``; ValueError (a reason) when there is none."""
    endpoint = proxy.resource_endpoint or ""
    if "://" not in endpoint and proxy.hostname.startswith("*."):
        raise ValueError(
            "wildcard hostname: no single resource URI (a full URL in resource_endpoint names one)"
        )
    try:
        return normalize_resource_uri(
            endpoint if "://" in endpoint else f"https://{proxy.hostname}{endpoint}"
        )
    except ValueError as exc:
        raise ValueError(f"resource URI refused: {exc}") from None


def _unprotected(proxy: ProxyConfig) -> str | None:
    """Why ``proxy`` protects no resource, or None when it does."""
    if not proxy.auth_enabled:
        return "auth_enabled is false"
    if proxy.resource_endpoint is None and not proxy.resource_scopes:
        return "no resource_endpoint or resource_scopes"
    return None


def _registration(scope: ConfigScope, proxy: ProxyConfig) -> ResourceRecord:
    """The record for ``proxy``; ValueError (a reason) when it cannot have one."""
    uri = proxy_resource_uri(proxy)
    key = resource_key(uri)
    body = {
        "name": proxy.hostname,
        "description": f"Protected resource of the proxy {proxy.hostname} "
        "(registered from its resource_* fields).",
        # a scope repeated in the proxy's list is listed once
        "scopes": list(dict.fromkeys(proxy.resource_scopes or proxy.auth_allowed_scopes or ())),
    }
    doc, _ = new_document(scope, body, {"uri": uri})
    try:
        return decode_resource(key, encode(doc))
    except ConfigError as exc:
        where = f"{exc.field}: " if exc.field else ""
        raise ValueError(f"the record would be invalid ({where}{exc.message})") from None


async def auto_register(req: ApiRequest[ConfigScope]) -> Response:
    """A ``resource:{uri}`` record for every proxy that protects a resource and has none.

    Existing records are left as they are, so a second call creates nothing. One
    transaction: every key it may write is watched before it is checked."""
    scope = req.scope
    found = await read(
        scope,
        scan_values(scope.redis.client, keys.PROXY + "*", lambda k: classify_key(k) == "proxy"),
    )
    planned: dict[str, ResourceRecord] = {}  # by key
    skipped: list[dict[str, str]] = []
    for key in sorted(found):
        try:
            proxy = decode_item(key, found[key])
        except ConfigError as exc:
            hostname = key[len(keys.PROXY) :]
            reason = f"the stored proxy is invalid ({exc.field or 'document'}: {exc.message})"
            skipped.append({"hostname": hostname, "reason": reason[:MESSAGE_MAX]})
            continue
        assert isinstance(proxy, ProxyConfig)
        why = _unprotected(proxy)
        if why is not None:
            skipped.append({"hostname": proxy.hostname, "reason": why})
            continue
        try:
            record = _registration(scope, proxy)
        except ValueError as exc:
            skipped.append({"hostname": proxy.hostname, "reason": str(exc)[:MESSAGE_MAX]})
            continue
        key = resource_key(record.uri)
        first = planned.get(key)
        if first is not None:
            reason = f"its resource {record.uri} is also {first.name}'s"
            skipped.append({"hostname": proxy.hostname, "reason": reason[:MESSAGE_MAX]})
            continue
        planned[key] = record

    async def write(txn: Txn) -> tuple[list[str], list[str]]:
        new: list[tuple[str, ResourceRecord]] = []
        existing: list[str] = []
        for key, record in planned.items():
            if await txn.exists(key):
                existing.append(record.uri)
            else:
                new.append((key, record))
        if new:
            await check_owner(txn, scope, new[0][1].owner_token_hash)
            pipe = txn.writes()
            for key, record in new:
                pipe.set(key, encode(record))
        return [record.uri for _, record in new], existing

    created, existing = await transaction(scope, list(planned), write)
    return Response(200, {"created": created, "existing": existing, "skipped": skipped})


def add_resource_routes(
    router: Router[Endpoint[Any]],
    token: Authenticator[ConfigScope],
    admin: Authenticator[ConfigScope],
    server: OAuthAdminDeps | None,
) -> None:
    """The resource endpoints: ``token`` (any valid token) for the records, ``admin``
    (the admin token) for ``auto-register``; ``server``: the edge's OAuth server (None:
    ``validate-token`` is 503)."""
    router.add("GET", f"{PREFIX}/", Endpoint(token, list_resources))
    router.add("POST", f"{PREFIX}/", Endpoint(token, create_resource))
    router.add("POST", f"{PREFIX}/auto-register", Endpoint(admin, auto_register))
    one = f"{PREFIX}/{{uri}}"
    router.add("GET", one, Endpoint(token, get_resource))
    router.add("PUT", one, Endpoint(token, replace_resource))
    router.add("DELETE", one, Endpoint(token, delete_resource))
    router.add("POST", f"{one}/validate-token", Endpoint(token, _validate_token(server)))
