"""The Pebble harness on its own: certbot's ``acme`` client gets a certificate from a real
Pebble, directly and through AcmeFront (counting, renewal info, injected rate limits),
with HTTP-01 answered by a small server of the test."""

from __future__ import annotations

import base64
import datetime
import functools
import http.client
import json
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from acme import challenges, client, crypto_util, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store
from josepy.json_util import field
from josepy.jwk import JWKRSA

from tests.helpers import free_port
from tests.pebble import AcmeFront, Pebble

T = TypeVar("T")
NAMES = ["a.example.test", "b.example.test"]
CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


class ChallengeServer:
    """Answers ``/.well-known/acme-challenge/{token}`` from ``tokens`` on 127.0.0.1."""

    def __init__(self, port: int) -> None:
        self.tokens: dict[str, str] = {}
        self.hits: list[str] = []
        tokens, hits = self.tokens, self.hits

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                token = self.path.removeprefix(CHALLENGE_PREFIX)
                answer = tokens.get(token) if self.path.startswith(CHALLENGE_PREFIX) else None
                body = (answer or "not found").encode()
                self.send_response(200 if answer else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def challenge_server() -> Iterator[ChallengeServer]:
    server = ChallengeServer(free_port())
    yield server
    server.close()


def retry_bad_nonce(call: Callable[[], T], attempts: int = 4) -> T:
    """``call()`` again after a badNonce: Pebble refuses 5% of good nonces and the acme
    client retries only once."""
    for _ in range(attempts - 1):
        try:
            return call()
        except messages.Error as exc:
            if exc.code != "badNonce":
                raise
    return call()


def acme_client(directory_url: str, ca_bundle: str) -> client.ClientV2:
    key = JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    net = client.ClientNetwork(key, verify_ssl=True, user_agent="edge-tests")
    # ClientNetwork passes verify=self.verify_ssl with every request, which overrides
    # session.verify: the CA bundle has to go there (requests takes a path for verify)
    net.verify_ssl = ca_bundle  # type: ignore[assignment]
    directory = retry_bad_nonce(lambda: client.ClientV2.get_directory(directory_url, net))
    acme = client.ClientV2(directory, net)
    registration = messages.NewRegistration.from_data(
        email="tests@example.test", terms_of_service_agreed=True
    )
    account = retry_bad_nonce(lambda: acme.new_account(registration))
    assert account.body.status == "valid"
    return acme


def issue(acme: client.ClientV2, server: ChallengeServer, names: list[str]) -> str:
    """A certificate for ``names`` through HTTP-01: its full chain (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    csr = crypto_util.make_csr(key_pem, names)
    order = retry_bad_nonce(lambda: acme.new_order(csr))
    for authz in order.authorizations:
        if authz.body.status == messages.STATUS_VALID:
            continue  # Pebble reuses a valid authorization half the time
        challb = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = challb.response_and_validation(acme.net.key)
        server.tokens[challb.chall.encode("token")] = validation
        answer = functools.partial(acme.answer_challenge, challb, response)
        retry_bad_nonce(answer)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=20)
    done = retry_bad_nonce(lambda: acme.poll_and_finalize(order, deadline))
    assert done.fullchain_pem is not None
    return str(done.fullchain_pem)


def check_chain(fullchain_pem: str, root_pem: str, names: list[str]) -> x509.Certificate:
    """The leaf, after checking it chains to ``root_pem`` for each name."""
    leaf, *intermediates = x509.load_pem_x509_certificates(fullchain_pem.encode())
    root = x509.load_pem_x509_certificate(root_pem.encode())
    store = Store([root])
    for name in names:
        verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name))
        verifier.verify(leaf, intermediates)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    return leaf


def cert_id(cert: x509.Certificate) -> str:
    """The RFC 9773 section 4.1 certID: base64url(AKI keyIdentifier).base64url(serial)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big")

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    return f"{b64(aki.key_identifier)}.{b64(serial)}"


class OrderReplacing(messages.NewOrder):
    """newOrder with RFC 9773's ``replaces`` (the acme library's NewOrder has no field)."""

    replaces: str | None = field("replaces", omitempty=True)


def test_issues_directly_from_pebble(
    pebble_factory: Callable[..., Pebble], challenge_server: ChallengeServer
) -> None:
    pebble = pebble_factory(http_port=challenge_server.server.server_port)
    acme = acme_client(pebble.directory_url, str(pebble.ca_bundle_path))
    fullchain = issue(acme, challenge_server, NAMES)
    check_chain(fullchain, pebble.root_pem(), NAMES)
    assert challenge_server.hits, "Pebble validated HTTP-01 against the test's server"
    assert "Pebble" in pebble.logs()


def test_restart_keeps_ports_and_makes_a_new_ca(
    pebble_factory: Callable[..., Pebble], challenge_server: ChallengeServer
) -> None:
    pebble = pebble_factory(http_port=challenge_server.server.server_port)
    root, url = pebble.root_pem(), pebble.directory_url
    pebble.restart()
    assert pebble.directory_url == url
    assert pebble.root_pem() != root
    pebble.stop()
    with pytest.raises(OSError):
        pebble.root_pem()
    pebble.start()
    acme = acme_client(pebble.directory_url, str(pebble.ca_bundle_path))
    check_chain(issue(acme, challenge_server, NAMES[:1]), pebble.root_pem(), NAMES[:1])


def test_issues_through_the_front(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    challenge_server: ChallengeServer,
) -> None:
    pebble = pebble_factory(http_port=challenge_server.server.server_port)
    front = acme_front_factory(pebble)
    acme = acme_client(front.directory_url, str(front.ca_bundle_path))
    assert acme.directory["newOrder"].startswith(front.base_url)
    assert "renewalInfo" not in acme.directory.to_partial_json()
    fullchain = issue(acme, challenge_server, NAMES)
    check_chain(fullchain, pebble.root_pem(), NAMES)
    assert front.count("newOrder") == 1
    assert front.count("newAccount") == 1
    assert front.count("finalize") == 1
    assert front.count("authz") >= 2
    assert front.count("other") == 0, front.requests
    assert front.replaces == [None] * len(front.of_kind("newOrder"))
    # every request reached Pebble and was answered
    assert all(r.status is not None and r.status < 500 for r in front.requests)


def test_renewal_info_and_replaces_through_the_front(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    challenge_server: ChallengeServer,
) -> None:
    pebble = pebble_factory(http_port=challenge_server.server.server_port)
    front = acme_front_factory(pebble, renewal_info=True)
    acme = acme_client(front.directory_url, str(front.ca_bundle_path))
    assert acme.directory["renewalInfo"] == front.renewal_info_url
    fullchain = issue(acme, challenge_server, NAMES[:1])
    leaf = check_chain(fullchain, pebble.root_pem(), NAMES[:1])

    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    start, end = now + datetime.timedelta(days=1), now + datetime.timedelta(days=2)
    front.set_renewal_window(start, end, retry_after=3600)
    renew_at, ask_again = acme.renewal_time(fullchain.encode())
    assert renew_at is not None and start <= renew_at <= end
    # the acme library gives the next poll as naive local time
    assert abs((ask_again - datetime.datetime.now()).total_seconds() - 3600) < 60
    assert front.renewal_info_cert_ids == [cert_id(leaf)]
    assert front.count("renewalInfo") == 1

    # a replacing order: Pebble 2.4.0 ignores the field, the front records it. Posted
    # with ClientNetwork.post (ClientV2 has no call for it), which needs new_nonce_url as
    # ClientV2._post gives it: without it, a retry after badNonce (its nonce pool is then
    # empty) asks for a nonce with HEAD on the newOrder URL, which Pebble answers 405
    # without a Replay-Nonce (MissingNonce). The front answers badNonce once to go there.
    order = OrderReplacing(
        identifiers=[messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=NAMES[0])],
        replaces=cert_id(leaf),
    )
    front.fail_next(
        "newOrder",
        status=400,
        problem_type="urn:ietf:params:acme:error:badNonce",
        detail="nonce refused (test)",
        retry_after=None,
    )
    nonces = front.count("newNonce")
    new_order, new_nonce = acme.directory["newOrder"], acme.directory["newNonce"]
    retry_bad_nonce(lambda: acme.net.post(new_order, order, new_nonce_url=new_nonce))
    assert front.replaces[0] is None
    assert front.replaces[-1] == cert_id(leaf)
    assert front.count("newNonce") > nonces  # the retry's nonce came from newNonce
    assert {r.method for r in front.of_kind("newOrder")} == {"POST"}


