"""Admin tokens in Redis: the records, their hash index, and every write as one transaction.

Keys::

    token:{name}          JSON TokenRecord (name, hash, cert_email, created_at, created_by)
    token:hash:{hash}     the token's name; ``hash`` is ``sha256:<64 hex>`` of the token value

Token values are never stored, in plaintext or in any reversible form: only their SHA-256
(:func:`edge.auth.secrets.token_hash`). Names are ``[a-z0-9][a-z0-9_.-]*`` (no ``:``), so
``token:{name}`` can never be mistaken for an index key.

Writes that touch a record and its index run in ``WATCH``/``MULTI``/``EXEC`` and retry
when another client changed the watched record meanwhile (other workers, other edges).
Every Redis call is bounded by :data:`REDIS_TIMEOUT`; callers map ``RedisError``,
``OSError`` and ``TimeoutError`` to 503.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol, TypeAlias

import msgspec
from redis.asyncio.client import Pipeline

from edge.api.redis_store import RedisStore
from edge.auth.secrets import is_token_hash, same_hash, token_hash
from edge.store import keys
from edge.store.scan import scan_values
from edge.store.transaction import Txn

__all__ = [
    "ADMIN_NAME",
    "NAME_PATTERN",
    "Cascade",
    "CascadePlan",
    "CorruptRecord",
    "TokenExists",
    "TokenRecord",
    "TokenStore",
    "hash_key",
    "record_key",
    "valid_name",
]

log = logging.getLogger("edge.api")

ADMIN_NAME = "admin"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
NAME_MAX = 64
_NAME_RE = re.compile(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z")
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
EMAIL_MAX = 254  # RFC 5321 path limit
RECORD_PREFIX = keys.TOKEN
HASH_PREFIX = keys.TOKEN_HASH

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX, pattern=NAME_PATTERN)]
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=EMAIL_MAX, pattern=EMAIL_PATTERN)]


class TokenRecord(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``token:{name}``. ``hash`` is not secret (it cannot be reversed) but stays internal."""

    name: str
    hash: str
    cert_email: str | None = None
    created_at: str
    created_by: str

    def public(self, with_hash: bool = False) -> dict[str, str | None]:
        """The fields an API answer shows (the hash only on single-record views)."""
        doc: dict[str, str | None] = {
            "name": self.name,
            "cert_email": self.cert_email,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }
        if with_hash:
            doc["hash"] = self.hash
        return doc


_encode = msgspec.json.Encoder().encode
_record_decoder = msgspec.json.Decoder(TokenRecord)


class CorruptRecord(Exception):
    """A ``token:`` key holds something that is not a valid record (names the key only)."""


class TokenExists(Exception):
    """A record with that name exists already."""


def valid_name(name: str) -> bool:
    return _NAME_RE.match(name) is not None


record_key = keys.token
hash_key = keys.token_by_hash


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds: ``2024-05-01T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class CascadePlan(Protocol):
    """What a token owns, found (and watched) before ``MULTI``; ``queue`` adds its
    deletes to the token's own transaction, so both commit or fail together."""

    def queue(self, pipe: Pipeline) -> None: ...


# finds what a token (by hash) owns, inside the delete's transaction, while it watches:
# the caller passes it (the token store knows nothing of the config records)
Cascade: TypeAlias = Callable[[Txn, str], Awaitable[CascadePlan]]


def _decode(key: str, raw: bytes | str) -> TokenRecord:
    try:
        record = _record_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise CorruptRecord(f"{key}: {exc}") from None
    if record_key(record.name) != key or not is_token_hash(record.hash):
        raise CorruptRecord(f"{key}: name or hash field does not fit the key")
    return record


