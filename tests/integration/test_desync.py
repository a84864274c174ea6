"""Request and response desynchronisation: what one client sends or one upstream answers
must never reach another exchange.

Each attack runs against the edge directly and through HAProxy in ``mode http`` with
``http-reuse always`` (HAProxy then shares its connections to the edge between clients,
which is what turns a desync on one of them into someone else's response).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.haproxy import HAProxy, Listen
from tests.helpers import (
    EdgeProcess,
    RedisServer,
    Upstream,
    http_request,
    proxy_doc,
    read_message,
    wait_for,
)
from tests.integration.test_live_config import EVIL_PATH, EVIL_PATTERN, STALL_LIMIT
from tests.integration.test_upstream_pool import ScriptedUpstream, UpConn

HOST = "app.test"
OTHER = "other.test"

# what a poisoned upstream connection would hand the next client
SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Smuggled: yes\r\n\r\nsmuggled"

# upstream answers to GET/HEAD /poison that leave bytes past the end of the message
# (RFC 9112 §6.3: HEAD, 204 and 304 end with the head; Content-Length counts the rest)
POISON = {
    "head-with-body": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n" + SMUGGLED),
    "204-with-body": (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n" + SMUGGLED),
    "304-with-body": (b"GET", b"HTTP/1.1 304 Not Modified\r\n\r\n" + SMUGGLED),
    "short-length": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + SMUGGLED),
}


def raw_requests(conn: UpConn) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(method, target, head) of each body-less request on an upstream socket."""
    buf = b""
    conn.sock.settimeout(30)
    while True:
        while b"\r\n\r\n" not in buf:
            try:
                data = conn.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        conn.requests += 1
        yield method, target, head


def case_of(head: bytes) -> str:
    """The request's ``X-Case`` value: which answer a scripted upstream gives."""
    return next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-case:")
    )


def poisoning_upstream(conn: UpConn) -> None:
    """/poison gets the answer named by the request's ``X-Case``; anything else its path."""
    for _method, target, head in raw_requests(conn):
        if target == b"/poison":
            case = case_of(head)
            conn.send_raw(POISON[case][1])
        else:
            conn.send_raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target)
            )


@pytest.fixture
def stack(
    edge_factory: Callable[..., EdgeProcess], redis_db: RedisServer
) -> Iterator[tuple[EdgeProcess, RedisServer]]:
    edge = edge_factory(CONFIG_RESYNC_INTERVAL=30)
    yield edge, redis_db


def haproxy_http(workdir: Path, edge_port: int) -> HAProxy:
    """HAProxy in HTTP mode sharing its server connections between clients."""
    listen = Listen(
        "front",
        edge_port,
        send_proxy="",
        section_lines=("mode http", "http-reuse always", "option http-keep-alive"),
    )
    workdir.mkdir(exist_ok=True)
    return HAProxy(workdir, [listen]).start()


@contextlib.contextmanager
def front(
    stack: tuple[EdgeProcess, RedisServer],
    tmp_path: Path,
    via: str,
    serve: Callable[[UpConn], None],
) -> Iterator[int]:
    """``app.test`` proxied to a scripted upstream; the port to attack, on the edge itself
    or on HAProxy in front of it."""
    edge, redis_db = stack
    up = ScriptedUpstream(serve)
    haproxy = haproxy_http(tmp_path / "haproxy", edge.http_port) if via == "haproxy" else None
    try:
        redis_db.client().set(f"proxy:{HOST}", proxy_doc(HOST, up.url))
        edge.wait_generation(lambda h: h["proxies"] >= 1)
        yield haproxy.port("front") if haproxy else edge.http_port
    finally:
        up.close()
        if haproxy:
            haproxy.stop()