def test_injected_rate_limit_on_new_order(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    challenge_server: ChallengeServer,
) -> None:
    pebble = pebble_factory(http_port=challenge_server.server.server_port)
    front = acme_front_factory(pebble)
    acme = acme_client(front.directory_url, str(front.ca_bundle_path))
    front.fail_new_order(times=2, retry_after=120)
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    csr = crypto_util.make_csr(key_pem, NAMES[:1])
    for _ in range(2):
        with pytest.raises(messages.Error) as failed:
            acme.new_order(csr)
        assert failed.value.code == "rateLimited"
    assert front.count("newOrder") == 2
    assert [r.status for r in front.of_kind("newOrder")] == [429, 429]
    t0 = time.time()
    check_chain(issue(acme, challenge_server, NAMES[:1]), pebble.root_pem(), NAMES[:1])
    assert front.count("newOrder") == 3
    assert all(r.at >= t0 for r in front.of_kind("newOrder")[2:])


def test_injected_failure_answer(
    pebble_factory: Callable[..., Pebble], acme_front_factory: Callable[..., AcmeFront]
) -> None:
    pebble = pebble_factory(http_port=free_port())
    front = acme_front_factory(pebble)
    context = ssl.create_default_context(cafile=str(front.ca_bundle_path))
    with urllib.request.urlopen(front.directory_url, context=context) as resp:
        new_order = json.loads(resp.read())["newOrder"]
    front.fail_new_order(retry_after=77)
    post = urllib.request.Request(new_order, data=b"{}", method="POST")
    post.add_header("Content-Type", "application/jose+json")
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(post, context=context)
    assert failed.value.code == 429
    assert failed.value.headers["Retry-After"] == "77"
    assert failed.value.headers["Content-Type"] == "application/problem+json"
    assert failed.value.headers["Replay-Nonce"]
    assert json.loads(failed.value.read())["type"] == "urn:ietf:params:acme:error:rateLimited"
    # only the next one: the one after reaches Pebble, which refuses the bad JWS itself
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, context=context)
    assert refused.value.code == 400
    assert [r.status for r in front.of_kind("newOrder")] == [429, 400]


