"""The JWT negative matrix at a protected proxy, with tokens signed by the edge's own key
(given through ``OAUTH_JWT_PRIVATE_KEY_B64``, so the test can sign what the server never
would) and by a second, foreign key: each claim missing or wrong is refused with a 401
``invalid_token``, and the same token with the claim right passes (the control that shows
each refusal is for that claim alone). A real edge, Redis and upstream."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.oauth.signing import thumbprint
from tests.helpers import EdgeProcess, Upstream, proxy_doc, wait_for
from tests.oauth_helpers import OAuthStack, Page, oauth_stack, request

EdgeFactory = Callable[..., EdgeProcess]
HOST = "api.localhost"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FOREIGN = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Signer:
    def __init__(self, stack: OAuthStack) -> None:
        self.stack = stack
        self.port = stack.edge.http_port
        self.resource = f"https://{HOST}:{self.port}"

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.stack.issuer,
            "sub": "github:1000",
            "login": "alice",
            "aud": [self.resource],
            "client_id": "edge_test",
            "scope": "mcp:read",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "at_" + secrets.token_urlsafe(16),
        }
        base.update(changes)
        return {k: v for k, v in base.items() if v is not None}

    def token(
        self,
        key: rsa.RSAPrivateKey = KEY,
        *,
        alg: str = "RS256",
        typ: str = "at+jwt",
        kid: str | None = None,
        **changes: Any,
    ) -> str:
        headers = {"typ": typ, "kid": kid or thumbprint(KEY.public_key())}
        return jwt.encode(self.claims(**changes), key, algorithm=alg, headers=headers)

    def get(self, token: str) -> Page:
        return request(
            "GET",
            f"http://{HOST}:{self.port}/data",
            headers={"Authorization": f"Bearer {token}"},
        )


@pytest.fixture
def signer(edge_factory: EdgeFactory, rdb: redis.Redis) -> Iterator[Signer]:
    upstream = Upstream()
    env_key = base64.b64encode(_pem(KEY)).decode()
    try:
        with oauth_stack(edge_factory, OAUTH_JWT_PRIVATE_KEY_B64=env_key) as stack:
            rdb.set(f"proxy:{HOST}", proxy_doc(HOST, upstream.url, auth_enabled=True))
            s = Signer(stack)
            wait_for(lambda: s.get("x").status == 401)
            yield s
    finally:
        upstream.close()


def refused(page: Page) -> bool:
    return page.status == 401 and 'error="invalid_token"' in (page.header("www-authenticate") or "")


def test_a_token_signed_right_passes(signer: Signer) -> None:
    page = signer.get(signer.token())
    assert page.status == 200, page.text
    assert dict((k.lower(), v) for k, v in page.json()["headers"])["x-auth-user-name"] == "alice"


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": None},
        {"iss": None},
        {"sub": None},
        {"jti": None},
        {"client_id": None},
        {"iat": None},
        {"nbf": None},
        {"aud": None},
    ],
    ids=lambda c: "missing-" + next(iter(c)),
)
def test_a_missing_claim_is_refused(signer: Signer, changes: dict[str, Any]) -> None:
    assert refused(signer.get(signer.token(**changes)))


def test_wrong_claims_and_times_are_refused(signer: Signer) -> None:
    now = int(time.time())
    for changes in (
        {"iss": signer.stack.issuer + "/other"},
        {"iss": "https://evil.example"},
        {"aud": ["https://other.localhost"]},
        {"aud": signer.resource + "/more"},
        {"exp": now - 120},  # expired beyond the 30 s leeway
        {"nbf": now + 300},  # not valid yet
        {"exp": "tomorrow"},
    ):
        assert refused(signer.get(signer.token(**changes))), changes
    # within the leeway both ways: accepted (clock skew between nodes)
    assert signer.get(signer.token(exp=now - 5)).status == 200
    assert signer.get(signer.token(nbf=now + 5)).status == 200


def test_header_pitfalls_and_foreign_keys_are_refused(signer: Signer) -> None:
    assert refused(signer.get(signer.token(alg="RS512")))
    assert refused(signer.get(signer.token(alg="PS256")))
    assert refused(signer.get(signer.token(typ="JWT")))
    # a foreign key, under our kid and under its own
    assert refused(signer.get(signer.token(FOREIGN)))
    assert refused(signer.get(signer.token(FOREIGN, kid=thumbprint(FOREIGN.public_key()))))
    # HS256 keyed with our public key's PEM (RS/HS confusion)
    public_pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    kid = thumbprint(KEY.public_key())
    header = _b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
    payload = _b64(json.dumps(signer.claims()).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert refused(signer.get(f"{header}.{payload}.{_b64(mac)}"))
    # alg none
    none = _b64(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid}).encode())
    assert refused(signer.get(f"{none}.{payload}."))
    # the control: the same claims, signed right
    assert signer.get(signer.token()).status == 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
