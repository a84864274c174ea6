"""The live tunnels of one worker: what revocation checks walk and a drain closes.

A tunnel is added once its ticket is redeemed (so that a revocation or a drain reaches it
while it still connects to its target) and removed when it ends, whatever ended it; the
removal calls ``on_closed(ticket)`` exactly once per tunnel, which is where the session's
slot in ``port_forward:sessions:{project_id}`` is given back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from edge.tunnels.bridge import GOING_AWAY

if TYPE_CHECKING:
    from edge.tunnels.tickets import Ticket

__all__ = ["LiveTunnel", "TunnelRegistry"]

log = logging.getLogger("edge.tunnels")


class LiveTunnel(Protocol):
    """What the registry holds (``edge.handlers.tunnel.Tunnel`` is the real one)."""

    ticket: Ticket
    started: float  # loop-independent monotonic seconds

    def close(self, code: int, reason: str = "") -> None:
        """A WebSocket Close with ``code`` to the client, then both sockets close."""


class TunnelRegistry:
    """The worker's live tunnels, in the order they started, and their totals.

    ``bytes_in`` counts bytes from clients to targets, ``bytes_out`` from targets to
    clients: those of ended tunnels, plus the live ones' so far for tunnels that keep
    ``bytes_in``/``bytes_out`` attributes.
    """

    __slots__ = ("_bytes_in", "_bytes_out", "_live", "_on_closed", "draining", "opened")

    def __init__(self, on_closed: Callable[[Ticket], None]) -> None:
        self._on_closed = on_closed
        self._live: dict[LiveTunnel, None] = {}  # insertion-ordered set
        self.opened = 0
        self.draining = False
        self._bytes_in = 0
        self._bytes_out = 0

    def add(self, tunnel: LiveTunnel) -> None:
        """A tunnel redeemed its ticket; after ``going_away`` it is told to go at once
        (its redemption was under way when the others were)."""
        if tunnel not in self._live:
            self._live[tunnel] = None
            self.opened += 1
            if self.draining:
                tunnel.close(GOING_AWAY, "edge going away")

    def remove(self, tunnel: LiveTunnel) -> None:
        """``tunnel`` ended: forget it and call ``on_closed`` (once, however often called)."""
        if tunnel not in self._live:
            return
        del self._live[tunnel]
        self._bytes_in += _count(tunnel, "bytes_in")
        self._bytes_out += _count(tunnel, "bytes_out")
        try:
            self._on_closed(tunnel.ticket)
        except Exception:
            # the tunnel is gone either way; its slot runs out by itself (no heartbeat)
            log.exception("tunnel end not recorded")

    def discard(self, ticket: Ticket) -> None:
        """A redeemed ticket that opens no tunnel (it names another target): its slot is
        given back at once rather than held until it runs out."""
        try:
            self._on_closed(ticket)
        except Exception:
            log.exception("unused ticket's slot not given back")

    def live(self) -> list[LiveTunnel]:
        """The tunnels now live (a copy: closing one while walking it is safe)."""
        return list(self._live)

    def going_away(self) -> None:
        """The worker drains: every tunnel closes with 1001, and so does any added later."""
        self.draining = True
        for tunnel in self.live():
            tunnel.close(GOING_AWAY, "edge going away")

    def health(self) -> dict[str, object]:
        live = self._live
        return {
            "open": len(live),
            "opened": self.opened,
            "bytes_in": self._bytes_in + sum(_count(t, "bytes_in") for t in live),
            "bytes_out": self._bytes_out + sum(_count(t, "bytes_out") for t in live),
        }


def _count(tunnel: LiveTunnel, name: str) -> int:
    value = getattr(tunnel, name, 0)
    return value if isinstance(value, int) else 0
