"""The pure parts of ACME: which names may be ordered, renewal times, the ARI certID."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge.certs.acme.order import (
    MAX_DOMAINS,
    OrderRefused,
    can_order,
    check_domains,
    proxy_cert_name,
)
from edge.certs.acme.protocol import cert_id
from edge.certs.acme.renewal import by_lifetime, in_window


def test_names_are_lowercased_and_kept_in_order() -> None:
    assert check_domains(["WWW.Example.com", "api.example.com."]) == (
        "www.example.com",
        "api.example.com",
    )


@pytest.mark.parametrize(
    ("domains", "words"),
    [
        ([], "at least one"),
        (["*.example.com"], "wildcard"),
        (["192.0.2.1"], "IP address"),
        (["2001:db8::1"], "IP address"),
        (["localhost"], "fully qualified"),
        (["bad_name.example.com"], "label"),
        (["a.example.com", "A.example.com"], "listed twice"),
        ([f"n{i}.example.com" for i in range(MAX_DOMAINS + 1)], "at most 100"),
        (["münchen.example"], "punycode"),
    ],
)
def test_refused_names_name_the_field(domains: list[str], words: str) -> None:
    with pytest.raises(OrderRefused) as info:
        check_domains(domains, field="domains")
    assert info.value.field == "domains"
    assert info.value.status == 400
    assert words in info.value.public_message


def test_a_hundred_names_are_allowed() -> None:
    assert len(check_domains([f"n{i}.example.com" for i in range(MAX_DOMAINS)])) == MAX_DOMAINS


@pytest.mark.parametrize(
    ("host", "orderable"),
    [
        ("app.example.com", True),
        ("localhost", False),
        ("dev.localhost", False),
        ("printer.local", False),
        ("10.0.0.1", False),
        ("*.example.com", False),
        ("intranet", False),
    ],
)
def test_automatic_https_skips_names_no_public_ca_issues(host: str, orderable: bool) -> None:
    assert can_order(host) is orderable


def test_proxy_certificate_name() -> None:
    assert proxy_cert_name("app.example.com") == "proxy-app-example-com"


START = datetime(2026, 1, 1, tzinfo=UTC)


def test_renewal_by_threshold_or_two_thirds_of_the_lifetime() -> None:
    # whichever comes first of 30 days before expiry and two thirds of the lifetime:
    # 45 days -> day 15 (the threshold); 90 days -> day 60 (both)
    short = by_lifetime(
        START, START + timedelta(days=45), timedelta(days=30), timedelta(0), random.Random(1)
    )
    assert START + timedelta(days=15) - timedelta(hours=12) <= short <= START + timedelta(days=15)
    six = by_lifetime(
        START, START + timedelta(days=6), timedelta(days=30), timedelta(0), random.Random(1)
    )
    # the threshold is longer than the lifetime: the start, but never before min_age
    assert six == START
    lived = by_lifetime(
        START, START + timedelta(days=6), timedelta(days=30), timedelta(hours=1), random.Random(1)
    )
    assert lived == START + timedelta(hours=1)
    long = by_lifetime(
        START, START + timedelta(days=90), timedelta(days=30), timedelta(0), random.Random(1)
    )
    assert START + timedelta(days=60) - timedelta(hours=12) <= long <= START + timedelta(days=60)


def test_renewal_jitter_spreads_a_fleet_earlier_never_later() -> None:
    times = {
        by_lifetime(
            START, START + timedelta(days=90), timedelta(days=30), timedelta(0), random.Random(seed)
        )
        for seed in range(50)
    }
    assert len(times) == 50
    assert max(times) <= START + timedelta(days=60)
    assert min(times) >= START + timedelta(days=60) - timedelta(hours=12)


def test_ari_time_inside_the_window() -> None:
    end = START + timedelta(days=2)
    for seed in range(20):
        chosen = in_window(START, end, random.Random(seed))
        assert START <= chosen <= end


def _cert_with(aki: bytes, serial: int) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.example.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(START)
        .not_valid_after(START + timedelta(days=1))
        .add_extension(x509.AuthorityKeyIdentifier(aki, None, None), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_ari_cert_id_is_rfc_9773s_example() -> None:
    # RFC 9773 section 4.1: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:DE:
    # 01:C8:D4 and serial 0x87654321 (DER 00 87 65 43 21: the high bit needs a zero byte)
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert cert_id(_cert_with(aki, 0x87654321)) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_two_thirds_comes_first_for_a_long_threshold_on_a_mid_lifetime() -> None:
    # 60 days with a 10-day threshold: two thirds (day 40) before day 50
    due = by_lifetime(
        START, START + timedelta(days=60), timedelta(days=10), timedelta(0), random.Random(3)
    )
    assert START + timedelta(days=40) - timedelta(hours=12) <= due <= START + timedelta(days=40)
