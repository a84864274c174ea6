"""The protected-resource records and the edge's own tokens: ``POST
/api/v1/resources/{uri}/validate-token`` (is this token one of the edge's OAuth server's,
alive, for this resource?) and ``POST /api/v1/resources/auto-register`` (a record for every
proxy that protects a resource), through the API and the ``edge resource`` commands.

A real edge with its OAuth server and the GitHub stand-in, a real redis-server; tokens come
from the real browser flow, and the ones the server would never issue (expired, another
issuer...) are signed with the edge's own key, given through ``OAUTH_JWT_PRIVATE_KEY_B64``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.oauth.signing import thumbprint
from tests.api_client import Answer, assert_error, call, new_token, ok
from tests.helpers import ROOT, EdgeProcess, Upstream, proxy_doc, wait_for
from tests.oauth_helpers import (
    Browser,
    OAuthClient,
    OAuthStack,
    oauth_stack,
    register_client,
    request,
)

EdgeFactory = Callable[..., EdgeProcess]
RES = "/api/v1/resources"
HOST = "mcp.localhost"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FOREIGN = rsa.generate_private_key(public_exponent=65537, key_size=2048)
CLAIMS = {"sub", "login", "email", "scope", "client_id", "aud", "exp", "iat", "jti"}
CLIENT_ENV = ("API_URL", "TOKEN", "ADMIN_TOKEN", "EDGE_PROFILE", "NO_COLOR", "XDG_CONFIG_HOME")


def enc(text: str) -> str:
    """One percent-encoded path segment."""
    return quote(text, safe="")


def _key_b64() -> str:
    pem = KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return base64.b64encode(pem).decode()


@dataclass
class Site:
    stack: OAuthStack
    rdb: redis.Redis
    admin: str
    client: OAuthClient

    @property
    def api_port(self) -> int:
        return self.stack.edge.api_port

    @property
    def resource(self) -> str:  # what the edge advertises for the proxy: https, host:port
        return f"https://{HOST}:{self.stack.edge.http_port}/mcp"

    def token(self, resources: list[str] | None = None) -> str:
        answer = self.stack.tokens(
            Browser(), self.client, scope="mcp:read", resources=resources or [self.resource]
        )
        return str(answer["access_token"])

    def signed(
        self,
        key: rsa.RSAPrivateKey = KEY,
        *,
        typ: str = "at+jwt",
        kid: str | None = None,
        **changes: Any,
    ) -> str:
        """A token signed by ``key`` (the edge's own by default) with these claims."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.stack.issuer,
            "sub": "github:1000",
            "login": "alice",
            "email": "alice@users.example",
            "aud": [self.resource],
            "client_id": self.client.client_id,
            "scope": "mcp:read",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "at_" + secrets.token_urlsafe(16),
        }
        claims.update(changes)
        claims = {k: v for k, v in claims.items() if v is not None}  # None: left out
        headers = {"typ": typ, "kid": kid or thumbprint(KEY.public_key())}
        return jwt.encode(claims, key, algorithm="RS256", headers=headers)

    def validate(self, token: Any, uri: str | None = None, caller: str | None = None) -> Answer:
        path = f"{RES}/{enc(uri or self.resource)}/validate-token"
        return call(self.api_port, "POST", path, caller or self.admin, {"token": token})


@pytest.fixture
def site(edge_factory: EdgeFactory, rdb: redis.Redis, admin: str) -> Iterator[Site]:
    upstream = Upstream()
    try:
        with oauth_stack(
            edge_factory,
            users=("alice",),
            allowed="alice",
            ADMIN_TOKEN=admin,
            OAUTH_JWT_PRIVATE_KEY_B64=_key_b64(),
        ) as stack:
            doc = proxy_doc(HOST, upstream.url, auth_enabled=True, resource_endpoint="/mcp")
            rdb.set(f"proxy:{HOST}", doc)
            s = Site(stack, rdb, admin, register_client(stack.issuer))
            metadata = f"http://{HOST}:{stack.edge.http_port}/.well-known/oauth-protected-resource"
            wait_for(lambda: request("GET", metadata).status == 200)  # the proxy is served
            record = {"uri": s.resource, "name": "Tools", "scopes": ["mcp:read"]}
            ok(call(s.api_port, "POST", f"{RES}/", admin, record), 201)
            yield s
    finally:
        upstream.close()


