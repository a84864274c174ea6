"""The certificate repository: ``cert:{name}`` records and their ``cert:domain:`` index.

* ``cert:{name}``          -> the JSON record (:class:`edge.tls.material.CertRecord`)
* ``cert:domain:{domain}`` -> the certificate name serving ``domain``

Every writer of certificates (``edge cert``, and next the admin API and ACME issuance) goes
through here, so a record and its domain keys always change together: each write is one
``MULTI``/``EXEC`` transaction guarded by ``WATCH`` on every key it read. A concurrent edit
makes it fail with :class:`CertConflict` and nothing is written; the caller decides whether
to try again: each write is :func:`edge.store.transaction.transaction` with one attempt
(the admin API's own transactions retry; ``edge cert`` has always reported the conflict).

Functions take a connected asyncio client and may raise ``RedisError``/``OSError`` besides
:class:`CertRepositoryError`. Nothing here prints; no error message holds key material.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from edge.certs.described import Described, describe
from edge.errors import EdgeError
from edge.store import keys
from edge.store.scan import as_text, mget, scan_keys
from edge.store.transaction import TooMuchContention, Txn, transaction
from edge.tls.contexts import server_context
from edge.tls.material import (
    CERT_DOMAIN_PREFIX,
    CERT_PREFIX,
    CertInfo,
    CertRecord,
    decode_cert,
    validate_material,
)

__all__ = [
    "IMPORTED_STATUS",
    "CertConflict",
    "CertExists",
    "CertNotFound",
    "CertRepositoryError",
    "Deleted",
    "InvalidCertName",
    "NotACertRecord",
    "Prepared",
    "ReservedCertName",
    "Stored",
    "cert_key",
    "check_new_name",
    "delete",
    "domain_key",
    "domain_keys_of",
    "domain_of",
    "get",
    "list_certs",
    "prepare",
    "record_key",
    "store",
]

IMPORTED_STATUS = "imported"
# a name starting so would be read as a cert:domain: or a cert:status: key
_RESERVED = ("domain:", "status:")


class CertRepositoryError(EdgeError):
    """A certificate operation refused; ``message`` says why (never with key material).

    ``message`` names the key, for ``edge cert`` to print; an HTTP client gets the fixed
    ``public_message`` and ``code`` of the admin API's certificate endpoints instead.
    """

    status = 409
    code = "conflict"
    public_message = "the request conflicts with the current state"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CertNotFound(CertRepositoryError):
    """No ``cert:{name}`` key."""

    status = 404
    code = "certificate_not_found"
    public_message = "no certificate with this name"


class InvalidCertName(CertRepositoryError):
    """The name cannot be a ``cert:{name}`` record key, so no certificate has it: the API
    answers a ``domain:...`` name 404, like any missing one."""

    status = 404
    code = "certificate_not_found"
    public_message = "no certificate with this name"


class ReservedCertName(InvalidCertName):
    """A new certificate may not take this name: the request is at fault (400)."""

    status = 400
    code = "invalid_name"
    public_message = "certificate names starting 'domain:' or 'status:' are reserved"


class CertExists(CertRepositoryError):
    """A record exists under the name and replacing it was not asked for."""

    code = "certificate_exists"
    public_message = "a certificate with this name exists"


class NotACertRecord(CertRepositoryError):
    """The ``cert:{name}`` key holds another Redis type than a string."""

    code = "invalid_document"
    public_message = "the key holds another Redis type than a string"


class CertConflict(CertRepositoryError):
    """A watched key changed before ``EXEC``: nothing was written."""

    public_message = "the certificate changed while this request ran; nothing was written"


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


cert_key = keys.cert
domain_key = keys.cert_domain


def record_key(name: str) -> str:
    """``cert:{name}``, or :class:`InvalidCertName` for a name that is no record's."""
    key = cert_key(name)
    if not name or key.startswith((CERT_DOMAIN_PREFIX, keys.CERT_STATUS)):
        raise InvalidCertName(f"{key} is not a certificate record key")
    return key


def _cert_name(key: str) -> str | None:
    if key.startswith((CERT_DOMAIN_PREFIX, keys.CERT_STATUS)) or not key.startswith(CERT_PREFIX):
        return None
    return key[len(CERT_PREFIX) :] or None


