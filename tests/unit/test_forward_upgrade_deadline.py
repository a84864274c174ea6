"""``edge forward``'s upgrade deadline ends only a tunnel still waiting for its 101.

The edge may answer the upgrade before :meth:`Tunnel.run` is called (the 101 is read by the
loop as soon as it arrives, between ``connect()`` and ``run()``); the deadline armed by
``run()`` then must not be armed at all, or it ends the open tunnel mid-transfer.
"""

from __future__ import annotations

import asyncio

from websockets.server import ServerProtocol

from edge.client.ticket import Endpoint
from edge.client.wstunnel import Tunnel


class Answering(asyncio.Protocol):
    """A WebSocket server that accepts the upgrade at once, then stays silent."""

    def __init__(self) -> None:
        self.ws = ServerProtocol(subprotocols=["edge-tunnel.v1"])  # type: ignore[list-item]
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for request in self.ws.events_received():
            self.ws.send_response(self.ws.accept(request))  # type: ignore[arg-type]
        assert self.transport is not None
        for chunk in self.ws.data_to_send():
            self.transport.write(chunk)


async def test_a_101_before_run_arms_no_upgrade_deadline() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answering, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        tunnel = Tunnel(timeout=0.3, on_local=lambda _t: None)
        await tunnel.connect(
            Endpoint(f"http://127.0.0.1:{port}", False, "127.0.0.1", port, ""),
            "/port-forward/resources/r_1?ticket=x&port=1",
        )
        for _ in range(100):  # the 101 arrives before run() is called
            if tunnel.accepted:
                break
            await asyncio.sleep(0.01)
        assert tunnel.accepted
        running = asyncio.ensure_future(tunnel.run())
        done, _ = await asyncio.wait([running], timeout=1.0)  # three times the deadline
        assert not done, running.result()  # still open: no deadline ended it
        tunnel.stop()
        ending = await asyncio.wait_for(running, 5)
        assert ending.problem is None or "upgrade" not in ending.problem
    finally:
        server.close()
        await server.wait_closed()