def invalid(answer: Answer) -> str:
    """The reason of a ``valid: false`` answer."""
    doc = ok(answer)
    assert doc["valid"] is False, doc
    assert "claims" not in doc
    assert isinstance(doc["error"], str) and doc["error"]
    return str(doc["error"])


def redis_dump(rdb: redis.Redis) -> bytes:
    """Every key and value of the test's Redis, as one blob to search."""
    out: list[bytes] = []
    for key in rdb.scan_iter(count=1000):
        kind = rdb.type(key)
        out.append(key)
        if kind == b"string":
            out.append(rdb.get(key) or b"")
        elif kind == b"hash":
            for field, value in rdb.hgetall(key).items():
                out += [field, value]
        elif kind == b"set":
            out += list(rdb.smembers(key))
        elif kind == b"zset":
            out += [m for m, _ in rdb.zrange(key, 0, -1, withscores=True)]
        elif kind == b"list":
            out += rdb.lrange(key, 0, -1)
        elif kind == b"stream":
            for _, fields in rdb.xrange(key):
                for field, value in fields.items():
                    out += [field, value]
    return b"\n".join(out)


# ---------------------------------------------------------------------------- validate-token


def test_a_valid_token_answers_its_claims(site: Site) -> None:
    token = site.token()
    doc = ok(site.validate(token))
    assert doc["valid"] is True and doc["resource"] == site.resource
    claims = doc["claims"]
    assert set(claims) == CLAIMS
    assert claims["login"] == "alice" and claims["sub"] == "github:1000"
    assert claims["email"] == "alice@users.example"
    assert claims["scope"] == "mcp:read"
    assert claims["client_id"] == site.client.client_id
    assert site.resource in claims["aud"]
    assert claims["iat"] <= time.time() < claims["exp"]
    assert claims["jti"] == jwt.decode(token, options={"verify_signature": False})["jti"]
    # the token is never logged and never stored
    signature = token.rsplit(".", 1)[1]
    assert signature.encode() not in redis_dump(site.rdb)
    logs = site.stack.edge.stdout() + site.stack.edge.stderr()
    assert signature not in logs


def test_a_token_for_another_audience_is_wrong_audience(site: Site) -> None:
    other = f"https://{HOST}:{site.stack.edge.http_port}/other"
    ok(call(site.api_port, "POST", f"{RES}/", site.admin, {"uri": other, "name": "Other"}), 201)
    token = site.token()
    assert ok(site.validate(token))["valid"] is True
    assert invalid(site.validate(token, other)) == "wrong_audience"
    # the same for a token issued for the issuer itself
    assert invalid(site.validate(site.token(resources=[site.stack.issuer]))) == "wrong_audience"
    assert invalid(site.validate(site.signed(aud=other))) == "wrong_audience"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: "garbage", "malformed"),
        (lambda s: "a.b.c", "malformed"),
        (lambda s: "", "malformed"),
        (lambda s: "x" * 9000, "malformed"),
        (lambda s: s.signed(exp=int(time.time()) - 3600), "expired"),
        (lambda s: s.signed(nbf=int(time.time()) + 3600), "not_yet_valid"),
        (lambda s: s.signed(iss="https://other-issuer.example"), "wrong_issuer"),
        (lambda s: s.signed(FOREIGN), "invalid_signature"),  # a foreign key under our kid
        (lambda s: s.signed(FOREIGN, kid=thumbprint(FOREIGN.public_key())), "invalid_signature"),
        (lambda s: s.signed(typ="JWT"), "not_an_access_token"),
        (lambda s: s.signed(jti=None), "missing_claim"),
    ],
    ids=[
        "garbage",
        "three-dots",
        "empty",
        "too-long",
        "expired",
        "not-yet-valid",
        "other-issuer",
        "forged-signature",
        "foreign-key",
        "typ-jwt",
        "no-jti",
    ],
)
def test_tokens_that_are_not_valid(site: Site, make: Callable[[Site], str], reason: str) -> None:
    # the control: the same signer, the claims right, is valid
    assert ok(site.validate(site.signed()))["valid"] is True
    token = make(site)
    assert invalid(site.validate(token)) == reason


def test_a_revoked_token_is_not_valid(site: Site) -> None:
    token = site.token()
    assert ok(site.validate(token))["valid"] is True
    assert site.client.revoke(token).status == 200
    wait_for(lambda: ok(site.validate(token))["valid"] is False, timeout=1.5)
    assert invalid(site.validate(token)) == "revoked"


