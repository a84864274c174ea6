"""SNI selection, the context factory and session resumption over real TLS handshakes.

The server side runs exactly like production: ``asyncio.start_server(ssl=listener)``, so
the handshake is an ``ssl.SSLObject`` over memory BIOs driven by the loop's SSL protocol,
under uvloop and under the default asyncio loop (in a thread, so that blocking Python
``ssl`` clients -- which can offer a saved session -- and ``openssl s_client`` can talk to
it).  A test fails if the loop's exception handler is ever called.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import uvloop

from edge.tls.contexts import ALPN_PROTOCOLS, listener_context, server_context
from edge.tls.material import CertInfo, MaterialError, validate_material
from edge.tls.selfsigned import generate_self_signed
from edge.tls.sni import (
    CertIndex,
    SelectedCert,
    make_sni_callback,
    requested_server_name,
    selected_cert,
)
from tests.helpers import encrypted_key_pem

# an exception escaping the SNI callback would be "unraisable": make it fail the test
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")

TLS12 = ssl.TLSVersion.TLSv1_2
TLS13 = ssl.TLSVersion.TLSv1_3

# ---------------------------------------------------------------------------
# certificates
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cert:
    name: str
    chain: str
    key: str
    der: bytes
    domains: tuple[str, ...]
    info: CertInfo


def _cert(name: str, chain: str, key: str, domains: tuple[str, ...]) -> Cert:
    der = ssl.PEM_cert_to_DER_cert(chain)
    return Cert(name, chain, key, der, domains, validate_material(chain, key, domains))


def _trustme_cert(ca: trustme.CA, name: str, *domains: str) -> Cert:
    leaf = ca.issue_cert(*domains, common_name=domains[0])
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    return _cert(name, chain, leaf.private_key_pem.bytes().decode(), domains)


@dataclasses.dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    a: Cert
    b: Cert
    w: Cert
    default: Cert

    def by_der(self, der: bytes) -> str:
        for cert in (self.a, self.b, self.w, self.default):
            if cert.der == der:
                return cert.name
        raise AssertionError("the server presented a certificate we did not configure")


@pytest.fixture(scope="module")
def certs() -> Certs:
    ca = trustme.CA()
    chain, key = generate_self_signed("edge-default.invalid", 30, 2048)
    return Certs(
        ca=ca,
        a=_trustme_cert(ca, "a", "a.test"),
        b=_trustme_cert(ca, "b", "b.test"),
        w=_trustme_cert(ca, "w", "*.w.test"),
        default=_cert("default", chain, key, ("edge-default.invalid",)),
    )


def _index(certs: Certs, **contexts: ssl.SSLContext) -> CertIndex:
    entries = {
        cert.name: (contexts[cert.name], cert.domains, cert.info)
        for cert in (certs.a, certs.b, certs.w)
    }
    return CertIndex(entries, {"a.test": "a"})


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Seen:
    """What the server's HTTP layer would see on the accepted connection."""

    server_name: str | None
    selected: SelectedCert | None
    context: ssl.SSLContext
    alpn: str | None
    version: str | None
    reused: bool


