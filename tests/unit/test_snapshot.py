"""Snapshot.apply(): incremental, immutable updates; rejections; resync diffs."""

from __future__ import annotations

import json
from typing import Any

from edge.config.redis_source import WrongType
from edge.config.snapshot import Snapshot, adopt, apply, resync_updates
from edge.routing.table import compile_table


def proxy(hostname: str, target_url: str = "http://127.0.0.1:8000", **extra: Any) -> bytes:
    return json.dumps({"hostname": hostname, "target_url": target_url, **extra}).encode()


def route(route_id: str, path: str = "/r", port: str = "9000", **extra: Any) -> bytes:
    doc = {
        "route_id": route_id,
        "path_pattern": path,
        "target_type": "port",
        "target_value": port,
        **extra,
    }
    return json.dumps(doc).encode()


def external(name: str, url: str = "https://ext.test") -> bytes:
    return json.dumps({"service_name": name, "target_url": url}).encode()


BASE: dict[str, bytes | None] = {
    "proxy:a.test": proxy("a.test"),
    "proxy:*.w.test": proxy("*.w.test"),
    "route:r1": route("r1"),
    "service:url:s1": b"http://10.0.0.1:80",
    "service:external:e1": external("e1"),
}


def base() -> Snapshot:
    snap = apply(Snapshot(), BASE)
    assert not snap.rejected
    return snap


def target_port(snap: Snapshot, host: str, path: str = "/") -> int | None:
    found = compile_table(snap).find_proxy(host)
    if found is None:
        return None
    res = compile_table(snap).resolve(found, path, b"GET")
    return None if res.target is None else res.target.port


# ---------------------------------------------------------------------------
# building and incremental updates
# ---------------------------------------------------------------------------


def test_initial_apply_fills_every_map() -> None:
    snap = base()
    assert snap.generation == 1
    assert set(snap.exact) == {"a.test"}
    assert set(snap.wildcards) == {".w.test"}
    assert set(snap.routes) == {"r1"}
    assert dict(snap.urls) == {"s1": "http://10.0.0.1:80"}
    assert set(snap.services) == {"e1"}
    assert snap.proxy_count == 2
    assert snap.item_count == 5
    assert dict(snap.raw) == BASE


def test_update_of_one_kind_keeps_other_maps_identical() -> None:
    old = base()
    new = apply(old, {"route:r2": route("r2", "/two")})
    assert new is not old
    assert new.generation == old.generation + 1
    assert new.exact is old.exact
    assert new.wildcards is old.wildcards
    assert new.services is old.services
    assert new.urls is old.urls
    assert new.routes is not old.routes
    assert set(new.routes) == {"r1", "r2"}
    assert new.routes["r1"] is old.routes["r1"]
    # the old snapshot is untouched
    assert set(old.routes) == {"r1"}
    assert "route:r2" not in old.raw


def test_proxy_update_copies_only_the_map_it_touches() -> None:
    old = base()
    new = apply(old, {"proxy:b.test": proxy("b.test")})
    assert new.exact is not old.exact
    assert new.wildcards is old.wildcards
    assert new.routes is old.routes
    assert new.urls is old.urls
    assert new.services is old.services
    assert new.exact["a.test"] is old.exact["a.test"]
    assert compile_table(old).find_proxy("b.test") is None
    assert compile_table(new).find_proxy("b.test") is not None
    wild = apply(new, {"proxy:*.v.test": proxy("*.v.test")})
    assert wild.exact is new.exact
    assert wild.wildcards is not new.wildcards


def test_service_update_copies_only_its_map() -> None:
    old = base()
    new = apply(old, {"service:url:s1": b"http://10.0.0.2:81"})
    assert new.urls is not old.urls
    assert new.services is old.services
    assert new.exact is old.exact
    assert new.routes is old.routes
    assert new.urls["s1"] == "http://10.0.0.2:81"
    ext = apply(new, {"service:external:e2": external("e2")})
    assert ext.urls is new.urls
    assert ext.services is not new.services


def test_unchanged_values_return_the_same_snapshot() -> None:
    old = base()
    assert apply(old, dict(BASE)) is old
    assert apply(old, {}) is old
    assert apply(old, {"proxy:gone.test": None}) is old


