"""The h11 subclasses must put the same bytes on the wire, and parse the same events, as
stock h11, only faster."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from typing import Any

import h11
import pytest
from h11._headers import Headers
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.h11compat import (
    ClientConnection,
    ServerConnection,
    full_items,
    read_request_head,
    read_response_head,
)

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


# --- head parsing: the fast readers must be indistinguishable from h11's ---------------------

Outcome = list[tuple[Any, ...]]


def _describe(event: object) -> tuple[Any, ...]:
    """Everything observable about an event: its type, each field with its type, raw headers."""
    if not dataclasses.is_dataclass(event):
        return ("sentinel", repr(event))
    fields: list[tuple[Any, ...]] = []
    for field in dataclasses.fields(event):
        value = getattr(event, field.name)
        if isinstance(value, Headers):
            fields.append((field.name, value.raw_items(), list(value), value._full_items))
        else:
            fields.append((field.name, type(value), value))
    return (type(event).__name__, *fields)


def _drain(conn: h11.Connection, outcome: Outcome) -> bool:
    """Collect events until h11 wants data; False once it raised (recorded in ``outcome``)."""
    while True:
        try:
            event = conn.next_event()
        except h11.ProtocolError as exc:
            outcome.append(("error", type(exc), str(exc), exc.error_status_hint))
            return False
        outcome.append(_describe(event))
        if event is h11.NEED_DATA or event is h11.PAUSED or type(event) is h11.ConnectionClosed:
            return True


def _run(conn: h11.Connection, chunks: Iterable[bytes], close: bool = True) -> Outcome:
    outcome: Outcome = []
    alive = True
    for chunk in chunks:
        conn.receive_data(chunk)
        alive = _drain(conn, outcome)
        if not alive:
            break
    if alive and close and conn.their_state is not h11.PAUSED:
        conn.receive_data(b"")
        _drain(conn, outcome)
    outcome.append(("end", dict(conn.states), conn.their_http_version, conn.trailing_data))
    return outcome


def _splits(data: bytes, mode: str) -> list[bytes]:
    if mode == "whole":
        return [data]
    return [data[i : i + 1] for i in range(len(data))]


def _server_pair() -> tuple[h11.Connection, h11.Connection]:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=400), ServerConnection(400)


def _client_pair(method: bytes = b"GET") -> tuple[h11.Connection, h11.Connection]:
    stock = h11.Connection(h11.CLIENT, max_incomplete_event_size=400)
    fast = ClientConnection(max_incomplete_event_size=400)
    for conn in (stock, fast):
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"Host", b"a")]))
        conn.send(h11.EndOfMessage())
    return stock, fast


def _assert_same_requests(chunks: list[bytes]) -> Outcome:
    stock, fast = _server_pair()
    expected = _run(stock, chunks)
    assert _run(fast, chunks) == expected
    return expected


def _assert_same_responses(chunks: list[bytes], method: bytes = b"GET") -> Outcome:
    stock, fast = _client_pair(method)
    expected = _run(stock, chunks)
    assert _run(fast, chunks) == expected
    return expected


R = b"GET / HTTP/1.1\r\nHost: a\r\n"
REQUEST_HEADS = [
    b"GET /small HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: v\r\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHOST:\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: 1\r\n Host: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n\tHost: a\r\nHost: a\r\n\r\n",
    R + b"X: a\r\n  b\r\n\tc \r\n \r\nY: d\r\n\r\n",
    R + b"X:\r\n folded-into-empty\r\n\r\n",
    R + b"X:\r\nY:   \r\nZ:\t\r\n\r\n",
    R + b"X:\tv\t\r\nY:    v   w  \r\nZ:v\r\n\r\n",
    R + b"X: a\x00b\r\n\r\n",
    R + b"X: a\rb\r\n\r\n",
    R + b"X: \x01\x7f\x80\xff caf\xc3\xa9\r\n\r\n",
    R + b"X\x80: v\r\n\r\n",
    R + b"X : v\r\n\r\n",
    R + b"NoColon\r\n\r\n",
    R + b": v\r\n\r\n",
    R + b"X: ok\r\nbad line\r\nContent-Length: x\r\n\r\n",
    R + b"Content-Length: x\r\nbad line\r\n\r\n",
    R + b"Content-Length: 5\r\n\r\nhello",
    R + b"content-length: 0\r\n\r\n",
    R + b"Content-Length: 5, 5\r\n\r\nhello",
    R + b"Content-Length: 5 ,5,  5\r\n\r\nhello",
    R + b"Content-Length: 5, 6\r\n\r\nhello",
    R + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    R + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    R + b"Content-Length: 5\r\nX: 1\r\nContent-Length: 05\r\n\r\nhello",
    R + b"Content-Length: abc\r\n\r\n",
    R + b"Content-Length:\r\n\r\n",
    R + b"Content-Length: +5\r\n\r\n",
    R + b"Content-Length: -1\r\n\r\n",
    R + b"Content-Length: 5 5\r\n\r\n",
    R + b"Content-Length: \xd9\xa5\r\n\r\n",
    R + b"Content-Length: 00000000000000000003\r\n\r\nabc",
    R + b"Content-Length: 000000000000000000003\r\n\r\nabc",
    R + b"Content-Length: 99999999999999999999\r\n\r\n",
    R + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    R + b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
    R + b"transfer-encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    R + b"Transfer-Encoding: gzip, chunked\r\n\r\n",
    R + b"Transfer-Encoding: identity\r\n\r\n",
    R + b"Transfer-Encoding:\r\n\r\n",
    R + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    R + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    R + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    R + b"Transfer-Encoding: chunked\r\n  , gzip\r\n\r\n",
    R + b"Content-Length: 3\r\n 4\r\n\r\n",
    R + b"Content-Length: 3\r\nX: 1\r\n  y\r\nContent-Length: 4\r\n\r\n",
    R + b"Connection: close\r\n\r\n",
    R + b"Expect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
    R + b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"get /lower HTTP/1.1\r\nHost: a\r\n\r\n",
    b"M-SEARCH * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"OPTIONS * HTTP/1.0\r\n\r\n",
    b"GET http://a/b?c=d#e HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\x80 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"G\xc3\x89T / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    b"GET /\tx HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/11\r\nHost: a\r\n\r\n",
    b"GET / http/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\n",
    b"GET /\r\n\r\n",
    b"GET\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b" GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"\x00\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 500 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: partial",
    b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 500,
    b"",
]

S = b"HTTP/1.1 200 OK\r\n"
RESPONSE_HEADS = [
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
    S + b"Content-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200  Very\tOdd  reason \x80\xff\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\x00\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\nContent-Length: 0\n\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 199 X\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 099 Too Low\r\n\r\n",
    b"HTTP/1.1 000\r\n\r\n",
    b"HTTP/1.1 099 X\r\nbad line\r\n\r\n",
    b"HTTP/1.1 099 X\r\nContent-Length: 1, 2\r\n\r\n",
    b"HTTP/1.1 999 Max\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
    b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 20x OK\r\n\r\n",
    b"HTTP/2 200 OK\r\n\r\n",
    b"http/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n",
    b"HTTP/1.1 200OK\r\n\r\n",
    b"\r\nHTTP/1.1 200 OK\r\n\r\n",
    b"\x00HTTP/1.1 200 OK\r\n\r\n",
    b" HTTP/1.1 200 OK\r\n\r\n",
    S + b"Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nTrailer: t\r\n\r\n",
    S + b"Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    S + b"Transfer-Encoding: gzip\r\n\r\n",
    S + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
    S + b"Transfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n0\r\n\r\n",
    S + b"Content-Length: 2, 2\r\n\r\nok",
    S + b"Content-Length: 2,3\r\n\r\nok",
    S + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    S + b"Content-Length: 2\r\ncontent-length: 3\r\n\r\nok",
    S + b"Content-Length: 123456789012345678901\r\n\r\n",
    S + b"Content-Length: 0x10\r\n\r\n",
    S + b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nSet-Cookie: c=\x013\r\n\r\n",
    S + b"X-Folded: a\r\n b\r\n\t c\r\nContent-Length: 0\r\n\r\n",
    S + b" X-Leading: fold\r\n\r\n",
    S + b"Host: a\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
    S + b"X:\r\nY:  \t \r\nContent-Length: 0\r\n\r\n",
    S + b"X y: z\r\n\r\n",
    S + b"X: \x00\r\n\r\n",
    S + b"X:" + b"v" * 500 + b"\r\n\r\n",
    S + b"Content-Length: 0\r\n",
    b"HTTP/1.1 200 OK",
    b"",
]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("data", REQUEST_HEADS)
def test_request_heads_parse_like_stock_h11(data: bytes, mode: str) -> None:
    _assert_same_requests(_splits(data, mode))


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("data", RESPONSE_HEADS)
def test_response_heads_parse_like_stock_h11(data: bytes, mode: str) -> None:
    _assert_same_responses(_splits(data, mode))


@pytest.mark.parametrize("data", RESPONSE_HEADS[:12])
def test_response_heads_after_head_request_and_before_any_request(data: bytes) -> None:
    _assert_same_responses([data], method=b"HEAD")
    # h11 reads responses with the same reader before a request went out (state IDLE)
    stock, fast = h11.Connection(h11.CLIENT), ClientConnection()
    assert _run(fast, [data]) == _run(stock, [data])


def test_corpus_covers_fast_and_fallback_paths() -> None:
    """The corpus exercises successes, h11's fallbacks and each error message."""
    messages = set()
    kinds = set()
    for data in REQUEST_HEADS:
        for item in _assert_same_requests([data]):
            kinds.add(item[0])
            if item[0] == "error":
                messages.add(item[2].split(":")[0])
    for data in RESPONSE_HEADS:
        for item in _assert_same_responses([data]):
            kinds.add(item[0])
            if item[0] == "error":
                messages.add(item[2].split(":")[0])
    assert {"Request", "Response", "InformationalResponse", "Data", "EndOfMessage"} <= kinds
    assert {
        "illegal request line",
        "illegal status line",
        "illegal header line",
        "no request line received",
        "no response line received",
        "continuation line at start of headers",
        "conflicting Content-Length headers",
        "bad Content-Length",
        "multiple Transfer-Encoding headers",
        "Only Transfer-Encoding",
        "Missing mandatory Host",
        "Found multiple Host",
        "InformationalResponse status_code should be in range [100, 200), not 99",
        "Receive buffer too long",
    } <= messages


