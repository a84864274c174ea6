"""Client registration (RFC 7591), its management (RFC 7592), client authentication and
the admin's helpers, against a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from edge.oauth.client_metadata import MAX_CONTACTS, MAX_REDIRECT_URIS, MAX_TEXT_LENGTH
from edge.oauth.clients import MAX_CLIENT_ID_LENGTH, ClientRegistry, authenticate
from edge.oauth.errors import (
    InvalidClient,
    InvalidClientMetadata,
    InvalidRedirectUri,
    InvalidToken,
    OAuthError,
)
from edge.oauth.records import ClientRecord, digest, encode
from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client
from tests.helpers import RedisServer

SCOPES = ("mcp:read", "mcp:write", "mcp:admin")
LIFETIME = 3600
CB = "https://app.example.com/callback"


@pytest.fixture
async def redis(redis_db: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(RedisTarget(redis_db.url))
    yield client
    await client.aclose()


@pytest.fixture
def registry(redis: aioredis.Redis) -> ClientRegistry:
    return ClientRegistry(redis, scopes_supported=SCOPES, client_lifetime=LIFETIME, cimd=None)


def public(**extra: Any) -> dict[str, Any]:
    return {"redirect_uris": [CB], "token_endpoint_auth_method": "none", **extra}


async def test_register_public_client(registry: ClientRegistry, redis: aioredis.Redis) -> None:
    before = int(time.time())
    answer = await registry.register(
        public(
            client_name="Claude",
            grant_types=["authorization_code", "refresh_token"],
            scope="mcp:read mcp:write mcp:read",
            client_uri="https://app.example.com",
            logo_uri="https://app.example.com/logo.png",
            contacts=["ops@example.com"],
            software_id="x-1",
            software_version="1.2",
            jwks_uri="https://ignored.example/jwks",  # not understood: ignored (RFC 7591)
            **{"client_name#fr": "ignored too"},
        )
    )
    client_id = answer["client_id"]
    assert client_id.startswith("edge_") and len(client_id) == 27
    assert "client_secret" not in answer and "client_secret_expires_at" not in answer
    token = answer["registration_access_token"]
    assert len(token) >= 40
    assert answer["registration_client_uri"] == f"/register/{client_id}"
    assert before <= answer["client_id_issued_at"] <= int(time.time())
    assert answer["redirect_uris"] == [CB]
    assert answer["grant_types"] == ["authorization_code", "refresh_token"]
    assert answer["response_types"] == ["code"]
    assert answer["token_endpoint_auth_method"] == "none"
    assert answer["scope"] == "mcp:read mcp:write"
    assert answer["client_name"] == "Claude"
    assert answer["contacts"] == ["ops@example.com"]
    assert "jwks_uri" not in answer and "client_name#fr" not in answer

    key = keys.oauth_client(client_id)
    raw = await redis.get(key)
    assert raw is not None and token.encode() not in raw
    assert digest(token).encode() in raw
    assert LIFETIME - 5 <= await redis.ttl(key) <= LIFETIME

    record = await registry.get(client_id)
    assert record is not None
    assert record.source == "dcr" and not record.confidential
    assert record.expires_at == answer["client_id_issued_at"] + LIFETIME
    assert record.scope == "mcp:read mcp:write"
    authenticate(record, basic=None, post_secret=None)


async def test_defaults_are_rfc_7591s(registry: ClientRegistry) -> None:
    """Omitted: client_secret_basic, grant_types authorization_code only, response code."""
    answer = await registry.register({"redirect_uris": ["http://127.0.0.1/cb"]})
    assert answer["token_endpoint_auth_method"] == "client_secret_basic"
    assert answer["grant_types"] == ["authorization_code"]
    assert answer["response_types"] == ["code"]
    assert "scope" not in answer
    secret = answer["client_secret"]
    # the secret ends with the registration
    assert answer["client_secret_expires_at"] == answer["client_id_issued_at"] + LIFETIME
    record = await registry.get(answer["client_id"])
    assert record is not None and record.confidential
    assert record.client_secret_hash == digest(secret)


async def test_never_expiring_clients(redis: aioredis.Redis) -> None:
    registry = ClientRegistry(redis, scopes_supported=SCOPES, client_lifetime=0, cimd=None)
    answer = await registry.register({"redirect_uris": [CB]})
    assert answer["client_secret_expires_at"] == 0
    assert await redis.ttl(keys.oauth_client(answer["client_id"])) == -1
    record = await registry.get(answer["client_id"])
    assert record is not None and record.expires_at is None


async def test_expired_client_is_absent(redis: aioredis.Redis, registry: ClientRegistry) -> None:
    answer = await registry.register(public())
    later = ClientRegistry(
        redis,
        scopes_supported=SCOPES,
        client_lifetime=LIFETIME,
        cimd=None,
        clock=lambda: time.time() + LIFETIME + 1,
    )
    assert await registry.get(answer["client_id"]) is not None
    assert await later.get(answer["client_id"]) is None


async def test_key_ttl_ends_the_registration(redis: aioredis.Redis) -> None:
    registry = ClientRegistry(redis, scopes_supported=SCOPES, client_lifetime=1, cimd=None)
    answer = await registry.register(public())
    assert await registry.get(answer["client_id"]) is not None
    deadline = time.monotonic() + 5
    while await redis.exists(keys.oauth_client(answer["client_id"])):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert await registry.get(answer["client_id"]) is None


@pytest.mark.parametrize(
    ("metadata", "error", "says"),
    [
        ({}, InvalidClientMetadata, "redirect_uris"),
        ({"redirect_uris": []}, InvalidClientMetadata, "redirect_uris"),
        ({"redirect_uris": CB}, InvalidClientMetadata, "redirect_uris"),
        ({"redirect_uris": [CB] * (MAX_REDIRECT_URIS + 1)}, InvalidClientMetadata, "at most"),
        ({"redirect_uris": ["http://app.example.com/cb"]}, InvalidRedirectUri, "loopback"),
        ({"redirect_uris": ["com.example:/cb"]}, InvalidRedirectUri, "private-use"),
        ({"redirect_uris": [CB + "#x"]}, InvalidRedirectUri, "fragment"),
        ({"redirect_uris": [5]}, InvalidRedirectUri, "string"),
        (public(grant_types=["implicit"]), InvalidClientMetadata, "grant_types"),
        (public(grant_types=["client_credentials"]), InvalidClientMetadata, "grant_types"),
        (public(grant_types=["authorization_code", "password"]), InvalidClientMetadata, "grant"),
        (public(grant_types=["refresh_token"]), InvalidClientMetadata, "authorization_code"),
        (public(grant_types="authorization_code"), InvalidClientMetadata, "array"),
        (public(grant_types=["authorization_code"] * 11), InvalidClientMetadata, "at most"),
        (public(response_types=["token"]), InvalidClientMetadata, "response_types"),
        (public(response_types=["code", "token"]), InvalidClientMetadata, "response_types"),
        (public(token_endpoint_auth_method="private_key_jwt"), InvalidClientMetadata, "one of"),
        (public(token_endpoint_auth_method=None), InvalidClientMetadata, "auth_method"),
        (public(scope="mcp:read openid"), InvalidClientMetadata, "'openid'"),
        (public(scope=["mcp:read"]), InvalidClientMetadata, "scope"),
        (public(client_name=5), InvalidClientMetadata, "client_name"),
        (public(client_name="x" * (MAX_TEXT_LENGTH + 1)), InvalidClientMetadata, "at most"),
        (public(client_name="a\nb"), InvalidClientMetadata, "control"),
        (public(software_id="x" * (MAX_TEXT_LENGTH + 1)), InvalidClientMetadata, "software_id"),
        (
            public(contacts=[f"{i}@x" for i in range(MAX_CONTACTS + 1)]),
            InvalidClientMetadata,
            "contacts",
        ),
        (public(contacts=[3]), InvalidClientMetadata, "contacts"),
        (public(logo_uri="http://app.example.com/l.png"), InvalidClientMetadata, "logo_uri"),
        (public(client_uri="javascript:alert(1)"), InvalidClientMetadata, "client_uri"),
        (public(client_uri="https://u:p@app.example.com"), InvalidClientMetadata, "client_uri"),
    ],
)
async def test_metadata_refused(
    registry: ClientRegistry,
    redis: aioredis.Redis,
    metadata: dict[str, Any],
    error: type[OAuthError],
    says: str,
) -> None:
    with pytest.raises(error) as caught:
        await registry.register(metadata)
    assert says in caught.value.public_message
    assert caught.value.status == 400
    assert await redis.dbsize() == 0


async def test_not_an_object_refused(registry: ClientRegistry) -> None:
    bodies: list[Any] = [[], "x", None, 3]
    for body in bodies:
        with pytest.raises(InvalidClientMetadata):
            await registry.register(body)


async def test_read_update_delete(registry: ClientRegistry, redis: aioredis.Redis) -> None:
    answer = await registry.register(public(client_name="one", scope="mcp:read"))
    client_id, token = answer["client_id"], answer["registration_access_token"]
    key = keys.oauth_client(client_id)

    read = await registry.read(client_id, token)
    assert read["client_id"] == client_id and read["client_name"] == "one"
    assert "registration_access_token" not in read and "client_secret" not in read
    assert read["registration_client_uri"] == f"/register/{client_id}"

    await redis.expire(key, 1000)
    updated = await registry.update(
        client_id, token, {"client_id": client_id, "redirect_uris": [CB, "http://[::1]/cb"]}
    )
    assert updated["redirect_uris"] == [CB, "http://[::1]/cb"]
    # replaced, not merged: what the update leaves out is gone
    assert "client_name" not in updated and "scope" not in updated
    assert updated["client_id_issued_at"] == answer["client_id_issued_at"]
    assert updated["token_endpoint_auth_method"] == "client_secret_basic"
    secret = updated["client_secret"]  # newly confidential: a secret, this once
    assert 990 <= await redis.ttl(key) <= 1000  # the lifetime runs on
    record = await registry.get(client_id)
    assert record is not None and record.client_secret_hash == digest(secret)
    assert record.expires_at == answer["client_id_issued_at"] + LIFETIME

    # a confidential client keeps its secret; it may name it, rightly only
    again = await registry.update(
        client_id,
        token,
        {"client_id": client_id, "client_secret": secret, "redirect_uris": [CB]},
    )
    assert "client_secret" not in again
    record = await registry.get(client_id)
    assert record is not None and record.client_secret_hash == digest(secret)
    with pytest.raises(InvalidClientMetadata, match="client_secret"):
        await registry.update(
            client_id, token, {"client_id": client_id, "client_secret": "no", "redirect_uris": [CB]}
        )
    for body in ({"redirect_uris": [CB]}, {"client_id": "edge_other", "redirect_uris": [CB]}):
        with pytest.raises(InvalidClientMetadata) as caught:
            await registry.update(client_id, token, body)
        assert caught.value.field == "client_id"
    with pytest.raises(InvalidRedirectUri):
        await registry.update(
            client_id, token, {"client_id": client_id, "redirect_uris": ["http://x.example/"]}
        )
    # back to public: the secret is dropped
    await registry.update(client_id, token, {"client_id": client_id, **public()})
    record = await registry.get(client_id)
    assert record is not None and record.client_secret_hash is None

    await registry.delete(client_id, token)
    assert await redis.exists(key) == 0
    assert await registry.get(client_id) is None
    with pytest.raises(InvalidToken):
        await registry.read(client_id, token)


async def test_registration_token_checked(registry: ClientRegistry) -> None:
    answer = await registry.register(public())
    client_id, token = answer["client_id"], answer["registration_access_token"]
    other = await registry.register(public())
    refused = [
        (client_id, ""),
        (client_id, token + "x"),
        (client_id, other["registration_access_token"]),
        ("edge_unknown", token),  # RFC 7592 section 2.1: unknown is 401 too
        ("https://app.example.com/client.json", token),
        ("", token),
        ("x" * (MAX_CLIENT_ID_LENGTH + 1), token),
    ]
    for cid, tok in refused:
        for call in (
            registry.read(cid, tok),
            registry.update(cid, tok, {"client_id": cid, "redirect_uris": [CB]}),
            registry.delete(cid, tok),
        ):
            with pytest.raises(InvalidToken) as caught:
                await call
            assert caught.value.status == 401
    assert await registry.get(client_id) is not None
    assert (await registry.read(client_id, token))["client_id"] == client_id


async def test_damaged_document_is_absent(
    registry: ClientRegistry, redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    good = await registry.register(public())
    await redis.set(keys.oauth_client("edge_damaged"), b'{"client_id": "edge_damaged"}')
    await redis.set(keys.oauth_client("edge_garbage"), b"\xff not json")
    with caplog.at_level(logging.WARNING, logger="edge.oauth.clients"):
        assert await registry.get("edge_damaged") is None
        assert await registry.get("edge_garbage") is None
        listed = await registry.list_clients()
    assert [c.client_id for c in listed] == [good["client_id"]]
    assert "oauth:client:edge_damaged" in caplog.text
    assert "oauth:client:edge_garbage" in caplog.text


async def test_get_refuses_odd_ids(registry: ClientRegistry, redis: aioredis.Redis) -> None:
    long_id = "x" * (MAX_CLIENT_ID_LENGTH + 1)
    record = ClientRecord(client_id=long_id, redirect_uris=(CB,))
    await redis.set(keys.oauth_client(long_id), encode(record))
    assert await registry.get(long_id) is None
    assert await registry.get("") is None
    # an https client_id is a metadata document, never a stored key
    await redis.set(keys.oauth_client("https://a.example/c"), encode(record))
    assert await registry.get("https://a.example/c") is None


async def test_admin_list_and_delete(registry: ClientRegistry) -> None:
    ids = sorted([(await registry.register(public()))["client_id"] for _ in range(3)])
    assert [c.client_id for c in await registry.list_clients()] == ids
    assert await registry.delete_client(ids[0]) is True
    assert await registry.delete_client(ids[0]) is False
    assert [c.client_id for c in await registry.list_clients()] == ids[1:]


def confidential(method: str, secret: str = "s3cret", expires: int = 0) -> ClientRecord:
    return ClientRecord(
        client_id="edge_c",
        redirect_uris=(CB,),
        token_endpoint_auth_method=method,  # type: ignore[arg-type]
        client_secret_hash=digest(secret),
        client_secret_expires_at=expires,
    )


def test_authenticate_public() -> None:
    client = ClientRecord(client_id="edge_p", redirect_uris=(CB,))
    authenticate(client, basic=None, post_secret=None)
    for basic, post, flagged in (
        (("edge_p", "x"), None, True),
        (("edge_p", ""), None, True),
        (None, "x", False),
        (None, "", False),
    ):
        with pytest.raises(InvalidClient) as caught:
            authenticate(client, basic=basic, post_secret=post)
        assert caught.value.basic is flagged
        assert caught.value.status == 401


def test_authenticate_basic() -> None:
    client = confidential("client_secret_basic")
    authenticate(client, basic=("edge_c", "s3cret"), post_secret=None)
    for basic, post, flagged in (
        (None, None, True),
        (None, "s3cret", True),  # another method than the registered one
        (("edge_c", "s3cret"), "s3cret", True),
        (("edge_c", "wrong"), None, True),
        (("edge_other", "s3cret"), None, True),
        (("edge_c", ""), None, True),
    ):
        with pytest.raises(InvalidClient) as caught:
            authenticate(client, basic=basic, post_secret=post)
        assert caught.value.basic is flagged
        assert caught.value.headers()[0][0] == b"www-authenticate"


def test_authenticate_post() -> None:
    client = confidential("client_secret_post")
    authenticate(client, basic=None, post_secret="s3cret")
    for basic, post, flagged in (
        (None, None, False),
        (("edge_c", "s3cret"), None, True),
        (None, "wrong", False),
        (None, "", False),
    ):
        with pytest.raises(InvalidClient) as caught:
            authenticate(client, basic=basic, post_secret=post)
        assert caught.value.basic is flagged


def test_authenticate_expired_secret() -> None:
    authenticate(
        confidential("client_secret_post", expires=int(time.time()) + 60),
        basic=None,
        post_secret="s3cret",
    )
    with pytest.raises(InvalidClient):
        authenticate(
            confidential("client_secret_post", expires=int(time.time()) - 1),
            basic=None,
            post_secret="s3cret",
        )