def test_unknown_resource_and_bad_bodies(site: Site) -> None:
    token = site.token()
    missing = f"https://{HOST}:{site.stack.edge.http_port}/nothing-here"
    assert_error(site.validate(token, missing), 404, "resource_not_found")
    assert_error(site.validate(token, "not a uri"), 404, "resource_not_found")
    path = f"{RES}/{enc(site.resource)}/validate-token"
    assert_error(call(site.api_port, "POST", path, site.admin, {}), 400, "invalid_body", "token")
    assert_error(site.validate(42), 400, "invalid_body", "token")
    answer = call(site.api_port, "POST", path, site.admin, {"token": token, "resource": "x"})
    assert_error(answer, 400, "invalid_body", "resource")
    assert_error(call(site.api_port, "POST", path, None, {"token": token}), 401, "unauthorized")
    assert call(site.api_port, "GET", path, site.admin).status == 405


def test_other_tokens_validate_against_their_own_records_only(site: Site) -> None:
    ops = new_token(site.api_port, site.admin, "ops")
    token = site.token()
    # the admin's record is not ops's to see: like a missing one
    assert_error(site.validate(token, caller=ops), 404, "resource_not_found")
    mine = f"https://{HOST}:{site.stack.edge.http_port}/ops"
    ok(call(site.api_port, "POST", f"{RES}/", ops, {"uri": mine, "name": "Ops"}), 201)
    assert ok(site.validate(site.signed(aud=[mine]), mine, caller=ops))["valid"] is True
    assert invalid(site.validate(token, mine, caller=ops)) == "wrong_audience"


def test_without_an_oauth_server_validate_token_is_503(api: EdgeProcess, admin: str) -> None:
    uri = "https://mcp.example.com/mcp"
    ok(call(api.api_port, "POST", f"{RES}/", admin, {"uri": uri, "name": "Tools"}), 201)
    path = f"{RES}/{enc(uri)}/validate-token"
    answer = call(api.api_port, "POST", path, admin, {"token": "a.b.c"})
    assert_error(answer, 503, "oauth_disabled")
    assert "OAUTH_ISSUER" in answer.error["message"]
    missing = f"{RES}/{enc('https://mcp.example.com/none')}/validate-token"
    assert_error(
        call(api.api_port, "POST", missing, admin, {"token": "a.b.c"}), 404, "resource_not_found"
    )


# ---------------------------------------------------------------------------- auto-register


