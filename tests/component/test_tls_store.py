"""The TLS store in-process: certificate records installed through config snapshots, the
listener context's SNI callback choosing among them in real TLS handshakes.

Each handshake is a real one between two ``ssl.SSLObject`` over memory BIOs, the server
side wrapped by the store's own listener context (exactly what the loop's TLS transport
does with it), the client trusting the test's trustme CA; no socket. Records reach the
store as the config watcher hands them over: ``cert:`` documents applied to a
``Snapshot``, then ``TlsStore.update``. The default certificate comes from a real
redis-server, where ``load_default`` finds it.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import pytest
import trustme

from edge.config.snapshot import Snapshot, apply
from edge.health import Verdict
from edge.settings import RedisTarget, load_settings
from edge.store.client import redis_client
from edge.tls.sni import requested_server_name, selected_cert
from edge.tls.store import DEFAULT_CERT_KEY, TlsStore
from tests.helpers import RedisServer

# an exception escaping the SNI callback would be "unraisable": make it fail the test
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@dataclass(frozen=True)
class Leaf:
    chain: str
    key: str
    der: bytes


def issue(ca: trustme.CA, *domains: str) -> Leaf:
    leaf = ca.issue_cert(*domains)
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return Leaf(chain, leaf.private_key_pem.bytes().decode(), der)


def record(name: str, leaf: Leaf, *domains: str, key: str | None = None) -> dict[str, bytes]:
    doc = {
        "cert_name": name,
        "domains": list(domains),
        "fullchain_pem": leaf.chain,
        "private_key_pem": key or leaf.key,
    }
    return {f"cert:{name}": json.dumps(doc).encode()}


@dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    app: Leaf
    app_renewed: Leaf
    wild: Leaf
    default: Leaf


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = trustme.CA()
    return Certs(
        ca,
        issue(ca, "app.test"),
        issue(ca, "app.test"),
        issue(ca, "*.wild.test"),
        issue(ca, "localhost"),  # the default certificate's SELF_SIGNED_CN
    )


@dataclass
class Handshake:
    server: ssl.SSLObject  # what HttpConnection gets as ``tls``
    presented: bytes  # the certificate the client was given (DER)


def handshake(listener: ssl.SSLContext, ca: trustme.CA, server_name: str | None) -> Handshake:
    """A whole TLS handshake over memory BIOs, bytes pumped by hand until both are done;
    a refused one raises the ``SSLError`` the client sees."""
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client_context.check_hostname = False  # the test names the certificate it expects
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_name)
    server = listener.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    if obj is server:  # the client reads the alert the server sent
                        client_in.write(server_out.read())
                        client.do_handshake()
                    raise
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            break
    assert all(done.values()), done
    presented = client.getpeercert(binary_form=True)
    assert presented is not None
    return Handshake(server, presented)


class Tls:
    """A worker's TLS store and the snapshots it is handed."""

    def __init__(self, certs: Certs, strict: bool = False) -> None:
        self.certs = certs
        self.store = TlsStore(load_settings({}, tls_strict_sni=strict))
        self.snapshot = Snapshot()

    async def install(self, updates: Mapping[str, bytes | None]) -> Snapshot:
        self.snapshot = apply(self.snapshot, updates)
        self.store.update(self.snapshot)
        await self.store.settled()
        return self.snapshot

    def handshake(self, server_name: str | None) -> Handshake:
        return handshake(self.store.listener, self.certs.ca, server_name)

    def presents(self, server_name: str | None) -> bytes:
        return self.handshake(server_name).presented


async def with_default(found: Tls, certs: Certs, redis_db: RedisServer) -> Tls:
    """``found`` with the default certificate shared through Redis: ``load_default`` finds
    it there and generates nothing."""
    default = {"cn": "localhost", "fullchain_pem": certs.default.chain}
    default["private_key_pem"] = certs.default.key
    redis_db.client().set(DEFAULT_CERT_KEY, json.dumps(default))
    client = redis_client(RedisTarget(redis_db.url))
    try:
        await found.store.load_default(client)
    finally:
        await client.aclose()
    return found


@pytest.fixture
async def tls(certs: Certs, redis_db: RedisServer) -> Tls:
    return await with_default(Tls(certs), certs, redis_db)


