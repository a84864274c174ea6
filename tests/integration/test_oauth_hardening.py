"""Attacks on the OAuth server that a review found working, each now refused: allowlist
bypass through ``proxy_hostname``, login CSRF through a ``/callback`` link, tokens left live
by a refresh racing its reuse, a user kept after leaving the allowlist, secrets over plain
HTTP for an https issuer, header injection through ``/verify``'s scope, deep JSON, and
``redirect_uri`` rules at ``/token``. Real edge, Redis and the GitHub stand-in."""

from __future__ import annotations

import concurrent.futures
import socket
import urllib.parse
from collections.abc import Callable

import jwt
import redis

from tests.helpers import EdgeProcess, proxy_doc, wait_for
from tests.oauth_helpers import (
    Browser,
    oauth_stack,
    pkce_pair,
    post_form,
    query_of,
    register_client,
    request,
    wait_resource_known,
)

EdgeFactory = Callable[..., EdgeProcess]


def query_of_all(query: str) -> list[tuple[str, str]]:
    return urllib.parse.parse_qsl(query)


def test_naming_an_open_proxy_does_not_pass_the_allowlist_of_the_resource(
    edge_factory: EdgeFactory, rdb: redis.Redis
) -> None:
    with oauth_stack(edge_factory, users=("alice", "bob"), allowed="alice") as stack:
        rdb.set(
            "proxy:mcp.localhost",
            proxy_doc("mcp.localhost", "http://127.0.0.1:9", auth_required_users=["bob"]),
        )
        rdb.set("proxy:open.localhost", proxy_doc("open.localhost", "http://127.0.0.1:9"))
        resource = f"http://mcp.localhost:{stack.edge.http_port}/mcp"
        client = register_client(stack.issuer)
        wait_resource_known(client, resource)
        _, challenge = pkce_pair()
        url = client.authorize_url(
            challenge, resources=[resource], extra=[("proxy_hostname", "open.localhost")]
        )
        got = Browser().follow(url, client.redirect_uri)
        assert not isinstance(got, str), "alice got a code for a resource only bob may use"
        assert got.status == 403 and "alice" in got.text
        # bob, on mcp.localhost's list, gets his token for it, with or without the name
        stack.github.sign_in("bob")
        answer = stack.tokens(
            Browser(), client, resources=[resource], extra=[("proxy_hostname", "mcp.localhost")]
        )
        claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
        assert claims["aud"] == resource and claims["login"] == "bob"


def test_a_callback_link_opened_in_another_browser_signs_nobody_in(
    edge_factory: EdgeFactory,
) -> None:
    with oauth_stack(edge_factory, users=("alice", "mallory"), allowed="alice,mallory") as stack:
        client = register_client(stack.issuer)
        # mallory starts a sign-in and stops at the edge's /callback, with her GitHub code
        stack.github.sign_in("mallory")
        _, challenge = pkce_pair()
        attacker = Browser()
        link = attacker.follow(client.authorize_url(challenge), f"{stack.issuer}/callback")
        assert isinstance(link, str)
        # the victim's browser opens it: refused, no session cookie
        victim = Browser()
        page = victim.fetch("GET", link)
        assert page.status == 400 and "another browser" in page.text
        assert "__Host-edge_oauth_session" not in victim.cookies.get("auth.localhost", {})
        # the victim's own sign-in is hers
        stack.github.sign_in("alice")
        answer = stack.tokens(victim, client)
        claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
        assert claims["login"] == "alice"
        # the login cookie is __Host- (Secure, this host only)
        assert "__Host-edge_oauth_login" in victim.cookies.get("auth.localhost", {})


def test_two_sign_ins_in_one_browser_both_work(edge_factory: EdgeFactory) -> None:
    with oauth_stack(edge_factory) as stack:
        client = register_client(stack.issuer)
        browser = Browser()
        _, first = pkce_pair()
        _, second = pkce_pair()
        links = []
        for challenge in (first, second):  # two tabs, both sent to GitHub before either returns
            links.append(
                browser.follow(client.authorize_url(challenge), f"{stack.issuer}/callback")
            )
        assert all(isinstance(link, str) for link in links)
        for link in links:
            page = browser.fetch("GET", str(link))
            assert page.status == 200, page.text  # the consent page