def test_non_config_keys_are_ignored() -> None:
    old = base()
    new = apply(
        old,
        {"route:unique:x": b"1", "route:priority:x": b"2", "other": b"3", "proxy:": b"{}"},
    )
    assert not new.rejected
    for key in ("route:unique:x", "route:priority:x", "other", "proxy:"):
        assert key not in new.raw
    assert new.exact is old.exact
    assert new.routes is old.routes


def test_replacing_a_value() -> None:
    old = base()
    new = apply(old, {"proxy:a.test": proxy("a.test", "http://127.0.0.1:8111")})
    assert target_port(old, "a.test") == 8000
    assert target_port(new, "a.test") == 8111


def test_deletes_remove_every_kind() -> None:
    svc_route = json.dumps(
        {"route_id": "s", "path_pattern": "/s", "target_type": "service", "target_value": "s1"}
    ).encode()
    old = apply(base(), {"route:s": svc_route})
    assert not old.rejected
    assert target_port(old, "a.test", "/s") == 80
    new = apply(old, {key: None for key in BASE})
    assert not new.exact and not new.wildcards and not new.urls and not new.services
    assert set(new.routes) == {"s"}
    assert set(new.raw) == {"route:s"}
    assert compile_table(new).find_proxy("a.test") is None
    assert compile_table(new).find_proxy("x.w.test") is None


def test_route_delete_falls_back_to_proxy_target() -> None:
    old = apply(base(), {"route:r1": route("r1", "/r", "9555")})
    assert target_port(old, "a.test", "/r") == 9555
    new = apply(old, {"route:r1": None})
    assert target_port(new, "a.test", "/r") == 8000


def test_service_delete_leaves_route_without_target() -> None:
    svc_route = json.dumps(
        {"route_id": "sv", "path_pattern": "/sv", "target_type": "service", "target_value": "s1"}
    ).encode()
    old = apply(base(), {"route:sv": svc_route})
    assert target_port(old, "a.test", "/sv") == 80
    new = apply(old, {"service:url:s1": None})
    found = compile_table(new).find_proxy("a.test")
    assert found is not None
    res = compile_table(new).resolve(found, "/sv", b"GET")
    assert res.route is not None and res.route.route_id == "sv"
    assert res.target is None


# ---------------------------------------------------------------------------
# rejected keys
# ---------------------------------------------------------------------------


def test_rejected_key_is_reported_and_its_last_good_value_kept() -> None:
    old = apply(base(), {"proxy:b.test": proxy("b.test", "http://127.0.0.1:8123")})
    bad = json.dumps({"hostname": "b.test", "target_url": "http://x.test", "colour": 1}).encode()
    new = apply(old, {"proxy:b.test": bad})
    assert set(new.rejected) == {"proxy:b.test"}
    assert "colour" in new.rejected["proxy:b.test"]
    # the previous good value keeps serving; the bad one is what Redis holds
    assert target_port(new, "b.test") == 8123
    assert new.exact["b.test"] == old.exact["b.test"]
    assert compile_table(new).find_proxy("a.test") is not None
    assert compile_table(new).find_proxy("x.w.test") is not None
    assert new.raw["proxy:b.test"] == bad
    assert set(new.kept) == {"proxy:b.test"}
    assert compile_table(new).rejected_proxy("b.test") is None  # served: nothing to explain


def test_rejected_key_without_a_good_value_is_not_served_and_named() -> None:
    new = apply(base(), {"proxy:n.test": b"{", "proxy:*.z.test": b"{"})
    assert compile_table(new).find_proxy("n.test") is None
    assert not new.kept
    assert compile_table(new).rejected_proxy("n.test") == "proxy:n.test"
    assert compile_table(new).rejected_proxy("x.z.test") == "proxy:*.z.test"
    assert compile_table(new).rejected_proxy("x.y.z.test") == "proxy:*.z.test"
    assert compile_table(new).rejected_proxy("other.test") is None
    # a good wildcard serves a host whose exact key was rejected
    covered = apply(base(), {"proxy:x.w.test": b"{"})
    assert compile_table(covered).find_proxy("x.w.test") is not None
    # deleting the key forgets the rejection
    gone = apply(new, {"proxy:n.test": None})
    assert compile_table(gone).rejected_proxy("n.test") is None
    assert compile_table(gone).rejected_proxy("x.z.test") == "proxy:*.z.test"


