"""Keeps a worker's config snapshot in step with Redis.

Keyspace notifications are hints: each names a key that changed (SET, DEL, EXPIRE,
RENAME, expiry, or a write of another type such as HSET, which is reported as a key of the
wrong type), and only that key is fetched and applied. Notifications are lost while
disconnected and may be disabled on managed servers, so the watcher also resyncs the
whole key space on (re)connect and every ``CONFIG_RESYNC_INTERVAL`` seconds, applying only
the differences. While Redis is unreachable the last good snapshot keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from edge.config.last_good import apply_shared, settle
from edge.config.redis_source import fetch, scan_all
from edge.config.schema import classify_key
from edge.config.snapshot import Snapshot, resync_updates
from edge.health import Report, Verdict
from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client

log = logging.getLogger("edge.config")

BACKOFF_START = 0.1
BACKOFF_CAP = 5.0
BATCH_WINDOW = 0.01  # gather notifications for this long before fetching
# the longest wait between two looks at a requested resync (``request_resync``)
RESYNC_REQUEST_CHECK = 0.5
# keyspace channel; generic (DEL, EXPIRE, RENAME), string, expired; and the commands of the
# other types (list, set, hash, sorted set, stream): a config key written with HSET or
# RPUSH is reported when it is written, not at the next full resync
REQUIRED_FLAGS = "Kg$xlshzt"
WATCHED_PREFIXES = keys.WATCHED_PREFIXES


def merge_flags(current: str) -> str | None:
    """The notify-keyspace-events value that adds ours to ``current``; None if already there."""
    have = set(current)
    if "A" in have:
        have |= set("g$lshzxetd")
    missing = [f for f in REQUIRED_FLAGS if f not in have]
    if not missing:
        return None
    return current + "".join(missing)


class ConfigWatcher:
    def __init__(
        self,
        redis: RedisTarget,
        resync_interval: float,
        on_change: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.redis = redis
        self.resync_interval = resync_interval
        self.snapshot = Snapshot()
        # called with every snapshot installed (e.g. the TLS store rebuilding contexts)
        self.on_install: list[Callable[[Snapshot], None]] = []
        self.on_change = on_change
        self.connected = False
        self.notifications = False
        self.last_error = ""
        self.last_sync = 0.0
        self.synced = asyncio.Event()
        self._said_no_notifications = False
        self._resync_requested = False

    # ------------------------------------------------------------------ applying
    def _install(self, snapshot: Snapshot) -> None:
        if snapshot is self.snapshot:
            return
        self.snapshot = snapshot
        for listener in self.on_install:
            listener(snapshot)
        log.info(
            "config applied",
            extra={
                "fields": {
                    "generation": snapshot.generation,
                    "proxies": snapshot.proxy_count,
                    "routes": len(snapshot.routes),
                    "rejected": len(snapshot.rejected),
                }
            },
        )
        if self.on_change is not None:
            self.on_change(snapshot)

    async def resync(self, client: aioredis.Redis) -> None:
        current = await scan_all(client)
        if not current and self.snapshot.raw:
            # An empty answer (a Redis restarted without its data, a failover to an empty
            # replica) must never wipe a working routing table. Explicit DELs still apply.
            log.warning(
                "resync found no configuration keys; keeping the last good configuration",
                extra={"fields": {"keys_served": len(self.snapshot.raw)}},
            )
        else:
            updates = resync_updates(self.snapshot, current)
            snapshot = await apply_shared(client, self.snapshot, updates)
            self._install(await settle(client, snapshot))
        self.last_sync = time.time()
        self.synced.set()

    # ------------------------------------------------------------------ running
    def health_report(self) -> Report:
        """Redis, the snapshot served and its rejected keys (degraded: Redis unreachable,
        or a key refused)."""
        snap = self.snapshot
        fields = {
            "redis": {
                "connected": self.connected,
                "notifications": self.notifications,
                "last_sync": self.last_sync,
                "error": self.last_error or None,
            },
            "generation": snap.generation,
            "proxies": snap.proxy_count,
            "routes": len(snap.routes),
            "services": len(snap.services) + len(snap.urls),
            "rejected": dict(snap.rejected),
            # the rejected keys still served by their last good value (the others are not)
            "last_good": sorted(snap.kept),
        }
        healthy = self.connected and not snap.rejected
        return Report(fields, Verdict.OK if healthy else Verdict.DEGRADED)

    async def run(self) -> None:
        backoff = BACKOFF_START
        while True:
            client = redis_client(self.redis)
            try:
                await self._session(client)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                if self.connected or self.last_error != str(exc):
                    log.warning(
                        "redis unavailable; serving the last good configuration",
                        extra={"fields": {"error": str(exc), "retry_in": backoff}},
                    )
                self.last_error = str(exc) or type(exc).__name__
            except Exception as exc:
                # never let the watcher die: the last good config keeps serving meanwhile
                log.exception("config watcher failed; retrying")
                self.last_error = type(exc).__name__
            finally:
                if self.connected:
                    backoff = BACKOFF_START  # a session was up: start the backoff over
                self.connected = False
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def _session(self, client: aioredis.Redis) -> None:
        await client.ping()
        db = int(client.connection_pool.connection_kwargs.get("db", 0) or 0)
        self.notifications = await self._enable_notifications(client)
        pubsub = client.pubsub()
        try:
            if self.notifications:
                await pubsub.psubscribe(
                    *(f"__keyspace@{db}__:{prefix}*" for prefix in WATCHED_PREFIXES)
                )
            await self.resync(client)
            if not self.connected:
                log.info("redis connected", extra={"fields": {"notifications": self.notifications}})
            self.connected = True
            self.last_error = ""
            await self._listen(client, pubsub, db)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _enable_notifications(self, client: aioredis.Redis) -> bool:
        try:
            reply: dict[Any, Any] = await client.config_get("notify-keyspace-events")
            current = reply.get(b"notify-keyspace-events", reply.get("notify-keyspace-events", ""))
            text = current.decode() if isinstance(current, bytes) else str(current)
            wanted = merge_flags(text)
            if wanted is not None:
                await client.config_set("notify-keyspace-events", wanted)
            return True
        except ResponseError as exc:
            if self.notifications or not self._said_no_notifications:
                # said once per change of state, not at every resync
                log.warning(
                    "keyspace notifications could not be enabled; changes apply at the next resync",
                    extra={"fields": {"error": str(exc), "resync_interval": self.resync_interval}},
                )
                self._said_no_notifications = True
            return False

    def request_resync(self) -> None:
        """Read every key again soon (within ``RESYNC_REQUEST_CHECK``), as the periodic
        resync does: what a reload (SIGHUP) asks for, e.g. after keys were changed while
        keyspace notifications were off."""
        self._resync_requested = True

    async def _listen(
        self, client: aioredis.Redis, pubsub: aioredis.client.PubSub, db: int
    ) -> None:
        prefix = f"__keyspace@{db}__:".encode()
        next_resync = time.monotonic() + self.resync_interval
        while True:
            timeout = max(0.0, min(next_resync - time.monotonic(), RESYNC_REQUEST_CHECK))
            dirty: set[str] = set()
            if self.notifications:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                if message is not None:
                    self._note(message, prefix, dirty)
                    # batch what arrives together (a MULTI, a script, a burst of edits)
                    deadline = time.monotonic() + BATCH_WINDOW
                    while (left := deadline - time.monotonic()) > 0:
                        more = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=left
                        )
                        if more is None:
                            break
                        self._note(more, prefix, dirty)
            else:
                await asyncio.sleep(timeout)
            if dirty:
                values = await fetch(client, dirty)
                self._install(await apply_shared(client, self.snapshot, values))
            if self._resync_requested or time.monotonic() >= next_resync:
                self._resync_requested = False
                if not self.notifications:
                    self.notifications = await self._enable_notifications(client)
                    if self.notifications:
                        return  # reconnect to subscribe
                else:
                    # someone may have reset notify-keyspace-events: put ours back
                    await self._enable_notifications(client)
                await self.resync(client)
                next_resync = time.monotonic() + self.resync_interval

    @staticmethod
    def _note(message: dict[str, object], prefix: bytes, dirty: set[str]) -> None:
        channel = message.get("channel")
        if isinstance(channel, bytes) and channel.startswith(prefix):
            key = channel[len(prefix) :].decode("utf-8", "replace")
            # keys beside the configuration under a watched prefix (an ACME issuance's
            # cert:status:) change often and never change the snapshot
            if classify_key(key) is not None:
                dirty.add(key)