def test_fast_readers_are_installed() -> None:
    server = ServerConnection(100)
    assert server._reader is read_request_head
    client = ClientConnection()
    assert client.our_role is h11.CLIENT
    assert client._reader is read_response_head  # server IDLE: same slot kind in h11
    client.send(h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"a")]))
    assert client.their_state is h11.SEND_RESPONSE
    assert client._reader is read_response_head


def test_grammar_assumptions_behind_the_shortcuts() -> None:
    """The shortcuts rely on these facts about h11's grammar; fail loudly if h11 changes."""
    from h11 import _abnf, _events, _readers

    assert _readers.header_field_re.groupindex == {"field_name": 1, "field_value": 2}
    assert _readers.request_line_re.groupindex == {"method": 1, "target": 2, "http_version": 3}
    assert _readers.status_line_re.groupindex == {
        "http_version": 1,
        "status_code": 2,
        "reason": 3,
    }
    assert _abnf.field_name == _abnf.token
    assert " " not in _abnf.token and "\\t" not in _abnf.token  # a field line never folds
    assert _events.method_re.pattern == _abnf.method.encode() == _abnf.token.encode()
    assert _events.request_target_re.pattern == _abnf.request_target.encode()
    assert f"(?P<method>{_abnf.method}) (?P<target>{_abnf.request_target}) " in (_abnf.request_line)
    assert _abnf.status_line.startswith(_abnf.http_version + " (?P<status_code>[0-9]{3})")
    assert _readers.READERS[(h11.CLIENT, h11.IDLE)] is _readers.maybe_read_from_IDLE_client
    assert (
        _readers.READERS[(h11.SERVER, h11.SEND_RESPONSE)]
        is _readers.maybe_read_from_SEND_RESPONSE_server
    )


