"""The component tier: the edge's ``asyncio.Protocol`` shells driven in-process.

A shell (``HttpConnection``, ``UpstreamConnection``) gets a ``FakeTransport`` instead of a
socket: it records what the shell writes and whether it paused reading, half-closed,
closed or aborted, and lets the test say how much is still unsent. The other end of the
wire is a real h11 connection (``H11Peer``), so what the shell writes is parsed by stock h11
and what it reads was written by it. ``LoopClock`` moves the loop's clock by hand, so a
deadline of seconds trips in a millisecond of test. This is uvicorn's
``tests/protocols/test_http.py`` approach: a fault is reproduced without a socket.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import h11

from edge.http1.connection import HttpConnection
from edge.http1.exchange import Exchange
from edge.http1.hub import Hub
from edge.observe.accesslog import AccessRecord
from edge.settings import load_settings

PEER = ("127.0.0.1", 5000)
LOCAL = ("127.0.0.1", 80)


class FakeTransport(asyncio.Transport):
    """A transport that keeps what the shell writes and the calls it makes.

    ``unsent`` is what ``get_write_buffer_size`` reports: the test sets it to stand for a
    peer that does not take its bytes.
    """

    def __init__(self, peername: tuple[str, int] = PEER, sockname: tuple[str, int] = LOCAL):
        super().__init__()
        self.written = bytearray()
        self.unsent = 0
        self.reading = True
        self.eof_written = False
        self.closed = False
        self.aborted = False
        self._extra: dict[str, Any] = {"peername": peername, "sockname": sockname}

    def take(self) -> bytes:
        """What was written since the last ``take``."""
        data = bytes(self.written)
        self.written.clear()
        return data

    def write(self, data: Any) -> None:
        if self.eof_written:  # as asyncio's own transports
            raise RuntimeError("Cannot call write() after write_eof()")
        self.written += data

    def write_eof(self) -> None:
        self.eof_written = True

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)


class H11Peer:
    """A real h11 connection at the other end of a ``FakeTransport``.

    ``receive()`` parses what the shell wrote; ``send(...)`` returns the bytes of h11
    events, for the test to hand to the shell's ``data_received`` (whole, split, or with
    something appended).
    """

    def __init__(self, role: type[h11.CLIENT] | type[h11.SERVER], transport: FakeTransport):
        self.h11 = h11.Connection(role)
        self.transport = transport

    def receive(self) -> list[h11.Event]:
        """Every event in what the shell wrote since the last call (none if it wrote
        nothing: no bytes at all would be h11's end of stream)."""
        data = self.transport.take()
        if data:
            self.h11.receive_data(data)
        return list(self._events())

    def _events(self) -> Iterator[h11.Event]:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            yield event

    def send(self, *events: h11.Event) -> bytes:
        return b"".join(self.h11.send(event) or b"" for event in events)

    def respond(
        self, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b""
    ) -> bytes:
        """The bytes of a whole response; Content-Length is added unless framed already.
        The peer is then ready for the next request, as a keep-alive server is."""
        fields = list(headers or [])
        if not any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in fields):
            fields.append((b"Content-Length", str(len(body)).encode()))
        events: list[h11.Event] = [h11.Response(status_code=status, headers=fields)]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        data = self.send(*events)
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        return data


class LoopClock:
    """The running asyncio loop's clock, moved by hand: ``loop.time()`` reads the real
    monotonic clock plus an offset that ``advance`` grows.

    Timers (``call_at``, ``call_later``, ``asyncio.sleep``, ``asyncio.timeout``) are kept in
    loop time, so a timer due within the new time runs on the next loop pass. It needs the
    pure-Python asyncio loop, whose ``time`` is an ordinary method (uvloop's cannot be
    replaced); the component tests run on it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.offset = 0.0
        self._real = self.loop.time

    def __enter__(self) -> LoopClock:
        self.loop.time = self._now  # type: ignore[method-assign]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        del self.loop.time

    def _now(self) -> float:
        return self._real() + self.offset

    async def advance(self, seconds: float) -> None:
        """Move the clock and let the timers now due run."""
        self.offset += seconds
        for _ in range(3):  # a timer may re-arm itself once (LazyTimer waking early)
            await asyncio.sleep(0)


# ---------------------------------------------------------------------------
# a downstream client of a real HttpConnection
# ---------------------------------------------------------------------------


class Records(list[AccessRecord]):
    """An exchange observer that keeps every record (instead of the access log, which
    would write to the test's stdout)."""

    def exchange_done(self, record: AccessRecord) -> None:
        self.append(record)


def quiet_hub(**settings: Any) -> tuple[Hub, Records]:
    """A hub whose only observer keeps the records; ``settings`` override the defaults."""
    hub = Hub(load_settings({}, **settings), asyncio.get_running_loop())
    records = Records()
    hub.install_observers((records,))
    return hub, records


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Downstream:
    """A real ``HttpConnection`` on a ``FakeTransport``, with a real h11 client at the other
    end: ``send`` writes a request into ``data_received``, ``answer`` reads the whole
    response once it is on the wire (at once, or when the loop got it from an upstream or
    Redis). Keep-alive: after an answer the next request may be sent."""

    def __init__(
        self,
        hub: Hub,
        dispatch: Callable[[Exchange], None],
        scheme: str = "http",
        transport: FakeTransport | None = None,
    ) -> None:
        self.transport = transport or FakeTransport()
        self.conn = HttpConnection(hub, dispatch, scheme)
        self.conn.connection_made(self.transport)
        self.client = H11Peer(h11.CLIENT, self.transport)
        self._events: list[h11.Event] = []

    def send(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        host: str = "a.test",
    ) -> None:
        fields = [("host", host), *(headers or [])]
        if body or method in ("POST", "PUT", "PATCH"):
            fields.append(("content-length", str(len(body))))
        events: list[h11.Event] = [h11.Request(method=method, target=target, headers=fields)]
        if body:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        self.conn.data_received(self.client.send(*events))

    def ready(self) -> Answer | None:
        """The answer, if all of it was written by now."""
        self._events += self.client.receive()
        if not self._events or not isinstance(self._events[-1], h11.EndOfMessage):
            return None
        head, *rest = self._events
        self._events = []
        assert isinstance(head, h11.Response), head
        body = b"".join(event.data for event in rest if isinstance(event, h11.Data))
        h = self.client.h11
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
        return Answer(head.status_code, dict(head.headers), body)

    async def answer(self, within: float = 5.0) -> Answer:
        """The answer, waiting (real time) for the loop to deliver it."""
        deadline = time.monotonic() + within
        while (found := self.ready()) is None:
            assert time.monotonic() < deadline, f"no whole answer within {within} s"
            await asyncio.sleep(0.001)
        return found

    async def request(self, method: str, target: str, **kwargs: Any) -> Answer:
        self.send(method, target, **kwargs)
        return await self.answer()

    def close(self) -> None:
        self.conn.connection_lost(None)
