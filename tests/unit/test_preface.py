"""The PROXY preface stage, sans-IO: header bytes in, what follows left for the next layer.

Both listener kinds feed ``Preface``: the plain one with what it read (the rest goes to
HTTP), the TLS one with what it peeked (it consumes exactly what ``feed`` says).
"""

from __future__ import annotations

import ipaddress

import pytest

from edge.net.preface import (
    Preface,
    ProxyStage,
    TrustedPeers,
    client_address,
    server_port,
)
from edge.net.proxy_protocol import ProxyProtocolError
from tests.unit.test_proxy_protocol import CLIENT_HELLO_PREFIX, HTTP_REQUEST, inet, tlv, v2

V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n"
V2 = v2(addresses=inet("192.0.2.7", "198.51.100.1", 40000, 443), tlvs=tlv(0x05, b"req-1"))
HEADERS = {"v1": V1, "v2": V2}


def read_all(preface: Preface, chunks: list[bytes]) -> bytes:
    """Feed ``chunks`` as reads arrive; return what follows the header."""
    for i, chunk in enumerate(chunks):
        used = preface.feed(chunk)
        if preface.header is not None:
            return chunk[used:] + b"".join(chunks[i + 1 :])
        assert used == len(chunk)
    raise AssertionError("header never completed")


@pytest.mark.parametrize("name", HEADERS)
@pytest.mark.parametrize("rest", [b"", HTTP_REQUEST, CLIENT_HELLO_PREFIX])
def test_whole_and_with_what_follows(name: str, rest: bytes) -> None:
    header = HEADERS[name]
    preface = Preface()
    assert read_all(preface, [header + rest]) == rest
    assert preface.header is not None and preface.header.length == len(header)


@pytest.mark.parametrize("name", HEADERS)
def test_byte_by_byte(name: str) -> None:
    data = HEADERS[name] + HTTP_REQUEST
    preface = Preface()
    rest = read_all(preface, [data[i : i + 1] for i in range(len(data))])
    assert rest == HTTP_REQUEST
    assert preface.buffered == 0


@pytest.mark.parametrize("name", HEADERS)
def test_split_at_every_offset(name: str) -> None:
    data = HEADERS[name] + HTTP_REQUEST
    for cut in range(1, len(data)):
        preface = Preface()
        assert read_all(preface, [data[:cut], data[cut:]]) == HTTP_REQUEST, cut


def test_peeking_consumes_exactly_the_header() -> None:
    """The TLS listener's way: peek what is there, consume only what feed took."""
    kernel = V2 + CLIENT_HELLO_PREFIX
    preface = Preface()
    consumed = 0
    for size in (5, 9, 400):  # peeks as the bytes arrive; the last one sees past the header
        take = preface.feed(kernel[:size])
        kernel = kernel[take:]
        consumed += take
        if preface.header is None:
            assert take == size and preface.buffered == consumed  # a prefix: all taken
    assert preface.header is not None
    assert consumed == len(V2)
    assert kernel == CLIENT_HELLO_PREFIX  # the ClientHello stays for TLS


@pytest.mark.parametrize("garbage", [HTTP_REQUEST, CLIENT_HELLO_PREFIX, b"PROXY TCP9 "])
def test_not_a_header_is_refused_at_once(garbage: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        Preface().feed(garbage)


def test_addresses_from_the_header_or_the_socket() -> None:
    preface = Preface()
    preface.feed(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 40000 8443\r\n")
    header = preface.header
    assert header is not None
    assert client_address(header, ("127.0.0.1", 5555)) == ("192.0.2.7", 40000)
    assert server_port(header, 10001) == 8443
    unknown = Preface()
    unknown.feed(b"PROXY UNKNOWN\r\n")
    assert unknown.header is not None
    assert client_address(unknown.header, ("127.0.0.1", 5555)) == ("127.0.0.1", 5555)
    assert server_port(unknown.header, 10001) == 10001


class _Held:
    def __init__(self, stage: ProxyStage) -> None:
        self.stage = stage
        self.dropped = False

    def drop(self) -> None:
        self.dropped = True
        self.stage.release(self)


async def test_stage_idle_event_follows_pending_connections() -> None:
    stage = ProxyStage(TrustedPeers([ipaddress.ip_network("127.0.0.0/8")]), 5.0)
    assert "127.0.0.1" in stage.trusted and "192.0.2.1" not in stage.trusted
    assert stage.idle.is_set() and not stage.busy
    first, second = _Held(stage), _Held(stage)
    stage.hold(first)
    stage.hold(second)
    assert not stage.idle.is_set() and stage.busy
    stage.release(first)
    assert not stage.idle.is_set()
    stage.abort()  # a drain out of time drops the rest
    assert second.dropped and stage.idle.is_set() and not stage.busy
