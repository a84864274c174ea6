"""The WebSocket frame-boundary tracker and the edge's Close 1001, checked against wsproto.

Frames come from wsproto's own ``FrameProtocol`` (masked from a client, unmasked from a
server); what the edge emits is parsed back by a wsproto peer of the other kind, which
refuses a frame with the wrong masking. Each stream is fed whole, byte by byte, and split
at every offset inside a frame header.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

from edge.wsframes import FrameTracker, WebSocketTunnel, close_frame

# payload lengths around every header form: 7-bit, 16-bit (126) and 64-bit (127) lengths
SIZES = (0, 1, 125, 126, 127, 65535, 65536, 70000)


def frames(client: bool) -> list[bytes]:
    """A conversation's frames: data of every length form, a fragmented message with a
    ping between its fragments, and a Close at the end."""
    peer = FrameProtocol(client=client, extensions=[])
    out = [bytes(peer.send_data(b"x" * n)) for n in SIZES]
    out.append(bytes(peer.send_data("text ✓")))
    out.append(bytes(peer.send_data(b"first half", fin=False)))
    out.append(bytes(peer.ping(b"are you there")))
    out.append(bytes(peer.send_data(b"second half", fin=True)))
    out.append(bytes(peer.close(1000, "bye")))
    return out


def boundaries(parts: list[bytes]) -> set[int]:
    ends = set()
    at = 0
    for part in parts:
        at += len(part)
        ends.add(at)
    return ends


def parse(data: bytes, from_client: bool) -> list[tuple[Opcode, object]]:
    """Frames as a wsproto endpoint receiving them sees them (it checks the masking)."""
    peer = FrameProtocol(client=not from_client, extensions=[])
    peer.receive_bytes(data)
    return [(f.opcode, f.payload) for f in peer.received_frames()]


@pytest.mark.parametrize("client", [True, False], ids=["masked", "unmasked"])
def test_whole_stream(client: bool) -> None:
    parts = frames(client)
    tracker = FrameTracker()
    assert tracker.feed(b"".join(parts)) == sum(map(len, parts))
    assert tracker.at_boundary
    assert tracker.closes == 1


@pytest.mark.parametrize("client", [True, False], ids=["masked", "unmasked"])
def test_byte_by_byte(client: bool) -> None:
    parts = frames(client)
    data = b"".join(parts)
    ends = boundaries(parts)
    tracker = FrameTracker()
    seen = set()
    for i in range(len(data)):
        tracker.feed(data[i : i + 1])
        if tracker.at_boundary:
            seen.add(i + 1)
    assert seen == ends
    assert tracker.closes == 1


def header_splits(parts: list[bytes]) -> Iterator[int]:
    """Every offset inside a frame's header (and the first payload byte after it)."""
    at = 0
    for part in parts:
        for i in range(1, min(len(part), 16)):
            yield at + i
        at += len(part)


@pytest.mark.parametrize("client", [True, False], ids=["masked", "unmasked"])
def test_split_inside_every_header(client: bool) -> None:
    parts = frames(client)
    data = b"".join(parts)
    ends = boundaries(parts)
    for split in header_splits(parts):
        tracker = FrameTracker()
        tracker.feed(data[:split])
        assert tracker.at_boundary == (split in ends), split
        tracker.feed(data[split:])
        assert tracker.at_boundary and tracker.closes == 1, split


def test_stop_at_boundary_returns_the_end_of_the_current_frame() -> None:
    parts = frames(client=True)
    data = b"".join(parts)
    ends = boundaries(parts) | {0}
    tracker = FrameTracker()
    assert tracker.feed(data, stop_at_boundary=True) == 0  # at one already
    position = 0
    for start in range(0, len(data), 997):  # from many points, most inside frames
        if start < position:
            continue
        tracker.feed(data[position:start])
        position = start + tracker.feed(data[start:], stop_at_boundary=True)
        assert position == min(e for e in ends if e >= start), start
        assert tracker.at_boundary


def test_a_frame_without_payload_ends_with_its_header() -> None:
    ping = bytes(FrameProtocol(client=False, extensions=[]).ping(b""))
    tracker = FrameTracker()
    assert tracker.feed(ping + ping, stop_at_boundary=True) == 0
    tracker.feed(ping[:1])
    assert not tracker.at_boundary
    assert tracker.feed(ping[1:] + ping, stop_at_boundary=True) == len(ping) - 1