CERT_PEM = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"


def cert(name: str, domain: str) -> bytes:
    doc = {"cert_name": name, "domains": [domain], "fullchain_pem": CERT_PEM,
           "private_key_pem": KEY_PEM}  # fmt: skip
    return json.dumps(doc).encode()


GOOD_AND_BAD: dict[str, tuple[bytes, bytes, str]] = {
    # key: (good value, rejected value, the map that keeps serving the good one)
    "proxy:a.test": (proxy("a.test", "http://127.0.0.1:8001"), b'{"hostname": "a.test",}', "exact"),
    "proxy:*.w.test": (proxy("*.w.test"), proxy("*.w.test", enabled="no"), "wildcards"),
    "route:r1": (route("r1", "/good"), route("r1", "/bad", priority="high"), "routes"),
    "service:url:s1": (b"http://10.0.0.9:80", b"ftp://x", "urls"),
    "service:external:e1": (external("e1"), external("e1", "nope"), "services"),
    "cert:c1": (cert("c1", "c.test"), cert("c1", "bad domain"), "certs"),
    "cert:domain:c.test": (b"c1", b"two words", "cert_domains"),
}


def test_every_kind_keeps_its_last_good_value_until_deleted() -> None:
    start = apply(Snapshot(), {k: good for k, (good, _, _) in GOOD_AND_BAD.items()})
    assert not start.rejected
    maps = {name: dict(getattr(start, name)) for _, _, name in GOOD_AND_BAD.values()}
    bad = apply(start, {k: rejected for k, (_, rejected, _) in GOOD_AND_BAD.items()})
    assert set(bad.rejected) == set(GOOD_AND_BAD) == set(bad.kept)
    for _, _, name in GOOD_AND_BAD.values():
        assert dict(getattr(bad, name)) == maps[name], name
    assert target_port(bad, "a.test", "/good") == 9000  # route r1 as it was
    # a second bad value: still the last good one
    worse = apply(bad, {"route:r1": b"[]", "proxy:a.test": WrongType(b"hash")})
    assert target_port(worse, "a.test", "/good") == 9000
    assert target_port(worse, "a.test") == 8001
    assert "holds a hash" in worse.rejected["proxy:a.test"]
    # a full resync reading the same bad values changes nothing
    assert resync_updates(worse, worse.raw) == {}
    # DEL (or expiry) clears both the rejection and the last good value
    gone = apply(worse, {k: None for k in GOOD_AND_BAD})
    assert not gone.rejected and not gone.kept
    for _, _, name in GOOD_AND_BAD.values():
        assert not getattr(gone, name), name
    # a fixed value replaces the kept one and clears the report
    fixed = apply(worse, {"route:r1": route("r1", "/fixed", "9100")})
    assert "route:r1" not in fixed.rejected and "route:r1" not in fixed.kept
    assert target_port(fixed, "a.test", "/fixed") == 9100
    assert target_port(fixed, "a.test", "/good") == 8001


def test_a_full_resync_keeps_the_last_good_value() -> None:
    snap = base()
    current = {**snap.raw, "service:url:s1": b"not a url"}
    after = apply(snap, resync_updates(snap, current))
    assert after.urls["s1"] == "http://10.0.0.1:80"
    assert "service:url:s1" in after.rejected
    # the key gone from Redis at the next resync: gone from the snapshot too
    del current["service:url:s1"]
    later = apply(after, resync_updates(after, current))
    assert "s1" not in later.urls and not later.rejected and not later.kept