class Edge:
    """A TLS listener built like the edge's, with settings the test may change."""

    def __init__(self, certs: Certs, loop_name: str) -> None:
        self.certs = certs
        self.contexts = {
            cert.name: server_context(cert.chain, cert.key)
            for cert in (certs.a, certs.b, certs.w, certs.default)
        }
        self.index = _index(certs, **self.contexts)
        self.default: ssl.SSLContext | None = self.contexts["default"]
        self.strict = False
        self.get_index: Callable[[], CertIndex] = lambda: self.index
        self.is_strict: Callable[[], bool] = lambda: self.strict
        callback = make_sni_callback(
            lambda: self.get_index(), lambda: self.default, lambda: self.is_strict()
        )
        self.listener = listener_context(callback)
        self.seen: dict[int, Seen] = {}
        self.loop_errors: list[dict[str, Any]] = []
        self.loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda _loop, context: self.loop_errors.append(context))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._call(
            asyncio.start_server(
                self._handle, "127.0.0.1", 0, ssl=self.listener, ssl_handshake_timeout=10
            )
        )
        self.port: int = self.server.sockets[0].getsockname()[1]

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        self.seen[writer.get_extra_info("peername")[1]] = Seen(
            server_name=requested_server_name(ssl_object),
            selected=selected_cert(ssl_object),
            context=ssl_object.context,
            alpn=ssl_object.selected_alpn_protocol(),
            version=ssl_object.version(),
            reused=ssl_object.session_reused,
        )
        writer.write(b"ok")
        with contextlib.suppress(OSError):
            await writer.drain()
            writer.close()
            await writer.wait_closed()

    def name_of(self, context: ssl.SSLContext) -> str:
        return next(name for name, ctx in self.contexts.items() if ctx is context)

    async def _close(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    def close(self) -> None:
        self._call(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(params=["uvloop", "asyncio"])
def edge(request: pytest.FixtureRequest, certs: Certs) -> Iterator[Edge]:
    server = Edge(certs, request.param)
    yield server
    server.close()
    assert server.loop_errors == []


# ---------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    cert: str
    alpn: str | None
    version: str | None
    reused: bool
    session: ssl.SSLSession | None
    seen: Seen


class Client:
    """A Python ``ssl`` client; it keeps one context so that it can offer sessions."""

    def __init__(
        self,
        edge: Edge,
        *,
        version: ssl.TLSVersion | None = None,
        verify: bool = False,
        alpn: tuple[str, ...] = ("http/1.1",),
    ) -> None:
        self.edge = edge
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if verify:
            edge.certs.ca.configure_trust(self.ctx)
        else:
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE
        if version is not None:
            self.ctx.minimum_version = self.ctx.maximum_version = version
        if alpn:
            self.ctx.set_alpn_protocols(list(alpn))

    def connect(self, server_name: str | None, session: ssl.SSLSession | None = None) -> Result:
        with socket.create_connection(("127.0.0.1", self.edge.port), timeout=10) as raw:
            with self.ctx.wrap_socket(raw, server_hostname=server_name, session=session) as tls:
                port = tls.getsockname()[1]
                data = b""
                while chunk := tls.recv(100):  # to EOF: TLS 1.3 tickets arrive after the handshake
                    data += chunk
                assert data == b"ok"
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                return Result(
                    cert=self.edge.certs.by_der(der),
                    alpn=tls.selected_alpn_protocol(),
                    version=tls.version(),
                    reused=bool(tls.session_reused),
                    session=tls.session,
                    seen=self.edge.seen[port],
                )


def memory_handshake(
    listener: ssl.SSLContext, client_ctx: ssl.SSLContext, server_name: str | None
) -> tuple[ssl.SSLError | None, ssl.SSLError | None]:
    """Run one handshake between two SSLObjects over memory BIOs, no loop, no socket.

    Returns (client error, server error).  Unlike the loop's SSL protocol -- which closes
    the transport on a failed handshake without sending what OpenSSL queued -- this
    delivers the server's alert, so a test can see which alert the callback chose.
    """
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname=server_name)
    server = listener.wrap_bio(to_server, to_client, server_side=True)
    errors: dict[str, ssl.SSLError | None] = {"client": None, "server": None}
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if done[side] or errors[side] is not None:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                errors[side] = exc
        if all(done[side] or errors[side] is not None for side in done):
            break
    return errors["client"], errors["server"]


# ---------------------------------------------------------------------------
# CertIndex (no network)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_contexts(certs: Certs) -> dict[str, ssl.SSLContext]:
    return {
        name: server_context(cert.chain, cert.key)
        for name, cert in (("a", certs.a), ("b", certs.b), ("w", certs.w))
    }


@pytest.mark.parametrize(
    ("server_name", "expected"),
    [
        ("a.test", "a"),
        ("A.TEST", "a"),
        ("a.test.", "a"),
        ("b.test", "b"),
        ("x.w.test", "w"),
        ("X.W.Test.", "w"),
        ("w.test", None),
        ("y.x.w.test", None),
        ("a.test..", None),
        ("unknown.test", None),
        ("test", None),
        ("", None),
        (".", None),
        (None, None),
    ],
)
def test_select(
    certs: Certs,
    index_contexts: dict[str, ssl.SSLContext],
    server_name: str | None,
    expected: str | None,
) -> None:
    index = _index(certs, **index_contexts)
    chosen = index.select(server_name)
    assert chosen is (index_contexts[expected] if expected else None)


def test_exact_name_beats_wildcard(certs: Certs) -> None:
    exact = _trustme_cert(certs.ca, "exact", "x.w.test")
    contexts = {"w": server_context(certs.w.chain, certs.w.key)}
    contexts["exact"] = server_context(exact.chain, exact.key)
    index = CertIndex(
        {
            "w": (contexts["w"], certs.w.domains, certs.w.info),
            "exact": (contexts["exact"], exact.domains, exact.info),
        }
    )
    assert index.select("x.w.test") is contexts["exact"]
    assert index.select("y.w.test") is contexts["w"]


def test_domain_map_wins_and_bad_entries_are_recorded(
    certs: Certs, index_contexts: dict[str, ssl.SSLContext]
) -> None:
    both = _trustme_cert(certs.ca, "both", "a.test", "b.test")
    ctx_both = server_context(both.chain, both.key)
    index = CertIndex(
        {
            "a": (index_contexts["a"], certs.a.domains, certs.a.info),
            "both": (ctx_both, both.domains, both.info),
        },
        {"A.test": "a", "ghost.test": "missing", "c.test": "a"},
    )
    assert index.select("a.test") is index_contexts["a"]  # cert:domain: wins over domains
    assert index.select("b.test") is ctx_both
    assert index.select("ghost.test") is None
    assert index.select("c.test") is None
    assert index.hosts == ("a.test", "b.test")
    assert len(index.problems) == 2
    assert any("'missing' is not loaded" in p for p in index.problems)
    assert any("'a' does not cover c.test" in p for p in index.problems)


def test_latest_expiry_wins_without_a_domain_map(certs: Certs) -> None:
    soon = certs.ca.issue_cert(
        "a.test", not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5)
    )
    chain = "".join(blob.bytes().decode() for blob in soon.cert_chain_pems)
    old = _cert("old", chain, soon.private_key_pem.bytes().decode(), ("a.test",))
    ctx_old = server_context(old.chain, old.key)
    ctx_new = server_context(certs.a.chain, certs.a.key)
    index = CertIndex(
        {
            "old": (ctx_old, old.domains, old.info),
            "new": (ctx_new, certs.a.domains, certs.a.info),
        }
    )
    assert index.select("a.test") is ctx_new


