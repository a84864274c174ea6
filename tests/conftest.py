"""Shared fixtures: a private redis-server per session and edge processes per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme

from edge.auth.secrets import new_admin_token
from tests.helpers import EdgeProcess, RedisServer, Upstream


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session redis, running and empty at the start of the test."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    client.flushall()
    client.config_set("notify-keyspace-events", "")
    yield redis_server
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def edge_factory(
    redis_db: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., EdgeProcess]]:
    """Start edges against the test redis: ``edge_factory(EDGE_WORKERS=2, ...)``.

    After the test each edge is stopped and the test fails if one logged an error it did
    not declare (``@pytest.mark.edge_errors(r"regex", ...)`` or ``edge.expect_errors``).
    """
    started: list[EdgeProcess] = []

    def start(
        *args: str, redis_url: str | None = "default", wait: bool = True, **env: Any
    ) -> EdgeProcess:
        url = redis_db.url if redis_url == "default" else redis_url
        edge = EdgeProcess(url, tmp_path, **env)
        started.append(edge)
        return edge.start(*args, wait=wait)

    yield start
    for edge in started:
        edge.stop(timeout=10)
    allowed = [p for mark in request.node.iter_markers("edge_errors") for p in mark.args]
    for edge in started:
        edge.check_errors(allowed)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority for the module's certificates."""
    return trustme.CA()


@pytest.fixture
def rdb(redis_db: RedisServer) -> redis.Redis:
    """A client of the test's (empty) redis."""
    return redis_db.client()


@pytest.fixture
def admin() -> str:
    """A fresh admin token (give it to an edge as ADMIN_TOKEN)."""
    return new_admin_token()


@pytest.fixture
def api(edge_factory: Callable[..., EdgeProcess], admin: str) -> EdgeProcess:
    """An edge whose ADMIN_TOKEN is ``admin``."""
    return edge_factory(ADMIN_TOKEN=admin)


@pytest.fixture(params=["uvloop", "asyncio"])
def event_loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def edge(edge_factory: Callable[..., EdgeProcess], event_loop_name: str) -> EdgeProcess:
    """One edge worker, run under uvloop and under the default asyncio loop."""
    return edge_factory(EDGE_LOOP=event_loop_name, CONFIG_RESYNC_INTERVAL=30)


# ACME: a real Pebble, and the tests' own front for it (tests/pebble.py)
from tests.pebble import AcmeFront, Pebble  # noqa: E402


@pytest.fixture
def pebble_factory(tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    """Start Pebbles: ``pebble_factory(http_port=...)`` (the port HTTP-01 is validated
    on; more keywords go to :class:`tests.pebble.Pebble`); each is stopped after the test."""
    started: list[Pebble] = []

    def start(http_port: int, **options: Any) -> Pebble:
        pebble = Pebble(tmp_path, http_port, **options)
        started.append(pebble)
        return pebble.start()

    yield start
    for pebble in started:
        pebble.stop()


@pytest.fixture
def acme_front_factory() -> Iterator[Callable[..., AcmeFront]]:
    """Start AcmeFronts: ``acme_front_factory(pebble, renewal_info=False)``; each is
    stopped after the test."""
    started: list[AcmeFront] = []

    def start(pebble: Pebble, **options: Any) -> AcmeFront:
        front = AcmeFront(pebble, **options)
        started.append(front)
        return front.start()

    yield start
    for front in started:
        front.stop()
