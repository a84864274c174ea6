"""Access-token verification against the pitfalls of RFC 8725 and the profile of RFC 9068.

The keys come from ``OAUTH_JWT_PRIVATE_KEY_B64`` (the environment's key), so nothing here
touches Redis: verification reads memory only. Each forged token is otherwise valid, so the
one check it breaks is the one that refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.oauth.errors import InvalidToken
from edge.oauth.signing import (
    LEEWAY,
    MAX_TOKEN_LENGTH,
    REQUIRED_CLAIMS,
    KeyRotationRefused,
    SigningKeys,
    thumbprint,
)

ISSUER = "https://auth.example.test"
AUDIENCE = "https://mcp.example.test/"


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64_pem(key: rsa.RSAPrivateKey) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return base64.b64encode(pem).decode()


@pytest.fixture
async def signing(private_key: rsa.RSAPrivateKey) -> SigningKeys:
    # a client that is never connected: the environment's key needs no Redis
    keys = SigningKeys(
        aioredis.Redis(port=1),
        issuer=ISSUER,
        env_key_b64=b64_pem(private_key),
        access_token_lifetime=1800,
    )
    await keys.load()
    return keys


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "github:1",
        "aud": AUDIENCE,
        "azp": "client-1",
        "client_id": "client-1",
        "scope": "mcp:read",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "jti-1",
        "login": "octocat",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A JWS built by hand: PyJWT itself refuses to make some of these."""
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return head + "." + b64url(sign(head.encode()))


def signed(key: rsa.RSAPrivateKey, kid: str, payload: dict[str, Any], **header: Any) -> str:
    """``payload`` signed RS256 by ``key`` with the header ``{kid, typ: at+jwt, **header}``."""
    headers: dict[str, Any] = {"kid": kid, "typ": "at+jwt", **header}
    return jwt.encode(payload, key, algorithm="RS256", headers=headers)


def refused(keys: SigningKeys, token: str, *, audience: str | None = None) -> InvalidToken:
    with pytest.raises(InvalidToken) as caught:
        keys.verify(token, audience=audience)
    error = caught.value
    assert error.public_message == InvalidToken.public_message
    assert error.status == 401 and error.code == "invalid_token"
    if token:
        assert token not in str(error)  # the detail says why, never what
    return error


def test_a_token_it_signed_verifies(signing: SigningKeys) -> None:
    token = signing.sign(claims())
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": signing.active_kid}
    assert signing.verify(token, audience=AUDIENCE)["sub"] == "github:1"
    assert signing.verify(token)["jti"] == "jti-1"  # no audience asked: any is fine
    # aud may be a list (several resources, RFC 8707)
    several = signing.sign(claims(aud=["https://other.test/", AUDIENCE]))
    assert signing.verify(several, audience=AUDIENCE)["client_id"] == "client-1"


def test_the_media_type_form_of_typ_is_accepted(
    signing: SigningKeys, private_key: rsa.RSAPrivateKey
) -> None:
    kid = str(signing.active_kid)
    for typ in ("application/at+jwt", "AT+JWT"):
        assert signing.verify(signed(private_key, kid, claims(), typ=typ))["sub"] == "github:1"


def test_alg_none_is_refused(signing: SigningKeys) -> None:
    token = forge(
        {"alg": "none", "typ": "at+jwt", "kid": signing.active_kid}, claims(), lambda _: b""
    )
    assert "alg" in str(refused(signing, token))
    token = forge({"alg": "none", "typ": "at+jwt", "kid": signing.active_kid}, claims(),
                  lambda _: b"x")  # fmt: skip
    refused(signing, token)


def test_hs256_keyed_with_the_public_key_is_refused(
    signing: SigningKeys, private_key: rsa.RSAPrivateKey
) -> None:
    """RS/HS confusion: a verifier that takes alg from the token would check this HMAC with
    the public key it holds, which everyone has (the JWKS)."""
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, public_pem.strip()):

        def mac(data: bytes, secret: bytes = secret) -> bytes:
            return hmac.new(secret, data, hashlib.sha256).digest()

        token = forge({"alg": "HS256", "typ": "at+jwt", "kid": signing.active_kid}, claims(), mac)
        refused(signing, token)


def test_other_algorithms_with_the_right_key_are_refused(
    signing: SigningKeys, private_key: rsa.RSAPrivateKey
) -> None:
    kid = str(signing.active_kid)
    for alg in ("RS512", "PS256"):
        token = jwt.encode(claims(), private_key, algorithm=alg,
                           headers={"kid": kid, "typ": "at+jwt"})  # fmt: skip
        refused(signing, token)


