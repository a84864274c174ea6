"""Lingering close (RFC 9112 §9.6): an early error reaches a client that is still sending.

When the edge answers before it has read the whole request (a 413 for a body it will not
take) and then closes, the bytes the client is still sending make the kernel reset the
connection, and a reset destroys whatever the client had not read yet: the 413 itself.
So the edge half-closes after the response and reads and discards what still comes, for
at most LINGER_TIME in all and LINGER_TIMEOUT without a byte, then closes.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator

from tests.helpers import EdgeProcess, wait_for

EdgeFactory = Callable[..., EdgeProcess]
CHUNK = b"x" * 65536


def oversized_post(admin: str, length: int) -> bytes:
    """The head of a token creation whose declared body is over the API's 1 MiB limit."""
    return (
        "POST /api/v1/tokens/ HTTP/1.1\r\n"
        "Host: localhost\r\n"
        f"Authorization: Bearer {admin}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one Content-Length response; raises OSError on a reset."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"EOF after {len(data)} bytes")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(v) for k, _, v in (x.partition(":") for x in lines) if k.lower() == "content-length"
    )
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("EOF inside the body")
        body += more
    return int(lines[0].split()[1]), body[:length]


def upload(port: int, admin: str, size: int) -> tuple[int, bytes] | str:
    """http.client sends the whole oversized body, in chunks, then reads the answer.

    Like most clients (and a proxy forwarding a request it already has), it looks for a
    response only once its request is out, and a failed send is a failed request.
    """

    def chunks() -> Iterator[bytes]:
        left = size
        while left > 0:
            yield CHUNK[:left]
            left -= len(CHUNK)

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {
        "Authorization": f"Bearer {admin}",
        "Content-Type": "application/json",
        "Content-Length": str(size),
    }
    try:
        conn.request("POST", "/api/v1/tokens/", body=chunks(), headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def test_an_oversized_upload_gets_the_whole_413_every_time(
    edge_factory: EdgeFactory, admin: str, event_loop_name: str
) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, EDGE_LOOP=event_loop_name)
    size = 50 * 1000 * 1000
    outcomes = [upload(edge.api_port, admin, size) for _ in range(20)]
    bad = [o for o in outcomes if isinstance(o, str) or o[0] != 413]
    assert bad == [], f"{len(bad)} of 20 lost their answer: {bad[:3]}"
    _, body = outcomes[0]  # type: ignore[misc]
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    # and the connections did not stay open: each client closed after reading
    wait_for(lambda: edge.health()["connections"] == 1, timeout=5)


def answered_oversized(port: int, admin: str) -> tuple[socket.socket, float]:
    """A connection that got its 413 while announcing a body it has only begun to send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(oversized_post(admin, 10**12) + CHUNK)
    status, _ = read_response(sock)
    assert status == 413
    return sock, time.monotonic()


def test_a_client_that_never_stops_sending_is_closed_after_linger_time(
    edge_factory: EdgeFactory, admin: str
) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, LINGER_TIME=2, LINGER_TIMEOUT=1)
    sock, answered = answered_oversized(edge.api_port, admin)
    # the edge half-closed after its answer: the client reads EOF but may still send
    assert sock.recv(1) == b""
    closed_after = None
    with sock:
        while time.monotonic() - answered < 10:
            try:
                sock.send(b"y" * 1024)  # never idle for LINGER_TIMEOUT
            except OSError:
                closed_after = time.monotonic() - answered
                break
            time.sleep(0.05)
    assert closed_after is not None, "still open after 10 s"
    # LINGER_TIME, not the idle LINGER_TIMEOUT, ended it (with slack for a busy machine)
    assert 1.8 <= closed_after <= 5.0, closed_after


def test_a_silent_client_is_closed_after_linger_timeout(
    edge_factory: EdgeFactory, admin: str
) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, LINGER_TIME=30, LINGER_TIMEOUT=1.5)
    sock, answered = answered_oversized(edge.api_port, admin)
    with sock:
        assert sock.recv(1) == b""  # half-closed: the answer is complete
        # the edge still holds the connection (this health check is the other one) ...
        time.sleep(0.5)
        assert edge.health()["connections"] == 2
        # ... until nothing came for LINGER_TIMEOUT
        wait_for(lambda: edge.health()["connections"] == 1, timeout=10, interval=0.1)
        closed_after = time.monotonic() - answered
    assert 1.3 <= closed_after <= 5.0, closed_after