def test_keep_alive_cycles_through_both_roles() -> None:
    """Client and server, both fast, talk over three requests on one connection."""
    client, server = ClientConnection(), ServerConnection(16384)
    for i in range(3):
        wire = client.send(h11.Request(method=b"POST", target=f"/{i}", headers=[
            (b"Host", b"a"), (b"Content-Length", b"2")]))  # fmt: skip
        wire += client.send(h11.Data(data=b"hi")) + client.send(h11.EndOfMessage())
        server.receive_data(wire)
        request = server.next_event()
        assert isinstance(request, h11.Request)
        assert request.target == f"/{i}".encode()
        assert request.headers.raw_items() == [(b"Host", b"a"), (b"Content-Length", b"2")]
        assert server.next_event() == h11.Data(data=b"hi")
        assert type(server.next_event()) is h11.EndOfMessage
        body = b"chunk" * i
        wire = server.send(h11.Response(status_code=200, headers=[(b"X-I", str(i))]))
        wire += server.send(h11.Data(data=body)) if body else b""
        wire += server.send(h11.EndOfMessage())
        client.receive_data(wire)
        response = client.next_event()
        assert isinstance(response, h11.Response)
        assert response.status_code == 200
        assert response.headers.raw_items() == [
            (b"X-I", str(i).encode()),
            (b"Transfer-Encoding", b"chunked"),
        ]
        received = b""
        while type(event := client.next_event()) is h11.Data:
            received += event.data
        assert received == body
        assert type(event) is h11.EndOfMessage
        assert client.states == server.states == {h11.CLIENT: h11.DONE, h11.SERVER: h11.DONE}
        client.start_next_cycle()
        server.start_next_cycle()
        assert client._reader is read_response_head
        assert server._reader is read_request_head