def test_covers_and_selected(certs: Certs, index_contexts: dict[str, ssl.SSLContext]) -> None:
    index = _index(certs, **index_contexts)
    assert index.covers(index_contexts["a"], "a.test")
    assert index.covers("a", "A.Test.")
    assert not index.covers(index_contexts["a"], "b.test")
    assert index.covers("w", "x.w.test")
    assert not index.covers("w", "w.test")
    assert not index.covers("w", "y.x.w.test")
    assert not index.covers("nope", "a.test")
    assert not index.covers(server_context(certs.a.chain, certs.a.key), "a.test")  # not indexed
    assert index.selected(index_contexts["w"]) == SelectedCert("w", frozenset({"*.w.test"}))
    assert index.info("a") is certs.a.info
    assert len(index) == 3


def test_nothing_recorded_reads_as_none() -> None:
    ssl_object = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_bio(
        ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True
    )
    assert requested_server_name(ssl_object) is None
    assert selected_cert(ssl_object) is None
    assert requested_server_name(None) is None


def test_index_is_immutable(certs: Certs, index_contexts: dict[str, ssl.SSLContext]) -> None:
    index = _index(certs, **index_contexts)
    with pytest.raises(AttributeError):
        index.problems = ()
    assert len(CertIndex()) == 0
    assert CertIndex().select("a.test") is None


