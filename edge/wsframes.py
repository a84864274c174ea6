"""WebSocket frames passing through a tunnel: where they end, and the edge's own close.

A WebSocket passed through to an upstream is a byte tunnel: the edge neither parses nor
re-frames messages. To end one on drain the way the protocol wants (RFC 6455 §7.1.2,
close code 1001 "going away", §7.4.1), the edge must still know where each frame ends in
each direction, since a Close frame may only go between frames, never inside one (§5.4:
control frames may come between the fragments of a message, not within a frame). Both
classes here are sans-IO: bytes in, bytes out, no socket and no clock.

* ``FrameTracker`` follows one direction: the 2..14-byte frame headers (§5.2) and the
  payload lengths they announce, and counts the Close frames that went by.
* ``WebSocketTunnel`` holds both directions. Until ``going_away()`` every byte goes on
  untouched; after it, each direction gets a Close 1001 at its next frame boundary
  (unmasked to the client, masked to the upstream, §5.3), unless a Close already went
  that way, and whatever that peer sends after our Close is dropped (§5.5.1: nothing
  follows a Close) while still being watched for its own Close. ``finished`` says when
  both closing handshakes are complete and both sockets may close.
"""

from __future__ import annotations

import os

__all__ = [
    "GOING_AWAY",
    "OP_CLOSE",
    "FrameTracker",
    "WebSocketTunnel",
    "close_frame",
]

OP_CLOSE = 0x8
GOING_AWAY = 1001  # RFC 6455 §7.4.1: "an endpoint is going away, such as a server going down"


def close_frame(code: int, mask: bytes | None = None) -> bytes:
    """A Close frame carrying ``code`` and no reason; masked with ``mask`` (4 bytes) for
    the client-to-server direction (§5.3), unmasked from the server."""
    payload = code.to_bytes(2, "big")
    if mask is None:
        return bytes((0x80 | OP_CLOSE, len(payload))) + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | OP_CLOSE, 0x80 | len(payload))) + mask + masked


class FrameTracker:
    """Frame boundaries in one direction of a WebSocket connection (RFC 6455 §5.2).

    ``feed`` follows the bytes as they pass; the payload is skipped by length, so a large
    frame costs the same as a small one. Nothing is validated beyond what framing needs:
    the endpoints do that, and a frame this does not understand only delays the close.
    """

    __slots__ = ("_head", "_opcode", "_remaining", "closes")

    def __init__(self) -> None:
        self._head = b""  # the start of a frame header that is not complete yet
        self._remaining = 0  # payload bytes of the current frame still to pass
        self._opcode = 0
        self.closes = 0  # Close frames that went by whole

    @property
    def at_boundary(self) -> bool:
        """Between two frames: a frame may be inserted here."""
        return not self._head and not self._remaining

    def feed(self, data: bytes, stop_at_boundary: bool = False) -> int:
        """Follow ``data``; return how many of its bytes were taken: all of them, or with
        ``stop_at_boundary`` only those up to the first frame boundary (0 if the stream
        is at one already)."""
        pos = 0
        end = len(data)
        while pos < end:
            if self._remaining:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._frame_end()
                    if stop_at_boundary:
                        return pos
                continue
            if stop_at_boundary and not self._head:
                return pos
            pos = self._header(data, pos)
            if stop_at_boundary and self.at_boundary:
                return pos  # a frame without payload ended with its header
        return pos

    def _header(self, data: bytes, pos: int) -> int:
        """Take header bytes from ``data[pos:]``; the new position."""
        held = len(self._head)
        head = self._head + data[pos : pos + 14 - held] if held else data[pos : pos + 14]
        if len(head) < 2:
            self._head = head
            return pos + len(head) - held
        length = head[1] & 0x7F
        size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 * (head[1] >> 7))
        if len(head) < size:
            self._head = head
            return pos + len(head) - held
        if length == 126:
            length = int.from_bytes(head[2:4], "big")
        elif length == 127:
            length = int.from_bytes(head[2:10], "big")
        self._head = b""
        self._opcode = head[0] & 0x0F
        self._remaining = length
        if not length:
            self._frame_end()
        return pos + size - held

    def _frame_end(self) -> None:
        if self._opcode == OP_CLOSE:
            self.closes += 1


class _Way:
    """One direction of the tunnel."""

    __slots__ = ("closed", "masked", "tracker")

    def __init__(self, masked: bool) -> None:
        self.tracker = FrameTracker()
        self.masked = masked  # client to server: frames are masked (§5.3)
        self.closed = False  # our Close went this way


class WebSocketTunnel:
    """Both directions of a WebSocket passed through, and the edge's own close.

    ``from_client`` and ``from_upstream`` take what one peer sent and return what goes on
    to the other; ``going_away`` returns the Close frames to write at once (to the client,
    to the upstream), empty for a direction that is inside a frame: its Close then goes
    out with the bytes that end the frame.
    """

    __slots__ = ("_closing", "_code", "_down", "_up")

    def __init__(self) -> None:
        self._up = _Way(masked=True)  # what the client sends
        self._down = _Way(masked=False)  # what the upstream sends
        self._closing = False
        self._code = GOING_AWAY

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def finished(self) -> bool:
        """Both peers sent their Close after the edge began closing: each also got one
        (ours, or the other peer's that went by first), so both handshakes are complete."""
        return self._closing and self._up.tracker.closes > 0 and self._down.tracker.closes > 0

    def going_away(self, code: int = GOING_AWAY) -> tuple[bytes, bytes]:
        """Start closing with ``code`` (1001, or 4401 when the client's access was
        withdrawn): the frames to write now, (to the client, to the upstream)."""
        if self._closing:
            return b"", b""
        self._closing = True
        self._code = code
        return self._pass(self._down, b""), self._pass(self._up, b"")

    def from_client(self, data: bytes) -> bytes:
        """What the client sent: the bytes for the upstream."""
        return self._pass(self._up, data)

    def from_upstream(self, data: bytes) -> bytes:
        """What the upstream sent: the bytes for the client."""
        return self._pass(self._down, data)

    def _pass(self, way: _Way, data: bytes) -> bytes:
        tracker = way.tracker
        if not self._closing:
            tracker.feed(data)
            return data
        if way.closed:
            tracker.feed(data)  # watched for the peer's Close, dropped: ours went before
            return b""
        if tracker.closes:
            tracker.feed(data)  # the peer's own Close went by first: nothing to add
            return data
        taken = tracker.feed(data, stop_at_boundary=True)
        if not tracker.at_boundary or tracker.closes:
            # inside a frame (it goes on whole; the Close follows its end), or the frame
            # that just ended was the peer's own Close
            tracker.feed(data[taken:])
            return data
        way.closed = True
        tracker.feed(data[taken:])
        mask = os.urandom(4) if way.masked else None
        return data[:taken] + close_frame(self._code, mask)
