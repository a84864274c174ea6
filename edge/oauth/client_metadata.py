"""Client metadata (RFC 7591 section 2) checked strictly, for registration and for Client
ID Metadata Documents alike.

Known members are checked for type, value and length; a bad one is refused with
``invalid_client_metadata`` (``invalid_redirect_uri`` for a redirect URI) naming the
member. Members this server does not understand are ignored, as RFC 7591 section 2 asks
(``jwks``, ``tos_uri``, language-tagged names...). Everything kept is bounded, because it
is stored, shown on the consent page and logged.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, cast

from edge.oauth.errors import InvalidClientMetadata
from edge.oauth.records import AuthMethod, ClientRecord
from edge.oauth.redirects import MAX_URI_LENGTH, validate_redirect_uri

__all__ = [
    "AUTH_METHODS",
    "GRANT_TYPES",
    "MAX_CONTACTS",
    "MAX_REDIRECT_URIS",
    "MAX_SCOPE_LENGTH",
    "MAX_TEXT_LENGTH",
    "ClientMetadata",
    "metadata_members",
    "parse_metadata",
]

GRANT_TYPES = ("authorization_code", "refresh_token")
AUTH_METHODS: tuple[AuthMethod, ...] = ("none", "client_secret_basic", "client_secret_post")
MAX_REDIRECT_URIS = 20
MAX_CONTACTS = 10
MAX_TEXT_LENGTH = 200  # client_name, software_id, software_version
MAX_CONTACT_LENGTH = 320  # an e-mail address at most (RFC 3696 errata: 254; room for "mailto:")
MAX_SCOPE_LENGTH = 1000


@dataclass(frozen=True, slots=True)
class ClientMetadata:
    """The members of a client's metadata this server uses."""

    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    token_endpoint_auth_method: AuthMethod
    scope: str | None = None
    client_name: str | None = None
    client_uri: str | None = None
    logo_uri: str | None = None
    contacts: tuple[str, ...] = ()
    software_id: str | None = None
    software_version: str | None = None


def _bad(member: str, message: str) -> InvalidClientMetadata:
    return InvalidClientMetadata(member, public_message=f"{member}: {message}", field=member)


def _text(doc: dict[str, Any], member: str, limit: int) -> str | None:
    value = doc.get(member)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(member, "must be a string")
    if len(value) > limit:
        raise _bad(member, f"may have at most {limit} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _bad(member, "must not contain control characters")
    return value


def _url(doc: dict[str, Any], member: str, schemes: tuple[str, ...]) -> str | None:
    value = _text(doc, member, MAX_URI_LENGTH)
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme.lower() not in schemes or not parts.hostname or "@" in parts.netloc:
        raise _bad(member, f"must be an absolute {' or '.join(schemes)} URL without user info")
    if any(c.isspace() for c in value):
        raise _bad(member, "must not contain spaces")
    return value


def _words(
    doc: dict[str, Any], member: str, default: tuple[str, ...], limit: int = 10
) -> tuple[str, ...]:
    value = doc.get(member)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(member, "must be an array of strings")
    if len(value) > limit:
        raise _bad(member, f"at most {limit} are accepted")
    return tuple(dict.fromkeys(cast(list[str], value)))  # each once, in the order given


def parse_metadata(
    document: object,
    *,
    scopes_supported: Collection[str] | None,
    auth_methods: Collection[str] = AUTH_METHODS,
    default_auth_method: AuthMethod = "client_secret_basic",
) -> ClientMetadata:
    """Check ``document`` (a decoded JSON value); raises InvalidClientMetadata or
    InvalidRedirectUri. ``scopes_supported``: the words ``scope`` may use (None: any
    word, for documents written for many servers)."""
    if not isinstance(document, dict):
        raise InvalidClientMetadata(
            "not an object", public_message="the client metadata must be a JSON object"
        )
    doc = cast(dict[str, Any], document)

    uris = doc.get("redirect_uris")
    if not isinstance(uris, list) or not uris:
        raise _bad("redirect_uris", "a non-empty array of redirect URIs is required")
    if len(uris) > MAX_REDIRECT_URIS:
        raise _bad("redirect_uris", f"at most {MAX_REDIRECT_URIS} are accepted")
    redirect_uris = tuple(dict.fromkeys(validate_redirect_uri(u) for u in uris))

    # RFC 7591 section 2: grant_types defaults to authorization_code alone, and
    # response_types to code; the two must agree (section 2.1)
    grant_types = _words(doc, "grant_types", ("authorization_code",))
    unknown = [g for g in grant_types if g not in GRANT_TYPES]
    if unknown or "authorization_code" not in grant_types:
        raise _bad(
            "grant_types",
            "must include authorization_code and may add refresh_token, nothing else",
        )
    response_types = _words(doc, "response_types", ("code",))
    if response_types != ("code",):
        raise _bad("response_types", 'must be ["code"]')

    method = doc.get("token_endpoint_auth_method", default_auth_method)
    if not isinstance(method, str) or method not in auth_methods:
        raise _bad("token_endpoint_auth_method", f"must be one of: {', '.join(auth_methods)}")

    scope = _text(doc, "scope", MAX_SCOPE_LENGTH)
    if scope is not None:
        words = tuple(dict.fromkeys(scope.split()))
        if scopes_supported is not None:
            unsupported = [w for w in words if w not in scopes_supported]
            if unsupported:
                raise _bad(
                    "scope",
                    f"unknown scope {unsupported[0][:40]!r}; "
                    f"this server offers: {' '.join(scopes_supported)}",
                )
        scope = " ".join(words) or None  # an empty scope restricts nothing: as if omitted

    contacts = _words(doc, "contacts", (), MAX_CONTACTS)
    for contact in contacts:
        _text({"contacts": contact}, "contacts", MAX_CONTACT_LENGTH)

    return ClientMetadata(
        redirect_uris=redirect_uris,
        grant_types=grant_types,
        response_types=response_types,
        token_endpoint_auth_method=cast(AuthMethod, method),
        scope=scope,
        client_name=_text(doc, "client_name", MAX_TEXT_LENGTH),
        client_uri=_url(doc, "client_uri", ("https", "http")),
        # shown on the consent page, so loaded by the browser: https only (no mixed content)
        logo_uri=_url(doc, "logo_uri", ("https",)),
        contacts=contacts,
        software_id=_text(doc, "software_id", MAX_TEXT_LENGTH),
        software_version=_text(doc, "software_version", MAX_TEXT_LENGTH),
    )


def metadata_members(client: ClientRecord) -> dict[str, Any]:
    """The client's metadata as RFC 7591 members (those it has)."""
    members: dict[str, Any] = {
        "redirect_uris": list(client.redirect_uris),
        "grant_types": list(client.grant_types),
        "response_types": list(client.response_types),
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
    }
    optional = {
        "client_name": client.client_name,
        "scope": client.scope,
        "client_uri": client.client_uri,
        "logo_uri": client.logo_uri,
        "contacts": list(client.contacts) or None,
        "software_id": client.software_id,
        "software_version": client.software_version,
    }
    members.update({k: v for k, v in optional.items() if v is not None})
    return members
