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
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import h11

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
        """Every event in what the shell wrote since the last call."""
        self.h11.receive_data(self.transport.take())
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