def test_a_last_good_value_shared_by_another_worker_is_adopted() -> None:
    shared = {
        "proxy:late.test": proxy("late.test", "http://127.0.0.1:8301"),
        "route:r9": route("r9", "/nine", "9009"),
        "service:url:s9": b"not a url",  # a bad shared value is never served
    }
    bad = {"proxy:late.test": b"{", "route:r9": b"{", "service:url:s9": b"{"}
    snap = apply(base(), bad, last_good=shared)
    assert set(snap.rejected) == set(bad)
    assert set(snap.kept) == {"proxy:late.test", "route:r9"}
    assert target_port(snap, "late.test") == 8301
    assert target_port(snap, "a.test", "/nine") == 9009
    assert "s9" not in snap.urls
    # or later, once another worker has shared it
    late = apply(base(), bad)
    assert not late.kept
    adopted = adopt(late, shared)
    assert set(adopted.kept) == {"proxy:late.test", "route:r9"}
    assert target_port(adopted, "late.test") == 8301
    assert dict(adopted.rejected) == dict(late.rejected)
    assert adopt(adopted, shared) is adopted
    # a worker's own last good value comes first
    own = apply(base(), {"route:r1": b"{"}, last_good={"route:r1": route("r1", "/r", "9999")})
    assert target_port(own, "a.test", "/r") == 9000


def test_a_route_to_a_rejected_service_says_so() -> None:
    svc_route = json.dumps(
        {"route_id": "sv", "path_pattern": "/sv", "target_type": "service", "target_value": "nw"}
    ).encode()
    snap = apply(base(), {"route:sv": svc_route, "service:url:nw": b"ftp://x"})
    found = compile_table(snap).find_proxy("a.test")
    assert found is not None
    res = compile_table(snap).resolve(found, "/sv", b"GET")
    assert res.target is None
    assert res.problem == "service:url:nw"
    missing = apply(snap, {"service:url:nw": None})
    res = compile_table(missing).resolve(found, "/sv", b"GET")
    assert res.target is None and res.problem is None


def test_wrong_type_field_and_bad_route_are_rejected() -> None:
    new = apply(
        base(),
        {
            "proxy:t.test": json.dumps({"hostname": "t.test", "target_url": 5}).encode(),
            "route:r1": json.dumps(
                {
                    "route_id": "r1",
                    "path_pattern": "/r",
                    "target_type": "port",
                    "target_value": "9000",
                    "priority": "high",
                }
            ).encode(),
        },
    )
    assert set(new.rejected) == {"proxy:t.test", "route:r1"}
    assert "target_url" in new.rejected["proxy:t.test"]
    assert "priority" in new.rejected["route:r1"]
    assert new.routes["r1"].priority == 50 and "route:r1" in new.kept  # the last good
    assert "proxy:t.test" not in new.kept  # never good: not served
    assert compile_table(new).find_proxy("t.test") is None


def test_replacing_a_bad_value_by_a_good_one_clears_the_rejection() -> None:
    bad = apply(base(), {"proxy:a.test": b"{not json"})
    assert "proxy:a.test" in bad.rejected
    assert target_port(bad, "a.test") == 8000  # the last good value
    good = apply(bad, {"proxy:a.test": proxy("a.test", "http://127.0.0.1:8222")})
    assert not good.rejected
    assert target_port(good, "a.test") == 8222


def test_deleting_a_rejected_key_clears_the_rejection() -> None:
    bad = apply(base(), {"service:url:s2": b"ftp://nope"})
    assert set(bad.rejected) == {"service:url:s2"}
    cleared = apply(bad, {"service:url:s2": None})
    assert not cleared.rejected
    assert "service:url:s2" not in cleared.raw


def test_key_holding_another_redis_type_is_rejected() -> None:
    snap = apply(base(), {"proxy:h.test": WrongType(b"hash")})
    assert "proxy:h.test" in snap.rejected
    assert "hash" in snap.rejected["proxy:h.test"]
    assert compile_table(snap).find_proxy("h.test") is None


def test_wrong_type_marker_and_equal_string_are_different_values() -> None:
    # a key that held a hash and now holds the string "hash" has changed
    held_hash = apply(base(), {"service:url:s9": WrongType(b"hash")})
    assert "holds a hash" in held_hash.rejected["service:url:s9"]
    now_string = apply(held_hash, {"service:url:s9": b"hash"})
    assert now_string is not held_hash
    assert "holds a hash" not in now_string.rejected["service:url:s9"]
    # and the other way round, also seen by a full resync
    assert resync_updates(now_string, {**now_string.raw, "service:url:s9": WrongType(b"hash")})
    back = apply(now_string, {"service:url:s9": WrongType(b"hash")})
    assert "holds a hash" in back.rejected["service:url:s9"]