def domain_of(key: str) -> str:
    """The domain a ``cert:domain:`` key names (lower case, as certificates match)."""
    return key[len(CERT_DOMAIN_PREFIX) :].lower()


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def _pointee(value: bytes | None) -> str | None:
    """The certificate name a ``cert:domain:`` value names (None: absent)."""
    return None if value is None else as_text(value).strip()


async def _type_of(client: aioredis.Redis, key: str) -> str:
    return as_text(await client.type(key))


async def domain_keys_of(client: aioredis.Redis, name: str) -> list[str]:
    """The ``cert:domain:`` keys whose value names certificate ``name``, sorted."""
    return await _domain_keys_of(client, name)


async def _domain_keys_of(client: aioredis.Redis, name: str) -> list[str]:
    # what the transactions below read through their pipeline (module-level, so a test
    # can interleave another client's write between these reads and EXEC)
    values = await mget(client, await scan_keys(client, f"{CERT_DOMAIN_PREFIX}*"))
    return [k for k, v in values.items() if _pointee(v) == name]


async def _describe_keys(client: aioredis.Redis, keys: list[str]) -> list[Described]:
    values = await mget(client, keys)
    found: list[Described] = []
    for key in keys:
        raw = values.get(key)
        kind = await _type_of(client, key) if raw is None else None
        if kind == "none":  # deleted since the scan
            continue
        found.append(describe(key, raw, kind))
    return found


async def list_certs(client: aioredis.Redis) -> list[Described]:
    """Every ``cert:{name}`` record, sorted by name; a broken one says its problem."""
    names = await scan_keys(client, f"{CERT_PREFIX}*", lambda k: _cert_name(k) is not None)
    items = await _describe_keys(client, names)
    items.sort(key=lambda item: item.name)
    return items


