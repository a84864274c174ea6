"""A drain ends WebSockets with close 1001 (going away) to both ends, never mid-frame.

A real ``websockets`` upstream on loopback behind a running edge; the clients are a real
``websockets`` client and, to hold a frame half sent across the moment the edge starts
closing, a wsproto client on a plain socket.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest
import wsproto
import wsproto.events as wse
from websockets.exceptions import ConnectionClosed

from tests.helpers import EdgeProcess, RedisServer
from tests.integration.test_upstream_pool import HOST, configure
from tests.integration.test_websocket_sse import WsUpstream, ws_connect

GRACE = 1.0  # DRAIN_WEBSOCKET_GRACE in these tests
DRAIN = 10.0  # DRAIN_TIMEOUT: the old abort came only after it


@pytest.fixture
async def recorder() -> AsyncIterator[WsUpstream]:
    """The greeting, echoing upstream, without a limit on a message's size."""
    async with WsUpstream().serving(max_size=None) as up:
        yield up


@pytest.fixture
def draining_edge(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    recorder: WsUpstream,
    event_loop_name: str,
) -> EdgeProcess:
    edge = edge_factory(
        EDGE_LOOP=event_loop_name,
        DRAIN_TIMEOUT=DRAIN,
        DRAIN_WEBSOCKET_GRACE=GRACE,
        CONFIG_RESYNC_INTERVAL=30,
    )
    configure(redis_db, edge, f"http://127.0.0.1:{recorder.port}")
    return edge


async def exits(edge: EdgeProcess) -> tuple[int, float]:
    """The edge's exit status and how long after now it came (waited for off the loop)."""
    assert edge.proc is not None
    started = time.monotonic()
    status = await asyncio.to_thread(edge.proc.wait, DRAIN + 10)
    return status, time.monotonic() - started


async def test_sigterm_closes_a_websocket_with_1001_both_ways(
    draining_edge: EdgeProcess, recorder: WsUpstream
) -> None:
    edge = draining_edge
    big = bytes(range(256)) * 4096  # 1 MiB: many segments, many reads on the way
    async with ws_connect(edge) as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == "welcome"
        await ws.send(big)
        edge.signal(signal.SIGTERM)  # just after the frame left the client
        signalled = time.monotonic()
        # the grace lets the tunnel work on: the echo comes back whole
        assert await asyncio.wait_for(ws.recv(), 5) == big
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), DRAIN + 5)
        closed_after = time.monotonic() - signalled
    assert info.value.rcvd is not None, info.value  # a Close frame, not a dropped socket
    assert info.value.rcvd.code == 1001
    assert GRACE - 0.2 <= closed_after < DRAIN / 2, closed_after
    await asyncio.wait_for(recorder.done.wait(), 5)
    assert recorder.messages == [big]
    assert recorder.closed_with == [(1001, "")]
    status, took = await exits(edge)
    assert status == 0
    assert took < DRAIN / 2  # the drain ended when the tunnel did, not at DRAIN_TIMEOUT


class RawClient:
    """A wsproto client on a plain socket, so a frame can be sent in two pieces."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[wse.Event] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.send_bytes(client.ws.send(wse.Request(host=HOST, target="/chat")))
        await client.next_event(wse.AcceptConnection)
        return client

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_event(self, kind: type[wse.Event], within: float = 5.0) -> wse.Event:
        async with asyncio.timeout(within):
            while True:
                for event in self.ws.events():
                    self.events.append(event)
                    if isinstance(event, kind):
                        return event
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed before {kind.__name__}: {self.events}")
                self.ws.receive_data(data)


async def test_a_frame_in_flight_at_going_away_is_delivered_whole_then_closed(
    draining_edge: EdgeProcess, recorder: WsUpstream
) -> None:
    edge = draining_edge
    client = await RawClient.connect(edge.http_port)
    welcome = await client.next_event(wse.TextMessage)
    assert isinstance(welcome, wse.TextMessage) and welcome.data == "welcome"
    payload = b"\xab" * 100_000
    frame = client.ws.send(wse.BytesMessage(data=payload))
    client.send_bytes(frame[:50_000])  # the header and half the payload
    await client.writer.drain()
    await asyncio.sleep(0.2)  # the edge has read it: the client's side is mid-frame
    edge.signal(signal.SIGTERM)
    # to the client the edge closes at once after the grace: that side is between frames
    close = await client.next_event(wse.CloseConnection, within=DRAIN + 5)
    assert isinstance(close, wse.CloseConnection) and close.code == 1001
    # the upstream gets nothing of a Close until the frame in flight is complete
    assert recorder.closed_with == [] and recorder.messages == []
    client.send_bytes(frame[50_000:])
    client.send_bytes(client.ws.send(close.response()))  # our answer to the edge's Close
    await client.writer.drain()
    await asyncio.wait_for(recorder.done.wait(), 5)
    assert recorder.messages == [payload]  # whole, then the Close behind it
    assert recorder.closed_with == [(1001, "")]
    assert await asyncio.wait_for(client.reader.read(), 5) == b""  # the edge closed: EOF
    client.writer.close()
    status, took = await exits(edge)
    assert status == 0 and took < DRAIN / 2


async def test_a_client_that_never_answers_the_close_is_cut_after_the_close_deadline(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    recorder: WsUpstream,
) -> None:
    drain = 30.0
    edge = edge_factory(DRAIN_TIMEOUT=drain, DRAIN_WEBSOCKET_GRACE=GRACE, CONFIG_RESYNC_INTERVAL=30)
    configure(redis_db, edge, f"http://127.0.0.1:{recorder.port}")
    client = await RawClient.connect(edge.http_port)
    await client.next_event(wse.TextMessage)
    assert edge.proc is not None
    edge.signal(signal.SIGTERM)
    signalled = time.monotonic()
    close = await client.next_event(wse.CloseConnection, within=GRACE + 5)
    assert isinstance(close, wse.CloseConnection) and close.code == 1001
    # the client keeps quiet: the edge waits GOING_AWAY_TIMEOUT (5 s) for its answer, then
    # ends both sides, and the drain with them, long before DRAIN_TIMEOUT
    status = await asyncio.to_thread(edge.proc.wait, drain + 10)
    took = time.monotonic() - signalled
    assert status == 0
    assert GRACE + 4 <= took <= GRACE + 5 + 4, took
    await asyncio.wait_for(recorder.done.wait(), 5)
    assert recorder.closed_with == [(1001, "")]  # the upstream answered; it was not the wait
    client.writer.close()
