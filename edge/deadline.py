"""A loop timer moved lazily, for deadlines that are re-armed on every request.

Cancelling and re-creating a loop timer per request costs more than the deadline check
itself. ``LazyTimer.wake_by(at)`` only touches the loop when the wake-up must come
earlier than the one already scheduled; a later deadline leaves the timer alone, and the
callback, waking early, calls ``due(at)`` to sleep again until the real deadline. Keep-alive
connections thus cost no timer operations per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

SLACK = 0.002  # seconds a timer may wake before its deadline (uvloop's clock is in ms)


class LazyTimer:
    __slots__ = ("_at", "_callback", "_handle", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0

    def wake_by(self, at: float) -> None:
        """Make sure the callback runs no later than loop time ``at`` (maybe earlier)."""
        handle = self._handle
        if handle is None or self._at > at + SLACK:
            if handle is not None:
                handle.cancel()
            self._at = at
            self._handle = self._loop.call_at(at, self._fire)

    def due(self, at: float) -> bool:
        """In the callback: has ``at`` come? If not, sleep until it and answer False."""
        if at > self._loop.time() + SLACK:
            self.wake_by(at)
            return False
        return True

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self._callback()
