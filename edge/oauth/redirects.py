"""Redirect URI rules: which URIs a client may register, and which ones it may use.

Registration (RFC 7591 section 2, OAuth 2.1 section 2.3.1): an absolute ``https`` URI, or
``http`` on a loopback host only (a native app's local listener, RFC 8252 section 7.3);
no fragment (RFC 6749 section 3.1.2), no userinfo. Private-use schemes
(``com.example.app:/cb``, RFC 8252 section 7.1) are refused: this server offers https
and loopback http only, and a custom scheme can be claimed by any app on the device.

Use at ``/authorize`` (OAuth 2.1 section 2.3.1): the exact string registered, with one
exception. A loopback ``http`` redirect URI may name any port (RFC 8252 section 7.3: the
app takes whatever port the OS gives it at request time); scheme, host, path and query
must still match exactly.
"""

from __future__ import annotations

import urllib.parse
from typing import NamedTuple

from edge.oauth.errors import InvalidRedirectUri
from edge.oauth.records import ClientRecord

__all__ = ["LOOPBACK_HOSTS", "MAX_URI_LENGTH", "redirect_allowed", "validate_redirect_uri"]

MAX_URI_LENGTH = 2000
# RFC 8252 section 7.3 names the IP literals; "localhost" is NOT RECOMMENDED there (it may
# resolve elsewhere) but common among MCP clients, so it is accepted as registered
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _refuse(detail: str, public: str) -> InvalidRedirectUri:
    return InvalidRedirectUri(detail, public_message=public, field="redirect_uris")


def _printable_ascii(uri: str) -> bool:
    # an RFC 3986 URI is printable ASCII; spaces, controls and backslashes are where
    # parsers disagree (urlsplit strips some, browsers rewrite others)
    return all(0x21 <= ord(c) <= 0x7E for c in uri) and "\\" not in uri


def validate_redirect_uri(uri: object) -> str:
    """``uri`` if it may be registered as a redirect URI; raises InvalidRedirectUri."""
    if not isinstance(uri, str) or not uri:
        raise _refuse("not a string", "each redirect URI must be a non-empty string")
    if len(uri) > MAX_URI_LENGTH:
        raise _refuse("too long", f"a redirect URI may have at most {MAX_URI_LENGTH} characters")
    if not _printable_ascii(uri):
        raise _refuse("bad characters", "a redirect URI must be printable ASCII without spaces")
    if "#" in uri:
        raise _refuse("fragment", "a redirect URI must not contain a fragment")
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise _refuse(
            "scheme",
            "a redirect URI must be https, or http on a loopback host "
            "(private-use URI schemes are not supported)",
        )
    if "@" in parts.netloc:
        raise _refuse("userinfo", "a redirect URI must not contain user information")
    host = parts.hostname
    if not host:
        raise _refuse("no host", "a redirect URI must be absolute, with a host")
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError:
        raise _refuse("port", "a redirect URI's port must be a number in range") from None
    if scheme == "http" and host not in LOOPBACK_HOSTS:
        raise _refuse(
            "http not loopback",
            "an http redirect URI must name a loopback host (127.0.0.1, [::1] or localhost); "
            "use https otherwise",
        )
    return uri


class _Loopback(NamedTuple):
    host: str
    path: str
    query: str


def _loopback(uri: str) -> _Loopback | None:
    """The parts that must match of a loopback http redirect URI (all but the port), or
    None when ``uri`` is not one."""
    if "#" in uri or not _printable_ascii(uri):
        return None
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() != "http" or "@" in parts.netloc:
        return None
    host = parts.hostname
    if host is None or host not in LOOPBACK_HOSTS:
        return None
    try:
        parts.port  # noqa: B018 (raises for a port that is not a number in range)
    except ValueError:
        return None
    return _Loopback(host, parts.path, parts.query)


def redirect_allowed(client: ClientRecord, redirect_uri: str) -> bool:
    """May ``client`` be sent to ``redirect_uri``? Exact match with a registered URI, or
    a loopback http URI that differs from a registered one in its port only."""
    if redirect_uri in client.redirect_uris:
        return True
    wanted = _loopback(redirect_uri)
    if wanted is None:
        return False
    return any(_loopback(registered) == wanted for registered in client.redirect_uris)
