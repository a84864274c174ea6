"""Certificates nobody asks for by hand: automatic HTTPS for proxies, renewal when a
certificate ages, and renewal in the window the CA's renewal information (RFC 9773)
suggests. A real Pebble (behind AcmeFront, which counts what the edge sends and stands in
for renewal information) validates HTTP-01 on the edge's own HTTP_PORT."""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.acme_helpers import acme_env, assert_served, served_chain, wait_status
from tests.api_client import call, ok, sha256
from tests.helpers import EdgeProcess, Upstream, free_port, proxy_doc, wait_for
from tests.integration.test_acme_api import ari_id, leaf_of, record, replaces_sent, stored
from tests.pebble import AcmeFront, Pebble

pytestmark = pytest.mark.timeout(120)

EdgeFactory = Callable[..., EdgeProcess]
UTC = datetime.UTC


@dataclass
class Site:
    edge: EdgeProcess
    pebble: Pebble
    front: AcmeFront
    https_port: int
    root: Path


def start_site(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    tmp_path: Path,
    *,
    pebble_options: dict[str, Any] | None = None,
    renewal_info: bool = False,
    before_start: Callable[[AcmeFront], None] | None = None,
    **env: Any,
) -> Site:
    """Pebble, an AcmeFront before it, and an edge ordering through the front."""
    http_port, https_port = free_port(), free_port()
    pebble = pebble_factory(http_port=http_port, **(pebble_options or {}))
    front = acme_front_factory(pebble, renewal_info=renewal_info)
    if before_start is not None:
        before_start(front)
    edge = edge_factory(
        HTTP_PORT=http_port,
        HTTPS_PORT=https_port,
        ADMIN_TOKEN=admin,
        **acme_env(front.directory_url, str(pebble.ca_bundle_path), **env),
    )
    return Site(edge, pebble, front, https_port, pebble.write_root(tmp_path / "root.pem"))


def orders_taken(front: AcmeFront) -> int:
    """newOrders the CA took or the front refused on purpose (not badNonce retries)."""
    return len(replaces_sent(front))


def verifying_context(root: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(root))
    context.set_alpn_protocols(["http/1.1"])
    return context


def tls_connection(port: int, host: str, context: ssl.SSLContext) -> http.client.HTTPSConnection:
    """HTTPS to 127.0.0.1:``port`` with ``host`` as SNI and verified name, connected."""
    conn = http.client.HTTPSConnection(host, port, timeout=5, context=context)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn.sock = context.wrap_socket(raw, server_hostname=host)
    return conn


