"""The dispatcher with the worker's own forwarding handler, on snapshots of real documents.

A real ``HttpConnection`` (over the component tier's fake transport, a real h11 client at
the other end) hands each request to a real ``Dispatcher`` whose ``forward`` kind is the
real ``Forwarder`` on an ``UpstreamPool``; the table is compiled from snapshots that
``apply``/``adopt`` built from the JSON documents Redis would hold. The upstream is an
h11 server on a loopback socket in the same loop, or a pooled connection over a fake
transport. Every answer the dispatcher gives itself is checked to leave the upstream
untouched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest

from edge.config.snapshot import Snapshot, adopt, apply
from edge.handlers.forward import Forwarder
from edge.http1.exchange import Exchange
from edge.routing.checks import ACME_CHALLENGE_PREFIX
from edge.routing.dispatch import Dispatcher
from edge.routing.mount import Mount
from edge.routing.target import parse_target
from edge.upstream.connection import UpstreamConnection
from edge.upstream.pool import UpstreamPool
from tests.component.harness import Answer, Downstream, FakeTransport, H11Peer, quiet_hub


class Origin(asyncio.Protocol):
    """One connection of the loopback upstream: stock h11 as the server; each request is
    answered 200 with a JSON document of what arrived (method, target, headers)."""

    def __init__(self, server: OriginServer) -> None:
        self.server = server
        self.h11 = h11.Connection(h11.SERVER)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.connections += 1

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
            elif isinstance(event, h11.EndOfMessage):
                self._answer()

    def _answer(self) -> None:
        assert self.request is not None and self.transport is not None
        seen = {
            "method": self.request.method.decode(),
            "target": self.request.target.decode(),
            "headers": {n.decode(): v.decode() for n, v in self.request.headers},
        }
        self.server.seen.append(seen)
        body = json.dumps(seen).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        self.transport.write(
            self.h11.send(h11.Response(status_code=200, headers=headers))
            + (self.h11.send(h11.Data(data=body)) or b"")
            + (self.h11.send(h11.EndOfMessage()) or b"")
        )
        self.h11.start_next_cycle()


class OriginServer:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
async def origin() -> AsyncIterator[OriginServer]:
    found = OriginServer()
    loop = asyncio.get_running_loop()
    found.server = await loop.create_server(lambda: Origin(found), "127.0.0.1", 0)
    yield found
    found.server.close()
    await found.server.wait_closed()


def proxy(hostname: str, target_url: str, **extra: Any) -> tuple[str, bytes]:
    doc = {"hostname": hostname, "target_url": target_url, **extra}
    return f"proxy:{hostname}", json.dumps(doc).encode()


def hostname_route(route_id: str, path: str, to: str, on: str) -> tuple[str, bytes]:
    doc = {
        "route_id": route_id,
        "path_pattern": path,
        "target_type": "hostname",
        "target_value": to,
        "scope": "proxy",
        "proxy_hostnames": [on],
    }
    return f"route:{route_id}", json.dumps(doc).encode()


def snapshot(*items: tuple[str, bytes], base: Snapshot | None = None) -> Snapshot:
    return apply(base or Snapshot(), dict(items))


class Edge:
    """One worker's dispatcher and forwarding handler, and a client connection to it."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(loop, idle_limit=4, idle_timeout=30.0, connect_timeout=2.0)
        self.forwarder = Forwarder(self.pool, 5.0)
        self.dispatch = Dispatcher(self.forwarder)
        self.hub, self.records = quiet_hub()
        self.clients: list[Downstream] = []

    def client(self, scheme: str = "http") -> Downstream:
        found = Downstream(self.hub, self.dispatch, scheme)
        self.clients.append(found)
        return found

    async def get(
        self, host: str, target: str = "/", method: str = "GET", scheme: str = "http"
    ) -> Answer:
        body = b"x" if method == "POST" else b""
        return await self.client(scheme).request(method, target, host=host, body=body)

    async def close(self) -> None:
        for client in self.clients:
            client.close()
        self.pool.close_all()
        for task in list(self.forwarder.tasks):
            task.cancel()
        await asyncio.sleep(0)


