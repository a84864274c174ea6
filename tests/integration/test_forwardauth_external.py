"""External ForwardAuth: a proxy whose ``auth_proxy`` is another service asks it about each
request (Traefik's convention). A real edge and Redis; the auth service is a small real
HTTP service on loopback that decides from the headers it gets and records them."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import redis

from tests.helpers import EdgeProcess, Upstream, proxy_doc, wait_for
from tests.oauth_helpers import Page, request

EdgeFactory = Callable[..., EdgeProcess]
HOST = "app.localhost"
TIMEOUT = 1.0  # FORWARD_AUTH_TIMEOUT of these tests


def decide(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
    """The auth service: ``Bearer good`` passes as alice, ``Bearer slow`` answers after
    the edge gave up, anything else is sent to a login page or refused."""
    auth = req.headers.get("Authorization", "")
    if auth == "Bearer good":
        return (
            200,
            [
                ("X-Auth-User-Name", "alice"),
                ("X-Auth-Email", "alice@example.com"),
                ("X-Other", "not copied"),
                ("Remote-Groups", "ops"),
            ],
            b"",
        )
    if auth == "Bearer slow":
        time.sleep(TIMEOUT + 1.0)
        return 200, [], b""
    if "text/html" in req.headers.get("Accept", ""):
        return 302, [("Location", "https://login.example/start"), ("Set-Cookie", "csrf=1")], b""
    return (
        401,
        [("WWW-Authenticate", 'Bearer realm="ext"'), ("Content-Type", "application/json")],
        b'{"error":"who are you"}',
    )


@dataclass
class Site:
    edge: EdgeProcess
    rdb: redis.Redis
    app: Upstream
    auth: Upstream

    def protect(self, auth_proxy: str | None = None, **fields: Any) -> None:
        doc = {"auth_enabled": True, "auth_proxy": auth_proxy or self.auth.url + "/check", **fields}
        self.rdb.set(f"proxy:{HOST}", proxy_doc(HOST, self.app.url, **doc))

    def get(self, path: str = "/", **headers: str) -> Page:
        return request("GET", f"http://{HOST}:{self.edge.http_port}{path}", headers=headers)


@pytest.fixture
def site(edge_factory: EdgeFactory, rdb: redis.Redis) -> Iterator[Site]:
    app, auth = Upstream(), Upstream(decide)
    try:
        edge = edge_factory(FORWARD_AUTH_TIMEOUT=str(TIMEOUT))
        s = Site(edge, rdb, app, auth)
        s.protect()
        wait_for(lambda: s.get().status == 401)
        yield s
    finally:
        app.close()
        auth.close()


def seen(page: Page) -> dict[str, str]:
    return {k.lower(): v for k, v in page.json()["headers"]}


def test_a_pass_copies_the_identity_fields_and_drops_spoofed_ones(site: Site) -> None:
    page = site.get(
        "/docs/a?x=1",
        Authorization="Bearer good",
        **{
            "X-Auth-User-Name": "mallory",
            "x_auth_email": "evil@example.com",
            "X-Auth-User-Id": "6",
        },
    )
    assert page.status == 200, page.text
    headers = seen(page)
    assert headers["x-auth-user-name"] == "alice"
    assert headers["x-auth-email"] == "alice@example.com"
    assert "x-auth-user-id" not in headers and "x_auth_email" not in headers
    assert "x-other" not in headers and "remote-groups" not in headers
    assert headers["authorization"] == "Bearer good"
    # what the auth service was asked: a GET to its path, Traefik's X-Forwarded-* fields
    asked = site.auth.requests[-1]
    assert asked["method"] == "GET" and asked["path"] == "/check"
    fields = {k.lower(): v for k, v in asked["headers"].items()}
    assert fields["x-forwarded-method"] == "GET"
    assert fields["x-forwarded-proto"] == "http"
    assert fields["x-forwarded-host"] == f"{HOST}:{site.edge.http_port}"
    assert fields["x-forwarded-uri"] == "/docs/a?x=1"
    assert fields["x-forwarded-for"] == "127.0.0.1"
    assert fields["authorization"] == "Bearer good"
    assert "x-auth-user-name" not in fields  # the spoofed field never reached it either


def test_named_response_headers_are_copied(site: Site) -> None:
    site.protect(auth_response_headers=["Remote-Groups", "X-Auth-User-Name"])
    wait_for(lambda: "remote-groups" in seen(site.get(Authorization="Bearer good")))
    headers = seen(site.get(Authorization="Bearer good", **{"Remote_Groups": "admins"}))
    assert headers["remote-groups"] == "ops" and headers["x-auth-user-name"] == "alice"
    assert "x-auth-email" not in headers


def test_a_refusal_goes_back_to_the_client_as_it_is(site: Site) -> None:
    page = site.get("/private", Authorization="Bearer bad")
    assert page.status == 401
    assert page.header("www-authenticate") == 'Bearer realm="ext"'
    assert page.json() == {"error": "who are you"}
    assert page.header("content-type") == "application/json"
    browser = site.get("/private", Accept="text/html")
    assert browser.status == 302
    assert browser.header("location") == "https://login.example/start"
    assert browser.header("set-cookie") == "csrf=1"
    assert not any(r["path"] == "/private" for r in site.app.requests)  # never forwarded


def test_excluded_paths_are_not_asked(site: Site) -> None:
    site.protect(auth_excluded_paths=["/health"])
    wait_for(lambda: site.get("/health").status == 200)
    before = len(site.auth.requests)
    assert site.get("/health/live").status == 200  # whole path segments
    assert site.get("/healthz").status == 401
    assert site.get("/health/../other").status == 401  # never through a dot segment
    assert len(site.auth.requests) == before + 2


@pytest.mark.edge_errors(r"authentication service")
def test_a_slow_or_unreachable_service_is_a_503(site: Site) -> None:
    started = time.monotonic()
    page = site.get(Authorization="Bearer slow")
    took = time.monotonic() - started
    assert page.status == 503, page.text
    assert TIMEOUT - 0.1 <= took < TIMEOUT + 0.9, took
    # nothing listens there
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    site.protect(auth_proxy=f"127.0.0.1:{closed}")
    wait_for(lambda: site.get(Authorization="Bearer good").status == 503)
    assert not any(r["headers"].get("Authorization") == "Bearer slow" for r in site.app.requests)


def test_a_post_body_waits_for_the_decision(site: Site) -> None:
    body = json.dumps({"n": list(range(2000))}).encode()
    page = request(
        "POST",
        f"http://{HOST}:{site.edge.http_port}/submit",
        headers={"Authorization": "Bearer good", "Content-Type": "application/json"},
        body=body,
    )
    assert page.status == 200
    assert page.json()["body_len"] == len(body)
    asked = site.auth.requests[-1]
    assert asked["method"] == "GET"
    assert {k.lower(): v for k, v in asked["headers"].items()}["x-forwarded-method"] == "POST"
    refused = request("POST", f"http://{HOST}:{site.edge.http_port}/submit", headers={}, body=body)
    assert refused.status == 401


def test_a_bare_host_port_is_plain_http_at_the_root(site: Site) -> None:
    port = int(site.auth.url.rsplit(":", 1)[1])
    site.protect(auth_proxy=f"127.0.0.1:{port}")

    def root_asked() -> bool:
        page = site.get(Authorization="Bearer good")
        return page.status == 200 and site.auth.requests[-1]["path"] == "/"

    wait_for(root_asked)