class TokenStore(RedisStore):
    """Token records in Redis. Every method may raise RedisError/OSError/TimeoutError."""

    # ---------------------------------------------------------------- reads
    async def get(self, name: str) -> TokenRecord | None:
        key = record_key(name)
        raw = await self._bounded(self.redis.client.get(key))
        return None if raw is None else _decode(key, raw)

    async def authenticate(self, presented: str) -> TokenRecord | None:
        """The record of the token whose value is ``presented``, or None.

        Index lookup by hash, then the record, whose hash must match the presented one
        (compared in constant time): a stale index entry never authenticates.
        """
        hashed = token_hash(presented)

        async def lookup() -> TokenRecord | None:
            client = self.redis.client
            name = await client.get(hash_key(hashed))
            if name is None:
                return None
            text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
            if not valid_name(text):
                log.warning("token index entry names an invalid token; ignoring it")
                return None
            raw = await client.get(record_key(text))
            if raw is None:
                return None
            try:
                record = _decode(record_key(text), raw)
            except CorruptRecord as exc:
                log.warning("corrupt token record", extra={"fields": {"error": str(exc)}})
                return None
            return record if same_hash(record.hash, hashed) else None

        return await self._bounded(lookup())

    async def list(self) -> list[TokenRecord]:
        """Every token record, by name; corrupt ones are skipped with a warning."""

        async def scan() -> list[TokenRecord]:
            found = await scan_values(
                self.redis.client, RECORD_PREFIX + "*", lambda k: not k.startswith(HASH_PREFIX)
            )
            records = []
            for key, raw in found.items():
                try:
                    records.append(_decode(key, raw))
                except CorruptRecord as exc:
                    log.warning("corrupt token record", extra={"fields": {"error": str(exc)}})
            return sorted(records, key=lambda r: r.name)

        return await self._bounded(scan())

    # ---------------------------------------------------------------- writes
    async def create(self, record: TokenRecord) -> None:
        """Store a new record and its index; raises :class:`TokenExists`."""
        key = record_key(record.name)

        async def body(txn: Txn) -> None:
            if await txn.exists(key):
                raise TokenExists(record.name)
            pipe = txn.writes()
            pipe.set(key, _encode(record))
            pipe.set(hash_key(record.hash), record.name)

        await self._bounded(self._transaction([key], body))

    async def delete(self, name: str, cascade: Cascade) -> bool:
        """Delete a record, its index entry and what it owns (``cascade`` finds it);
        False if absent."""
        key = record_key(name)

        async def body(txn: Txn) -> bool:
            raw = await txn.get(key)
            if raw is None:
                return False
            record = _decode(key, raw)
            plan = await cascade(txn, record.hash)  # finds and watches what it owns
            pipe = txn.writes()
            pipe.delete(key)
            pipe.delete(hash_key(record.hash))
            plan.queue(pipe)
            return True

        return await self._bounded(self._transaction([key], body))

    async def set_email(self, name: str, email: str | None) -> TokenRecord | None:
        """Replace ``cert_email``; the updated record, or None if the token is gone."""
        key = record_key(name)

        async def body(txn: Txn) -> TokenRecord | None:
            raw = await txn.get(key)
            if raw is None:
                return None
            record = msgspec.structs.replace(_decode(key, raw), cert_email=email)
            pipe = txn.writes()
            pipe.set(key, _encode(record))
            return record

        return await self._bounded(self._transaction([key], body))

    async def bootstrap_admin(self, value: str) -> bool:
        """Make ``value`` the ``admin`` token; True if Redis changed.

        One transaction: the record (creation time and e-mail kept when the hash is the
        same), its index entry, and the removal of a previous admin hash's stale index
        entry. Running it again with the same value (every worker does at start) writes
        nothing.
        """
        key = record_key(ADMIN_NAME)
        new_hash = token_hash(value)

        async def body(txn: Txn) -> bool:
            raw = await txn.get(key)
            old: TokenRecord | None = None
            if raw is not None:
                try:
                    old = _decode(key, raw)
                except CorruptRecord as exc:
                    log.warning(
                        "replacing corrupt admin record", extra={"fields": {"error": str(exc)}}
                    )
            admin = ADMIN_NAME.encode()
            same = old is not None and same_hash(old.hash, new_hash)
            await txn.watch(hash_key(new_hash))  # index entries read here are watched too
            if same and await txn.get(hash_key(new_hash)) == admin:
                return False
            stale = None
            if old is not None and not same:
                # the previous admin hash's index entry, if it still names the admin
                await txn.watch(hash_key(old.hash))
                if await txn.get(hash_key(old.hash)) == admin:
                    stale = hash_key(old.hash)
            if old is not None and same:
                record = old  # only the index entry was missing: repair it
            else:
                record = TokenRecord(
                    name=ADMIN_NAME,
                    hash=new_hash,
                    cert_email=old.cert_email if old is not None else None,
                    created_at=now_iso(),
                    created_by="ADMIN_TOKEN",
                )
            pipe = txn.writes()
            pipe.set(key, _encode(record))
            pipe.set(hash_key(new_hash), ADMIN_NAME)
            if stale is not None:
                pipe.delete(stale)
            return True

        return await self._bounded(self._transaction([key], body))
