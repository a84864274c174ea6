"""ServerConnection must put the same bytes on the wire as stock h11, only faster."""

from __future__ import annotations

import h11
import pytest

from edge.http1.h11compat import ServerConnection, full_items

CASES = [
    # (request, response status, response headers, body)
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200, [(b"Content-Length", b"2")], b"ok"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200, [(b"X-A", b"1")], b"streamed"),
    (b"GET / HTTP/1.0\r\n\r\n", 200, [(b"X-A", b"1")], b"until close"),
    (b"GET / HTTP/1.0\r\n\r\n", 200, [(b"Content-Length", b"2")], b"ok"),
    (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", 200, [(b"Content-Length", b"10")], b""),
    (b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", 200, [(b"X-A", b"1")], b""),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 204, [(b"X-A", b"1")], b""),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 304, [(b"ETag", b'"x"')], b""),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 200,
     [(b"Content-Length", b"2")], b"ok"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 200,
     [(b"Content-Length", b"2"), (b"Connection", b"close")], b"ok"),
]  # fmt: skip


def _exchange(conn: h11.Connection, request: bytes, status: int,
              headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:  # fmt: skip
    conn.receive_data(request)
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    out = conn.send(h11.Response(status_code=status, headers=headers, _parsed=True)) or b""
    if body:
        out += conn.send(h11.Data(data=body)) or b""
    out += conn.send(h11.EndOfMessage()) or b""
    return out


@pytest.mark.parametrize(("request_bytes", "status", "headers", "body"), CASES)
def test_same_bytes_and_states_as_stock_h11(
    request_bytes: bytes, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    stock = h11.Connection(h11.SERVER)
    fast = ServerConnection(65536)
    assert _exchange(fast, request_bytes, status, headers, body) == _exchange(
        stock, request_bytes, status, headers, body
    )
    assert (fast.our_state, fast.their_state) == (stock.our_state, stock.their_state)


def test_full_items_matches_iteration() -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Mixed-Case: v\r\n\r\n")
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    assert [(n, v) for _, n, v in full_items(request.headers)] == list(request.headers)
    assert [r for r, _, _ in full_items(request.headers)] == [b"Host", b"X-Mixed-Case"]
    plain = [(b"A", b"1")]
    assert full_items(plain) == [(b"A", b"a", b"1")]
