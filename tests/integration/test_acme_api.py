"""The certificate issuance API as a client sees it, against a real Pebble: multi-domain
orders served by the TLS listener, refused requests that write nothing, who sees which
order, cancelling, renewing, and the HTTP-01 responder on the plain listener.

Pebble validates HTTP-01 on the edge's own HTTP_PORT (pebble-challtestsrv resolves every
name to 127.0.0.1); AcmeFront, where used, sits between the edge and Pebble to count what
the edge sends and to refuse orders."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from cryptography import x509

from tests.acme_helpers import acme_env, assert_served, served_chain, wait_status
from tests.api_client import assert_error, call, new_token, ok, sha256
from tests.helpers import EdgeProcess, Upstream, free_port, proxy_doc, wait_for
from tests.pebble import AcmeFront, Pebble

pytestmark = pytest.mark.timeout(120)

C = "/api/v1/certificates"
EdgeFactory = Callable[..., EdgeProcess]
PROGRESSION = ["pending", "validating", "issuing", "active"]


@dataclass
class Site:
    """An edge issuing from a Pebble (through ``front`` when there is one)."""

    edge: EdgeProcess
    pebble: Pebble
    front: AcmeFront | None
    https_port: int
    root: Path


def start_site(
    pebble_factory: Callable[..., Pebble],
    edge_factory: EdgeFactory,
    admin: str,
    tmp_path: Path,
    *,
    acme_front_factory: Callable[..., AcmeFront] | None = None,
    **env: Any,
) -> Site:
    http_port, https_port = free_port(), free_port()
    pebble = pebble_factory(http_port=http_port)
    front = acme_front_factory(pebble) if acme_front_factory is not None else None
    directory = front.directory_url if front is not None else pebble.directory_url
    edge = edge_factory(
        HTTP_PORT=http_port,
        HTTPS_PORT=https_port,
        ADMIN_TOKEN=admin,
        **acme_env(directory, str(pebble.ca_bundle_path), **env),
    )
    return Site(edge, pebble, front, https_port, pebble.write_root(tmp_path / "root.pem"))


def stored(rdb: redis.Redis, key: str) -> Any:
    """The JSON value of ``key`` (None when absent)."""
    raw = rdb.get(key)
    return None if raw is None else json.loads(raw)


def record(rdb: redis.Redis, name: str) -> dict[str, Any]:
    raw = rdb.get(f"cert:{name}")
    assert raw is not None, f"no cert:{name}"
    doc = json.loads(raw)
    assert isinstance(doc, dict)
    return doc


def leaf_of(doc: dict[str, Any]) -> x509.Certificate:
    return x509.load_pem_x509_certificates(doc["fullchain_pem"].encode())[0]


def ari_id(cert: x509.Certificate) -> str:
    """RFC 9773 section 4.1: base64url(AKI keyIdentifier) "." base64url(serial's DER
    INTEGER content octets)."""
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier is not None
    serial = cert.serial_number
    content = serial.to_bytes(serial.bit_length() // 8 + 1, "big")  # leading 0 keeps it positive

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(aki.key_identifier)}.{b64(content)}"


def replaces_sent(front: AcmeFront) -> list[str | None]:
    """The ``replaces`` of each newOrder the CA took (Pebble refuses 5% of nonces on
    purpose; the client sends a refused request again)."""
    replaces = front.replaces
    # read second: a newOrder is listed before its payload, so none is missing here
    orders = front.of_kind("newOrder")[: len(replaces)]
    bad_nonce = "urn:ietf:params:acme:error:badNonce"
    return [r for r, o in zip(replaces, orders, strict=True) if o.problem != bad_nonce]


def acme_keys(rdb: redis.Redis) -> dict[str, list[bytes]]:
    """What an order would have written: status documents, queue entries, leases,
    renewal schedules, certificate records."""
    return {
        "status": sorted(rdb.scan_iter("cert:status:*")),
        "queue": list(rdb.zrange("edge:acme:queue", 0, -1)),
        "acme": sorted(rdb.scan_iter("edge:acme:*")),
        "certs": sorted(k for k in rdb.scan_iter("cert:*") if not k.startswith(b"cert:status:")),
    }


NOTHING: dict[str, list[bytes]] = {"status": [], "queue": [], "acme": [], "certs": []}


class StatusWatch(threading.Thread):
    """The successive states ``GET .../{name}/status`` answers, polled until stopped."""

    def __init__(self, port: int, token: str, name: str) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.name = port, token, name
        self.states: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            answer = call(self.port, "GET", f"{C}/{self.name}/status", self.token)
            if answer.status == 200:
                state = answer.doc["status"]
                if not self.states or self.states[-1] != state:
                    self.states.append(state)
                if state in ("active", "failed"):
                    return
            time.sleep(0.01)


# ---------------------------------------------------------------------------- issuance


def test_multi_domain_certificate_is_served_for_every_name_and_owned_by_the_caller(
    pebble_factory: Callable[..., Pebble],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    site = start_site(pebble_factory, edge_factory, admin, tmp_path)
    port = site.edge.api_port
    names = ["www.example.test", "api.example.test", "static.example.test"]
    watch = StatusWatch(port, admin, "multi")
    watch.start()
    answer = call(
        port, "POST", f"{C}/multi-domain", admin, {"cert_name": "multi", "domains": names}
    )
    accepted = ok(answer, 202)
    assert accepted["status"] == "pending"
    assert accepted["domains"] == names
    assert accepted["owner_token_hash"] == sha256(admin)
    assert accepted["email"] == "ops@example.test"  # ADMIN_EMAIL: the admin token has none

    wait_status(rdb, "multi")
    watch.join(30)
    assert watch.states[-1] == "active", watch.states
    # the states seen follow the order's progression (polling may miss short ones)
    assert [PROGRESSION.index(s) for s in watch.states] == sorted(
        PROGRESSION.index(s) for s in watch.states
    ), watch.states

    doc = record(rdb, "multi")
    assert doc["domains"] == names
    assert doc["status"] == "active"
    assert doc["acme_directory_url"] == site.pebble.directory_url
    leaf = leaf_of(doc)
    assert datetime.fromisoformat(doc["expires_at"]) == leaf.not_valid_after_utc
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(names)
    # the owner is the caller's token, as the token index and the token API name it
    owner = doc["owner_token_hash"]
    assert owner == sha256(admin)
    assert rdb.get(f"token:hash:{owner}") == b"admin"
    assert ok(call(port, "GET", "/api/v1/tokens/info", admin))["hash"] == owner

    status = ok(call(port, "GET", f"{C}/multi/status", admin))
    assert status["status"] == "active"
    assert status["domains"] == names
    assert status["expires_at"] == doc["expires_at"]
    assert status["owner_token_hash"] == owner
    assert status["error"] is None

    # the name is taken now: a second create is refused, the record left alone
    again = {"cert_name": "multi", "domains": ["other.example.test"]}
    assert_error(call(port, "POST", f"{C}/multi-domain", admin, again), 409, "certificate_exists")
    assert record(rdb, "multi") == doc

    intermediate = x509.load_pem_x509_certificate(site.pebble.intermediate_pem().encode())
    for name in names:
        assert_served(site.https_port, name, site.root)
        chain = served_chain(site.https_port, name)
        assert chain[0] == leaf
        assert chain[1:] == [intermediate]


# ---------------------------------------------------------------------------- refusals

BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("multi-domain", {"cert_name": "w", "domains": ["*.example.test"]}, "domains"),
    ("multi-domain", {"cert_name": "w", "domains": ["bad_name!.test"]}, "domains"),
    ("multi-domain", {"cert_name": "w", "domains": ["a.example.test", "A.example.test."]},
     "domains"),
    ("multi-domain", {"cert_name": "w", "domains": [f"n{i}.example.test" for i in range(101)]},
     "domains"),
    ("multi-domain", {"cert_name": "w", "domains": []}, "domains"),
    ("multi-domain", {"cert_name": "w", "domains": ["192.0.2.7"]}, "domains"),
    ("multi-domain", {"cert_name": "w", "domains": ["2001:db8::1"]}, "domains"),
    ("multi-domain", {"cert_name": "w", "domains": "a.example.test"}, "domains"),
    ("multi-domain", {"cert_name": "bad name", "domains": ["a.example.test"]}, "cert_name"),
    ("multi-domain", {"cert_name": "w", "domains": ["a.example.test"], "colour": 1}, "colour"),
    ("", {"cert_name": "w", "domain": "*.example.test"}, "domain"),
    ("", {"cert_name": "w", "domain": "bad_name!.test"}, "domain"),
    ("", {"cert_name": "w", "domain": "127.0.0.1"}, "domain"),
    ("", {"cert_name": "w", "domain": "localhost"}, "domain"),
    ("", {"cert_name": "", "domain": "a.example.test"}, "cert_name"),
    ("", {"cert_name": "-lead", "domain": "a.example.test"}, "cert_name"),
    ("", {"cert_name": "a/b", "domain": "a.example.test"}, "cert_name"),
    ("", {"cert_name": "x" * 129, "domain": "a.example.test"}, "cert_name"),
    ("", {"cert_name": "status:x", "domain": "a.example.test"}, "cert_name"),
    ("", {"cert_name": "domain:x", "domain": "a.example.test"}, "cert_name"),
    ("", {"cert_name": "w", "domain": "a.example.test", "email": "nope"}, "email"),
    ("", {"cert_name": "w", "domain": "a.example.test", "key_type": "dsa"}, "key_type"),
    ("", {"cert_name": "w", "domain": "a.example.test", "unknown": True}, "unknown"),
    ("", {"cert_name": "w"}, "domain"),
]  # fmt: skip


def test_refused_requests_name_the_field_and_write_nothing(
    edge_factory: EdgeFactory, admin: str, rdb: redis.Redis, ca: trustme.CA, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    # nothing listens on the CA's port: an order placed by mistake would fail, not hang
    edge = edge_factory(
        ADMIN_TOKEN=admin, **acme_env(f"https://127.0.0.1:{free_port()}/dir", str(bundle))
    )
    port = edge.api_port
    for path, body, field in BAD_BODIES:
        answer = call(port, "POST", f"{C}/{path}", admin, body)
        assert answer.status == 400, (body, answer.raw)
        assert answer.error["field"] == field, (body, answer.error)
        assert answer.error["code"] in ("invalid_body", "invalid_request"), answer.error
    assert acme_keys(rdb) == NOTHING

    # unknown names: 404 for status, renew and delete
    for method, path in (
        ("GET", f"{C}/ghost/status"),
        ("POST", f"{C}/ghost/renew"),
        ("DELETE", f"{C}/ghost"),
        ("GET", f"{C}/domain:ghost/status"),
        ("POST", f"{C}/status:ghost/renew"),
    ):
        assert_error(call(port, method, path, admin), 404, "certificate_not_found")
    assert acme_keys(rdb) == NOTHING

    # a certificate of that name exists (imported): 409, nothing written
    leaf = ca.issue_cert("taken.example.test")
    taken = {
        "cert_name": "taken",
        "domains": ["taken.example.test"],
        "fullchain_pem": "".join(b.bytes().decode() for b in leaf.cert_chain_pems),
        "private_key_pem": leaf.private_key_pem.bytes().decode(),
    }
    rdb.set("cert:taken", json.dumps(taken))
    for path, body in (
        ("", {"cert_name": "taken", "domain": "other.example.test"}),
        ("multi-domain", {"cert_name": "taken", "domains": ["taken.example.test"]}),
    ):
        assert_error(call(port, "POST", f"{C}/{path}", admin, body), 409, "certificate_exists")
    assert acme_keys(rdb) == {**NOTHING, "certs": [b"cert:taken"]}
    assert stored(rdb, "cert:taken") == taken


def test_a_second_create_while_the_order_runs_is_409_order_in_progress(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    site = start_site(
        pebble_factory, edge_factory, admin, tmp_path, acme_front_factory=acme_front_factory
    )
    assert site.front is not None
    site.front.fail_new_order(times=1000, retry_after=3600)
    port = site.edge.api_port
    body = {"cert_name": "busy", "domains": ["busy.example.test"]}
    ok(call(port, "POST", f"{C}/multi-domain", admin, body), 202)
    failed = wait_status(rdb, "busy", "failed")
    assert "rateLimited" in failed["error"]
    assert failed["next_try_at"] is not None
    orders = site.front.count("newOrder")
    assert orders == 1

    # the order stands (the CA said when to try again): asking again is refused
    for path, again in (
        ("multi-domain", body),
        ("multi-domain", {"cert_name": "busy", "domains": ["other.example.test"]}),
        ("", {"cert_name": "busy", "domain": "busy.example.test"}),
    ):
        assert_error(call(port, "POST", f"{C}/{path}", admin, again), 409, "order_in_progress")
    assert stored(rdb, "cert:status:busy") == failed
    time.sleep(1.5)  # a queue poll or more: the CA is not asked again
    assert site.front.count("newOrder") == orders
    assert rdb.get("cert:busy") is None


# ---------------------------------------------------------------------------- who sees what


def test_a_token_sees_only_its_own_orders(
    pebble_factory: Callable[..., Pebble],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    site = start_site(pebble_factory, edge_factory, admin, tmp_path)
    port = site.edge.api_port
    bob = new_token(port, admin, "bob")
    ok(call(port, "POST", f"{C}/", admin, {"cert_name": "adm", "domain": "adm.example.test"}), 202)
    mine = call(port, "POST", f"{C}/", bob, {"cert_name": "bobs", "domain": "bob.example.test"})
    assert ok(mine, 202)["owner_token_hash"] == sha256(bob)
    wait_status(rdb, "adm")
    wait_status(rdb, "bobs")

    # the admin's certificate does not exist for bob
    assert_error(call(port, "GET", f"{C}/adm/status", bob), 404, "certificate_not_found")
    assert_error(call(port, "POST", f"{C}/adm/renew", bob), 404, "certificate_not_found")
    assert_error(call(port, "DELETE", f"{C}/adm", bob), 404, "certificate_not_found")
    assert rdb.exists("cert:adm")
    # nor may bob take its name (without learning more than that it exists)
    taken = {"cert_name": "adm", "domain": "x.example.test"}
    assert_error(call(port, "POST", f"{C}/", bob, taken), 409, "certificate_exists")

    # bob's own: his hash in the status and the record; the admin sees it too
    bob_hash = sha256(bob)
    assert ok(call(port, "GET", "/api/v1/tokens/info", bob))["hash"] == bob_hash
    assert rdb.get(f"token:hash:{bob_hash}") == b"bob"
    status = ok(call(port, "GET", f"{C}/bobs/status", bob))
    assert (status["status"], status["owner_token_hash"]) == ("active", bob_hash)
    assert record(rdb, "bobs")["owner_token_hash"] == bob_hash
    assert ok(call(port, "GET", f"{C}/bobs/status", admin))["owner_token_hash"] == bob_hash
    assert_served(site.https_port, "bob.example.test", site.root)


# ---------------------------------------------------------------------------- cancelling


@pytest.mark.timeout(90)
def test_delete_cancels_a_failing_order(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    # the CA refuses orders for a while and asks to come back in 2 s
    site = start_site(
        pebble_factory, edge_factory, admin, tmp_path, acme_front_factory=acme_front_factory
    )
    assert site.front is not None
    site.front.fail_new_order(times=1000, retry_after=2)
    port = site.edge.api_port
    ok(
        call(port, "POST", f"{C}/", admin, {"cert_name": "gone", "domain": "gone.example.test"}),
        202,
    )
    wait_status(rdb, "gone", "failed")
    assert rdb.zscore("edge:acme:queue", "gone") is not None

    deleted = call(port, "DELETE", f"{C}/gone", admin)
    assert (deleted.status, deleted.raw) == (204, b"")
    assert rdb.get("cert:status:gone") is None
    assert rdb.zscore("edge:acme:queue", "gone") is None
    orders = site.front.count("newOrder")
    site.front.fail_new_order(times=0)  # the CA would now issue: nobody asks it
    time.sleep(4)  # past the CA's Retry-After, several queue polls
    assert site.front.count("newOrder") == orders
    assert rdb.get("cert:gone") is None
    assert rdb.get("cert:status:gone") is None
    assert_error(call(port, "GET", f"{C}/gone/status", admin), 404, "certificate_not_found")


@pytest.mark.timeout(90)
def test_delete_during_validation_stops_the_order_before_it_writes(
    pebble_factory: Callable[..., Pebble],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    # 2 s between answering the challenge and the first look at the authorization
    site = start_site(pebble_factory, edge_factory, admin, tmp_path, ACME_POLL_INITIAL_WAIT="2")
    port = site.edge.api_port
    ok(
        call(port, "POST", f"{C}/", admin, {"cert_name": "stop", "domain": "stop.example.test"}),
        202,
    )
    wait_status(rdb, "stop", "validating", timeout=20)
    assert list(rdb.scan_iter("acme:challenge:*")) != []  # published for the CA
    assert_error(call(port, "POST", f"{C}/stop/renew", admin), 409, "order_in_progress")
    again = {"cert_name": "stop", "domain": "stop.example.test"}
    assert_error(call(port, "POST", f"{C}/", admin, again), 409, "order_in_progress")
    assert call(port, "DELETE", f"{C}/stop", admin).status == 204
    assert rdb.get("cert:status:stop") is None
    assert rdb.zscore("edge:acme:queue", "stop") is None

    wait_for(lambda: "certificate order stopped" in site.edge.stderr()
             or "certificate not written" in site.edge.stderr(), timeout=30)  # fmt: skip
    time.sleep(1)
    assert rdb.get("cert:stop") is None
    assert rdb.get("cert:status:stop") is None
    assert rdb.get("edge:acme:renewal:stop") is None
    assert rdb.zscore("edge:acme:queue", "stop") is None
    assert list(rdb.scan_iter("acme:challenge:*")) == []  # withdrawn
    assert "certificate issued" not in site.edge.stderr()


# ---------------------------------------------------------------------------- renewing


def test_renew_gives_a_new_certificate_that_replaces_the_old_one(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    site = start_site(
        pebble_factory, edge_factory, admin, tmp_path, acme_front_factory=acme_front_factory
    )
    assert site.front is not None
    port = site.edge.api_port
    ok(call(port, "POST", f"{C}/", admin, {"cert_name": "ren", "domain": "ren.example.test"}), 202)
    wait_status(rdb, "ren")
    first = leaf_of(record(rdb, "ren"))
    assert_served(site.https_port, "ren.example.test", site.root)
    assert replaces_sent(site.front) == [None]

    renewed = ok(call(port, "POST", f"{C}/ren/renew", admin), 202)
    assert (renewed["status"], renewed["reason"]) == ("pending", "renewal")
    assert renewed["domains"] == ["ren.example.test"]

    def new_leaf() -> x509.Certificate | None:
        leaf = leaf_of(record(rdb, "ren"))
        return leaf if leaf.serial_number != first.serial_number else None

    second = wait_for(new_leaf, timeout=60, interval=0.1)
    wait_status(rdb, "ren")
    assert_served(site.https_port, "ren.example.test", site.root)
    wait_for(lambda: served_chain(site.https_port, "ren.example.test")[0] == second, timeout=10)
    # same CA, same account: the new order said which certificate it replaces (and so
    # did any attempt of it that was retried: Pebble fails some validations on purpose)
    sent = replaces_sent(site.front)
    assert sent[0] is None and len(sent) >= 2, sent
    assert set(sent[1:]) == {ari_id(first)}, sent
    assert record(rdb, "ren")["owner_token_hash"] == sha256(admin)


def test_a_failed_renewal_is_retried_when_the_ca_said_while_renewal_checks_run(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    # the renewal check looks at the certificate every second; the renewal asked for
    # through the API fails once (Retry-After: 3) and must still be tried again then,
    # not moved to the certificate's own renewal time (years away)
    site = start_site(
        pebble_factory,
        edge_factory,
        admin,
        tmp_path,
        acme_front_factory=acme_front_factory,
        RENEWAL_CHECK_INTERVAL="1",
    )
    assert site.front is not None
    port = site.edge.api_port
    ok(
        call(port, "POST", f"{C}/", admin, {"cert_name": "again", "domain": "again.example.test"}),
        202,
    )
    wait_status(rdb, "again")
    first = leaf_of(record(rdb, "again"))
    site.front.fail_new_order(times=1, retry_after=3)
    ok(call(port, "POST", f"{C}/again/renew", admin), 202)
    failed = wait_status(rdb, "again", "failed")
    assert "rateLimited" in failed["error"]
    retry_at = datetime.fromisoformat(failed["next_try_at"]).timestamp()
    assert rdb.zscore("edge:acme:queue", "again") == pytest.approx(retry_at, abs=1)
    time.sleep(2)  # renewal checks run meanwhile: the retry stays queued
    assert rdb.zscore("edge:acme:queue", "again") == pytest.approx(retry_at, abs=1)

    def new_leaf() -> x509.Certificate | None:
        leaf = leaf_of(record(rdb, "again"))
        return leaf if leaf.serial_number != first.serial_number else None

    wait_for(new_leaf, timeout=20, interval=0.1)
    wait_status(rdb, "again")
    assert len(replaces_sent(site.front)) == 3  # issued, refused, issued


def test_renewing_an_imported_certificate_is_409_not_acme(
    edge_factory: EdgeFactory, admin: str, rdb: redis.Redis, ca: trustme.CA, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    edge = edge_factory(
        ADMIN_TOKEN=admin, **acme_env(f"https://127.0.0.1:{free_port()}/dir", str(bundle))
    )
    leaf = ca.issue_cert("imported.example.test")
    imported = {
        "cert_name": "imp",
        "domains": ["imported.example.test"],
        "fullchain_pem": "".join(b.bytes().decode() for b in leaf.cert_chain_pems),
        "private_key_pem": leaf.private_key_pem.bytes().decode(),
    }
    rdb.set("cert:imp", json.dumps(imported))
    port = edge.api_port
    assert_error(call(port, "POST", f"{C}/imp/renew", admin), 409, "not_acme")
    status = ok(call(port, "GET", f"{C}/imp/status", admin))
    assert (status["status"], status["domains"]) == ("imported", ["imported.example.test"])
    assert acme_keys(rdb) == {**NOTHING, "certs": [b"cert:imp"]}


# ---------------------------------------------------------------------------- HTTP-01


TOKEN = "tok_" + "A1b2C3d4E5f6G7h8I9j0-_" * 2
KEY_AUTHORIZATION = f"{TOKEN}.thumbprint-of-the-account-key"


def get(port: int, method: str, path: str, host: str) -> tuple[int, dict[str, str], bytes]:
    answer = call(port, method, path, host=host)
    return answer.status, answer.headers, answer.raw


def test_challenges_are_answered_on_every_host_over_plain_http_only(
    edge_factory: EdgeFactory, rdb: redis.Redis, upstream: Upstream, ca: trustme.CA
) -> None:
    rdb.set("proxy:open.example.test", proxy_doc("open.example.test", upstream.url))
    # HTTPS only: plain HTTP is redirected, except for the challenges
    rdb.set(
        "proxy:secure.example.test",
        proxy_doc("secure.example.test", upstream.url, enable_http=False, enable_https=True),
    )
    rdb.set(f"acme:challenge:{TOKEN}", KEY_AUTHORIZATION)
    https_port = free_port()
    edge = edge_factory(HTTPS_PORT=https_port, CONFIG_RESYNC_INTERVAL=30)
    edge.wait_generation(lambda h: h["proxies"] == 2)
    path = f"/.well-known/acme-challenge/{TOKEN}"
    port = edge.http_port

    assert get(port, "GET", "/x", "secure.example.test")[0] == 301  # the redirect is there
    for host in (
        "open.example.test",
        "secure.example.test",
        "nobody.example.test",
        "127.0.0.1",
        f"secure.example.test:{port}",
    ):
        status, headers, body = get(port, "GET", path, host)
        assert (status, body) == (200, KEY_AUTHORIZATION.encode()), (host, status, body)
        assert headers["content-type"].startswith("text/plain")
        status, headers, body = get(port, "HEAD", path, host)
        assert (status, body) == (200, b""), host
        assert headers.get("content-length") in (None, str(len(KEY_AUTHORIZATION)))
    assert upstream.requests == []  # answered by the edge, never proxied

    for unknown in ("tok_" + "z" * 40, "short", "a.b", "x" * 300):
        status, _, _ = get(port, "GET", f"/.well-known/acme-challenge/{unknown}", "nobody.test")
        assert status == 404, unknown
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, headers, _ = get(port, method, path, "secure.example.test")
        assert status == 405, method
        assert headers["allow"] == "GET, HEAD"
    rdb.delete(f"acme:challenge:{TOKEN}")
    assert get(port, "GET", path, "open.example.test")[0] == 404

    # over TLS the path is an ordinary path: routed to the proxy's upstream, or 404
    rdb.set(f"acme:challenge:{TOKEN}", KEY_AUTHORIZATION)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    for host, expected in (("secure.example.test", 200), ("nobody.example.test", 404)):
        conn = http.client.HTTPSConnection("127.0.0.1", https_port, timeout=5, context=context)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        assert resp.status == expected, (host, resp.status, body)
        assert KEY_AUTHORIZATION.encode() not in body
    assert [r["path"] for r in upstream.requests] == [path]