def body_of(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[2]


def each_gets_its_own_answer(port: int) -> None:
    """Three clients, each on its own connection, get their own answers: none of the
    smuggled bytes."""
    for i in range(3):
        path = b"/next-%d" % i
        raw = http_request(port, b"GET " + path + b" HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert b"smuggled" not in raw, raw
        assert body_of(raw) == path, raw


@pytest.mark.parametrize("case", sorted(POISON))
@pytest.mark.parametrize("via", ["direct", "haproxy"])
def test_bytes_past_the_end_of_a_response_never_reach_the_next_client(
    stack: tuple[EdgeProcess, RedisServer],
    tmp_path: Path,
    case: str,
    via: str,
) -> None:
    with front(stack, tmp_path, via, poisoning_upstream) as port:
        method = POISON[case][0]
        first = http_request(
            port,
            method + b" /poison HTTP/1.1\r\nHost: app.test\r\nX-Case: " + case.encode() + b"\r\n"
            b"Connection: close\r\n\r\n",
            read_until_close=True,
        )
        assert first.startswith(b"HTTP/1.1 "), first
        # every later client, each on its own connection, gets its own answer
        each_gets_its_own_answer(port)
        assert stack[0].health()["upstream"]["closed_with_extra_bytes"] >= 1


# answers whose head ends the message but announces a body (RFC 9112 §6.3), then the
# body 0.3 s later, as from a server that writes them separately: by then the edge has
# finished the response, and the next client's request may already be on its way
LATE = {
    "head": (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n"),
    "204": (b"GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n"),
    "304": (b"GET", b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n"),
}


def late_poisoning_upstream(conn: UpConn) -> None:
    for _method, target, head in raw_requests(conn):
        if target == b"/poison":
            case = case_of(head)
            conn.send_raw(LATE[case][1])
            time.sleep(0.3)
            with contextlib.suppress(OSError):
                conn.send_raw(SMUGGLED)
        else:
            conn.send_raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target)
            )


@pytest.mark.parametrize("case", sorted(LATE))
def test_a_body_announced_after_a_bodiless_head_never_reaches_the_next_client(
    stack: tuple[EdgeProcess, RedisServer], tmp_path: Path, case: str
) -> None:
    """Such a connection is not reused: its body may arrive after the response ended."""
    with front(stack, tmp_path, "direct", late_poisoning_upstream) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                LATE[case][0] + b" /poison HTTP/1.1\r\nHost: app.test\r\nX-Case: "
                + case.encode() + b"\r\n\r\n"
            )  # fmt: skip
            first = b""
            while b"\r\n\r\n" not in first:  # the whole answer: its head
                first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 "), first
        # the next clients come at once, while the body is still on its way
        each_gets_its_own_answer(port)


def upgrade_recorder(seen: list[bytes]) -> Callable[[UpConn], None]:
    """An upstream that switches to any protocol asked for (as a naive h2c server would)."""

    def serve(conn: UpConn) -> None:
        for _method, target, head in raw_requests(conn):
            seen.append(head)
            if b"\r\nupgrade:" in head.lower():
                conn.send_raw(
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                    b"Upgrade: h2c\r\n\r\n"
                )
                # from now on everything is "raw": echo what arrives
                while data := conn.sock.recv(65536):
                    conn.send_raw(data)
                return
            conn.send_raw(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target), target)
            )

    return serve


