"""Large bodies stream through the edge in both directions with bounded worker memory.

The worker's RSS is sampled from /proc while 100 MB pass through it; a slow client must
throttle the upstream (coupled backpressure), not make the edge buffer the response.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import random
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import h11
import pytest

from tests.helpers import EdgeProcess, RedisServer, wait_for
from tests.integration.test_upstream_pool import (
    HOST,
    ScriptedUpstream,
    UpConn,
    configure,
    scripted,
)

__all__ = ["scripted"]  # fixture re-used from the pool tests

BLOCK = 1 << 20
TOTAL = 100 * BLOCK
RSS_GROWTH_LIMIT_KB = 60 * 1024


def blocks(seed: int, total: int = TOTAL) -> Iterator[bytes]:
    """Deterministic, non-repeating pseudo-random blocks."""
    rnd = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(BLOCK, total - sent)
        sent += n
        yield rnd.randbytes(n)


def worker_pid(edge: EdgeProcess) -> int:
    assert edge.proc is not None
    sup = edge.proc.pid
    children = Path(f"/proc/{sup}/task/{sup}/children").read_text().split()
    pid = int(edge.health()["pid"])
    assert str(pid) in children, (pid, children)
    return pid


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class RssSampler:
    """Samples a process's VmRSS every 20 ms in a thread; ``peak`` is the maximum seen."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kb(self.pid))
            self.samples += 1
            self._stop.wait(0.02)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def uv_edge(edge_factory: Callable[..., EdgeProcess]) -> EdgeProcess:
    return edge_factory(EDGE_LOOP="uvloop")


def baseline_rss(edge: EdgeProcess) -> tuple[int, int]:
    """Worker pid and its RSS after one small forwarded request (code paths warmed up)."""
    c = http.client.HTTPConnection("127.0.0.1", edge.http_port, timeout=10)
    c.request("POST", "/warmup", body=b"x" * 1000, headers={"Host": HOST})
    assert c.getresponse().read()
    c.close()
    pid = worker_pid(edge)
    return pid, rss_kb(pid)


def counting_upstream(conn: UpConn) -> None:
    """Hash the request body as it streams in; answer with its length and digest."""
    while True:
        digest = hashlib.sha256()
        req = conn.next_request(on_body=digest.update)
        if req is None:
            return
        doc = {"len": req.body_len, "sha256": digest.hexdigest()}
        conn.respond(200, [("Content-Type", "application/json")], json.dumps(doc).encode())


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_100mb_request_body_streams_to_upstream(
    uv_edge: EdgeProcess,
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    framing: str,
) -> None:
    up = scripted(counting_upstream)
    configure(redis_db, uv_edge, up.url)
    pid, idle = baseline_rss(uv_edge)
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for block in blocks(seed=7):
            sent.update(block)
            yield block

    headers = {"Host": HOST}
    if framing == "content-length":
        headers["Content-Length"] = str(TOTAL)
    c = http.client.HTTPConnection("127.0.0.1", uv_edge.http_port, timeout=30)
    with RssSampler(pid) as rss:
        c.request(
            "POST", "/upload", body=body(), headers=headers, encode_chunked=framing == "chunked"
        )
        resp = c.getresponse()
        doc = json.loads(resp.read())
    c.close()
    assert resp.status == 200
    assert doc == {"len": TOTAL, "sha256": sent.hexdigest()}
    assert rss.samples >= 3
    assert rss.peak - idle < RSS_GROWTH_LIMIT_KB, (idle, rss.peak)


