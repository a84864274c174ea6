"""The OAuth server end to end: a real edge, a real Redis, the browser flow through the
GitHub stand-in (the one part that cannot be real here), public and confidential clients,
refresh rotation, revocation, ``/verify``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import redis

from tests.helpers import EdgeProcess, proxy_doc, wait_for
from tests.oauth_helpers import (
    Browser,
    OAuthStack,
    oauth_stack,
    pkce_pair,
    post_form,
    query_of,
    register_client,
    request,
    wait_resource_known,
)

EdgeFactory = Callable[..., EdgeProcess]


@pytest.fixture
def stack(edge_factory: EdgeFactory) -> Any:
    with oauth_stack(edge_factory, users=("alice", "mallory")) as s:
        yield s


def decode(stack: OAuthStack, token: str, audience: str) -> dict[str, Any]:
    """The access token checked as a resource server would: against the published JWKS."""
    jwks = request("GET", f"{stack.issuer}/jwks").json()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256"
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    return jwt.decode(
        token,
        jwt.PyJWK(key).key,
        algorithms=["RS256"],
        audience=audience,
        issuer=stack.issuer,
    )


def test_metadata_documents(stack: OAuthStack) -> None:
    issuer = stack.issuer
    for path in (
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server/mcp",
        "/.well-known/openid-configuration/mcp",
        "/mcp/.well-known/openid-configuration",
    ):
        page = request("GET", issuer + path)
        assert page.status == 200, path
        doc = page.json()
        assert doc["issuer"] == issuer
        assert doc["authorization_endpoint"] == f"{issuer}/authorize"
        assert doc["token_endpoint"] == f"{issuer}/token"
        assert doc["jwks_uri"] == f"{issuer}/jwks"
        assert doc["registration_endpoint"] == f"{issuer}/register"
        assert doc["revocation_endpoint"] == f"{issuer}/revoke"
        assert doc["introspection_endpoint"] == f"{issuer}/introspect"
        assert doc["scopes_supported"] == ["mcp:read", "mcp:write", "mcp:admin"]
        assert doc["response_types_supported"] == ["code"]
        assert doc["grant_types_supported"] == ["authorization_code", "refresh_token"]
        assert doc["code_challenge_methods_supported"] == ["S256"]
        assert "none" in doc["token_endpoint_auth_methods_supported"]
        assert "client_secret_basic" in doc["token_endpoint_auth_methods_supported"]
        assert doc["resource_indicators_supported"] is True
        assert doc["authorization_response_iss_parameter_supported"] is True
        assert doc["client_id_metadata_document_supported"] is True
    assert request("POST", issuer + "/.well-known/oauth-authorization-server").status == 405
    jwks = request("GET", issuer + "/jwks").json()
    assert jwks["keys"] and all(k["kty"] == "RSA" and "d" not in k for k in jwks["keys"])


def test_browser_flow_public_client(stack: OAuthStack, rdb: redis.Redis) -> None:
    client = register_client(stack.issuer)
    browser = Browser()
    url, verifier = stack.login(browser, client, scope="mcp:read mcp:write")
    params = query_of(url)
    assert params["state"] == "st-1"
    assert params["iss"] == stack.issuer  # RFC 9207
    assert stack.github.calls["/login/oauth/access_token"] == 1
    page = client.token(params["code"], verifier)
    assert page.status == 200, page.text
    assert page.header("cache-control") == "no-store"
    answer = page.json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 1800
    assert answer["scope"] == "mcp:read mcp:write"
    claims = decode(stack, answer["access_token"], stack.issuer)
    assert claims["sub"] == "github:1000"
    assert claims["login"] == "alice"
    assert claims["email"] == "alice@users.example"
    assert claims["client_id"] == claims["azp"] == client.client_id
    assert claims["scope"] == "mcp:read mcp:write"
    assert claims["exp"] - claims["iat"] == 1800
    assert {"jti", "nbf", "iat"} <= set(claims)
    # an id an operator pastes after `edge oauth tokens show` never reads as an option
    assert claims["jti"].startswith("at_")
    # stored: the record by jti with a TTL, the refresh token only as a hash
    assert 0 < rdb.ttl(f"oauth:token:{claims['jti']}") <= 1800
    refresh = answer["refresh_token"]
    for key in rdb.keys("oauth:*"):
        assert refresh.encode() not in key
        assert refresh.encode() not in (rdb.dump(key) or b"")
    assert rdb.exists("oauth:refresh:" + hashlib.sha256(refresh.encode()).hexdigest())

    # a second authorization in the same browser: no GitHub round trip, no consent page
    calls = stack.github.calls["/login/oauth/authorize"]
    url2, verifier2 = stack.login(browser, client, scope="mcp:read")
    assert stack.github.calls["/login/oauth/authorize"] == calls
    assert client.token(query_of(url2)["code"], verifier2).status == 200


def test_session_cookie_attributes(stack: OAuthStack, rdb: redis.Redis) -> None:
    client = register_client(stack.issuer)
    browser = Browser()
    _, challenge = pkce_pair()
    got = browser.follow(client.authorize_url(challenge), stack.github.base_url + "/x")
    assert isinstance(got, str) is False
    # the callback's answer (the consent page) set the cookie
    callback = next(u for u in browser.visited if "/callback" in u)
    page = browser.fetch("GET", callback)  # the state is spent: a page, and no new cookie
    assert page.status == 400
    cookies = browser.cookies["auth.localhost"]
    assert set(cookies) == {"__Host-edge_oauth_session", "__Host-edge_oauth_login"}
    value = cookies["__Host-edge_oauth_session"]
    # stored only as its SHA-256, with the session's lifetime as TTL
    keys = rdb.keys("oauth:session:*")
    assert len(keys) == 1 and value.encode() not in keys[0]
    assert keys[0].decode() == "oauth:session:" + hashlib.sha256(value.encode()).hexdigest()
    assert 7 * 86400 - 60 < rdb.ttl(keys[0]) <= 7 * 86400


def test_session_cookie_flags(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    browser = Browser()
    _, challenge = pkce_pair()
    first = browser.fetch("GET", client.authorize_url(challenge))
    github = browser.fetch("GET", first.header("location") or "")
    callback = browser.fetch("GET", github.header("location") or "")
    assert callback.status == 200  # the consent page
    set_cookie = callback.header("set-cookie") or ""
    name, _, rest = set_cookie.partition("=")
    assert name == "__Host-edge_oauth_session"
    attributes = [a.strip().lower() for a in rest.split(";")[1:]]
    assert "httponly" in attributes and "secure" in attributes and "samesite=lax" in attributes
    assert "path=/" in attributes and f"max-age={7 * 86400}" in attributes
    assert callback.header("x-frame-options") == "DENY"


def test_confidential_client_basic_and_post(stack: OAuthStack) -> None:
    for method in ("client_secret_basic", "client_secret_post"):
        client = register_client(stack.issuer, method=method)
        assert client.secret
        browser = Browser()
        answer = stack.tokens(browser, client)
        assert answer["access_token"]
        # the same client with a wrong secret: invalid_client
        wrong = type(client)(client.issuer, client.client_id, client.redirect_uri, "nope", method)
        page = wrong.refresh(answer["refresh_token"])
        assert page.status == 401
        assert page.json()["error"] == "invalid_client"
        if method == "client_secret_basic":
            assert (page.header("www-authenticate") or "").startswith("Basic")
        # the right secret still works: a failed authentication spent nothing
        assert client.refresh(answer["refresh_token"]).status == 200


def test_refresh_rotation_and_reuse_revokes_family(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    answer = stack.tokens(Browser(), client)
    first_refresh = answer["refresh_token"]
    rotated = client.refresh(first_refresh)
    assert rotated.status == 200, rotated.text
    second = rotated.json()
    assert second["refresh_token"] != first_refresh
    assert second["access_token"] != answer["access_token"]
    # narrower scope on refresh is fine, wider is not
    # reuse of the first refresh token: refused, and the whole family is revoked
    reused = client.refresh(first_refresh)
    assert reused.status == 400
    assert reused.json()["error"] == "invalid_grant"
    assert client.refresh(second["refresh_token"]).json()["error"] == "invalid_grant"
    for token in (answer["access_token"], second["access_token"]):
        verify = request(
            "GET", f"{stack.issuer}/verify", headers={"Authorization": f"Bearer {token}"}
        )
        assert verify.status == 401


def test_code_is_single_use_and_reuse_revokes(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    url, verifier = stack.login(Browser(), client)
    code = query_of(url)["code"]
    first = client.token(code, verifier)
    assert first.status == 200
    token = first.json()["access_token"]
    ok = request("GET", f"{stack.issuer}/verify", headers={"Authorization": f"Bearer {token}"})
    assert ok.status == 200
    second = client.token(code, verifier)
    assert second.status == 400
    assert second.json()["error"] == "invalid_grant"
    # what the first redemption issued is revoked (RFC 6749 section 4.1.2)
    wait_for(
        lambda: (
            request(
                "GET", f"{stack.issuer}/verify", headers={"Authorization": f"Bearer {token}"}
            ).status
            == 401
        ),
        timeout=2,
    )


def test_verify_headers_and_revocation(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    answer = stack.tokens(Browser(), client, scope="mcp:read mcp:write")
    token = answer["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    page = request("GET", f"{stack.issuer}/verify", headers=bearer)
    assert page.status == 200
    assert page.header("x-auth-user-id") == "github:1000"
    assert page.header("x-auth-user-name") == "alice"
    assert page.header("x-auth-email") == "alice@users.example"
    assert page.header("x-auth-scopes") == "mcp:read mcp:write"
    assert page.header("x-auth-client-id") == client.client_id
    # scope demands: met, and not met (step-up answer)
    assert request("GET", f"{stack.issuer}/verify?scope=mcp:write", headers=bearer).status == 200
    denied = request("GET", f"{stack.issuer}/verify?scope=mcp:admin", headers=bearer)
    assert denied.status == 403
    assert 'error="insufficient_scope"' in (denied.header("www-authenticate") or "")
    assert 'scope="mcp:admin"' in (denied.header("www-authenticate") or "")
    # nothing sent: 401 with a challenge naming no error; garbage: invalid_token
    nothing = request("GET", f"{stack.issuer}/verify")
    assert nothing.status == 401
    challenge = nothing.header("www-authenticate") or ""
    assert challenge.startswith("Bearer ") and "error=" not in challenge
    garbage = request("GET", f"{stack.issuer}/verify", headers={"Authorization": "Bearer x.y.z"})
    assert garbage.status == 401
    assert 'error="invalid_token"' in (garbage.header("www-authenticate") or "")
    # revoked: refused within a second
    assert client.revoke(token).status == 200
    wait_for(
        lambda: request("GET", f"{stack.issuer}/verify", headers=bearer).status == 401, timeout=1.5
    )
    # the session cookie works on /verify too (a browser behind nginx auth_request)


def test_introspection(stack: OAuthStack) -> None:
    resource_server = register_client(stack.issuer, method="client_secret_basic")
    client = register_client(stack.issuer)
    answer = stack.tokens(Browser(), client)
    page = resource_server.introspect(answer["access_token"])
    assert page.status == 200
    doc = page.json()
    assert doc["active"] is True
    assert doc["client_id"] == client.client_id
    assert doc["username"] == "alice"
    assert doc["sub"] == "github:1000"
    assert resource_server.introspect("not-a-token").json() == {"active": False}
    assert resource_server.introspect(answer["refresh_token"]).json()["active"] is True
    # a public client cannot introspect
    refused = client.introspect(answer["access_token"])
    assert refused.status == 401
    assert refused.json()["error"] == "invalid_client"
    client.revoke(answer["access_token"])
    wait_for(
        lambda: resource_server.introspect(answer["access_token"]).json()["active"] is False,
        timeout=1.5,
    )


def test_allowlist_refuses_user_without_code(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    stack.github.sign_in("mallory")
    browser = Browser()
    _, challenge = pkce_pair()
    got = browser.follow(client.authorize_url(challenge), client.redirect_uri)
    assert not isinstance(got, str), "a refused user must never reach the client with a code"
    assert got.status == 403
    assert "mallory" in got.text and "not allowed" in got.text
    assert "__Host-edge_oauth_session" not in browser.cookies.get("auth.localhost", {})


def test_proxy_allowlist_applies_to_its_resource(
    edge_factory: EdgeFactory, rdb: redis.Redis
) -> None:
    with oauth_stack(edge_factory, users=("alice", "bob"), allowed="*") as stack:
        rdb.set(
            "proxy:mcp.localhost",
            proxy_doc("mcp.localhost", "http://127.0.0.1:9", auth_required_users=["bob"]),
        )
        resource = f"http://mcp.localhost:{stack.edge.http_port}/mcp"
        client = register_client(stack.issuer)
        wait_resource_known(client, resource)
        _, challenge = pkce_pair()
        browser = Browser()
        got = browser.follow(
            client.authorize_url(challenge, resources=[resource]), client.redirect_uri
        )
        assert not isinstance(got, str) and got.status == 403  # alice: not on the proxy's list
        stack.github.sign_in("bob")
        answer = stack.tokens(Browser(), client, resources=[resource])
        claims = decode(stack, answer["access_token"], resource)
        assert claims["aud"] == resource


def test_consent_deny_and_csrf(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    browser = Browser()
    url, _ = stack.login(browser, client, approve=False)
    params = query_of(url)
    assert params["error"] == "access_denied"
    assert params["state"] == "st-1" and params["iss"] == stack.issuer
    # a consent form posted with a wrong CSRF token is refused, and not redirected
    _, challenge = pkce_pair()
    page = browser.follow(client.authorize_url(challenge), client.redirect_uri)
    assert not isinstance(page, str) and page.status == 200
    forged = browser.follow(
        f"{stack.issuer}/consent",
        client.redirect_uri,
        method="POST",
        form={
            "request_id": page.hidden("request_id"),
            "csrf_token": "forged",
            "decision": "approve",
        },
    )
    assert not isinstance(forged, str) and forged.status == 403
    # the forged post did not spend the request: the user's own approval still works,
    # once (a double submit finds it gone)
    form = {
        "request_id": page.hidden("request_id"),
        "csrf_token": page.hidden("csrf_token"),
        "decision": "approve",
    }
    approved = browser.follow(
        f"{stack.issuer}/consent", client.redirect_uri, method="POST", form=form
    )
    assert isinstance(approved, str) and "code" in query_of(approved)
    again = browser.follow(f"{stack.issuer}/consent", client.redirect_uri, method="POST", form=form)
    assert not isinstance(again, str) and again.status == 400
    # the approval is remembered: the next authorization goes straight back with a code
    again_url, _ = stack.login(browser, client)
    assert "code" in query_of(again_url)
    client = register_client(stack.issuer)  # a new client: consent is asked again
    # and another browser (no session) cannot post someone's form either
    page2 = browser.follow(client.authorize_url(challenge), client.redirect_uri)
    assert not isinstance(page2, str)
    stranger = Browser().follow(
        f"{stack.issuer}/consent",
        client.redirect_uri,
        method="POST",
        form={
            "request_id": page2.hidden("request_id"),
            "csrf_token": page2.hidden("csrf_token"),
            "decision": "approve",
        },
    )
    assert not isinstance(stranger, str) and stranger.status == 403


def test_token_endpoint_errors(stack: OAuthStack) -> None:
    token_url = f"{stack.issuer}/token"
    client = register_client(stack.issuer)
    page = post_form(token_url, {"grant_type": "password", "client_id": client.client_id})
    assert page.status == 400 and page.json()["error"] == "unsupported_grant_type"
    page = post_form(token_url, {"client_id": client.client_id})
    assert page.json()["error"] == "invalid_request"
    page = post_form(token_url, {"grant_type": "authorization_code", "client_id": "nobody"})
    assert page.status == 401 and page.json()["error"] == "invalid_client"
    page = request("POST", token_url, body=b"{}", headers={"Content-Type": "application/json"})
    assert page.status == 400 and page.json()["error"] == "invalid_request"
    big = post_form(token_url, {"grant_type": "authorization_code", "code": "x" * 70000})
    assert big.status == 413
    assert request("GET", token_url).status == 405


def test_github_down_at_callback_is_a_page_and_no_code(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    stack.github.fail("/login/oauth/access_token", 503)
    _, challenge = pkce_pair()
    got = Browser().follow(client.authorize_url(challenge), client.redirect_uri)
    assert not isinstance(got, str)
    assert got.status == 502 and "GitHub" in got.text
    assert got.header("location") is None
    stack.github.heal("/login/oauth/access_token")
    assert stack.tokens(Browser(), client)["access_token"]
