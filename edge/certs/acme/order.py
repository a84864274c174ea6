"""What an ACME order may ask for, and the status document that tracks it.

Pure: no I/O. The admin API, the CLI and automatic issuance all check names here, so a
name refused in one place is refused everywhere with the same words.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

import msgspec

from edge.config.addresses import normalize_hostname
from edge.errors import EdgeError

__all__ = [
    "MAX_DOMAINS",
    "STATES",
    "CertStatus",
    "KeyType",
    "OrderRefused",
    "can_order",
    "check_domains",
    "decode_status",
    "encode_status",
    "iso",
    "proxy_cert_name",
]

MAX_DOMAINS = 100  # names per certificate (Let's Encrypt's limit)

KeyType = Literal["rsa", "ecdsa"]
State = Literal["pending", "validating", "issuing", "active", "failed"]
STATES: tuple[State, ...] = ("pending", "validating", "issuing", "active", "failed")
# why an order was placed
Reason = Literal["requested", "automatic", "on-demand", "renewal"]


class OrderRefused(EdgeError):
    """An order that cannot be placed as asked (400, naming the field)."""

    status = 400
    code = "invalid_request"
    public_message = "the certificate request is not valid"


def _refuse(field: str, message: str) -> OrderRefused:
    return OrderRefused(message, public_message=message, field=field)


def check_domains(domains: Sequence[str], field: str = "domains") -> tuple[str, ...]:
    """The names to order, lower case in the order given; :class:`OrderRefused` naming
    ``field`` for an empty list, more than :data:`MAX_DOMAINS`, a duplicate, a wildcard
    (HTTP-01 cannot prove one), an IP address or a name that is no DNS name."""
    if isinstance(domains, str) or not domains:
        raise _refuse(field, f"{field} must list at least one domain name")
    if len(domains) > MAX_DOMAINS:
        raise _refuse(field, f"{field} lists {len(domains)} names; at most {MAX_DOMAINS}")
    seen: set[str] = set()
    names: list[str] = []
    for raw in domains:
        if not isinstance(raw, str):
            raise _refuse(field, f"{field} must be a list of domain names")
        if raw.startswith("*."):
            raise _refuse(
                field,
                f"{raw!r} is a wildcard name: wildcard certificates need the DNS-01 "
                "challenge, which this edge does not offer (on-demand TLS covers the names "
                "under a wildcard proxy one by one)",
            )
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            pass
        else:
            raise _refuse(field, f"{raw!r} is an IP address; certificates are for names")
        try:
            name = normalize_hostname(raw.rstrip(".") if raw != "." else raw, allow_wildcard=False)
        except ValueError as exc:
            raise _refuse(field, str(exc)) from None
        if "." not in name:
            raise _refuse(field, f"{raw!r} is not a fully qualified domain name")
        if name in seen:
            raise _refuse(field, f"{name!r} is listed twice")
        seen.add(name)
        names.append(name)
    return tuple(names)


def can_order(hostname: str) -> bool:
    """Whether a public CA could issue for ``hostname`` (automatic issuance skips the rest:
    IP addresses, single labels, ``localhost`` and names under it, wildcards)."""
    try:
        check_domains([hostname])
    except OrderRefused:
        return False
    return not (hostname == "localhost" or hostname.endswith((".localhost", ".local")))


PROXY_CERT_PREFIX = "proxy-"


def proxy_cert_name(hostname: str) -> str:
    """The certificate automatic HTTPS orders for a proxy: ``proxy-`` and its host name
    with dots as dashes (``proxy-app-example-com``)."""
    return PROXY_CERT_PREFIX + hostname.replace(".", "-")


def iso(when: datetime | float | None) -> str | None:
    """UTC ISO 8601 of a datetime or Unix time (seconds), None kept."""
    if when is None:
        return None
    if not isinstance(when, datetime):
        when = datetime.fromtimestamp(when, UTC)
    return when.astimezone(UTC).isoformat(timespec="seconds")


class CertStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=False):
    """The value of ``cert:status:{name}`` (JSON): one certificate's issuance.

    ``status`` moves pending -> validating -> issuing -> active, or to failed with the
    CA's ``error`` and ``next_try_at``. The order itself (names, key type, CA, account
    e-mail, owner) is kept here too: any node can take it up from this document alone.
    """

    cert_name: str
    status: State
    domains: tuple[str, ...]
    email: str | None = None
    directory_url: str
    staging: bool = False
    key_type: KeyType = "rsa"
    reason: Reason = "requested"
    owner_token_hash: str | None = None
    requested_at: str
    updated_at: str
    attempts: int = 0  # failed attempts since the last success
    error: str | None = None
    next_try_at: str | None = None
    expires_at: str | None = None  # of the certificate issued, once active
    renew_at: str | None = None  # when it is due for renewal, once active
    order_url: str | None = None


_decoder = msgspec.json.Decoder(CertStatus)


def decode_status(raw: bytes | str) -> CertStatus:
    """Raises ``msgspec.DecodeError`` / ``ValidationError`` for a document that is not one."""
    return _decoder.decode(raw)


def encode_status(status: CertStatus) -> bytes:
    return msgspec.json.encode(status)
