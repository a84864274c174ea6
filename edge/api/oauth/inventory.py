"""What the OAuth server holds in Redis, read for its admin: clients, access tokens,
browser sessions, and how many of each.

Lists are SCAN + MGET (:mod:`edge.store.scan`): they never block Redis, and a key deleted
or expired between the two is simply left out. A stored document that no longer decodes
(a hand edit, a record of another version) is skipped, logged with its key, and named in
the listing's ``damaged`` keys, so one bad key never hides the others nor fails the call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec
import redis.asyncio as aioredis

from edge.oauth.records import AccessTokenRecord, BrowserSession, ClientRecord, decode
from edge.store import keys
from edge.store.scan import scan_keys, scan_values

__all__ = [
    "Damaged",
    "Listing",
    "access_tokens",
    "clients",
    "count",
    "live_revocations",
    "read_one",
    "sessions",
]

log = logging.getLogger("edge.api")

R = TypeVar("R", ClientRecord, AccessTokenRecord, BrowserSession)


class Damaged(Exception):
    """A stored document that does not decode (the key is in the message; never its value)."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(slots=True)
class Listing(Generic[R]):
    """The records found, by id (the key without its prefix), and the keys skipped."""

    items: list[tuple[str, R]] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)


def _decoded(key: str, raw: bytes | str, kind: type[R]) -> R:
    try:
        return decode(raw, kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        # msgspec names the field and the expected type, never the stored value
        reason = str(exc)[:200]
        log.warning(
            "oauth admin: damaged record skipped",
            extra={"fields": {"key": key, "kind": kind.__name__, "error": reason}},
        )
        raise Damaged(key, reason) from None


def _collect(
    found: dict[str, bytes], prefix: str, kind: type[R], keep: Callable[[R], bool]
) -> Listing[R]:
    listing: Listing[R] = Listing()
    for key in sorted(found):
        try:
            record = _decoded(key, found[key], kind)
        except Damaged:
            listing.damaged.append(key)
            continue
        if keep(record):
            listing.items.append((key[len(prefix) :], record))
    return listing


async def read_one(redis: aioredis.Redis, key: str, kind: type[R]) -> R | None:
    """The record at ``key``; None when absent; raises :class:`Damaged`."""
    raw = await redis.get(key)
    return None if raw is None else _decoded(key, raw, kind)


async def clients(redis: aioredis.Redis) -> Listing[ClientRecord]:
    """Every stored client, expired ones included (the caller shows which)."""
    found = await scan_values(redis, keys.OAUTH_CLIENT + "*")
    return _collect(found, keys.OAUTH_CLIENT, ClientRecord, lambda _: True)


async def access_tokens(
    redis: aioredis.Redis, *, client_id: str | None = None, user: str | None = None
) -> Listing[AccessTokenRecord]:
    """The access tokens still live (not expired), of ``client_id`` and of ``user`` (a
    GitHub login, or a ``sub`` such as ``github:123``) when given."""
    now = time.time()

    def keep(record: AccessTokenRecord) -> bool:
        if record.expires_at <= now:
            return False  # its TTL has not fired yet
        if client_id is not None and record.client_id != client_id:
            return False
        return user is None or user in (record.sub, record.login)

    found = await scan_values(redis, keys.OAUTH_TOKEN + "*")
    return _collect(found, keys.OAUTH_TOKEN, AccessTokenRecord, keep)


async def sessions(redis: aioredis.Redis) -> Listing[BrowserSession]:
    """Every signed-in browser session not yet expired; the id is the cookie's digest."""
    now = time.time()
    found = await scan_values(redis, keys.OAUTH_SESSION + "*")
    return _collect(found, keys.OAUTH_SESSION, BrowserSession, lambda s: s.expires_at > now)


async def count(redis: aioredis.Redis, prefix: str) -> int:
    """How many keys start with ``prefix`` (SCAN: names only, nothing decoded)."""
    return len(await scan_keys(redis, prefix + "*"))


async def live_revocations(redis: aioredis.Redis) -> int:
    """Revoked access tokens that have not expired yet (the rest are pruned anyway)."""
    return int(await redis.zcount(keys.OAUTH_REVOKED, f"({int(time.time())}", "+inf"))