def https_get(port: int, host: str, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    conn = tls_connection(port, host, context)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ---------------------------------------------------------------------------- automatic HTTPS


def test_a_proxy_written_to_redis_gets_its_certificate_and_others_get_none(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    upstream: Upstream,
    ca: trustme.CA,
    tmp_path: Path,
) -> None:
    site = start_site(
        pebble_factory,
        acme_front_factory,
        edge_factory,
        admin,
        tmp_path,
        AUTO_HTTPS="true",
        CONFIG_RESYNC_INTERVAL="30",
    )
    # a certificate imported for one name: its proxy needs no order
    leaf = ca.issue_cert("covered.example.test")
    rdb.set(
        "cert:imported",
        json.dumps(
            {
                "cert_name": "imported",
                "domains": ["covered.example.test"],
                "fullchain_pem": "".join(b.bytes().decode() for b in leaf.cert_chain_pems),
                "private_key_pem": leaf.private_key_pem.bytes().decode(),
            }
        ),
    )
    for host in ("covered.example.test", "localhost", "127.0.0.5", "app.localhost"):
        rdb.set(f"proxy:{host}", proxy_doc(host, upstream.url))
    rdb.set("proxy:plain.example.test", proxy_doc("plain.example.test", upstream.url,
                                                  enable_https=False))  # fmt: skip
    site.edge.wait_generation(lambda h: h["proxies"] == 5)
    # as an operator would with redis-cli SET
    rdb.set("proxy:app.example.test", proxy_doc("app.example.test", upstream.url))

    status = wait_status(rdb, "proxy-app-example-test", timeout=30)
    assert status["domains"] == ["app.example.test"]
    assert status["reason"] == "automatic"
    assert status["email"] == "ops@example.test"  # ADMIN_EMAIL
    assert status["owner_token_hash"] is None
    doc = record(rdb, "proxy-app-example-test")
    assert doc["domains"] == ["app.example.test"]
    assert doc["acme_directory_url"] == site.front.directory_url
    assert_served(site.https_port, "app.example.test", site.root)
    got = https_get(site.https_port, "app.example.test", "/hello", verifying_context(site.root))
    assert got[0] == 200 and json.loads(got[1])["path"] == "/hello"

    time.sleep(2)  # two more rounds of the ACME service: still nothing for the others
    assert orders_taken(site.front) == 1
    assert sorted(rdb.scan_iter("cert:status:*")) == [b"cert:status:proxy-app-example-test"]
    assert rdb.zrange("edge:acme:queue", 0, -1) == [b"proxy-app-example-test"]
    assert sorted(k for k in rdb.scan_iter("cert:*") if b":domain:" not in k) == [
        b"cert:imported",
        b"cert:proxy-app-example-test",
        b"cert:status:proxy-app-example-test",
    ]
    assert site.edge.stderr().count('"certificate requested for a proxy"') == 1


def test_a_proxy_made_by_a_token_with_a_cert_email_uses_that_email(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    site = start_site(
        pebble_factory, acme_front_factory, edge_factory, admin, tmp_path, AUTO_HTTPS="true"
    )
    port = site.edge.api_port
    made = call(
        port, "POST", "/api/v1/tokens", admin, {"name": "team", "cert_email": "team@example.test"}
    )
    team = ok(made, 201)["token"]
    body = {"hostname": "team.example.test", "target_url": upstream.url}
    assert ok(call(port, "POST", "/api/v1/proxy/targets", team, body), 201)["enable_https"] is True

    status = wait_status(rdb, "proxy-team-example-test", timeout=30)
    assert status["email"] == "team@example.test"
    assert status["owner_token_hash"] == sha256(team)
    doc = record(rdb, "proxy-team-example-test")
    assert doc["email"] == "team@example.test"
    assert doc["owner_token_hash"] == sha256(team)
    # the CA account the order used is the one registered with that address
    accounts = [stored(rdb, k.decode()) for k in rdb.scan_iter("edge:acme:account:*")]
    assert [a["email"] for a in accounts if isinstance(a, dict) and "email" in a] == [
        "team@example.test"
    ]
    assert_served(site.https_port, "team.example.test", site.root)
    # the owner sees its certificate's status through the API
    assert (
        ok(call(port, "GET", "/api/v1/certificates/proxy-team-example-test/status", team))["email"]
        == "team@example.test"
    )


# ---------------------------------------------------------------------------- renewal by age


@pytest.mark.timeout(150)
def test_an_aging_certificate_is_renewed_under_load_and_no_request_fails(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    # one-hour certificates, renewed 30 days before expiry: due as soon as they are
    # RENEWAL_MIN_AGE (3 s) old
    site = start_site(
        pebble_factory,
        acme_front_factory,
        edge_factory,
        admin,
        tmp_path,
        pebble_options={"cert_validity": 3600},
        AUTO_HTTPS="true",
        RENEWAL_THRESHOLD_DAYS="30",
        RENEWAL_MIN_AGE="3",
        RENEWAL_CHECK_INTERVAL="1",
    )
    host = "load.example.test"
    rdb.set(f"proxy:{host}", proxy_doc(host, upstream.url))
    wait_status(rdb, "proxy-load-example-test", timeout=30)
    assert_served(site.https_port, host, site.root)
    first = leaf_of(record(rdb, "proxy-load-example-test"))
    lifetime = first.not_valid_after_utc - first.not_valid_before_utc
    assert lifetime <= datetime.timedelta(hours=1, seconds=1)

    context = verifying_context(site.root)
    stop = threading.Event()
    lock = threading.Lock()
    failures: list[str] = []
    seen: set[int] = set()
    done = [0]

    def client(worker: int) -> None:
        round_ = 0
        while not stop.is_set():
            round_ += 1
            conn = tls_connection(site.https_port, host, context)
            assert isinstance(conn.sock, ssl.SSLSocket)
            der = conn.sock.getpeercert(binary_form=True)
            assert der is not None
            serial = x509.load_der_x509_certificate(der).serial_number
            try:
                for i in range(10):  # keep-alive: ten requests on each connection
                    path = f"/load/{worker}/{round_}/{i}"
                    conn.request("GET", path, headers={"Host": host})
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status != 200 or json.loads(body)["path"] != path:
                        raise AssertionError(f"{path}: {resp.status} {body[:200]!r}")
                    with lock:
                        done[0] += 1
                        seen.add(serial)
            except Exception as exc:
                with lock:
                    failures.append(f"worker {worker} round {round_}: {exc!r}")
            finally:
                conn.close()

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(3)]
    for thread in threads:
        thread.start()
    served: list[int] = [first.serial_number]
    try:
        deadline = time.monotonic() + 40
        while len(served) < 3 and time.monotonic() < deadline:
            chain = served_chain(site.https_port, host)
            if chain and chain[0].serial_number != served[-1]:
                served.append(chain[0].serial_number)
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert len(served) >= 3, served  # openssl s_client saw two renewals
    assert done[0] > 50, done[0]
    assert len(seen) >= 2, seen  # the load ran across a renewal
    # renewed by age (no renewal information from this CA), each replacing the last
    renewal = stored(rdb, "edge:acme:renewal:proxy-load-example-test")
    assert renewal["source"] == "lifetime"
    sent = replaces_sent(site.front)
    assert sent[0] is None and all(r is not None for r in sent[1:])


# ---------------------------------------------------------------------------- ARI


def window_of(doc: dict[str, Any]) -> tuple[float, float]:
    start, end = (datetime.datetime.fromisoformat(t).timestamp() for t in doc["window"])
    return start, end


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@pytest.mark.timeout(90)
def test_renewal_information_renews_inside_the_suggested_window(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    now = datetime.datetime.now(UTC)
    far = (now + datetime.timedelta(days=30), now + datetime.timedelta(days=31))

    def far_for_all(front: AcmeFront) -> None:
        front.set_renewal_window(*far, retry_after=1)

    site = start_site(
        pebble_factory,
        acme_front_factory,
        edge_factory,
        admin,
        tmp_path,
        renewal_info=True,
        before_start=far_for_all,
        RENEWAL_CHECK_INTERVAL="1",
        RENEWAL_MIN_AGE="1",
    )
    port = site.edge.api_port
    body = {"cert_name": "ari", "domain": "ari.example.test"}
    ok(call(port, "POST", "/api/v1/certificates/", admin, body), 202)
    wait_status(rdb, "ari")
    first = leaf_of(record(rdb, "ari"))
    old_id = ari_id(first)

    # the CA's answer is taken: a time in the far window
    def chosen() -> dict[str, Any] | None:
        doc = stored(rdb, "edge:acme:renewal:ari")
        ok_ = doc and doc["source"] == "ari" and doc["fingerprint"] == fingerprint(first)
        return doc if ok_ else None

    doc = wait_for(chosen, timeout=10)
    assert far[0].timestamp() - 1 <= doc["renew_at"] <= far[1].timestamp()

    # now the CA wants this certificate replaced within the next few seconds
    start = datetime.datetime.now(UTC).replace(microsecond=0)
    end = start + datetime.timedelta(seconds=6)
    site.front.set_renewal_window(start, end, retry_after=1, cert_id=old_id)
    schedules: list[dict[str, Any]] = []

    def renewed() -> x509.Certificate | None:
        doc = stored(rdb, "edge:acme:renewal:ari")
        if (
            doc
            and doc["fingerprint"] == fingerprint(first)
            and (not schedules or schedules[-1] != doc)
        ):
            schedules.append(doc)
        leaf = leaf_of(record(rdb, "ari"))
        return leaf if leaf.serial_number != first.serial_number else None

    second = wait_for(renewed, timeout=30, interval=0.05)
    near = [d for d in schedules if window_of(d)[0] == start.timestamp()]
    assert near, schedules
    assert near[-1]["source"] == "ari"
    assert start.timestamp() <= near[-1]["renew_at"] <= end.timestamp()
    # the new order went out inside the window (the queue is looked at every second)
    orders = [r for r in site.front.of_kind("newOrder")
              if r.problem != "urn:ietf:params:acme:error:badNonce"]  # fmt: skip
    assert len(orders) == 2
    assert start.timestamp() <= orders[1].at <= end.timestamp() + 1.5
    # it named the certificate it replaces, by the identifier renewal info used
    assert replaces_sent(site.front) == [None, old_id]
    assert old_id in site.front.renewal_info_cert_ids
    wait_status(rdb, "ari")
    assert_served(site.https_port, "ari.example.test", site.root)
    wait_for(lambda: served_chain(site.https_port, "ari.example.test")[0] == second, timeout=10)
    # and the new certificate is scheduled by the CA's (far) window for it
    doc = wait_for(
        lambda: (
            (d := stored(rdb, "edge:acme:renewal:ari"))
            and d["fingerprint"] == fingerprint(second)
            and d["source"] == "ari"
            and d
        ),
        timeout=10,
    )
    assert far[0].timestamp() - 1 <= doc["renew_at"] <= far[1].timestamp()


@pytest.mark.timeout(90)
def test_a_window_far_ahead_renews_nothing_now_and_is_where_the_renewal_time_lies(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    start, end = now + datetime.timedelta(days=20), now + datetime.timedelta(days=21)

    def window(front: AcmeFront) -> None:
        front.set_renewal_window(start, end, retry_after=1)

    site = start_site(
        pebble_factory,
        acme_front_factory,
        edge_factory,
        admin,
        tmp_path,
        renewal_info=True,
        before_start=window,
        RENEWAL_CHECK_INTERVAL="1",
        RENEWAL_MIN_AGE="1",
    )
    port = site.edge.api_port
    body = {"cert_name": "later", "domain": "later.example.test"}
    ok(call(port, "POST", "/api/v1/certificates/", admin, body), 202)
    wait_status(rdb, "later")
    first = leaf_of(record(rdb, "later"))

    asked = len(site.front.renewal_info_cert_ids)
    time.sleep(4)  # four renewal checks
    assert len(site.front.renewal_info_cert_ids) > asked  # asked again after Retry-After
    assert set(site.front.renewal_info_cert_ids) == {ari_id(first)}
    assert orders_taken(site.front) == 1
    assert leaf_of(record(rdb, "later")).serial_number == first.serial_number

    doc = stored(rdb, "edge:acme:renewal:later")
    assert doc["source"] == "ari"
    assert doc["fingerprint"] == fingerprint(first)
    assert window_of(doc) == (start.timestamp(), end.timestamp())
    assert start.timestamp() <= doc["renew_at"] <= end.timestamp()
    assert rdb.zscore("edge:acme:queue", "later") == pytest.approx(doc["renew_at"])
    status = ok(call(port, "GET", "/api/v1/certificates/later/status", admin))
    renew_at = datetime.datetime.fromisoformat(status["renew_at"]).timestamp()
    assert start.timestamp() <= renew_at <= end.timestamp()