def test_stopped_front_cuts_kept_alive_connections(
    pebble_factory: Callable[..., Pebble], acme_front_factory: Callable[..., AcmeFront]
) -> None:
    pebble = pebble_factory(http_port=free_port())
    front = acme_front_factory(pebble)
    context = ssl.create_default_context(cafile=str(front.ca_bundle_path))
    conn = http.client.HTTPSConnection("127.0.0.1", front.port, timeout=5, context=context)
    conn.request("GET", "/dir")
    assert conn.getresponse().read()
    front.stop()
    with pytest.raises((OSError, http.client.HTTPException)):
        conn.request("GET", "/dir")
        conn.getresponse().read()
    conn.close()


def test_head_through_the_front_on_one_kept_alive_connection(
    pebble_factory: Callable[..., Pebble], acme_front_factory: Callable[..., AcmeFront]
) -> None:
    """HEAD answers carry no body, so requests after them on the same connection get their
    own answers; a HEAD on a POST-only URL gets Pebble's 405 (no Replay-Nonce)."""
    pebble = pebble_factory(http_port=free_port())
    front = acme_front_factory(pebble)
    context = ssl.create_default_context(cafile=str(front.ca_bundle_path))
    conn = http.client.HTTPSConnection("127.0.0.1", front.port, timeout=5, context=context)
    conn.request("GET", "/dir")
    directory = json.loads(conn.getresponse().read())
    new_nonce = urllib.parse.urlsplit(directory["newNonce"]).path
    new_order = urllib.parse.urlsplit(directory["newOrder"]).path
    for _ in range(3):
        conn.request("HEAD", new_nonce)
        nonce = conn.getresponse()
        assert nonce.read() == b""
        assert nonce.status == 200 and nonce.getheader("Replay-Nonce")
        assert len(nonce.headers.get_all("Date") or []) == 1
        conn.request("HEAD", new_order)
        refused = conn.getresponse()
        assert refused.read() == b""
        assert refused.status == 405 and refused.getheader("Allow") == "POST"
        assert refused.getheader("Replay-Nonce") is None
        conn.request("GET", "/dir")
        again = conn.getresponse()
        assert again.status == 200 and json.loads(again.read()) == directory
    conn.close()
    assert [r.kind for r in front.requests[:4]] == [
        "directory",
        "newNonce",
        "newOrder",
        "directory",
    ]
