"""The lingering close, driven in-process over a transport whose send buffer the test sets.

A large answer sent before its request was read is still leaving when the edge starts to
linger: while the client keeps taking it, LINGER_TIMEOUT (idle) must not cut it off; a
client that stops taking it is dropped after LINGER_TIME.
"""

from __future__ import annotations

import asyncio
import os

from edge.http1.connection import HttpConnection
from edge.http1.exchange import Exchange
from edge.http1.hub import Hub
from edge.settings import load_settings
from tests.component.harness import FakeTransport


def answer_early(ex: Exchange) -> None:
    """Answers without reading the (large) body: the edge lingers after this answer."""
    ex.respond(200, b"the answer")


async def lingering(linger_timeout: float, linger_time: float) -> tuple[FakeTransport, float]:
    loop = asyncio.get_running_loop()
    settings = load_settings(
        {"LINGER_TIMEOUT": str(linger_timeout), "LINGER_TIME": str(linger_time)}
    )
    hub = Hub(settings, loop)
    hub.access_log._fd = os.open(os.devnull, os.O_WRONLY)
    conn = HttpConnection(hub, answer_early)
    transport = FakeTransport()
    conn.connection_made(transport)
    conn.data_received(b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100000000\r\n\r\n")
    assert transport.eof_written  # answered, half-closed: lingering
    return transport, loop.time()


async def test_a_client_still_reading_the_answer_is_not_cut_by_the_idle_linger() -> None:
    transport, started = await lingering(linger_timeout=0.1, linger_time=0.6)
    transport.unsent = 10_000_000
    # the client keeps taking the answer for 0.5 s: five idle linger timeouts
    while asyncio.get_running_loop().time() - started < 0.5:
        transport.unsent -= 100_000
        await asyncio.sleep(0.02)
    assert not transport.aborted and not transport.closed
    transport.unsent = 0  # all of it is out: the idle linger applies again
    await asyncio.sleep(0.3)
    assert transport.closed and not transport.aborted


async def test_a_client_that_stops_reading_the_answer_is_dropped_after_linger_time() -> None:
    transport, started = await lingering(linger_timeout=0.1, linger_time=0.4)
    transport.unsent = 10_000_000  # and it never moves
    await asyncio.sleep(0.25)
    assert not transport.aborted  # LINGER_TIMEOUT alone does not drop it
    await asyncio.sleep(0.5)
    assert transport.aborted
    assert asyncio.get_running_loop().time() - started < 1.0
