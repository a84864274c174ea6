"""The few places where the edge reaches into h11 internals, for speed, in one module.

h11 re-validates every response header with regular expressions when a server sends a
response (``_clean_up_response_headers_for_sending`` rebuilds the event without
``_parsed=True``), although a proxy's response headers come straight out of h11's own
parser. ``ServerConnection`` skips that rebuild when it would change nothing, and falls
back to h11's code otherwise. Iterating ``h11.Headers`` goes through
``Sequence.__iter__`` (one ``__getitem__`` call per header); ``items()`` reads the
underlying list directly. The pin ``h11>=0.16,<0.17`` in pyproject keeps these in step;
``tests/unit/test_h11compat.py`` checks that the bytes on the wire are the same as stock
h11's.
"""

from __future__ import annotations

from collections.abc import Sequence

import h11
from h11._connection import _body_framing
from h11._headers import Headers

# events are immutable: one EndOfMessage serves every message (saves its construction)
END_OF_MESSAGE = h11.EndOfMessage()

_CHUNKED = (b"Transfer-Encoding", b"transfer-encoding", b"chunked")


def full_items(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes, bytes]]:
    """(raw name, lowercased name, value) triples of an h11 ``Headers``, without copying."""
    full = getattr(headers, "_full_items", None)
    if full is None:
        return [(name, name.lower(), value) for name, value in headers]
    return full  # type: ignore[no-any-return]


class ServerConnection(h11.Connection):
    """``h11.Connection(h11.SERVER)`` without the redundant re-validation of responses."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)

    def _clean_up_response_headers_for_sending(self, response: h11.Response) -> h11.Response:
        if not self._cstate.keep_alive:
            return super()._clean_up_response_headers_for_sending(response)
        method = self._request_method or b"GET"
        framing, _ = _body_framing(b"GET" if method == b"HEAD" else method, response)
        if framing == "content-length":
            return response  # h11 would rebuild it unchanged
        version = self.their_http_version
        if framing == "http/1.0" and version is not None and version >= b"1.1":
            # no length and no Transfer-Encoding: h11 would add chunked; so do we
            full = [*response.headers._full_items, _CHUNKED]
            return h11.Response(
                headers=Headers(full),
                status_code=response.status_code,
                http_version=response.http_version,
                reason=response.reason,
                _parsed=True,
            )
        return super()._clean_up_response_headers_for_sending(response)
