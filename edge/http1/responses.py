"""Responses the edge itself writes: cached Date, error bodies with a request id."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

import msgspec

from edge.errors import EdgeError

SERVER_NAME = b"edge"
_json = msgspec.json.Encoder()


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


def _snake(phrase: str) -> str:
    return phrase.lower().replace("-", "_").replace(" ", "_").replace("'", "")


# every status gets a stable snake_case code (RFC 9110 reason phrase); a few are shorter
_CODES: dict[int, str] = {s.value: _snake(s.phrase) for s in HTTPStatus}
_CODES.update({414: "uri_too_long", 500: "internal_error"})


REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def error_body(error: EdgeError, request_id: str) -> bytes:
    """JSON body of an error response: public message and request id, never exception text."""
    return (
        _json.encode(
            {
                "error": {
                    "code": _CODES.get(error.status, str(error.status)),
                    "message": error.public_message,
                    "request_id": request_id,
                }
            }
        )
        + b"\n"
    )


def simple_headers(content_type: bytes, length: int, request_id: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"date", DATE.get()),
        (b"server", SERVER_NAME),
        (b"content-type", content_type),
        (b"content-length", str(length).encode()),
        (b"x-request-id", request_id.encode()),
    ]
