"""Ways around a protected proxy that must not work: a Host a browser reads differently,
a crafted callback for the edge's own client, an open redirect after sign-in, excluded
paths reached through dot segments or escapes, the metadata relay asked for another path,
a Connection header dropping the identity fields, two Authorization fields, the session
leaking upstream, and a signed-out cookie still working. A real edge, Redis, upstream and
the GitHub stand-in."""

from __future__ import annotations

import urllib.parse

from tests.helpers import http_request, wait_for
from tests.integration.test_forwardauth_browser import HOST, Site, seen, site
from tests.oauth_helpers import Browser, Page, register_client, request

__all__ = ["site"]  # the fixture, shared with the browser sign-in tests


def raw_get(port: int, target: str, headers: str) -> bytes:
    raw = f"GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode("latin-1")
    return http_request(port, raw, read_until_close=True)


def test_a_host_with_a_backslash_is_a_400(site: Site) -> None:
    port = site.stack.edge.http_port
    answer = raw_get(port, "/", f"Host: evil.localhost\\.{HOST}:{port}\r\nAccept: text/html\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:80]
    assert b"/authorize" not in answer


def test_the_edge_client_takes_only_a_protected_proxys_own_callback(site: Site) -> None:
    port = site.stack.edge.http_port
    good = f"http://{HOST}:{port}/_edge/auth/callback"
    for redirect_uri in (
        f"http://evil.localhost\\.{HOST}:{port}/_edge/auth/callback",
        f"http://evil.localhost@{HOST}:{port}/_edge/auth/callback",
        f"http://{HOST}:{port}/_edge/auth/callback?next=x",
        f"http://{HOST}:{port}/other",
        f"http://unknown.localhost:{port}/_edge/auth/callback",
        "http://[bad/_edge/auth/callback",
    ):
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": "edge",
                "redirect_uri": redirect_uri,
                "code_challenge": "x" * 43,
                "code_challenge_method": "S256",
                "state": "s",
            }
        )
        page = Browser().fetch("GET", f"{site.stack.issuer}/authorize?{query}")
        assert page.status == 400, (redirect_uri, page.status)
        assert page.header("location") is None
    # the control: the proxy's own callback is accepted (on to GitHub)
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": "edge",
            "redirect_uri": good,
            "code_challenge": "x" * 43,
            "code_challenge_method": "S256",
        }
    )
    assert Browser().fetch("GET", f"{site.stack.issuer}/authorize?{query}").status == 302
    # and /token never serves this client: its codes are redeemed inside the edge
    token = request(
        "POST",
        f"{site.stack.issuer}/token",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=b"grant_type=authorization_code&code=x&client_id=edge&code_verifier=" + b"v" * 43,
    )
    assert token.status == 401 and token.json()["error"] == "invalid_client"


def test_no_open_redirect_after_sign_in(site: Site) -> None:
    browser = Browser()
    page = browser.follow(site.origin + "//evil.localhost/phish", "never")
    assert isinstance(page, Page) and page.status == 200
    landed = urllib.parse.urlsplit(browser.visited[-1])
    assert landed.hostname == HOST and landed.path == "/"


def test_excluded_paths_are_whole_segments_and_never_dot_segments(site: Site) -> None:
    site.protect(auth_mode="forward", auth_excluded_paths=["/public"])
    wait_for(lambda: request("GET", site.origin + "/public/x").status == 200)
    port = site.stack.edge.http_port
    for target in (
        "/publicity",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/..%2fadmin",
        "/public\\..\\admin",
    ):
        answer = raw_get(port, target, f"Host: {HOST}:{port}\r\n")
        assert answer.startswith((b"HTTP/1.1 401", b"HTTP/1.1 400")), (target, answer[:60])
    assert request("GET", site.origin + "/public").status == 200
    assert request("GET", site.origin + "/public/").status == 200


def test_the_metadata_relay_asks_only_for_the_documents_path(site: Site) -> None:
    site.protect(auth_mode="forward", resource_endpoint="/mcp")
    wait_for(
        lambda: request("GET", site.origin + "/.well-known/oauth-protected-resource").status == 200
    )
    before = len(site.upstream.requests)
    port = site.stack.edge.http_port
    for target in (
        "/.well-known/oauth-protected-resource/../../admin?delete=1",
        "/.well-known/oauth-protected-resource/other",
    ):
        raw_get(port, target, f"Host: {HOST}:{port}\r\n")
    asked = [r["path"] for r in site.upstream.requests[before:]]
    assert not any("admin" in p or "other" in p for p in asked), asked