# hypothesis: heads assembled from plausible pieces plus garbage

_GARBAGE = st.binary(max_size=6)


def _mostly(usual: list[bytes], odd: list[bytes]) -> st.SearchStrategy[bytes]:
    """Nine draws in ten from ``usual``; otherwise an ``odd`` piece or random bytes."""
    unusual = st.one_of(st.sampled_from(odd), _GARBAGE)
    return st.integers(0, 9).flatmap(lambda n: unusual if n == 0 else st.sampled_from(usual))


_EOL = _mostly([b"\r\n", b"\r\n", b"\n"], [b"\r\r\n", b"\r", b"\n\r"])
_SP = _mostly([b" "], [b"  ", b"\t", b""])
_METHOD = _mostly([b"GET", b"POST", b"HEAD", b"OPTIONS", b"get"], [b"M-SEARCH", b"G\xc3\x89T", b""])
_TARGET = _mostly([b"/", b"/a?b=c", b"*", b"http://a/b"], [b"/\x80", b"/\x7f", b""])
_VERSION = _mostly([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"], [b"HTTP/2", b"http/1.1", b"HTTP/1."])
_STATUS = _mostly([b"200", b"204", b"304", b"404", b"100", b"101"], [b"099", b"999", b"20"])
_REASON = _mostly([b"OK", b"", b"Not Found"], [b"\tx \x80", b"a\x00", b"  "])
_NAME = _mostly(
    [b"Host", b"host", b"Content-Length", b"Transfer-Encoding", b"X-A", b"Accept", b"Set-Cookie"],
    [b"", b"X A", b"X\x80", b" X"],
)
_COLON = _mostly([b": ", b":"], [b" :", b":\t", b":  ", b""])
_VALUE = st.one_of(
    _mostly([b"a", b"5", b"05", b"chunked", b"", b"*/*", b"a b"], [b"5, 5", b"5,6", b"Chunked"]),
    st.from_regex(rb"\A[0-9]{1,22}\Z"),
)


@st.composite
def _header_lines(draw: st.DrawFn) -> bytes:
    out = b""
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["field"] * 8 + ["fold", "garbage"]))
        if kind == "field":
            line = draw(_NAME) + draw(_COLON) + draw(_VALUE) + draw(_mostly([b""], [b" ", b"\t"]))
        elif kind == "fold":
            line = draw(st.sampled_from([b" ", b"\t", b"  \t"])) + draw(_VALUE)
        else:
            line = draw(_GARBAGE)
        out += line + draw(_EOL)
    return out + draw(_mostly([b"\r\n", b"\n"], [b"", b"\r\n\r\n", b"\r"]))