def test_an_unknown_or_missing_kid_is_refused(
    signing: SigningKeys, private_key: rsa.RSAPrivateKey
) -> None:
    assert "kid" in str(refused(signing, signed(private_key, "someone-else", claims())))
    no_kid = jwt.encode(claims(), private_key, algorithm="RS256", headers={"typ": "at+jwt"})
    refused(signing, no_kid)
    numeric = forge({"alg": "RS256", "typ": "at+jwt", "kid": 7}, claims(),
                    lambda data: private_key.sign(data, *_pkcs1()))  # fmt: skip
    refused(signing, numeric)


def test_a_key_the_header_points_at_is_refused(
    signing: SigningKeys, private_key: rsa.RSAPrivateKey
) -> None:
    """jku/x5u/jwk/x5c let the sender choose the verification key (RFC 8725 3.10)."""
    kid = str(signing.active_kid)
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    headers: dict[str, Any] = {
        "jku": "https://attacker.test/jwks.json",
        "x5u": "https://attacker.test/cert.pem",
        "jwk": attacker_jwk,
        "x5c": ["MIIB"],
        "crit": ["exp"],
    }
    for name, value in headers.items():
        # signed by our own key, so the header is the only thing wrong
        error = refused(signing, signed(private_key, kid, claims(), **{name: value}))
        assert name in str(error)
        refused(signing, signed(attacker, kid, claims(), **{name: value}))


def test_a_signature_by_another_key_under_our_kid_is_refused(signing: SigningKeys) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    refused(signing, signed(other, str(signing.active_kid), claims()))


def test_the_issuer_must_match_exactly(signing: SigningKeys) -> None:
    for iss in ("https://evil.test", ISSUER + "/", ISSUER.upper()):
        refused(signing, signing.sign(claims(iss=iss)))


def test_the_audience_must_match_when_asked(signing: SigningKeys) -> None:
    refused(signing, signing.sign(claims(aud="https://other.test/")), audience=AUDIENCE)
    refused(signing, signing.sign(claims(aud=["https://other.test/"])), audience=AUDIENCE)
    refused(signing, signing.sign(claims(aud=None)), audience=AUDIENCE)


def test_expiry_with_thirty_seconds_of_leeway(signing: SigningKeys) -> None:
    now = int(time.time())
    assert signing.verify(signing.sign(claims(exp=now - LEEWAY + 5)))
    assert "Expired" in str(refused(signing, signing.sign(claims(exp=now - LEEWAY - 5))))
    refused(signing, signing.sign(claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600)))


def test_not_before_in_the_future_is_refused(signing: SigningKeys) -> None:
    now = int(time.time())
    assert signing.verify(signing.sign(claims(nbf=now + LEEWAY - 5)))
    refused(signing, signing.sign(claims(nbf=now + LEEWAY + 5)))
    refused(signing, signing.sign(claims(iat=now + 3600, nbf=now)))  # issued in the future


def test_typ_must_be_at_jwt(signing: SigningKeys, private_key: rsa.RSAPrivateKey) -> None:
    """RFC 9068 section 4: an ID token or any other JWT signed by the same key is not an
    access token."""
    kid = str(signing.active_kid)
    for typ in ("JWT", "jwt", "", "at+jwt ", "application/jwt"):
        assert "typ" in str(refused(signing, signed(private_key, kid, claims(), typ=typ)))
    no_typ = jwt.encode(claims(), private_key, algorithm="RS256", headers={"kid": kid})
    if "typ" in jwt.get_unverified_header(no_typ):  # PyJWT adds typ JWT on its own
        assert jwt.get_unverified_header(no_typ)["typ"] == "JWT"
    refused(signing, no_typ)
    untyped = forge({"alg": "RS256", "kid": kid}, claims(),
                    lambda data: private_key.sign(data, *_pkcs1()))  # fmt: skip
    refused(signing, untyped)


def _pkcs1() -> tuple[Any, Any]:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.PKCS1v15(), hashes.SHA256()


@pytest.mark.parametrize("claim", REQUIRED_CLAIMS)
def test_each_required_claim_must_be_present(signing: SigningKeys, claim: str) -> None:
    assert "client_id" in REQUIRED_CLAIMS and "jti" in REQUIRED_CLAIMS
    refused(signing, signing.sign({k: v for k, v in claims().items() if k != claim}))


def test_claims_of_the_wrong_type_are_refused(signing: SigningKeys) -> None:
    refused(signing, signing.sign(claims(exp="tomorrow")))
    refused(signing, signing.sign(claims(iat="now")))


