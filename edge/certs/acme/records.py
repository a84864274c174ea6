"""The status documents and the order queue: how an order is asked for and found.

* ``cert:status:{name}``: the order and its progress (:class:`edge.certs.acme.order.CertStatus`);
* ``edge:acme:queue``: a sorted set, certificate name -> when it is next due (Unix time).

Asking for a certificate writes its status (``pending``) and queues it for now, in one
transaction; every worker's ACME service looks at the queue and the first to take the
certificate's lease runs the order. A status that is ``active`` expires after
``CERT_STATUS_RETENTION_SECONDS`` (the record then says what matters); a pending or
failed one stays until the order succeeds or is cancelled (``DELETE``).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from redis.asyncio.client import Pipeline

from edge.certs.acme.order import CertStatus, KeyType, decode_status, encode_status, iso
from edge.errors import EdgeError
from edge.store import keys
from edge.store.transaction import Txn, transaction
from edge.tls.material import CertRecord

__all__ = [
    "IN_PROGRESS",
    "OrderInProgress",
    "cancel",
    "due",
    "queue_at",
    "read_status",
    "request",
    "write_status",
]

log = logging.getLogger("edge.acme")

IN_PROGRESS = ("pending", "validating", "issuing")


class OrderInProgress(EdgeError):
    status = 409
    code = "order_in_progress"
    public_message = "an order for this certificate is in progress"


def now_iso() -> str:
    iso_now = iso(datetime.now(UTC))
    assert iso_now is not None
    return iso_now


def _decode(raw: bytes | None, name: str = "") -> CertStatus | None:
    if raw is None:
        return None
    try:
        return decode_status(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        # damaged (a hand edit): treated as absent, so a new request replaces it, and an
        # order of a certificate with no record is dropped from the queue
        if name:
            log.warning(
                "ACME status document refused",
                extra={"fields": {"key": keys.cert_status(name), "error": str(exc)[:200]}},
            )
        return None


async def read_status(client: aioredis.Redis, name: str) -> CertStatus | None:
    raw = await client.get(keys.cert_status(name))
    return _decode(raw.encode() if isinstance(raw, str) else raw, name)


def write_status(pipe: Pipeline | aioredis.Redis, status: CertStatus, retention: float) -> None:
    """Queue the status document's write (with its expiry once ``active``)."""
    key = keys.cert_status(status.cert_name)
    if status.status == "active":
        pipe.set(key, encode_status(status), ex=max(1, round(retention)))
    else:
        pipe.set(key, encode_status(status))


def queue_at(pipe: Pipeline | aioredis.Redis, name: str, when: float) -> None:
    pipe.zadd(keys.ACME_QUEUE, {name: when})


async def request(
    client: aioredis.Redis,
    wanted: CertStatus,
    *,
    only_if_absent: bool = False,
    allow_existing_record: bool = True,
    replace_failed: bool = True,
) -> tuple[CertStatus, bool]:
    """Ask for ``wanted`` (status ``pending``): ``(the status, True)`` once written and
    queued, ``(the current one, False)`` when an order for the name is in progress, or,
    with ``only_if_absent``, when a status or a record exists at all.

    A failed order waits in the queue for its next try (the CA's ``Retry-After``, the
    backoff). With ``replace_failed`` a request replaces it and runs at once; without,
    one whose next try is still to come counts as in progress."""
    name = wanted.cert_name
    status_key, record_key = keys.cert_status(name), keys.cert(name)

    async def body(txn: Txn) -> tuple[CertStatus, bool]:
        current = _decode(await txn.get(status_key))
        record = await txn.exists(record_key)
        if current is not None and (
            only_if_absent
            or current.status in IN_PROGRESS
            or (not replace_failed and _retry_pending(current))
        ):
            return current, False
        if only_if_absent and record:
            return wanted, False
        if record and not allow_existing_record:
            return wanted, False
        pipe = txn.writes()
        write_status(pipe, wanted, 0)
        queue_at(pipe, name, time.time())
        return wanted, True

    return await transaction(client, [status_key, record_key], body)


def _retry_pending(status: CertStatus) -> bool:
    """A failed order whose next try is still to come."""
    if status.status != "failed" or status.next_try_at is None:
        return False
    try:
        return datetime.fromisoformat(status.next_try_at).timestamp() > time.time()
    except ValueError:
        return False


async def cancel(client: aioredis.Redis, name: str) -> bool:
    """Stop any order of ``name`` (its status and queue entry go; a node running it sees
    the status gone and stops before writing). True if there was one."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(keys.cert_status(name))
    pipe.zrem(keys.ACME_QUEUE, name)
    pipe.delete(keys.acme_renewal(name))
    removed, unqueued, _ = await pipe.execute()
    return bool(removed or unqueued)


async def due(client: aioredis.Redis, limit: int, now: float | None = None) -> list[str]:
    """Names whose time has come, soonest first."""
    now = time.time() if now is None else now
    found = await client.zrangebyscore(keys.ACME_QUEUE, "-inf", now, start=0, num=limit)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in found]


def updated(current: CertStatus, /, **changes: Any) -> CertStatus:
    """``current`` with ``changes`` and a new ``updated_at``."""
    return msgspec.structs.replace(current, updated_at=now_iso(), **changes)


def _key_type(private_key_pem: str) -> KeyType:
    try:
        # only the key's type is wanted, on the event loop: the RSA consistency check would
        # hold the GIL (and so the loop) for tens of milliseconds
        key = serialization.load_pem_private_key(
            private_key_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError):
        return "rsa"
    return "ecdsa" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa"


def renewal_of(record: CertRecord) -> CertStatus:
    """A pending renewal order for an ACME certificate known only by its record (its
    status document expired, or never existed on this Redis): same names, account, CA,
    owner and key type."""
    assert record.acme_directory_url is not None
    stamp = now_iso()
    return CertStatus(
        cert_name=record.cert_name,
        status="pending",
        domains=record.domains,
        email=record.email,
        directory_url=record.acme_directory_url,
        key_type=_key_type(record.private_key_pem),
        reason="renewal",
        owner_token_hash=record.owner_token_hash,
        requested_at=stamp,
        updated_at=stamp,
    )
