"""One certificate's order, run by whichever node takes its lease.

The lease (``edge:acme:lease:{name}``, :mod:`edge.store.lease`) lasts ``ACME_LEASE_SECONDS``
and is renewed every third of it while the order runs; the queue entry is pushed twice that
far out, so that if the node dies another node takes the order over once the lease has run
out. Having taken it, the issuer looks again at what is asked (another node may just have
finished): a certificate that is active and not yet due, or an order that was cancelled, is
left alone. Otherwise the order runs in a thread (:mod:`edge.certs.acme.protocol`), and the
certificate is written through the certificate repository behind a fence: in the same
transaction that writes ``cert:{name}``, the lease is read (and watched) and must still hold
this node's token, and the status must still exist, so a node that lost its lease, or whose
order was cancelled, can never overwrite what another wrote since. The TLS listeners of
every node then load the record like any imported certificate.

A failure is recorded in the status with the CA's words and the time of the next try:
exponential backoff from ``ACME_RETRY_INITIAL_SECONDS`` to ``ACME_RETRY_MAX_SECONDS``, never
sooner than the CA's ``Retry-After``. The old certificate serves until the new one lands.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from edge.certs import repository
from edge.certs.acme import budget, challenges, protocol, records, renewal
from edge.certs.acme.accounts import account_id, ensure_account, forget_account
from edge.certs.acme.order import CertStatus, iso
from edge.certs.acme.protocol import CaError, Issued, OrderAbandoned, Poll
from edge.config.schema import ConfigError
from edge.errors import EdgeError
from edge.settings import Settings
from edge.store import keys
from edge.store.lease import Lease
from edge.store.transaction import Txn, transaction
from edge.tls.material import CertRecord, MaterialError, decode_cert

__all__ = ["AcmeOptions", "Issuer", "Outcome"]

log = logging.getLogger("edge.acme")

HOOK_TIMEOUT = 30.0  # seconds the order's thread waits for a Redis write it asked for

Outcome = Literal["busy", "skipped", "deferred", "issued", "failed", "abandoned"]


@dataclass(frozen=True, slots=True)
class AcmeOptions:
    directory_url: str
    staging_url: str
    ca_bundle: str | None
    poll: Poll
    rsa_bits: int
    retry_initial: float
    retry_max: float
    retention: float
    threshold: timedelta
    min_age: timedelta
    admin_email: str | None
    lease: float = 30.0  # seconds; renewed every third of it while the order runs

    @classmethod
    def from_settings(cls, s: Settings) -> AcmeOptions:
        return cls(
            directory_url=s.acme_directory_url,
            staging_url=s.acme_staging_url,
            ca_bundle=s.acme_ca_bundle,
            poll=Poll(
                s.acme_poll_initial_wait, s.acme_poll_interval_seconds, s.acme_poll_max_attempts
            ),
            rsa_bits=s.rsa_key_size,
            retry_initial=s.acme_retry_initial_seconds,
            retry_max=s.acme_retry_max_seconds,
            retention=s.cert_status_retention_seconds,
            threshold=timedelta(days=s.renewal_threshold_days),
            min_age=timedelta(seconds=s.renewal_min_age),
            admin_email=s.admin_email,
            lease=s.acme_lease_seconds,
        )


class LeaseLost(EdgeError):
    status = 409
    code = "lease_lost"
    public_message = "another node took over this certificate's order"


class Cancelled(EdgeError):
    status = 409
    code = "cancelled"
    public_message = "the order was cancelled"


class _Flags:
    __slots__ = ("cancelled", "lost")

    def __init__(self) -> None:
        self.lost = False
        self.cancelled = False


def _when(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


class _Hooks:
    """What the order's thread asks of the event loop: Redis writes, and whether to go on."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: aioredis.Redis,
        status: CertStatus,
        flags: _Flags,
    ) -> None:
        self.loop = loop
        self.client = client
        self.status = status
        self.flags = flags
        self.tokens: list[str] = []

    def _wait(self, coro: Coroutine[Any, Any, object]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(HOOK_TIMEOUT)

    def publish(self, answers: list[tuple[str, str]]) -> None:
        self.tokens.extend(token for token, _ in answers)
        self._wait(challenges.publish(self.client, answers))

    def progress(self, state: Literal["validating", "issuing"], order_url: str) -> None:
        self.status = records.updated(self.status, status=state, order_url=order_url)
        key = keys.cert_status(self.status.cert_name)
        # xx: a cancelled order's status is not brought back
        document = msgspec.json.encode(self.status)

        async def write() -> None:
            await self.client.set(key, document, xx=True)

        self._wait(write())

    def check(self) -> None:
        if self.flags.cancelled:
            raise OrderAbandoned("the order was cancelled")
        if self.flags.lost:
            raise OrderAbandoned("the lease was lost")


class Issuer:
    """Runs due orders of this node (each under its certificate's lease)."""

    def __init__(self, client: aioredis.Redis, options: AcmeOptions, pool: Executor) -> None:
        self.client = client
        self.options = options
        self.pool = pool
        self.issued = 0
        self.failed = 0

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _record(self, name: str) -> CertRecord | None:
        raw = await self.client.get(keys.cert(name))
        if raw is None:
            return None
        try:
            return decode_cert(keys.cert(name), raw)
        except ConfigError:
            return None

    async def _renewal_due(self, name: str) -> float | None:
        raw = await self.client.get(keys.acme_renewal(name))
        if raw is None:
            return None
        try:
            return float(json.loads(raw)["renew_at"])
        except (ValueError, KeyError, TypeError):
            return None

    # ------------------------------------------------------------------ the order
    async def run(self, name: str) -> Outcome:
        lease = Lease(self.client, keys.acme_lease(name), self.options.lease)
        if not await lease.acquire():
            return "busy"
        try:
            status = await self._still_needed(name)
            if status is None:
                return "skipped"
            return await self._order(name, status, lease)
        finally:
            try:
                await lease.release()
            except (RedisError, OSError):
                pass  # the lease ends by its TTL

    async def _still_needed(self, name: str) -> CertStatus | None:
        """The order to place now, or None (requeued or dropped as fits)."""
        client, now = self.client, time.time()
        status = await records.read_status(client, name)
        if status is None or status.status == "active":
            record = await self._record(name)
            if record is None or record.acme_directory_url is None:
                if status is None:
                    await client.zrem(keys.ACME_QUEUE, name)
                    return None
            due = await self._renewal_due(name)
            if due is None and status is not None:
                due = _when(status.renew_at)
            if record is None:
                due = now  # active, yet the record was deleted by hand: order again
            if due is None or due > now:
                await self._requeue(name, status, due)
                return None
            if status is None:
                assert record is not None
                status = records.renewal_of(record)
            else:
                status = records.updated(status, status="pending", reason="renewal", error=None)
        elif status.status == "failed":
            next_try = _when(status.next_try_at)
            if next_try is not None and next_try > now:
                await client.zadd(keys.ACME_QUEUE, {name: next_try})
                return None
        return status

    async def _requeue(self, name: str, seen: CertStatus | None, due: float | None) -> None:
        """Move ``name``'s queue entry to its renewal time ``due`` (None: drop it), unless
        its status changed since it was read as ``seen``: a request written meanwhile (the
        API's renew) keeps the entry it queued."""
        status_key = keys.cert_status(name)

        async def body(txn: Txn) -> None:
            if await records.read_status(txn.reader, name) != seen:
                return
            pipe = txn.writes()
            if due is None:
                pipe.zrem(keys.ACME_QUEUE, name)
            else:
                pipe.zadd(keys.ACME_QUEUE, {name: due})

        await transaction(self.client, [status_key], body)

    async def _order(self, name: str, status: CertStatus, lease: Lease) -> Outcome:
        client, opts = self.client, self.options
        email = status.email or opts.admin_email
        ident = account_id(status.directory_url, email)
        wait = await budget.take_order(client, ident, status.domains)
        if wait is not None:
            seconds, why = wait
            deferred = records.updated(
                status,
                status="pending",
                error=f"waiting: {why}",
                next_try_at=iso(time.time() + seconds),
            )
            await self._save(deferred, time.time() + seconds)
            log.warning(
                "certificate order deferred",
                extra={"fields": {"cert": name, "reason": why, "retry_in": round(seconds)}},
            )
            return "deferred"
        status = records.updated(status, status="pending", error=status.error)
        # due again if this node dies: another one takes over once the lease has run out
        await self._save(status, time.time() + self.options.lease * 2)

        flags = _Flags()
        keeper = asyncio.create_task(self._keep(lease, name, flags))
        hooks = _Hooks(asyncio.get_running_loop(), client, status, flags)
        try:
            replaces = await self._replaces(name, status, email) if status.attempts == 0 else None
            log.info(
                "certificate order started",
                extra={
                    "fields": {
                        "cert": name,
                        "domains": list(status.domains),
                        "reason": status.reason,
                    }
                },
            )
            try:
                issued = await self._place(name, status, email, replaces, hooks)
            except asyncio.CancelledError:
                flags.cancelled = True  # the thread stops at its next step
                raise
            return await self._finish(name, hooks.status, issued, lease)
        except CaError as err:
            return await self._failed(name, hooks.status, err, ident)
        except OrderAbandoned as why:
            log.warning(
                "certificate order stopped", extra={"fields": {"cert": name, "why": str(why)}}
            )
            return "abandoned"
        except (LeaseLost, Cancelled) as why:
            log.warning(
                "certificate not written", extra={"fields": {"cert": name, "why": str(why)}}
            )
            return "abandoned"
        except (MaterialError, ConfigError, repository.CertRepositoryError) as err:
            # the CA's certificate is not one the workers would load
            return await self._failed(name, hooks.status, CaError(str(err), "refused"), ident)
        finally:
            keeper.cancel()
            if hooks.tokens:
                try:
                    await challenges.withdraw(client, hooks.tokens)
                except (RedisError, OSError):
                    pass  # they expire

    async def _place(
        self, name: str, status: CertStatus, email: str | None, replaces: str | None, hooks: _Hooks
    ) -> Issued:
        """The order, placed with the account of ``status``'s CA and ``email``; once more
        with a new account if the CA no longer knows the stored one."""
        opts = self.options
        directory = status.directory_url
        for attempt in range(2):
            account = await ensure_account(
                self.client,
                directory,
                email,
                lambda: self._thread(protocol.register_account, directory, email, opts.ca_bundle),
            )
            request = protocol.OrderRequest(
                directory_url=directory,
                domains=status.domains,
                key_type=status.key_type,
                rsa_bits=opts.rsa_bits,
                account=account,
                ca_bundle=opts.ca_bundle,
                poll=opts.poll,
                replaces=replaces,
            )
            try:
                issued: Issued = await self._thread(protocol.place_order, request, hooks)
                return issued
            except CaError as err:
                if err.kind != "account" or attempt > 0:
                    raise
                log.warning(
                    "ACME account unknown to the CA: registering a new one",
                    extra={"fields": {"cert": name, "account": account.uri, "error": err.message}},
                )
                await forget_account(self.client, directory, email, account.uri)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _keep(self, lease: Lease, name: str, flags: _Flags) -> None:
        """Renew the lease while the order runs; note a lost lease or a cancelled order."""
        while True:
            await asyncio.sleep(self.options.lease / 3)
            try:
                if not await lease.renew():
                    flags.lost = True
                    return
                if not await self.client.exists(keys.cert_status(name)):
                    flags.cancelled = True
                    return
            except (RedisError, OSError):
                continue  # the lease's TTL outlasts a short outage; the fence has the last word

    async def _replaces(self, name: str, status: CertStatus, email: str | None) -> str | None:
        """RFC 9773 ``replaces``: the certificate being renewed, when the same CA and account
        issued it."""
        record = await self._record(name)
        if record is None or record.acme_directory_url != status.directory_url:
            return None
        if (record.email or self.options.admin_email) != email:
            return None
        try:
            return protocol.cert_id(record.fullchain_pem)
        except ValueError:
            return None

    def _guard(self, name: str, lease: Lease) -> Any:
        async def guard(txn: Txn) -> None:
            status_key = keys.cert_status(name)
            await txn.watch(lease.key, status_key)
            if await txn.get(lease.key) != lease.token.encode():
                raise LeaseLost(f"{lease.key} no longer holds this node's token")
            if not await txn.exists(status_key):
                raise Cancelled(f"{status_key} was deleted")

        return guard

    async def _finish(self, name: str, status: CertStatus, issued: Issued, lease: Lease) -> Outcome:
        opts = self.options
        prepared = await self._thread(
            lambda: repository.prepare(
                name,
                issued.fullchain_pem,
                issued.private_key_pem,
                status.domains,
                email=status.email,
                status="active",
                acme_directory_url=status.directory_url,
                owner_token_hash=status.owner_token_hash,
                check_key=False,  # generated here: no need to hold the GIL checking it
            )
        )
        not_before, not_after, fingerprint = protocol.leaf_times(issued.fullchain_pem)
        renew_at = renewal.by_lifetime(not_before, not_after, opts.threshold, opts.min_age)
        active = records.updated(
            status,
            status="active",
            attempts=0,
            error=None,
            next_try_at=None,
            expires_at=iso(not_after),
            renew_at=iso(renew_at),
            order_url=issued.order_url,
        )
        schedule = {
            "fingerprint": fingerprint,
            "renew_at": renew_at.timestamp(),
            "source": "lifetime",
            "next_check_at": time.time(),
        }

        def also(pipe: Pipeline) -> None:
            records.write_status(pipe, active, opts.retention)
            records.queue_at(pipe, name, renew_at.timestamp())
            pipe.set(keys.acme_renewal(name), json.dumps(schedule))

        for attempt in range(3):
            try:
                await repository.store(
                    self.client, prepared, replace=True, guard=self._guard(name, lease), also=also
                )
                break
            except repository.CertConflict:
                if attempt == 2:
                    raise
        self.issued += 1
        log.info(
            "certificate issued",
            extra={
                "fields": {
                    "cert": name,
                    "domains": list(status.domains),
                    "expires_at": iso(not_after),
                    "renew_at": iso(renew_at),
                }
            },
        )
        return "issued"

    async def _failed(self, name: str, status: CertStatus, err: CaError, account: str) -> Outcome:
        opts = self.options
        attempts = status.attempts + 1
        delay = min(opts.retry_initial * 2 ** (attempts - 1), opts.retry_max)
        if err.kind == "replaces":
            delay = 0.0  # again at once, without ``replaces`` (attempts > 0 now)
        if err.retry_after is not None:
            delay = max(delay, err.retry_after)
        if err.kind == "validation":
            await budget.note_failed_validation(self.client, account, status.domains)
        now = time.time()
        failed = records.updated(
            status,
            status="failed",
            attempts=attempts,
            error=err.message,
            next_try_at=iso(now + delay),
        )
        self.failed += 1
        log.warning(
            "certificate order failed",
            extra={
                "fields": {
                    "cert": name,
                    "error": err.message[:500],
                    "kind": err.kind,
                    "retry_in": round(delay, 1),
                    "attempts": attempts,
                }
            },
        )
        await self._save(failed, now + delay, only_if_present=True)
        return "failed"

    async def _save(self, status: CertStatus, due: float, *, only_if_present: bool = False) -> None:
        key = keys.cert_status(status.cert_name)
        pipe = self.client.pipeline(transaction=True)
        if only_if_present:
            pipe.set(key, msgspec.json.encode(status), xx=True)
        else:
            records.write_status(pipe, status, self.options.retention)
        records.queue_at(pipe, status.cert_name, due)
        await pipe.execute()
