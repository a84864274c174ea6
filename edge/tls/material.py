"""Certificate records stored in Redis and checks of their PEM material.

* ``cert:{name}``          -> JSON object decoded into :class:`CertRecord`
* ``cert:domain:{domain}`` -> the certificate name (a plain string; see :mod:`edge.tls.sni`)

:func:`decode_cert` checks the shape of a record (unknown fields, types, names) and
reports problems as :class:`~edge.config.problems.ConfigError` naming the field at fault.
:func:`validate_material` parses the chain and key with ``cryptography`` and checks they
belong together and cover the configured domains; it raises :class:`MaterialError`.
:func:`validate_record` runs both checks for a decoded record and reports as ConfigError.

No message produced here ever contains private key material: key problems are described
in words of our own, never with the parser's text or the offending value.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from datetime import UTC, datetime

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from edge.config.addresses import normalize_hostname, validate_url
from edge.config.msgspec_errors import translate
from edge.config.problems import ConfigError
from edge.store import keys

__all__ = [
    "CERT_DOMAIN_PREFIX",
    "CERT_PREFIX",
    "CertInfo",
    "CertRecord",
    "MaterialError",
    "decode_cert",
    "san_covers",
    "validate_material",
    "validate_record",
]

CERT_PREFIX = keys.CERT
CERT_DOMAIN_PREFIX = keys.CERT_DOMAIN

# Below this an RSA key is refused: Mozilla's intermediate profile asks for >= 2048 bits
# and OpenSSL's default security level rejects smaller keys when the context loads them.
MIN_RSA_BITS = 2048
# The only curves with a TLS 1.3 ECDSA signature scheme (RFC 8446 section 4.2.3).
_TLS_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


class CertRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Value of ``cert:{name}``.

    ``domains`` are lowercased by :func:`decode_cert`; ``expires_at`` is an ISO 8601 string
    that :func:`validate_record` fills from the leaf certificate when the record lacks it.
    """

    cert_name: str
    domains: tuple[str, ...]
    fullchain_pem: str
    private_key_pem: str
    email: str | None = None
    acme_directory_url: str | None = None
    status: str | None = None
    expires_at: str | None = None
    owner_token_hash: str | None = None

    def __repr__(self) -> str:
        # the default repr would print the private key into any log line that shows a record
        return (
            f"CertRecord(cert_name={self.cert_name!r}, domains={self.domains!r}, "
            f"status={self.status!r}, expires_at={self.expires_at!r}, private_key_pem=<redacted>)"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class CertInfo:
    """What :func:`validate_material` learnt about a chain (all from the leaf certificate).

    ``fingerprint_sha256`` is lowercase hex without separators; ``serial`` is lowercase hex;
    datetimes are timezone-aware (UTC); ``expired``/``not_yet_valid`` are relative to the
    ``now`` the check ran with.
    """

    subject: str
    issuer: str
    serial: str
    not_before: datetime
    not_after: datetime
    san: tuple[str, ...]
    fingerprint_sha256: str
    key_type: str
    chain_length: int
    expired: bool
    not_yet_valid: bool


class MaterialError(ValueError):
    """PEM material is unusable; ``field`` is the record field at fault."""

    field: str
    message: str

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# ---------------------------------------------------------------------------
# Decoding cert:{name}
# ---------------------------------------------------------------------------

_DECODER = msgspec.json.Decoder(CertRecord)
_BAD_NAME_RE = re.compile(r"[\x00-\x20\x7f-\x9f/\\]|\s")


def _check_cert_name(key: str, record: CertRecord) -> None:
    name = record.cert_name
    if not name or name in (".", "..") or _BAD_NAME_RE.search(name):
        raise ConfigError(
            key,
            "cert_name",
            f"invalid certificate name {name!r}: must be non-empty without '/', '\\', "
            "whitespace or control characters",
        )
    expected = key[len(CERT_PREFIX) :]
    if name != expected:
        raise ConfigError(
            key, "cert_name", f"cert_name {name!r} does not match the key (expected {expected!r})"
        )


def _normalize_domains(key: str, domains: tuple[str, ...]) -> tuple[str, ...]:
    if not domains:
        raise ConfigError(key, "domains", "must list at least one domain")
    result: list[str] = []
    for domain in domains:
        try:
            name = normalize_hostname(domain, allow_wildcard=True)
        except ValueError as exc:
            raise ConfigError(key, "domains", str(exc)) from None
        if name not in result:
            result.append(name)
    return tuple(result)


def _check_optional_fields(key: str, record: CertRecord) -> None:
    if "-----BEGIN CERTIFICATE-----" not in record.fullchain_pem:
        raise ConfigError(key, "fullchain_pem", "must be a PEM certificate chain")
    # never echo the value: it is a private key
    if "-----BEGIN" not in record.private_key_pem or "PRIVATE KEY-----" not in (
        record.private_key_pem
    ):
        raise ConfigError(key, "private_key_pem", "must be a PEM private key")
    if record.email is not None:
        local, at, domain = record.email.rpartition("@")
        if not at or not local or not domain or _BAD_NAME_RE.search(record.email):
            raise ConfigError(key, "email", f"invalid email {record.email!r}: expected user@domain")
    if record.acme_directory_url is not None:
        try:
            validate_url(record.acme_directory_url)
        except ValueError as exc:
            raise ConfigError(key, "acme_directory_url", str(exc)) from None
    if record.expires_at is not None:
        try:
            datetime.fromisoformat(record.expires_at)
        except ValueError:
            raise ConfigError(
                key, "expires_at", f"must be an ISO 8601 timestamp, got {record.expires_at!r}"
            ) from None


def decode_cert(key: str, raw: bytes | str) -> CertRecord:
    """Decode and check the value ``raw`` of the Redis key ``cert:{name}``.

    Checks the shape only (fields, types, names, domains); the PEM material is checked by
    :func:`validate_material`.  Raises :class:`ConfigError` naming the field at fault.
    The returned record has its domains lowercased and de-duplicated.
    """
    if not key.startswith(CERT_PREFIX) or key.startswith(CERT_DOMAIN_PREFIX):
        raise ConfigError(key, None, "not a certificate key (expected cert:{name})")
    try:
        record = _DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(key, *translate(exc)) from None
    _check_cert_name(key, record)
    domains = _normalize_domains(key, record.domains)
    _check_optional_fields(key, record)
    if domains != record.domains:
        record = msgspec.structs.replace(record, domains=domains)
    return record


# ---------------------------------------------------------------------------
# Name coverage
# ---------------------------------------------------------------------------


def san_covers(san: Iterable[str], name: str) -> bool:
    """Whether DNS names ``san`` (lowercase) authenticate ``name`` (lowercase).

    A wildcard SAN ``*.example.com`` stands for exactly one extra leftmost label: it covers
    ``a.example.com`` but neither ``example.com`` nor ``a.b.example.com`` (RFC 6125 6.4.3,
    without the partial-label wildcards browsers no longer accept).  A wildcard ``name`` is
    covered only by the identical wildcard SAN.
    """
    names = san if isinstance(san, (set, frozenset)) else frozenset(san)
    if name in names:
        return True
    if name.startswith("*."):
        return False
    _, dot, parent = name.partition(".")
    return bool(dot and parent) and f"*.{parent}" in names


# ---------------------------------------------------------------------------
# Material checks
# ---------------------------------------------------------------------------


def _load_chain(fullchain_pem: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(fullchain_pem.encode("utf-8"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise MaterialError("fullchain_pem", f"certificate chain is not valid PEM: {exc}") from None
    if not chain:  # pragma: no cover - cryptography raises for an empty chain already
        raise MaterialError("fullchain_pem", "certificate chain contains no certificate")
    for index in range(len(chain) - 1):
        try:
            chain[index].verify_directly_issued_by(chain[index + 1])
        except (ValueError, TypeError, InvalidSignature):
            raise MaterialError(
                "fullchain_pem",
                f"certificate #{index + 1} in the chain is not issued by certificate "
                f"#{index + 2} (the chain must list the leaf first, then its issuers in order)",
            ) from None
    return chain


_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _load_key(private_key_pem: str, check_key: bool) -> _PrivateKey:
    # The parser's own messages are not shown: keep every word about the key our own.
    try:
        key = serialization.load_pem_private_key(
            private_key_pem.encode("utf-8"),
            password=None,
            # the RSA consistency check (primality of p and q...) costs ~40 ms holding the
            # GIL: run where a person imports a key, not where a worker loads a stored one
            unsafe_skip_rsa_key_validation=not check_key,
        )
    except TypeError:
        raise MaterialError(
            "private_key_pem", "private key is encrypted; an unencrypted key is required"
        ) from None
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError):
        raise MaterialError(
            "private_key_pem", "private key is not a valid PEM private key"
        ) from None
    if not isinstance(key, _PrivateKey):
        raise MaterialError(
            "private_key_pem",
            f"unsupported private key type {type(key).__name__}: use RSA, EC or Ed25519",
        )
    return key


def _key_type(key: _PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise MaterialError(
                "private_key_pem",
                f"RSA key of {key.key_size} bits is too small (minimum {MIN_RSA_BITS})",
            )
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curve = _TLS_CURVES.get(key.curve.name)
        if curve is None:
            raise MaterialError(
                "private_key_pem",
                f"EC key on curve {key.curve.name} cannot sign TLS handshakes "
                "(use P-256, P-384 or P-521)",
            )
        return f"EC-{curve}"
    return "Ed25519"


def _public_der(key: x509.Certificate | _PrivateKey) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _san_names(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower() for name in ext.value.get_values_for_type(x509.DNSName))


def validate_material(
    fullchain_pem: str,
    private_key_pem: str,
    domains: Iterable[str],
    *,
    now: datetime | None = None,
    allow_expired: bool = False,
    check_key: bool = False,
) -> CertInfo:
    """Check that a PEM chain and key belong together and cover ``domains``.

    ``check_key`` also runs the RSA private key's own consistency check, which holds the
    GIL for tens of milliseconds (stalling the event loop even from a thread): for keys a
    person imports (``edge cert import``). A stored key was checked when imported, an
    issued one was generated here, and OpenSSL still refuses a key that does not match
    its certificate when a worker loads it.

    The chain must hold at least one certificate, leaf first, each issued by the next.
    The key must be an unencrypted RSA (>= 2048 bits), EC (P-256/384/521) or Ed25519 key
    matching the leaf's public key.  Each domain must be covered by the leaf's SAN DNS
    names (see :func:`san_covers`; the subject CN is not consulted).  An expired leaf is an
    error unless ``allow_expired`` (loading what is already stored: warn on
    ``CertInfo.expired`` instead).  Raises :class:`MaterialError`.
    """
    chain = _load_chain(fullchain_pem)
    leaf = chain[0]
    key = _load_key(private_key_pem, check_key)
    key_type = _key_type(key)
    if _public_der(key) != _public_der(leaf):
        raise MaterialError("private_key_pem", "private key does not match the certificate")
    san = _san_names(leaf)
    for domain in domains:
        name = domain.lower()
        if name.endswith("."):
            name = name[:-1]
        if not san_covers(san, name):
            shown = ", ".join(san) if san else "none"
            raise MaterialError(
                "domains",
                f"domain {domain} is not covered by the certificate (SAN: {shown})",
            )
    now = now or datetime.now(UTC)
    not_before = leaf.not_valid_before_utc
    not_after = leaf.not_valid_after_utc
    expired = now > not_after
    if expired and not allow_expired:
        raise MaterialError("fullchain_pem", f"certificate has expired on {not_after.isoformat()}")
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        serial=format(leaf.serial_number, "x"),
        not_before=not_before,
        not_after=not_after,
        san=san,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        key_type=key_type,
        chain_length=len(chain),
        expired=expired,
        not_yet_valid=now < not_before,
    )


def validate_record(
    key: str,
    record: CertRecord,
    *,
    now: datetime | None = None,
    allow_expired: bool = False,
) -> tuple[CertRecord, CertInfo]:
    """:func:`validate_material` for a decoded record, reporting as :class:`ConfigError`.

    Returns the record (with ``expires_at`` filled from the leaf's notAfter when absent)
    and what was learnt about the certificate.  CPU cost is a few milliseconds (RSA key
    consistency check): run it off the event loop when loading many certificates.
    """
    try:
        info = validate_material(
            record.fullchain_pem,
            record.private_key_pem,
            record.domains,
            now=now,
            allow_expired=allow_expired,
        )
    except MaterialError as exc:
        raise ConfigError(key, exc.field, exc.message) from None
    if record.expires_at is None:
        record = msgspec.structs.replace(record, expires_at=info.not_after.isoformat())
    return record, info