@pytest.fixture
async def edge() -> AsyncIterator[Edge]:
    found = Edge()
    yield found
    await found.close()


def edge_error(answer: Answer, status: int, code: str, message: str) -> None:
    """The edge's own JSON error, with the request id of the answer's header."""
    assert answer.status == status, answer
    assert answer.headers[b"content-type"] == b"application/json"
    rid = answer.headers[b"x-request-id"].decode()
    assert answer.json() == {"error": {"code": code, "message": message, "request_id": rid}}


# ---------------------------------------------------------------------------
# answered by the dispatcher itself
# ---------------------------------------------------------------------------


async def test_an_unknown_host_is_404_with_the_json_body(edge: Edge, origin: OriginServer) -> None:
    served = snapshot(proxy("app.test", origin.url))
    edge.dispatch.install(served)
    edge_error(
        await edge.get("nothing.test"), 404, "not_found", "no proxy is configured for this host"
    )
    # a host whose only document was refused says which key to fix
    edge.dispatch.install(snapshot(("proxy:broken.test", b"{"), base=served))
    edge_error(
        await edge.get("broken.test"),
        404,
        "not_found",
        "the proxy config for this host was rejected (proxy:broken.test)",
    )
    assert [r.status for r in edge.records] == [404, 404]
    assert origin.seen == [] and origin.connections == 0


async def test_a_disabled_proxy_is_404_before_its_redirect(
    edge: Edge, origin: OriginServer
) -> None:
    edge.dispatch.install(snapshot(proxy("off.test", origin.url, enabled=False, enable_http=False)))
    message = "the proxy for this host is disabled"
    edge_error(await edge.get("off.test"), 404, "not_found", message)
    edge_error(await edge.get("off.test", scheme="https"), 404, "not_found", message)
    assert origin.connections == 0


async def test_http_is_redirected_to_https_except_acme_challenges(
    edge: Edge, origin: OriginServer
) -> None:
    edge.dispatch.install(snapshot(proxy("secure.test", origin.url, enable_http=False)))
    got = await edge.get("secure.test", "/page?q=1")
    assert (got.status, got.headers[b"location"]) == (301, b"https://secure.test/page?q=1")
    got = await edge.get("secure.test", "/form", method="POST")
    assert (got.status, got.headers[b"location"]) == (308, b"https://secure.test/form")
    assert origin.seen == []
    # RFC 8555 §8.3: the challenge is fetched over plain HTTP, and forwarded as before
    challenge = ACME_CHALLENGE_PREFIX + "tok"
    got = await edge.get("secure.test", challenge)
    assert got.status == 200 and got.json()["target"] == challenge
    # over TLS the proxy is simply forwarded
    got = await edge.get("secure.test", "/page", scheme="https")
    assert got.status == 200 and got.json()["headers"]["x-forwarded-proto"] == "https"
    assert [seen["target"] for seen in origin.seen] == [challenge, "/page"]


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, ex: Exchange) -> None:
        ex.respond(200, self.name.encode())


async def test_a_mount_answers_on_every_host_before_host_routing(
    edge: Edge, origin: OriginServer
) -> None:
    edge.dispatch.install(
        snapshot(
            proxy("app.test", origin.url),
            proxy("off.test", origin.url, enabled=False),
            proxy("locked.test", origin.url, auth_enabled=True),
        )
    )
    edge.dispatch.mount(Mount("/.well-known/edge/", Named("mounted")))
    for host in ("app.test", "off.test", "locked.test", "nothing.test"):
        got = await edge.get(host, "/.well-known/edge/x")
        assert (got.status, got.body) == (200, b"mounted"), host
    assert origin.seen == []
    # beside the mount's prefix, routing as before
    assert (await edge.get("app.test", "/.well-known/other")).status == 200
    assert len(origin.seen) == 1