def streaming_upstream(
    framing: str, gate: threading.Event | None = None
) -> Callable[[UpConn], None]:
    """Answer with 100 MB of pseudo-random bytes; ``conn.sent`` counts what left the upstream."""

    def serve(conn: UpConn) -> None:
        while (req := conn.next_request()) is not None:
            if req.request.target == b"/warmup":
                conn.respond(200, body=b"warm")
                continue
            conn.sent = 0
            if framing == "content-length":
                conn.sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n".encode())
            else:
                conn.sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for block in blocks(seed=11):
                if framing == "chunked":
                    conn.send_raw(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                else:
                    conn.send_raw(block)
            if framing == "chunked":
                conn.sock.sendall(b"0\r\n\r\n")
            conn.h11 = h11.Connection(h11.SERVER)  # answered raw: a fresh parser for the next

    return serve


def expected_digest() -> str:
    digest = hashlib.sha256()
    for block in blocks(seed=11):
        digest.update(block)
    return digest.hexdigest()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_100mb_response_body_streams_to_client(
    uv_edge: EdgeProcess,
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    framing: str,
) -> None:
    up = scripted(streaming_upstream(framing))
    configure(redis_db, uv_edge, up.url)
    pid, idle = baseline_rss(uv_edge)
    got = hashlib.sha256()
    count = 0
    c = http.client.HTTPConnection("127.0.0.1", uv_edge.http_port, timeout=30)
    with RssSampler(pid) as rss:
        c.request("GET", "/download", headers={"Host": HOST})
        resp = c.getresponse()
        assert resp.status == 200
        while chunk := resp.read(BLOCK):
            got.update(chunk)
            count += len(chunk)
    c.close()
    assert count == TOTAL
    assert got.hexdigest() == expected_digest()
    assert rss.samples >= 3
    assert rss.peak - idle < RSS_GROWTH_LIMIT_KB, (idle, rss.peak)


def test_slow_client_throttles_upstream(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    event_loop_name: str,
) -> None:
    edge = edge_factory(EDGE_LOOP=event_loop_name)
    up = scripted(streaming_upstream("content-length"))
    configure(redis_db, edge, up.url)
    pid, idle = baseline_rss(edge)
    got = hashlib.sha256()
    count = 0
    with (
        socket.create_connection(("127.0.0.1", edge.http_port), timeout=30) as s,
        RssSampler(pid) as rss,
    ):
        s.sendall(f"GET /slow HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        got.update(rest)
        count += len(rest)
        wait_for(lambda: up.connections == 1)
        during_pauses: list[int] = []
        for _ in range(3):
            want = 64 * 1024
            while want > 0:
                data = s.recv(want)
                assert data
                got.update(data)
                count += len(data)
                want -= len(data)
            threading.Event().wait(1.0)  # the slow client: nothing read for a second
            during_pauses.append(up.conns[0].sent)
        paused_peak = rss.peak
        while count < TOTAL:
            data = s.recv(BLOCK)
            assert data
            got.update(data)
            count += len(data)
    assert count == TOTAL
    assert got.hexdigest() == expected_digest()
    # while the client barely reads, the upstream is held back by the edge ...
    assert max(during_pauses) < 40 * BLOCK, during_pauses
    # ... and no response bytes pile up in the worker
    assert paused_peak - idle < RSS_GROWTH_LIMIT_KB, (idle, paused_peak)
    assert rss.peak - idle < RSS_GROWTH_LIMIT_KB, (idle, rss.peak)


def test_slow_upstream_throttles_client_upload(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    scripted: Callable[..., ScriptedUpstream],
    event_loop_name: str,
) -> None:
    """The request direction: an upstream that reads slowly holds the client back."""
    received = hashlib.sha256()
    progress = {"read": 0}
    upstream_paused = threading.Event()

    def slow_reader(conn: UpConn) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.sock.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"POST /slow-upload"), head
        received.update(rest)
        progress["read"] = len(rest)
        for _ in range(3):
            want = 64 * 1024
            while want > 0:
                data = conn.sock.recv(want)
                assert data
                received.update(data)
                progress["read"] += len(data)
                want -= len(data)
            threading.Event().wait(1.0)  # the slow upstream: nothing read for a second
        upstream_paused.set()
        while progress["read"] < TOTAL:
            data = conn.sock.recv(BLOCK)
            assert data
            received.update(data)
            progress["read"] += len(data)
        conn.send_raw(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")

    edge = edge_factory(EDGE_LOOP=event_loop_name)
    up = scripted(slow_reader)
    configure(redis_db, edge, up.url)
    pid = worker_pid(edge)
    idle = rss_kb(pid)
    sent = hashlib.sha256()
    sent_bytes = {"n": 0, "at_pause_end": 0}

    with (
        socket.create_connection(("127.0.0.1", edge.http_port), timeout=30) as s,
        RssSampler(pid) as rss,
    ):
        head = f"POST /slow-upload HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {TOTAL}\r\n"
        s.sendall(head.encode() + b"\r\n")

        def send_all() -> None:
            for block in blocks(seed=5):
                sent.update(block)
                s.sendall(block)
                sent_bytes["n"] += len(block)

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        wait_for(upstream_paused.is_set, timeout=20)
        sent_bytes["at_pause_end"] = sent_bytes["n"]
        paused_peak = rss.peak
        sender.join(timeout=60)
        assert not sender.is_alive()
        reply = b""
        while not reply.endswith(b"done"):
            data = s.recv(4096)
            assert data, reply
            reply += data
    assert reply.startswith(b"HTTP/1.1 200")
    assert progress["read"] == TOTAL
    assert received.hexdigest() == sent.hexdigest()
    # while the upstream barely read, the client could not push the body into the edge
    assert sent_bytes["at_pause_end"] < 40 * BLOCK, sent_bytes
    assert paused_peak - idle < RSS_GROWTH_LIMIT_KB, (idle, paused_peak)
    assert rss.peak - idle < RSS_GROWTH_LIMIT_KB, (idle, rss.peak)
