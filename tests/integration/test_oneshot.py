"""``edge.store.oneshot``: the blocking reader of ``edge cert list`` and ``edge check``,
against a real redis-server (its own RESP for redis:// and unix://, redis-py otherwise)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import redis

from edge.settings import RedisTarget
from edge.store.oneshot import OneShotError, open_reader
from tests.helpers import RedisServer, free_port, require_tool, wait_for

SECRET = "s3cret-pw"


def fill(server: RedisServer, db: int = 0) -> None:
    client = server.client()
    client.execute_command("SELECT", db)
    client.flushdb()
    for i in range(2500):  # more than one SCAN answer and one MGET batch
        client.set(f"cert:n{i:04}", f"v{i}")
    client.set("cert:bin", b"\x00\r\n\xff")
    client.hset("cert:hashed", "a", "b")
    client.set("other:x", "y")


def read_all(target: RedisTarget) -> tuple[list[str], dict[str, bytes | None], dict[str, str]]:
    reader = open_reader(target)
    try:
        keys = reader.scan("cert:*")
        values = reader.mget(keys)
        kinds = reader.types([k for k, v in values.items() if v is None] + ["cert:absent"])
    finally:
        reader.close()
    return keys, values, kinds


def check(target: RedisTarget) -> None:
    keys, values, kinds = read_all(target)
    assert len(keys) == 2502 and keys == sorted(keys) and "other:x" not in keys
    assert values["cert:n1234"] == b"v1234"
    assert values["cert:bin"] == b"\x00\r\n\xff"
    assert values["cert:hashed"] is None
    assert kinds == {"cert:hashed": "hash", "cert:absent": "none"}


def test_reads_over_tcp_and_through_redis_py_alike(redis_db: RedisServer) -> None:
    fill(redis_db)
    check(RedisTarget(redis_db.url))
    # an option only redis-py knows: its client, the same answers
    check(RedisTarget(redis_db.url + "?socket_keepalive=true"))


def test_database_login_and_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "r.sock"
    proc = subprocess.Popen(
        [require_tool("redis-server"), "--port", str(free_port()), "--bind", "127.0.0.1",
         "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--requirepass", SECRET],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(sock.exists, timeout=10)
        client = redis.Redis(unix_socket_path=str(sock), password=SECRET)
        wait_for(client.ping, timeout=10)
        client.execute_command("SELECT", 3)
        client.set("cert:in3", "x")
        found = read_all(RedisTarget(f"unix://{sock}?db=3", password=SECRET))
        assert found[0] == ["cert:in3"]
        found = read_all(RedisTarget(f"unix://:{SECRET}@{sock}?db=3"))
        assert found[0] == ["cert:in3"]
        assert read_all(RedisTarget(f"unix://{sock}", password=SECRET))[0] == []
        for target in (
            RedisTarget(f"unix://{sock}"),
            RedisTarget(f"unix://{sock}", password="wrong-" + SECRET),
            RedisTarget(f"unix://{sock}?db=3", username="nobody", password=SECRET),
        ):
            with pytest.raises(OneShotError) as caught:
                open_reader(target)
            assert SECRET not in str(caught.value)
            assert "NOAUTH" in str(caught.value) or "WRONGPASS" in str(caught.value)
    finally:
        proc.kill()
        proc.wait()


def test_unreachable_is_one_error(tmp_path: Path) -> None:
    for url in (f"redis://127.0.0.1:{free_port()}/0", f"unix://{tmp_path / 'none.sock'}"):
        with pytest.raises(OneShotError, match="cannot connect"):
            open_reader(RedisTarget(url))
