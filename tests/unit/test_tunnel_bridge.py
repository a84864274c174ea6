"""The tunnel's sans-IO WebSocket end, against a real wsproto client.

The client is wsproto's own ``Connection(CLIENT)`` (masking, fragmenting, answering pings,
closing as a library does); what the bridge sends it is parsed back by it, so a frame the
bridge gets wrong fails there. Every conversation is fed to the bridge whole, byte by
byte, and in uneven pieces, and data after the close is fed too.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Iterator

import h11
import pytest
import wsproto
from wsproto.connection import Connection, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from edge.tunnels.bridge import (
    MESSAGE_TOO_BIG,
    NORMAL,
    PROTOCOL_ERROR,
    TICKET_INVALID,
    TUNNEL_SUBPROTOCOL,
    UNSUPPORTED_DATA,
    Actions,
    BadHandshake,
    Bridge,
    Phase,
    binary_frame,
    parse_handshake,
)

Feed = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i : i + 1]


def uneven(data: bytes) -> Iterator[bytes]:
    rng = random.Random(len(data))
    at = 0
    while at < len(data):
        step = rng.randint(1, 300)
        yield data[at : at + step]
        at += step


FEEDS = [whole, bytewise, uneven]


class Merged:
    """Every Actions of one input fed in pieces, added up."""

    def __init__(self) -> None:
        self.to_target = b""
        self.to_client = b""
        self.eof_to_target = 0
        self.close_target = False
        self.done = False
        self.closed: list[int] = []

    def add(self, out: Actions) -> None:
        assert not (self.done and (out.to_target or out.to_client)), out
        self.to_target += out.to_target
        self.to_client += out.to_client
        self.eof_to_target += out.eof_to_target
        self.close_target |= out.close_target
        self.done |= out.done
        if out.closed is not None:
            self.closed.append(out.closed)


class Pair:
    """A bridge and the wsproto client facing it."""

    def __init__(self, feed: Feed, max_message: int = 1 << 20, half_close: bool = False) -> None:
        self.feed = feed
        self.bridge = Bridge(max_message, half_close)
        self.client = Connection(ConnectionType.CLIENT)
        self._partial = bytearray()

    def send(self, *events: Event) -> Merged:
        """The client sends ``events``; what the bridge made of them."""
        data = b"".join(self.client.send(event) for event in events)
        return self.deliver(data)

    def deliver(self, data: bytes) -> Merged:
        merged = Merged()
        for piece in self.feed(data):
            merged.add(self.bridge.from_client(piece))
        return merged

    def receive(self, data: bytes) -> list[Event]:
        """The client reads ``data`` from the bridge: its events, each message whole
        (wsproto hands out the pieces of a frame as they arrive)."""
        events: list[Event] = []
        for piece in self.feed(data):
            self.client.receive_data(piece)
            for event in self.client.events():
                if isinstance(event, BytesMessage):
                    self._partial += event.data
                    if event.message_finished:
                        events.append(BytesMessage(bytes(self._partial)))
                        self._partial = bytearray()
                else:
                    events.append(event)
        assert not self._partial
        return events


def messages(events: list[Event]) -> bytes:
    assert all(isinstance(e, BytesMessage) for e in events), events
    return b"".join(bytes(e.data) for e in events if isinstance(e, Message))


@pytest.fixture(params=FEEDS, ids=lambda f: f.__name__)
def feed(request: pytest.FixtureRequest) -> Feed:
    return request.param  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- data


def test_binary_messages_reach_the_target_in_order(feed: Feed) -> None:
    pair = Pair(feed)
    payloads = [b"a", b"", bytes(range(256)) * 300, b"z" * 65536, b"tail"]
    out = pair.send(*(BytesMessage(p) for p in payloads))
    assert out.to_target == b"".join(payloads)
    assert not out.to_client and not out.close_target and not out.eof_to_target


def test_a_fragmented_message_with_a_ping_between_its_fragments(feed: Feed) -> None:
    pair = Pair(feed)
    out = pair.send(
        BytesMessage(b"first ", message_finished=False),
        Ping(b"hi"),
        BytesMessage(b"second", message_finished=True),
    )
    assert out.to_target == b"first second"
    [pong] = pair.receive(out.to_client)
    assert pong == Pong(b"hi")


def test_target_bytes_reach_the_client_as_binary_messages(feed: Feed) -> None:
    pair = Pair(feed, max_message=70000)
    sent = b""
    received: list[Event] = []
    for size in (1, 125, 126, 65535, 65536, 70000, 150001):
        data = bytes(random.Random(size).randbytes(size))
        sent += data
        received += pair.receive(pair.bridge.from_target(data))
    assert messages(received) == sent
    # a read larger than max_message goes out as several messages, none above it
    assert max(len(e.data) for e in received if isinstance(e, BytesMessage)) == 70000
    assert len(received) == 9


def test_binary_frame_lengths_match_wsproto() -> None:
    server = wsproto.frame_protocol.FrameProtocol(client=False, extensions=[])
    for size in (0, 1, 125, 126, 127, 65535, 65536, 70000):
        payload = b"p" * size
        assert binary_frame(payload) == bytes(server.send_data(payload))


# ---------------------------------------------------------------------------- limits


def test_a_message_of_max_message_passes_one_byte_more_closes_1009(feed: Feed) -> None:
    pair = Pair(feed, max_message=1024)
    out = pair.send(BytesMessage(b"x" * 1024))
    assert out.to_target == b"x" * 1024 and not out.closed
    # the next message, in three frames: the cap counts across frames
    out = pair.send(
        BytesMessage(b"y" * 500, message_finished=False),
        BytesMessage(b"y" * 500, message_finished=False),
        BytesMessage(b"y" * 25, message_finished=True),
    )
    assert out.closed == [MESSAGE_TOO_BIG]
    assert out.close_target and not out.done
    assert len(out.to_target) <= 1024  # at most what came before the limit
    [close] = pair.receive(out.to_client)
    assert isinstance(close, CloseConnection) and close.code == MESSAGE_TOO_BIG
    # the client answers: the handshake is complete, the socket may close
    out = pair.send(close.response())
    assert out.done and not out.to_target
    assert pair.bridge.phase is Phase.CLOSED


def test_a_single_frame_over_the_cap_closes_before_its_end_arrives() -> None:
    pair = Pair(whole, max_message=1024)
    frame = pair.client.send(BytesMessage(b"z" * 100_000))
    out = pair.deliver(frame[:2000])  # the header and the first 1990 bytes only
    assert out.closed == [MESSAGE_TOO_BIG]


def test_text_closes_1003(feed: Feed) -> None:
    pair = Pair(feed)
    out = pair.send(BytesMessage(b"ok"), TextMessage("no text here"))
    assert out.to_target == b"ok"
    assert out.closed == [UNSUPPORTED_DATA] and out.close_target
    [close] = pair.receive(out.to_client)
    assert isinstance(close, CloseConnection) and close.code == UNSUPPORTED_DATA


def test_an_unmasked_frame_fails_the_connection(feed: Feed) -> None:
    pair = Pair(feed)
    out = pair.deliver(binary_frame(b"servers do not get unmasked frames"))
    assert out.closed == [PROTOCOL_ERROR]
    assert out.done and out.close_target  # no Close can be parsed any more: close now
    [close] = pair.receive(out.to_client)
    assert isinstance(close, CloseConnection) and close.code == PROTOCOL_ERROR
    assert not pair.deliver(b"more garbage").to_client


# ---------------------------------------------------------------------------- ping/pong


def test_pings_are_answered_and_our_pings_need_their_pong(feed: Feed) -> None:
    pair = Pair(feed)
    assert not pair.bridge.pong_overdue
    [ping] = pair.receive(pair.bridge.ping())
    assert isinstance(ping, Ping)
    assert pair.bridge.pong_overdue
    out = pair.send(Pong(b"not the payload"))
    assert pair.bridge.pong_overdue
    out = pair.send(ping.response())
    assert not pair.bridge.pong_overdue and not out.to_client
    # a newer ping forgets the older one: only its own pong counts
    [first] = pair.receive(pair.bridge.ping())
    [second] = pair.receive(pair.bridge.ping())
    assert isinstance(first, Ping) and isinstance(second, Ping)
    pair.send(first.response())
    assert pair.bridge.pong_overdue
    pair.send(second.response())
    assert not pair.bridge.pong_overdue


def test_a_client_that_pings_without_reading_is_owed_one_pong(feed: Feed) -> None:
    pair = Pair(feed)
    assert pair.bridge.client_writable(False) == b""
    out = pair.send(*(Ping(str(i).encode()) for i in range(1000)))
    assert out.to_client == b""  # nothing piles up for a client that does not read
    assert pair.receive(pair.bridge.client_writable(True)) == [Pong(b"999")]
    assert pair.bridge.client_writable(True) == b""  # owed once


# ---------------------------------------------------------------------------- closing


def test_the_client_closes_its_code_is_echoed_and_the_target_closed(feed: Feed) -> None:
    pair = Pair(feed)
    out = pair.send(BytesMessage(b"last words"), CloseConnection(4321, "bye"))
    assert out.to_target == b"last words"
    assert out.close_target and out.done and out.closed == [4321]
    [close] = pair.receive(out.to_client)
    assert isinstance(close, CloseConnection) and close.code == 4321
    assert pair.bridge.from_target(b"too late") == b""


def test_a_close_without_a_code_is_answered_without_one(feed: Feed) -> None:
    pair = Pair(feed)
    out = pair.send(CloseConnection(CloseReason.NO_STATUS_RCVD))
    assert out.done
    [close] = pair.receive(out.to_client)
    assert isinstance(close, CloseConnection) and close.code == 1005


def test_data_after_the_close_is_dropped(feed: Feed) -> None:
    pair = Pair(feed)
    out = pair.send(CloseConnection(NORMAL))
    assert out.done
    # a misbehaving peer goes on: frames, then garbage; nothing reaches either side
    late = Connection(ConnectionType.CLIENT).send(BytesMessage(b"ghost")) + b"\x00garbage"
    out = pair.deliver(late)
    assert not out.to_target and not out.to_client and not out.closed


def test_bytes_behind_the_close_frame_in_the_same_read_are_dropped(feed: Feed) -> None:
    pair = Pair(feed)
    data = pair.client.send(CloseConnection(NORMAL)) + binary_frame(b"after close")
    out = pair.deliver(data)
    assert out.done and not out.to_target


def test_our_close_drops_data_until_the_client_answers(feed: Feed) -> None:
    pair = Pair(feed)
    out_close = pair.bridge.close(TICKET_INVALID, "revoked")
    assert out_close.close_target and out_close.closed == TICKET_INVALID
    [close] = pair.receive(out_close.to_client)
    assert isinstance(close, CloseConnection) and close.code == TICKET_INVALID
    assert pair.bridge.close(1001).to_client == b""  # one Close only
    assert pair.bridge.ping() == b""
    # frames that crossed our Close are dropped; the client's Close completes the handshake
    out = pair.deliver(bytes(Connection(ConnectionType.CLIENT).send(BytesMessage(b"crossed"))))
    assert not out.to_target and not out.done
    out = pair.send(close.response())
    assert out.done and not out.to_target and not out.to_client


def test_an_eof_without_close_closes_everything() -> None:
    pair = Pair(whole)
    out = pair.bridge.client_eof()
    assert out.done and out.close_target and out.closed == 1006
    assert not pair.bridge.client_eof().done  # once


# ---------------------------------------------------------------------------- half-close


def test_without_the_subprotocol_an_empty_message_is_nothing_and_eof_closes(feed: Feed) -> None:
    pair = Pair(feed)
    out = pair.send(BytesMessage(b""), BytesMessage(b"still open"))
    assert out.to_target == b"still open" and not out.eof_to_target
    out_eof = pair.bridge.target_eof()
    assert out_eof.close_target and out_eof.closed == NORMAL
    [close] = pair.receive(out_eof.to_client)
    assert isinstance(close, CloseConnection) and close.code == NORMAL


@pytest.mark.parametrize("client_first", [True, False])
def test_half_close_each_way_then_close_1000(feed: Feed, client_first: bool) -> None:
    pair = Pair(feed, half_close=True)

    def client_ends() -> Merged:
        out = pair.send(BytesMessage(b"request"), BytesMessage(b""))
        assert out.to_target == b"request" and out.eof_to_target == 1
        return out

    def target_ends() -> Actions:
        answer = pair.bridge.from_target(b"response")
        out = pair.bridge.target_eof()
        events = pair.receive(answer + out.to_client)
        assert [type(e) for e in events[:2]] == [BytesMessage, BytesMessage]
        assert [bytes(e.data) for e in events[:2] if isinstance(e, BytesMessage)] == [
            b"response",
            b"",
        ]
        return out

    if client_first:
        first = client_ends()
        assert not first.closed
        # the target still answers after the client's end: half-close, not close
        last = target_ends()
        assert last.closed == NORMAL and last.close_target
    else:
        first_t = target_ends()
        assert not first_t.closed and not first_t.close_target
        # and the client still sends after the target's end
        merged = client_ends()
        assert merged.closed == [NORMAL] and merged.close_target
        close = next(e for e in pair.receive(merged.to_client) if isinstance(e, CloseConnection))
        assert close.code == NORMAL
    assert pair.bridge.phase is Phase.CLOSING
    out = pair.send(CloseConnection(NORMAL))
    assert out.done


def test_bytes_after_the_clients_end_are_a_protocol_error(feed: Feed) -> None:
    pair = Pair(feed, half_close=True)
    out = pair.send(BytesMessage(b""), BytesMessage(b""), BytesMessage(b"more"))
    assert out.eof_to_target == 1  # a second empty message is no second end
    assert out.closed == [PROTOCOL_ERROR]


# ---------------------------------------------------------------------------- handshake


def upgrade_request(
    subprotocols: list[str], extensions: bool = False
) -> tuple[h11.Request, h11.Connection, wsproto.WSConnection]:
    """A real wsproto client's opening handshake, parsed by h11 as the edge does."""
    client = wsproto.WSConnection(ConnectionType.CLIENT)
    offers = [PerMessageDeflate()] if extensions else []
    data = client.send(
        Request(
            host="edge.test",
            target="/port-forward/databases/db_1?ticket=x",
            subprotocols=subprotocols,
            extensions=offers,
        )
    )
    server = h11.Connection(h11.SERVER)
    server.receive_data(data)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    return request, server, client


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [([], None), (["other"], None), (["other", TUNNEL_SUBPROTOCOL], TUNNEL_SUBPROTOCOL)],
)
def test_a_real_client_accepts_our_101(offered: list[str], chosen: str | None) -> None:
    request, server, client = upgrade_request(offered, extensions=True)
    handshake = parse_handshake(request.method, request.http_version, request.headers)
    assert handshake.subprotocol == chosen
    response = h11.InformationalResponse(status_code=101, headers=handshake.accept_headers())
    client.receive_data(server.send(response))
    [accepted] = list(client.events())
    assert isinstance(accepted, AcceptConnection)
    assert accepted.subprotocol == chosen
    assert accepted.extensions == []  # per-message deflate was offered, never taken


