"""cert:{name} records, PEM chain/key checks and the self-signed default certificate."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from edge.config.schema import ConfigError
from edge.tls.material import (
    CertRecord,
    MaterialError,
    decode_cert,
    san_covers,
    validate_material,
    validate_record,
)
from edge.tls.selfsigned import generate_self_signed
from tests.helpers import encrypted_key_pem

UTC = datetime.UTC

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _pems(leaf: trustme.LeafCert) -> tuple[str, str]:
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    return chain, leaf.private_key_pem.bytes().decode()


def _leaf(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _key_pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    )


def _self_signed(
    key: Any, names: list[str], algorithm: hashes.SHA256 | None, *, san: bool = True
) -> str:
    """A self-signed certificate for ``names`` (the first is its CN; without ``san``, it has
    no subjectAltName), made with cryptography directly."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san:
        names_ext = x509.SubjectAlternativeName([x509.DNSName(n) for n in names])
        builder = builder.add_extension(names_ext, False)
    cert = builder.sign(key, algorithm)
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _record(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "cert_name": "site",
        "domains": ["a.example.com"],
        "fullchain_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "private_key_pem": (
            "-----BEGIN PRIVATE KEY-----\nSECRETKEYBYTES\n-----END PRIVATE KEY-----\n"
        ),
    }
    doc.update(extra)
    return doc


def _reject(doc: Any, key: str = "cert:site") -> ConfigError:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with pytest.raises(ConfigError) as info:
        decode_cert(key, raw)
    assert info.value.key == key
    assert "SECRETKEYBYTES" not in str(info.value)
    return info.value


# ---------------------------------------------------------------------------
# decode_cert
# ---------------------------------------------------------------------------


def test_decode_accepts_a_full_record_and_normalises_domains() -> None:
    doc = _record(
        domains=["A.Example.com", "*.Example.com", "a.example.com"],
        email="ops@example.com",
        acme_directory_url="https://acme-v02.api.letsencrypt.org/directory",
        status="active",
        expires_at="2030-01-01T00:00:00+00:00",
        owner_token_hash="sha256:abc",
    )
    record = decode_cert("cert:site", json.dumps(doc))
    assert record.domains == ("a.example.com", "*.example.com")
    assert record.email == "ops@example.com"
    assert record.expires_at == "2030-01-01T00:00:00+00:00"


def test_record_repr_never_shows_the_private_key() -> None:
    record = decode_cert("cert:site", json.dumps(_record()).encode())
    assert "SECRETKEYBYTES" not in repr(record)
    assert "redacted" in repr(record)


@pytest.mark.parametrize("field", ["cert_name", "domains", "fullchain_pem", "private_key_pem"])
def test_decode_missing_field_is_named(field: str) -> None:
    doc = _record()
    del doc[field]
    err = _reject(doc)
    assert err.field == field
    assert "missing" in err.message


def test_decode_unknown_field_is_named() -> None:
    err = _reject(_record(sans=["x"]))
    assert err.field == "sans"
    assert "unknown" in err.message


@pytest.mark.parametrize(
    ("extra", "field", "needle"),
    [
        ({"domains": "a.example.com"}, "domains", "expected array"),
        ({"domains": [1]}, "domains", "domains[0]"),
        ({"cert_name": 7}, "cert_name", "expected str"),
        ({"private_key_pem": 42}, "private_key_pem", "expected str"),
        ({"expires_at": 1700000000}, "expires_at", "expected str"),
    ],
)
def test_decode_wrong_type_names_the_field(extra: dict[str, Any], field: str, needle: str) -> None:
    err = _reject(_record(**extra))
    assert err.field == field
    assert needle in err.message


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"cert_name": "other"}, "cert_name"),
        ({"cert_name": "bad/name"}, "cert_name"),
        ({"domains": []}, "domains"),
        ({"domains": ["not a host"]}, "domains"),
        ({"domains": ["a.*.example.com"]}, "domains"),
        ({"fullchain_pem": "hello"}, "fullchain_pem"),
        ({"private_key_pem": "SECRETKEYBYTES"}, "private_key_pem"),
        ({"email": "nobody"}, "email"),
        ({"acme_directory_url": "ftp://acme"}, "acme_directory_url"),
        ({"expires_at": "next tuesday"}, "expires_at"),
    ],
)
def test_decode_semantic_errors_name_the_field(extra: dict[str, Any], field: str) -> None:
    assert _reject(_record(**extra)).field == field


def test_decode_rejects_non_objects_and_bad_json() -> None:
    assert _reject([1, 2]).field is None
    assert "invalid JSON" in _reject(b"{").message
    assert _reject(_record(), key="cert:domain:a.example.com").field is None


# ---------------------------------------------------------------------------
# name coverage
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("san", "name", "covered"),
    [
        (["a.example.com"], "a.example.com", True),
        (["a.example.com"], "b.example.com", False),
        (["*.example.com"], "a.example.com", True),
        (["*.example.com"], "a.b.example.com", False),
        (["*.example.com"], "example.com", False),
        (["*.example.com"], "*.example.com", True),
        (["a.example.com"], "*.example.com", False),
        (["*.b.example.com"], "*.example.com", False),
        (["*.example.com"], "*.b.example.com", False),
        (["example.com"], "a.example.com", False),
    ],
)
def test_san_coverage_rules(san: list[str], name: str, covered: bool) -> None:
    assert san_covers(san, name) is covered


