"""Per-worker state shared by every downstream connection: limits, ids, drain, observers."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from edge.health import Report, Verdict
from edge.observe import ExchangeObserver, fan_out
from edge.observe.accesslog import AccessLog, AccessRecord, access_log_for
from edge.observe.observer import ConnectionEvents, events_fan_out, opened_fan_out
from edge.settings import Settings

if TYPE_CHECKING:
    from edge.http1.connection import HttpConnection


class Hub:
    __slots__ = (
        "_idle",
        "_ids",
        "_prefix",
        "access_log",
        "connection_event",
        "connections",
        "draining",
        "exchange_done",
        "loop",
        "max_incomplete",
        "observers",
        "requests",
        "settings",
        "tunnel_opened",
        "worker_id",
    )

    def __init__(self, settings: Settings, loop: asyncio.AbstractEventLoop, worker_id: int = 0):
        self.settings = settings
        self.loop = loop
        self.worker_id = worker_id
        self.access_log: AccessLog = access_log_for(settings, loop)
        self.observers: tuple[ExchangeObserver, ...] = ()
        self.exchange_done: Callable[[AccessRecord], None]
        self.connection_event: ConnectionEvents
        self.tunnel_opened: Callable[[AccessRecord], None]
        self.install_observers((self.access_log,))
        self.connections: set[HttpConnection] = set()
        self._idle: asyncio.Event | None = None  # made when a drain first asks
        self.draining = False
        self.requests = 0
        # request ids: a random per-process prefix and a counter; unique without a syscall
        self._prefix = os.urandom(4).hex()
        self._ids = itertools.count(1)
        # h11's own limit must never trip before ours (it is only a backstop)
        self.max_incomplete = settings.max_request_line + settings.max_header_bytes + 4096

    def install_observers(self, observers: Iterable[ExchangeObserver]) -> None:
        """Who hears about each finished exchange, in this order; until the worker says
        otherwise, the access log alone. ``exchange_done`` tells them all in one call."""
        self.observers = tuple(observers)
        self.exchange_done = fan_out(self.observers)
        self.connection_event = events_fan_out(self.observers)
        self.tunnel_opened = opened_fan_out(self.observers)

    def event(self, kind: str, ip: str, port: int, sni: str, detail: str) -> None:
        """A connection-level event (edge.observe.observer.ConnectionEvents), told to the
        observers installed now (listeners hold this method, not the fan-out itself)."""
        self.connection_event(kind, ip, port, sni, detail)

    def next_request_id(self) -> str:
        return f"{self._prefix}{next(self._ids):08x}"

    def opened(self, conn: HttpConnection) -> None:
        self.connections.add(conn)
        if self._idle is not None:
            self._idle.clear()

    def closed(self, conn: HttpConnection) -> None:
        self.connections.discard(conn)
        if self._idle is not None and not self.connections:
            self._idle.set()

    @property
    def idle(self) -> asyncio.Event:
        """Set while the worker has no downstream connection: what a drain waits on."""
        if self._idle is None:
            self._idle = asyncio.Event()
            if not self.connections:
                self._idle.set()
        return self._idle

    def health_report(self) -> Report:
        fields = {"connections": len(self.connections), "requests": self.requests}
        return Report(fields, Verdict.DRAINING if self.draining else Verdict.OK)

    def start_drain(self) -> None:
        """Stop keep-alive everywhere: busy connections close after their response, idle
        ones after DRAIN_IDLE_GRACE (a request arriving first is served)."""
        self.draining = True
        for conn in list(self.connections):
            conn.drain()

    def going_away(self) -> None:
        """The drain's grace for tunnels is over: each one is ended by its peer (a
        WebSocket with close 1001 both ways); HTTP connections are left to finish."""
        for conn in list(self.connections):
            conn.going_away()