def test_hostname_mismatching_the_key_is_rejected() -> None:
    snap = apply(base(), {"proxy:b.test": proxy("a.test")})
    assert "hostname" in snap.rejected["proxy:b.test"]
    assert compile_table(snap).find_proxy("b.test") is None
    # a.test keeps its own document
    assert target_port(snap, "a.test") == 8000


# ---------------------------------------------------------------------------
# keys that differ only in case name the same host
# ---------------------------------------------------------------------------


def test_deleting_one_of_two_keys_for_the_same_host_keeps_the_other() -> None:
    snap = apply(
        Snapshot(),
        {
            "proxy:app.test": proxy("app.test", "http://127.0.0.1:8001"),
            "proxy:App.test": proxy("App.test", "http://127.0.0.1:8002"),
        },
    )
    # the lowercase key serves the host, whatever order the keys arrive in
    assert target_port(snap, "app.test") == 8001
    upper_first = apply(
        apply(Snapshot(), {"proxy:App.test": proxy("App.test", "http://127.0.0.1:8002")}),
        {"proxy:app.test": proxy("app.test", "http://127.0.0.1:8001")},
    )
    assert target_port(upper_first, "app.test") == 8001
    changed = apply(snap, {"proxy:App.test": proxy("App.test", "http://127.0.0.1:8003")})
    assert target_port(changed, "app.test") == 8001
    lower_left = apply(snap, {"proxy:App.test": None})
    assert target_port(lower_left, "app.test") == 8001
    upper_left = apply(snap, {"proxy:app.test": None})
    assert target_port(upper_left, "app.test") == 8002
    # rejecting one of them keeps its last good value serving
    rejected = apply(snap, {"proxy:app.test": b"{"})
    assert target_port(rejected, "app.test") == 8001
    # one never good hands the host to the other
    fresh = apply(
        apply(Snapshot(), {"proxy:App.test": proxy("App.test", "http://127.0.0.1:8002")}),
        {"proxy:app.test": b"{"},
    )
    assert target_port(fresh, "app.test") == 8002
    assert compile_table(fresh).rejected_proxy("app.test") is None
    both_gone = apply(upper_left, {"proxy:App.test": None})
    assert target_port(both_gone, "app.test") is None
    assert not both_gone.proxy_aliases


def test_wildcard_keys_differing_in_case() -> None:
    snap = apply(
        Snapshot(),
        {
            "proxy:*.W.test": proxy("*.W.test", "http://127.0.0.1:8002"),
            "proxy:*.w.test": proxy("*.w.test", "http://127.0.0.1:8001"),
        },
    )
    assert target_port(snap, "x.w.test") == 8001
    assert target_port(apply(snap, {"proxy:*.w.test": None}), "x.w.test") == 8002


# ---------------------------------------------------------------------------
# resync diffs
# ---------------------------------------------------------------------------


def test_resync_updates_diff() -> None:
    snap = base()
    current = dict(snap.raw)
    assert resync_updates(snap, current) == {}
    current["proxy:new.test"] = proxy("new.test")
    current["route:r1"] = route("r1", "/changed")
    del current["service:url:s1"]
    updates = resync_updates(snap, current)
    assert updates == {
        "proxy:new.test": current["proxy:new.test"],
        "route:r1": current["route:r1"],
        "service:url:s1": None,
    }
    after = apply(snap, updates)
    assert dict(after.raw) == current
    assert "s1" not in after.urls
    assert after.routes["r1"].path_pattern == "/changed"
    assert compile_table(after).find_proxy("new.test") is not None
    assert resync_updates(after, current) == {}


def test_resync_to_empty_deletes_everything() -> None:
    snap = base()
    updates = resync_updates(snap, {})
    assert updates == {key: None for key in BASE}
    empty = apply(snap, updates)
    assert empty.item_count == 0 and empty.proxy_count == 0


def test_generation_counts_effective_applies() -> None:
    snap = Snapshot()
    assert snap.generation == 0
    one = apply(snap, {"proxy:a.test": proxy("a.test")})
    two = apply(one, {"proxy:a.test": proxy("a.test")})  # same value: no new snapshot
    three = apply(two, {"proxy:a.test": None})
    assert (one.generation, two.generation, three.generation) == (1, 1, 2)
