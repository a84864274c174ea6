"""The configuration API: proxies, routes, services, certificates and resources over HTTP.

Real edge processes, a real redis-server and real upstreams: what the API writes is served
by the edge's HTTP port through the ordinary live-reload path (keyspace notifications).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import redis
import trustme

from edge.auth.secrets import new_admin_token
from edge.config.schema import ProxyConfig
from edge.store import keys as store_keys
from tests.api_client import Answer, assert_error, call, new_token, ok, served_by, sha256
from tests.helpers import (
    EdgeProcess,
    Monitor,
    RedisServer,
    Upstream,
    proxy_doc,
    tagged_upstreams,
    wait_for,
)

P = "/api/v1/proxy/targets"
R = "/api/v1/routes"
S = "/api/v1/services/external"
C = "/api/v1/certificates"
RES = "/api/v1/resources"
T = "/api/v1/tokens"
LIVE = 1.0  # seconds from an API answer to the change being served
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
EdgeFactory = Callable[..., EdgeProcess]


# ---------------------------------------------------------------------------- helpers


def enc(text: str) -> str:
    """One percent-encoded path segment."""
    return quote(text, safe="")


def becomes(edge: EdgeProcess, host: str, expected: str | int, path: str = "/") -> None:
    """The edge serves ``host`` with ``expected`` within LIVE seconds."""
    start = time.monotonic()
    wait_for(lambda: served_by(edge, host, path) == expected, timeout=LIVE, interval=0.01)
    assert time.monotonic() - start < LIVE


@pytest.fixture
def ups() -> Iterator[dict[str, Upstream]]:
    with tagged_upstreams("one", "two") as servers:
        yield servers


@dataclass
class Cert:
    chain_pem: str
    key_pem: str

    @property
    def key_lines(self) -> list[str]:
        """The base64 body of the private key, line by line (what no answer may contain)."""
        return [line for line in self.key_pem.splitlines() if line and "-----" not in line]


def issue(ca: trustme.CA, *names: str) -> Cert:
    leaf = ca.issue_cert(*names)
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    return Cert(chain, leaf.private_key_pem.bytes().decode())


def store_cert(
    r: redis.Redis, name: str, cert: Cert, domains: list[str], owner: str | None, **extra: Any
) -> None:
    doc = {
        "cert_name": name,
        "domains": domains,
        "fullchain_pem": cert.chain_pem,
        "private_key_pem": cert.key_pem,
        "status": "issued",
        "owner_token_hash": owner,
        **extra,
    }
    r.set(f"cert:{name}", json.dumps(doc))
    for domain in domains:
        r.set(f"cert:domain:{domain}", name)


def keys(r: redis.Redis, pattern: str = "*") -> set[str]:
    """The keys (but the request log's, which every request through the edge writes)."""
    return {
        k.decode()
        for k in r.scan_iter(match=pattern)
        if not k.decode().startswith(store_keys.REQ_LOG_PREFIXES)
    }


def config_keys(r: redis.Redis) -> set[str]:
    return {k for k in keys(r) if not k.startswith(("token:", "edge:"))}


# ---------------------------------------------------------------------------- access


ENDPOINTS = [
    ("GET", f"{P}/"),
    ("POST", P),
    ("GET", f"{P}/a.test"),
    ("PUT", f"{P}/a.test"),
    ("PATCH", f"{P}/a.test"),
    ("DELETE", f"{P}/a.test"),
    ("GET", f"{P}/a.test/auth"),
    ("POST", f"{P}/a.test/auth"),
    ("DELETE", f"{P}/a.test/auth"),
    ("GET", f"{P}/a.test/mcp"),
    ("POST", f"{P}/a.test/mcp"),
    ("DELETE", f"{P}/a.test/mcp"),
    ("GET", f"{P}/a.test/routes"),
    ("PUT", f"{P}/a.test/routes"),
    ("GET", R),
    ("POST", f"{R}/"),
    ("GET", f"{R}/r1"),
    ("PUT", f"{R}/r1"),
    ("DELETE", f"{R}/r1"),
    ("GET", S),
    ("POST", S),
    ("GET", f"{S}/billing"),
    ("DELETE", f"{S}/billing"),
    ("GET", C),
    ("GET", f"{C}/site"),
    ("DELETE", f"{C}/site"),
    ("GET", RES),
    ("POST", RES),
    ("GET", f"{RES}/{enc('https://x.test/mcp')}"),
    ("PUT", f"{RES}/{enc('https://x.test/mcp')}"),
    ("DELETE", f"{RES}/{enc('https://x.test/mcp')}"),
]


def test_every_config_endpoint_needs_a_token(api: EdgeProcess, rdb: redis.Redis) -> None:
    rdb.set("proxy:a.test", proxy_doc("a.test", "http://127.0.0.1:9"))
    for method, path in ENDPOINTS:
        for token in (None, new_admin_token(), sha256("x")):
            answer = call(api.api_port, method, path, token, {"hostname": "a.test"})
            assert_error(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"] == 'Bearer realm="edge"'
    assert config_keys(rdb) == {"proxy:a.test"}  # nothing was written


# ---------------------------------------------------------------------------- proxies


def test_every_collection_answers_with_and_without_the_trailing_slash(
    api: EdgeProcess, admin: str, rdb: redis.Redis
) -> None:
    rdb.set("proxy:a.test", proxy_doc("a.test", "http://127.0.0.1:9"))
    port = api.api_port
    collections = [P, R, S, C, RES, T, "/api/v1/users", "/api/v1/projects"]
    for path in collections:
        bare, slashed = call(port, "GET", path, admin), call(port, "GET", f"{path}/", admin)
        assert (bare.status, slashed.status) == (200, 200), (path, bare.raw, slashed.raw)
        assert bare.doc == slashed.doc, path
    # and a create through either form lands in the same collection
    for n, path in enumerate((S, f"{S}/")):
        body = {"service_name": f"svc{n}", "target_url": "http://127.0.0.1:9"}
        assert call(port, "POST", path, admin, body).status == 201, path
    names = sorted(str(x) for x in rdb.smembers("services:external"))
    assert names == ["b'svc0'", "b'svc1'"]


def test_proxy_lifecycle_is_served_live(
    edge_factory: EdgeFactory,
    admin: str,
    event_loop_name: str,
    ups: dict[str, Upstream],
    rdb: redis.Redis,
) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_LOOP=event_loop_name)
    port = edge.api_port
    assert served_by(edge, "app.test") == 404

    created = call(port, "POST", P, admin, {"hostname": "App.Test", "target_url": ups["one"].url})
    doc = ok(created, 201)
    becomes(edge, "app.test", "one")
    assert created.headers["location"] == f"{P}/app.test"
    assert set(doc) == set(ProxyConfig.__struct_fields__)
    assert doc["hostname"] == "app.test" and doc["target_url"] == ups["one"].url
    assert doc["owner_token_hash"] == sha256(admin)
    assert doc["created_by"] == "admin"
    assert re.fullmatch(ISO_UTC, doc["created_at"])
    assert doc["enabled"] is True and doc["route_mode"] == "all"
    assert json.loads(rdb.get("proxy:app.test")) == doc  # stored normalised, every field

    for path in (f"{P}/app.test", f"{P}/APP.test/", f"{P}/%61pp.test"):
        assert ok(call(port, "GET", path, admin)) == doc
    for path in (P, f"{P}/"):
        assert ok(call(port, "GET", path, admin)) == {"proxies": [doc]}

    # PUT replaces: fields left out take their defaults, creation metadata is kept
    changed = ok(
        call(
            port,
            "PUT",
            f"{P}/app.test",
            admin,
            {"target_url": ups["two"].url, "custom_headers": {"X-Env": "test"}},
        )
    )
    becomes(edge, "app.test", "two")
    sent_up = {k.lower(): v for k, v in ups["two"].requests[-1]["headers"].items()}
    assert sent_up["x-env"] == "test"
    assert changed["created_at"] == doc["created_at"] and changed["created_by"] == "admin"
    assert changed["owner_token_hash"] == sha256(admin)
    # a document read, edited and sent back is accepted (read-only fields unchanged)
    changed["target_url"] = ups["one"].url
    assert ok(call(port, "PUT", f"{P}/app.test/", admin, changed)) == changed
    becomes(edge, "app.test", "one")
    assert "X-Env" in changed["custom_headers"]
    sent = {**changed, "created_at": "2020-01-01T00:00:00Z"}
    assert_error(call(port, "PUT", f"{P}/app.test", admin, sent), 400, "invalid_body", "created_at")
    sent = {**changed, "created_by": "someone"}
    assert_error(call(port, "PUT", f"{P}/app.test", admin, sent), 400, "invalid_body", "created_by")

    deleted = call(port, "DELETE", f"{P}/app.test", admin)
    assert deleted.status == 204 and deleted.raw == b""
    becomes(edge, "app.test", 404)
    assert rdb.get("proxy:app.test") is None
    for method in ("GET", "DELETE"):
        assert_error(call(port, method, f"{P}/app.test", admin), 404, "proxy_not_found")
    body = {"target_url": ups["one"].url}
    assert_error(call(port, "PUT", f"{P}/app.test", admin, body), 404, "proxy_not_found")
    assert ok(call(port, "GET", P, admin)) == {"proxies": []}


def test_wildcard_hostnames_in_the_path(
    api: EdgeProcess, admin: str, ups: dict[str, Upstream], rdb: redis.Redis
) -> None:
    port = api.api_port
    body = {"hostname": "*.Example.com", "target_url": ups["one"].url}
    created = call(port, "POST", P, admin, body)
    assert ok(created, 201)["hostname"] == "*.example.com"
    assert created.headers["location"] == f"{P}/%2A.example.com"
    assert rdb.exists("proxy:*.example.com")
    becomes(api, "a.example.com", "one")
    for path in (f"{P}/%2A.example.com", f"{P}/%2a.EXAMPLE.com/", f"{P}/*.example.com"):
        assert ok(call(port, "GET", path, admin))["hostname"] == "*.example.com"
    auth = ok(call(port, "POST", f"{P}/%2A.example.com/auth", admin, {"auth_mode": "redirect"}))
    assert auth["auth_mode"] == "redirect"
    for bad in ("%2A", "a.%2A.example.com", "%2A.%2A.example.com", "exa_mple.com"):
        assert_error(call(port, "GET", f"{P}/{bad}", admin), 404, "proxy_not_found")
    assert call(port, "DELETE", f"{P}/%2a.example.com", admin).status == 204
    assert not rdb.exists("proxy:*.example.com")
    becomes(api, "a.example.com", 404)


INVALID_PROXIES: list[tuple[dict[str, Any], str]] = [
    ({"hostname": "a.test", "target_url": "http://127.0.0.1:9", "tagret_url": "x"}, "tagret_url"),
    ({"hostname": "bad_host.test", "target_url": "http://127.0.0.1:9"}, "hostname"),
    ({"hostname": "-x.test", "target_url": "http://127.0.0.1:9"}, "hostname"),
    ({"hostname": "a..test", "target_url": "http://127.0.0.1:9"}, "hostname"),
    ({"hostname": "*", "target_url": "http://127.0.0.1:9"}, "hostname"),
    ({"hostname": 5, "target_url": "http://127.0.0.1:9"}, "hostname"),
    ({"target_url": "http://127.0.0.1:9"}, "hostname"),
    ({"hostname": "a.test"}, "target_url"),
    ({"hostname": "a.test", "target_url": "ftp://x.test"}, "target_url"),
    ({"hostname": "a.test", "target_url": "http://x.test/?q=1"}, "target_url"),
    ({"hostname": "a.test", "target_url": "http://user@x.test"}, "target_url"),
    ({"hostname": "a.test", "target_url": 80}, "target_url"),
    ({"hostname": "a.test", "target_url": "http://x.test", "enabled": "yes"}, "enabled"),
    ({"hostname": "a.test", "target_url": "http://x.test", "route_mode": "some"}, "route_mode"),
    (
        {"hostname": "a.test", "target_url": "http://x.test", "custom_headers": {"Host": "y"}},
        "custom_headers",
    ),
    ({"hostname": "a.test", "target_url": "http://x.test", "created_at": "now"}, "created_at"),
    ({"hostname": "a.test", "target_url": "http://x.test", "created_by": "me"}, "created_by"),
    (
        {"hostname": "a.test", "target_url": "http://x.test", "owner_token_hash": "me"},
        "owner_token_hash",
    ),
    (
        {"hostname": "a.test", "target_url": "http://x.test", "owner_token_hash": sha256("x")},
        "owner_token_hash",  # no such token
    ),
]


def test_proxy_validation_conflicts_and_missing(
    api: EdgeProcess, admin: str, rdb: redis.Redis
) -> None:
    port = api.api_port
    for body, field in INVALID_PROXIES:
        assert_error(call(port, "POST", P, admin, body), 400, "invalid_body", field)
    # the loader's own words
    bad = call(port, "POST", P, admin, {"hostname": "a.test", "target_url": "ftp://x.test"})
    assert "http:// or https:// URL" in bad.error["message"]
    assert_error(call(port, "POST", P, admin, raw=b"[1]"), 400, "invalid_body")
    assert_error(call(port, "POST", P, admin, raw=b"{"), 400, "invalid_json")
    assert_error(call(port, "POST", P, admin), 400, "invalid_body")
    body = {"hostname": "a.test", "target_url": "http://x.test"}
    assert_error(
        call(port, "POST", P, admin, body, content_type="text/plain"), 415, "unsupported_media_type"
    )
    assert config_keys(rdb) == set()  # nothing invalid was written

    ok(call(port, "POST", P, admin, body), 201)
    stored = rdb.get("proxy:a.test")
    for again in (body, {**body, "hostname": "A.TEST"}):
        assert_error(call(port, "POST", f"{P}/", admin, again), 409, "proxy_exists", "hostname")
    for change, field in (
        ({"hostname": "b.test", "target_url": "http://x.test"}, "hostname"),
        ({"target_url": "gopher://x.test"}, "target_url"),
        ({"target_url": "http://x.test", "unknown": 1}, "unknown"),
    ):
        answer = call(port, "PUT", f"{P}/a.test", admin, change)
        assert_error(answer, 400, "invalid_body", field)
    assert rdb.get("proxy:a.test") == stored  # a refused PUT changes nothing
    assert ok(
        call(
            port, "PUT", f"{P}/A.test", admin, {"hostname": "A.Test", "target_url": "http://y.test"}
        )
    )
    for method in ("GET", "DELETE"):
        assert_error(call(port, method, f"{P}/missing.test", admin), 404, "proxy_not_found")
    answer = call(port, "POST", f"{P}/a.test", admin, {})
    assert_error(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == "DELETE, GET, HEAD, PATCH, PUT"


def test_proxy_patch_changes_only_the_given_fields(
    api: EdgeProcess, admin: str, ups: dict[str, Upstream], rdb: redis.Redis
) -> None:
    port = api.api_port
    one, two = ups["one"].url, ups["two"].url
    body = {
        "hostname": "app.test",
        "target_url": one,
        "enable_https": False,
        "custom_headers": {"X-Env": "test"},
        "cert_email": "ops@example.com",
    }
    created = ok(call(port, "POST", P, admin, body), 201)
    assert created["cert_email"] == "ops@example.com" and created["acme_directory_url"] is None
    becomes(api, "app.test", "one")

    def stored() -> dict[str, Any]:
        doc = json.loads(rdb.get("proxy:app.test"))
        assert isinstance(doc, dict)
        return doc

    # only the fields sent change; the rest (enable_https, headers, created_*) is kept
    patch = {"target_url": two, "acme_directory_url": "https://ca.example.com/dir"}
    patched = ok(call(port, "PATCH", f"{P}/App.Test", admin, patch))
    assert patched == {**created, **patch}
    assert stored() == patched
    becomes(api, "app.test", "two")
    # an object value replaces the field as a whole; null puts a field back to its default
    patched = ok(
        call(
            port,
            "PATCH",
            f"{P}/app.test/",
            admin,
            {"custom_headers": {"X-Other": "1"}, "enable_https": None, "cert_email": None},
            content_type="application/merge-patch+json",
        )
    )
    assert patched["custom_headers"] == {"X-Other": "1"}
    assert patched["enable_https"] is True and patched["cert_email"] is None
    assert patched["acme_directory_url"] == "https://ca.example.com/dir"
    # the same identity and read-only values may be repeated; an empty patch changes nothing
    same = {"hostname": "APP.test", "created_at": created["created_at"], "created_by": "admin"}
    assert ok(call(port, "PATCH", f"{P}/app.test", admin, same)) == patched
    assert ok(call(port, "PATCH", f"{P}/app.test", admin, {})) == patched

    # refusals, and a refused PATCH changes nothing
    before = rdb.get("proxy:app.test")
    for change, field in (
        ({"hostname": "other.test"}, "hostname"),
        ({"target_url": "gopher://x.test"}, "target_url"),
        ({"target_url": None}, "target_url"),  # required: no default to go back to
        ({"enabled": "yes"}, "enabled"),
        ({"cert_email": "nobody"}, "cert_email"),
        ({"acme_directory_url": "http://ca.example.com/dir"}, "acme_directory_url"),
        ({"created_at": "2020-01-01T00:00:00Z"}, "created_at"),
        ({"custom_headers": {"Host": "x"}}, "custom_headers"),
        ({"route_mode": "selective", "tagret_url": 1, "zz": 2}, "tagret_url"),
    ):
        answer = call(port, "PATCH", f"{P}/app.test", admin, change)
        assert_error(answer, 400, "invalid_body", field)
    unknown = call(port, "PATCH", f"{P}/app.test", admin, {"tagret_url": 1, "zz": 2}).error
    assert "tagret_url" in unknown["message"] and "zz" in unknown["message"]
    assert rdb.get("proxy:app.test") == before
    assert_error(call(port, "PATCH", f"{P}/app.test", admin, raw=b"[1]"), 400, "invalid_body")
    answer = call(port, "PATCH", f"{P}/app.test", admin, {"enabled": False}, content_type=None)
    assert_error(answer, 415, "unsupported_media_type")
    for host in ("missing.test", "bad_host"):
        answer = call(port, "PATCH", f"{P}/{host}", admin, {"enabled": False})
        assert_error(answer, 404, "proxy_not_found")
    assert not rdb.exists("proxy:missing.test")

    # PUT still replaces the whole document: what it leaves out takes its default
    replaced = ok(call(port, "PUT", f"{P}/app.test", admin, {"target_url": one}))
    assert replaced["custom_headers"] == {} and replaced["acme_directory_url"] is None
    assert replaced["created_at"] == created["created_at"]
    becomes(api, "app.test", "one")


def test_proxy_patch_follows_the_ownership_rules_of_put(
    api: EdgeProcess, admin: str, rdb: redis.Redis
) -> None:
    port = api.api_port
    alice, bob = new_token(port, admin, "alice"), new_token(port, admin, "bob")
    body = {"hostname": "a.test", "target_url": "http://127.0.0.1:9"}
    mine = ok(call(port, "POST", P, alice, body), 201)
    # bob: alice's proxy does not exist for him
    answer = call(port, "PATCH", f"{P}/a.test", bob, {"enabled": False})
    assert_error(answer, 404, "proxy_not_found")
    assert json.loads(rdb.get("proxy:a.test")) == mine
    # alice changes her own, keeps it, and may not give it away
    changed = ok(call(port, "PATCH", f"{P}/a.test", alice, {"enabled": False}))
    assert changed["enabled"] is False and changed["owner_token_hash"] == sha256(alice)
    answer = call(port, "PATCH", f"{P}/a.test", alice, {"owner_token_hash": sha256(bob)})
    assert_error(answer, 403, "forbidden", "owner_token_hash")
    # the admin may hand it over (to a token that exists), and take the owner away
    answer = call(port, "PATCH", f"{P}/a.test", admin, {"owner_token_hash": sha256("x")})
    assert_error(answer, 400, "invalid_body", "owner_token_hash")
    moved = ok(call(port, "PATCH", f"{P}/a.test", admin, {"owner_token_hash": sha256(bob)}))
    assert moved["owner_token_hash"] == sha256(bob) and moved["enabled"] is False
    assert_error(call(port, "PATCH", f"{P}/a.test", alice, {}), 404, "proxy_not_found")
    assert ok(call(port, "PATCH", f"{P}/a.test", bob, {"enabled": True}))["enabled"] is True
    unowned = ok(call(port, "PATCH", f"{P}/a.test", admin, {"owner_token_hash": None}))
    assert unowned["owner_token_hash"] is None
    assert_error(call(port, "PATCH", f"{P}/a.test", bob, {}), 404, "proxy_not_found")


def test_concurrent_patches_keep_each_others_fields(
    edge_factory: EdgeFactory, admin: str, rdb: redis.Redis
) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_WORKERS=2)
    port = edge.api_port
    ok(call(port, "POST", P, admin, {"hostname": "race.test", "target_url": "http://x.test"}), 201)
    # each writer owns one field and sets it several times, all at once over two workers
    rounds = 5
    writers: dict[str, Callable[[int], Any]] = {
        "cert_name": lambda i: f"cert{i}",
        "cert_email": lambda i: f"ops{i}@example.com",
        "acme_directory_url": lambda i: f"https://ca.example.com/{i}",
        "custom_headers": lambda i: {"X-Round": str(i)},
        "enabled_routes": lambda i: [f"r{i}"],
        "auth_cookie_name": lambda i: f"c{i}",
    }

    def patch(field: str) -> list[int]:
        return [
            call(port, "PATCH", f"{P}/race.test", admin, {field: value(i)}).status
            for i in range(rounds)
            for value in (writers[field],)
        ]

    with ThreadPoolExecutor(len(writers)) as pool:
        statuses = list(pool.map(patch, writers))
    assert statuses == [[200] * rounds] * len(writers)
    doc = json.loads(rdb.get("proxy:race.test"))
    last = rounds - 1
    assert {f: doc[f] for f in writers} == {
        f: json.loads(json.dumps(value(last))) for f, value in writers.items()
    }


def test_proxy_sub_resources(
    api: EdgeProcess, admin: str, ups: dict[str, Upstream], rdb: redis.Redis
) -> None:
    port = api.api_port
    base = f"{P}/app.test"
    proxy = ok(
        call(port, "POST", P, admin, {"hostname": "app.test", "target_url": ups["one"].url}), 201
    )
    auth_fields = sorted(f for f in proxy if f.startswith("auth_"))
    mcp_fields = sorted(f for f in proxy if f.startswith("resource_"))

    def stored() -> dict[str, Any]:
        doc = json.loads(rdb.get("proxy:app.test"))
        assert isinstance(doc, dict)
        return doc

    # auth: POST replaces the group (auth_enabled implied), DELETE resets it
    defaults = ok(call(port, "GET", f"{base}/auth", admin))
    assert sorted(defaults) == auth_fields and defaults["auth_enabled"] is False
    set_auth = {"auth_proxy": "auth.test:9000", "auth_required_users": ["alice"]}
    auth = ok(call(port, "POST", f"{base}/auth", admin, set_auth))
    assert auth["auth_enabled"] is True and auth["auth_required_users"] == ["alice"]
    assert stored()["auth_proxy"] == "auth.test:9000"
    auth = ok(
        call(port, "POST", f"{base}/auth/", admin, {"auth_enabled": False, "auth_mode": "redirect"})
    )
    assert auth["auth_proxy"] is None and auth["auth_mode"] == "redirect"
    assert ok(call(port, "GET", f"{base}/auth", admin)) == auth
    for body, field in (
        ({"target_url": "http://x.test"}, "target_url"),
        ({"auth_mode": "bogus"}, "auth_mode"),
        ({"auth_required_emails": ["nobody"]}, "auth_required_emails"),
        ({"auth_excluded_paths": ["no-slash"]}, "auth_excluded_paths"),
    ):
        assert_error(call(port, "POST", f"{base}/auth", admin, body), 400, "invalid_body", field)
    assert call(port, "DELETE", f"{base}/auth", admin).status == 204
    assert ok(call(port, "GET", f"{base}/auth", admin)) == defaults

    # mcp: the resource_* fields
    defaults = ok(call(port, "GET", f"{base}/mcp", admin))
    assert sorted(defaults) == mcp_fields and defaults["resource_bearer_methods"] == ["header"]
    body = {
        "resource_endpoint": "/mcp",
        "resource_scopes": ["read"],
        "resource_bearer_methods": ["query"],
    }
    mcp = ok(call(port, "POST", f"{base}/mcp", admin, body))
    assert mcp["resource_endpoint"] == "/mcp" and mcp["resource_scopes"] == ["read"]
    assert stored()["resource_bearer_methods"] == ["query"]
    for body, field in (
        ({"resource_bearer_methods": ["cookie"]}, "resource_bearer_methods"),
        ({"resource_documentation_suffix": "docs"}, "resource_documentation_suffix"),
        ({"auth_enabled": True}, "auth_enabled"),
    ):
        assert_error(call(port, "POST", f"{base}/mcp", admin, body), 400, "invalid_body", field)
    assert call(port, "DELETE", f"{base}/mcp", admin).status == 204
    assert ok(call(port, "GET", f"{base}/mcp", admin)) == defaults

    # routes: which routes apply, live
    route = {
        "route_id": "api",
        "path_pattern": "/api",
        "target_type": "url",
        "target_value": ups["two"].url,
    }
    ok(call(port, "POST", R, admin, route), 201)
    becomes(api, "app.test", "two", "/api/x")
    assert ok(call(port, "GET", f"{base}/routes", admin)) == {
        "route_mode": "all",
        "enabled_routes": [],
        "disabled_routes": [],
    }
    routes = ok(call(port, "PUT", f"{base}/routes", admin, {"route_mode": "none"}))
    assert routes["route_mode"] == "none"
    becomes(api, "app.test", "one", "/api/x")
    routes = ok(
        call(
            port,
            "PUT",
            f"{base}/routes",
            admin,
            {"route_mode": "selective", "enabled_routes": ["api"]},
        )
    )
    assert routes == {"route_mode": "selective", "enabled_routes": ["api"], "disabled_routes": []}
    becomes(api, "app.test", "two", "/api/x")
    for body, field in (
        ({"route_mode": "most"}, "route_mode"),
        ({"disabled_routes": ["has space"]}, "disabled_routes"),
        ({"enabled": False}, "enabled"),
    ):
        assert_error(call(port, "PUT", f"{base}/routes", admin, body), 400, "invalid_body", field)
    answer = call(port, "DELETE", f"{base}/routes", admin)
    assert_error(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == "GET, HEAD, PUT"

    # the rest of the proxy is untouched by all of this
    assert stored()["target_url"] == ups["one"].url
    assert stored()["created_at"] == proxy["created_at"]
    every = [(m, sub) for sub in ("auth", "mcp") for m in ("GET", "POST", "DELETE")]
    every += [("GET", "routes"), ("PUT", "routes")]
    for method, sub in every:
        answer = call(port, method, f"{P}/none.test/{sub}", admin, {} if method != "GET" else None)
        assert_error(answer, 404, "proxy_not_found")


# ---------------------------------------------------------------------------- routes


def route(route_id: str, path: str, priority: int, target: str, **extra: Any) -> dict[str, Any]:
    return {
        "route_id": route_id,
        "path_pattern": path,
        "priority": priority,
        "target_type": "url",
        "target_value": target,
        **extra,
    }


def test_routes_with_their_index_keys(
    api: EdgeProcess, admin: str, ups: dict[str, Upstream], rdb: redis.Redis
) -> None:
    port = api.api_port
    one, two = ups["one"].url, ups["two"].url
    ok(call(port, "POST", P, admin, {"hostname": "app.test", "target_url": one}), 201)

    created = call(port, "POST", f"{R}/", admin, route("api", "/api", 100, two, methods=["get"]))
    doc = ok(created, 201)
    assert created.headers["location"] == f"{R}/api"
    assert doc["methods"] == ["GET"]  # normalised by the loader's rules
    assert doc["owner_token_hash"] == sha256(admin) and doc["created_by"] == "admin"
    assert json.loads(rdb.get("route:api")) == doc
    assert rdb.get("route:unique:/api:100") == b"api"
    assert rdb.get("route:priority:100:api") == b"api"
    becomes(api, "app.test", "two", "/api/x")
    assert ok(call(port, "GET", f"{R}/api", admin)) == doc

    # conflicts: the same id; the same path and priority (whatever the id)
    assert_error(
        call(port, "POST", R, admin, route("api", "/other", 1, one)),
        409,
        "route_exists",
        "route_id",
    )
    answer = call(port, "POST", R, admin, route("api-copy", "/api", 100, one))
    assert_error(answer, 409, "route_conflict", "path_pattern")
    assert rdb.get("route:api-copy") is None
    low = ok(call(port, "POST", R, admin, route("api-low", "/api", 10, one)), 201)
    assert rdb.get("route:unique:/api:10") == b"api-low"

    # an id that is not one path segment is percent-encoded
    slashed = call(port, "POST", R, admin, route("team/x", "/team", 5, one))
    assert slashed.headers["location"] == f"{R}/team%2Fx"
    assert ok(call(port, "GET", f"{R}/team%2Fx", admin))["route_id"] == "team/x"
    assert call(port, "DELETE", f"{R}/team%2Fx", admin).status == 204
    assert keys(rdb, "route:*") == {
        "route:api", "route:unique:/api:100", "route:priority:100:api",
        "route:api-low", "route:unique:/api:10", "route:priority:10:api-low",
    }  # fmt: skip

    # update: the index keys move with the route, in the same transaction
    moved = ok(call(port, "PUT", f"{R}/api", admin, route("api", "/v2", 200, two)))
    assert moved["created_at"] == doc["created_at"] and moved["methods"] is None
    assert rdb.get("route:unique:/api:100") is None
    assert rdb.get("route:priority:100:api") is None
    assert rdb.get("route:unique:/v2:200") == b"api"
    assert rdb.get("route:priority:200:api") == b"api"
    becomes(api, "app.test", "two", "/v2")
    becomes(api, "app.test", "one", "/api/x")  # now the low-priority route, to "one"
    # an update onto another route's path and priority is refused, nothing changes
    before = {k: rdb.get(k) for k in keys(rdb, "route:*")}
    answer = call(port, "PUT", f"{R}/api-low", admin, route("api-low", "/v2", 200, one))
    assert_error(answer, 409, "route_conflict", "path_pattern")
    assert {k: rdb.get(k) for k in keys(rdb, "route:*")} == before
    # the same path and priority as itself is fine
    assert (
        ok(call(port, "PUT", f"{R}/api-low", admin, {**low, "description": "low"}))["description"]
        == "low"
    )
    assert rdb.get("route:unique:/api:10") == b"api-low"

    # validation: the loader's rules, plus ids that would address the index keys
    for body, field in (
        (route("bad", "/x", 1, one, target_type="ftp"), "target_type"),
        (route("bad", "no-slash", 1, one), "path_pattern"),
        (route("bad", "([", 1, one, is_regex=True), "path_pattern"),
        (route("bad", "/x", 1, "ftp://x.test"), "target_value"),
        (route("bad", "/x", 1, one, target_type="port", target_value="70000"), "target_value"),
        (route("bad", "/x", 10**6, one), "priority"),
        (route("bad", "/x", 1, one, scope="proxy"), "proxy_hostnames"),
        (route("bad", "/x", 1, one, extra=True), "extra"),
        (route("unique:/x", "/x", 1, one), "route_id"),
        (route("priority:1", "/x", 1, one), "route_id"),
        (route("has space", "/x", 1, one), "route_id"),
        (route("formatted", "/x", 1, one), "route_id"),  # the path of the text table
        ({**route("x", "/x", 1, one), "route_id": 5}, "route_id"),
        ({"route_id": "bad", "target_type": "url", "target_value": one}, "path_pattern"),
    ):
        assert_error(call(port, "POST", R, admin, body), 400, "invalid_body", field)
    assert_error(
        call(port, "PUT", f"{R}/api", admin, route("other", "/v2", 200, two)),
        400,
        "invalid_body",
        "route_id",
    )
    assert rdb.get("route:bad") is None

    # a stale unique key (its route deleted by hand) is taken over
    rdb.set("route:unique:/stale:5", "ghost")
    ok(call(port, "POST", R, admin, route("fresh", "/stale", 5, one)), 201)
    assert rdb.get("route:unique:/stale:5") == b"fresh"

    # delete: the route and its index keys
    assert call(port, "DELETE", f"{R}/api", admin).status == 204
    assert not rdb.exists("route:api", "route:unique:/v2:200", "route:priority:200:api")
    becomes(api, "app.test", "one", "/v2")
    for method in ("GET", "DELETE"):
        assert_error(call(port, method, f"{R}/api", admin), 404, "route_not_found")
    assert_error(
        call(port, "PUT", f"{R}/api", admin, route("api", "/v2", 1, one)), 404, "route_not_found"
    )
    # index keys are not routes
    for path in (f"{R}/unique:%2Fapi:10", f"{R}/priority:10:api-low"):
        assert_error(call(port, "GET", path, admin), 404, "route_not_found")
        assert_error(call(port, "DELETE", path, admin), 404, "route_not_found")
    assert rdb.exists("route:unique:/api:10")
    listed = ok(call(port, "GET", R, admin))["routes"]
    assert [r["route_id"] for r in listed] == ["api-low", "fresh"]


def test_route_ids_are_generated_when_none_is_given(api: EdgeProcess, admin: str) -> None:
    port = api.api_port
    body = {"path_pattern": "/x", "target_type": "port", "target_value": "9001"}
    ids = set()
    for n, extra in enumerate(({}, {"route_id": None})):
        created = call(port, "POST", R, admin, {**body, "priority": n, **extra})
        doc = ok(created, 201)
        route_id = doc["route_id"]
        assert re.fullmatch(r"r_[1-9A-HJ-NP-Za-km-z]{12}", route_id), route_id
        assert created.headers["location"] == f"{R}/{route_id}"  # nothing to percent-encode
        assert ok(call(port, "GET", f"{R}/{route_id}", admin)) == doc
        ids.add(route_id)
    assert len(ids) == 2
    # a generated id is still one route per path and priority
    answer = call(port, "POST", R, admin, {**body, "priority": 0})
    assert_error(answer, 409, "route_conflict", "path_pattern")
    assert len(ok(call(port, "GET", R, admin))["routes"]) == 2


def test_routes_are_listed_in_evaluation_order(
    api: EdgeProcess, admin: str, ups: dict[str, Upstream]
) -> None:
    port = api.api_port
    one, two = ups["one"].url, ups["two"].url
    ok(call(port, "POST", P, admin, {"hostname": "app.test", "target_url": one}), 201)
    ok(call(port, "POST", P, admin, {"hostname": "other.test", "target_url": one}), 201)
    # created out of order on purpose
    for body in (
        route("b-short", "/api", 50, one),
        route("z-low", "/", 1, one, enabled=False),
        route("a-long", "/api/v2", 50, two, methods=["GET", "POST"]),
        route("c-short", "/api", 60, two, scope="proxy", proxy_hostnames=["other.test"]),
        route("a-same", "/apx", 50, one, description="same length as /api: by id"),
        route("top", r"^/v\d+/", 900, two, is_regex=True),
    ):
        ok(call(port, "POST", R, admin, body), 201)
    # priority first (higher first), then the longer path_pattern, then route_id: the
    # order in which the edge tries them
    expected = ["top", "c-short", "a-long", "a-same", "b-short", "z-low"]
    listed = ok(call(port, "GET", f"{R}/", admin))["routes"]
    assert [r["route_id"] for r in listed] == expected
    becomes(api, "app.test", "two", "/api/v2/x")  # a-long before b-short: same priority
    becomes(api, "app.test", "one", "/api/x")

    # ?scope= filters, keeping the order; anything else is refused naming the parameter
    scoped = ok(call(port, "GET", f"{R}?scope=proxy", admin))["routes"]
    assert [r["route_id"] for r in scoped] == ["c-short"]
    glob = ok(call(port, "GET", f"{R}/?scope=global", admin))["routes"]
    assert [r["route_id"] for r in glob] == [i for i in expected if i != "c-short"]
    for query, field in (
        ("scope=local", "scope"),
        ("scope=", "scope"),
        ("scope=global&scope=proxy", "scope"),
        ("sort=id", "sort"),
    ):
        assert_error(call(port, "GET", f"{R}?{query}", admin), 400, "invalid_query", field)

    # the same routes as a text table, in the same order
    text = call(port, "GET", f"{R}/formatted", admin)
    assert text.status == 200, text.raw
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    lines = text.raw.decode().splitlines()
    assert lines[0].split() == [
        "PRIORITY", "ID", "PATTERN", "METHODS", "TARGET", "SCOPE", "ENABLED"
    ]  # fmt: skip
    assert [line.split()[1] for line in lines[1:]] == expected
    rows = {line.split()[1]: line for line in lines[1:]}
    assert rows["top"].split()[:3] == ["900", "top", "~^/v\\d+/"]  # a regex is marked with ~
    assert rows["a-long"].split()[2:5] == ["/api/v2", "GET,POST", f"url:{two}"]
    assert rows["b-short"].split()[3] == "*"  # every method
    assert rows["c-short"].split()[5:] == ["proxy:other.test", "yes"]
    assert rows["z-low"].split()[5:] == ["global", "no"]
    # the columns line up: each starts where its heading does
    start = lines[0].index("PATTERN")
    assert all(line[start - 2 : start] == "  " and line[start] != " " for line in lines[1:])
    only = call(port, "GET", f"{R}/formatted?scope=proxy", admin).raw.decode().splitlines()
    assert [line.split()[1] for line in only[1:]] == ["c-short"]
    answer = call(port, "GET", f"{R}/formatted?scope=x", admin)
    assert_error(answer, 400, "invalid_query", "scope")
    assert_error(call(port, "GET", f"{R}/formatted", None), 401, "unauthorized")

    # another token sees only its own routes, in the same order
    alice = new_token(port, admin, "alice")
    ok(call(port, "POST", P, alice, {"hostname": "alice.test", "target_url": one}), 201)
    for rid, prio in (("s1", 5), ("s2", 7)):
        body = route(rid, f"/{rid}", prio, one, scope="proxy", proxy_hostnames=["alice.test"])
        ok(call(port, "POST", R, alice, body), 201)
    assert [r["route_id"] for r in ok(call(port, "GET", R, alice))["routes"]] == ["s2", "s1"]
    mine = call(port, "GET", f"{R}/formatted", alice).raw.decode().splitlines()
    assert [line.split()[1] for line in mine[1:]] == ["s2", "s1"]


def test_racing_writes_have_one_winner(
    edge_factory: EdgeFactory, admin: str, rdb: redis.Redis
) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_WORKERS=2)
    port = edge.api_port

    def create_route(i: int) -> int:
        return call(port, "POST", R, admin, route(f"r{i}", "/same", 7, "http://x.test")).status

    def create_proxy(i: int) -> int:
        body = {"hostname": "race.test", "target_url": f"http://x{i}.test"}
        return call(port, "POST", P, admin, body).status

    with ThreadPoolExecutor(12) as pool:
        routes = list(pool.map(create_route, range(12)))
        proxies = list(pool.map(create_proxy, range(12)))
    assert sorted(routes) == [201] + [409] * 11
    assert sorted(proxies) == [201] + [409] * 11
    winner = rdb.get("route:unique:/same:7").decode()
    assert keys(rdb, "route:*") == {
        f"route:{winner}",
        "route:unique:/same:7",
        f"route:priority:7:{winner}",
    }


# ---------------------------------------------------------------------------- services


def test_external_services(
    api: EdgeProcess, admin: str, ups: dict[str, Upstream], rdb: redis.Redis
) -> None:
    port = api.api_port
    body = {"service_name": "billing", "target_url": ups["two"].url, "description": "invoices"}
    created = call(port, "POST", S, admin, body)
    doc = ok(created, 201)
    assert created.headers["location"] == f"{S}/billing"
    assert doc["service_name"] == "billing" and doc["description"] == "invoices"
    assert doc["owner_token_hash"] == sha256(admin) and doc["created_by"] == "admin"
    assert json.loads(rdb.get("service:external:billing")) == doc
    assert rdb.get("service:url:billing") == ups["two"].url.encode()
    assert rdb.smembers("services:external") == {b"billing"}
    for path in (S, f"{S}/"):
        assert ok(call(port, "GET", path, admin)) == {"services": [doc]}
    assert ok(call(port, "GET", f"{S}/billing", admin)) == doc

    # a route to the service is served through it
    ok(call(port, "POST", P, admin, {"hostname": "app.test", "target_url": ups["one"].url}), 201)
    to_service = {
        "route_id": "bill",
        "path_pattern": "/bill",
        "target_type": "service",
        "target_value": "billing",
    }
    ok(call(port, "POST", R, admin, to_service), 201)
    becomes(api, "app.test", "two", "/bill")

    assert_error(call(port, "POST", S, admin, body), 409, "service_exists", "service_name")
    rdb.set("service:url:legacy", "http://legacy.test")  # a plain service set by hand
    legacy = {"service_name": "legacy", "target_url": "http://new.test"}
    assert_error(call(port, "POST", S, admin, legacy), 409, "service_exists", "service_name")
    assert rdb.get("service:url:legacy") == b"http://legacy.test"
    for bad, field in (
        ({"service_name": "bad name", "target_url": "http://x.test"}, "service_name"),
        ({"service_name": "a:b", "target_url": "http://x.test"}, "service_name"),
        ({"service_name": "", "target_url": "http://x.test"}, "service_name"),
        ({"target_url": "http://x.test"}, "service_name"),
        ({"service_name": "ok"}, "target_url"),
        ({"service_name": "ok", "target_url": "ftp://x.test"}, "target_url"),
        ({"service_name": "ok", "target_url": "http://x.test", "routing": True}, "routing"),
        (
            {"service_name": "ok", "target_url": "http://x.test", "routing_enabled": "y"},
            "routing_enabled",
        ),
    ):
        assert_error(call(port, "POST", S, admin, bad), 400, "invalid_body", field)
    assert not rdb.exists("service:external:ok", "service:url:ok")

    deleted = call(port, "DELETE", f"{S}/billing", admin)
    assert deleted.status == 204
    assert not rdb.exists("service:external:billing", "service:url:billing")
    assert rdb.smembers("services:external") == set()
    becomes(api, "app.test", 502, "/bill")  # the route's service is gone
    for method in ("GET", "DELETE"):
        assert_error(call(port, method, f"{S}/billing", admin), 404, "service_not_found")
    assert_error(call(port, "GET", f"{S}/bad%20name", admin), 404, "service_not_found")
    answer = call(port, "PUT", f"{S}/billing", admin, body)
    assert_error(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == "DELETE, GET, HEAD"


# ---------------------------------------------------------------------------- certificates


def test_certificates_never_show_a_private_key(
    api: EdgeProcess, admin: str, ca: trustme.CA, rdb: redis.Redis
) -> None:
    port = api.api_port
    team = new_token(port, admin, "team")
    site, other, stray = issue(ca, "a.test", "www.a.test"), issue(ca, "b.test"), issue(ca, "c.test")
    store_cert(rdb, "site", site, ["a.test", "www.a.test"], sha256(team))
    store_cert(rdb, "other", other, ["b.test"], sha256(admin), email="ops@b.test")
    # a record whose key does not match its certificate
    store_cert(rdb, "broken", Cert(stray.chain_pem, other.key_pem), ["c.test"], None)
    rdb.set("cert:domain:old.a.test", "site")
    secrets = site.key_lines + other.key_lines + stray.key_lines
    answers: list[Answer] = []

    def get(path: str, token: str = admin) -> Any:
        answer = call(port, "GET", path, token)
        answers.append(answer)
        return ok(answer)

    for path in (C, f"{C}/"):
        listed = get(path)["certificates"]
        assert [c["name"] for c in listed] == ["broken", "other", "site"]
    by_name = {c["name"]: c for c in listed}
    assert set(by_name["site"]) == {"name", "domains", "expires_at", "status", "problem"}
    assert by_name["site"]["domains"] == ["a.test", "www.a.test"]
    assert by_name["site"]["status"] == "issued" and by_name["site"]["problem"] is None
    # from the certificate itself (trustme's leaves are valid until the year 3000)
    assert by_name["site"]["expires_at"] == "3000-01-01T00:00:00+00:00"
    assert by_name["broken"]["problem"].startswith("private_key_pem:")

    details = get(f"{C}/site")
    assert details["san"] == ["a.test", "www.a.test"]
    assert "O=trustme" in details["issuer"]
    assert re.fullmatch(r"[0-9a-f]+", details["serial"])
    assert details["not_after"] == by_name["site"]["expires_at"]
    assert details["key_type"] == "EC-P-256" or details["key_type"].startswith("RSA")
    assert details["domain_keys"] == [
        "cert:domain:a.test",
        "cert:domain:old.a.test",
        "cert:domain:www.a.test",
    ]
    assert details["owner_token_hash"] == sha256(team)
    assert "private_key_pem" not in details and "fullchain_pem" not in details
    assert get(f"{C}/other")["email"] == "ops@b.test"
    broken = get(f"{C}/broken")
    assert broken["problem"] == "private_key_pem: private key does not match the certificate"
    assert broken["subject"] is None
    # another token sees its own certificate only
    assert [c["name"] for c in get(C, team)["certificates"]] == ["site"]
    assert get(f"{C}/site", team)["name"] == "site"
    for name in ("other", "broken", "missing", "domain:a.test"):
        assert_error(call(port, "GET", f"{C}/{name}", team), 404, "certificate_not_found")
    assert_error(call(port, "DELETE", f"{C}/other", team), 404, "certificate_not_found")
    assert_error(call(port, "GET", f"{C}/domain:a.test", admin), 404, "certificate_not_found")

    for answer in answers:
        text = answer.raw.decode()
        assert "PRIVATE KEY" not in text
        assert not any(line in text for line in secrets)

    # delete: the record and every cert:domain: key naming it, nothing else
    assert call(port, "DELETE", f"{C}/site", team).status == 204
    assert not rdb.exists(
        "cert:site", "cert:domain:a.test", "cert:domain:www.a.test", "cert:domain:old.a.test"
    )
    assert rdb.get("cert:domain:b.test") == b"other" and rdb.exists("cert:other")
    assert_error(call(port, "DELETE", f"{C}/site", team), 404, "certificate_not_found")
    assert call(port, "DELETE", f"{C}/broken", admin).status == 204
    assert keys(rdb, "cert:*") == {"cert:other", "cert:domain:b.test"}
    # records are written by ACME issuance (POST: an order) or imported, never PUT
    answer = call(port, "PUT", C, admin, {})
    assert_error(answer, 405, "method_not_allowed")
    assert answer.headers["allow"] == "GET, HEAD, POST"


# ---------------------------------------------------------------------------- resources


def test_resources_with_percent_encoded_uris(
    api: EdgeProcess, admin: str, rdb: redis.Redis
) -> None:
    port = api.api_port
    uri = "https://mcp.example.com/mcp"
    body = {
        "uri": "https://MCP.Example.com/mcp",
        "name": "MCP",
        "scopes": ["mcp:read", "mcp:write"],
    }
    created = call(port, "POST", RES, admin, body)
    doc = ok(created, 201)
    assert created.headers["location"] == f"{RES}/https%3A%2F%2Fmcp.example.com%2Fmcp"
    assert doc == {
        "uri": uri,
        "name": "MCP",
        "description": "",
        "scopes": ["mcp:read", "mcp:write"],
        "owner_token_hash": sha256(admin),
        "created_at": doc["created_at"],
        "created_by": "admin",
    }
    assert json.loads(rdb.get(f"resource:{uri}")) == doc
    for path in (
        f"{RES}/{enc(uri)}",
        f"{RES}/{enc('https://MCP.example.com/mcp')}/",
        created.headers["location"],
    ):
        assert ok(call(port, "GET", path, admin)) == doc
    for path in (RES, f"{RES}/"):
        assert ok(call(port, "GET", path, admin)) == {"resources": [doc]}

    assert_error(call(port, "POST", RES, admin, body), 409, "resource_exists", "uri")
    local = ok(
        call(port, "POST", RES, admin, {"uri": "http://127.0.0.1:8080/mcp", "name": "dev"}), 201
    )
    assert local["scopes"] == []
    ok(call(port, "POST", RES, admin, {"uri": "http://localhost/x", "name": "dev2"}), 201)
    for bad, field in (
        ({"uri": "http://example.com/mcp", "name": "x"}, "uri"),
        ({"uri": "https://example.com/mcp?x=1", "name": "x"}, "uri"),
        ({"uri": "https://example.com/mcp#f", "name": "x"}, "uri"),
        ({"uri": "/relative", "name": "x"}, "uri"),
        ({"uri": 5, "name": "x"}, "uri"),
        ({"name": "x"}, "uri"),
        ({"uri": "https://x.test"}, "name"),
        ({"uri": "https://x.test", "name": ""}, "name"),
        ({"uri": "https://x.test", "name": "two\nlines"}, "name"),
        ({"uri": "https://x.test", "name": "x", "scopes": ["has space"]}, "scopes"),
        ({"uri": "https://x.test", "name": "x", "scopes": ["a", "a"]}, "scopes"),
        ({"uri": "https://x.test", "name": "x", "scopes": "read"}, "scopes"),
        ({"uri": "https://x.test", "name": "x", "extra": 1}, "extra"),
        (
            {"uri": "https://x.test", "name": "x", "created_at": "2020-01-01T00:00:00Z"},
            "created_at",
        ),
    ):
        assert_error(call(port, "POST", RES, admin, bad), 400, "invalid_body", field)
    assert not rdb.exists("resource:https://x.test")

    # PUT replaces (scopes left out are gone), creation metadata kept
    path = f"{RES}/{enc(uri)}"
    replaced = ok(call(port, "PUT", path, admin, {"name": "MCP 2", "description": "tools"}))
    assert replaced["scopes"] == [] and replaced["created_at"] == doc["created_at"]
    assert json.loads(rdb.get(f"resource:{uri}"))["name"] == "MCP 2"
    assert_error(
        call(port, "PUT", path, admin, {"uri": "https://other.test", "name": "x"}),
        400,
        "invalid_body",
        "uri",
    )
    assert_error(
        call(port, "PUT", path, admin, {"name": "x", "scopes": [1]}), 400, "invalid_body", "scopes"
    )

    assert call(port, "DELETE", path, admin).status == 204
    assert not rdb.exists(f"resource:{uri}")
    for method in ("GET", "DELETE"):
        assert_error(call(port, method, path, admin), 404, "resource_not_found")
    assert_error(call(port, "PUT", path, admin, {"name": "x"}), 404, "resource_not_found")
    assert_error(call(port, "GET", f"{RES}/not-a-uri", admin), 404, "resource_not_found")
    # an unencoded URI is several path segments: no such endpoint
    assert_error(call(port, "GET", f"{RES}/https://x.test/mcp", admin), 404, "not_found")


# ---------------------------------------------------------------------------- ownership


def test_tokens_see_and_change_only_their_own_records(
    api: EdgeProcess, admin: str, ups: dict[str, Upstream], rdb: redis.Redis
) -> None:
    port = api.api_port
    alice, bob = new_token(port, admin, "alice"), new_token(port, admin, "bob")
    one = ups["one"].url
    mine = ok(call(port, "POST", P, alice, {"hostname": "a.test", "target_url": one}), 201)
    assert mine["owner_token_hash"] == sha256(alice) and mine["created_by"] == "alice"
    becomes(api, "a.test", "one")

    # bob: alice's proxy does not exist for him, whatever he tries
    missing = call(port, "GET", f"{P}/nothing.test", bob).error
    for method, path, body in (
        ("GET", f"{P}/a.test", None),
        ("PUT", f"{P}/a.test", {"target_url": ups["two"].url}),
        ("DELETE", f"{P}/a.test", None),
        ("GET", f"{P}/a.test/auth", None),
        ("POST", f"{P}/a.test/auth", {"auth_enabled": False}),
        ("DELETE", f"{P}/a.test/mcp", None),
        ("PUT", f"{P}/a.test/routes", {"route_mode": "none"}),
    ):
        answer = call(port, method, path, bob, body)
        assert_error(answer, 404, "proxy_not_found")
        assert {k: v for k, v in answer.error.items() if k != "request_id"} == {
            k: v for k, v in missing.items() if k != "request_id"
        }
    assert ok(call(port, "GET", P, bob)) == {"proxies": []}
    assert json.loads(rdb.get("proxy:a.test")) == mine
    assert served_by(api, "a.test") == "one"
    # a taken hostname is still taken (409 is all it says)
    body = {"hostname": "a.test", "target_url": one}
    assert_error(call(port, "POST", P, bob, body), 409, "proxy_exists", "hostname")

    # alice and the admin see it
    assert ok(call(port, "GET", P, alice)) == {"proxies": [mine]}
    assert ok(call(port, "GET", f"{P}/a.test", admin)) == mine
    assert ok(call(port, "POST", f"{P}/a.test/auth", alice, {"auth_mode": "redirect"}))[
        "auth_enabled"
    ]

    # owners: a token may name itself, only the admin may name another
    body = {"hostname": "b.test", "target_url": one, "owner_token_hash": sha256(alice)}
    assert_error(call(port, "POST", P, bob, body), 403, "forbidden", "owner_token_hash")
    assert_error(
        call(
            port, "PUT", f"{P}/a.test", alice, {"target_url": one, "owner_token_hash": sha256(bob)}
        ),
        403,
        "forbidden",
        "owner_token_hash",
    )
    body["owner_token_hash"] = sha256(bob)
    assert ok(call(port, "POST", P, bob, body), 201)["owner_token_hash"] == sha256(bob)
    given = ok(
        call(
            port,
            "POST",
            P,
            admin,
            {"hostname": "c.test", "target_url": one, "owner_token_hash": sha256(bob)},
        ),
        201,
    )
    assert given["created_by"] == "admin"
    assert [p["hostname"] for p in ok(call(port, "GET", P, bob))["proxies"]] == ["b.test", "c.test"]
    unowned = ok(
        call(
            port,
            "POST",
            P,
            admin,
            {"hostname": "d.test", "target_url": one, "owner_token_hash": None},
        ),
        201,
    )
    assert unowned["owner_token_hash"] is None
    assert_error(call(port, "GET", f"{P}/d.test", bob), 404, "proxy_not_found")
    # the admin hands alice's proxy over to bob
    moved = ok(
        call(
            port, "PUT", f"{P}/a.test", admin, {"target_url": one, "owner_token_hash": sha256(bob)}
        )
    )
    assert moved["owner_token_hash"] == sha256(bob) and moved["created_by"] == "alice"
    assert_error(call(port, "GET", f"{P}/a.test", alice), 404, "proxy_not_found")
    assert ok(call(port, "GET", f"{P}/a.test", bob))["hostname"] == "a.test"
    assert ok(call(port, "PUT", f"{P}/b.test", bob, {"target_url": ups["two"].url}))[
        "owner_token_hash"
    ] == sha256(bob)

    # routes of other tokens: proxy-scoped, on their own proxies only
    ok(call(port, "POST", P, alice, {"hostname": "alice.test", "target_url": one}), 201)
    glob = route("g", "/g", 1, one)
    assert_error(call(port, "POST", R, alice, glob), 403, "forbidden", "scope")
    for hosts in (["b.test"], ["alice.test", "b.test"], ["nowhere.test"]):
        scoped = route("s", "/s", 1, one, scope="proxy", proxy_hostnames=hosts)
        assert_error(call(port, "POST", R, alice, scoped), 403, "forbidden", "proxy_hostnames")
    # a hostname target serves with that host's proxy: only one of her own
    for target in ("b.test", "nowhere.test", "b.test:8080"):
        hop = {**route("h", "/h", 1, one, scope="proxy", proxy_hostnames=["alice.test"]),
               "target_type": "hostname", "target_value": target}  # fmt: skip
        assert_error(call(port, "POST", R, alice, hop), 403, "forbidden", "target_value")
    ok(call(port, "POST", P, alice, {"hostname": "alice2.test", "target_url": one}), 201)
    hop = {**route("h", "/h", 1, one, scope="proxy", proxy_hostnames=["alice.test"]),
           "target_type": "hostname", "target_value": "alice2.test"}  # fmt: skip
    ok(call(port, "POST", R, alice, hop), 201)
    assert call(port, "DELETE", f"{R}/h", alice).status == 204
    assert call(port, "DELETE", f"{P}/alice2.test", alice).status == 204
    scoped = route("s", "/s", 1, ups["two"].url, scope="proxy", proxy_hostnames=["alice.test"])
    assert ok(call(port, "POST", R, alice, scoped), 201)["owner_token_hash"] == sha256(alice)
    becomes(api, "alice.test", "two", "/s")
    assert served_by(api, "b.test", "/s") == "two"  # bob's target, not alice's route
    assert_error(
        call(port, "PUT", f"{R}/s", alice, {**scoped, "scope": "global", "proxy_hostnames": []}),
        403,
        "forbidden",
        "scope",
    )
    for method in ("GET", "DELETE"):
        assert_error(call(port, method, f"{R}/s", bob), 404, "route_not_found")
    assert ok(call(port, "GET", R, bob)) == {"routes": []}
    assert ok(call(port, "POST", R, admin, glob), 201)  # the admin may
    assert [r["route_id"] for r in ok(call(port, "GET", R, admin))["routes"]] == ["g", "s"]

    # services and resources likewise
    ok(call(port, "POST", S, alice, {"service_name": "svc", "target_url": one}), 201)
    ok(call(port, "POST", RES, alice, {"uri": "https://alice.test/mcp", "name": "a"}), 201)
    for method, path, code in (
        ("GET", f"{S}/svc", "service_not_found"),
        ("DELETE", f"{S}/svc", "service_not_found"),
        ("GET", f"{RES}/{enc('https://alice.test/mcp')}", "resource_not_found"),
        ("PUT", f"{RES}/{enc('https://alice.test/mcp')}", "resource_not_found"),
        ("DELETE", f"{RES}/{enc('https://alice.test/mcp')}", "resource_not_found"),
    ):
        assert_error(
            call(port, method, path, bob, {"name": "x"} if method == "PUT" else None), 404, code
        )
    assert ok(call(port, "GET", S, bob)) == {"services": []}
    assert ok(call(port, "GET", RES, bob)) == {"resources": []}
    assert len(ok(call(port, "GET", S, alice))["services"]) == 1
    assert (
        rdb.exists("service:external:svc", "service:url:svc", "resource:https://alice.test/mcp")
        == 3
    )
    # the token endpoints stay the admin's
    assert_error(call(port, "GET", T, alice), 403, "forbidden")


def test_a_token_replaces_hands_over_and_deletes_its_own_records(
    api: EdgeProcess, admin: str, ups: dict[str, Upstream], rdb: redis.Redis
) -> None:
    port = api.api_port
    one = ups["one"].url
    alice, bob = new_token(port, admin, "alice"), new_token(port, admin, "bob")
    ok(call(port, "POST", P, alice, {"hostname": "alice.test", "target_url": one}), 201)

    # a route: replaced by its owner (its index keys move), never by another token
    scoped = route("r", "/r", 5, one, scope="proxy", proxy_hostnames=["alice.test"])
    ok(call(port, "POST", R, alice, scoped), 201)
    assert rdb.get("route:unique:/r:5") == b"r" and rdb.get("route:priority:5:r") == b"r"
    moved = ok(call(port, "PUT", f"{R}/r", alice, {**scoped, "path_pattern": "/r2", "priority": 6}))
    assert moved["owner_token_hash"] == sha256(alice) and moved["created_by"] == "alice"
    assert not rdb.exists("route:unique:/r:5", "route:priority:5:r")
    assert rdb.get("route:unique:/r2:6") == b"r" and rdb.get("route:priority:6:r") == b"r"
    assert_error(call(port, "PUT", f"{R}/r", bob, scoped), 404, "route_not_found")
    # only the admin gives a record another owner
    given = {**scoped, "owner_token_hash": sha256(bob)}
    assert_error(call(port, "PUT", f"{R}/r", alice, given), 403, "forbidden", "owner_token_hash")
    same = ok(call(port, "PUT", f"{R}/r", alice, {**moved, "owner_token_hash": sha256(alice)}))
    assert same["owner_token_hash"] == sha256(alice)
    ok(call(port, "PUT", f"{R}/r", admin, {**moved, "owner_token_hash": sha256(bob)}))
    assert_error(call(port, "GET", f"{R}/r", alice), 404, "route_not_found")
    assert ok(call(port, "GET", f"{R}/r", bob))["path_pattern"] == "/r2"
    assert call(port, "DELETE", f"{R}/r", bob).status == 204
    assert not rdb.exists("route:r", "route:unique:/r2:6", "route:priority:6:r")

    # a service: its owner deletes it, with its URL key and its set member
    svc = {"service_name": "svc", "target_url": one}
    refused = call(port, "POST", S, alice, {**svc, "owner_token_hash": sha256(bob)})
    assert_error(refused, 403, "forbidden", "owner_token_hash")
    assert ok(call(port, "POST", S, alice, svc), 201)["owner_token_hash"] == sha256(alice)
    assert call(port, "DELETE", f"{S}/svc", alice).status == 204
    assert not rdb.exists("service:external:svc", "service:url:svc")
    assert not rdb.sismember("services:external", "svc")
    handed = ok(call(port, "POST", S, admin, {**svc, "owner_token_hash": sha256(bob)}), 201)
    assert handed["owner_token_hash"] == sha256(bob)
    assert [x["service_name"] for x in ok(call(port, "GET", S, bob))["services"]] == ["svc"]
    assert ok(call(port, "GET", S, alice)) == {"services": []}

    # a resource: replaced (owner kept), handed over by the admin, deleted by the new owner
    uri = "https://alice.test/mcp"
    path = f"{RES}/{enc(uri)}"
    ok(call(port, "POST", RES, alice, {"uri": uri, "name": "tools"}), 201)
    changed = ok(call(port, "PUT", path, alice, {"name": "tools", "description": "d"}))
    assert changed["description"] == "d" and changed["owner_token_hash"] == sha256(alice)
    refused = call(port, "PUT", path, alice, {"name": "t", "owner_token_hash": sha256(bob)})
    assert_error(refused, 403, "forbidden", "owner_token_hash")
    ok(call(port, "PUT", path, admin, {"name": "tools", "owner_token_hash": sha256(bob)}))
    assert_error(call(port, "DELETE", path, alice), 404, "resource_not_found")
    assert call(port, "DELETE", path, bob).status == 204
    assert not rdb.exists(f"resource:{uri}")


def test_the_admin_cannot_give_a_record_to_a_token_being_deleted(
    api: EdgeProcess, admin: str, rdb: redis.Redis
) -> None:
    port = api.api_port
    bob = new_token(port, admin, "bob")
    doc = {
        "hostname": "x.test",
        "target_url": "http://127.0.0.1:9",
        "owner_token_hash": sha256(bob),
    }
    rdb.set(f"edge:token-deleting:{sha256(bob)}", "1", ex=30)  # bob's delete is running
    assert_error(call(port, "POST", P, admin, doc), 400, "invalid_body", "owner_token_hash")
    assert not rdb.exists("proxy:x.test")
    rdb.delete(f"edge:token-deleting:{sha256(bob)}")  # the delete failed: bob is whole again
    assert ok(call(port, "POST", P, admin, doc), 201)["owner_token_hash"] == sha256(bob)


def test_route_index_keys_around_hand_written_routes(
    api: EdgeProcess, admin: str, rdb: redis.Redis
) -> None:
    port = api.api_port
    target = "http://127.0.0.1:9"
    # a route written by hand has no index keys; replacing it through the API adds them
    rdb.set("route:hand", json.dumps(route("hand", "/hand", 4, target)))
    replaced = ok(call(port, "PUT", f"{R}/hand", admin, route("hand", "/hand", 4, target)))
    assert replaced["route_id"] == "hand"
    assert rdb.get("route:unique:/hand:4") == b"hand"
    assert rdb.get("route:priority:4:hand") == b"hand"
    # ...and a route written by hand is not in the index, so the API cannot see it is taken
    # (docs/api.md: the index covers routes written through the API)
    rdb.set("route:hand2", json.dumps(route("hand2", "/same", 4, target)))
    ok(call(port, "POST", R, admin, route("api", "/same", 4, target)), 201)
    assert rdb.get("route:unique:/same:4") == b"api"

    # deleting a token leaves a unique key that no longer names its route alone
    alice = new_token(port, admin, "alice")
    ok(call(port, "POST", P, alice, {"hostname": "a.test", "target_url": target}), 201)
    scoped = route("ar", "/a", 2, target, scope="proxy", proxy_hostnames=["a.test"])
    ok(call(port, "POST", R, alice, scoped), 201)
    rdb.set("route:unique:/a:2", "taken-by-hand")  # re-pointed by hand
    assert call(port, "DELETE", f"{T}/alice", admin).status == 204
    assert not rdb.exists("route:ar", "route:priority:2:ar")
    assert rdb.get("route:unique:/a:2") == b"taken-by-hand"


def test_deleting_a_token_deletes_what_it_owns_in_one_transaction(
    api: EdgeProcess,
    admin: str,
    ups: dict[str, Upstream],
    ca: trustme.CA,
    redis_db: RedisServer,
    rdb: redis.Redis,
) -> None:
    port = api.api_port
    one = ups["one"].url
    tokens = {"alice": new_token(port, admin, "alice"), "bob": new_token(port, admin, "bob")}
    for name, token in tokens.items():
        host = f"{name}.test"
        ok(call(port, "POST", P, token, {"hostname": host, "target_url": one}), 201)
        scoped = route(f"{name}-r", f"/{name}", 3, one, scope="proxy", proxy_hostnames=[host])
        ok(call(port, "POST", R, token, scoped), 201)
        ok(call(port, "POST", S, token, {"service_name": f"{name}-svc", "target_url": one}), 201)
        ok(call(port, "POST", RES, token, {"uri": f"https://{host}/mcp", "name": name}), 201)
        store_cert(rdb, f"{name}-cert", issue(ca, host), [host], sha256(token))
    ok(call(port, "POST", R, admin, route("admin-r", "/admin", 3, one)), 201)
    becomes(api, "alice.test", "one")
    alice_keys = {
        "token:alice",
        f"token:hash:{sha256(tokens['alice'])}",
        "proxy:alice.test",
        "route:alice-r",
        "route:unique:/alice:3",
        "route:priority:3:alice-r",
        "service:external:alice-svc",
        "service:url:alice-svc",
        "resource:https://alice.test/mcp",
        "cert:alice-cert",
        "cert:domain:alice.test",
    }
    assert alice_keys <= keys(rdb)
    others = {k: rdb.dump(k) for k in keys(rdb) - alice_keys}
    assert rdb.smembers("services:external") == {b"alice-svc", b"bob-svc"}

    with Monitor(redis_db) as monitor:
        assert call(port, "DELETE", f"{T}/alice", admin).status == 204
    assert not keys(rdb) & alice_keys
    assert {k: rdb.dump(k) for k in keys(rdb)} == {
        **others,
        "services:external": rdb.dump("services:external"),
    }
    assert rdb.smembers("services:external") == {b"bob-svc"}
    becomes(api, "alice.test", 404)
    assert served_by(api, "bob.test") == "one"
    assert_error(call(port, "GET", f"{P}/alice.test", tokens["alice"]), 401, "unauthorized")

    # one MULTI/EXEC removed the token and everything it owned
    [block] = [b for b in monitor.transactions() if any("token:alice" in c.split() for c in b)]
    deleted = {
        key
        for command in block
        for key in command.split()[1:]
        if command.upper().startswith("DEL ")
    }
    marker = f"edge:token-deleting:{sha256(tokens['alice'])}"
    assert deleted == alice_keys | {marker}  # the marker that held alice's writes off
    assert "SREM services:external alice-svc" in block
    marked = [c["command"] for c in monitor.commands if c["command"].startswith(f"SET {marker}")]
    assert marked == [f"SET {marker} 1 EX 30"]
    assert not rdb.exists(marker)


# ---------------------------------------------------------------------------- hand edits


def test_hand_edits_are_what_the_api_shows(api: EdgeProcess, admin: str, rdb: redis.Redis) -> None:
    port = api.api_port
    alice = new_token(port, admin, "alice")
    rdb.set("proxy:hand.test", proxy_doc("hand.test", "http://10.0.0.1:8080"))
    got = ok(call(port, "GET", f"{P}/hand.test", admin))
    assert got["target_url"] == "http://10.0.0.1:8080" and got["owner_token_hash"] is None
    assert got["created_at"] is None and got["enable_https"] is True
    assert_error(call(port, "GET", f"{P}/hand.test", alice), 404, "proxy_not_found")
    # given to alice by hand: now hers
    rdb.set(
        "proxy:hand.test", proxy_doc("hand.test", "http://10.0.0.2", owner_token_hash=sha256(alice))
    )
    assert ok(call(port, "GET", f"{P}/hand.test", alice))["target_url"] == "http://10.0.0.2"
    rdb.set(
        "route:hand",
        json.dumps(
            {
                "route_id": "hand",
                "path_pattern": "/h",
                "target_type": "port",
                "target_value": "9000",
            }
        ),
    )
    assert ok(call(port, "GET", f"{R}/hand", admin))["priority"] == 50
    rdb.set(
        "service:external:hand", json.dumps({"service_name": "hand", "target_url": "http://h.test"})
    )
    assert ok(call(port, "GET", f"{S}/hand", admin))["service_type"] == "external"

    # a host served by a hand-written key in another letter case is taken
    rdb.set("proxy:Mixed.test", proxy_doc("Mixed.test", "http://10.0.0.4"))
    rdb.set("proxy:*.Wild.test", proxy_doc("*.Wild.test", "http://10.0.0.4"))
    for host in ("mixed.test", "*.wild.test"):
        body = {"hostname": host, "target_url": "http://10.0.0.5"}
        assert_error(call(port, "POST", P, alice, body), 409, "proxy_exists", "hostname")
    assert not rdb.exists("proxy:mixed.test", "proxy:*.wild.test")
    assert ok(
        call(port, "POST", P, alice, {"hostname": "wild.test", "target_url": "http://x.test"}), 201
    )
    rdb.delete("proxy:Mixed.test", "proxy:*.Wild.test", "proxy:wild.test")

    # a document the loader refuses: 409 for the admin (who may replace or delete it),
    # left out of lists, invisible to other tokens
    rdb.set(
        "proxy:broken.test",
        json.dumps({"hostname": "broken.test", "owner_token_hash": sha256(alice)}),
    )
    answer = call(port, "GET", f"{P}/broken.test", admin)
    assert_error(answer, 409, "invalid_document")
    assert "target_url" in answer.error["message"]
    assert [p["hostname"] for p in ok(call(port, "GET", P, admin))["proxies"]] == ["hand.test"]
    assert_error(call(port, "POST", f"{P}/broken.test/auth", admin, {}), 409, "invalid_document")
    fixed = ok(call(port, "PUT", f"{P}/broken.test", alice, {"target_url": "http://10.0.0.3"}))
    assert fixed["owner_token_hash"] == sha256(alice) and fixed["created_at"] is None
    assert ok(call(port, "GET", f"{P}/broken.test", admin)) == fixed
    rdb.set("route:junk", b"not json")
    assert_error(call(port, "GET", f"{R}/junk", admin), 409, "invalid_document")
    assert_error(call(port, "GET", f"{R}/junk", alice), 404, "route_not_found")
    assert call(port, "DELETE", f"{R}/junk", admin).status == 204
    assert not rdb.exists("route:junk")
    rdb.hset("resource:https://typed.test", "uri", "x")  # not even a string
    typed = f"{RES}/{enc('https://typed.test')}"
    assert_error(call(port, "GET", typed, admin), 409, "invalid_document")
    assert_error(call(port, "GET", typed, alice), 404, "resource_not_found")
    assert ok(call(port, "GET", RES, admin)) == {"resources": []}


def race_delete(port: int, admin: str, name: str, rdb: redis.Redis) -> list[int]:
    """Delete token ``name`` while 4 threads create resources with it; their statuses."""
    token = new_token(port, admin, name)
    stop = threading.Event()
    statuses: list[int] = []

    def create(worker: int) -> None:
        for i in range(1000):
            if stop.is_set():
                return
            body = {"uri": f"https://w{worker}-{i}.test/mcp", "name": "r"}
            status = call(port, "POST", RES, token, body).status
            statuses.append(status)
            if status == 401:
                return

    threads = [threading.Thread(target=create, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(statuses) >= 20, timeout=10)
        assert call(port, "DELETE", f"{T}/{name}", admin).status == 204
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not any(sha256(token).encode() in rdb.get(k) for k in keys(rdb, "resource:*"))
    assert not keys(rdb, "edge:token-deleting:*")
    return statuses


def test_records_created_while_their_token_is_deleted_never_outlive_it(
    edge_factory: EdgeFactory, admin: str, rdb: redis.Redis
) -> None:
    """Creates racing their owner's delete commit before it (and go with the token) or
    fail after it (401); the delete itself is never starved by them."""
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_WORKERS=2)
    for attempt in range(3):
        statuses = race_delete(edge.api_port, admin, f"racer{attempt}", rdb)
        assert set(statuses) == {201, 401}, statuses
