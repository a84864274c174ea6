"""Revocation reaches live connections: a WebSocket and an SSE stream admitted with a token
are cut within two seconds when the token is revoked on another node, or when the user is
taken off the proxy's allowlist; connections whose access stands are left alone.

Two real edge nodes on one Redis, a real ``websockets`` upstream, a real streaming
upstream, real clients; the GitHub stand-in for sign-in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import EdgeProcess, proxy_doc, wait_for
from tests.integration.test_websocket_sse import WsUpstream
from tests.oauth_helpers import Browser, OAuthStack, oauth_stack, register_client, request_via

EdgeFactory = Callable[..., EdgeProcess]
HOST = "live.localhost"
LIMIT = 2.0  # seconds from the revocation to the cut, on any node


class SseUpstream:
    """Streams an event every 50 ms, chunked, until the client goes; counts streams."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.ended = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            n = 0
            while True:
                event = f"data: {n}\n\n".encode()
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                await writer.drain()
                n += 1
                await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.ended += 1
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SseUpstream]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        async with self.server:
            yield self


def protect(rdb: redis.Redis, upstream_url: str, **fields: Any) -> None:
    rdb.set(f"proxy:{HOST}", proxy_doc(HOST, upstream_url, auth_enabled=True, **fields))


async def token_for(stack: OAuthStack, port: int) -> tuple[str, Any]:
    client = register_client(stack.issuer)
    resource = f"https://{HOST}:{port}"

    def fetch() -> str:
        return str(stack.tokens(Browser(), client, resources=[resource])["access_token"])

    return await asyncio.to_thread(fetch), client


def ws_to(port: int, token: str) -> Any:
    return connect(
        f"ws://{HOST}:{port}/chat",
        host="127.0.0.1",
        port=port,
        proxy=None,
        open_timeout=10,
        close_timeout=5,
        additional_headers={"Authorization": f"Bearer {token}"},
    )


async def closed_within(ws: Any, limit: float) -> tuple[int | None, float]:
    """Keep the socket busy until the edge closes it: (close code received, seconds)."""
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(limit + 3):
            while True:
                await ws.send("ping")
                await ws.recv()
                await asyncio.sleep(0.05)
    code = info.value.rcvd.code if info.value.rcvd is not None else None
    return code, time.monotonic() - started


@pytest.fixture
def stack(edge_factory: EdgeFactory) -> Any:
    with oauth_stack(edge_factory, users=("alice", "bob"), allowed="alice,bob") as s:
        yield s


async def test_a_revocation_on_one_node_closes_a_websocket_on_another_with_4401(
    stack: OAuthStack, rdb: redis.Redis
) -> None:
    async with WsUpstream().serving() as up:
        protect(rdb, f"http://127.0.0.1:{up.port}")
        other = stack.node()
        await asyncio.to_thread(
            wait_for,
            lambda: request_via(other.http_port, "GET", f"http://{HOST}/").status == 401,
        )
        token, client = await token_for(stack, other.http_port)
        async with ws_to(other.http_port, token) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "welcome"
            # access that stands is left alone through several re-checks
            for _ in range(15):
                await ws.send("still here")
                assert await asyncio.wait_for(ws.recv(), 5) == "still here"
                await asyncio.sleep(0.1)
            revoked = await asyncio.to_thread(client.revoke, token)  # on the first node
            assert revoked.status == 200
            code, took = await closed_within(ws, LIMIT)
        assert code == 4401
        assert took <= LIMIT, took
        await asyncio.wait_for(up.done.wait(), 5)
        assert up.closed_with[-1][0] == 4401  # the upstream was told too


async def test_leaving_the_allowlist_closes_a_websocket(
    stack: OAuthStack, rdb: redis.Redis
) -> None:
    async with WsUpstream().serving() as up:
        protect(rdb, f"http://127.0.0.1:{up.port}")
        await asyncio.to_thread(
            wait_for,
            lambda: request_via(stack.edge.http_port, "GET", f"http://{HOST}/").status == 401,
        )
        token, _ = await token_for(stack, stack.edge.http_port)
        async with ws_to(stack.edge.http_port, token) as ws:
            assert await asyncio.wait_for(ws.recv(), 5) == "welcome"
            protect(rdb, f"http://127.0.0.1:{up.port}", auth_required_users=["bob"])
            code, took = await closed_within(ws, LIMIT)
        assert code == 4401 and took <= LIMIT, (code, took)
        live = stack.edge.health()["background"]["live-access"]
        assert live["state"] == "running" and live["withdrawn"] == 1


async def test_a_revocation_ends_an_sse_stream_on_another_node(
    stack: OAuthStack, rdb: redis.Redis
) -> None:
    async with SseUpstream().serving() as up:
        protect(rdb, up.url)
        other = stack.node()
        await asyncio.to_thread(
            wait_for,
            lambda: request_via(other.http_port, "GET", f"http://{HOST}/").status == 401,
        )
        token, client = await token_for(stack, other.http_port)
        reader, writer = await asyncio.open_connection("127.0.0.1", other.http_port)
        writer.write(
            f"GET /events HTTP/1.1\r\nHost: {HOST}:{other.http_port}\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
        first = await asyncio.wait_for(reader.read(4096), 5)
        assert b"data: " in first
        await asyncio.sleep(1.0)  # streaming on, through re-checks
        assert b"data: " in await asyncio.wait_for(reader.read(65536), 5)
        revoked = await asyncio.to_thread(client.revoke, token)
        assert revoked.status == 200
        started = time.monotonic()
        rest = b""
        async with asyncio.timeout(LIMIT + 3):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                rest += data
                if rest.endswith(b"0\r\n\r\n"):
                    break  # ended cleanly, at a chunk boundary
        took = time.monotonic() - started
        writer.close()
        assert rest.endswith(b"0\r\n\r\n"), rest[-40:]
        assert took <= LIMIT, took
        await asyncio.to_thread(wait_for, lambda: up.ended >= 1, 5)

