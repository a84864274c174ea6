"""Host names, ports and upstream URLs: the address checks shared by every config key.

A leaf module (it imports nothing of edge) so that :mod:`edge.config.schema` and
:mod:`edge.tls.material`, which both check host names and URLs, can use these without
importing each other. :mod:`edge.config.schema` re-exports the public names for existing
callers. Each check raises :class:`ValueError` with a message; the caller adds the key and
field it belongs to.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "CONTROL_OR_SPACE_RE",
    "normalize_hostname",
    "validate_host_port",
    "validate_port",
    "validate_url",
]

_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT_RE = re.compile(r"[0-9]{1,5}")
# whitespace and C0/C1 controls: never valid in a URL, path, name or e-mail we store
CONTROL_OR_SPACE_RE = re.compile(r"[\x00-\x20\x7f-\x9f]|\s")


def normalize_hostname(value: str, *, allow_wildcard: bool = True) -> str:
    """Validate a DNS host name and return it lowercased.

    Labels are 1-63 characters of ``a-z0-9-`` that neither start nor end with ``-``;
    the whole name is at most 253 characters.  With ``allow_wildcard`` a single leading
    ``*.`` label is accepted (``*.example.com``).
    """
    if not value.isascii():  # before lower(): "\u212a".lower() is an ASCII "k"
        raise ValueError(f"invalid host name {value!r}: use the ASCII (punycode) form")
    name = value.lower()
    if not name:
        raise ValueError("must be a host name, got an empty string")
    if not name.isascii():
        raise ValueError(f"invalid host name {value!r}: use the ASCII (punycode) form")
    rest = name
    if name.startswith("*."):
        if not allow_wildcard:
            raise ValueError(f"invalid host name {value!r}: wildcards are not allowed here")
        rest = name[2:]
    if len(rest) > 253:
        raise ValueError(f"invalid host name {value!r}: longer than 253 characters")
    for label in rest.split("."):
        if "*" in label:
            raise ValueError(
                f"invalid host name {value!r}: '*' is only allowed as a whole leading label "
                "('*.example.com')"
            )
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(
                f"invalid host name {value!r}: each label must be 1-63 characters of "
                "a-z, 0-9 and '-', not starting or ending with '-'"
            )
    return name


def validate_port(text: str, what: str) -> int:
    """A decimal TCP port 1-65535; ``what`` names where it was written, for the message."""
    if not _PORT_RE.fullmatch(text):
        raise ValueError(f"invalid port {text!r} in {what}: must be an integer 1-65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(f"invalid port {text!r} in {what}: must be an integer 1-65535")
    return port


def validate_host_port(value: str) -> str:
    """``hostname`` or ``hostname:port`` (no wildcard); returned lowercased."""
    host, sep, port = value.rpartition(":")
    if not sep:
        host = value
    else:
        validate_port(port, repr(value))
    return normalize_hostname(host, allow_wildcard=False) + (f":{port}" if sep else "")


def _validate_url_port(port: str, url: str, message: str) -> None:
    try:
        validate_port(port, "URL")
    except ValueError as exc:
        raise ValueError(f"{message}, got {url!r}: {exc}") from None


def validate_url(value: str) -> str:
    """Validate an upstream URL: ``http(s)://host[:port][/path]``.

    The host is a DNS name, an IPv4 address or a bracketed IPv6 address.  Query strings,
    fragments, user information, whitespace and control characters are rejected.
    """
    message = "must be an http:// or https:// URL"
    if CONTROL_OR_SPACE_RE.search(value):
        raise ValueError(f"{message} without whitespace or control characters, got {value!r}")
    if value.startswith("http://"):
        rest = value[len("http://") :]
    elif value.startswith("https://"):
        rest = value[len("https://") :]
    else:
        raise ValueError(f"{message}, got {value!r}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"{message} without a query string or fragment, got {value!r}")
    authority = rest.partition("/")[0]
    if "@" in authority:
        raise ValueError(f"{message} without user information, got {value!r}")
    if not authority:
        raise ValueError(f"{message} with a host, got {value!r}")
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError(f"{message}, got {value!r}: unterminated IPv6 address")
        literal = authority[1:end]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise ValueError(f"{message}, got {value!r}: invalid IPv6 address") from None
        after = authority[end + 1 :]
        if after:
            if not after.startswith(":"):
                raise ValueError(f"{message}, got {value!r}: unexpected text after host")
            _validate_url_port(after[1:], value, message)
        return value
    host, colon, port = authority.partition(":")
    if colon:
        _validate_url_port(port, value, message)
    try:
        normalize_hostname(host, allow_wildcard=False)
    except ValueError as exc:
        raise ValueError(f"{message} with a valid host, got {value!r}: {exc}") from None
    return value
