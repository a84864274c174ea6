"""The OAuth server's answers to bad input, end to end through a real edge, a real Redis
and the GitHub stand-in: each case checked for the RFC's error code and status, and for
its form (back to the client as ``error=`` with ``state`` and ``iss``, or an HTML page
that never redirects when the client or its redirect URI cannot be trusted).

Client ID Metadata Documents are served over real TLS from 127.0.0.1 with a trustme
certificate; the edge trusts its CA through ``SSL_CERT_FILE``, which Python's default
TLS context honours.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socket import socket
from typing import Any

import jwt
import pytest
import trustme

from tests.helpers import EdgeProcess, free_port, wait_for
from tests.oauth_helpers import (
    Browser,
    OAuthClient,
    OAuthStack,
    Page,
    oauth_stack,
    pkce_pair,
    post_form,
    post_json,
    query_of,
    register,
    register_client,
    request,
)

EdgeFactory = Callable[..., EdgeProcess]
FORM_LIMIT = 64 * 1024


@pytest.fixture
def stack(edge_factory: EdgeFactory) -> Iterator[OAuthStack]:
    with oauth_stack(edge_factory, users=("alice", "mallory")) as s:
        yield s


# ---------------------------------------------------------------------- checks
def redirected_error(
    page: Page, stack: OAuthStack, redirect_uri: str, error: str, state: str
) -> None:
    """An error sent back to the client: a redirect to its URI with ``error``, the
    request's ``state`` and the issuer (RFC 9207), and no code."""
    assert page.status == 302, (page.status, page.text[:300])
    location = page.header("location") or ""
    assert location.startswith(redirect_uri + "?"), location
    params = query_of(location)
    assert params.get("error") == error, params
    assert params.get("state") == state, params
    assert params.get("iss") == stack.issuer, params
    assert "code" not in params


def error_page(page: Page, status: int = 400) -> None:
    """An HTML error page, never a redirect."""
    assert page.status == status, (page.status, page.text[:300])
    assert page.header("location") is None
    assert (page.header("content-type") or "").startswith("text/html")
    assert page.header("x-frame-options") == "DENY"


def oauth_error(page: Page, error: str, status: int = 400) -> dict[str, Any]:
    assert page.status == status, (page.status, page.text[:300])
    assert (page.header("content-type") or "").startswith("application/json")
    doc: dict[str, Any] = page.json()
    assert doc["error"] == error, doc
    assert "Traceback" not in page.text
    return doc


def authorize_params(
    client: OAuthClient, challenge: str, state: str, **changes: str | None
) -> list[tuple[str, str]]:
    """A good authorization request's parameters with ``changes`` (None: left out)."""
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.redirect_uri,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "mcp:read",
        **changes,
    }
    return [(k, v) for k, v in params.items() if v is not None]


def authorize(stack: OAuthStack, params: Sequence[tuple[str, str]]) -> Page:
    return request("GET", f"{stack.issuer}/authorize?{urllib.parse.urlencode(params)}")


def goes_to_github(page: Page, stack: OAuthStack) -> None:
    """Accepted: the browser is sent to sign in at GitHub."""
    assert page.status == 302, (page.status, page.text[:300])
    assert (page.header("location") or "").startswith(stack.github.authorize_url)