@st.composite
def _request_heads(draw: st.DrawFn) -> bytes:
    line = draw(_METHOD) + draw(_SP) + draw(_TARGET) + draw(_SP) + draw(_VERSION)
    return draw(_mostly([b""], [b" ", b"\r\n"])) + line + draw(_EOL) + draw(_header_lines())


@st.composite
def _response_heads(draw: st.DrawFn) -> bytes:
    line = draw(_VERSION) + draw(_SP) + draw(_STATUS)
    line += draw(_mostly([b" "], [b""])) + draw(_REASON)
    return draw(_mostly([b""], [b" ", b"\r\n"])) + line + draw(_EOL) + draw(_header_lines())


def _chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


_BODY = st.sampled_from([b"", b"hello", b"0\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"])
_CUTS = st.lists(st.integers(0, 200), max_size=6)


@settings(max_examples=400, deadline=None)
@given(st.one_of(_request_heads(), st.binary(max_size=60)), _BODY, _CUTS)
def test_random_request_heads_parse_like_stock_h11(
    head: bytes, body: bytes, cuts: list[int]
) -> None:
    _assert_same_requests(_chunked(head + body, cuts))


@settings(max_examples=400, deadline=None)
@given(st.one_of(_response_heads(), st.binary(max_size=60)), _BODY, _CUTS)
def test_random_response_heads_parse_like_stock_h11(
    head: bytes, body: bytes, cuts: list[int]
) -> None:
    _assert_same_responses(_chunked(head + body, cuts))


def test_outgoing_request_equals_the_constructor() -> None:
    from edge.h11compat import outgoing_request

    pairs = [
        (b"Host", b"app.test"),
        (b"Content-Length", b"12"),
        (b"X-Mixed-Case", b"v"),
    ]
    triples = [(raw, raw.lower(), value) for raw, value in pairs]
    built = outgoing_request(b"POST", b"/p?q=1", triples)
    stock = h11.Request(method=b"POST", target=b"/p?q=1", headers=pairs, _parsed=True)
    assert built == stock
    assert built.headers.raw_items() == stock.headers.raw_items()
    client = h11.Connection(h11.CLIENT)
    other = h11.Connection(h11.CLIENT)
    assert client.send(built) == other.send(stock)


def test_target_base_path_is_ascii_on_the_wire() -> None:
    from edge.routing.target import parse_target

    assert parse_target("http://127.0.0.1:8080/caf\u00e9/x/").base_path == "/caf%C3%A9/x"
    assert parse_target("http://127.0.0.1:8080/a%20b").base_path == "/a%20b"


def test_outgoing_response_equals_the_constructor() -> None:
    from edge.h11compat import outgoing_response

    pairs = [(b"Content-Length", b"2"), (b"X-Mixed-Case", b"v"), (b"Via", b"1.1 edge")]
    built = outgoing_response(200, b"OK", [(raw, raw.lower(), value) for raw, value in pairs])
    stock = h11.Response(status_code=200, headers=pairs, reason=b"OK", _parsed=True)
    assert built == stock
    assert built.headers.raw_items() == stock.headers.raw_items()
    wires = []
    for conn in (ServerConnection(65536), h11.Connection(h11.SERVER)):
        conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        conn.next_event()
        conn.next_event()
        wires.append(conn.send(built if isinstance(conn, ServerConnection) else stock))
    assert wires[0] == wires[1]


