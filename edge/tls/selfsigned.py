"""The default certificate: self-signed, served when no configured certificate matches.

It is generated once and shared through Redis so every node serves the same certificate
(storing and loading it is the certificate watcher's job, not this module's).
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge.config.schema import normalize_hostname
from edge.tls.material import MIN_RSA_BITS

__all__ = ["generate_self_signed"]

_MAX_DAYS = 3650
_MAX_RSA_BITS = 8192


def generate_self_signed(cn: str, days: int, rsa_key_size: int) -> tuple[str, str]:
    """A self-signed certificate for ``cn``: ``(fullchain_pem, private_key_pem)``.

    Subject CN and SAN DNS are ``cn``; the serial is random; it is valid from one hour
    ago (tolerates clients whose clocks lag) for ``days`` days; RSA with
    ``rsa_key_size`` bits, SHA-256 signature, key in unencrypted PKCS#8.

    CPU-heavy: RSA key generation takes from tens of milliseconds (2048 bits) to seconds
    (4096 bits) -- callers on the event loop run it in a thread
    (``await asyncio.to_thread(generate_self_signed, ...)``).
    Raises ValueError for an invalid host name, key size or lifetime.
    """
    name = normalize_hostname(cn, allow_wildcard=False)
    if not MIN_RSA_BITS <= rsa_key_size <= _MAX_RSA_BITS:
        raise ValueError(
            f"RSA key size must be between {MIN_RSA_BITS} and {_MAX_RSA_BITS}, got {rsa_key_size}"
        )
    if not 1 <= days <= _MAX_DAYS:
        raise ValueError(f"validity must be between 1 and {_MAX_DAYS} days, got {days}")

    key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_size)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    fullchain_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return fullchain_pem, key_pem