# ---------------------------------------------------------------------------
# the factory
# ---------------------------------------------------------------------------


def test_profile(certs: Certs) -> None:
    ctx = server_context(certs.a.chain, certs.a.key)
    assert ctx.minimum_version is TLS12
    assert ctx.maximum_version is TLS13
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert ctx.options & ssl.OP_NO_TICKET
    assert ctx.num_tickets == 0
    assert ctx.verify_mode is ssl.CERT_NONE
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    }
    assert ALPN_PROTOCOLS == ("http/1.1",)


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_factory_loads_keys_from_memory_only(certs: Certs, monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[tuple[str, int]] = []
    real = os.memfd_create

    def spy(name: str, flags: int = os.MFD_CLOEXEC) -> int:
        fd = real(name, flags)
        created.append((name, fd))
        return fd

    monkeypatch.setattr(os, "memfd_create", spy)
    before = _open_fds()
    server_context(certs.default.chain, certs.default.key)
    assert [name for name, _ in created] == ["edge-tls-chain", "edge-tls-key"]
    assert _open_fds() <= before  # every memfd is closed again


def test_factory_without_memfd_refuses_clearly(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create")
    with pytest.raises(MaterialError, match="memfd_create is unavailable"):
        server_context(certs.a.chain, certs.a.key)


def test_factory_reports_bad_material_without_the_key(certs: Certs) -> None:
    with pytest.raises(MaterialError, match="OpenSSL refused") as info:
        server_context(certs.a.chain, certs.b.key)
    assert certs.b.key.splitlines()[1] not in str(info.value)
    with pytest.raises(MaterialError):
        server_context("garbage", certs.a.key)


def test_factory_never_prompts_for_an_encrypted_key(certs: Certs) -> None:
    encrypted = encrypted_key_pem(certs.a.key)
    with pytest.raises(MaterialError, match="encrypted"):
        server_context(certs.a.chain, encrypted)


# ---------------------------------------------------------------------------
# handshakes
# ---------------------------------------------------------------------------


def test_exact_name_picks_its_certificate_with_alpn(edge: Edge) -> None:
    result = Client(edge, verify=True).connect("a.test")  # the client checks name and chain
    assert result.cert == "a"
    assert result.alpn == "http/1.1"  # still negotiated after the switch
    assert result.seen.alpn == "http/1.1"
    assert result.seen.server_name == "a.test"
    assert result.seen.selected == SelectedCert("a", frozenset({"a.test"}))
    assert result.seen.context is edge.contexts["a"]
    assert result.seen.selected.covers("a.test")
    assert not result.seen.selected.covers("b.test")


def test_wildcard_picks_the_wildcard_certificate(edge: Edge) -> None:
    result = Client(edge, verify=True).connect("x.w.test")
    assert result.cert == "w"
    assert result.seen.server_name == "x.w.test"
    assert result.seen.selected is not None and result.seen.selected.covers("x.w.test")
    assert Client(edge).connect("y.x.w.test").cert == "default"  # one label only


@pytest.mark.parametrize("sent", ["A.TEST", "a.test.", "A.Test."])
def test_sni_is_case_insensitive_and_ignores_a_trailing_dot(edge: Edge, sent: str) -> None:
    result = Client(edge).connect(sent)
    assert result.cert == "a"
    assert result.seen.server_name == "a.test"
    assert result.alpn == "http/1.1"


def test_unknown_name_gets_the_default_certificate(edge: Edge) -> None:
    result = Client(edge).connect("unknown.test")
    assert result.cert == "default"
    assert result.alpn == "http/1.1"
    assert result.seen.server_name == "unknown.test"
    assert result.seen.selected is None


def test_missing_sni_gets_the_default_certificate(edge: Edge) -> None:
    result = Client(edge).connect(None)
    assert result.cert == "default"
    assert result.seen.server_name is None
    assert result.seen.selected is None


def _refused(edge: Edge, server_name: str | None, alert: str, **client: Any) -> None:
    """The handshake fails for a real client, and the server's alert is ``alert``.

    Over the loop's SSL protocol the client sees the connection closed (asyncio and uvloop
    drop the alert OpenSSL queued); the memory handshake shows the alert itself.
    """
    seen = dict(edge.seen)
    with pytest.raises(ssl.SSLError):
        Client(edge, **client).connect(server_name)
    assert edge.seen == seen  # nothing reached the HTTP layer
    client_error, server_error = memory_handshake(
        edge.listener, Client(edge, **client).ctx, server_name
    )
    assert server_error is not None
    assert client_error is not None and alert in str(client_error).lower()


def test_strict_mode_refuses_unknown_and_missing_names(edge: Edge) -> None:
    edge.strict = True
    _refused(edge, "unknown.test", "unrecognized name")
    _refused(edge, None, "unrecognized name")
    assert Client(edge).connect("a.test").cert == "a"  # known names still work


def test_no_default_certificate_refuses_unknown_names(edge: Edge) -> None:
    edge.default = None
    _refused(edge, "unknown.test", "unrecognized name")
    assert Client(edge).connect("b.test").cert == "b"


@pytest.mark.parametrize("version", [TLS12, TLS13])
def test_tls12_and_tls13_are_accepted(edge: Edge, version: ssl.TLSVersion) -> None:
    result = Client(edge, version=version, verify=True).connect("b.test")
    assert result.cert == "b"
    expected = "TLSv1.2" if version is TLS12 else "TLSv1.3"
    assert result.version == result.seen.version == expected
    assert result.alpn == "http/1.1"


def test_tls11_is_refused(edge: Edge) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ssl.TLSVersion.TLSv1_1
        client = Client(edge, version=ssl.TLSVersion.TLSv1_1)
    client.ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    seen = dict(edge.seen)
    with pytest.raises(ssl.SSLError):
        client.connect("a.test")
    assert edge.seen == seen
    client_error, _ = memory_handshake(edge.listener, client.ctx, "a.test")
    assert client_error is not None and "protocol version" in str(client_error).lower()


def test_alpn_is_http11_whatever_the_client_prefers(edge: Edge) -> None:
    result = Client(edge, alpn=("h2", "http/1.1")).connect("x.w.test")
    assert result.alpn == "http/1.1"
    assert Client(edge, alpn=()).connect("x.w.test").alpn is None


# ---------------------------------------------------------------------------
# session resumption
# ---------------------------------------------------------------------------


def test_tls12_resumes_within_one_certificate(edge: Edge) -> None:
    client = Client(edge, version=TLS12)
    first = client.connect("a.test")
    again = client.connect("a.test", first.session)
    assert again.reused and again.seen.reused
    assert again.cert == "a"
    assert again.seen.context is edge.contexts["a"]
    assert again.alpn == "http/1.1"


def test_tls13_does_not_resume_at_all(edge: Edge) -> None:
    # num_tickets = 0: OpenSSL resumes TLS 1.3 only from tickets, and tickets would cross
    # certificates (test_tls13_tickets_would_cross_certificates)
    client = Client(edge, version=TLS13)
    first = client.connect("a.test")
    again = client.connect("a.test", first.session)
    assert not again.reused and again.cert == "a"


@pytest.mark.parametrize("version", [TLS12, TLS13])
@pytest.mark.parametrize(("origin", "target"), [("a.test", "b.test"), ("x.w.test", "a.test")])
def test_resumption_never_crosses_certificates(
    edge: Edge, version: ssl.TLSVersion, origin: str, target: str
) -> None:
    client = Client(edge, version=version)
    first = client.connect(origin)
    crossed = client.connect(target, first.session)
    # whatever OpenSSL decides, the certificate the client holds is the one the server
    # selected: never a session of one certificate on a connection switched to another
    assert crossed.cert == edge.name_of(crossed.seen.context)
    if version is TLS13:
        assert not crossed.reused  # the factory's num_tickets = 0
    if crossed.reused:
        assert crossed.seen.reused
        assert crossed.cert == first.cert
        assert crossed.seen.selected is not None
        assert not crossed.seen.selected.covers(target)  # -> the HTTP layer answers 421
    else:
        assert crossed.seen.context is edge.index.select(target)


def test_tls12_resumption_is_pinned_to_the_sessions_name(edge: Edge) -> None:
    """What OpenSSL 3 does: the SNI callback of a resumed TLS 1.2 handshake is given the
    name stored in the session, not the one the client sent, so it re-selects the session's
    own certificate -- the connection is (and is recorded as) a connection to a.test."""
    client = Client(edge, version=TLS12)
    first = client.connect("a.test")
    crossed = client.connect("b.test", first.session)
    assert crossed.reused
    assert crossed.cert == "a"
    assert crossed.seen.server_name == "a.test"
    assert crossed.seen.context is edge.contexts["a"]
    # a session made without SNI stays with the default certificate
    anonymous = client.connect(None)
    again = client.connect("b.test", anonymous.session)
    assert again.reused and again.cert == "default" and again.seen.selected is None


def test_tls13_tickets_would_cross_certificates(edge: Edge) -> None:
    """Why the factory turns tickets off: with OpenSSL's defaults a TLS 1.3 ticket from
    a.test resumes a handshake whose SNI callback switched to b.test's certificate."""
    edge.listener.options &= ~ssl.OP_NO_TICKET
    edge.listener.num_tickets = 2
    client = Client(edge, version=TLS13)
    first = client.connect("a.test")
    crossed = client.connect("b.test", first.session)
    assert crossed.reused
    assert crossed.seen.context is edge.contexts["b"]  # the server switched to cert B...
    assert crossed.cert == "a"  # ...while the client resumed its session with cert A


# ---------------------------------------------------------------------------
# robustness
# ---------------------------------------------------------------------------


def test_callback_survives_an_internal_error(edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> CertIndex:
        raise RuntimeError("index exploded")

    edge.get_index = broken
    with caplog.at_level(logging.ERROR, logger="edge.tls"):
        result = Client(edge).connect("a.test")
    assert result.cert == "default"  # fell back instead of aborting the handshake
    assert result.seen.selected is None
    assert any("SNI selection failed" in r.getMessage() for r in caplog.records)

    edge.strict = True
    _refused(edge, "a.test", "unrecognized name")

    edge.get_index = lambda: edge.index
    assert Client(edge).connect("a.test").cert == "a"  # the listener still works


def test_callback_survives_broken_settings(edge: Edge, caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> bool:
        raise RuntimeError("settings exploded")

    edge.is_strict = broken
    with caplog.at_level(logging.ERROR, logger="edge.tls"):
        _refused(edge, "unknown.test", "internal error")
        assert Client(edge).connect("a.test").cert == "a"
    assert any("fallback failed" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------
# openssl s_client
# ---------------------------------------------------------------------------


def _s_client(edge: Edge, tmp_path: Path, *args: str) -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    ca_file = tmp_path / "ca.pem"
    edge.certs.ca.cert_pem.write_to_path(str(ca_file))
    proc = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{edge.port}", "-CAfile", str(ca_file),
         "-alpn", "h2,http/1.1", *args],
        input=b"",
        capture_output=True,
        timeout=20,
        check=False,
    )  # fmt: skip
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def test_openssl_s_client(edge: Edge, tmp_path: Path) -> None:
    out = _s_client(edge, tmp_path, "-servername", "a.test", "-verify_hostname", "a.test")
    assert re.search(r"(?m)^subject=.*CN = a\.test$", out)
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: http/1.1" in out

    out = _s_client(edge, tmp_path, "-servername", "Q.W.TEST", "-verify_hostname", "q.w.test")
    assert re.search(r"(?m)^subject=.*CN = \*\.w\.test$", out)
    assert "Verify return code: 0 (ok)" in out

    out = _s_client(edge, tmp_path, "-servername", "nobody.test")
    assert re.search(r"(?m)^subject=CN = edge-default\.invalid$", out)

    edge.strict = True
    out = _s_client(edge, tmp_path, "-servername", "nobody.test")
    assert "no peer certificate available" in out  # refused (the alert is lost, see _refused)
