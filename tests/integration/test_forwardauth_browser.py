"""A proxy in ``redirect`` mode: browsers are sent to sign in with the edge's own server
and come back with a session cookie; and ``auth_strip_authorization``. A real edge, Redis,
upstream and the GitHub stand-in (the one stand-in: GitHub cannot be reached from here)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import redis

from tests.helpers import EdgeProcess, Upstream, proxy_doc, wait_for
from tests.oauth_helpers import Browser, OAuthStack, Page, oauth_stack, register_client, request

EdgeFactory = Callable[..., EdgeProcess]
HOST = "app.localhost"
CALLBACK = "/_edge/auth/callback"


@dataclass
class Site:
    stack: OAuthStack
    rdb: redis.Redis
    upstream: Upstream

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.stack.edge.http_port}"

    def protect(self, **fields: Any) -> None:
        doc = {"auth_enabled": True, "auth_mode": "redirect", **fields}
        self.rdb.set(f"proxy:{HOST}", proxy_doc(HOST, self.upstream.url, **doc))


@pytest.fixture
def site(edge_factory: EdgeFactory, rdb: redis.Redis) -> Iterator[Site]:
    upstream = Upstream()
    try:
        with oauth_stack(edge_factory, users=("alice", "bob"), allowed="alice") as stack:
            s = Site(stack, rdb, upstream)
            s.protect()
            wait_for(lambda: request("GET", s.origin + "/").status == 401)
            yield s
    finally:
        upstream.close()


def seen(page: Page) -> dict[str, str]:
    return {k.lower(): v for k, v in page.json()["headers"]}


def test_a_browser_signs_in_and_comes_back_where_it_asked(site: Site) -> None:
    browser = Browser()
    browser.cookies[HOST] = {"theme": "dark"}  # the application's own cookie
    page = browser.follow(site.origin + "/docs/page?x=1", "never")
    assert isinstance(page, Page) and page.status == 200, page
    assert page.json()["path"] == "/docs/page?x=1"
    headers = seen(page)
    assert headers["x-auth-user-name"] == "alice"
    # the session stays at the edge: no Authorization, no session cookie upstream
    assert "authorization" not in headers
    assert headers["cookie"] == "theme=dark"
    # the way it went: the issuer, GitHub (stand-in), the proxy's callback, the page
    visited = [urllib.parse.urlsplit(u) for u in browser.visited]
    assert any(u.path == "/authorize" and u.hostname == "auth.localhost" for u in visited)
    assert any(u.path == CALLBACK and u.hostname == HOST for u in visited)
    session = browser.cookies[HOST]["edge_auth"]
    claims = jwt.decode(session, options={"verify_signature": False})
    assert claims["aud"] == f"https://{HOST}:{site.stack.edge.http_port}"
    assert claims["client_id"] == "edge" and claims["login"] == "alice"
    # signed in: the next page needs no redirect; a script's call with the cookie works too
    again = browser.fetch("GET", site.origin + "/next")
    assert again.status == 200 and seen(again)["x-auth-user-name"] == "alice"
    cookie = {"Cookie": f"edge_auth={session}"}
    assert request("POST", site.origin + "/api", headers=cookie, body=b"{}").status == 200


def test_a_non_browser_gets_a_401_not_a_redirect(site: Site) -> None:
    assert request("GET", site.origin + "/").status == 401
    posted = request("POST", site.origin + "/", headers={"Accept": "text/html"}, body=b"")
    assert posted.status == 401


def test_the_callback_is_bound_to_the_browser_and_used_once(site: Site) -> None:
    browser = Browser()
    got = browser.follow(site.origin + "/", site.origin + CALLBACK)
    assert isinstance(got, str) and got.startswith(site.origin + CALLBACK)
    # another browser (no login cookie) bringing this callback URL is refused, and
    # does not spend it
    stranger = Browser().fetch("GET", got)
    assert stranger.status == 400
    assert "edge_auth" not in (stranger.header("set-cookie") or "")
    page = browser.follow(got, "never")
    assert isinstance(page, Page) and page.status == 200
    # used once: the same callback again is refused
    assert browser.fetch("GET", got).status == 400


def test_a_user_outside_the_allowlist_is_refused_at_the_server(site: Site) -> None:
    site.stack.github.sign_in("bob")
    page = Browser().follow(site.origin + "/", "never")
    assert isinstance(page, Page) and page.status == 403
    assert "bob" in page.text
    assert not any(r["path"] == "/" for r in site.upstream.requests)


def test_sign_out_drops_the_session(site: Site) -> None:
    browser = Browser()
    page = browser.follow(site.origin + "/", "never")
    assert isinstance(page, Page) and page.status == 200
    out = browser.fetch("GET", site.origin + "/_edge/auth/sign_out")
    assert out.status == 200 and "edge_auth" not in browser.cookies[HOST]
    first = browser.fetch("GET", site.origin + "/")
    assert first.status == 302  # signed out: sent to sign in again


def test_a_forged_or_foreign_cookie_is_not_a_session(site: Site) -> None:
    client = register_client(site.stack.issuer)
    resource = f"https://{HOST}:{site.stack.edge.http_port}"
    token = site.stack.tokens(Browser(), client, resources=[resource])["access_token"]
    # a token for this resource is accepted from the cookie as from the header
    ok = request("GET", site.origin + "/", headers={"Cookie": f"edge_auth={token}"})
    assert ok.status == 200
    wrong = site.stack.tokens(Browser(), client, resources=[site.stack.issuer])["access_token"]
    for value in (wrong, "garbage", token[:-4] + "AAAA"):
        page = request("GET", site.origin + "/", headers={"Cookie": f"edge_auth={value}"})
        assert page.status == 401
        assert 'error="invalid_token"' in (page.header("www-authenticate") or "")


def test_auth_strip_authorization(site: Site) -> None:
    client = register_client(site.stack.issuer)
    resource = f"https://{HOST}:{site.stack.edge.http_port}"
    token = site.stack.tokens(Browser(), client, resources=[resource])["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    # default: a bearer token goes on to the upstream
    assert seen(request("GET", site.origin + "/", headers=bearer))["authorization"]
    site.protect(auth_strip_authorization=True)
    wait_for(lambda: "authorization" not in seen(request("GET", site.origin + "/", headers=bearer)))
    # and false keeps even the session cookie
    site.protect(auth_strip_authorization=False, auth_cookie_name="sess")
    cookie = {"Cookie": f"sess={token}; other=1"}
    wait_for(
        lambda: "sess=" in seen(request("GET", site.origin + "/", headers=cookie)).get("cookie", "")
    )
