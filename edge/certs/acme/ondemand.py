"""On-demand TLS: a certificate for a name under a wildcard proxy, got during its first
handshake (HTTP-01 cannot issue the wildcard itself).

The listener (:mod:`edge.net.hello`) asks :meth:`OnDemand.wanted` for each ClientHello,
from memory only: a name a loaded certificate covers never waits, nor does one no proxy
matches. For a name that may be obtained, the gates are asked in this order, and the
handshake then waits (up to ``ON_DEMAND_TLS_WAIT``) for the certificate, else gets the
default one:

1. ``ON_DEMAND_TLS`` is on, and the name matches a wildcard proxy in Redis (``*.example.com``
   with ``enable_https``) and is one a public CA could issue for;
2. the optional allowlist ``acme:on-demand:allowlist`` (a set: exact names, or
   ``*.example.com`` for any name directly under it) lists it, when the set exists;
3. the cluster's budget of ``ON_DEMAND_TLS_MAX_PER_HOUR`` new names is not spent.

A name refused by a gate, or whose order failed, is not asked about again for a minute
(``REFUSED_FOR``), so a scanner sending random names costs one Redis round trip per name
at most, and no order. The order itself is an ordinary one (``proxy-{name with dashes}``),
run by whichever node takes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge.certs.acme import budget, records
from edge.certs.acme.order import can_order, proxy_cert_name
from edge.certs.acme.service import AcmeService
from edge.config.schema import ProxyConfig
from edge.config.snapshot import Snapshot
from edge.store import keys

__all__ = ["OnDemand"]

log = logging.getLogger("edge.acme")

REFUSED_FOR = 60.0  # seconds a refused name is not asked about again


class OnDemand:
    def __init__(
        self,
        client: aioredis.Redis,
        service: AcmeService,
        has_certificate: Callable[[str], bool],
        snapshot: Callable[[], Snapshot | None],
        *,
        wait: float,
        max_per_hour: int,
    ) -> None:
        self.client = client
        self.service = service
        self.has_certificate = has_certificate
        self.snapshot = snapshot
        self.wait = wait
        self.max_per_hour = max_per_hour
        self.refused: dict[str, float] = {}
        self.inflight: dict[str, asyncio.Task[None]] = {}
        self.requested = 0
        self.refusals = 0
        self._changed = asyncio.Event()

    def certificates_changed(self) -> None:
        """The TLS store installed a new index: waiting handshakes look again."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _proxy(self, name: str) -> ProxyConfig | None:
        snapshot = self.snapshot()
        if snapshot is None:
            return None
        # the most specific wildcard proxy whose suffix the name ends with, as routing
        # finds it (the snapshot keys them by ".suffix")
        proxy = None
        dot = name.find(".")
        while dot >= 0 and proxy is None:
            proxy = snapshot.wildcards.get(name[dot:])
            dot = name.find(".", dot + 1)
        if proxy is None or not (proxy.enabled and proxy.enable_https):
            return None
        return proxy

    def wanted(self, server_name: str | None) -> bool:
        if not server_name or self.has_certificate(server_name):
            return False
        until = self.refused.get(server_name)
        if until is not None:
            if until > time.monotonic():
                return False
            del self.refused[server_name]
        return self._proxy(server_name) is not None and can_order(server_name)

    async def obtain(self, server_name: str) -> None:
        task = self.inflight.get(server_name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._obtain(server_name))
            self.inflight[server_name] = task
            task.add_done_callback(lambda _: self.inflight.pop(server_name, None))
        # each handshake waits on the shared task, never cancelling it for the others
        await asyncio.shield(task)

    async def _obtain(self, name: str) -> None:
        try:
            async with asyncio.timeout(self.wait):
                if not await self._order(name):
                    return
                while not self.has_certificate(name):
                    await self._changed.wait()
        except TimeoutError:
            pass  # this handshake gets the default certificate; the order goes on
        except (RedisError, OSError) as exc:
            log.warning(
                "on-demand TLS check failed", extra={"fields": {"sni": name, "error": str(exc)}}
            )

    def _refuse(self, name: str, why: str) -> bool:
        self.refused[name] = time.monotonic() + REFUSED_FOR
        if len(self.refused) > 10000:  # a scanner: forget the oldest half
            for old in sorted(self.refused, key=self.refused.__getitem__)[:5000]:
                del self.refused[old]
        self.refusals += 1
        log.info("on-demand certificate refused", extra={"fields": {"sni": name, "why": why}})
        return False

    async def _order(self, name: str) -> bool:
        """Ask for ``name``'s certificate if the gates allow; whether to wait for it."""
        proxy = self._proxy(name)
        if proxy is None:
            return False
        status = await records.read_status(self.client, proxy_cert_name(name))
        if status is not None and status.status in records.IN_PROGRESS:
            return True  # asked for already (by another handshake, or another node)
        if status is not None and status.status == "failed":
            return self._refuse(name, f"its last order failed: {status.error}")
        if not await self._allowed(name):
            return self._refuse(name, "not in the on-demand allowlist")
        if not await budget.take_on_demand(self.client, self.max_per_hour):
            return self._refuse(name, "ON_DEMAND_TLS_MAX_PER_HOUR reached")
        wanted = await self.service.status_for(proxy, name, "on-demand")
        await records.request(self.client, wanted)
        self.requested += 1
        self.service.kick()
        log.info("on-demand certificate requested", extra={"fields": {"sni": name}})
        return True

    async def _allowed(self, name: str) -> bool:
        key = keys.ACME_ON_DEMAND_ALLOWLIST
        _, _, parent = name.partition(".")
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(key)
        pipe.smismember(key, [name, "*." + parent])
        exists, members = await pipe.execute()
        return not exists or any(members)

    def health(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "refused": self.refusals,
            "waiting": len(self.inflight),
        }