def test_a_token_over_8_kib_is_refused_before_parsing(signing: SigningKeys) -> None:
    # a token just under the cap is accepted: the cap is on length, not content
    base = len(signing.sign(claims(pad="")))
    fits = signing.sign(claims(pad="a" * ((MAX_TOKEN_LENGTH - base) * 3 // 4 - 4)))
    assert MAX_TOKEN_LENGTH - 16 < len(fits) <= MAX_TOKEN_LENGTH
    assert signing.verify(fits)["sub"] == "github:1"
    big = signing.sign(claims(pad="a" * MAX_TOKEN_LENGTH))
    assert "longer" in str(refused(signing, big))
    # refused unparsed: garbage of that size says so, not "malformed"
    assert "longer" in str(refused(signing, "x" * (MAX_TOKEN_LENGTH + 1)))
    assert "longer" not in str(refused(signing, "x" * MAX_TOKEN_LENGTH))


def test_a_tampered_token_is_refused(signing: SigningKeys) -> None:
    token = signing.sign(claims())
    head, payload, signature = token.split(".")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    refused(signing, f"{head}.{payload}.{flipped}")
    other = b64url(json.dumps(claims(sub="github:2")).encode())
    refused(signing, f"{head}.{other}.{signature}")
    refused(signing, f"{head}.{payload}.")
    for garbage in ("", "a.b", "a.b.c", "...", token + ".x"):
        refused(signing, garbage)


def test_rfc7638_thumbprint() -> None:
    """The example of RFC 7638 section 3.1."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_"
        "BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_"
        "FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    numbers = rsa.RSAPublicNumbers(
        e=65537, n=int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4)), "big")
    )
    assert thumbprint(numbers.public_key()) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_the_environment_key_is_published_under_its_thumbprint(
    signing: SigningKeys, private_key: rsa.RSAPrivateKey
) -> None:
    assert signing.active_kid == thumbprint(private_key.public_key())
    (published,) = signing.jwks()["keys"]
    assert published["kid"] == signing.active_kid
    assert (published["kty"], published["use"], published["alg"]) == ("RSA", "sig", "RS256")
    assert set(published) == {"kty", "n", "e", "kid", "use", "alg"}  # nothing private
    assert jwt.PyJWK(published).key.public_numbers() == private_key.public_key().public_numbers()
    health = signing.health()
    assert health["source"] == "env" and health["published"] == 1


async def test_rotate_is_refused_for_the_environment_key(signing: SigningKeys) -> None:
    with pytest.raises(KeyRotationRefused) as caught:
        await signing.rotate()
    assert caught.value.status == 409
    assert "OAUTH_JWT_PRIVATE_KEY_B64" in caught.value.public_message


async def test_a_weak_or_unusable_environment_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    for value in (
        b64_pem(small),
        base64.b64encode(b"-----BEGIN PRIVATE KEY-----\nAAAA\n").decode(),
    ):
        keys = SigningKeys(aioredis.Redis(port=1), issuer=ISSUER, env_key_b64=value,
                           access_token_lifetime=1800)  # fmt: skip
        with pytest.raises(ValueError):
            await keys.load()


# ---------------------------------------------------------------------------- the verified memory


def test_a_remembered_token_still_expires_on_time(private_key: rsa.RSAPrivateKey) -> None:
    import asyncio

    now = [time.time()]
    keys = SigningKeys(
        aioredis.Redis(port=1),
        issuer=ISSUER,
        env_key_b64=b64_pem(private_key),
        access_token_lifetime=1800,
        clock=lambda: now[0],
    )
    asyncio.run(keys.load())
    token = keys.sign(claims(exp=int(now[0]) + 60))
    assert keys.verify(token)["jti"] == "jti-1"  # verified, then remembered
    assert keys.verify(token)["jti"] == "jti-1"  # from memory
    now[0] += 60 + LEEWAY - 1
    assert keys.verify(token)["jti"] == "jti-1"  # within the leeway
    now[0] += 2
    with pytest.raises(InvalidToken, match="expired"):
        keys.verify(token)


def test_a_remembered_token_is_checked_for_its_audience(signing: SigningKeys) -> None:
    token = signing.sign(claims(aud=[AUDIENCE, "https://other.example.test/"]))
    assert signing.verify(token, audience=AUDIENCE)["jti"] == "jti-1"
    assert signing.verify(token, audience="https://other.example.test/")["jti"] == "jti-1"
    with pytest.raises(InvalidToken, match="audience"):
        signing.verify(token, audience="https://third.example.test/")
    single = signing.sign(claims(jti="single"))
    signing.verify(single)  # remembered without an audience asked
    with pytest.raises(InvalidToken, match="audience"):
        signing.verify(single, audience="https://third.example.test/")


def test_the_returned_claims_are_a_copy(signing: SigningKeys) -> None:
    token = signing.sign(claims())
    first = signing.verify(token)
    first["scope"] = "mcp:admin"
    assert signing.verify(token)["scope"] == "mcp:read"


def test_a_remembered_token_is_forgotten_when_the_keys_change(
    signing: SigningKeys, private_key: rsa.RSAPrivateKey
) -> None:
    token = signing.sign(claims())
    signing.verify(token)
    # the key set replaced by one without the key (as a refresh installs it): refused
    from edge.oauth import signing as module

    signing._set = module._KeySet({}, None, {})
    with pytest.raises(InvalidToken, match="kid"):
        signing.verify(token)
