"""A stored ``cert:{name}`` as far as it can be understood, without ever raising.

Listing and showing certificates must still say something useful about a record that no
longer decodes (hand-edited JSON, a key that no longer matches): :func:`describe` keeps
whatever fields it can read and names the problem. Nothing here exposes the private key:
problem texts go through :func:`scrub`, and :class:`Described` keeps the key only so a
caller can scrub it from what it prints.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from edge.config.schema import ConfigError
from edge.tls.material import (
    CERT_PREFIX,
    CertInfo,
    CertRecord,
    MaterialError,
    decode_cert,
    validate_material,
)

__all__ = ["Described", "days_left", "describe", "scrub"]

# a PEM private key block (any flavour: PKCS#8, RSA, EC, encrypted), possibly cut short;
# also as a repr() shows it, on one line with "\n" escapes
_PEM_KEY_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` without private key material (PEM key blocks, lines of ``secrets``)."""
    text = _PEM_KEY_RE.sub("<private key redacted>", text)
    for secret in secrets:
        for line in (secret or "").splitlines():
            body = line.strip()
            if len(body) >= 8 and not body.startswith("-----"):
                text = text.replace(body, "<redacted>")
    return text


def _domain_text(value: object) -> str:
    """A best-effort ``domains`` entry of a record that did not decode, fit to print."""
    if not isinstance(value, str) or len(value) > 253 or not value.isprintable():
        return "<invalid>"
    return "<invalid>" if any(c.isspace() for c in value) else value


def days_left(not_after: datetime, now: datetime) -> int:
    """Whole days until ``not_after`` (negative once past it), rounded toward zero."""
    return int((not_after - now).total_seconds() / 86400)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _chain_info(fullchain_pem: str) -> CertInfo | None:
    """What the chain alone says (for a record whose key or domains are at fault)."""
    try:
        chain = x509.load_pem_x509_certificates(fullchain_pem.encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        return None
    if not chain:  # pragma: no cover - cryptography raises for an empty chain
        return None
    leaf = chain[0]
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        san = tuple(n.lower() for n in ext.value.get_values_for_type(x509.DNSName))
    except (x509.ExtensionNotFound, ValueError):
        san = ()
    now = datetime.now(UTC)
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        serial=format(leaf.serial_number, "x"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        san=san,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        key_type="unknown",
        chain_length=len(chain),
        expired=now > leaf.not_valid_after_utc,
        not_yet_valid=now < leaf.not_valid_before_utc,
    )


@dataclass(slots=True)
class Described:
    """A stored ``cert:{name}`` as far as it could be understood (never its key)."""

    name: str
    key: str
    record: CertRecord | None = None
    info: CertInfo | None = None
    problem: str | None = None
    # best-effort fields of a record that did not decode
    domains: tuple[str, ...] = ()
    status: str | None = None
    expires_at: str | None = None
    fullchain_pem: str | None = None
    # the record's private key, only to scrub it from what is printed about the record
    secret: str | None = field(default=None, repr=False)

    def scrub(self, text: str) -> str:
        return scrub(text, self.secret)

    @property
    def not_after(self) -> datetime | None:
        if self.info is not None:
            return self.info.not_after
        return _parse_time(self.expires_at)

    def days_left(self, now: datetime) -> int | None:
        not_after = self.not_after
        return None if not_after is None else days_left(not_after, now)


def describe(key: str, raw: bytes | None, kind: str | None = None) -> Described:
    """Decode and check the value of ``cert:{name}`` without ever raising.

    ``raw`` None means the key holds another Redis type, ``kind``.
    """
    name = key[len(CERT_PREFIX) :]
    found = Described(name=name, key=key)
    if raw is None:
        found.problem = f"holds a {kind or 'value of another type'}, expected a string"
        return found
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        key_pem = doc.get("private_key_pem")
        found.secret = key_pem if isinstance(key_pem, str) else None
        domains = doc.get("domains")
        if isinstance(domains, list):
            found.domains = tuple(_domain_text(d) for d in domains)
        status, expires_at, chain = (doc.get(f) for f in ("status", "expires_at", "fullchain_pem"))
        found.status = status if isinstance(status, str) else None
        found.expires_at = expires_at if isinstance(expires_at, str) else None
        found.fullchain_pem = chain if isinstance(chain, str) else None
    try:
        record = decode_cert(key, raw)
    except ConfigError as exc:
        where = f"{exc.field}: " if exc.field else ""
        found.problem = found.scrub(f"{where}{exc.message}")
        if found.fullchain_pem is not None:
            found.info = _chain_info(found.fullchain_pem)
        return found
    found.record = record
    found.domains = record.domains
    found.status = record.status
    found.expires_at = record.expires_at
    found.fullchain_pem = record.fullchain_pem
    found.secret = record.private_key_pem
    try:
        found.info = validate_material(
            record.fullchain_pem, record.private_key_pem, record.domains, allow_expired=True
        )
    except MaterialError as exc:
        found.problem = found.scrub(f"{exc.field}: {exc.message}")
        found.info = _chain_info(record.fullchain_pem)
    return found
