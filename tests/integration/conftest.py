"""Fixtures for the port-forward tunnel tests: real services to reach through a tunnel.

``postgres`` is a private PostgreSQL (``tests/pg_server.py``), ``target_redis`` a second
private redis-server, separate from the edge's own (``redis_db``): a tunnel target is a
service of a project, never the edge's configuration store.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import RedisServer
from tests.pg_server import PostgresServer


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL per test process, removed at the end; use ``postgres`` in tests."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The private PostgreSQL, running at the start of the test and after it (a test may
    stop it to make its target unreachable). ``postgres.port``, ``postgres.dsn``,
    ``postgres.psql(sql, port=tunnel_port)``."""
    if postgres_server.proc is None or postgres_server.proc.poll() is not None:
        postgres_server.start()
    yield postgres_server
    if postgres_server.proc is None or postgres_server.proc.poll() is not None:
        postgres_server.start()


@pytest.fixture(scope="session")
def target_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A second redis-server per test process, not the edge's; use ``target_redis``."""
    server = RedisServer(tmp_path_factory.mktemp("target-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def target_redis(target_redis_server: RedisServer) -> Iterator[RedisServer]:
    """The second redis-server, running and empty at the start of the test (and running
    after it, should the test stop it)."""
    if target_redis_server.proc is None or target_redis_server.proc.poll() is not None:
        target_redis_server.start()
    target_redis_server.client().flushall()
    yield target_redis_server
    if target_redis_server.proc is None or target_redis_server.proc.poll() is not None:
        target_redis_server.start()
