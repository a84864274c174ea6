"""A tunnel through HAProxy stays up while idle because the edge pings it.

HAProxy is in front of the edge as in production, with a short inactivity limit (3 s for
``timeout client``, ``server`` and ``tunnel``): ``mode http`` to the edge's HTTP listener,
and ``mode tcp`` with ``send-proxy-v2`` to its PROXY listener; the edge serves its API on
``API_HOSTNAME`` (``localhost``) there, and ``edge forward`` buys tickets and opens tunnels
through HAProxy only. With ``PORT_FORWARD_PING_INTERVAL`` 1 s a redis session idle for 6 s
still works; with 10 s, the same idle session is cut by HAProxy: the pings are what keep
it, not a timeout too generous to matter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.forward_peers import ForwardProcess, Project, make_project, redis_command
from tests.haproxy import HAProxy, Listen
from tests.helpers import EdgeProcess, RedisServer, free_port

EdgeFactory = Callable[..., EdgeProcess]
API_HOST = "localhost"  # resolves to loopback, so edge forward can use it in its URL
HAPROXY_IDLE = 3  # seconds
IDLE = 6.0  # seconds the tunnel stays idle: twice what HAProxy allows
TIMEOUTS = (
    f"timeout client {HAPROXY_IDLE}s",
    f"timeout server {HAPROXY_IDLE}s",
    f"timeout tunnel {HAPROXY_IDLE}s",
)


class Front:
    """An edge, HAProxy in front of it, a project with a resource (the target redis) and
    ``edge forward`` to that resource through HAProxy."""

    def __init__(
        self,
        mode: str,
        ping_interval: float,
        edge_factory: EdgeFactory,
        admin: str,
        target_redis: RedisServer,
        workdir: Path,
    ) -> None:
        env: dict[str, Any] = {
            "ADMIN_TOKEN": admin,
            "API_HOSTNAME": API_HOST,
            "PORT_FORWARD_PING_INTERVAL": ping_interval,
        }
        if mode == "tcp":
            env["PROXY_PROTOCOL_PORT"] = free_port()
        self.edge = edge_factory(**env)
        if mode == "http":
            listen = Listen(
                "front", self.edge.http_port, "", section_lines=("mode http", *TIMEOUTS)
            )
        else:
            port = int(env["PROXY_PROTOCOL_PORT"])
            listen = Listen("front", port, "send-proxy-v2", section_lines=TIMEOUTS)
        self.haproxy = HAProxy(workdir, [listen]).start()
        self.project: Project = make_project(self.edge, admin, workdir)
        resource = self.project.resource("127.0.0.1", target_redis.port)
        target = f"resource/{resource}"
        self.project.wait_target(target)
        url = f"http://{API_HOST}:{self.haproxy.port('front')}"
        self.forward: ForwardProcess = self.project.forward(target, url=url)

    def close(self) -> None:
        self.project.close()
        self.haproxy.stop()


@pytest.fixture
def front(
    edge_factory: EdgeFactory, admin: str, target_redis: RedisServer, tmp_path: Path
) -> Iterator[Callable[[str, float], Front]]:
    made: list[Front] = []

    def make(mode: str, ping_interval: float) -> Front:
        made.append(Front(mode, ping_interval, edge_factory, admin, target_redis, tmp_path))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_an_idle_tunnel_through_haproxy_is_kept_by_the_pings(
    front: Callable[[str, float], Front], target_redis: RedisServer, mode: str
) -> None:
    setup = front(mode, 1.0)
    with setup.forward.connect() as sock:
        assert redis_command(sock, "SET", "idle", "still here") == b"+OK\r\n"
        time.sleep(IDLE)
        assert redis_command(sock, "GET", "idle") == b"$10\r\nstill here\r\n"
        time.sleep(IDLE)
        assert redis_command(sock, "PING") == b"+PONG\r\n"
    assert target_redis.client().get("idle") == b"still here"
    setup.forward.wait_line(r" ended: ")
    assert not setup.forward.matching(r" refused: | closed by the edge: "), setup.forward.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["http", "tcp"])
def test_with_pings_slower_than_haproxy_allows_the_idle_tunnel_is_cut(
    front: Callable[[str, float], Front], mode: str
) -> None:
    setup = front(mode, 10.0)
    with setup.forward.connect() as sock:
        assert redis_command(sock, "SET", "idle", "soon gone") == b"+OK\r\n"
        began = time.monotonic()
        sock.settimeout(IDLE + 5)
        assert sock.recv(1) == b""  # HAProxy cut the tunnel; edge forward ends the connection
        took = time.monotonic() - began
    assert HAPROXY_IDLE - 0.5 < took < IDLE, took
    line = setup.forward.wait_line(r" closed by the edge: ")
    assert "1006 connection lost: the connection to the edge dropped without a Close" in line