def test_authorize_through_a_proxy_host_continues_on_the_issuer(
    edge_factory: EdgeFactory, rdb: redis.Redis
) -> None:
    with oauth_stack(edge_factory) as stack:
        rdb.set(
            "route:oauth-authorize",
            '{"route_id": "oauth-authorize", "path_pattern": "^/authorize(?:/.*)?$", '
            '"is_regex": true, "target_type": "hostname", "target_value": "auth.localhost", '
            '"priority": 95}',
        )
        rdb.set("proxy:app.localhost", proxy_doc("app.localhost", "http://127.0.0.1:9"))
        port = stack.edge.http_port
        url = f"http://app.localhost:{port}/authorize?client_id=x&state=s"

        def redirected() -> bool:
            return request("GET", url).status == 307

        wait_for(redirected, timeout=5)
        page = request("GET", url)
        assert page.header("location") == f"{stack.issuer}/authorize?client_id=x&state=s"


def test_a_refresh_racing_its_reuse_leaves_no_live_token(edge_factory: EdgeFactory) -> None:
    with oauth_stack(edge_factory, EDGE_WORKERS="2") as stack:
        client = register_client(stack.issuer)
        browser = Browser()
        survivors = 0
        for _ in range(15):
            tokens = [stack.tokens(browser, client)["refresh_token"]] * 8
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                pages = list(pool.map(client.refresh, tokens))
            for page in pages:
                if page.status == 200:
                    # the reuse revoked the family: what any racer got must be dead too
                    doc = page.json()
                    if client.refresh(doc["refresh_token"]).status == 200:
                        survivors += 1
                    verify = request(
                        "GET",
                        f"{stack.issuer}/verify",
                        headers={"Authorization": f"Bearer {doc['access_token']}"},
                    )
                    if verify.status == 200:
                        wait_for(
                            lambda t=doc["access_token"]: (
                                request(
                                    "GET",
                                    f"{stack.issuer}/verify",
                                    headers={"Authorization": f"Bearer {t}"},
                                ).status
                                == 401
                            ),
                            timeout=2,
                        )
        assert survivors == 0


def test_a_user_taken_off_the_allowlist_loses_the_grant_at_the_next_refresh(
    edge_factory: EdgeFactory, rdb: redis.Redis
) -> None:
    with oauth_stack(edge_factory, users=("alice", "bob"), allowed="*") as stack:
        rdb.set(
            "proxy:mcp.localhost",
            proxy_doc("mcp.localhost", "http://127.0.0.1:9", auth_required_users=["alice"]),
        )
        resource = f"http://mcp.localhost:{stack.edge.http_port}/mcp"
        client = register_client(stack.issuer)
        wait_resource_known(client, resource)
        answer = stack.tokens(Browser(), client, resources=[resource])
        refreshed = client.refresh(answer["refresh_token"])
        assert refreshed.status == 200
        rdb.set(
            "proxy:mcp.localhost",
            proxy_doc("mcp.localhost", "http://127.0.0.1:9", auth_required_users=["bob"]),
        )

        def refused() -> bool:
            page = client.refresh(refreshed.json()["refresh_token"])
            return page.status == 400 and page.json()["error"] == "invalid_grant"

        wait_for(refused, timeout=5)
        # and what was issued is revoked
        token = refreshed.json()["access_token"]
        wait_for(
            lambda: (
                request(
                    "GET", f"{stack.issuer}/verify", headers={"Authorization": f"Bearer {token}"}
                ).status
                == 401
            ),
            timeout=2,
        )


def test_an_https_issuer_answers_plain_http_only_with_a_redirect(
    edge_factory: EdgeFactory,
) -> None:
    with oauth_stack(edge_factory, OAUTH_ISSUER="https://auth.localhost") as stack:
        plain = f"http://auth.localhost:{stack.edge.http_port}"
        page = request("GET", f"{plain}/.well-known/oauth-authorization-server")
        assert page.status == 308
        assert page.header("location") == (
            "https://auth.localhost/.well-known/oauth-authorization-server"
        )
        for path, body in (("/token", {"grant_type": "refresh_token"}), ("/register", {})):
            answer = post_form(f"{plain}{path}", body)
            assert answer.status == 400 and answer.json()["error"] == "invalid_request"
            assert answer.header("location") is None
        # /verify asked by a proxy on this host (loopback) is answered, not redirected
        assert request("GET", f"{plain}/verify").status == 401


