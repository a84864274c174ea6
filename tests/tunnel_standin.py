"""A test stand-in for the edge's port-forward side, written with the ``websockets`` library.

It speaks what ``edge forward`` expects of an edge: ``POST /port-forward/ticket`` (a
bearer token, a JSON body, ``{"ticket", "websocket_path", "expires_in"}`` or the API's
error document) and ``GET /port-forward/{resources|databases}/{id}?ticket=...`` upgraded
to a WebSocket by websockets' own sans-IO server (an implementation independent of the
client's wsproto), bridged to a TCP target on loopback with the ``edge-tunnel.v1``
half-close. It is not the edge: the tests that use it check the client against the
protocol; the same tests run against the real edge where it serves tunnels.

``tls``: an SSLContext makes it an ``https://`` edge (``wss://`` tunnels).

Knobs: ``refuse[target_id] = status`` answers the ticket request with that status;
``close_with = code`` answers the upgrade with 101 then that Close; ``forget_tickets``
accepts no ticket (4010); ``half_close = False`` does not echo the subprotocol; ``ping``
sends a Ping right after the 101 and counts the Pongs in ``pongs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import threading
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

SUBPROTOCOL = Subprotocol("edge-tunnel.v1")
_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


class TunnelStandIn:
    """The stand-in server on ``127.0.0.1:port``, run by a thread with its own loop."""

    def __init__(
        self, port: int, token: str, target_port: int, tls: ssl.SSLContext | None = None
    ) -> None:
        self.port = port
        self.tls = tls
        self.token = token
        self.target_port = target_port
        self.refuse: dict[str, int] = {}
        self.close_with: int | None = None
        self.forget_tickets = False
        self.half_close = True
        self.ping = False
        self.pongs = 0
        self.ticket_requests = 0
        self.upgrades = 0
        self.subprotocols: list[str | None] = []
        self._tickets: dict[str, str] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> TunnelStandIn:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._main(ready))
            except BaseException as exc:  # pragma: no cover - shown by start()
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.tls)
        ready.set()
        async with server:
            await self._stop.wait()

    # ------------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"POST "):
                await self._ticket(head, reader, writer)
            else:
                await self._tunnel(head, reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _answer(self, writer: asyncio.StreamWriter, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        writer.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )

    async def _ticket(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.ticket_requests += 1
        lines = head.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        body = json.loads(await reader.readexactly(int(fields.get("content-length", "0"))))
        if lines[0].split()[1] != "/port-forward/ticket":
            self._answer(
                writer, 404, {"error": {"code": "not_found", "message": "no such endpoint"}}
            )
        elif fields.get("authorization") != f"Bearer {self.token}":
            self._answer(writer, 401, {"error": {"code": "unauthorized", "message": "token"}})
        elif body["target_id"] in self.refuse:
            status = self.refuse[body["target_id"]]
            error = {"code": f"refused_{status}", "message": f"the stand-in refuses ({status})"}
            self._answer(writer, status, {"error": error})
        else:
            ticket = secrets.token_urlsafe(48)[:64].replace("-", "a").replace("_", "b")
            kind = "resources" if body["target_type"] == "resource" else "databases"
            self._tickets[ticket] = body["target_id"]
            path = f"/port-forward/{kind}/{quote(body['target_id'], safe='')}?ticket={ticket}"
            if kind == "resources":
                path += f"&port={body.get('port', 0)}"
            self._answer(writer, 201, {"ticket": ticket, "websocket_path": path, "expires_in": 60})
        await writer.drain()

    # ------------------------------------------------------------------ WebSocket

    async def _tunnel(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.upgrades += 1
        ws = ServerProtocol(subprotocols=[SUBPROTOCOL] if self.half_close else None)

        def flush() -> None:
            for chunk in ws.data_to_send():
                if chunk:
                    writer.write(chunk)
                elif writer.can_write_eof():
                    writer.write_eof()

        ws.receive_data(head)
        [request] = [e for e in ws.events_received() if isinstance(e, Request)]
        ticket = parse_qs(urlsplit(request.path).query).get("ticket", [""])[0]
        known = None if self.forget_tickets else self._tickets.pop(ticket, None)
        ws.send_response(ws.accept(request))
        self.subprotocols.append(ws.subprotocol)
        if ws.state is not State.OPEN:  # not an upgrade: the answer is a refusal
            flush()
            return
        if known is None or self.close_with is not None:
            ws.send_close(4010 if known is None else self.close_with, "stand-in")
            flush()
            await self._until_closed(ws, reader, flush)
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            ws.send_close(4004, "target unreachable")
            flush()
            await self._until_closed(ws, reader, flush)
            return
        if self.ping:
            ws.send_ping(b"stand-in")
        flush()
        await self._bridge(ws, flush, (reader, writer), (target_reader, target_writer))

    async def _until_closed(
        self, ws: ServerProtocol, reader: asyncio.StreamReader, flush: Any
    ) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while ws.state is not State.CLOSED:
                    data = await reader.read(65536)
                    if not data:
                        ws.receive_eof()
                    else:
                        ws.receive_data(data)
                    ws.events_received()
                    flush()
                    if not data:
                        break

    async def _bridge(
        self,
        ws: ServerProtocol,
        flush: Any,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        (client_reader, client_writer), (target_reader, target_writer) = client, target
        half = ws.subprotocol == SUBPROTOCOL
        ended = {"client": False, "target": False}

        def both_ended() -> None:
            if ended["client"] and ended["target"] and ws.state is State.OPEN:
                ws.send_close(1000)
                flush()

        async def from_client() -> None:
            while ws.state is not State.CLOSED:
                data = await client_reader.read(65536)
                if data:
                    ws.receive_data(data)
                else:
                    ws.receive_eof()
                for frame in ws.events_received():
                    if frame.opcode in (Opcode.BINARY, Opcode.CONT):
                        if frame.data:
                            target_writer.write(frame.data)
                        elif half and frame.fin:
                            target_writer.write_eof()
                            ended["client"] = True
                            both_ended()
                    elif frame.opcode is Opcode.PONG:
                        self.pongs += 1
                    elif frame.opcode is Opcode.CLOSE:
                        target_writer.close()
                flush()
                await target_writer.drain()
                if not data:
                    return

        async def from_target() -> None:
            while ws.state is State.OPEN:
                data = await target_reader.read(65536)
                if not data:
                    if half:
                        ws.send_binary(b"")
                        ended["target"] = True
                        both_ended()
                    else:
                        ws.send_close(1000)
                    flush()
                    return
                ws.send_binary(data)
                flush()
                await client_writer.drain()

        sending = asyncio.create_task(from_target())
        try:
            await from_client()
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sending
            target_writer.close()
