"""One worker process: its own uvloop loop, listeners, config watcher and upstream pool.

Shutdown (SIGTERM, or a first SIGINT) drains: stop accepting, ``Connection: close`` on
the next responses, close idle keep-alives, wait for in-flight exchanges up to
``DRAIN_TIMEOUT``, then abort what is left. A second SIGINT exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from typing import Any

from edge.config.watcher import ConfigWatcher
from edge.handlers.api import ApiApp
from edge.handlers.forward import Forwarder
from edge.http1.connection import HttpConnection
from edge.http1.hub import Hub
from edge.net.listener import EXIT_LISTEN_FAILED, reuseport_socket
from edge.routing.dispatch import Dispatcher
from edge.settings import Settings
from edge.upstream.pool import UpstreamPool

log = logging.getLogger("edge.worker")

FIRST_SYNC_WAIT = 5.0  # serve after the first config sync, or after this long without one


class Worker:
    def __init__(self, settings: Settings, worker_id: int) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.worker_id = worker_id
        self.loop = asyncio.get_running_loop()
        self.hub = Hub(settings, self.loop, worker_id)
        self.watcher = ConfigWatcher(settings.redis_url, settings.config_resync_interval)
        self.pool = UpstreamPool(
            self.loop,
            settings.upstream_idle_limit,
            settings.upstream_idle_timeout,
            settings.proxy_connect_timeout,
        )
        self.forwarder = Forwarder(self.pool, settings.proxy_request_timeout)
        self.api = ApiApp(self.health)
        self.dispatcher = Dispatcher(
            lambda: self.watcher.snapshot, self.forwarder, self.api, settings.api_hostname
        )
        self.servers: list[asyncio.Server] = []
        self.stop = asyncio.Event()
        self.started = time.time()
        self._interrupts = 0

    def health(self) -> dict[str, Any]:
        snap = self.watcher.snapshot
        if self.hub.draining:
            status = "draining"
        elif not self.watcher.connected or snap.rejected:
            status = "degraded"
        else:
            status = "ok"
        return {
            "status": status,
            "redis": {
                "connected": self.watcher.connected,
                "notifications": self.watcher.notifications,
                "last_sync": self.watcher.last_sync,
                "error": self.watcher.last_error or None,
            },
            "generation": snap.generation,
            "proxies": snap.proxy_count,
            "routes": len(snap.routes),
            "services": len(snap.services) + len(snap.urls),
            "rejected": dict(snap.rejected),
            "worker": self.worker_id,
            "pid": os.getpid(),
            "uptime": round(time.time() - self.started, 3),
            "connections": len(self.hub.connections),
            "requests": self.hub.requests,
        }

    async def run(self) -> int:
        """Serve until told to stop; the process exit status."""
        s = self.settings
        self._install_signals()
        watch = asyncio.create_task(self.watcher.run(), name="config-watcher")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.watcher.synced.wait(), FIRST_SYNC_WAIT)
        if not self.watcher.synced.is_set():
            log.warning("starting without configuration: redis not reachable yet")
        hub, dispatch, api = self.hub, self.dispatcher, self.api.handle
        listeners = (
            ("HTTP_PORT", s.server_host, s.http_port),
            ("API_PORT", s.api_host, s.api_port),
        )
        socks = []
        for name, host, port in listeners:
            try:
                socks.append(reuseport_socket(host, port))
            except OSError as exc:
                fields = {"address": f"{host}:{port}", "setting": name, "error": exc.strerror}
                log.critical("cannot listen", extra={"fields": fields})
                for sock in socks:
                    sock.close()
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch
                return EXIT_LISTEN_FAILED
        self.servers.append(
            await self.loop.create_server(lambda: HttpConnection(hub, dispatch), sock=socks[0])
        )
        self.servers.append(
            await self.loop.create_server(lambda: HttpConnection(hub, api), sock=socks[1])
        )
        log.info(
            "worker serving",
            extra={"fields": {"http": f"{s.server_host}:{s.http_port}", "api_port": s.api_port}},
        )
        await self.stop.wait()
        await self.drain()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watch
        self.hub.access_log.flush()
        return 0

    async def drain(self) -> None:
        log.info("draining", extra={"fields": {"connections": len(self.hub.connections)}})
        for server in self.servers:
            server.close()
        self.hub.start_drain()
        deadline = self.loop.time() + self.settings.drain_timeout
        while self.hub.connections and self.loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for conn in list(self.hub.connections):
            conn.abort()
        self.pool.close_all()
        for task in list(self.forwarder.tasks):
            task.cancel()
        log.info("drained", extra={"fields": {"aborted": len(self.hub.connections)}})

    def _install_signals(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        self.loop.add_signal_handler(signal.SIGINT, self._interrupt)

    def _interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            self.hub.access_log.flush()
            os._exit(130)
        self.stop.set()


def _die_with_parent() -> None:
    """Linux: get SIGTERM if the supervisor dies, so no worker is left orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_worker(settings: Settings, worker_id: int, use_uvloop: bool = True) -> int:
    """Run one worker to completion; returns its exit status."""
    _die_with_parent()

    async def main() -> int:
        return await Worker(settings, worker_id).run()

    if use_uvloop:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())
