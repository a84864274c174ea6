"""The tunnel tests' targets are real and private: a PostgreSQL started with initdb on a
port of its own, and a second redis-server that is not the edge's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import RedisServer, require_tool
from tests.pg_server import PostgresServer


def test_psql_reaches_the_private_postgres(postgres: PostgresServer) -> None:
    assert postgres.port != 5432
    out = subprocess.run(
        [postgres.psql_path, "-X", "-At", "-c", "select 1", "-c", "show port",
         "-c", "select current_database()", postgres.dsn],
        capture_output=True, timeout=30, check=True, stdin=subprocess.DEVNULL,
    ).stdout.decode().split()  # fmt: skip
    assert out == ["1", str(postgres.port), "edge_test"]


def test_psql_helper_reports_errors(postgres: PostgresServer) -> None:
    assert postgres.psql("select 40 + 2") == "42\n"
    with pytest.raises(subprocess.CalledProcessError) as failed:
        postgres.psql("select * from no_such_table")
    assert b"no_such_table" in failed.value.stderr


def test_postgres_listens_on_loopback_only_with_its_own_socket(postgres: PostgresServer) -> None:
    assert postgres.psql("show listen_addresses") == "127.0.0.1\n"
    assert postgres.psql("show unix_socket_directories") == f"{postgres.socket_dir}\n"
    assert (postgres.socket_dir / f".s.PGSQL.{postgres.port}").is_socket()


def test_postgres_survives_a_restart(postgres: PostgresServer) -> None:
    postgres.psql("create table kept (v int); insert into kept values (7)")
    postgres.stop()
    with pytest.raises(subprocess.CalledProcessError):
        postgres.psql("select 1", timeout=10)
    postgres.start()
    assert postgres.psql("select v from kept") == "7\n"
    postgres.psql("drop table kept")


def test_cluster_runs_unprivileged(postgres: PostgresServer) -> None:
    """initdb and postgres refuse root: as root the cluster belongs to another user."""
    owner = postgres.data_dir.stat().st_uid
    assert owner == os.geteuid() or (os.geteuid() == 0 and owner != 0)


def test_target_redis_is_a_second_server(target_redis: RedisServer, redis_db: RedisServer) -> None:
    redis_cli = require_tool("redis-cli")
    assert target_redis.port not in (redis_db.port, 6379)
    pong = subprocess.run(
        [redis_cli, "-h", "127.0.0.1", "-p", str(target_redis.port), "PING"],
        capture_output=True, timeout=10, check=True,
    )  # fmt: skip
    assert pong.stdout == b"PONG\n"
    target_redis.client().set("only-here", "1")
    assert redis_db.client().get("only-here") is None


def test_missing_postgres_fails_instead_of_skipping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("tests.pg_server.DEBIAN_INITDB", str(tmp_path / "*" / "bin" / "initdb"))
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL is required"):
        PostgresServer(tmp_path)