def _drive_pair(
    server: h11.Connection, client: h11.Connection, body_parts: list[bytes], chunked: bool
) -> list[object]:
    """Send a request with a streamed body and a streamed response; record every step."""
    trace: list[object] = []
    framing = (
        (b"Transfer-Encoding", b"chunked")
        if chunked
        else (b"Content-Length", str(sum(map(len, body_parts))).encode())
    )
    head = h11.Request(
        method=b"POST",
        target=b"/",
        headers=[(b"Host", b"a"), framing, (b"Expect", b"100-continue")],
    )
    wire = client.send(head) or b""
    server.receive_data(wire)
    trace.append((type(server.next_event()), server.they_are_waiting_for_100_continue))
    for part in body_parts:
        data = client.send(h11.Data(data=part)) or b""
        trace.append((data, client.our_state, client.their_state))
        server.receive_data(data)
        event = server.next_event()
        trace.append(
            (
                type(event),
                getattr(event, "data", None),
                server.their_state,
                server.they_are_waiting_for_100_continue,
            )
        )
    server.receive_data(client.send(h11.EndOfMessage()) or b"")
    trace.append((type(server.next_event()), server.their_state))
    out = server.send(h11.Response(status_code=200, headers=[framing])) or b""
    for part in body_parts:
        out += server.send(h11.Data(data=part)) or b""
        trace.append((server.our_state, server.their_state))
    out += server.send(h11.EndOfMessage()) or b""
    client.receive_data(out)
    while True:
        event = client.next_event()
        trace.append((type(event), getattr(event, "data", None), client.their_state))
        if type(event) is h11.EndOfMessage:
            break
    trace.append(out)
    return trace  # fmt: skip


@pytest.mark.parametrize("chunked", [False, True])
def test_data_events_skip_no_state_change(chunked: bool) -> None:
    parts = [b"abc", b"", b"defgh", b"i" * 5000]
    parts = [p for p in parts if p]
    fast = _drive_pair(ServerConnection(65536), ClientConnection(), parts, chunked)
    stock = _drive_pair(h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT), parts, chunked)
    assert fast == stock


def test_data_in_the_wrong_state_fails_like_h11() -> None:
    errors = []
    for conn in (ClientConnection(), h11.Connection(h11.CLIENT)):
        with pytest.raises(h11.LocalProtocolError) as info:
            conn.send(h11.Data(data=b"x"))
        errors.append(str(info.value))
    assert errors[0] == errors[1]


# the state machine: the fast paths in ``_FastHeads._process_event`` and
# ``start_next_cycle`` against h11's own code, one conversation at a time

_HEAD_FIELDS = st.lists(
    st.sampled_from(
        [
            (b"Connection", b"close"),
            (b"Connection", b"keep-alive"),
            (b"Connection", b"Keep-Alive, Upgrade"),
            (b"Connection", b"x, CLOSE"),
            (b"Upgrade", b"websocket"),
            (b"Expect", b"100-continue"),
            (b"Expect", b"100-Continue, x"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"3"),
            (b"Content-Length", b"0"),
            (b"X-A", b"close"),
        ]
    ),
    max_size=4,
)


def _io_name(io: object) -> object:
    """A reader or writer, named so that the fast head readers match h11's own."""
    if io is read_request_head:
        return "read request head"
    if io is read_response_head:
        return "read response head"
    if getattr(io, "__name__", "") in ("maybe_read_from_IDLE_client",):
        return "read request head"
    if getattr(io, "__name__", "") in ("maybe_read_from_SEND_RESPONSE_server",):
        return "read response head"
    if hasattr(io, "__dict__") and not callable(getattr(io, "__name__", None)):
        if not isinstance(io, type) and not hasattr(io, "__code__"):
            return (type(io).__name__, dict(vars(io)))
    return io


def _machine(conn: h11.Connection) -> tuple[object, ...]:
    cstate = conn._cstate
    return (
        dict(cstate.states),
        cstate.keep_alive,
        set(cstate.pending_switch_proposals),
        conn._request_method,
        conn.their_http_version,
        conn.client_is_waiting_for_100_continue,
        _io_name(conn._reader),
        _io_name(conn._writer),
    )


def _step(conn: h11.Connection, action: str, event: Any) -> object:
    try:
        if action == "send":
            out = conn.send(event)
        elif action == "receive":
            conn.receive_data(event)
            out = []
            while True:
                got = conn.next_event()
                out.append(_describe(got))
                if got is h11.NEED_DATA or got is h11.PAUSED or type(got) is h11.ConnectionClosed:
                    break
        else:
            out = conn.start_next_cycle()
    except Exception as exc:  # h11 itself raises AttributeError for one misuse
        out = ("error", type(exc), str(exc))
    return out, _machine(conn)