def test_verify_refuses_a_scope_that_is_not_scope_tokens(edge_factory: EdgeFactory) -> None:
    with oauth_stack(edge_factory) as stack:
        raw = socket.create_connection(("127.0.0.1", stack.edge.http_port), timeout=5)
        raw.sendall(
            b"GET /verify?scope=a%22,error=%22x%01 HTTP/1.1\r\n"
            b"Host: auth.localhost\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
        raw.close()
        head = data.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 400 "), data[:300]
        assert b"x\x01" not in head and b'error="x' not in head


def test_deeply_nested_json_is_refused_like_bad_json(edge_factory: EdgeFactory) -> None:
    with oauth_stack(edge_factory) as stack:
        page = request(
            "POST",
            f"{stack.issuer}/register",
            headers={"Content-Type": "application/json"},
            body=b"[" * 60000,
        )
        assert page.status == 400 and page.json()["error"] == "invalid_client_metadata"
        assert "Traceback" not in stack.edge.stderr()


def test_redirect_uri_at_token_follows_what_authorize_got(edge_factory: EdgeFactory) -> None:
    with oauth_stack(edge_factory) as stack:
        client = register_client(stack.issuer)
        browser = Browser()
        for sent in (False, True):
            verifier, challenge = pkce_pair()
            url = client.authorize_url(challenge)
            if not sent:
                url = url.replace("redirect_uri=", "ignored=")
            got = browser.follow(url, client.redirect_uri)
            if not isinstance(got, str):  # the first time: the consent page
                form = {
                    "request_id": got.hidden("request_id"),
                    "csrf_token": got.hidden("csrf_token"),
                    "decision": "approve",
                }
                got = browser.follow(
                    f"{stack.issuer}/consent", client.redirect_uri, method="POST", form=form
                )
            assert isinstance(got, str)
            fields = [
                ("grant_type", "authorization_code"),
                ("code", query_of(got)["code"]),
                ("code_verifier", verifier),
                ("client_id", client.client_id),
            ]
            page = post_form(f"{stack.issuer}/token", fields)
            if sent:  # RFC 6749 4.1.3: sent at /authorize, so required at /token
                assert page.status == 400 and page.json()["error"] == "invalid_grant"
            else:
                assert page.status == 200, page.text


def test_an_oversized_authorization_request_is_refused_before_it_is_stored(
    edge_factory: EdgeFactory, rdb: redis.Redis
) -> None:
    with oauth_stack(edge_factory) as stack:
        rdb.set("proxy:mcp.localhost", proxy_doc("mcp.localhost", "http://127.0.0.1:9"))
        client = register_client(stack.issuer)
        base = f"http://mcp.localhost:{stack.edge.http_port}"
        wait_resource_known(client, base + "/mcp")
        for key in rdb.scan_iter("oauth:state:*"):  # the waits' own sign-ins
            rdb.delete(key)
        _, challenge = pkce_pair()
        # ten resources of a proxy, each made long by a path: valid one by one, too
        # large together (posted: a URL this long is refused earlier, 414)
        long = [f"{base}/{'p' * 900}{i}" for i in range(10)]
        query = client.authorize_url(challenge, resources=long).split("?", 1)[1]
        page = post_form(f"{stack.issuer}/authorize", query_of_all(query))
        assert page.status == 302
        location = page.header("location") or ""
        assert location.startswith(client.redirect_uri)
        assert query_of(location)["error"] == "invalid_request"
        assert not list(rdb.scan_iter("oauth:state:*"))


def test_verify_with_a_resource_checks_the_audience_and_the_allowlist(
    edge_factory: EdgeFactory, rdb: redis.Redis
) -> None:
    with oauth_stack(edge_factory, users=("alice",), allowed="alice") as stack:
        rdb.set("proxy:mcp.localhost", proxy_doc("mcp.localhost", "http://127.0.0.1:9"))
        rdb.set(
            "proxy:admin.localhost",
            proxy_doc("admin.localhost", "http://127.0.0.1:9", auth_required_users=["bob"]),
        )
        port = stack.edge.http_port
        mine, other = f"http://mcp.localhost:{port}/mcp", f"http://admin.localhost:{port}/"
        client = register_client(stack.issuer)
        wait_resource_known(client, mine)
        browser = Browser()
        token = stack.tokens(browser, client, resources=[mine])["access_token"]
        bearer = {"Authorization": f"Bearer {token}"}

        def verify(resource: str, headers: dict[str, str]) -> int:
            query = urllib.parse.urlencode({"resource": resource})
            return request("GET", f"{stack.issuer}/verify?{query}", headers=headers).status

        assert verify(mine, bearer) == 200
        assert verify(other, bearer) == 401  # a token for another resource
        # the browser session: alice may use mcp.localhost, not admin.localhost (bob's)
        jar = browser.cookies["auth.localhost"]
        session = {"Cookie": f"__Host-edge_oauth_session={jar['__Host-edge_oauth_session']}"}
        assert verify(mine, session) == 200
        assert verify(other, session) == 403