def verify_status(stack: OAuthStack, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return request("GET", f"{stack.issuer}/verify", headers=headers).status


def moved(client: OAuthClient, redirect_uri: str) -> OAuthClient:
    return OAuthClient(client.issuer, client.client_id, redirect_uri, client.secret, client.method)


# ---------------------------------------------------------------------- /authorize
def test_authorize_pkce_errors_are_redirected(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    _, challenge = pkce_pair()
    cases: dict[str, dict[str, str | None]] = {
        "no-challenge": {"code_challenge": None},
        "plain": {"code_challenge_method": "plain"},
        "no-method": {"code_challenge_method": None},
        "short": {"code_challenge": "abc"},
        "bad-chars": {"code_challenge": "+" * 43},
        "too-long": {"code_challenge": challenge + "A"},
    }
    for state, changes in cases.items():
        page = authorize(stack, authorize_params(client, challenge, state, **changes))
        redirected_error(page, stack, client.redirect_uri, "invalid_request", state)
    # the same request with S256 and a good challenge is accepted
    goes_to_github(authorize(stack, authorize_params(client, challenge, "ok")), stack)
    # plain PKCE with a challenge that happens to look like an S256 one: still refused
    verifier, _ = pkce_pair()
    plain = authorize_params(client, verifier[:43], "plain-43", code_challenge_method="plain")
    redirected_error(
        authorize(stack, plain), stack, client.redirect_uri, "invalid_request", "plain-43"
    )


def test_authorize_response_type_scope_and_resource_errors(stack: OAuthStack) -> None:
    narrow = register_client(stack.issuer, scope="mcp:read")
    _, challenge = pkce_pair()
    port = stack.edge.http_port
    cases: list[tuple[str, str, dict[str, str | None]]] = [
        ("token", "unsupported_response_type", {"response_type": "token"}),
        ("no-type", "unsupported_response_type", {"response_type": None}),
        ("unknown-scope", "invalid_scope", {"scope": "mcp:read mcp:bogus"}),
        ("beyond-client", "invalid_scope", {"scope": "mcp:read mcp:write"}),
        ("no-proxy", "invalid_target", {"resource": f"http://nowhere.localhost:{port}/mcp"}),
        ("fragment", "invalid_target", {"resource": f"{stack.issuer}#frag"}),
        ("relative", "invalid_target", {"resource": "/mcp"}),
    ]
    for state, error, changes in cases:
        page = authorize(stack, authorize_params(narrow, challenge, state, **changes))
        redirected_error(page, stack, narrow.redirect_uri, error, state)
    # what those cases change, done right, is accepted: the client's scope, the issuer as
    # the resource
    goes_to_github(authorize(stack, authorize_params(narrow, challenge, "ok")), stack)
    ok = authorize_params(narrow, challenge, "ok-resource", resource=stack.issuer)
    goes_to_github(authorize(stack, ok), stack)
    # a client registered without a scope may ask for any of the server's
    wide = register_client(stack.issuer)
    ok = authorize_params(wide, challenge, "wide", scope="mcp:read mcp:write mcp:admin")
    goes_to_github(authorize(stack, ok), stack)
    redirected_error(
        authorize(stack, authorize_params(wide, challenge, "wide-bogus", scope="admin")),
        stack,
        wide.redirect_uri,
        "invalid_scope",
        "wide-bogus",
    )


def test_authorize_unknown_client_is_a_page(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    _, challenge = pkce_pair()
    for client_id in ("no-such-client", "", None):
        page = authorize(stack, authorize_params(client, challenge, "s", client_id=client_id))
        error_page(page)
    # even with an otherwise redirectable error, an unknown client gets no redirect
    page = authorize(
        stack,
        authorize_params(client, challenge, "s", client_id="nobody", response_type="token"),
    )
    error_page(page)


def test_authorize_redirect_uri_rules(stack: OAuthStack) -> None:
    port = free_port()
    client = register_client(stack.issuer, redirect_uri=f"http://127.0.0.1:{port}/callback")
    https = register_client(stack.issuer, redirect_uri="https://app.example.com/cb")
    _, challenge = pkce_pair()
    other = free_port()
    refused = [
        (client, f"http://127.0.0.1:{port}/other"),  # another path
        (client, f"http://127.0.0.1:{other}/other"),  # another path, another port
        (client, f"http://127.0.0.1:{port}/callback?x=1"),  # another query
        (client, f"http://127.0.0.2:{port}/callback"),  # another (loopback) host
        (client, f"http://localhost:{port}/callback"),  # another name for the host
        (client, f"https://127.0.0.1:{port}/callback"),  # another scheme
        (client, f"http://127.0.0.1:{port}/callback#f"),  # a fragment
        (client, "https://evil.example/callback"),  # another host
        (https, "https://app.example.com/cb/"),  # exact match for https
        (https, "https://app.example.com:8443/cb"),  # no port freedom for https
        (https, "https://evil.example/cb"),
    ]
    for owner, redirect_uri in refused:
        # with an error that would otherwise be redirected: still a page
        for changes in ({}, {"response_type": "token"}, {"code_challenge_method": "plain"}):
            params = authorize_params(owner, challenge, "s", redirect_uri=redirect_uri, **changes)
            page = authorize(stack, params)
            error_page(page)
            assert "redirect" in page.text.lower()
    # RFC 8252 section 7.3: a loopback redirect URI may use any port
    elsewhere = moved(client, f"http://127.0.0.1:{other}/callback")
    browser = Browser()
    url, verifier = stack.login(browser, elsewhere)
    assert url.startswith(elsewhere.redirect_uri + "?")
    code = query_of(url)["code"]
    answer = elsewhere.token(code, verifier)
    assert answer.status == 200, answer.text
    # and its errors go to that port too
    page = authorize(
        stack, authorize_params(elsewhere, challenge, "port-error", response_type="token")
    )
    redirected_error(page, stack, elsewhere.redirect_uri, "unsupported_response_type", "port-error")
    # redirect_uri may be left out when one is registered, never when several are
    two = register(
        stack.issuer,
        {
            "redirect_uris": [f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b"],
            "token_endpoint_auth_method": "none",
        },
    )
    several = OAuthClient(stack.issuer, two["client_id"], f"http://127.0.0.1:{port}/a")
    error_page(authorize(stack, authorize_params(several, challenge, "s", redirect_uri=None)))
    goes_to_github(
        authorize(stack, authorize_params(client, challenge, "s", redirect_uri=None)), stack
    )


def test_authorize_parameter_sent_twice(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    _, challenge = pkce_pair()
    _, challenge2 = pkce_pair()
    base = authorize_params(client, challenge, "twice")
    for repeated in (
        ("code_challenge", challenge2),
        ("state", "other"),
        ("client_id", client.client_id),
        ("redirect_uri", client.redirect_uri),
        ("response_type", "code"),
        ("scope", "mcp:read"),
    ):
        page = authorize(stack, [*base, repeated])
        # which of the two values is meant cannot be known: a page, not a redirect
        error_page(page)
        assert "more than once" in page.text
    # resource may be repeated (RFC 8707)
    both = [*base, ("resource", stack.issuer), ("resource", stack.issuer + "/")]
    goes_to_github(authorize(stack, both), stack)


def test_authorize_post_form_errors(stack: OAuthStack) -> None:
    """/authorize also takes a form (OAuth 2.1 section 4.1.1): the same rules."""
    client = register_client(stack.issuer)
    _, challenge = pkce_pair()
    params = authorize_params(client, challenge, "posted", code_challenge_method="plain")
    page = post_form(f"{stack.issuer}/authorize", params)
    redirected_error(page, stack, client.redirect_uri, "invalid_request", "posted")
    big = post_form(f"{stack.issuer}/authorize", [*params, ("pad", "x" * FORM_LIMIT)])
    error_page(big, 413)
    assert request("DELETE", f"{stack.issuer}/authorize").status == 405


# ---------------------------------------------------------------------- /token
def test_token_wrong_verifier(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    url, verifier = stack.login(Browser(), client)
    code = query_of(url)["code"]
    other_verifier, _ = pkce_pair()
    oauth_error(client.token(code, other_verifier), "invalid_grant")
    # the code was spent by the failed attempt
    oauth_error(client.token(code, verifier), "invalid_grant")
    # no verifier at all, and a malformed one
    for bad in ("", "short"):
        url, verifier = stack.login(Browser(), client)
        oauth_error(client.token(query_of(url)["code"], bad), "invalid_grant")
    # the control: the right verifier works
    url, verifier = stack.login(Browser(), client)
    assert client.token(query_of(url)["code"], verifier).status == 200


def test_token_code_of_another_client(stack: OAuthStack) -> None:
    rightful = register_client(stack.issuer)
    thief = register_client(stack.issuer)
    url, verifier = stack.login(Browser(), rightful)
    code = query_of(url)["code"]
    # the thief knows everything: the code, the verifier and the redirect URI
    page = thief.token(code, verifier, redirect_uri=rightful.redirect_uri)
    oauth_error(page, "invalid_grant")
    # and the code is spent for its rightful client too
    oauth_error(rightful.token(code, verifier), "invalid_grant")
    # a confidential thief with its own good secret fares no better
    confidential = register_client(stack.issuer, method="client_secret_post")
    url, verifier = stack.login(Browser(), rightful)
    code = query_of(url)["code"]
    page = confidential.token(code, verifier, redirect_uri=rightful.redirect_uri)
    oauth_error(page, "invalid_grant")
    oauth_error(rightful.token(code, verifier), "invalid_grant")


def test_token_redirect_uri_must_match_the_authorization(stack: OAuthStack) -> None:
    port = free_port()
    client = register_client(stack.issuer, redirect_uri=f"http://127.0.0.1:{port}/callback")
    for sent in (
        f"http://127.0.0.1:{free_port()}/callback",  # allowed at /authorize, but not this one
        f"http://127.0.0.1:{port}/callback/",
        None,  # left out although it was in the authorization request
    ):
        url, verifier = stack.login(Browser(), client)
        fields = [
            ("grant_type", "authorization_code"),
            ("code", query_of(url)["code"]),
            ("code_verifier", verifier),
            ("client_id", client.client_id),
        ]
        if sent is not None:
            fields.append(("redirect_uri", sent))
        oauth_error(post_form(f"{stack.issuer}/token", fields), "invalid_grant")


def test_token_expired_code(edge_factory: EdgeFactory) -> None:
    with oauth_stack(edge_factory, OAUTH_CODE_LIFETIME="1") as stack:
        client = register_client(stack.issuer)
        url, verifier = stack.login(Browser(), client)
        time.sleep(2)
        oauth_error(client.token(query_of(url)["code"], verifier), "invalid_grant")
        # the control: redeemed at once, a code of the same lifetime works
        url, verifier = stack.login(Browser(), client)
        assert client.token(query_of(url)["code"], verifier).status == 200


def test_token_resource_not_authorized(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    port = stack.edge.http_port
    # authorized for no resource: naming one at /token is refused
    url, verifier = stack.login(Browser(), client)
    page = client.token(query_of(url)["code"], verifier, resources=[stack.issuer])
    oauth_error(page, "invalid_target")
    # authorized for the issuer: another resource is refused, even with the issuer
    url, verifier = stack.login(Browser(), client, resources=[stack.issuer])
    page = client.token(
        query_of(url)["code"],
        verifier,
        resources=[stack.issuer, f"http://other.localhost:{port}/mcp"],
    )
    oauth_error(page, "invalid_target")
    # the control: the authorized resource is accepted, and is the audience
    url, verifier = stack.login(Browser(), client, resources=[stack.issuer])
    page = client.token(query_of(url)["code"], verifier, resources=[stack.issuer])
    assert page.status == 200, page.text
    claims = jwt.decode(page.json()["access_token"], options={"verify_signature": False})
    assert claims["aud"] == stack.issuer
    # at refresh too
    page = client.refresh(page.json()["refresh_token"])
    assert page.status == 200
    fields = [
        ("grant_type", "refresh_token"),
        ("refresh_token", page.json()["refresh_token"]),
        ("resource", f"http://other.localhost:{port}/mcp"),
        ("client_id", client.client_id),
    ]
    oauth_error(post_form(f"{stack.issuer}/token", fields), "invalid_target")
    assert client.refresh(page.json()["refresh_token"]).status == 200  # not spent


def test_refresh_wider_scope_and_other_client(stack: OAuthStack) -> None:
    client = register_client(stack.issuer)
    other = register_client(stack.issuer)
    answer = stack.tokens(Browser(), client, scope="mcp:read")
    refresh = answer["refresh_token"]
    oauth_error(client.refresh(refresh, scope="mcp:read mcp:write"), "invalid_scope")
    oauth_error(client.refresh(refresh, scope="mcp:bogus"), "invalid_scope")
    # a refused request issued nothing, so it spent nothing: the token still works (were it
    # counted as a use, this would be a reuse, and the whole grant revoked)
    page = client.refresh(refresh)
    assert page.status == 200, page.text
    assert verify_status(stack, page.json()["access_token"]) == 200
    answer = stack.tokens(Browser(), client, scope="mcp:read mcp:write")
    narrowed = client.refresh(answer["refresh_token"], scope="mcp:write")
    assert narrowed.status == 200, narrowed.text
    assert narrowed.json()["scope"] == "mcp:write"
    # the rotated refresh token keeps the original grant: it may widen back to it
    back = client.refresh(narrowed.json()["refresh_token"], scope="mcp:read mcp:write")
    assert back.status == 200, back.text
    # another client presenting the refresh token: invalid_grant; the token has leaked,
    # so it is spent, and its rightful client's next use revokes the grant
    stolen = back.json()["refresh_token"]
    oauth_error(other.refresh(stolen), "invalid_grant")
    oauth_error(client.refresh(stolen), "invalid_grant")
    wait_for(lambda: verify_status(stack, back.json()["access_token"]) == 401, timeout=2)


def test_token_client_authentication_errors(stack: OAuthStack) -> None:
    token_url = f"{stack.issuer}/token"
    for method in ("client_secret_basic", "client_secret_post"):
        client = register_client(stack.issuer, method=method)
        url, verifier = stack.login(Browser(), client)
        code = query_of(url)["code"]
        # the confidential client without its secret: 401 invalid_client
        as_public = OAuthClient(client.issuer, client.client_id, client.redirect_uri)
        page = as_public.token(code, verifier)
        oauth_error(page, "invalid_client", 401)
        if method == "client_secret_basic":
            assert (page.header("www-authenticate") or "").startswith("Basic")
        # by the other method than the registered one
        swapped = "client_secret_post" if method == "client_secret_basic" else "client_secret_basic"
        wrong_method = OAuthClient(
            client.issuer, client.client_id, client.redirect_uri, client.secret, swapped
        )
        oauth_error(wrong_method.token(code, verifier), "invalid_client", 401)
        # a failed authentication spent nothing: the code still works
        assert client.token(code, verifier).status == 200
    # a public client sending Basic and client_secret both: invalid_request
    public = register_client(stack.issuer)
    pair = base64.b64encode(f"{public.client_id}:x".encode()).decode()
    page = post_form(
        token_url,
        {"grant_type": "authorization_code", "code": "c", "client_secret": "x"},
        headers={"Authorization": f"Basic {pair}"},
    )
    oauth_error(page, "invalid_request")
    # a public client with a secret of any kind: invalid_client
    page = post_form(
        token_url,
        {
            "grant_type": "authorization_code",
            "code": "c",
            "client_id": public.client_id,
            "client_secret": "x",
        },
    )
    oauth_error(page, "invalid_client", 401)
    page = post_form(
        token_url,
        {"grant_type": "authorization_code", "code": "c"},
        headers={"Authorization": "Basic !!not-base64"},
    )
    oauth_error(page, "invalid_client", 401)


def test_token_form_limits_content_type_and_method(stack: OAuthStack) -> None:
    token_url = f"{stack.issuer}/token"
    client = register_client(stack.issuer)
    head = f"grant_type=authorization_code&client_id={client.client_id}&code="
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    # exactly the limit: read and answered (the code is unknown)
    body = (head + "x" * (FORM_LIMIT - len(head))).encode()
    assert len(body) == FORM_LIMIT
    oauth_error(request("POST", token_url, headers=form, body=body), "invalid_grant")
    # one byte more: 413
    page = request("POST", token_url, headers=form, body=body + b"x")
    oauth_error(page, "invalid_request", 413)
    page = request("POST", token_url, headers=form, body=body * 4)
    oauth_error(page, "invalid_request", 413)
    # not a form
    fields = urllib.parse.urlencode(
        {"grant_type": "authorization_code", "client_id": client.client_id}
    )
    for ctype in ("application/json", "text/plain", "multipart/form-data; boundary=x"):
        page = request("POST", token_url, headers={"Content-Type": ctype}, body=fields.encode())
        oauth_error(page, "invalid_request")
    page = request("POST", token_url, body=fields.encode(), headers={"Content-Type": ""})
    oauth_error(page, "invalid_request")
    # not UTF-8
    page = request("POST", token_url, headers=form, body=fields.encode() + b"&x=\xff\xfe")
    oauth_error(page, "invalid_request")
    # a parameter twice
    page = post_form(
        token_url,
        [
            ("grant_type", "authorization_code"),
            ("code", "a"),
            ("code", "b"),
            ("client_id", client.client_id),
        ],
    )
    oauth_error(page, "invalid_request")
    # the form's charset parameter is allowed
    page = request(
        "POST",
        token_url,
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
        body=fields.encode(),
    )
    oauth_error(page, "invalid_grant")
    # methods
    for method in ("GET", "PUT", "DELETE"):
        page = request(method, token_url)
        oauth_error(page, "invalid_request", 405)
        assert page.header("allow") == "POST"


# ---------------------------------------------------------------------- /register
def test_register_refuses_bad_metadata(stack: OAuthStack) -> None:
    url = f"{stack.issuer}/register"
    good = {"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none"}
    assert post_json(url, good).status == 201
    cases: list[tuple[dict[str, Any], str]] = [
        ({"token_endpoint_auth_method": "none"}, "invalid_client_metadata"),
        ({**good, "redirect_uris": []}, "invalid_client_metadata"),
        ({**good, "redirect_uris": "http://127.0.0.1/cb"}, "invalid_client_metadata"),
        ({**good, "redirect_uris": ["http://app.example.com/cb"]}, "invalid_redirect_uri"),
        ({**good, "redirect_uris": ["http://10.0.0.1/cb"]}, "invalid_redirect_uri"),
        ({**good, "redirect_uris": ["https://app.example.com/cb#x"]}, "invalid_redirect_uri"),
        ({**good, "redirect_uris": ["javascript:alert(1)"]}, "invalid_redirect_uri"),
        ({**good, "redirect_uris": ["/relative/cb"]}, "invalid_redirect_uri"),
        ({**good, "redirect_uris": ["https://u:p@app.example.com/cb"]}, "invalid_redirect_uri"),
        ({**good, "grant_types": ["authorization_code", "password"]}, "invalid_client_metadata"),
        ({**good, "grant_types": ["client_credentials"]}, "invalid_client_metadata"),
        ({**good, "response_types": ["token"]}, "invalid_client_metadata"),
        ({**good, "token_endpoint_auth_method": "private_key_jwt"}, "invalid_client_metadata"),
        ({**good, "scope": "mcp:read root"}, "invalid_client_metadata"),
        ({**good, "client_name": "x" * 1000}, "invalid_client_metadata"),
    ]
    for document, error in cases:
        page = post_json(url, document)
        oauth_error(page, error)
    # not JSON, not an object, not declared as JSON
    for body, ctype in (
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (json.dumps(good).encode(), "text/plain"),
    ):
        page = request("POST", url, headers={"Content-Type": ctype}, body=body)
        oauth_error(page, "invalid_client_metadata")
    # too large
    big = {**good, "pad": "x" * FORM_LIMIT}
    page = request(
        "POST", url, headers={"Content-Type": "application/json"}, body=json.dumps(big).encode()
    )
    oauth_error(page, "invalid_request", 413)
    assert request("GET", url).status == 405


def test_registration_management(stack: OAuthStack) -> None:
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    doc = register(
        stack.issuer,
        {
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": "Managed",
        },
    )
    client_id = doc["client_id"]
    token = doc["registration_access_token"]
    uri = doc["registration_client_uri"]
    assert uri == f"{stack.issuer}/register/{client_id}"
    bearer = {"Authorization": f"Bearer {token}"}
    wrong = {"Authorization": "Bearer not-the-token"}
    # read
    page = request("GET", uri, headers=bearer)
    assert page.status == 200, page.text
    assert page.json()["client_name"] == "Managed"
    assert "client_secret" not in page.json()
    # a wrong token, no token, another client's token: 401, for every method
    other = register(
        stack.issuer, {"redirect_uris": [redirect_uri], "token_endpoint_auth_method": "none"}
    )
    others = {"Authorization": f"Bearer {other['registration_access_token']}"}
    update = {**page.json(), "client_name": "Renamed"}
    for headers in (wrong, {}, others):
        oauth_error(request("GET", uri, headers=headers), "invalid_token", 401)
        put = request(
            "PUT",
            uri,
            headers={"Content-Type": "application/json", **headers},
            body=json.dumps(update).encode(),
        )
        oauth_error(put, "invalid_token", 401)
        oauth_error(request("DELETE", uri, headers=headers), "invalid_token", 401)
    # an unknown client with a token: 401 as well (ids cannot be probed)
    oauth_error(
        request("GET", f"{stack.issuer}/register/nobody", headers=bearer), "invalid_token", 401
    )
    # update
    page = request(
        "PUT",
        uri,
        headers={"Content-Type": "application/json", **bearer},
        body=json.dumps(update).encode(),
    )
    assert page.status == 200, page.text
    assert page.json()["client_name"] == "Renamed"
    assert request("GET", uri, headers=bearer).json()["client_name"] == "Renamed"
    # an update with bad metadata is refused like a registration
    bad = {**update, "redirect_uris": ["http://app.example.com/cb"]}
    page = request(
        "PUT",
        uri,
        headers={"Content-Type": "application/json", **bearer},
        body=json.dumps(bad).encode(),
    )
    oauth_error(page, "invalid_redirect_uri")
    # the client works, and has tokens
    client = OAuthClient(
        stack.issuer, client_id, redirect_uri, doc["client_secret"], "client_secret_basic"
    )
    answer = stack.tokens(Browser(), client)
    assert verify_status(stack, answer["access_token"]) == 200
    # delete
    page = request("DELETE", uri, headers=bearer)
    assert page.status == 204, page.text
    oauth_error(request("GET", uri, headers=bearer), "invalid_token", 401)
    # it cannot authorize any more: a page, not a redirect
    _, challenge = pkce_pair()
    error_page(authorize(stack, authorize_params(client, challenge, "gone")))
    # its tokens are revoked
    wait_for(lambda: verify_status(stack, answer["access_token"]) == 401, timeout=2)
    oauth_error(client.refresh(answer["refresh_token"]), "invalid_client", 401)


# ---------------------------------------------------------------------- CIMD
class DocumentServer(ThreadingHTTPServer):
    """An HTTPS server on 127.0.0.1 answering from ``answers`` (path -> status, headers,
    body); it counts every connection, before TLS, and records every path asked."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext) -> None:
        self.port = free_port()
        self.context = context
        self.connections = 0
        self.paths: list[str] = []
        self.answers: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}
        super().__init__(("127.0.0.1", self.port), _DocumentHandler)

    def get_request(self) -> tuple[socket, Any]:
        sock, address = self.socket.accept()
        self.connections += 1
        # the handshake happens in the request's thread, on its first read
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gives up (or refuses the certificate) is not our failure

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def serve_document(self, path: str, redirect_uri: str, **extra: Any) -> str:
        url = self.url(path)
        document = {
            "client_id": url,
            "client_name": "CIMD test client",
            "redirect_uris": [redirect_uri],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **extra,
        }
        body = json.dumps(document).encode()
        self.answers[path] = (200, [("Content-Type", "application/json")], body)
        return url


class _DocumentHandler(BaseHTTPRequestHandler):
    server: DocumentServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        status, headers, body = self.server.answers.get(self.path, (404, [], b"no such document"))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def documents(ca: trustme.CA) -> Iterator[DocumentServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = DocumentServer(context)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def ca_pem(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "cimd-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_dcr_then_cimd_flow(
    edge_factory: EdgeFactory, documents: DocumentServer, ca_pem: str
) -> None:
    with oauth_stack(edge_factory, OAUTH_CIMD_ALLOW_PRIVATE="true", SSL_CERT_FILE=ca_pem) as stack:
        # a registered client first
        registered = register_client(stack.issuer)
        answer = stack.tokens(Browser(), registered)
        claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == registered.client_id
        # then a client known by its metadata document's URL
        redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
        client_id = documents.serve_document("/client.json", redirect_uri)
        client = OAuthClient(stack.issuer, client_id, redirect_uri)
        browser = Browser()
        url, verifier = stack.login(browser, client, scope="mcp:read mcp:write")
        params = query_of(url)
        assert params["state"] == "st-1" and params["iss"] == stack.issuer
        page = client.token(params["code"], verifier)
        assert page.status == 200, page.text
        tokens = page.json()
        claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
        assert claims["client_id"] == claims["azp"] == client_id
        assert claims["scope"] == "mcp:read mcp:write"
        verified = request(
            "GET",
            f"{stack.issuer}/verify",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )
        assert verified.status == 200
        assert verified.header("x-auth-client-id") == client_id
        assert client.refresh(tokens["refresh_token"]).status == 200
        assert "/client.json" in documents.paths
        # the document's redirect URIs are the only ones (a loopback port aside)
        _, challenge = pkce_pair()
        error_page(
            authorize(
                stack,
                authorize_params(client, challenge, "s", redirect_uri="https://evil.example/cb"),
            )
        )
        # a document that answers with a redirect: refused, and not followed
        documents.answers["/moved.json"] = (302, [("Location", "/client.json")], b"")
        asked = len(documents.paths)
        moved_client = OAuthClient(stack.issuer, documents.url("/moved.json"), redirect_uri)
        page = authorize(stack, authorize_params(moved_client, challenge, "s"))
        error_page(page)
        assert "redirects are not followed" in page.text
        assert documents.paths[asked:] == ["/moved.json"]
        # a document whose client_id is not its URL: refused
        documents.serve_document("/other.json", redirect_uri)
        documents.answers["/liar.json"] = documents.answers["/client.json"]
        liar = OAuthClient(stack.issuer, documents.url("/liar.json"), redirect_uri)
        page = authorize(stack, authorize_params(liar, challenge, "s"))
        error_page(page)
        assert "does not equal the URL" in page.text
        # at /token an unusable document is an unknown client
        fields = {
            "grant_type": "authorization_code",
            "code": "c",
            "client_id": liar.client_id,
        }
        oauth_error(post_form(f"{stack.issuer}/token", fields), "invalid_client", 401)


def test_cimd_private_addresses_refused_without_a_fetch(
    edge_factory: EdgeFactory, documents: DocumentServer, ca_pem: str
) -> None:
    # the edge trusts the documents' CA: only the address guard stands in the way
    with oauth_stack(edge_factory, SSL_CERT_FILE=ca_pem) as stack:
        redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
        documents.serve_document("/client.json", redirect_uri)
        _, challenge = pkce_pair()
        for host in ("127.0.0.1", "localhost"):
            url = documents.url("/client.json", host)
            client = OAuthClient(stack.issuer, url, redirect_uri)
            page = authorize(stack, authorize_params(client, challenge, "s"))
            error_page(page)
            assert "non-public address" in page.text
            # at /token too
            fields = {"grant_type": "authorization_code", "code": "c", "client_id": url}
            oauth_error(post_form(f"{stack.issuer}/token", fields), "invalid_client", 401)
        # the document server never saw a connection
        assert documents.connections == 0
        assert documents.paths == []


# ---------------------------------------------------------------------- logs
def test_no_secret_in_logs(edge_factory: EdgeFactory) -> None:
    with oauth_stack(edge_factory, LOG_LEVEL="DEBUG") as stack:
        redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
        doc = register(
            stack.issuer,
            {
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "client_secret_post",
                "grant_types": ["authorization_code", "refresh_token"],
            },
        )
        client = OAuthClient(
            stack.issuer, doc["client_id"], redirect_uri, doc["client_secret"], "client_secret_post"
        )
        registration = doc["registration_access_token"]
        browser = Browser()
        url, verifier = stack.login(browser, client)
        code = query_of(url)["code"]
        github_code = next(
            query_of(u)["code"] for u in browser.visited if u.startswith(f"{stack.issuer}/callback")
        )
        session = browser.cookies["auth.localhost"]["__Host-edge_oauth_session"]
        first = client.token(code, verifier).json()
        second = client.refresh(first["refresh_token"]).json()
        # a reused refresh token and a replayed code, both logged as warnings
        oauth_error(client.refresh(first["refresh_token"]), "invalid_grant")
        oauth_error(client.token(code, verifier), "invalid_grant")
        # a wrong secret, a wrong registration token
        wrong = OAuthClient(
            stack.issuer,
            client.client_id,
            redirect_uri,
            "wrong-secret-value-123",
            "client_secret_post",
        )
        oauth_error(wrong.refresh(second["refresh_token"]), "invalid_client", 401)
        request(
            "GET",
            doc["registration_client_uri"],
            headers={"Authorization": "Bearer wrong-registration-token-456"},
        )
        # the session cookie and the tokens used
        cookie = {"Cookie": f"__Host-edge_oauth_session={session}"}
        assert request("GET", f"{stack.issuer}/verify", headers=cookie).status == 200
        verify_status(stack, second["access_token"])
        client.introspect(second["access_token"])
        client.revoke(second["refresh_token"])
        request(
            "GET",
            doc["registration_client_uri"],
            headers={"Authorization": f"Bearer {registration}"},
        )
        secrets = {
            "code": code,
            "code_verifier": verifier,
            "github code": github_code,
            "github token": stack.github.token_for("alice"),
            "access token": first["access_token"],
            "refresh token": first["refresh_token"],
            "rotated access token": second["access_token"],
            "rotated refresh token": second["refresh_token"],
            "client secret": doc["client_secret"],
            "registration token": registration,
            "session cookie": session,
            "wrong secret": "wrong-secret-value-123",
            "wrong registration token": "wrong-registration-token-456",
        }
        stack.edge.stop(timeout=10)
        logs = stack.edge.stdout() + stack.edge.stderr()
        # the logs are there to be searched: the failures above are in them
        assert "refresh token reused" in logs and "code used twice" in logs
        assert '"path":"/callback"' in logs
        leaked = [name for name, value in secrets.items() if value in logs]
        assert leaked == [], leaked