def test_auto_register_creates_a_record_per_protected_proxy(
    api: EdgeProcess, admin: str, rdb: redis.Redis
) -> None:
    target = "http://127.0.0.1:9"
    proxies: dict[str, dict[str, Any]] = {
        "a.localhost": {
            "auth_enabled": True,
            "resource_endpoint": "/mcp",
            "resource_scopes": ["mcp:read", "mcp:write"],
        },
        "b.localhost": {"auth_enabled": True, "resource_scopes": ["tools"]},
        "c.localhost": {
            "auth_enabled": True,
            "resource_endpoint": "https://api.example.com/c",
            "auth_allowed_scopes": ["c:read"],
        },
        "d.localhost": {"auth_enabled": True},  # no resource_* fields
        "e.localhost": {"resource_endpoint": "/mcp"},  # auth not enabled
        "*.wild.localhost": {"auth_enabled": True, "resource_endpoint": "/mcp"},
        "f.localhost": {"auth_enabled": True, "resource_endpoint": "/f"},  # has a record
        # the same resource as c.localhost's
        "g.localhost": {"auth_enabled": True, "resource_endpoint": "https://api.example.com/c"},
        # a URI a resource record refuses (http:// for a host that is not loopback)
        "h.localhost": {"auth_enabled": True, "resource_endpoint": "http://api.example.com/h"},
    }
    for host, fields in proxies.items():
        rdb.set(f"proxy:{host}", proxy_doc(host, target, **fields))
    rdb.set("proxy:bad.localhost", '{"hostname": "bad.localhost"}')  # no target_url
    mine = {"uri": "https://f.localhost/f", "name": "Mine", "description": "by hand"}
    kept = ok(call(api.api_port, "POST", f"{RES}/", admin, mine), 201)
    ops = new_token(api.api_port, admin, "ops")
    assert_error(call(api.api_port, "POST", f"{RES}/auto-register", ops), 403, "forbidden")
    assert rdb.keys("resource:https://a*") == []

    doc = ok(call(api.api_port, "POST", f"{RES}/auto-register", admin))
    created = ["https://a.localhost/mcp", "https://api.example.com/c", "https://b.localhost"]
    assert sorted(doc["created"]) == created
    assert doc["existing"] == ["https://f.localhost/f"]
    skipped = {s["hostname"]: s["reason"] for s in doc["skipped"]}
    assert set(skipped) == {
        "d.localhost",
        "e.localhost",
        "*.wild.localhost",
        "g.localhost",
        "h.localhost",
        "bad.localhost",
    }
    assert all(isinstance(r, str) and r for r in skipped.values())
    assert "auth_enabled" in skipped["e.localhost"]
    assert "resource_endpoint" in skipped["d.localhost"]
    assert "wildcard" in skipped["*.wild.localhost"]
    assert "c.localhost" in skipped["g.localhost"]
    assert "https://" in skipped["h.localhost"]
    assert "target_url" in skipped["bad.localhost"]

    def record(uri: str) -> dict[str, Any]:
        answer: dict[str, Any] = ok(call(api.api_port, "GET", f"{RES}/{enc(uri)}", admin))
        return answer

    a = record("https://a.localhost/mcp")
    assert a["name"] == "a.localhost" and a["scopes"] == ["mcp:read", "mcp:write"]
    assert "a.localhost" in a["description"] and a["created_by"] == "admin"
    assert record("https://b.localhost")["scopes"] == ["tools"]
    c = record("https://api.example.com/c")
    assert c["name"] == "c.localhost" and c["scopes"] == ["c:read"]
    assert record("https://f.localhost/f") == kept  # left unchanged
    listed = ok(call(api.api_port, "GET", f"{RES}/", admin))["resources"]
    assert len(listed) == 4

    before = {k: rdb.get(k) for k in rdb.scan_iter("resource:*")}
    again = ok(call(api.api_port, "POST", f"{RES}/auto-register", admin))
    assert again["created"] == []
    assert sorted(again["existing"]) == sorted([*created, "https://f.localhost/f"])
    assert {s["hostname"] for s in again["skipped"]} == set(skipped)
    assert {k: rdb.get(k) for k in rdb.scan_iter("resource:*")} == before


# ---------------------------------------------------------------------------- the commands


def cli(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=env["HOME"],
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env["PYTHONPATH"] = str(ROOT)
    env["HOME"] = str(home / "home")
    env["XDG_CONFIG_HOME"] = str(home / "xdg")
    (home / "home").mkdir(exist_ok=True)
    env.update(extra)
    return env


def test_the_commands(site: Site, tmp_path: Path) -> None:
    env = cli_env(tmp_path, API_URL=f"http://127.0.0.1:{site.api_port}", TOKEN=site.admin)
    token = site.token()
    done = cli(
        env, "resource", "validate-token", site.resource, "--access-token", token, "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["valid"] is True and doc["claims"]["login"] == "alice"
    assert token not in done.stdout + done.stderr
    # from stdin, and a token that is not valid: its reason, and exit status 1
    done = cli(env, "resource", "validate-token", site.resource, "-o", "json", stdin=token + "\n")
    assert done.returncode == 0 and json.loads(done.stdout)["valid"] is True, done.stderr
    expired = site.signed(exp=int(time.time()) - 3600)
    done = cli(env, "resource", "validate-token", site.resource, "-o", "json", stdin=expired)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert json.loads(done.stdout) == {
        "valid": False,
        "error": "expired",
        "error_description": json.loads(done.stdout)["error_description"],
        "resource": site.resource,
    }
    assert done.stderr.startswith("edge: ") and "expired" in done.stderr
    done = cli(env, "resource", "validate-token", site.resource, stdin="")
    assert done.returncode == 2 and done.stderr.startswith("edge: "), done.stderr
    done = cli(env, "resource", "validate-token", f"{site.resource}/none", "--access-token", token)
    assert done.returncode == 1 and "no resource with this uri" in done.stderr

    # auto-register: the site's proxy is mcp.localhost, with /mcp
    rdb_uri = f"https://{HOST}/mcp"
    done = cli(env, "resource", "auto-register", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["created"] == [rdb_uri]
    done = cli(env, "resource", "auto-register")
    assert done.returncode == 0, done.stderr
    assert "created nothing" in done.stdout or "0 created" in done.stdout, done.stdout
    assert rdb_uri in done.stdout
