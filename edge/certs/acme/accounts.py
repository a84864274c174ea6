"""One ACME account per directory URL and e-mail, registered once and used by every node.

``edge:acme:account:{id}`` holds the account's key and URL (JSON), ``id`` being a hash of
the directory URL and the e-mail. The first node to need an account registers it under a
lease (:mod:`edge.store.lease`) while the others wait for the record: the CA sees one
``newAccount`` however many nodes start at once. An account the CA says it does not know
(``accountDoesNotExist``: the CA's data was reset, or the account deleted) is forgotten with
:func:`forget_account`, and the next order registers a new one the same way.

The account key lives in Redis beside the certificates' own keys (``cert:{name}``), which
every node needs too: protect Redis as you protect those (``REDIS_PASSWORD``, TLS, ACLs).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from edge.certs.acme.protocol import AccountKey, CaError
from edge.store import keys
from edge.store.lease import hold
from edge.store.transaction import Txn, transaction

__all__ = ["account_id", "ensure_account", "forget_account"]

REGISTER_LEASE = 120.0  # seconds a registering node holds the account's lease
WAIT_STEP = 0.25


def account_id(directory_url: str, email: str | None) -> str:
    digest = hashlib.sha256(f"{directory_url}\n{(email or '').lower()}".encode())
    return digest.hexdigest()[:32]


def _decode(raw: bytes | str | None) -> AccountKey | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
        return AccountKey(key_pem=str(doc["key_pem"]), uri=str(doc["uri"]))
    except (ValueError, KeyError, TypeError):
        return None  # a damaged record is replaced by a new registration


async def ensure_account(
    client: aioredis.Redis,
    directory_url: str,
    email: str | None,
    register: Callable[[], Awaitable[AccountKey]],
    wait: float = REGISTER_LEASE,
) -> AccountKey:
    """The stored account, or one ``register()`` creates under the lease (one node only)."""
    ident = account_id(directory_url, email)
    key = keys.acme_account(ident)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        found = _decode(await client.get(key))
        if found is not None:
            return found
        async with hold(client, keys.acme_account_lease(ident), REGISTER_LEASE) as mine:
            if mine:
                found = _decode(await client.get(key))  # registered while we asked
                if found is not None:
                    return found
                account = await register()
                doc = {
                    "key_pem": account.key_pem,
                    "uri": account.uri,
                    "directory_url": directory_url,
                    "email": email,
                }
                await client.set(key, json.dumps(doc))
                return account
        if loop.time() > deadline:
            raise CaError("another node's ACME account registration did not finish", "timeout")
        await asyncio.sleep(WAIT_STEP)


async def forget_account(
    client: aioredis.Redis, directory_url: str, email: str | None, uri: str
) -> bool:
    """Delete the stored account of ``directory_url`` and ``email`` if it is still the one
    at ``uri`` (another node may have registered its successor already); True if deleted."""
    key = keys.acme_account(account_id(directory_url, email))

    async def body(txn: Txn) -> bool:
        found = _decode(await txn.get(key))
        if found is None or found.uri != uri:
            return False
        txn.writes().delete(key)
        return True

    return await transaction(client, [key], body)
