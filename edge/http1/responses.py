"""Pieces of the responses the edge writes itself: the cached Date, reason phrases, the
common fields.

Error bodies are :mod:`edge.http1.render`'s.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

SERVER_NAME = b"edge"


class DateCache:
    """An RFC 9110 IMF-fixdate, recomputed at most once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


DATE = DateCache()

_clock_ms = -1
_clock_text = ""


def wallclock() -> str:
    """UTC time for log lines, ISO 8601 with milliseconds, recomputed once per millisecond."""
    global _clock_ms, _clock_text
    ms = int(time.time() * 1000)
    if ms != _clock_ms:
        _clock_ms = ms
        second, milli = divmod(ms, 1000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _clock_text = f"{stamp}.{milli:03d}Z"
    return _clock_text


REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def simple_headers(content_type: bytes, length: int, request_id: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"date", DATE.get()),
        (b"server", SERVER_NAME),
        (b"content-type", content_type),
        (b"content-length", str(length).encode()),
        (b"x-request-id", request_id.encode()),
    ]
