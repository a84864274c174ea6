"""``Exchange.fail`` through a real ``HttpConnection``: the renderer's bytes on the wire.

A handler fails the exchange with an error of the hierarchy; a real h11 client reads the
answer. The body's code is the error's own (a certificate's 404 is not the router's), the
error's headers and ``close_connection`` reach the wire, the log level is the error's
fault, and an error after the response started aborts instead of answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import h11
import pytest

from edge.certs.repository import CertNotFound
from edge.errors import EdgeError, MethodNotAllowed, NoRoute, UpstreamConnectTimeout
from edge.http1.connection import HttpConnection
from edge.http1.exchange import Exchange
from edge.http1.hub import Hub
from edge.settings import load_settings
from tests.component.harness import FakeTransport, H11Peer


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    transport: FakeTransport


async def exchange(handler: Callable[[Exchange], None]) -> Answer:
    hub = Hub(load_settings({}), asyncio.get_running_loop())
    hub.access_log._fd = os.open(os.devnull, os.O_WRONLY)
    try:
        conn = HttpConnection(hub, handler)
        transport = FakeTransport()
        conn.connection_made(transport)
        client = H11Peer(h11.CLIENT, transport)
        request = h11.Request(method="GET", target="/", headers=[("host", "a.test")])
        conn.data_received(client.send(request, h11.EndOfMessage()))
        events = client.receive()
        conn.connection_lost(None)
    finally:
        os.close(hub.access_log._fd)
    if not events:
        return Answer(0, {}, b"", transport)
    head, *rest = events
    assert isinstance(head, h11.Response), head
    body = b"".join(event.data for event in rest if isinstance(event, h11.Data))
    return Answer(head.status_code, dict(head.headers), body, transport)


def failing(error: EdgeError) -> Callable[[Exchange], None]:
    def handle(ex: Exchange) -> None:
        ex.fail(error)

    return handle


async def test_the_edge_body_carries_the_errors_code_and_the_request_id() -> None:
    found = await exchange(failing(CertNotFound("cert:x does not exist")))
    rid = found.headers[b"x-request-id"].decode()
    assert found.status == 404
    assert found.headers[b"content-type"] == b"application/json"
    assert found.body == (
        b'{"error":{"code":"certificate_not_found","message":"no certificate with this name",'
        b'"request_id":"' + rid.encode() + b'"}}\n'
    )
    assert b"cert:x" not in found.body


async def test_headers_and_connection_close_reach_the_wire() -> None:
    refused = await exchange(failing(MethodNotAllowed()))
    assert refused.status == 405
    assert refused.headers[b"allow"] == b"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
    assert refused.headers[b"connection"] == b"close"
    assert refused.transport.closed or refused.transport.eof_written
    assert json.loads(refused.body)["error"]["code"] == "method_not_allowed"
    # an error that leaves the connection usable says nothing of closing
    kept = await exchange(failing(NoRoute()))
    assert b"connection" not in kept.headers


@pytest.mark.parametrize(
    ("error", "level"),
    [(NoRoute("x"), logging.INFO), (UpstreamConnectTimeout("y"), logging.WARNING)],
)
async def test_the_log_level_is_the_errors_fault(
    error: EdgeError, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="edge.http"):
        await exchange(failing(error))
    failed = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert [r.levelno for r in failed] == [level]


async def test_a_failure_after_the_response_started_aborts() -> None:
    def started_then_failed(ex: Exchange) -> None:
        ex.start_response(200, [(b"content-length", b"10")])
        ex.fail(UpstreamConnectTimeout("upstream went quiet"))

    found = await exchange(started_then_failed)
    assert found.transport.aborted
    assert found.status in (0, 200)  # the head may have left; no error body follows
    assert b"gateway" not in found.body