# ---------------------------------------------------------------------------
# validate_material
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA])
def test_good_chain_reports_what_it_found(ca: trustme.CA, key_type: trustme.KeyType) -> None:
    leaf = ca.issue_cert("a.example.com", "*.w.example.com", key_type=key_type)
    chain, key = _pems(leaf)
    info = validate_material(chain, key, ["a.example.com", "x.w.example.com", "*.w.example.com"])
    cert = _leaf(chain)
    assert info.san == ("a.example.com", "*.w.example.com")
    assert info.serial == format(cert.serial_number, "x")
    assert info.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert info.subject == cert.subject.rfc4514_string()
    assert info.issuer == cert.issuer.rfc4514_string()
    assert info.not_before.tzinfo is not None and info.not_after.tzinfo is not None
    assert info.not_before < datetime.datetime.now(UTC) < info.not_after
    assert not info.expired and not info.not_yet_valid
    assert info.chain_length == 1
    assert info.key_type == ("EC-P-256" if key_type is trustme.KeyType.ECDSA else "RSA-2048")


def test_chain_with_intermediate_must_be_in_order(ca: trustme.CA) -> None:
    leaf = ca.create_child_ca().issue_cert("a.example.com")
    chain, key = _pems(leaf)
    assert validate_material(chain, key, ["a.example.com"]).chain_length == 2
    blobs = [blob.bytes().decode() for blob in leaf.cert_chain_pems]
    with pytest.raises(MaterialError, match="not issued by certificate #2") as info:
        validate_material(blobs[1] + blobs[0], key, ["a.example.com"])
    assert info.value.field == "fullchain_pem"


def test_key_mismatch(ca: trustme.CA) -> None:
    chain, _ = _pems(ca.issue_cert("a.example.com"))
    _, other_key = _pems(ca.issue_cert("a.example.com"))
    with pytest.raises(MaterialError) as info:
        validate_material(chain, other_key, ["a.example.com"])
    assert info.value.field == "private_key_pem"
    assert str(info.value) == "private key does not match the certificate"


def test_uncovered_domain_names_the_domain_and_the_san(ca: trustme.CA) -> None:
    chain, key = _pems(ca.issue_cert("a.example.com", "*.w.example.com"))
    with pytest.raises(MaterialError) as info:
        validate_material(chain, key, ["a.example.com", "x.example.com"])
    assert info.value.field == "domains"
    assert str(info.value) == (
        "domain x.example.com is not covered by the certificate "
        "(SAN: a.example.com, *.w.example.com)"
    )


@pytest.mark.parametrize(
    ("domain", "ok"),
    [
        ("a.example.com", True),
        ("zz.example.com", True),
        ("*.example.com", True),
        ("A.Example.COM.", True),
        ("a.b.example.com", False),
        ("example.com", False),
        ("*.b.example.com", False),
    ],
)
def test_wildcard_certificate_coverage(ca: trustme.CA, domain: str, ok: bool) -> None:
    chain, key = _pems(ca.issue_cert("*.example.com"))
    if ok:
        validate_material(chain, key, [domain])
    else:
        with pytest.raises(MaterialError, match="is not covered"):
            validate_material(chain, key, [domain])


def test_exact_san_does_not_cover_a_wildcard_domain(ca: trustme.CA) -> None:
    chain, key = _pems(ca.issue_cert("a.example.com", "b.example.com"))
    with pytest.raises(MaterialError, match=r"domain \*\.example\.com is not covered"):
        validate_material(chain, key, ["*.example.com"])


@pytest.mark.parametrize(
    "chain",
    [
        "",
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
    ],
)
def test_garbage_chain(ca: trustme.CA, chain: str) -> None:
    _, key = _pems(ca.issue_cert("a.example.com"))
    with pytest.raises(MaterialError, match="not valid PEM") as info:
        validate_material(chain, key, ["a.example.com"])
    assert info.value.field == "fullchain_pem"


def test_garbage_key_is_described_without_its_content(ca: trustme.CA) -> None:
    chain, _ = _pems(ca.issue_cert("a.example.com"))
    secret = "-----BEGIN PRIVATE KEY-----\nU0VDUkVUS0VZQllURVM=\n-----END PRIVATE KEY-----\n"
    with pytest.raises(MaterialError) as info:
        validate_material(chain, secret, ["a.example.com"])
    assert info.value.field == "private_key_pem"
    assert str(info.value) == "private key is not a valid PEM private key"
    assert "U0VDUkVU" not in repr(info.value)


def test_encrypted_key_is_refused(ca: trustme.CA) -> None:
    leaf = ca.issue_cert("a.example.com")
    chain, key_pem = _pems(leaf)
    encrypted = encrypted_key_pem(key_pem)
    with pytest.raises(MaterialError, match="encrypted"):
        validate_material(chain, encrypted, ["a.example.com"])


