"""Microseconds per h11 head parse: stock h11 against ``edge.h11compat``.

h11 parses a head with per-line ``validate()`` + ``groupdict()``, an obs-fold generator, a
second normalisation loop and an event constructor that walks the headers again; the
edge's readers do the same checks in one pass. This prints, for a wrk-like request head
and an nginx-like 200 response head, the cost of

* ``next_event()`` on a connection that already holds the head (building the connection and
  ``receive_data`` are not timed), which is what a proxy pays per message;
* the reader function alone, on a ready ``ReceiveBuffer``.

Each figure is the median of 5 runs of 20000 operations. Pin it to one CPU for stable
numbers:

    taskset -c 1 python bench/h11_parts.py
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h11
from h11._readers import maybe_read_from_IDLE_client, maybe_read_from_SEND_RESPONSE_server
from h11._receivebuffer import ReceiveBuffer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.h11compat import (
    ClientConnection,
    ServerConnection,
    read_request_head,
    read_response_head,
)

LOOPS = 20000
RUNS = 5
REQUEST = b"GET /small HTTP/1.1\r\nHost: bench.local\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.24.0\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/html\r\n"
    b"Content-Length: 612\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)


def _median_us(prepare: Callable[[], list[Any]], operate: Callable[[Any], object]) -> float:
    """Median over ``RUNS`` of the time per ``operate(item)``, preparation not timed."""
    samples = []
    for _ in range(RUNS):
        items = prepare()
        start = time.perf_counter_ns()
        for item in items:
            operate(item)
        samples.append((time.perf_counter_ns() - start) / len(items) / 1000)
    return statistics.median(samples)


def _servers(factory: Callable[[], h11.Connection]) -> Callable[[], list[h11.Connection]]:
    def prepare() -> list[h11.Connection]:
        conns = [factory() for _ in range(LOOPS)]
        for conn in conns:
            conn.receive_data(REQUEST)
        return conns

    return prepare


def _clients(factory: Callable[[], h11.Connection]) -> Callable[[], list[h11.Connection]]:
    request = h11.Request(method=b"GET", target=b"/small", headers=[(b"Host", b"bench.local")])

    def prepare() -> list[h11.Connection]:
        conns = [factory() for _ in range(LOOPS)]
        for conn in conns:
            conn.send(request)
            conn.send(h11.EndOfMessage())
            conn.receive_data(RESPONSE)
        return conns

    return prepare


def _buffers(data: bytes) -> Callable[[], list[ReceiveBuffer]]:
    def prepare() -> list[ReceiveBuffer]:
        buffers = [ReceiveBuffer() for _ in range(LOOPS)]
        for buf in buffers:
            buf += data
        return buffers

    return prepare


def _next_event(conn: h11.Connection) -> object:
    event = conn.next_event()
    assert isinstance(event, h11.Request | h11.Response)
    return event


def main() -> None:
    rows = [
        (
            "request head, next_event()",
            _median_us(_servers(lambda: h11.Connection(h11.SERVER)), _next_event),
            _median_us(_servers(lambda: ServerConnection(16384)), _next_event),
        ),
        (
            "response head, next_event()",
            _median_us(_clients(lambda: h11.Connection(h11.CLIENT)), _next_event),
            _median_us(_clients(ClientConnection), _next_event),
        ),
        (
            "request head, reader only",
            _median_us(_buffers(REQUEST), maybe_read_from_IDLE_client),
            _median_us(_buffers(REQUEST), read_request_head),
        ),
        (
            "response head, reader only",
            _median_us(_buffers(RESPONSE), maybe_read_from_SEND_RESPONSE_server),
            _median_us(_buffers(RESPONSE), read_response_head),
        ),
    ]
    print(f"{'µs per operation':<30}{'stock h11':>10}{'edge':>10}{'saved':>10}")
    for name, stock, fast in rows:
        print(f"{name:<30}{stock:>10.2f}{fast:>10.2f}{1 - fast / stock:>10.0%}")


if __name__ == "__main__":
    main()
