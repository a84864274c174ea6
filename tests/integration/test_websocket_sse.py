"""WebSocket pass-through (101 then raw bytes both ways) and unbuffered server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.helpers import EdgeProcess, RedisServer, wait_for
from tests.integration.test_upstream_pool import (
    HOST,
    ScriptedUpstream,
    UpConn,
    configure,
    scripted,
)

__all__ = ["scripted"]  # fixture re-used from the pool tests


class WsUpstream:
    """A ``websockets`` server: echoes, greets, closes on request; records what it saw
    (each request's path and headers, every message, how the connection closed)."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.messages: list[str | bytes] = []
        self.closed_with: list[tuple[int | None, str | None]] = []
        self.done = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.paths.append(ws.request.path)
        self.headers.append({k.lower(): v for k, v in ws.request.headers.raw_items()})
        await ws.send("welcome")
        try:
            async for message in ws:
                self.messages.append(message)
                if message == "close-please":
                    await ws.close(4001, "server says bye")
                    break
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            self.closed_with.append((ws.close_code, ws.close_reason))
            self.done.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    @contextlib.asynccontextmanager
    async def serving(self, **options: Any) -> AsyncIterator[WsUpstream]:
        """Listening on a free loopback port (``options`` go to ``websockets.serve``)."""
        async with serve(self.handler, "127.0.0.1", 0, **options) as server:
            self.server = server
            yield self


@pytest.fixture
async def ws_upstream() -> AsyncIterator[WsUpstream]:
    async with WsUpstream().serving() as up:
        yield up


def tunnel_released(edge: EdgeProcess, path: str = "/chat") -> None:
    """Once both ends closed, the edge logs the 101 and holds no connection but ours."""
    records = wait_for(lambda: [r for r in edge.access_log() if r["path"] == path], timeout=5)
    assert records[0]["status"] == 101
    # the /health request asking is the only connection the worker still has
    wait_for(lambda: edge.health()["connections"] == 1, timeout=5)


def ws_connect(edge: EdgeProcess, path: str = "/chat") -> Any:
    """A websockets client that talks to the edge port with ``Host: app.test``."""
    return connect(
        f"ws://{HOST}{path}",
        host="127.0.0.1",
        port=edge.http_port,
        proxy=None,
        open_timeout=10,
        close_timeout=5,
    )


async def roundtrip(ws: ClientConnection, message: str | bytes) -> None:
    await ws.send(message)
    assert await asyncio.wait_for(ws.recv(), 5) == message


async def test_websocket_messages_echo_both_ways(
    edge: EdgeProcess, redis_db: RedisServer, ws_upstream: WsUpstream
) -> None:
    configure(redis_db, edge, f"http://127.0.0.1:{ws_upstream.port}")
    async with ws_connect(edge, "/chat?room=1") as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == "welcome"  # upstream speaks first
        await roundtrip(ws, "hello")
        await roundtrip(ws, "héllo wörld ✓")
        await roundtrip(ws, bytes(range(256)) * 4)
        await roundtrip(ws, b"\x00" * (1 << 20))  # spans many TCP segments
        for i in range(50):
            await ws.send(f"burst {i}")
        assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(50)] == [
            f"burst {i}" for i in range(50)
        ]
    await asyncio.wait_for(ws_upstream.done.wait(), 5)
    assert ws_upstream.paths == ["/chat?room=1"]
    seen = ws_upstream.headers[0]
    assert seen["host"] == HOST
    assert seen["upgrade"].lower() == "websocket"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    tunnel_released(edge)


async def test_websocket_close_from_client_reaches_upstream(
    edge: EdgeProcess, redis_db: RedisServer, ws_upstream: WsUpstream
) -> None:
    configure(redis_db, edge, f"http://127.0.0.1:{ws_upstream.port}")
    async with ws_connect(edge) as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == "welcome"
        await ws.close(4000, "client says bye")
    assert ws.close_code == 4000  # the upstream's echo of our close frame came back
    await asyncio.wait_for(ws_upstream.done.wait(), 5)
    assert ws_upstream.closed_with == [(4000, "client says bye")]
    tunnel_released(edge)


async def test_websocket_close_from_upstream_reaches_client(
    edge: EdgeProcess, redis_db: RedisServer, ws_upstream: WsUpstream
) -> None:
    configure(redis_db, edge, f"http://127.0.0.1:{ws_upstream.port}")
    async with ws_connect(edge) as ws:
        assert await asyncio.wait_for(ws.recv(), 5) == "welcome"
        await ws.send("close-please")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "server says bye")
    await asyncio.wait_for(ws_upstream.done.wait(), 5)
    tunnel_released(edge)


def sse_upstream(
    framing: str, first_seen: threading.Event, waited: list[bool]
) -> Callable[[UpConn], None]:
    """Send one event, then wait until the client has it before sending the next."""

    def frame(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n" if framing == "chunked" else data

    def serve(conn: UpConn) -> None:
        assert conn.next_request() is not None
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        head += (
            "Transfer-Encoding: chunked\r\n" if framing == "chunked" else "Connection: close\r\n"
        )
        conn.send_raw(head.encode() + b"\r\n")
        conn.send_raw(frame(b"id: 1\ndata: first\n\n"))
        waited.append(first_seen.wait(5))
        conn.send_raw(frame(b"id: 2\ndata: second\n\n"))
        if framing == "chunked":
            conn.send_raw(b"0\r\n\r\n")
        else:
            conn.sock.close()

    return serve


def read_until(sock: socket.socket, buf: bytearray, marker: bytes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while marker not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{marker!r} not received; got {bytes(buf)!r}")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed before {marker!r}; got {bytes(buf)!r}")
        buf += data


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
def test_server_sent_events_are_not_buffered(
    edge: EdgeProcess,
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    framing: str,
) -> None:
    first_seen = threading.Event()
    waited: list[bool] = []
    up = scripted(sse_upstream(framing, first_seen, waited))
    configure(redis_db, edge, up.url)
    buf = bytearray()
    with socket.create_connection(("127.0.0.1", edge.http_port), timeout=10) as s:
        s.sendall(
            f"GET /events HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        read_until(s, buf, b"data: first\n\n")
        assert b"data: second" not in buf
        first_seen.set()  # only now may the upstream send the second event
        read_until(s, buf, b"data: second\n\n")
        read_until(s, buf, b"0\r\n\r\n")  # the edge ends its chunked response cleanly
    head = bytes(buf).split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 200")
    assert b"content-type: text/event-stream" in head
    assert waited == [True]  # the client had the first event before the second was sent