@pytest.mark.parametrize("via", ["direct", "haproxy"])
def test_only_websocket_upgrades_are_passed(
    stack: tuple[EdgeProcess, RedisServer], tmp_path: Path, via: str
) -> None:
    seen: list[bytes] = []
    with (
        front(stack, tmp_path, via, upgrade_recorder(seen)) as port,
        socket.create_connection(("127.0.0.1", port), timeout=5) as s,
    ):
        s.sendall(
            b"GET /first HTTP/1.1\r\nHost: app.test\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c, foo/2\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        first = read_message(s)
        assert first.startswith(b"HTTP/1.1 200 "), first
        assert body_of(first) == b"/first"
        # the next request on the connection is still HTTP, routed and rewritten
        s.sendall(b"GET /second HTTP/1.1\r\nHost: app.test\r\nX-Real-IP: 6.6.6.6\r\n\r\n")
        second = read_message(s)
        assert body_of(second) == b"/second", second
    heads = [h.lower() for h in seen]
    assert len(heads) == 2, heads
    assert all(b"upgrade" not in h and b"http2-settings" not in h for h in heads), heads
    assert b"x-real-ip: 6.6.6.6" not in heads[1]


@pytest.mark.parametrize(
    "length",
    [
        b"18446744073709551616",  # 2^64: wraps to 0
        b"18446744073709551621",  # 2^64 + 5: wraps to 5
        b"9223372036854775808",  # 2^63: negative as a signed 64-bit number
        b"99999999999999999999999999",
    ],
)
@pytest.mark.parametrize("via", ["direct", "haproxy"])
def test_content_length_beyond_the_maximum_is_refused(
    stack: tuple[EdgeProcess, RedisServer], tmp_path: Path, length: bytes, via: str
) -> None:
    seen: list[bytes] = []
    with front(stack, tmp_path, via, upgrade_recorder(seen)) as port:
        raw = http_request(
            port,
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: " + length + b"\r\n\r\n"
            b"hello"
            b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n",
            read_until_close=True,
        )
        assert raw.startswith(b"HTTP/1.1 400 "), raw
        # the oversized length never reaches the upstream
        assert not any(length in head for head in seen), seen
        if via == "direct":
            assert seen == []  # nor does anything after it (the connection is closed)
        # Through HAProxy 2.6, 2^64 wraps to 0 in HAProxy itself: it then sends "hello GET
        # /smuggled" to the edge as a request of its own, which the edge routes, rewrites and
        # logs like any other: HAProxy's desync, not a bypass of the edge.


def test_the_largest_signed_64_bit_length_is_still_a_length(
    stack: tuple[EdgeProcess, RedisServer], tmp_path: Path
) -> None:
    """2^63 - 1 is what HAProxy accepts too: forwarded, not refused (the body then idles)."""
    seen: list[bytes] = []
    with (
        front(stack, tmp_path, "direct", upgrade_recorder(seen)) as port,
        socket.create_connection(("127.0.0.1", port), timeout=5) as s,
    ):
        s.sendall(
            b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 9223372036854775807\r\n\r\n"
        )
        wait_for(lambda: len(seen) == 1)
    assert b"content-length: 9223372036854775807" in seen[0].lower()


def echo_stack(stack: tuple[EdgeProcess, RedisServer], upstream: Upstream, *hosts: str) -> int:
    edge, redis_db = stack
    client = redis_db.client()
    for host in hosts or (HOST,):
        client.set(f"proxy:{host}", proxy_doc(host, upstream.url + "/base"))
    edge.wait_generation(lambda h: h["proxies"] >= len(hosts or (HOST,)))
    return edge.http_port


def echoed(raw: bytes) -> dict[str, Any]:
    assert raw.startswith(b"HTTP/1.1 200 "), raw
    return json.loads(body_of(raw))  # type: ignore[no-any-return]


def test_connect_is_refused_with_405(
    stack: tuple[EdgeProcess, RedisServer], upstream: Upstream
) -> None:
    port = echo_stack(stack, upstream)
    raw = http_request(
        port,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: app.test\r\n\r\nSSH-2.0-probe\r\n",
        read_until_close=True,
    )
    assert raw.startswith(b"HTTP/1.1 405 "), raw
    assert b"\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n" in raw
    assert raw.count(b"HTTP/1.1 ") == 1  # the bytes after it were not read as a request
    # an origin-form (or any other) target does not make CONNECT a forwarded request
    for target in (b"/", b"*", b"http://app.test/"):
        raw = http_request(port, b"CONNECT " + target + b" HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 405 "), (target, raw)


@pytest.mark.parametrize(
    "connection",
    [b"content-length", b"keep-alive, Content-Length", b"transfer-encoding", b"close, host"],
)
def test_connection_naming_a_framing_header_is_a_400(
    stack: tuple[EdgeProcess, RedisServer], upstream: Upstream, connection: bytes
) -> None:
    port = echo_stack(stack, upstream)
    raw = http_request(
        port,
        b"POST / HTTP/1.1\r\nHost: app.test\r\nConnection: " + connection + b"\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        read_until_close=True,
    )
    assert raw.startswith(b"HTTP/1.1 400 "), raw
    assert b"Connection names a framing header" in raw
    assert b"Traceback" not in raw
    edge = stack[0]
    edge.stop()
    assert "Traceback" not in edge.stderr()


def test_absolute_form_routes_by_the_targets_authority(
    stack: tuple[EdgeProcess, RedisServer], upstream: Upstream
) -> None:
    port = echo_stack(stack, upstream, HOST, OTHER)
    doc = echoed(
        http_request(port, b"GET http://other.test/x?q=1 HTTP/1.1\r\nHost: app.test\r\n\r\n")
    )
    headers = {k.lower(): v for k, v in doc["headers"]}
    assert doc["path"] == "/base/x?q=1"
    assert headers["host"] == "other.test"  # preserve_host: the authority, not the Host field
    assert headers["x-forwarded-host"] == "other.test"
    logged = wait_for(lambda: [r for r in stack[0].access_log() if r["path"] == "/x"])
    assert logged[0]["host"] == "other.test"
    for bad in (b"ftp://other.test/x", b"http://user@other.test/x", b"http:///x"):
        raw = http_request(port, b"GET " + bad + b" HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 400 "), (bad, raw)


def test_options_asterisk_keeps_the_asterisk_form(
    stack: tuple[EdgeProcess, RedisServer], upstream: Upstream
) -> None:
    port = echo_stack(stack, upstream)
    doc = echoed(http_request(port, b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\n\r\n"))
    assert doc["method"] == "OPTIONS"
    assert doc["path"] == "*"


def test_a_backtracking_regex_route_through_haproxy_does_not_stall_other_hosts(
    stack: tuple[EdgeProcess, RedisServer], upstream: Upstream, tmp_path: Path
) -> None:
    """The regex attack of test_live_config, with HAProxy sharing its connections in front."""
    edge, redis_db = stack
    r = redis_db.client()
    r.set("proxy:evil.test", proxy_doc("evil.test", upstream.url))
    r.set("proxy:calm.test", proxy_doc("calm.test", upstream.url))
    r.set(
        "route:evil",
        json.dumps(
            {
                "route_id": "evil",
                "path_pattern": EVIL_PATTERN,
                "is_regex": True,
                "target_type": "url",
                "target_value": upstream.url + "/evil",
                "scope": "proxy",
                "proxy_hostnames": ["evil.test"],
            }
        ),
    )
    edge.wait_generation(lambda h: h["proxies"] >= 2 and h["routes"] >= 1)
    haproxy = haproxy_http(tmp_path / "haproxy", edge.http_port)
    try:
        port = haproxy.port("front")
        answers: dict[str, bytes] = {}

        def ask(host: str, path: str) -> None:
            raw = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
            answers[host] = http_request(port, raw, timeout=3 * STALL_LIMIT)

        started = time.monotonic()
        evil = threading.Thread(target=ask, args=("evil.test", EVIL_PATH))
        evil.start()
        time.sleep(0.1)  # the evil request reaches the worker first
        ask("calm.test", "/calm")
        evil.join()
        elapsed = time.monotonic() - started
        assert echoed(answers["calm.test"])["path"] == "/calm"
        assert echoed(answers["evil.test"])["path"] == EVIL_PATH  # no match: the proxy's target
        assert elapsed <= STALL_LIMIT, f"both answered after {elapsed:.2f}s"
    finally:
        haproxy.stop()
