"""The sans-IO end of an ``edge forward`` tunnel (``TunnelCore``) against the ``websockets``
library's own sans-IO server as the peer: an implementation independent of wsproto."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from edge.client.ticket import explain_status
from edge.client.wstunnel import (
    MAX_FRAME,
    SUBPROTOCOL,
    Accepted,
    Closed,
    Event,
    LocalEof,
    Rejected,
    ToLocal,
    TunnelCore,
    explain_close,
)

PATH = "/port-forward/databases/db_1?ticket=" + "t" * 64


def pieces(data: bytes, how: str) -> Iterator[bytes]:
    if how == "whole":
        yield data
    else:
        for i in range(len(data)):
            yield data[i : i + 1]


def feed(core: TunnelCore, data: bytes, how: str = "whole") -> list[Event]:
    events: list[Event] = []
    for piece in pieces(data, how):
        events += core.receive(piece)
    return events


def server_bytes(server: ServerProtocol) -> bytes:
    return b"".join(server.data_to_send())


def frames_of(server: ServerProtocol, data: bytes) -> list[Frame]:
    server.receive_data(data)
    return [e for e in server.events_received() if isinstance(e, Frame)]


def opened(how: str = "whole", subprotocol: bool = True) -> tuple[TunnelCore, ServerProtocol]:
    """A core and its peer past the handshake (the peer echoing the subprotocol or not)."""
    core = TunnelCore("edge.example.com:8443", PATH)
    server = ServerProtocol(subprotocols=[Subprotocol(SUBPROTOCOL)] if subprotocol else None)
    server.receive_data(core.data_to_send())
    [request] = server.events_received()
    assert isinstance(request, Request)
    assert request.path == PATH
    assert request.headers["Host"] == "edge.example.com:8443"
    assert request.headers["Sec-WebSocket-Protocol"] == SUBPROTOCOL
    assert "Sec-WebSocket-Extensions" not in request.headers
    assert "Authorization" not in request.headers  # the ticket is the credential
    server.send_response(server.accept(request))
    assert server.state is State.OPEN
    assert feed(core, server_bytes(server), how) == [Accepted(half_close=subprotocol)]
    assert core.open and core.half_close is subprotocol
    return core, server


@pytest.mark.parametrize("how", ["whole", "byte by byte"])
def test_the_handshake_offers_the_subprotocol_and_learns_the_answer(how: str) -> None:
    opened(how)
    opened(how, subprotocol=False)


@pytest.mark.parametrize("how", ["whole", "byte by byte"])
def test_bytes_go_out_in_binary_messages_of_at_most_64_kib(how: str) -> None:
    core, server = opened()
    data = bytes(range(256)) * 1000  # 256,000 bytes: four messages
    core.send(data)
    frames = frames_of(server, core.data_to_send())
    assert [f.opcode for f in frames] == [Opcode.BINARY] * 4
    assert all(f.fin and len(f.data) <= MAX_FRAME for f in frames)
    assert b"".join(f.data for f in frames) == data
    server.send_binary(data)
    events = feed(core, server_bytes(server), how)
    assert all(isinstance(e, ToLocal) for e in events)
    assert b"".join(e.data for e in events if isinstance(e, ToLocal)) == data


@pytest.mark.parametrize("size", [1, 125, 126, 127, 65535, 65536, 65537, 300_000])
def test_every_length_form_of_a_data_frame_reads_back(size: int) -> None:
    """7-bit, 16-bit and 64-bit lengths (RFC 6455 section 5.2), each masked with its own
    key: the independent peer reads back exactly the bytes sent."""
    core, server = opened()
    data = os.urandom(size)
    core.send(data)
    chunks = core.chunks_to_send()
    frames = frames_of(server, b"".join(chunks))
    assert [len(f.data) for f in frames] == [
        min(MAX_FRAME, size - start) for start in range(0, size, MAX_FRAME)
    ]
    assert b"".join(f.data for f in frames) == data
    keys = {bytes(chunks[i][-4:]) for i in range(0, len(chunks), 2)}  # each header's key
    assert len(keys) == len(frames)


def test_half_close_both_ways_is_an_empty_message() -> None:
    core, server = opened()
    core.send_eof()
    [frame] = frames_of(server, core.data_to_send())
    assert (frame.opcode, frame.data, frame.fin) == (Opcode.BINARY, b"", True)
    assert core.open  # the other way still flows
    server.send_binary(b"answer")
    server.send_binary(b"")
    assert feed(core, server_bytes(server)) == [ToLocal(b"answer"), LocalEof.EOF]
    server.send_close(1000)
    assert feed(core, server_bytes(server)) == [Closed(1000, "", ours=False)]
    [echo] = frames_of(server, core.data_to_send())
    assert echo.opcode is Opcode.CLOSE and server.close_rcvd is not None


def test_an_empty_last_fragment_is_not_an_end() -> None:
    core, server = opened()
    server.send_binary(b"ab", fin=False)
    server.send_continuation(b"", fin=True)
    assert feed(core, server_bytes(server)) == [ToLocal(b"ab")]


def test_without_the_subprotocol_the_local_eof_closes_and_empty_messages_mean_nothing() -> None:
    core, server = opened(subprotocol=False)
    server.send_binary(b"")
    assert feed(core, server_bytes(server)) == []
    core.send_eof()
    [frame] = frames_of(server, core.data_to_send())
    assert frame.opcode is Opcode.CLOSE and server.close_rcvd is not None
    assert server.close_rcvd.code == 1000
    assert core.closing and not core.open
    core.send(b"late")  # nothing after our Close
    assert core.data_to_send() == b""
    assert feed(core, server_bytes(server)) == [Closed(1000, "client closed", ours=True)]


def test_pings_get_their_pong() -> None:
    core, server = opened()
    server.send_ping(b"numbered 7")
    assert feed(core, server_bytes(server)) == []
    [pong] = frames_of(server, core.data_to_send())
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"numbered 7")


def test_a_text_message_is_refused_with_1003() -> None:
    core, server = opened()
    server.send_text(b"hello")
    assert feed(core, server_bytes(server)) == []
    [frame] = frames_of(server, core.data_to_send())
    assert frame.opcode is Opcode.CLOSE and server.close_rcvd is not None
    assert server.close_rcvd.code == 1003


def test_a_close_right_after_the_101_is_reported_with_its_code() -> None:
    core = TunnelCore("edge", PATH)
    server = ServerProtocol(subprotocols=[Subprotocol(SUBPROTOCOL)])
    server.receive_data(core.data_to_send())
    [request] = server.events_received()
    assert isinstance(request, Request)
    server.send_response(server.accept(request))
    server.send_close(4010, "ticket")
    events = feed(core, server_bytes(server))  # one segment: the 101 and the Close
    assert events == [Accepted(True), Closed(4010, "ticket", ours=False)]
    assert frames_of(server, core.data_to_send())[0].opcode is Opcode.CLOSE
    assert explain_close(4010, "ticket").startswith("4010 ticket invalid: the ticket was missing")


@pytest.mark.parametrize("how", ["whole", "byte by byte"])
def test_an_http_refusal_of_the_upgrade_is_explained(how: str) -> None:
    core = TunnelCore("edge", PATH)
    body = json.dumps({"error": {"code": "bad_request", "message": "not a WebSocket upgrade"}})
    server = ServerProtocol()
    server.receive_data(core.data_to_send())
    server.events_received()
    server.send_response(server.reject(400, body))
    events = feed(core, server_bytes(server), how)
    assert len(events) == 1 and isinstance(events[0], Rejected)
    rejected = events[0]
    assert (rejected.status, rejected.reason) == (400, "Bad Request")
    line = explain_status(rejected.status, rejected.reason, rejected.body)
    assert line.startswith("400 bad_request: ")
    assert line.endswith("(the edge says: not a WebSocket upgrade)")
    assert core.closed and core.receive(b"more") == []


def test_a_dropped_connection_is_1006_and_a_bad_frame_1002() -> None:
    core, _ = opened()
    assert core.receive(b"") == [Closed(1006, "", ours=False)]
    core, _ = opened()
    [closed] = core.receive(bytes([0x82 | 0x70, 0]))  # reserved bits set: not a valid frame
    assert isinstance(closed, Closed) and closed.code == 1002 and not closed.ours
    assert core.data_to_send()[:1] == b"\x88"  # our Close went out


def test_a_response_that_is_not_a_websocket_answer_fails_the_tunnel() -> None:
    core = TunnelCore("edge", PATH)
    core.data_to_send()
    answer = Response(101, "Switching Protocols", Headers([("Upgrade", "websocket")]), b"")
    events = feed(core, answer.serialize())
    assert len(events) == 1 and isinstance(events[0], Closed) and events[0].code == 1002
