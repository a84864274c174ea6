"""The worker's ACME job: runs the orders that are due, asks for the certificates proxies
need, and keeps each certificate's renewal time.

Every worker of every node runs one. They share the work through Redis: the queue
(``edge:acme:queue``) says what is due, and a certificate's lease says who runs it, so a
certificate is ordered by exactly one of them however many look. Three things feed the queue:

* a request (the admin API, ``edge cert create``/``renew``, on-demand TLS);
* automatic HTTPS (``AUTO_HTTPS``): a proxy with ``enable_https`` whose host name no
  certificate covers gets ``proxy-{host with dots as dashes}``, looked for whenever a new
  configuration snapshot is installed, whether the proxy came from the API or ``redis-cli``;
* renewal: each ACME certificate's renewal time (:mod:`edge.certs.acme.renewal`), checked
  every ``RENEWAL_CHECK_INTERVAL``; with renewal information (RFC 9773) from the CA, a
  time in its suggested window, asked again when its ``Retry-After`` has passed. The time is
  chosen once, by whoever holds the certificate's lease, and shared by every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Literal

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge.certs.acme import protocol, records, renewal
from edge.certs.acme.issuer import AcmeOptions, Issuer
from edge.certs.acme.order import PROXY_CERT_PREFIX, CertStatus, can_order, iso, proxy_cert_name
from edge.certs.acme.protocol import AccountKey, CaError
from edge.config.schema import ProxyConfig
from edge.config.snapshot import Snapshot
from edge.settings import Settings
from edge.store import keys
from edge.store.lease import hold
from edge.store.transaction import Txn, transaction
from edge.tls.material import CertRecord, san_covers

__all__ = ["AcmeService"]

log = logging.getLogger("edge.acme")

QUEUE_POLL = 1.0  # seconds between looks at the queue (a local request wakes it at once)
ARI_LEASE = 30.0


class AcmeService:
    """One worker's share of ordering, automatic HTTPS and renewal."""

    def __init__(
        self,
        settings: Settings,
        client: aioredis.Redis,
        *,
        auto: bool,
        own_hosts: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        # hosts the edge answers itself over HTTPS (the OAuth issuer's): certificates of
        # their own under automatic HTTPS, as a proxy gets, renewed while configured
        self.own_hosts = tuple(h for h in own_hosts if can_order(h))
        self.options = AcmeOptions.from_settings(settings)
        self.client = client
        self.auto = auto and settings.auto_https
        self.pool = ThreadPoolExecutor(
            max_workers=settings.cert_gen_max_workers, thread_name_prefix="acme"
        )
        self.issuer = Issuer(client, self.options, self.pool)
        self.running: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self.snapshot: Snapshot | None = None
        self._snapshot_seen: Snapshot | None = None
        self._next_renewal_check = 0.0
        self.last_error: str | None = None

    # ------------------------------------------------------------------ hooks
    def kick(self) -> None:
        """An order was asked for on this worker: look at the queue now."""
        self.wake.set()

    def note_snapshot(self, snapshot: Snapshot) -> None:
        """A config watcher ``on_install`` hook: look for proxies needing a certificate."""
        self.snapshot = snapshot
        self.wake.set()

    def health(self) -> dict[str, object]:
        return {
            "orders_running": sorted(self.running),
            "issued": self.issuer.issued,
            "failed": self.issuer.failed,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._round()
                    self.last_error = None
                except (RedisError, OSError) as exc:
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(QUEUE_POLL):
                        await self.wake.wait()
                self.wake.clear()
        finally:
            for task in self.running.values():
                task.cancel()
            if self.running:
                await asyncio.wait(list(self.running.values()), timeout=5)
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _round(self) -> None:
        snapshot = self.snapshot
        if self.auto and snapshot is not None and snapshot is not self._snapshot_seen:
            self._snapshot_seen = snapshot
            await self.request_missing(snapshot)
        now = time.time()
        if snapshot is not None and now >= self._next_renewal_check:
            self._next_renewal_check = now + self.settings.renewal_check_interval
            await self.check_renewals(snapshot)
            if self.auto:
                await self.request_missing(snapshot)
        room = self.settings.cert_gen_max_workers - len(self.running)
        if room <= 0:
            return
        for name in await records.due(self.client, room * 4):
            if name in self.running:
                continue
            task = asyncio.get_running_loop().create_task(self._run_one(name))
            self.running[name] = task
            if len(self.running) >= self.settings.cert_gen_max_workers:
                break

    async def _run_one(self, name: str) -> None:
        try:
            await self.issuer.run(name)
        except (RedisError, OSError) as exc:
            log.warning(
                "certificate order interrupted",
                extra={"fields": {"cert": name, "error": f"{type(exc).__name__}: {exc}"[:300]}},
            )
        except Exception:
            log.exception("certificate order crashed", extra={"fields": {"cert": name}})
        finally:
            self.running.pop(name, None)
            self.wake.set()  # a slot is free

    # ------------------------------------------------------------------ automatic HTTPS
    async def request_missing(self, snapshot: Snapshot) -> list[str]:
        """Ask for a certificate for each proxy that needs one and has none; the names
        asked for (another worker may have asked first: then nothing is written)."""
        asked = []
        for proxy in snapshot.exact.values():
            if not _wants_certificate(proxy) or _covered(snapshot, proxy.hostname):
                continue
            status = await self.status_for(proxy, proxy.hostname, "automatic")
            _, created = await records.request(self.client, status, only_if_absent=True)
            if created:
                asked.append(status.cert_name)
                log.info(
                    "certificate requested for a proxy",
                    extra={"fields": {"cert": status.cert_name, "hostname": proxy.hostname}},
                )
        for host in self.own_hosts:
            if _covered(snapshot, host):
                continue
            stamp = records.now_iso()
            status = CertStatus(
                cert_name=own_cert_name(host),
                status="pending",
                domains=(host,),
                email=self.options.admin_email,
                directory_url=self.options.directory_url,
                reason="automatic",
                owner_token_hash=None,
                requested_at=stamp,
                updated_at=stamp,
            )
            _, created = await records.request(self.client, status, only_if_absent=True)
            if created:
                asked.append(status.cert_name)
                log.info(
                    "certificate requested for the edge's own host",
                    extra={"fields": {"cert": status.cert_name, "hostname": host}},
                )
        return asked

    async def status_for(
        self, proxy: ProxyConfig, hostname: str, reason: Literal["automatic", "on-demand"]
    ) -> CertStatus:
        """The order of ``proxy-{hostname}`` for ``proxy``: its ACME account's e-mail (its
        ``cert_email``, its owner token's, else ``ADMIN_EMAIL``) and CA."""
        stamp = records.now_iso()
        return CertStatus(
            cert_name=proxy_cert_name(hostname),
            status="pending",
            domains=(hostname,),
            email=proxy.cert_email
            or await self.owner_email(proxy.owner_token_hash)
            or self.options.admin_email,
            directory_url=proxy.acme_directory_url or self.options.directory_url,
            reason=reason,
            owner_token_hash=proxy.owner_token_hash,
            requested_at=stamp,
            updated_at=stamp,
        )

    async def owner_email(self, token_hash: str | None) -> str | None:
        """The ``cert_email`` of the token with this hash, if any."""
        if not token_hash:
            return None
        name = await self.client.get(keys.token_by_hash(token_hash))
        if name is None:
            return None
        raw = await self.client.get(keys.token(name.decode() if isinstance(name, bytes) else name))
        try:
            email = json.loads(raw).get("cert_email") if raw is not None else None
        except (ValueError, AttributeError):
            return None
        return email if isinstance(email, str) and email else None

    # ------------------------------------------------------------------ renewal
    async def check_renewals(self, snapshot: Snapshot) -> None:
        for name, record in snapshot.certs.items():
            if record.acme_directory_url is None:
                continue
            if name.startswith(PROXY_CERT_PREFIX) and not _in_use(snapshot, record):
                # a proxy's own certificate outlives the proxy, unrenewed, like Caddy's
                if await self.client.zrem(keys.ACME_QUEUE, name):
                    log.info(
                        "certificate not renewed: no proxy uses it",
                        extra={"fields": {"cert": name}},
                    )
                continue
            try:
                await self._schedule(name, record)
            except CaError as err:
                log.warning(
                    "renewal information not fetched",
                    extra={"fields": {"cert": name, "error": err.message[:300]}},
                )

    async def _schedule(self, name: str, record: CertRecord) -> None:
        """Make sure ``name`` is queued for its renewal time (choosing it if nobody has)."""
        directory = record.acme_directory_url
        assert directory is not None
        raw = await self.client.get(keys.acme_renewal(name))
        try:
            current = json.loads(raw) if raw is not None else None
        except ValueError:
            current = None
        not_before, not_after, fingerprint = protocol.leaf_times(record.fullchain_pem)
        now = time.time()
        if (
            isinstance(current, dict)
            and current.get("fingerprint") == fingerprint
            and float(current.get("next_check_at", 0)) > now
        ):
            return  # chosen, and not to be asked again yet
        async with hold(self.client, keys.acme_lease(name), ARI_LEASE) as mine:
            if not mine:
                return  # being ordered, or another worker is choosing
            info = await asyncio.get_running_loop().run_in_executor(
                self.pool,
                protocol.fetch_renewal_info,
                directory,
                AccountKey(),
                record.fullchain_pem,
                self.options.ca_bundle,
            )
            if info is not None:
                renew_at = renewal.in_window(info.start, info.end)
                schedule = {
                    "fingerprint": fingerprint,
                    "renew_at": renew_at.timestamp(),
                    "source": "ari",
                    "window": [iso(info.start), iso(info.end)],
                    "next_check_at": now + info.retry_after,
                }
            else:
                renew_at = renewal.by_lifetime(
                    not_before, not_after, self.options.threshold, self.options.min_age
                )
                keep = isinstance(current, dict) and current.get("fingerprint") == fingerprint
                if keep and current is not None and current.get("source") == "lifetime":
                    renew_at = datetime.fromtimestamp(float(current["renew_at"]), UTC)
                schedule = {
                    "fingerprint": fingerprint,
                    "renew_at": renew_at.timestamp(),
                    "source": "lifetime",
                    "next_check_at": now + self.settings.renewal_check_interval,
                }
            status_key = keys.cert_status(name)

            async def write(txn: Txn) -> None:
                # the lease does not keep out a request (the API's renew): the status is
                # watched, and an order asked for or waiting for its next try keeps its
                # queue entry and its status
                status = await records.read_status(txn.reader, name)
                pipe = txn.writes()
                pipe.set(keys.acme_renewal(name), json.dumps(schedule))
                if status is not None and status.status != "active":
                    return
                records.queue_at(pipe, name, renew_at.timestamp())
                if status is not None:
                    shown = records.updated(status, renew_at=iso(renew_at))
                    pipe.set(status_key, msgspec.json.encode(shown), xx=True, keepttl=True)

            await transaction(self.client, [status_key], write)


def own_cert_name(hostname: str) -> str:
    """The certificate of a host the edge answers itself (never a proxy's ``proxy-``
    name, so it is renewed whether or not a proxy serves the name)."""
    return "host-" + hostname.replace(".", "-")


def _wants_certificate(proxy: ProxyConfig) -> bool:
    return proxy.enabled and proxy.enable_https and can_order(proxy.hostname)


def _in_use(snapshot: Snapshot, record: CertRecord) -> bool:
    """Whether a proxy (exact, or a wildcard's on-demand name) serves one of its names."""
    for domain in record.domains:
        if domain in snapshot.exact:
            return True
        dot = domain.find(".")
        while dot >= 0:
            if domain[dot:] in snapshot.wildcards:
                return True
            dot = domain.find(".", dot + 1)
    return False


def _covered(snapshot: Snapshot, hostname: str) -> bool:
    """Whether a stored certificate (imported or issued) already covers ``hostname``."""
    if hostname in snapshot.cert_domains:
        return True
    return any(san_covers(record.domains, hostname) for record in snapshot.certs.values())
