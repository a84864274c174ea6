"""The certificate repository against a real redis-server: a record and its
``cert:domain:`` index keys are written, replaced and removed together."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
import trustme

from edge.certs import repository
from edge.certs.repository import CertExists, CertNotFound, InvalidCertName, Prepared
from edge.tls.material import decode_cert
from tests.async_redis import run
from tests.helpers import RedisServer


def prepared(ca: trustme.CA, name: str, *domains: str) -> Prepared:
    leaf = ca.issue_cert(*domains)
    chain = "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
    key = leaf.private_key_pem.bytes().decode()
    return repository.prepare(name, chain, key, list(domains))


def test_store_then_read_back(redis_db: RedisServer, ca: trustme.CA) -> None:
    cert = prepared(ca, "site", "a.example.com", "b.example.com")

    async def body(client: aioredis.Redis) -> None:
        stored = await repository.store(client, cert)
        assert stored.key == "cert:site" and not stored.replaced
        assert stored.domain_keys == ("cert:domain:a.example.com", "cert:domain:b.example.com")
        found = await repository.get(client, "site")
        # what was stored: the checked record with its expiry added
        assert found.problem is None and found.record == decode_cert("cert:site", cert.document)
        assert found.expires_at == cert.info.not_after.isoformat()
        assert found.record.private_key_pem == cert.record.private_key_pem
        assert [item.name for item in await repository.list_certs(client)] == ["site"]
        assert await repository.domain_keys_of(client, "site") == list(stored.domain_keys)

    run(redis_db, body)


def test_index_keys_written_and_removed_together(redis_db: RedisServer, ca: trustme.CA) -> None:
    cert = prepared(ca, "site", "a.example.com", "b.example.com")
    client = redis_db.client()

    async def write(aio: aioredis.Redis) -> None:
        await repository.store(aio, cert)

    run(redis_db, write)
    assert sorted(client.keys("cert:*")) == [
        b"cert:domain:a.example.com",
        b"cert:domain:b.example.com",
        b"cert:site",
    ]
    assert client.get("cert:domain:a.example.com") == b"site"
    client.set("cert:domain:other.example.com", "elsewhere")  # not ours: left alone

    async def remove(aio: aioredis.Redis) -> repository.Deleted:
        return await repository.delete(aio, "site")

    deleted = run(redis_db, remove)
    assert deleted.removed == ("cert:domain:a.example.com", "cert:domain:b.example.com")
    assert client.keys("cert:*") == [b"cert:domain:other.example.com"]


def test_replacing_drops_the_old_domains_index_keys(redis_db: RedisServer, ca: trustme.CA) -> None:
    old = prepared(ca, "site", "a.example.com", "old.example.com")
    new = prepared(ca, "site", "a.example.com", "new.example.com")
    client = redis_db.client()

    async def body(aio: aioredis.Redis) -> repository.Stored:
        await repository.store(aio, old)
        with pytest.raises(CertExists):
            await repository.store(aio, new)  # replacing is asked for explicitly
        return await repository.store(aio, new, replace=True)

    stored = run(redis_db, body)
    assert stored.replaced and stored.removed == ("cert:domain:old.example.com",)
    assert sorted(client.keys("cert:domain:*")) == [
        b"cert:domain:a.example.com",
        b"cert:domain:new.example.com",
    ]


def test_a_domain_taken_from_another_certificate(redis_db: RedisServer, ca: trustme.CA) -> None:
    first = prepared(ca, "first", "a.example.com")
    second = prepared(ca, "second", "a.example.com")

    async def body(aio: aioredis.Redis) -> repository.Stored:
        await repository.store(aio, first)
        return await repository.store(aio, second)

    stored = run(redis_db, body)
    assert stored.took_over == {"cert:domain:a.example.com": "first"}
    assert redis_db.client().get("cert:domain:a.example.com") == b"second"


def test_missing_and_reserved_names(redis_db: RedisServer) -> None:
    async def body(aio: aioredis.Redis) -> None:
        with pytest.raises(CertNotFound, match="cert:nope does not exist"):
            await repository.get(aio, "nope")
        with pytest.raises(CertNotFound):
            await repository.delete(aio, "nope")
        with pytest.raises(InvalidCertName):
            await repository.get(aio, "domain:a.example.com")

    run(redis_db, body)


def test_a_first_import_leaves_hand_written_index_keys(
    redis_db: RedisServer, ca: trustme.CA
) -> None:
    """Only replacing a record removes keys naming it: with no record before, a key that
    names the certificate was written by someone else and stays."""
    cert = prepared(ca, "site", "a.example.com")
    client = redis_db.client()
    client.set("cert:domain:old.example.com", "site")

    async def body(aio: aioredis.Redis) -> repository.Stored:
        return await repository.store(aio, cert)

    stored = run(redis_db, body)
    assert not stored.replaced and stored.removed == ()
    assert stored.left == ("cert:domain:old.example.com",)
    assert client.get("cert:domain:old.example.com") == b"site"