async def test_a_protected_proxy_fails_closed_and_so_does_a_route_into_it(
    edge: Edge, origin: OriginServer
) -> None:
    edge.dispatch.install(
        snapshot(
            proxy("locked.test", origin.url, auth_enabled=True),
            proxy("open.test", origin.url),
            hostname_route("in", "/in", "locked.test", on="open.test"),
        )
    )
    message = "authentication is required for this host but is not available"
    for scheme in ("http", "https"):
        got = await edge.get("locked.test", "/", scheme=scheme)
        edge_error(got, 503, "service_unavailable", message)
    # a hostname route on an open host never takes a request around the target's check
    edge_error(await edge.get("open.test", "/in"), 503, "service_unavailable", message)
    assert origin.seen == [] and origin.connections == 0
    assert (await edge.get("open.test", "/elsewhere")).status == 200


# ---------------------------------------------------------------------------
# forwarded
# ---------------------------------------------------------------------------


async def test_a_request_is_forwarded_to_a_loopback_upstream_and_answered(
    edge: Edge, origin: OriginServer
) -> None:
    edge.dispatch.install(snapshot(proxy("app.test", origin.url)))
    client = edge.client()
    first = await client.request("GET", "/a?b=1", host="app.test", headers=[("x-mine", "1")])
    assert first.status == 200
    seen = first.json()
    assert (seen["method"], seen["target"]) == ("GET", "/a?b=1")
    headers = seen["headers"]
    assert headers["host"] == "app.test"  # preserve_host, the default
    assert headers["x-forwarded-host"] == "app.test"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-mine"] == "1"
    assert headers["x-request-id"] == first.headers[b"x-request-id"].decode()
    # keep-alive on both legs: the next request goes on the pooled upstream connection
    second = await client.request("POST", "/b", host="app.test", body=b"payload")
    assert second.json()["method"] == "POST"
    assert origin.connections == 1
    assert [(r.host, r.status) for r in edge.records] == [("app.test", 200)] * 2


async def test_on_a_pooled_connection_the_whole_exchange_runs_inside_the_reads(
    edge: Edge,
) -> None:
    edge.dispatch.install(snapshot(proxy("app.test", "http://127.0.0.1:9")))
    upstream = UpstreamConnection(edge.pool, parse_target("http://127.0.0.1:9").origin)
    wire = FakeTransport()
    upstream.connection_made(wire)
    edge.pool.checkin(upstream)
    server = H11Peer(h11.SERVER, wire)
    client = edge.client()
    client.send("GET", "/x", host="app.test")
    request, end = server.receive()  # written within the client's read
    assert isinstance(request, h11.Request) and request.target == b"/x"
    assert isinstance(end, h11.EndOfMessage)
    upstream.data_received(server.respond(201, body=b"made"))
    got = client.ready()  # within the upstream's read: no task, no loop pass
    assert got is not None and (got.status, got.body) == (201, b"made")
    assert not edge.forwarder.tasks


async def test_a_rejected_value_keeps_its_last_good_one_forwarding(
    edge: Edge, origin: OriginServer
) -> None:
    good = snapshot(proxy("app.test", origin.url))
    edge.dispatch.install(apply(good, {"proxy:app.test": b'{"hostname": "app.test"}'}))
    assert (await edge.get("app.test")).status == 200
    # a worker that never saw the good value answers 404 naming the key, until it adopts
    # the last good value another worker shares
    fresh = snapshot(("proxy:app.test", b"{"))
    edge.dispatch.install(fresh)
    assert (await edge.get("app.test")).status == 404
    edge.dispatch.install(adopt(fresh, {"proxy:app.test": good.raw["proxy:app.test"]}))
    assert (await edge.get("app.test")).status == 200
    assert len(origin.seen) == 2
