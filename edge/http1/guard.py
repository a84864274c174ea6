"""Hard limits and anti-smuggling checks on a request head, before h11 parses it.

h11's size limit is soft (it is only checked while a head is incomplete, so one large
read can pass more) and h11 accepts forms a careful proxy must refuse (RFC 9112 §2.2
bare LF, §5.2 obs-fold). ``HeadGuard`` is sans-IO: feed it the bytes of one request head
as they arrive, in any segmentation; it raises a ``ClientError`` as soon as a limit trips
and ignores everything after the blank line that ends the head.
"""

from __future__ import annotations

import enum

from edge.errors import ClientError, HeadersTooLarge, RequestLineTooLong


class _State(enum.Enum):
    REQUEST_LINE = enum.auto()
    HEADERS = enum.auto()
    DONE = enum.auto()


class HeadGuard:
    """Scan one request head; ``reset()`` before the next one."""

    __slots__ = (
        "_count",
        "_header_bytes",
        "_last_cr",
        "_line_len",
        "_max_count",
        "_max_header_bytes",
        "_max_line",
        "_state",
    )

    def __init__(self, max_request_line: int, max_header_bytes: int, max_header_count: int):
        self._max_line = max_request_line
        self._max_header_bytes = max_header_bytes
        self._max_count = max_header_count
        self.reset()

    def reset(self) -> None:
        self._state = _State.REQUEST_LINE
        self._line_len = 0  # bytes of the current, unterminated line (LF not yet seen)
        self._last_cr = False  # the previous byte fed was CR
        self._header_bytes = 0
        self._count = 0

    @property
    def fresh(self) -> bool:
        """Nothing of this head seen yet (empty lines before it do not count)."""
        return self._state is _State.REQUEST_LINE and self._line_len == 0

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes) -> None:
        """Check the next bytes of the head; raise ``ClientError`` on a violation."""
        if self._state is _State.DONE or not data:
            return
        if self._state is _State.REQUEST_LINE and self._line_len == 0 and self._fast(data):
            return
        self._slow(data)

    def _fast(self, data: bytes) -> bool:
        """Whole head in one buffer (the common case): count with C-speed bytes methods."""
        if data[:1] in (b"\r", b"\n"):
            return False
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        stop = end + 4
        line_end = data.find(b"\n", 0, stop)
        lines = data.count(b"\n", 0, stop)
        if lines != data.count(b"\r\n", 0, stop):
            raise ClientError("bare LF in request head", public_message="bare LF line ending")
        if line_end - 1 > self._max_line:
            raise RequestLineTooLong(f"request line of {line_end - 1} bytes")
        if data.find(b"\n ", 0, stop) >= 0 or data.find(b"\n\t", 0, stop) >= 0:
            raise ClientError("obs-fold in request head", public_message="obsolete line folding")
        if lines - 2 > self._max_count:
            raise HeadersTooLarge(f"{lines - 2} header fields")
        if end + 2 - (line_end + 1) > self._max_header_bytes:
            raise HeadersTooLarge(f"{end + 2 - (line_end + 1)} header bytes")
        self._state = _State.DONE
        return True

    def _slow(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._partial(data, pos, size)
                return
            # a complete line: data[pos:nl] plus whatever was pending from earlier feeds
            if nl > pos:
                has_cr = data[nl - 1] == 13
                if self._line_len == 0:
                    self._line_start(data[pos])
            else:
                has_cr = self._last_cr
            if not has_cr:
                raise ClientError("bare LF in request head", public_message="bare LF line ending")
            length = self._line_len + (nl - pos) - 1  # without CR
            self._line_len = 0
            self._last_cr = False
            pos = nl + 1
            if self._end_line(length):
                return

    def _partial(self, data: bytes, pos: int, size: int) -> None:
        if self._line_len == 0:
            self._line_start(data[pos])
        self._line_len += size - pos
        self._last_cr = data[size - 1] == 13
        if self._state is _State.REQUEST_LINE:
            if self._line_len - 1 > self._max_line:
                raise RequestLineTooLong(f"request line over {self._max_line} bytes")
        else:
            # a trailing CR may be this line's terminator (or, alone, the blank line that
            # ends the head): it is not counted until its LF shows which
            pending = self._line_len - 1 if self._last_cr else self._line_len
            if self._header_bytes + pending > self._max_header_bytes:
                raise HeadersTooLarge(f"header section over {self._max_header_bytes} bytes")

    def _line_start(self, first: int) -> None:
        if self._state is _State.HEADERS and first in (32, 9):
            raise ClientError("obs-fold in request head", public_message="obsolete line folding")

    def _end_line(self, length: int) -> bool:
        """Account for one finished line; True once the head is complete."""
        if self._state is _State.REQUEST_LINE:
            if length == 0:
                return False  # RFC 9112 §2.2: ignore empty lines before the request line
            if length > self._max_line:
                raise RequestLineTooLong(f"request line of {length} bytes")
            self._state = _State.HEADERS
            return False
        if length == 0:
            self._state = _State.DONE
            return True
        self._count += 1
        self._header_bytes += length + 2
        if self._count > self._max_count:
            raise HeadersTooLarge(f"more than {self._max_count} header fields")
        if self._header_bytes > self._max_header_bytes:
            raise HeadersTooLarge(f"header section over {self._max_header_bytes} bytes")
        return False