def test_close_frames_parse_as_going_away() -> None:
    assert parse(close_frame(1001), from_client=False) == [
        (Opcode.CLOSE, (CloseReason.GOING_AWAY, ""))
    ]
    assert parse(close_frame(1001, b"\x01\x02\x03\x04"), from_client=True) == [
        (Opcode.CLOSE, (CloseReason.GOING_AWAY, ""))
    ]


def test_until_going_away_bytes_pass_untouched() -> None:
    tunnel = WebSocketTunnel()
    up, down = frames(client=True), frames(client=False)
    for part in up[:-1]:
        assert tunnel.from_client(part[:3]) == part[:3]
        assert tunnel.from_client(part[3:]) == part[3:]
    for part in down[:-1]:
        assert tunnel.from_upstream(part) == part
    assert not tunnel.finished


def test_going_away_between_frames_closes_both_ways_at_once() -> None:
    tunnel = WebSocketTunnel()
    tunnel.from_client(frames(client=True)[2])
    tunnel.from_upstream(frames(client=False)[3])
    to_client, to_upstream = tunnel.going_away()
    assert parse(to_client, from_client=False) == [(Opcode.CLOSE, (CloseReason.GOING_AWAY, ""))]
    assert parse(to_upstream, from_client=True) == [(Opcode.CLOSE, (CloseReason.GOING_AWAY, ""))]
    assert tunnel.going_away() == (b"", b"")  # once
    # what the peers send after our Close is dropped; their Close answers ours
    late = bytes(FrameProtocol(client=True, extensions=[]).send_data(b"late"))
    assert tunnel.from_client(late) == b""
    assert tunnel.from_client(bytes(FrameProtocol(client=True, extensions=[]).close(1001))) == b""
    assert not tunnel.finished  # the upstream has not answered yet
    assert (
        tunnel.from_upstream(bytes(FrameProtocol(client=False, extensions=[]).close(1001))) == b""
    )
    assert tunnel.finished


@pytest.mark.parametrize("cut", [1, 2, 5, 9, 14, 500, 65000])
def test_going_away_inside_a_frame_waits_for_its_end(cut: int) -> None:
    parts = frames(client=True)
    big, after = parts[6], parts[0]  # 65536 bytes of payload, then an empty frame
    tunnel = WebSocketTunnel()
    to_upstream = bytearray(tunnel.from_client(big[:cut]))
    _, now = tunnel.going_away()
    assert now == b""  # never inside a frame
    # the rest of the frame, and a frame after it, arrive in one read
    to_upstream += tunnel.from_client(big[cut:] + after)
    # the upstream sees the frame whole, then our Close; the frame after it is dropped
    assert parse(bytes(to_upstream), from_client=True) == [
        (Opcode.BINARY, b"x" * 65536),
        (Opcode.CLOSE, (CloseReason.GOING_AWAY, "")),
    ]


def test_a_close_already_sent_by_a_peer_is_not_doubled() -> None:
    tunnel = WebSocketTunnel()
    client_close = bytes(FrameProtocol(client=True, extensions=[]).close(1000, "done"))
    assert tunnel.from_client(client_close) == client_close
    to_client, to_upstream = tunnel.going_away()
    assert to_upstream == b""  # the client's own Close went to the upstream already
    assert parse(to_client, from_client=False) == [(Opcode.CLOSE, (CloseReason.GOING_AWAY, ""))]
    # the upstream's answer to the client's Close: dropped, ours went before it
    upstream_close = bytes(FrameProtocol(client=False, extensions=[]).close(1000, "done"))
    assert tunnel.from_upstream(upstream_close) == b""
    assert tunnel.finished


def test_a_close_ending_the_frame_in_flight_is_the_peers_own() -> None:
    tunnel = WebSocketTunnel()
    upstream_close = bytes(FrameProtocol(client=False, extensions=[]).close(1000, "bye"))
    assert tunnel.from_upstream(upstream_close[:3]) == upstream_close[:3]
    to_client, _ = tunnel.going_away()
    assert to_client == b""
    # the upstream's Close completes: it goes on alone, no 1001 after it
    assert tunnel.from_upstream(upstream_close[3:]) == upstream_close[3:]
