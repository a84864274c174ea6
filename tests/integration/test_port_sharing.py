"""A second edge on the ports of a running one: refused, unless both set SHARE_PORTS=true
(the zero-downtime upgrade: the new edge joins, the old one drains)."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import EdgeProcess, Upstream, proxy_doc, wait_for


def records(edge: EdgeProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in edge.stderr().splitlines() if line.startswith("{")]


def refusal(edge: EdgeProcess) -> dict[str, Any]:
    edge.expect_errors("cannot listen")
    assert edge.proc is not None
    assert edge.proc.wait(timeout=20) != 0
    assert "Traceback" not in edge.stderr()
    found = [r for r in records(edge) if r["message"] == "cannot listen"]
    assert found, edge.stderr()
    assert not any(r["message"] == "edge started" for r in records(edge))
    return found[0]


def get(port: int, host: str = "app.test") -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()
        return int(resp.status)


@pytest.fixture
def app(upstream: Upstream, redis_db: Any) -> Upstream:
    redis_db.client().set("proxy:app.test", proxy_doc("app.test", upstream.url))
    return upstream


def test_second_edge_on_the_same_port_is_refused(
    edge_factory: Callable[..., EdgeProcess], app: Upstream
) -> None:
    first = edge_factory()
    second = edge_factory(wait=False, HTTP_PORT=first.http_port)
    rec = refusal(second)
    assert rec["setting"] == "HTTP_PORT"
    assert rec["address"] == f"127.0.0.1:{first.http_port}"
    assert rec["error"] == "another edge is listening on this port"
    assert "SHARE_PORTS=true on both" in rec["hint"]
    # the first one still serves every request alone
    before = first.health()["requests"]
    assert [get(first.http_port) for _ in range(10)] == [200] * 10
    assert first.health()["requests"] == before + 11  # and this /health


def test_a_sharing_edge_cannot_join_one_that_does_not_share(
    edge_factory: Callable[..., EdgeProcess], app: Upstream
) -> None:
    first = edge_factory()
    second = edge_factory(wait=False, HTTP_PORT=first.http_port, SHARE_PORTS="true")
    rec = refusal(second)
    assert "not started with SHARE_PORTS=true" in rec["error"]
    assert get(first.http_port) == 200


def test_an_edge_that_does_not_share_cannot_join_sharing_ones(
    edge_factory: Callable[..., EdgeProcess], app: Upstream
) -> None:
    first = edge_factory(SHARE_PORTS="true")
    second = edge_factory(wait=False, HTTP_PORT=first.http_port)
    rec = refusal(second)
    assert rec["error"] == "Address already in use"
    assert "SHARE_PORTS=true on both" in rec["hint"]


def test_a_port_held_by_another_program_is_refused_before_anything_starts(
    edge_factory: Callable[..., EdgeProcess],
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        edge = edge_factory(
            wait=False, redis_url=None, API_PORT=port, EDGE_STATE_DIR="/nonexistent/x"
        )
        rec = refusal(edge)
    # refused before the embedded redis (whose state dir could not even be made) started
    assert rec["setting"] == "API_PORT" and rec["error"] == "Address already in use"


def test_sharing_edges_both_serve_and_the_old_one_drains_away(
    edge_factory: Callable[..., EdgeProcess], app: Upstream
) -> None:
    old = edge_factory(SHARE_PORTS="true")
    # its own API port, so that each edge's /health counts its own requests
    new = edge_factory(SHARE_PORTS="true", HTTP_PORT=old.http_port)
    # fresh connections are spread over both edges' workers by the kernel
    wait_for(
        lambda: (
            get(old.http_port) == 200
            and old.health()["requests"] > 0
            and new.health()["requests"] > 0
        ),
        timeout=20,
    )
    old.signal(signal.SIGTERM)
    assert old.proc is not None and old.proc.wait(timeout=20) == 0
    served = new.health()["requests"]
    assert [get(old.http_port) for _ in range(10)] == [200] * 10
    assert new.health()["requests"] == served + 11  # and this /health
