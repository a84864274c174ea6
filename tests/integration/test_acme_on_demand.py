"""On-demand TLS: the first handshake for a name under a wildcard proxy waits for its
certificate (issued by a real Pebble), behind the gates: ON_DEMAND_TLS, a matching proxy,
the allowlist and the cluster's hourly budget."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from tests.acme_helpers import acme_env, served_chain, verify_with_root
from tests.helpers import EdgeProcess, Upstream, free_port, proxy_doc, wait_for
from tests.pebble import Pebble

pytestmark = pytest.mark.timeout(120)

WILDCARD = "*.apps.example.test"


def start(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    rdb: redis.Redis,
    upstream: Upstream,
    **env: Any,
) -> tuple[Pebble, EdgeProcess, int]:
    http_port, https_port = free_port(), free_port()
    pebble = pebble_factory(http_port=http_port)
    rdb.set(f"proxy:{WILDCARD}", proxy_doc(WILDCARD, upstream.url))
    settings = {"ON_DEMAND_TLS": "true", "ON_DEMAND_TLS_WAIT": "20", **env}
    edge = edge_factory(
        HTTP_PORT=http_port,
        HTTPS_PORT=https_port,
        **acme_env(pebble.directory_url, str(pebble.ca_bundle_path), **settings),
    )
    return pebble, edge, https_port


def subject_names(port: int, name: str) -> list[str]:
    chain = served_chain(port, name)
    assert chain, "no certificate served"
    from cryptography import x509

    san = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(n) for n in san.get_values_for_type(x509.DNSName)]


def test_first_handshake_waits_for_its_certificate(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    pebble, _edge, https_port = start(pebble_factory, edge_factory, rdb, upstream)
    root = pebble.write_root(tmp_path / "root.pem")
    started = time.monotonic()
    # the very first connection gets the issued certificate, not the default one
    out = verify_with_root(https_port, "one.apps.example.test", root)
    took = time.monotonic() - started
    assert "Verify return code: 0 (ok)" in out, out
    assert took < 20
    status = json.loads(rdb.get("cert:status:proxy-one-apps-example-test"))
    assert status["status"] == "active"
    assert status["reason"] == "on-demand"
    assert status["domains"] == ["one.apps.example.test"]
    # the next handshake reads memory only: no new order, same certificate
    assert subject_names(https_port, "one.apps.example.test") == ["one.apps.example.test"]


def test_gates_budget_allowlist_and_unmatched_names(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    pebble, edge, https_port = start(
        pebble_factory, edge_factory, rdb, upstream, ON_DEMAND_TLS_MAX_PER_HOUR="1"
    )
    root = pebble.write_root(tmp_path / "root.pem")
    # a name no proxy matches: the default certificate at once, nothing asked
    assert subject_names(https_port, "other.example.test") == ["localhost"]
    assert rdb.get("cert:status:proxy-other-example-test") is None
    # the allowlist, once it exists, must list the name (or its parent's wildcard)
    rdb.sadd("acme:on-demand:allowlist", "allowed.apps.example.test")
    assert subject_names(https_port, "denied.apps.example.test") == ["localhost"]
    assert rdb.get("cert:status:proxy-denied-apps-example-test") is None
    out = verify_with_root(https_port, "allowed.apps.example.test", root)
    assert "Verify return code: 0 (ok)" in out, out
    # the budget (1 per hour for the whole cluster) is spent now
    rdb.sadd("acme:on-demand:allowlist", "*.apps.example.test")
    assert subject_names(https_port, "late.apps.example.test") == ["localhost"]
    assert rdb.get("cert:status:proxy-late-apps-example-test") is None
    wait_for(lambda: "ON_DEMAND_TLS_MAX_PER_HOUR reached" in edge.stderr_path.read_text())


def test_stored_certificate_is_used_before_any_gate(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    rdb: redis.Redis,
    upstream: Upstream,
    ca: trustme.CA,
) -> None:
    leaf = ca.issue_cert("stored.apps.example.test")
    rdb.set(
        "cert:stored",
        json.dumps(
            {
                "cert_name": "stored",
                "domains": ["stored.apps.example.test"],
                "fullchain_pem": "".join(b.bytes().decode() for b in leaf.cert_chain_pems),
                "private_key_pem": leaf.private_key_pem.bytes().decode(),
            }
        ),
    )
    # a budget of zero: any gate asked would refuse
    _pebble, edge, https_port = start(
        pebble_factory, edge_factory, rdb, upstream, ON_DEMAND_TLS_MAX_PER_HOUR="0"
    )
    assert subject_names(https_port, "stored.apps.example.test") == ["stored.apps.example.test"]
    assert rdb.get("cert:status:proxy-stored-apps-example-test") is None
    assert "on-demand certificate refused" not in edge.stderr_path.read_text()


def test_off_by_default(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    rdb: redis.Redis,
    upstream: Upstream,
) -> None:
    _pebble, _edge, https_port = start(
        pebble_factory, edge_factory, rdb, upstream, ON_DEMAND_TLS="false"
    )
    assert subject_names(https_port, "quiet.apps.example.test") == ["localhost"]
    time.sleep(1.5)  # an order would have been asked for by now
    assert rdb.get("cert:status:proxy-quiet-apps-example-test") is None


def test_behind_haproxy_the_proxy_tls_listener_waits_too(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    proxy_tls_port = free_port()
    pebble, _edge, _https = start(
        pebble_factory, edge_factory, rdb, upstream, PROXY_PROTOCOL_TLS_PORT=proxy_tls_port
    )
    context = ssl.create_default_context(cafile=str(pebble.write_root(tmp_path / "root.pem")))
    name = "lb.apps.example.test"
    with socket.create_connection(("127.0.0.1", proxy_tls_port), timeout=20) as raw:
        # what HAProxy's send-proxy writes before the client's ClientHello
        raw.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
        with context.wrap_socket(raw, server_hostname=name) as tls:
            cert = tls.getpeercert()
    assert ("DNS", name) in cert["subjectAltName"]