async def test_sni_chooses_the_exact_then_the_wildcard_then_the_default(
    tls: Tls, certs: Certs
) -> None:
    await tls.install(
        record("app", certs.app, "app.test") | record("wild", certs.wild, "*.wild.test")
    )
    exact = tls.handshake("app.test")
    assert exact.presented == certs.app.der
    chosen = selected_cert(exact.server)
    assert chosen is not None and chosen.name == "app"
    assert requested_server_name(exact.server) == "app.test"
    assert tls.presents("APP.test.") == certs.app.der  # case and one trailing dot aside
    assert tls.presents("a.wild.test") == certs.wild.der
    # a wildcard covers one label only
    for name in ("wild.test", "b.a.wild.test", "unknown.test", None):
        assert tls.presents(name) == certs.default.der, name
    # what a request on each connection may ask for (else 421)
    assert tls.store.covers(exact.server, "app.test")
    assert not tls.store.covers(exact.server, "a.wild.test")
    default = tls.handshake("unknown.test").server
    assert selected_cert(default) is None
    assert tls.store.covers(default, "unknown.test")
    assert not tls.store.covers(default, "app.test")  # it has its own: ask by name
    health = tls.store.health()
    assert (health["certificates"], health["hosts"], health["rejected"]) == (2, 2, {})
    assert health["default"]["cn"] == "localhost"


async def test_strict_sni_refuses_a_name_it_has_no_certificate_for(
    certs: Certs, redis_db: RedisServer
) -> None:
    strict = await with_default(Tls(certs, strict=True), certs, redis_db)
    assert strict.store.default is not None  # there, and not served
    await strict.install(record("app", certs.app, "app.test"))
    assert strict.presents("app.test") == certs.app.der
    for name in ("unknown.test", None):
        with pytest.raises(ssl.SSLError, match="TLSV1_UNRECOGNIZED_NAME"):
            strict.handshake(name)


async def test_a_broken_record_is_reported_while_the_last_good_one_serves(
    tls: Tls, certs: Certs
) -> None:
    await tls.install(record("app", certs.app, "app.test"))
    assert tls.store.health_report().verdict is Verdict.OK
    # material that does not hold together: refused where the context is built
    await tls.install(record("app", certs.app_renewed, "app.test", key=certs.wild.key))
    problem = tls.store.health()["rejected"]["app"]
    assert problem.startswith("cert:app") and "key" in problem
    assert tls.store.health_report().verdict is Verdict.DEGRADED
    assert tls.presents("app.test") == certs.app.der
    # a document that does not decode: the snapshot keeps the last good record
    snap = await tls.install({"cert:app": b'{"cert_name": "app"'})
    assert "cert:app" in snap.rejected
    assert tls.store.health()["rejected"] == {"app": snap.rejected["cert:app"]}
    assert tls.presents("app.test") == certs.app.der
    # fixed: the new certificate serves and nothing is reported
    await tls.install(record("app", certs.app_renewed, "app.test"))
    assert tls.presents("app.test") == certs.app_renewed.der
    assert tls.store.health()["rejected"] == {}
    assert tls.store.health_report().verdict is Verdict.OK
    # deleted: the host falls back to the default certificate
    await tls.install({"cert:app": None})
    assert tls.presents("app.test") == certs.default.der
    assert tls.store.health()["certificates"] == 0


async def test_a_record_that_never_loaded_is_not_served(tls: Tls, certs: Certs) -> None:
    await tls.install(record("app", certs.app, "app.test", "other.test"))
    assert "other.test" in tls.store.health()["rejected"]["app"]
    assert tls.presents("app.test") == certs.default.der


async def test_a_domain_key_maps_a_host_to_a_certificate_that_covers_it(
    tls: Tls, certs: Certs
) -> None:
    await tls.install(
        record("wild", certs.wild, "*.wild.test")
        | {"cert:domain:api.wild.test": b"wild", "cert:domain:app.test": b"wild"}
    )
    assert tls.presents("api.wild.test") == certs.wild.der
    # a mapping to a certificate that does not cover the host is skipped and reported
    assert tls.presents("app.test") == certs.default.der
    [problem] = tls.store.health()["mapping_problems"]
    assert "does not cover app.test" in problem