@st.composite
def _conversations(draw: st.DrawFn) -> list[tuple[str, str, Any]]:
    """Two request/response cycles as (side, action, payload) steps, sometimes out of order."""
    steps: list[tuple[str, str, Any]] = []
    for _ in range(2):
        method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"CONNECT"]))
        version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
        headers = [(b"Host", b"a"), *draw(_HEAD_FIELDS)]
        try:
            request = h11.Request(
                method=method, target=b"a:1" if method == b"CONNECT" else b"/",
                headers=headers, http_version=version,
            )  # fmt: skip
        except h11.LocalProtocolError:
            continue
        steps.append(("client", "send", request))
        if draw(st.booleans()):
            steps.append(("client", "send", h11.Data(data=b"abc")))
        steps.append(("client", "send", h11.EndOfMessage()))
        for _ in range(draw(st.integers(0, 1))):
            status = draw(st.sampled_from([100, 101]))
            steps.append(("server", "send", h11.InformationalResponse(
                status_code=status, headers=[(b"Upgrade", b"websocket")] if status == 101 else [],
            )))  # fmt: skip
        status = draw(st.sampled_from([200, 200, 204, 304, 404]))
        try:
            response = h11.Response(status_code=status, headers=draw(_HEAD_FIELDS))
        except h11.LocalProtocolError:
            continue
        steps.append(("server", "send", response))
        if draw(st.booleans()):
            steps.append(("server", "send", h11.Data(data=b"xyz")))
        steps.append(("server", "send", h11.EndOfMessage()))
        steps.append(("both", "cycle", None))
    return steps


def _converse(server: h11.Connection, client: h11.Connection, steps: list[Any]) -> list[object]:
    trace: list[object] = []
    for side, action, payload in steps:
        if action == "cycle":
            trace.append(_step(client, "cycle", None))
            trace.append(_step(server, "cycle", None))
            continue
        sender, receiver = (client, server) if side == "client" else (server, client)
        out, machine = _step(sender, "send", payload)
        trace.append((out, machine))
        if isinstance(out, bytes) and out:  # b"" would mean end of stream
            trace.append(_step(receiver, "receive", out))
    return trace


@settings(max_examples=500, deadline=None)
@given(_conversations())
def test_state_machine_fast_paths_match_stock_h11(steps: list[Any]) -> None:
    stock = _converse(h11.Connection(h11.SERVER), h11.Connection(h11.CLIENT), steps)
    fast = _converse(ServerConnection(16384), ClientConnection(), steps)
    assert fast == stock


def test_state_machine_fast_paths_are_taken() -> None:
    """The ordinary exchange must not fall back to h11's ``_process_event``."""
    calls = []
    original = h11.Connection._process_event

    def spy(self: h11.Connection, role: Any, event: Any) -> None:
        calls.append(type(event).__name__)
        original(self, role, event)

    server, client = ServerConnection(16384), ClientConnection()
    h11.Connection._process_event = spy  # type: ignore[method-assign]
    try:
        for _ in range(2):
            wire = client.send(h11.Request(method=b"GET", target=b"/", headers=[(b"Host", b"a")]))
            assert client.send(h11.EndOfMessage()) == b""
            server.receive_data(wire or b"")
            assert type(server.next_event()) is h11.Request
            assert type(server.next_event()) is h11.EndOfMessage
            head = server.send(h11.Response(status_code=200, headers=[(b"Content-Length", b"2")]))
            body = server.send(h11.Data(data=b"ok"))
            server.send(h11.EndOfMessage())
            client.receive_data((head or b"") + (body or b""))
            assert [type(client.next_event()) for _ in range(3)] == [
                h11.Response, h11.Data, h11.EndOfMessage,
            ]  # fmt: skip
            server.start_next_cycle()
            client.start_next_cycle()
    finally:
        h11.Connection._process_event = original  # type: ignore[method-assign]
    assert calls == []