def test_a_connection_header_cannot_drop_the_identity_fields(site: Site) -> None:
    browser = Browser()
    page = browser.follow(site.origin + "/", "never")
    assert isinstance(page, Page) and page.status == 200
    session = browser.cookies[HOST]["edge_auth"]
    answer = request(
        "GET",
        site.origin + "/",
        headers={
            "Cookie": f"edge_auth={session}",
            "Connection": "X-Auth-User-Id, X-Auth-User-Name, x_auth_email, keep-alive",
        },
    )
    headers = seen(answer)
    assert headers["x-auth-user-name"] == "alice"
    assert headers["x-auth-user-id"] == "github:1000"
    assert "x-auth-email" in headers


def test_two_authorization_fields_are_refused(site: Site) -> None:
    site.protect(auth_mode="forward")
    client = register_client(site.stack.issuer)
    resource = f"https://{HOST}:{site.stack.edge.http_port}"
    wait_for(
        lambda: request("GET", site.origin + "/", headers={"Accept": "text/html"}).status == 401
    )
    token = site.stack.tokens(Browser(), client, resources=[resource])["access_token"]
    port = site.stack.edge.http_port
    single = raw_get(port, "/", f"Host: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\n")
    assert single.startswith(b"HTTP/1.1 200")
    double = raw_get(
        port,
        "/",
        f"Host: {HOST}:{port}\r\nAuthorization: Bearer {token}\r\nAuthorization: Basic eDp5\r\n",
    )
    assert double.startswith(b"HTTP/1.1 401"), double[:60]


def test_the_session_never_leaks_upstream_and_sign_out_revokes_it(site: Site) -> None:
    browser = Browser()
    page = browser.follow(site.origin + "/", "never")
    assert isinstance(page, Page) and page.status == 200
    session = browser.cookies[HOST]["edge_auth"]
    verifier = browser.cookies[HOST]["edge_auth_login"]
    site.protect(auth_excluded_paths=["/open"])
    cookie = f"edge_auth={session}; edge_auth_login={verifier}; theme=dark"
    wait_for(
        lambda: request("GET", site.origin + "/open/x", headers={"Cookie": cookie}).status == 200
    )
    for path in ("/open/x", "/app"):
        headers = seen(request("GET", site.origin + path, headers={"Cookie": cookie}))
        assert headers.get("cookie") == "theme=dark", (path, headers.get("cookie"))
    # sign out: the cookie is dropped and the token revoked on every node
    assert browser.fetch("GET", site.origin + "/_edge/auth/sign_out").status == 200
    copied = {"Cookie": f"edge_auth={session}"}
    wait_for(
        lambda: request("GET", site.origin + "/app", headers=copied).status == 401, timeout=1.5
    )


def test_two_tabs_signing_in_at_once_both_arrive(site: Site) -> None:
    browser = Browser()
    first = browser.follow(site.origin + "/one", site.origin + "/_edge/auth/callback")
    second = browser.follow(site.origin + "/two", site.origin + "/_edge/auth/callback")
    assert isinstance(first, str) and isinstance(second, str)
    for url, path in ((second, "/two"), (first, "/one")):
        page = browser.follow(url, "never")
        assert isinstance(page, Page) and page.status == 200, (path, page.status)
        assert page.json()["path"] == path


def test_two_session_cookies_are_refused(site: Site) -> None:
    # a second edge_auth (a sibling subdomain's, say: cookie tossing) beside ours: neither
    browser = Browser()
    page = browser.follow(site.origin + "/", "never")
    assert isinstance(page, Page) and page.status == 200
    session = browser.cookies[HOST]["edge_auth"]
    one = request("GET", site.origin + "/", headers={"Cookie": f"edge_auth={session}"})
    assert one.status == 200
    two = {"Cookie": f"edge_auth={session}; edge_auth={session}"}
    assert request("GET", site.origin + "/", headers=two).status == 401
