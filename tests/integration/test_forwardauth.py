"""Proxies protected by the edge's own tokens, checked in process: the challenge naming the
protected resource metadata, the metadata document, audience, scopes (step-up), allowlists,
revocation, excluded paths, passthrough, identity headers and their spoofed spellings.
Real edge, Redis, upstream and the GitHub stand-in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import redis

from tests.helpers import EdgeProcess, Upstream, proxy_doc, wait_for
from tests.oauth_helpers import (
    Browser,
    OAuthClient,
    OAuthStack,
    oauth_stack,
    register_client,
    request,
)

EdgeFactory = Callable[..., EdgeProcess]
HOST = "mcp.localhost"


@dataclass
class Site:
    stack: OAuthStack
    rdb: redis.Redis
    upstream: Upstream
    client: OAuthClient

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.stack.edge.http_port}"

    @property
    def resource(self) -> str:  # what the edge advertises: https, the addressed host
        return f"https://{HOST}:{self.stack.edge.http_port}/mcp"

    def protect(self, **fields: Any) -> None:
        """Write the proxy; each test waits for the effect it checks."""
        doc = {"auth_enabled": True, "resource_endpoint": "/mcp", **fields}
        self.rdb.set(f"proxy:{HOST}", proxy_doc(HOST, self.upstream.url, **doc))

    def token(self, scope: str = "mcp:read", resources: list[str] | None = None) -> str:
        answer = self.stack.tokens(
            Browser(), self.client, scope=scope, resources=resources or [self.resource]
        )
        return str(answer["access_token"])

    def get(self, path: str, token: str | None = None, **headers: str) -> Any:
        sent = dict(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return request("GET", self.origin + path, headers=sent)


@pytest.fixture
def site(edge_factory: EdgeFactory, rdb: redis.Redis) -> Iterator[Site]:
    upstream = Upstream()
    try:
        with oauth_stack(edge_factory, users=("alice", "bob"), allowed="alice,bob") as stack:
            s = Site(stack, rdb, upstream, register_client(stack.issuer))
            s.protect()
            wait_for(lambda: s.get("/.well-known/oauth-protected-resource").status == 200)
            yield s
    finally:
        upstream.close()


def seen_headers(page: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in page.json()["headers"]}


def test_no_token_gets_a_challenge_naming_the_metadata(site: Site) -> None:
    page = site.get("/mcp")
    assert page.status == 401
    challenge = page.header("www-authenticate") or ""
    assert challenge.startswith("Bearer ")
    assert (
        f'resource_metadata="https://{HOST}:{site.stack.edge.http_port}'
        '/.well-known/oauth-protected-resource/mcp"'
    ) in challenge
    assert "error=" not in challenge  # nothing was sent


def test_the_metadata_document(site: Site) -> None:
    for path in (
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ):
        page = site.get(path)
        assert page.status == 200
        assert page.header("access-control-allow-origin") == "*"
        doc = page.json()
        assert doc["resource"] == site.resource
        assert doc["authorization_servers"] == [site.stack.issuer]
        assert doc["jwks_uri"] == f"{site.stack.issuer}/jwks"
        assert doc["bearer_methods_supported"] == ["header"]
        assert doc["scopes_supported"] == ["mcp:read", "mcp:write", "mcp:admin"]


def test_a_token_for_the_resource_passes_with_identity_headers(site: Site) -> None:
    token = site.token()
    page = site.get(
        "/mcp",
        token,
        **{
            "X-Auth-User-Name": "mallory",
            "x_auth_user_id": "github:666",
            "X-AUTH-EMAIL": "evil@example.com",
        },
    )
    assert page.status == 200, page.text
    seen = seen_headers(page)
    assert seen["x-auth-user-name"] == "alice"
    assert seen["x-auth-user-id"] == "github:1000"
    assert seen["x-auth-email"] == "alice@users.example"
    assert seen["x-auth-scopes"] == "mcp:read"
    assert seen["x-auth-client-id"] == site.client.client_id
    assert "x_auth_user_id" not in seen and "evil@example.com" not in json.dumps(seen)
    assert seen["authorization"] == f"Bearer {token}"  # bearer tokens are forwarded


def test_wrong_audience_expired_garbage_and_revoked_are_401(site: Site) -> None:
    other = site.token(resources=[site.stack.issuer])  # a token for another audience
    for token in (other, "garbage", "a.b.c"):
        page = site.get("/mcp", token)
        assert page.status == 401
        assert 'error="invalid_token"' in (page.header("www-authenticate") or "")
    token = site.token()
    assert site.get("/mcp", token).status == 200
    assert site.client.revoke(token).status == 200
    wait_for(lambda: site.get("/mcp", token).status == 401, timeout=1.5)
    # a token signed by a foreign key under our kid
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    from cryptography.hazmat.primitives.asymmetric import rsa

    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({**claims, "jti": "forged"}, foreign, algorithm="RS256", headers=header)
    assert site.get("/mcp", forged).status == 401


def test_a_missing_scope_is_a_step_up_403(site: Site) -> None:
    site.protect(auth_allowed_scopes=["mcp:write"])
    wait_for(lambda: "mcp:write" in str(site.get("/mcp").header("www-authenticate")))
    token = site.token(scope="mcp:read")
    page = site.get("/mcp", token)
    assert page.status == 403
    challenge = page.header("www-authenticate") or ""
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp:write"' in challenge
    assert site.get("/mcp", site.token(scope="mcp:read mcp:write")).status == 200


def test_allowlists_users_and_emails(site: Site) -> None:
    token = site.token()  # alice's
    site.protect(auth_required_users=["bob"])
    wait_for(lambda: site.get("/mcp", token).status == 403)
    site.protect(auth_required_users=["*"], auth_required_emails=["*@users.example"])
    wait_for(lambda: site.get("/mcp", token).status == 200)
    site.protect(auth_required_emails=["bob@users.example"])
    wait_for(lambda: site.get("/mcp", token).status == 403)
    site.protect(auth_required_groups=["admins"])  # no groups in these tokens: nobody
    wait_for(lambda: site.get("/mcp", token).status == 403)


def test_excluded_paths_and_passthrough(site: Site) -> None:
    site.protect(auth_excluded_paths=["/public"])
    wait_for(lambda: site.get("/public/x").status == 200)
    assert site.get("/mcp").status == 401
    spoof = site.get("/public/x", **{"X-Auth-User-Name": "mallory"})
    assert "x-auth-user-name" not in seen_headers(spoof)
    site.protect(auth_mode="passthrough")
    wait_for(lambda: site.get("/mcp").status == 200)
    anonymous = site.get("/mcp", **{"X-Auth-User-Name": "mallory"})
    assert "x-auth-user-name" not in seen_headers(anonymous)
    named = site.get("/mcp", site.token())
    assert seen_headers(named)["x-auth-user-name"] == "alice"


def test_a_token_in_the_query_only_when_listed(site: Site) -> None:
    token = site.token()
    assert site.get(f"/mcp?access_token={token}").status == 401
    site.protect(resource_bearer_methods=["header", "query"])
    wait_for(lambda: site.get(f"/mcp?access_token={token}").status == 200)
    # the access log never shows it
    assert token not in site.stack.edge.stdout()


@pytest.mark.edge_errors(r"authentication service")
def test_another_auth_proxy_is_asked_not_our_tokens(site: Site) -> None:
    # an auth_proxy that is not the edge's own issuer: the edge's tokens do not let a
    # request in by themselves; the other service is asked, and when it cannot be
    # reached the request fails closed
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    site.protect(auth_proxy=f"http://127.0.0.1:{closed}/verify")
    wait_for(lambda: site.get("/mcp", site.token()).status == 503)


def test_the_jwt_pitfalls_are_refused_at_the_proxy(site: Site) -> None:
    import base64
    import secrets

    from cryptography.hazmat.primitives import serialization

    token = site.token()
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    assert site.get("/mcp", token).status == 200

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    # alg none
    unsigned = b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": header["kid"]}).encode())
    none = f"{unsigned}.{b64(json.dumps(claims).encode())}."
    # HS256 keyed with the published public key (RS/HS confusion)
    jwk = next(
        k
        for k in request("GET", f"{site.stack.issuer}/jwks").json()["keys"]
        if k["kid"] == header["kid"]
    )
    public = jwt.PyJWK(jwk).key
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs_header = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": header["kid"]}).encode())
    body = b64(json.dumps(claims).encode())
    import hashlib
    import hmac

    signature = hmac.new(pem, f"{hs_header}.{body}".encode(), hashlib.sha256).digest()
    confused = f"{hs_header}.{body}.{b64(signature)}"
    # missing claims, expired, not yet valid: re-signed would need our key, so the
    # original signature no longer matches either way; an oversized token; a kid flood
    expired = token.rsplit(".", 1)[0] + "." + b64(b"x" * 256)
    oversized = token + "A" * 9000
    for bad in (none, confused, expired, oversized):
        page = site.get("/mcp", bad)
        assert page.status == 401, bad[:40]
        assert 'error="invalid_token"' in (page.header("www-authenticate") or "")
    for _ in range(50):  # unknown kids: refused from memory, never fetched
        kid = secrets.token_urlsafe(16)
        flood = b64(json.dumps({**header, "kid": kid}).encode())
        assert site.get("/mcp", f"{flood}.{body}.{token.rsplit('.', 1)[1]}").status == 401
    assert site.get("/mcp", token).status == 200


def test_an_upstream_serving_its_own_metadata_is_the_authority_unless_overridden(
    site: Site,
) -> None:
    from http.server import BaseHTTPRequestHandler

    from tests.helpers import echo

    own_doc = {"resource": "https://upstream.example/mcp", "authorization_servers": ["x"]}

    def serving(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
        if req.path.startswith("/.well-known/oauth-protected-resource"):
            return 200, [("Content-Type", "application/json")], json.dumps(own_doc).encode()
        return echo(req)

    upstream = Upstream(serving)
    try:
        doc = {"auth_enabled": True, "resource_endpoint": "/mcp"}
        site.rdb.set(f"proxy:{HOST}", proxy_doc(HOST, upstream.url, **doc))
        path = "/.well-known/oauth-protected-resource/mcp"
        wait_for(lambda: site.get(path).json() == own_doc)  # the default: not overridden
        page = site.get(path)
        assert page.header("access-control-allow-origin") == "*"
        doc["resource_override_backend"] = True
        site.rdb.set(f"proxy:{HOST}", proxy_doc(HOST, upstream.url, **doc))
        wait_for(lambda: site.get(path).json()["resource"] == site.resource)
    finally:
        upstream.close()
    # an upstream without a document of its own (the echo): the edge's
    site.protect()
    wait_for(
        lambda: (
            site.get("/.well-known/oauth-protected-resource/mcp").json()["resource"]
            == site.resource
        )
    )


def test_a_resource_endpoint_given_as_a_url_is_the_resource_and_its_metadata_link(
    site: Site,
) -> None:
    url = f"http://{HOST}:{site.stack.edge.http_port}/mcp"
    site.protect(resource_endpoint=url)
    wait_for(
        lambda: site.get("/.well-known/oauth-protected-resource/mcp").json()["resource"] == url
    )
    challenge = site.get("/mcp").header("www-authenticate") or ""
    metadata = f"http://{HOST}:{site.stack.edge.http_port}/.well-known/oauth-protected-resource/mcp"
    assert f'resource_metadata="{metadata}"' in challenge
