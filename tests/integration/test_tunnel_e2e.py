"""Port-forward tunnels end to end: real tools through ``edge forward`` and a real edge.

``psql`` and ``pg_dump`` reach a private PostgreSQL, ``redis-cli`` a second redis-server;
loopback services hash a gibibyte each way, hold a slow reader, answer after a half-close.
The project, its member's PAT and the targets are made through the edge's admin API; the
client is ``edge forward`` as a process, each local connection its own ticket and tunnel.
Also: the cap of five sessions held by two edges on one Redis, a revoked PAT cutting a live
``psql`` session, and a drain ending a tunnel with 1001.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.forward_peers import (
    ForwardProcess,
    MiB,
    Project,
    RssSampler,
    StreamTarget,
    make_project,
    pattern,
    read_all,
    redis_command,
    resp,
    send_all,
    worker_pid,
)
from tests.haproxy import required_tool
from tests.helpers import EdgeProcess, RedisServer, wait_for
from tests.pg_server import PostgresServer

EdgeFactory = Callable[..., EdgeProcess]
ProjectFactory = Callable[..., Project]
GiB = 1024 * MiB
RSS_LIMIT_MIB = 64  # the edge worker's growth allowed while a tunnel carries any amount
REVOKED_LINE = (
    "closed by the edge: 4010 ticket invalid: the ticket was missing, used, expired or for "
    "another target, or the token was revoked or lost its access to the project"
)
GOING_AWAY_LINE = (
    "closed by the edge: 1001 edge going away: the edge is restarting or draining: connect again"
)
TOO_MANY_LINE = (
    "refused: ticket refused: 429 too_many_sessions: too many live sessions in the project "
    "(PORT_FORWARD_MAX_SESSIONS): close a tunnel and connect again"
)


@pytest.fixture
def projects(edge_factory: EdgeFactory, admin: str, tmp_path: Path) -> Iterator[ProjectFactory]:
    """``projects(**edge_env)``: an edge (one worker) and a project on it with a PAT."""
    made: list[Project] = []

    def make(**env: Any) -> Project:
        edge = edge_factory(ADMIN_TOKEN=admin, **env)
        project = make_project(edge, admin, tmp_path)
        made.append(project)
        return project

    yield make
    for project in made:
        project.close()


def forward_to(project: Project, target: str) -> ForwardProcess:
    project.wait_target(target)
    return project.forward(target)


def no_abnormal_end(forward: ForwardProcess) -> None:
    """Every tunnel of ``forward`` opened and ended without a refusal or a close code."""
    bad = forward.matching(r" refused: | closed by the edge: ")
    assert not bad, forward.stderr


# ---------------------------------------------------------------------------- real tools


@pytest.mark.timeout(120)
def test_psql_and_pg_dump_through_edge_forward(
    projects: ProjectFactory, postgres: PostgresServer, redis_db: RedisServer
) -> None:
    project = projects()
    target = f"database/{project.database('127.0.0.1', postgres.port)}"
    forward = forward_to(project, target)
    local = forward.port
    postgres.psql("DROP TABLE IF EXISTS tunnel_items")  # directly: the cluster is shared

    def psql(sql: str) -> str:
        return postgres.psql(sql, port=local)

    create = "CREATE TABLE tunnel_items (id int PRIMARY KEY, name text NOT NULL)"
    assert psql(create) == "CREATE TABLE\n"
    fill = "INSERT INTO tunnel_items SELECT n, 'item ' || n FROM generate_series(1, 50000) n"
    assert psql(fill) == "INSERT 0 50000\n"
    one = "INSERT INTO tunnel_items VALUES (0, 'zero') RETURNING name"
    assert psql(one) == "zero\nINSERT 0 1\n"
    assert psql("SELECT count(*), sum(id) FROM tunnel_items") == "50001|1250025000\n"
    assert psql("SELECT name FROM tunnel_items WHERE id = 4242") == "item 4242\n"
    # the rows are in the real database, seen without the tunnel
    assert postgres.psql("SELECT max(name) FROM tunnel_items WHERE id < 10") == "zero\n"
    # a whole result of ~1 MB coming back
    rows = psql("SELECT id, name FROM tunnel_items ORDER BY id")
    assert len(rows.splitlines()) == 50001 and rows.endswith("50000|item 50000\n")

    pg_dump = str(postgres.bindir / "pg_dump")

    def dump(port: int) -> str:
        done = subprocess.run(
            [pg_dump, "-h", "127.0.0.1", "-p", str(port), "-U", postgres.user,
             "-d", postgres.database, "-t", "tunnel_items"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        # recent pg_dump brackets its output with \restrict KEY ... \unrestrict KEY, a
        # random key each run
        return re.sub(r"(?m)^\\(un)?restrict \S+$", r"\\\1restrict KEY", done.stdout)

    through = dump(local)
    assert through == dump(postgres.port)  # byte for byte what the direct dump gives
    assert "CREATE TABLE public.tunnel_items" in through
    assert "COPY public.tunnel_items (id, name) FROM stdin;" in through
    assert "\n50000\titem 50000\n" in through

    # one tunnel per connection (psql: 6, pg_dump: 1), each ended normally, slots given back
    wait_for(lambda: len(forward.matching(r"^edge: connection \d+ .* ended: ")) == 7)
    no_abnormal_end(forward)
    wait_for(lambda: project.slots(redis_db) == 0)
    assert forward.stop() == 0


@pytest.mark.timeout(90)
def test_redis_cli_through_edge_forward(
    projects: ProjectFactory, target_redis: RedisServer, redis_db: RedisServer
) -> None:
    project = projects()
    resource = project.resource("127.0.0.1", 6, internal=(target_redis.port,))
    forward = forward_to(project, f"resource/{resource}:{target_redis.port}")
    cli = required_tool("redis-cli")

    def redis_cli(*args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(forward.port), *args],
            input=stdin, capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done
        return done.stdout.decode()

    assert redis_cli("SET", "greeting", "hello through the edge") == "OK\n"
    assert redis_cli("GET", "greeting") == "hello through the edge\n"
    assert target_redis.client().get("greeting") == b"hello through the edge"  # the real one
    big = os.urandom(3 * MiB).hex()  # a 6 MB value each way
    assert redis_cli("-x", "SET", "big", stdin=big.encode()) == "OK\n"
    assert redis_cli("STRLEN", "big") == f"{len(big)}\n"
    assert redis_cli("GET", "big") == big + "\n"

    # mass insertion: --pipe writes every command at once, then reads the replies
    count = 20000
    commands = b"".join(resp("SET", f"key:{i}", f"value:{i}") for i in range(count))
    out = redis_cli("--pipe", stdin=commands)
    assert f"errors: 0, replies: {count}" in out, out
    client = target_redis.client()
    assert client.dbsize() == count + 2
    assert client.get(f"key:{count - 1}") == f"value:{count - 1}".encode()

    wait_for(lambda: len(forward.matching(r" ended: ")) == 6)
    no_abnormal_end(forward)
    wait_for(lambda: project.slots(redis_db) == 0)


# ---------------------------------------------------------------------------- bytes


@pytest.mark.timeout(240)
def test_a_gibibyte_each_way_with_equal_sha256_and_bounded_edge_memory(
    projects: ProjectFactory,
) -> None:
    target = StreamTarget(send=GiB, seed=2)
    try:
        project = projects()
        resource = project.resource("127.0.0.1", target.port)
        forward = forward_to(project, f"resource/{resource}")
        pid = worker_pid(project.edge)
        up_sha: list[str] = []
        with forward.connect() as client, RssSampler(pid) as edge_rss:
            client.settimeout(120)
            started = time.monotonic()
            sender = threading.Thread(
                target=lambda: up_sha.append(send_all(client, pattern(3, GiB))), daemon=True
            )
            sender.start()
            try:
                size, down_sha = read_all(client)
            except OSError as exc:  # say what each end saw
                raise AssertionError(
                    f"{exc!r}; edge forward: {forward.lines[-8:]}; "
                    f"edge: {project.edge.stderr()[-3000:]}"
                ) from exc
            down_done = time.monotonic() - started
            sender.join(120)
            assert target.served and target.served[0].done.wait(60)
            took = time.monotonic() - started
        served = target.served[0]
        assert not served.error, served.error
        assert (size, down_sha) == (GiB, served.sent_sha)  # target -> client, whole
        assert (served.received, served.received_sha) == (GiB, up_sha[0])  # client -> target
        print(
            f"\n1 GiB each way at once through edge forward + edge: {took:.1f} s "
            f"(down alone {down_done:.1f} s), {2 * GiB / MiB / took:.0f} MiB/s in total; "
            f"edge worker RSS {edge_rss.start / 1024:.1f} MiB at the start, peak "
            f"+{edge_rss.growth_mib:.1f} MiB over {edge_rss.samples} samples"
        )
        assert edge_rss.samples > 10
        assert edge_rss.growth_mib < RSS_LIMIT_MIB, edge_rss.growth_mib
        line = forward.wait_line(r" ended: ")
        assert "in 1.1 GB, out 1.1 GB" in line, line
        tunnels = project.edge.health()["tunnels"]
        assert (tunnels["open"], tunnels["bytes_in"], tunnels["bytes_out"]) == (0, GiB, GiB)
        no_abnormal_end(forward)
    finally:
        target.close()


@pytest.mark.timeout(120)
def test_a_slow_reader_holds_the_target_back_and_gets_every_byte(
    projects: ProjectFactory,
) -> None:
    """The client does not read for a while, then reads slowly: the target, which writes
    as fast as it can, is held back by the whole chain (edge forward, edge); the edge's
    memory does not grow with what the target wanted to send; the bytes arrive intact."""
    total = 512 * MiB
    target = StreamTarget(send=total, seed=4)
    try:
        project = projects()
        resource = project.resource("127.0.0.1", target.port)
        forward = forward_to(project, f"resource/{resource}")
        pid = worker_pid(project.edge)
        with forward.connect() as client, RssSampler(pid) as edge_rss:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            wait_for(lambda: target.served and target.served[0].sent[0] > 0)
            served = target.served[0]
            time.sleep(3)  # not reading at all
            stalled = served.sent[0]
            time.sleep(1)
            assert served.sent[0] - stalled <= 2 * MiB  # the target is held back
            print(f"\nsent by the target while the client read nothing: {stalled / MiB:.1f} MiB")
            assert stalled < total // 4, stalled  # far from all of it: nothing piles up

            digest = hashlib.sha256()
            got = 0
            slow_until = time.monotonic() + 3
            while time.monotonic() < slow_until:  # ~1.6 MB/s
                chunk = client.recv(16 * 1024)
                assert chunk
                digest.update(chunk)
                got += len(chunk)
                time.sleep(0.01)
            ahead = served.sent[0] - got  # in flight: buffers along the way, not more
            assert ahead <= stalled + 2 * MiB, (ahead, stalled)
            while chunk := client.recv(MiB):  # then fast, to the end
                digest.update(chunk)
                got += len(chunk)
            client.shutdown(socket.SHUT_WR)
            assert served.done.wait(30)
        assert not served.error, served.error
        assert (got, digest.hexdigest()) == (total, served.sent_sha)
        print(f"edge worker RSS peak +{edge_rss.growth_mib:.1f} MiB")
        assert edge_rss.growth_mib < RSS_LIMIT_MIB, edge_rss.growth_mib
        forward.wait_line(r" ended: ")
        no_abnormal_end(forward)
    finally:
        target.close()


@pytest.mark.timeout(90)
def test_half_close_through_edge_forward(projects: ProjectFactory) -> None:
    """The local client shuts down its write side: the target reads to EOF, then answers
    (a line with what it got, and 2 MiB more); the client reads all of it."""
    tail = b"".join(pattern(5, 2 * MiB + 3))

    def answer(count: int, sha: str) -> bytes:
        return f"{count} {sha}\n".encode() + tail

    target = StreamTarget(answer=answer)
    try:
        project = projects()
        resource = project.resource("127.0.0.1", target.port)
        forward = forward_to(project, f"resource/{resource}")
        for size in (0, 1, 65536, 3 * MiB + 5):
            question = os.urandom(size)
            with forward.connect() as client:
                client.sendall(question)
                client.shutdown(socket.SHUT_WR)
                received = bytearray()
                while chunk := client.recv(MiB):
                    received += chunk
            line, _, rest = bytes(received).partition(b"\n")
            assert line.decode() == f"{size} {hashlib.sha256(question).hexdigest()}"
            assert rest == tail
        wait_for(lambda: len(forward.matching(r" ended: ")) == 4)
        no_abnormal_end(forward)
        assert all(s.done.is_set() and not s.error for s in target.served)
    finally:
        target.close()


# ---------------------------------------------------------------------------- sessions


def ping(sock: socket.socket) -> None:
    assert redis_command(sock, "PING") == b"+PONG\r\n"


@pytest.mark.timeout(90)
def test_the_cap_of_five_holds_across_two_edges(
    edge_factory: EdgeFactory,
    admin: str,
    redis_db: RedisServer,
    target_redis: RedisServer,
    tmp_path: Path,
) -> None:
    first = edge_factory(ADMIN_TOKEN=admin)
    second = edge_factory(ADMIN_TOKEN=admin)
    project = make_project(first, admin, tmp_path)
    try:
        resource = project.resource("127.0.0.1", target_redis.port)
        target = f"resource/{resource}"
        project.wait_target(target, first, second)
        via = {"first": project.forward(target, first), "second": project.forward(target, second)}
        live: list[socket.socket] = []
        for name in ("first", "second", "first", "second", "first"):
            sock = via[name].connect()
            ping(sock)  # the tunnel is open end to end
            live.append(sock)
        assert project.slots(redis_db) == 5
        assert [e.health()["tunnels"]["open"] for e in (first, second)] == [3, 2]

        for name, number in (("first", 4), ("second", 3)):
            with via[name].connect() as sixth:
                sixth.settimeout(10)
                assert sixth.recv(1) == b""  # closed by edge forward: no tunnel
            line = via[name].wait_line(rf"^edge: connection {number} from .* refused: ")
            assert TOO_MANY_LINE in line, line
        assert project.slots(redis_db) == 5
        for sock in live:
            ping(sock)  # the five are unharmed

        # one tunnel through the first edge ends: its slot is free, for the other edge too
        live.pop(0).close()
        wait_for(lambda: project.slots(redis_db) == 4, timeout=5)
        sock = via["second"].connect()
        ping(sock)
        live.append(sock)
        assert project.slots(redis_db) == 5
        with via["first"].connect() as seventh:
            seventh.settimeout(10)
            assert seventh.recv(1) == b""
        assert TOO_MANY_LINE in via["first"].wait_line(r"^edge: connection 5 from .* refused: ")
        for sock in live:
            ping(sock)
            sock.close()
        wait_for(lambda: project.slots(redis_db) == 0, timeout=5)
        for forward in via.values():
            assert not forward.matching(" closed by the edge: "), forward.stderr
    finally:
        project.close()


@pytest.mark.timeout(60)
def test_revoking_the_pat_cuts_a_live_psql_session(
    projects: ProjectFactory, postgres: PostgresServer, redis_db: RedisServer
) -> None:
    project = projects()
    target = f"database/{project.database('127.0.0.1', postgres.port)}"
    forward = forward_to(project, target)
    psql = subprocess.Popen(
        [postgres.psql_path, "-X", "-At", "-v", "ON_ERROR_STOP=1", postgres.dsn_for(forward.port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert psql.stdin is not None and psql.stdout is not None and psql.stderr is not None
        psql.stdin.write("SELECT 'before';\n")
        psql.stdin.flush()
        assert psql.stdout.readline() == "before\n"
        time.sleep(1.5)  # the keeper has looked at the tunnel and let it be
        assert psql.poll() is None and not forward.matching("closed by")

        began = time.monotonic()
        revoked = project.revoke()
        assert revoked.status == 200, revoked.raw
        line = forward.wait_line(r" closed by the edge: ", timeout=5)
        took = time.monotonic() - began
        print(f"\nrevoked -> edge forward's 4010 line: {took:.2f} s")
        assert took < 2.0, took
        assert REVOKED_LINE in line, line

        psql.stdin.write("SELECT 'after';\n")
        psql.stdin.close()
        assert psql.wait(10) == 2  # psql: the connection to the server was lost
        error = psql.stderr.read()
        assert "server closed the connection unexpectedly" in error, error
        assert psql.stdout.read() == ""
    finally:
        if psql.poll() is None:
            psql.kill()
        psql.wait()
    wait_for(lambda: project.slots(redis_db) == 0, timeout=5)
    # the revoked PAT buys no other tunnel
    with forward.connect() as again:
        again.settimeout(10)
        assert again.recv(1) == b""
    assert "refused: ticket refused: 401 " in forward.wait_line(r"^edge: connection 2 .* refused")


@pytest.mark.timeout(60)
def test_a_drain_closes_the_tunnel_with_1001_and_the_edge_exits_in_time(
    projects: ProjectFactory, target_redis: RedisServer
) -> None:
    drain_timeout = 8.0
    project = projects(DRAIN_TIMEOUT=drain_timeout, DRAIN_WEBSOCKET_GRACE=1)
    resource = project.resource("127.0.0.1", target_redis.port)
    forward = forward_to(project, f"resource/{resource}")
    edge = project.edge
    assert edge.proc is not None
    with forward.connect() as sock:
        ping(sock)
        sock.settimeout(drain_timeout + 5)
        began = time.monotonic()
        edge.signal(signal.SIGTERM)
        assert sock.recv(1) == b""  # edge forward ended the local connection
        seen = time.monotonic() - began
    line = forward.wait_line(r" closed by the edge: ")
    assert GOING_AWAY_LINE in line, line
    status = edge.proc.wait(drain_timeout + 5)
    took = time.monotonic() - began
    assert status == 0, edge.stderr()
    print(f"\nSIGTERM -> tunnel ended {seen:.2f} s, edge exited {took:.2f} s")
    assert 0.8 < seen < drain_timeout / 2, seen  # after the grace for tunnels, not the end
    assert took < drain_timeout, took
    assert forward.proc.poll() is None  # edge forward keeps listening for the next one
