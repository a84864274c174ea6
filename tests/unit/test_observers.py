"""End-of-exchange observers, driven in-process over a fake transport.

Every observer the worker installs hears about every finished exchange, in order, with
the record the JSON access log writes: a request log or metrics added beside the access
log see exactly what it logs, aborted exchanges included.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec

from edge.http1.connection import HttpConnection
from edge.http1.exchange import Exchange
from edge.http1.hub import Hub
from edge.observe import ExchangeObserver
from edge.observe.accesslog import AccessRecord
from edge.settings import load_settings
from tests.component.harness import FakeTransport


class Recorder:
    """A second observer: keeps the records it is given."""

    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    def exchange_done(self, record: AccessRecord) -> None:
        self.records.append(record)


def answer(ex: Exchange) -> None:
    """Answers /stuck never (the client leaves first), everything else at once."""
    if ex.path != "/stuck":
        ex.respond(200, b"hello")


async def test_a_second_observer_hears_every_record_the_access_log_writes(
    tmp_path: Path,
) -> None:
    hub = Hub(load_settings({}), asyncio.get_running_loop())
    log_file = tmp_path / "access.log"
    hub.access_log._fd = os.open(log_file, os.O_WRONLY | os.O_CREAT)
    recorder = Recorder()
    observers: tuple[ExchangeObserver, ...] = (hub.access_log, recorder)
    hub.install_observers(observers)
    assert hub.observers == observers

    conn = HttpConnection(hub, answer)
    wire = FakeTransport()
    conn.connection_made(wire)
    conn.data_received(
        b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\nGET /b?q=1 HTTP/1.1\r\nHost: b.test\r\n\r\n"
    )
    conn.data_received(b"GET /stuck HTTP/1.1\r\nHost: a.test\r\n\r\n")
    conn.connection_lost(None)  # the client leaves with /stuck unanswered
    hub.access_log.flush()
    os.close(hub.access_log._fd)

    assert bytes(wire.written).count(b"HTTP/1.1 200 ") == 2
    assert [(r.host, r.path, r.status, r.aborted) for r in recorder.records] == [
        ("a.test", "/a", 200, False),
        ("b.test", "/b", 200, False),  # the path without its query
        ("a.test", "/stuck", 499, True),
    ]
    # the very records the access log wrote, byte for byte
    lines = log_file.read_bytes().splitlines(keepends=True)
    assert lines == [msgspec.json.encode(r) + b"\n" for r in recorder.records]


async def test_the_access_log_alone_is_the_default_observer(tmp_path: Path) -> None:
    hub = Hub(load_settings({}), asyncio.get_running_loop())
    assert hub.observers == (hub.access_log,)
    log_file = tmp_path / "access.log"
    hub.access_log._fd = os.open(log_file, os.O_WRONLY | os.O_CREAT)
    conn = HttpConnection(hub, answer)
    conn.connection_made(FakeTransport())
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n")
    hub.access_log.flush()
    os.close(hub.access_log._fd)
    [line] = log_file.read_bytes().splitlines()
    assert msgspec.json.decode(line)["path"] == "/a"