def test_the_accept_value_of_rfc_6455() -> None:
    handshake = parse_handshake(
        b"GET",
        b"1.1",
        [
            (b"upgrade", b"websocket"),
            (b"connection", b"keep-alive, Upgrade"),
            (b"sec-websocket-version", b"13"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    assert (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in handshake.accept_headers()


GOOD = {
    b"upgrade": b"WebSocket",
    b"connection": b"Upgrade",
    b"sec-websocket-version": b"13",
    b"sec-websocket-key": base64.b64encode(b"0123456789abcdef"),
}


@pytest.mark.parametrize(
    ("method", "version", "change", "status"),
    [
        (b"GET", b"1.1", {b"upgrade": None}, 426),
        (b"POST", b"1.1", {}, 400),
        (b"GET", b"1.0", {}, 400),
        (b"GET", b"1.1", {b"upgrade": b"h2c"}, 400),
        (b"GET", b"1.1", {b"connection": b"keep-alive"}, 400),
        (b"GET", b"1.1", {b"connection": None}, 400),
        (b"GET", b"1.1", {b"sec-websocket-version": b"8"}, 426),
        (b"GET", b"1.1", {b"sec-websocket-version": None}, 426),
        (b"GET", b"1.1", {b"sec-websocket-key": None}, 400),
        (b"GET", b"1.1", {b"sec-websocket-key": base64.b64encode(b"short")}, 400),
        (b"GET", b"1.1", {b"sec-websocket-key": b"!" * 24}, 400),
    ],
)
def test_what_is_not_a_websocket_handshake(
    method: bytes, version: bytes, change: dict[bytes, bytes | None], status: int
) -> None:
    fields = {**GOOD, **change}
    headers = [(name, value) for name, value in fields.items() if value is not None]
    with pytest.raises(BadHandshake) as info:
        parse_handshake(method, version, headers)
    assert info.value.status == status
    if status == 426:
        assert (b"upgrade", b"websocket") in info.value.headers
    if change.get(b"sec-websocket-version", b"13") != b"13":
        assert (b"sec-websocket-version", b"13") in info.value.headers


def test_two_keys_are_refused() -> None:
    headers = [*GOOD.items(), (b"sec-websocket-key", GOOD[b"sec-websocket-key"])]
    with pytest.raises(BadHandshake):
        parse_handshake(b"GET", b"1.1", headers)