async def get(client: aioredis.Redis, name: str) -> Described:
    """The record ``cert:{name}``; :class:`CertNotFound` when there is none."""
    key = record_key(name)
    items = await _describe_keys(client, [key])
    if not items:
        raise CertNotFound(f"{key} does not exist")
    return items[0]


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked record ready to be written (its repr never shows the key)."""

    record: CertRecord  # its own repr redacts the key
    document: str = field(repr=False)  # the JSON to store, key included
    info: CertInfo


def check_new_name(name: str) -> None:
    """:class:`ReservedCertName` for a name no new certificate may take."""
    if name.startswith(_RESERVED):
        raise ReservedCertName(
            f"invalid certificate name {name!r}: names starting 'domain:' or 'status:' "
            "are reserved"
        )


def prepare(
    name: str,
    fullchain_pem: str,
    private_key_pem: str,
    domains: Sequence[str],
    *,
    email: str | None = None,
    allow_expired: bool = False,
    status: str = IMPORTED_STATUS,
    acme_directory_url: str | None = None,
    owner_token_hash: str | None = None,
    check_key: bool = True,
) -> Prepared:
    """Check a certificate as the workers will; the record to :func:`store`.

    Raises :class:`InvalidCertName`, ``ConfigError`` (the record's shape: name, domain
    syntax, email) or ``MaterialError`` (the PEM material, or OpenSSL refusing it), each
    naming the field at fault.
    """
    check_new_name(name)
    doc: dict[str, Any] = {
        "cert_name": name,
        "domains": list(domains),
        "fullchain_pem": fullchain_pem,
        "private_key_pem": private_key_pem,
        "status": status,
    }
    if email is not None:
        doc["email"] = email
    if acme_directory_url is not None:
        doc["acme_directory_url"] = acme_directory_url
    if owner_token_hash is not None:
        doc["owner_token_hash"] = owner_token_hash
    # the shape first (name, domain syntax, email): the same check workers run
    record = decode_cert(cert_key(name), json.dumps(doc))
    info = validate_material(
        record.fullchain_pem,
        record.private_key_pem,
        record.domains,
        allow_expired=allow_expired,
        check_key=check_key,
    )
    # and what OpenSSL itself will say when a worker loads it
    server_context(record.fullchain_pem, record.private_key_pem)
    doc["domains"] = list(record.domains)
    doc["expires_at"] = info.not_after.isoformat()
    return Prepared(record=record, document=json.dumps(doc), info=info)


@dataclass(frozen=True, slots=True)
class Stored:
    """What :func:`store` wrote and changed."""

    key: str
    replaced: bool  # a record existed under the name
    domain_keys: tuple[str, ...]  # written, in the record's domain order
    took_over: dict[str, str]  # domain key -> the certificate it named before
    removed: tuple[str, ...]  # keys of domains the replaced record no longer lists
    left: tuple[str, ...]  # keys naming this certificate, not listed, kept (new record)


async def store(
    client: aioredis.Redis,
    prepared: Prepared,
    *,
    replace: bool = False,
    guard: Callable[[Txn], Awaitable[None]] | None = None,
    also: Callable[[Pipeline], None] | None = None,
) -> Stored:
    """Write ``prepared`` and a ``cert:domain:`` key per domain, in one transaction.

    A domain key naming another certificate is taken over. When a record is replaced, the
    keys of domains it no longer lists are removed with it; keys naming this certificate
    while no record existed are left alone (they were written by hand, not by us).

    ``guard`` reads (and so watches) what must still hold when the write lands, raising
    if it does not (ACME's fence: the order's lease is still this node's); ``also`` queues
    more writes in the same transaction.
    """
    record = prepared.record
    name = record.cert_name
    key = cert_key(name)
    new_keys = [domain_key(d) for d in record.domains]

    async def write(txn: Txn) -> Stored:
        if guard is not None:
            await guard(txn)
        kind = await _type_of(txn.reader, key)
        if kind != "none" and not replace:
            raise CertExists(f"{key} already exists")
        if kind not in ("none", "string"):
            raise NotACertRecord(f"{key} holds a {kind}, not a certificate record")
        pointing = await _domain_keys_of(txn.reader, name)
        others = [k for k in pointing if domain_of(k) not in record.domains]
        read = sorted({*new_keys, *others})
        await txn.watch(*read)
        current = {k: _pointee(v) for k, v in (await mget(txn.reader, read)).items()}
        taken = {k: v for k in new_keys if (v := current[k]) is not None and v != name}
        # the keys of domains no longer listed, still pointing here once watched
        others = [k for k in others if current[k] == name]
        stale = others if kind != "none" else []
        writes = txn.writes()
        writes.set(key, prepared.document)
        for new_key in new_keys:
            writes.set(new_key, name)
        for stale_key in stale:
            writes.delete(stale_key)
        if also is not None:
            also(writes)
        return _stored(key, kind, new_keys, taken, stale, others)

    try:
        return await transaction(client, [key], write, attempts=1)
    except TooMuchContention:
        raise CertConflict(
            f"{key} or its cert:domain: keys changed while importing; nothing was written"
        ) from None


def _stored(
    key: str,
    kind: str,
    new_keys: list[str],
    taken: dict[str, str],
    stale: list[str],
    others: list[str],
) -> Stored:
    return Stored(
        key=key,
        replaced=kind != "none",
        domain_keys=tuple(new_keys),
        took_over=dict(sorted(taken.items())),
        removed=tuple(stale),
        left=tuple(others) if kind == "none" else (),
    )


@dataclass(frozen=True, slots=True)
class Deleted:
    key: str
    removed: tuple[str, ...]  # the cert:domain: keys that named it


async def delete(client: aioredis.Redis, name: str) -> Deleted:
    """Remove ``cert:{name}`` and the domain keys naming it, in one transaction."""
    key = record_key(name)

    async def write(txn: Txn) -> Deleted:
        if await _type_of(txn.reader, key) == "none":
            raise CertNotFound(f"{key} does not exist")
        pointing = await _domain_keys_of(txn.reader, name)
        if pointing:
            await txn.watch(*pointing)
            # only those still pointing here once watched
            values = await mget(txn.reader, pointing)
            pointing = [k for k, v in values.items() if _pointee(v) == name]
        txn.writes().delete(key, *pointing)
        return Deleted(key=key, removed=tuple(pointing))

    try:
        return await transaction(client, [key], write, attempts=1)
    except TooMuchContention:
        raise CertConflict(
            f"{key} or its cert:domain: keys changed while deleting; nothing was deleted"
        ) from None