def test_small_rsa_key_is_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    chain = _self_signed(key, ["a.example.com"], hashes.SHA256())
    with pytest.raises(MaterialError, match="1024 bits is too small"):
        validate_material(chain, _key_pem(key), ["a.example.com"])


def test_ec_key_on_a_non_tls_curve_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256K1())
    chain = _self_signed(key, ["a.example.com"], hashes.SHA256())
    with pytest.raises(MaterialError, match="secp256k1 cannot sign TLS"):
        validate_material(chain, _key_pem(key), ["a.example.com"])


def test_ed25519_is_accepted() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    chain = _self_signed(key, ["a.example.com"], None)
    info = validate_material(chain, _key_pem(key), ["a.example.com"])
    assert info.key_type == "Ed25519"


def test_certificate_without_san_covers_nothing() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    chain = _self_signed(key, ["a.example.com"], hashes.SHA256(), san=False)
    with pytest.raises(MaterialError, match=r"\(SAN: none\)"):  # the CN is not consulted
        validate_material(chain, _key_pem(key), ["a.example.com"])


def test_expired_certificate_is_an_error_unless_allowed(ca: trustme.CA) -> None:
    not_after = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    leaf = ca.issue_cert(
        "a.example.com", not_before=not_after - datetime.timedelta(days=90), not_after=not_after
    )
    chain, key = _pems(leaf)
    with pytest.raises(MaterialError) as info:
        validate_material(chain, key, ["a.example.com"])
    assert str(info.value) == "certificate has expired on 2024-01-02T03:04:05+00:00"
    loaded = validate_material(chain, key, ["a.example.com"], allow_expired=True)
    assert loaded.expired is True
    assert loaded.not_after == not_after


def test_expiry_is_judged_against_the_given_clock(ca: trustme.CA) -> None:
    chain, key = _pems(ca.issue_cert("a.example.com"))
    later = _leaf(chain).not_valid_after_utc + datetime.timedelta(seconds=1)
    assert validate_material(chain, key, ["a.example.com"], now=later, allow_expired=True).expired
    earlier = _leaf(chain).not_valid_before_utc - datetime.timedelta(seconds=1)
    assert validate_material(chain, key, ["a.example.com"], now=earlier).not_yet_valid


# ---------------------------------------------------------------------------
# validate_record
# ---------------------------------------------------------------------------


def test_validate_record_fills_expires_at_and_reports_as_config_error(ca: trustme.CA) -> None:
    chain, key = _pems(ca.issue_cert("a.example.com"))
    raw = json.dumps(_record(fullchain_pem=chain, private_key_pem=key))
    record = decode_cert("cert:site", raw)
    filled, info = validate_record("cert:site", record)
    assert isinstance(filled, CertRecord)
    assert filled.expires_at == info.not_after.isoformat()
    assert datetime.datetime.fromisoformat(filled.expires_at) == info.not_after

    kept = msgspec_replace(record, expires_at="2031-01-01T00:00:00Z")
    assert validate_record("cert:site", kept)[0].expires_at == "2031-01-01T00:00:00Z"

    wrong = msgspec_replace(record, domains=("b.example.com",))
    with pytest.raises(ConfigError) as info_err:
        validate_record("cert:site", wrong)
    assert info_err.value.key == "cert:site"
    assert info_err.value.field == "domains"


def msgspec_replace(record: CertRecord, **changes: Any) -> CertRecord:
    import msgspec

    return msgspec.structs.replace(record, **changes)


# ---------------------------------------------------------------------------
# generate_self_signed
# ---------------------------------------------------------------------------


def test_self_signed_validates_for_its_own_name() -> None:
    before = datetime.datetime.now(UTC)
    chain, key = generate_self_signed("Edge-Default.example", 30, 2048)
    info = validate_material(chain, key, ["edge-default.example"])
    assert info.san == ("edge-default.example",)
    assert info.subject == "CN=edge-default.example"
    assert info.subject == info.issuer
    assert info.key_type == "RSA-2048"
    # valid from one hour ago, for the requested number of days
    assert abs((before - info.not_before) - datetime.timedelta(hours=1)) < datetime.timedelta(
        minutes=1
    )
    assert abs((info.not_after - before) - datetime.timedelta(days=30)) < datetime.timedelta(
        minutes=1
    )
    assert key.startswith("-----BEGIN PRIVATE KEY-----")


def test_self_signed_serials_are_random() -> None:
    first = _leaf(generate_self_signed("a.example", 1, 2048)[0]).serial_number
    second = _leaf(generate_self_signed("a.example", 1, 2048)[0]).serial_number
    assert first != second
    assert first.bit_length() > 64


@pytest.mark.parametrize(
    ("cn", "days", "bits"),
    [("bad name", 30, 2048), ("a.example", 0, 2048), ("a.example", 30, 1024)],
)
def test_self_signed_rejects_bad_parameters(cn: str, days: int, bits: int) -> None:
    with pytest.raises(ValueError):
        generate_self_signed(cn, days, bits)
