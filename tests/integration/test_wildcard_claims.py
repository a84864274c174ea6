"""Wildcard claims through the API: a token other than the admin may not cover another
owner's names with a wildcard proxy, nor claim a whole top-level zone.

Real edge processes and a real redis-server: a refused claim writes nothing, and what the
admin may still do is served with the most specific owner winning.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from tests.api_client import Answer, assert_error, call, new_token, ok, served_by, sha256
from tests.helpers import EdgeProcess, Upstream, proxy_doc, tagged_upstreams, wait_for

P = "/api/v1/proxy/targets"
LIVE = 1.0  # seconds from an API answer to the change being served
CERT_PEM = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def ups() -> Iterator[dict[str, Upstream]]:
    with tagged_upstreams("alice", "bob", "admin") as servers:
        yield servers


def create(port: int, token: str, hostname: str, target: Upstream) -> Answer:
    return call(port, "POST", P, token, {"hostname": hostname, "target_url": target.url})


def store_cert(r: redis.Redis, name: str, domains: list[str], owner: str | None) -> None:
    doc = {"cert_name": name, "domains": domains, "fullchain_pem": CERT_PEM,
           "private_key_pem": KEY_PEM, "owner_token_hash": owner}  # fmt: skip
    r.set(f"cert:{name}", json.dumps(doc))


def refused(answer: Answer, r: redis.Redis, hostname: str, status: int, code: str) -> str:
    """The claim was refused with ``status``/``code`` naming the hostname field, and nothing
    was written; returns the message."""
    assert_error(answer, status, code, "hostname")
    assert not r.exists(f"proxy:{hostname}")
    message = answer.error["message"]
    assert isinstance(message, str)
    return message


def test_a_wildcard_may_not_cover_another_owners_names(
    api: EdgeProcess, admin: str, rdb: redis.Redis, ups: dict[str, Upstream]
) -> None:
    port = api.api_port
    alice, bob = new_token(port, admin, "alice"), new_token(port, admin, "bob")
    ok(create(port, bob, "b.zone.test", ups["bob"]), 201)

    # bob's exact name under the zone: alice's wildcard would cover it
    message = refused(create(port, alice, "*.zone.test", ups["alice"]), rdb,
                      "*.zone.test", 409, "wildcard_conflict")  # fmt: skip
    assert "b.zone.test" in message, message
    # deeper names count: a wildcard of bob's under the zone, a name two labels down
    ok(create(port, bob, "*.deep.zone2.test", ups["bob"]), 201)
    message = refused(create(port, alice, "*.zone2.test", ups["alice"]), rdb,
                      "*.zone2.test", 409, "wildcard_conflict")  # fmt: skip
    assert "*.deep.zone2.test" in message, message
    ok(create(port, bob, "x.y.zone3.test", ups["bob"]), 201)
    assert "x.y.zone3.test" in refused(
        create(port, alice, "*.zone3.test", ups["alice"]), rdb, "*.zone3.test", 409,
        "wildcard_conflict",
    )  # fmt: skip
    # a key written by hand (no owner, any letter case) is the admin's
    rdb.set("proxy:Hand.zone4.test", proxy_doc("Hand.zone4.test", ups["admin"].url))
    assert "hand.zone4.test" in refused(
        create(port, alice, "*.zone4.test", ups["alice"]), rdb, "*.zone4.test", 409,
        "wildcard_conflict",
    ).lower()  # fmt: skip
    # certificates: a domain of another owner's record, a cert:domain: key naming one
    store_cert(rdb, "bobs", ["c.certzone.test"], sha256(bob))
    assert "c.certzone.test" in refused(
        create(port, alice, "*.certzone.test", ups["alice"]), rdb, "*.certzone.test", 409,
        "wildcard_conflict",
    )  # fmt: skip
    store_cert(rdb, "bobs-other", ["elsewhere.test"], sha256(bob))
    rdb.set("cert:domain:d.dz.test", "bobs-other")
    assert "d.dz.test" in refused(
        create(port, alice, "*.dz.test", ups["alice"]), rdb, "*.dz.test", 409,
        "wildcard_conflict",
    )  # fmt: skip
    store_cert(rdb, "bobs-wild", ["*.wz.test"], sha256(bob))
    assert "*.wz.test" in refused(
        create(port, alice, "*.wz.test", ups["alice"]), rdb, "*.wz.test", 409,
        "wildcard_conflict",
    )  # fmt: skip

    # names alice holds herself, and names outside the zone, are no obstacle
    ok(create(port, alice, "a.mine.test", ups["alice"]), 201)
    store_cert(rdb, "alices", ["c.mine.test", "other.test"], sha256(alice))
    ok(create(port, bob, "mine.test", ups["bob"]), 201)  # the apex is not under *.mine.test
    ok(create(port, bob, "x.notmine.test", ups["bob"]), 201)
    ok(create(port, alice, "*.mine.test", ups["alice"]), 201)
    ok(create(port, alice, "*.free.test", ups["alice"]), 201)
    wait_for(lambda: served_by(api, "new.free.test") == "alice", timeout=LIVE)
    assert served_by(api, "x.mine.test") == "alice"


def test_a_single_label_zone_is_the_admins(
    api: EdgeProcess, admin: str, rdb: redis.Redis, ups: dict[str, Upstream]
) -> None:
    port = api.api_port
    alice = new_token(port, admin, "alice")
    for hostname in ("*.test", "*.com"):
        message = refused(create(port, alice, hostname, ups["alice"]), rdb, hostname, 403,
                          "forbidden")  # fmt: skip
        assert hostname in message, message
    # the admin may
    ok(create(port, admin, "*.test", ups["admin"]), 201)
    wait_for(lambda: served_by(api, "any.test") == "admin", timeout=LIVE)


def test_the_admin_may_claim_anything_and_the_most_specific_owner_wins(
    api: EdgeProcess, admin: str, rdb: redis.Redis, ups: dict[str, Upstream]
) -> None:
    port = api.api_port
    alice, bob = new_token(port, admin, "alice"), new_token(port, admin, "bob")
    ok(create(port, bob, "b.zone.test", ups["bob"]), 201)
    assert_error(create(port, alice, "*.zone.test", ups["alice"]), 409, "wildcard_conflict",
                 "hostname")  # fmt: skip
    # the admin creates the wildcard and hands it to alice: bob's exact name stays bob's
    body = {"hostname": "*.zone.test", "target_url": ups["alice"].url,
            "owner_token_hash": sha256(alice)}  # fmt: skip
    ok(call(port, "POST", P, admin, body), 201)
    wait_for(lambda: served_by(api, "a.zone.test") == "alice", timeout=LIVE)
    assert served_by(api, "b.zone.test") == "bob"
    # alice sees and keeps her wildcard
    assert ok(call(port, "GET", f"{P}/%2A.zone.test", alice))["hostname"] == "*.zone.test"


def test_an_exact_name_may_not_be_taken_under_another_owners_wildcard(
    api: EdgeProcess, admin: str, rdb: redis.Redis, ups: dict[str, Upstream]
) -> None:
    port = api.api_port
    alice, bob = new_token(port, admin, "alice"), new_token(port, admin, "bob")
    ok(create(port, alice, "*.alice.test", ups["alice"]), 201)
    wait_for(lambda: served_by(api, "shop.alice.test") == "alice", timeout=LIVE)
    # bob's exact name would beat alice's wildcard and take over a name she serves
    for hostname in ("shop.alice.test", "a.b.alice.test"):
        message = refused(create(port, bob, hostname, ups["bob"]), rdb, hostname, 409,
                          "wildcard_conflict")  # fmt: skip
        assert "*.alice.test" in message, message
    assert served_by(api, "shop.alice.test") == "alice"
    # nor a deeper wildcard: it would win over alice's for every name under it
    message = refused(create(port, bob, "*.shop.alice.test", ups["bob"]), rdb,
                      "*.shop.alice.test", 409, "wildcard_conflict")  # fmt: skip
    assert "*.alice.test" in message, message
    assert served_by(api, "x.shop.alice.test") == "alice"
    ok(create(port, alice, "*.own.alice.test", ups["alice"]), 201)
    # alice may add exact names under her own wildcard; the admin may add any
    ok(create(port, alice, "own.alice.test", ups["alice"]), 201)
    ok(create(port, admin, "ops.alice.test", ups["admin"]), 201)
    # an admin's catch-all wildcard (no owner) leaves the names under it free
    ok(create(port, admin, "*.open.test", ups["admin"]), 201)
    ok(create(port, bob, "bob.open.test", ups["bob"]), 201)
    wait_for(lambda: served_by(api, "bob.open.test") == "bob", timeout=LIVE)
