"""Port-forward tunnels under attack and abuse, on a real edge with a real Redis.

Each test plays a client or a target that misbehaves (never reads, half-closes too early,
sends unmasked or fragmented frames, names other targets, ports and projects with a ticket,
races for slots) and checks what the edge owes everyone else: nobody gets in who does not
belong, nothing is held after a tunnel ends (sockets, slots), the ticket is never written
anywhere but its own key, and the protocol ends the way RFC 6455 and the requirement say.

The edge's sockets are read from ``/proc``: which TCP connections the worker process still
holds, by their ports, so a connection the edge "closed" but keeps open is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis
import wsproto.events as wse

from edge.handlers.tunnel import CLOSE_TIMEOUT
from edge.tunnels.sessions import count, reserve
from tests.helpers import EdgeProcess, RedisServer
from tests.integration import test_tunnel_socket as _tunnels
from tests.integration.test_port_forward_tickets import make_world
from tests.integration.test_streaming import RssSampler, rss_kb
from tests.integration.test_tunnel_socket import (
    SUBPROTOCOL,
    Pump,
    RawClient,
    Target,
    World,
    WorldFactory,
    close_code,
    receive_exactly,
    stalled_listener,
    ws,
)

MiB = 1024 * 1024

# the fixtures of the tunnel endpoint tests: an edge, its Redis, the people, the targets
people = _tunnels.people
targets = _tunnels.targets
world = _tunnels.world


# ---------------------------------------------------------------------------- /proc


def _socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                found.add(int(link[8:-1]))
    return found


def tcp_connections(pid: int) -> list[tuple[int, int, int]]:
    """The TCP sockets process ``pid`` holds: (local port, remote port, state) each."""
    inodes = _socket_inodes(pid)
    held = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                parts = line.split()
                if int(parts[9]) not in inodes:
                    continue
                local = int(parts[1].rsplit(":", 1)[1], 16)
                remote = int(parts[2].rsplit(":", 1)[1], 16)
                held.append((local, remote, int(parts[3], 16)))
    return held


def holds_connection_from(pid: int, client_port: int) -> bool:
    """Whether the edge still holds the socket of the client that connected from
    ``client_port``."""
    return any(remote == client_port for _, remote, _ in tcp_connections(pid))


def worker_pid(w: World) -> int:
    return int(w.edge.health()["pid"])


async def slots_held(w: World) -> int:
    raw = await w.redis.zrange(f"port_forward:sessions:{w.project}", 0, -1)
    return len(raw)


# ---------------------------------------------------------------------------- resources


@pytest.fixture
async def pump_target() -> AsyncIterator[Target]:
    target = await Target(Pump()).start()
    yield target
    target.close()


async def test_a_client_that_never_reads_does_not_keep_its_socket_after_the_tunnel_ends(
    world: WorldFactory, pump_target: Target
) -> None:
    """The tunnel ends (the client's Close) while the edge still has bytes for a client
    that reads nothing: the client's socket must still be closed within a bound (as the
    target's is), or every such tunnel keeps a descriptor and its buffers for good, after
    its session slot was given back, so the cap no longer bounds them."""
    w = await world({"pump": pump_target.port})
    pid = worker_pid(w)
    text = await w.ticket("database", "db_pump")
    raw = await w.redis.get(f"port_forward_ticket:{text}")
    assert await reserve(w.redis, w.project, json.loads(raw)["session_id"], 5, 70)
    client = await RawClient.open(w.url("databases", "db_pump", text), [SUBPROTOCOL])
    port = client.writer.get_extra_info("sockname")[1]
    await asyncio.sleep(2)  # the pump fills every buffer on the way; the client reads nothing
    client.writer.write(client.ws.send(wse.CloseConnection(1000)))
    await client.writer.drain()
    # the edge answers the Close and ends the tunnel: its slot goes back, the target closes
    for _ in range(100):
        if w.edge.health()["tunnels"]["open"] == 0 and await slots_held(w) == 0:
            break
        await asyncio.sleep(0.05)
    assert w.edge.health()["tunnels"]["open"] == 0
    assert await slots_held(w) == 0  # the cap counts it no more
    # CLOSE_TIMEOUT (5 s) and more: the client's socket must be gone from the edge
    await asyncio.sleep(8)
    held = holds_connection_from(pid, port)
    client.writer.transport.abort()
    assert not held, "the edge still holds the socket of a tunnel that ended 8 s ago"


# ---------------------------------------------------------------------------- raw frames


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True) -> bytes:
    """One frame as a client would send it (RFC 6455 section 5.2), masked unless told."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", size)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


BINARY, CONTINUATION, PING, CLOSE = 0x2, 0x0, 0x9, 0x8


async def closed_with(client: RawClient) -> int:
    close = await client.until(wse.CloseConnection)
    assert isinstance(close, wse.CloseConnection)
    return close.code


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    made = Recorder()
    target = await Target(made).start()
    made.port = target.port
    yield made
    target.close()


class Recorder:
    """A target that keeps what each connection sent and when it saw the end (EOF)."""

    def __init__(self) -> None:
        self.port = 0
        self.received: list[bytearray] = []
        self.ended: list[asyncio.Event] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        ended = asyncio.Event()
        self.received.append(got)
        self.ended.append(ended)
        try:
            while data := await reader.read(65536):
                got += data
        finally:
            ended.set()

    async def wait_ended(self, index: int, within: float = 3.0) -> None:
        async with asyncio.timeout(within):
            while len(self.ended) <= index:  # noqa: ASYNC110 (a list the target fills)
                await asyncio.sleep(0.02)
            await self.ended[index].wait()


async def test_unmasked_client_frames_are_refused_and_never_reach_the_target(
    world: WorldFactory, recorder: Recorder
) -> None:
    w = await world({"rec": recorder.port})
    client = await RawClient.open(await w.database("db_rec"), [SUBPROTOCOL])
    client.writer.write(client_frame(BINARY, b"masked ok"))
    client.writer.write(client_frame(BINARY, b"UNMASKED", mask=False))
    client.writer.write(client_frame(BINARY, b"after it"))
    assert await closed_with(client) == 1002
    await recorder.wait_ended(0)
    assert bytes(recorder.received[0]) == b"masked ok"
    client.close()


async def test_control_frames_inside_a_fragmented_message_are_answered_and_the_bytes_kept(
    world: WorldFactory, recorder: Recorder
) -> None:
    w = await world({"rec": recorder.port})
    client = await RawClient.open(await w.database("db_rec"), [SUBPROTOCOL])
    client.writer.write(client_frame(BINARY, b"abc", fin=False))
    client.writer.write(client_frame(PING, b"in-between"))
    client.writer.write(client_frame(CONTINUATION, b"def", fin=False))
    client.writer.write(client_frame(CONTINUATION, b"ghi"))
    pong = await client.until(wse.Pong)
    assert isinstance(pong, wse.Pong) and pong.payload == b"in-between"
    # a fragmented control frame, and a continuation without a start: protocol errors
    client.writer.write(client_frame(PING, b"x", fin=False))
    assert await closed_with(client) == 1002
    await recorder.wait_ended(0)
    assert bytes(recorder.received[0]) == b"abcdefghi"
    client.close()
    client = await RawClient.open(await w.database("db_rec"), [SUBPROTOCOL])
    client.writer.write(client_frame(CONTINUATION, b"orphan"))
    assert await closed_with(client) == 1002
    await recorder.wait_ended(1)
    assert bytes(recorder.received[1]) == b""
    client.close()


async def test_a_fragmented_message_that_never_ends_is_capped(
    world: WorldFactory, recorder: Recorder
) -> None:
    w = await world({"rec": recorder.port}, PORT_FORWARD_MAX_MESSAGE=65536)
    client = await RawClient.open(await w.database("db_rec"), [SUBPROTOCOL])
    client.writer.write(client_frame(BINARY, b"s" * 1000, fin=False))
    for _ in range(70):  # 71,000 bytes in one message, never finished
        client.writer.write(client_frame(CONTINUATION, b"c" * 1000, fin=False))
    assert await closed_with(client) == 1009
    await recorder.wait_ended(0)
    assert len(recorder.received[0]) <= 65536
    client.close()
    # one frame announcing 2**62 bytes: closed once the cap is passed, nothing buffered
    client = await RawClient.open(await w.database("db_rec"), [SUBPROTOCOL])
    key = os.urandom(4)
    client.writer.write(bytes([0x82, 0xFF]) + struct.pack("!Q", 2**62) + key)
    client.writer.write(bytes(b ^ key[i % 4] for i, b in enumerate(b"h" * 70_000)))
    assert await closed_with(client) == 1009
    client.close()


async def test_the_close_handshake_completes_and_the_target_is_closed(
    world: WorldFactory, recorder: Recorder
) -> None:
    w = await world({"rec": recorder.port})
    # the client closes: the edge answers with the same code, then ends the TCP connection
    client = await RawClient.open(await w.database("db_rec"), [SUBPROTOCOL])
    client.writer.write(client.ws.send(wse.BytesMessage(b"bye")))
    client.writer.write(client.ws.send(wse.CloseConnection(4321, "done")))
    assert await closed_with(client) == 4321
    async with asyncio.timeout(3):
        assert await client.reader.read() == b""  # the edge's FIN after its Close
    await recorder.wait_ended(0)
    assert bytes(recorder.received[0]) == b"bye"
    client.close()
    # the client's TCP connection ends without a Close (FIN), or is reset: the target closes
    client = await RawClient.open(await w.database("db_rec"), [SUBPROTOCOL])
    client.writer.write_eof()
    await recorder.wait_ended(1)
    client.close()
    client = await RawClient.open(await w.database("db_rec"), [SUBPROTOCOL])
    client.writer.transport.abort()
    await recorder.wait_ended(2)
    for _ in range(40):
        if w.edge.health()["tunnels"]["open"] == 0 and await slots_held(w) == 0:
            break
        await asyncio.sleep(0.05)
    assert w.edge.health()["tunnels"]["open"] == 0


async def test_without_the_subprotocol_an_empty_message_is_not_an_end(
    world: WorldFactory,
) -> None:
    w = await world()
    async with ws(await w.database("db_answer"), subprotocol=False) as conn:
        assert conn.subprotocol is None
        await conn.send(b"abc")
        await conn.send(b"")  # plain WebSocket: nothing, the target keeps waiting
        await conn.send(b"def")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.recv(), 1)


# ---------------------------------------------------------------------------- raw upgrades

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
# PORT_FORWARD_SLOT_SECONDS where a test waits for slots to run out (45 by default)
SLOT = 6


async def upgrade(
    port: int, target: str, headers: dict[str, str] | None = None, *, eof: bool = False
) -> tuple[int, bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-written upgrade request for ``target`` (sent as is): the status, what came
    after the head (the first frames), and the socket."""
    fields = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": KEY,
        **(headers or {}),
    }
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    writer.write(head.encode("latin-1") + b"\r\n")
    if eof:
        writer.write_eof()
    async with asyncio.timeout(10):
        answer = await reader.readuntil(b"\r\n\r\n")
    status = int(answer.split(b" ", 2)[1])
    return status, answer, reader, writer


def first_close_code(data: bytes) -> int | None:
    """The code of the first Close frame in the server's ``data`` (unmasked frames)."""
    at = 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size = struct.unpack("!H", data[at : at + 2])[0]
            at += 2
        elif size == 127:
            size = struct.unpack("!Q", data[at : at + 8])[0]
            at += 8
        if opcode == CLOSE:
            return int(struct.unpack("!H", data[at : at + 2])[0]) if size >= 2 else 1005
        at += size
    return None


async def refusal(port: int, target: str, headers: dict[str, str] | None = None) -> int | str:
    """The Close code the edge answers ``target`` with after its 101, or the HTTP status
    when it gives no 101."""
    status, _, reader, writer = await upgrade(port, target, headers)
    try:
        if status != 101:
            return f"HTTP {status}"
        data = b""
        async with asyncio.timeout(10):
            while (code := first_close_code(data)) is None:
                more = await reader.read(65536)
                assert more, "closed without a Close frame"
                data += more
        return code
    finally:
        writer.transport.abort()


async def test_a_port_given_in_unicode_digits_is_a_port_mismatch_not_an_edge_failure(
    world: WorldFactory,
) -> None:
    """``port=²`` passes ``str.isdigit`` and fails ``int``: the edge must answer 4003 (a
    client's mistake), not log a failure and answer 1011."""
    w = await world()
    port = w.ports["echo"]
    ticket = await w.ticket("resource", "res_1", port)
    code = await refusal(
        w.edge.api_port, f"/port-forward/resources/res_1?ticket={ticket}&port=%C2%B2"
    )
    w.edge.stop()
    failures = [line for line in w.edge.stderr().splitlines() if "tunnel failed" in line]
    assert (code, failures) == (4003, [])


async def test_a_client_that_ends_its_side_before_the_101_does_not_hold_a_tunnel(
    world: WorldFactory,
) -> None:
    """The client sends its upgrade and at once its FIN (a script piping into a WebSocket
    tool, a client that gave up): once the 101 is out, the edge must see that end and
    close the tunnel and its target, not keep both (and the session slot) until the pings
    time out."""
    w = await world()
    ticket = await w.ticket("database", "db_echo")
    target = f"/port-forward/databases/db_echo?ticket={ticket}"
    status, _, _, writer = await upgrade(w.edge.api_port, target, eof=True)
    assert status == 101
    opened = time.monotonic()
    while time.monotonic() - opened < 5 and w.edge.health()["tunnels"]["open"]:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # (the edge's /health, polled)
    still_open = w.edge.health()["tunnels"]["open"]
    writer.transport.abort()
    assert still_open == 0, "a tunnel whose client ended before the 101 is still open after 5 s"


# ---------------------------------------------------------------------------- who gets in


async def test_a_ticket_opens_its_own_target_and_port_only_whatever_the_request_says(
    world: WorldFactory, targets: dict[str, Target]
) -> None:
    """Path, query and header tricks with real tickets: none reaches a target that is not
    the ticket's, on another port, or of another project."""
    w = await world()
    echo, greet = targets["echo"], targets["greet"]
    # another project's database, on the same echo service
    await w.redis.set(
        "database:db_theirs",
        json.dumps(
            {
                "id": "db_theirs",
                "project_id": "p_someoneelse",
                "name": "theirs",
                "engine": "postgres",
                "host": "127.0.0.1",
                "port": echo.port,
                "status": "created",
            }
        ),
    )
    for _ in range(100):  # the configuration watcher delivers it
        await asyncio.sleep(0.05)
        probe = await w.ticket("database", "db_theirs")
        if (
            await refusal(w.edge.api_port, f"/port-forward/databases/db_theirs?ticket={probe}")
            != 4004
        ):
            break
    api = w.edge.api_port
    res, db = "/port-forward/resources/res_1", "/port-forward/databases/db_echo"
    p = echo.port

    async def fresh_db() -> str:
        return await w.ticket("database", "db_echo")

    async def fresh_res(port: int = p) -> str:
        return await w.ticket("resource", "res_1", port)

    before = echo.connections + greet.connections
    outcomes: dict[str, int | str] = {}
    t = await w.ticket("database", "db_theirs")  # a ticket of our project naming theirs
    outcomes["other project's target"] = await refusal(
        api, f"/port-forward/databases/db_theirs?ticket={t}"
    )
    t = await fresh_db()
    outcomes["database ticket on a resource"] = await refusal(api, f"{res}?ticket={t}&port={p}")
    t = await fresh_res()
    outcomes["resource ticket on a database"] = await refusal(api, f"{db}?ticket={t}")
    t = await fresh_res()
    outcomes["two ports"] = await refusal(api, f"{res}?ticket={t}&port={p}&port={greet.port}")
    t = await fresh_res()
    outcomes["the internal port instead"] = await refusal(
        api, f"{res}?ticket={t}&port={greet.port}"
    )
    t = await fresh_res()
    outcomes["port in the path"] = await refusal(api, f"{res}?ticket={t}&port={p}%00{greet.port}")
    t = await fresh_db()
    outcomes["two tickets"] = await refusal(api, f"{db}?ticket={t}&ticket={t}")
    t = await fresh_db()
    outcomes["dot segments"] = await refusal(
        api, f"/port-forward/resources/../databases/db_echo?ticket={t}"
    )
    t = await fresh_db()
    outcomes["encoded slash"] = await refusal(
        api, f"/port-forward/databases/db_echo%2F..%2Fdb_theirs?ticket={t}"
    )
    t = await fresh_db()
    outcomes["case"] = await refusal(api, f"/port-forward/DATABASES/db_echo?ticket={t}")
    t = await fresh_db()
    outcomes["id case"] = await refusal(api, f"/port-forward/databases/DB_ECHO?ticket={t}")
    t = await fresh_db()
    outcomes["ticket case"] = await refusal(api, f"{db}?ticket={t.swapcase()}")
    outcomes["ticket prefix"] = await refusal(api, f"{db}?ticket={t[:63]}")
    outcomes["ticket with a suffix"] = await refusal(api, f"{db}?ticket={t}x")
    outcomes["ticket in a field"] = await refusal(
        api, db, {"Ticket": t, "Authorization": f"Bearer {t}"}
    )
    # nothing above reached a target
    assert echo.connections + greet.connections == before, outcomes
    assert all(
        code == 4010 or code == 4003 or str(code).startswith("HTTP 4") for code in outcomes.values()
    ), outcomes
    assert outcomes["two ports"] == outcomes["the internal port instead"] == 4003
    assert outcomes["other project's target"] == 4010
    # the same ticket, used twice: the second use finds nothing
    t = await fresh_db()
    async with ws(f"ws://127.0.0.1:{api}{db}?ticket={t}") as conn:
        assert await refusal(api, f"{db}?ticket={t}") == 4010
        await conn.send(b"still mine")
        assert await receive_exactly(conn, 10) == b"still mine"
    # the percent-encoded ticket is the same ticket: it opens its tunnel
    t = await fresh_db()
    encoded = "".join(f"%{ord(c):02X}" for c in t)
    async with ws(f"ws://127.0.0.1:{api}{db}?ticket={encoded}") as conn:
        await conn.send(b"x")
        assert await receive_exactly(conn, 1) == b"x"
    w.secrets_never_logged()


async def test_one_ticket_redeemed_by_many_at_once_opens_exactly_one_tunnel(
    world: WorldFactory, targets: dict[str, Target]
) -> None:
    w = await world()
    echo = targets["echo"]
    ticket = await w.ticket("database", "db_echo")
    url = w.url("databases", "db_echo", ticket)

    async def attempt() -> str:
        try:
            async with ws(url) as conn:
                await conn.send(b"mine")
                got = await asyncio.wait_for(conn.recv(), 10)
                return "open" if got == b"mine" else f"odd {got!r}"
        except Exception as exc:  # the losers: a Close 4010 right after the 101
            rcvd = getattr(exc, "rcvd", None)
            return str(rcvd.code) if rcvd is not None else type(exc).__name__

    results = await asyncio.gather(*(attempt() for _ in range(100)))
    assert sorted(results) == ["4010"] * 99 + ["open"], results
    assert echo.connections == 1


# ---------------------------------------------------------------------------- revocation


async def _closed_code_within(conn: object, seconds: float) -> tuple[int | None, float]:
    """Wait for the edge's Close on a ``websockets`` connection: its code and when."""
    began = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            while True:
                await conn.recv()  # type: ignore[attr-defined]
    except TimeoutError:
        return None, time.monotonic() - began
    except Exception as exc:
        rcvd = getattr(exc, "rcvd", None)
        return (rcvd.code if rcvd is not None else -1), time.monotonic() - began


@pytest.mark.parametrize("change", ["role lowered", "member removed", "pat revoked", "pat expires"])
async def test_losing_access_closes_live_tunnels_on_every_node_within_2s(
    world: WorldFactory, recorder: Recorder, change: str
) -> None:
    first = await world({"rec": recorder.port})
    second = await world({"rec": recorder.port})
    member_key = f"project:{first.project}:member:{first.user}"
    pat_key = f"pat:{first.pat}"
    async with (
        ws(await first.database("db_rec")) as a,
        ws(await second.database("db_rec")) as b,
    ):
        for conn in (a, b):
            await conn.send(b"x")
        await asyncio.sleep(1.5)  # both live past a keeper pass or more
        assert [len(r) for r in recorder.received] == [1, 1]
        if change == "role lowered":
            doc = json.loads(await first.redis.get(member_key))
            doc["role"] = "viewer"
            await first.redis.set(member_key, json.dumps(doc))
        elif change == "member removed":
            await first.redis.delete(member_key)
        else:
            doc = json.loads(await first.redis.get(pat_key))
            if change == "pat revoked":
                doc["revoked_at"] = "2026-01-01T00:00:00Z"
            else:
                soon = time.time() + 0.5
                doc["expires_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(soon)) + "Z"
            await first.redis.set(pat_key, json.dumps(doc))
        results = await asyncio.gather(_closed_code_within(a, 3.5), _closed_code_within(b, 3.5))
    limit = 3.0 if change == "pat expires" else 2.0  # (the expiry is a second ahead)
    assert [code for code, _ in results] == [4010, 4010], results
    assert all(took < limit for _, took in results), results
    await recorder.wait_ended(0)
    await recorder.wait_ended(1)


# ---------------------------------------------------------------------------- nothing held


def tunnel_sockets(pid: int, api_port: int, target_ports: set[int]) -> list[tuple[int, int, int]]:
    """The worker's sockets of tunnels: client connections on the API port (not the
    listener), connections to the targets."""
    listen = 0x0A
    return [
        (local, remote, state)
        for local, remote, state in tcp_connections(pid)
        if (local == api_port and state != listen) or remote in target_ports
    ]


def descriptors_besides_redis(pid: int, redis_port: int) -> int:
    """The worker's open descriptors, less its connections to Redis (whose pool grows
    with the commands in flight at once: a busy moment is no leak)."""
    to_redis = sum(1 for _, remote, _ in tcp_connections(pid) if remote == redis_port)
    return len(os.listdir(f"/proc/{pid}/fd")) - to_redis


async def test_no_socket_is_left_after_many_tunnels_end_every_way(
    world: WorldFactory, recorder: Recorder, targets: dict[str, Target], redis_db: RedisServer
) -> None:
    w = await world({"rec": recorder.port})
    pid = worker_pid(w)
    ports = {recorder.port, *(t.port for t in targets.values()), w.ports["down"]}
    redis_port = int(redis_db.url.rsplit(":", 1)[1].split("/")[0])
    fds_before = 0
    for round_ in range(8):
        async with ws(await w.database("db_echo")) as conn:  # the client closes
            await conn.send(b"a")
            assert await receive_exactly(conn, 1) == b"a"
        client = await RawClient.open(await w.database("db_rec"))  # the client resets
        client.writer.write(client.ws.send(wse.BytesMessage(b"r")))
        await client.writer.drain()
        client.writer.transport.abort()
        client = await RawClient.open(await w.database("db_rec"))  # the client's FIN only
        client.writer.write_eof()
        await asyncio.sleep(0.05)
        client.close()
        async with ws(await w.resource("res_1", w.ports["greet"]), subprotocol=False) as conn:
            assert await receive_exactly(conn, 6) == b"hello\n"  # then the target's FIN: 1000
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.recv(), 5)
        assert await close_code(await w.database("db_down")) == 4004
        assert await close_code(w.url("databases", "db_echo", "x" * 64)) == 4010
        assert await close_code(await w.database("db_new")) == 4005
        if round_ == 0:
            # after one round of each kind, and a second for the metrics to have written
            # (their files open once, at a kind's first write): what stays open is counted
            await asyncio.sleep(1.5)
            fds_before = descriptors_besides_redis(pid, redis_port)
    for _ in range(60):
        left = tunnel_sockets(pid, w.edge.api_port, ports)
        if not left and w.edge.health()["tunnels"]["open"] == 0:
            break
        await asyncio.sleep(0.1)
    assert left == []
    assert w.edge.health()["tunnels"]["open"] == 0
    # and no descriptor of any other kind either
    assert descriptors_besides_redis(pid, redis_port) <= fds_before
    assert all(e.is_set() for e in recorder.ended)


async def test_every_refusal_after_redemption_gives_the_slot_back_at_once(
    world: WorldFactory,
) -> None:
    """4003, 4004, 4005 and a ticket for another target: the ticket is used up, so the
    slot its purchase reserved must be free again within a second or two, not held until
    it runs out (70 s)."""
    w = await world()

    async def reserved(text: str) -> None:
        raw = await w.redis.get(f"port_forward_ticket:{text}")
        assert await reserve(w.redis, w.project, json.loads(raw)["session_id"], 5, 70)

    cases = []
    t = await w.ticket("resource", "res_1", w.ports["echo"])
    cases.append((t, w.url("resources", "res_1", t, w.ports["echo"] + 1), 4003))
    t = await w.ticket("database", "db_down")
    cases.append((t, w.url("databases", "db_down", t), 4004))
    t = await w.ticket("database", "db_new")
    cases.append((t, w.url("databases", "db_new", t), 4005))
    t = await w.ticket("database", "db_echo")
    cases.append((t, w.url("databases", "db_answer", t), 4010))
    for text, _, _ in cases:
        await reserved(text)
    assert await count(w.redis, w.project) == 4
    assert [await close_code(url) for _, url, _ in cases] == [code for _, _, code in cases]
    for _ in range(40):
        if await count(w.redis, w.project) == 0:
            break
        await asyncio.sleep(0.05)
    assert await count(w.redis, w.project) == 0


@pytest.mark.edge_errors("worker exited; restarting")
async def test_the_slots_of_a_node_that_dies_are_free_within_a_minute(
    world: WorldFactory, recorder: Recorder
) -> None:
    w = await world({"rec": recorder.port}, PORT_FORWARD_SLOT_SECONDS=SLOT)
    pid = worker_pid(w)
    clients = []
    for _ in range(5):
        text = await w.ticket("database", "db_rec")
        raw = await w.redis.get(f"port_forward_ticket:{text}")
        assert await reserve(w.redis, w.project, json.loads(raw)["session_id"], 5, 70)
        clients.append(await RawClient.open(w.url("databases", "db_rec", text), [SUBPROTOCOL]))
    await asyncio.sleep(2)  # the keeper's first heartbeats: each slot now lasts SLOT s
    assert await count(w.redis, w.project) == 5
    assert not await reserve(w.redis, w.project, "a-sixth", 5, 70)  # the cap holds
    os.kill(pid, 9)  # the worker dies: no release, no heartbeat any more
    died = time.monotonic()
    while await count(w.redis, w.project) and time.monotonic() - died < 30:  # noqa: ASYNC110
        await asyncio.sleep(0.5)  # (a count in Redis, polled)
    freed_after = time.monotonic() - died
    for client in clients:
        client.writer.transport.abort()
    # within a slot's life (45 s by default: within a minute), here SLOT s
    assert freed_after < SLOT + 2, f"slots still held {freed_after:.0f} s after the node died"
    assert await reserve(w.redis, w.project, "a-sixth", 5, 70)


# ---------------------------------------------------------------------------- bounded


async def test_a_ping_flood_from_a_client_that_never_reads_keeps_memory_bounded(
    world: WorldFactory,
) -> None:
    w = await world()
    pid = worker_pid(w)
    client = await RawClient.open(await w.database("db_echo"), [SUBPROTOCOL])
    ping = client_frame(PING, b"p" * 125)
    before = rss_kb(pid)
    with RssSampler(pid) as rss:
        for _ in range(40):  # 40 x 2,000 pings: ~10 MB of Pongs owed to a client that never reads
            client.writer.write(ping * 2000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.writer.drain(), 0.5)
        await asyncio.sleep(0.5)
    grown = rss.peak - before
    client.writer.transport.abort()
    assert grown < 16 * 1024, f"the worker grew {grown} kB"


async def test_bytes_sent_before_the_101_to_a_target_that_never_answers_are_not_buffered(
    world: WorldFactory,
) -> None:
    """The client does not wait for the 101 and streams frames; the target's connect
    hangs until the connect timeout: the edge must stop reading, not buffer it all."""
    with stalled_listener() as stalled:
        w = await world({"stalled": stalled}, PORT_FORWARD_CONNECT_TIMEOUT=3)
        pid = worker_pid(w)
        ticket = await w.ticket("database", "db_stalled")
        reader, writer = await asyncio.open_connection("127.0.0.1", w.edge.api_port)
        writer.write(
            (
                f"GET /port-forward/databases/db_stalled?ticket={ticket} HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
            ).encode()
        )
        frame = client_frame(BINARY, b"e" * 65536)
        before = rss_kb(pid)
        sent = 0
        with RssSampler(pid) as rss:
            with contextlib.suppress(TimeoutError, ConnectionError):
                async with asyncio.timeout(2.5):
                    while True:
                        writer.write(frame)
                        await writer.drain()
                        sent += len(frame)
        grown = rss.peak - before
        data = b""
        async with asyncio.timeout(10):
            while first_close_code(data.partition(b"\r\n\r\n")[2]) is None:
                more = await reader.read(65536)
                if not more:
                    break
                data += more
        writer.transport.abort()
    assert sent < 32 * MiB, sent  # the edge stopped reading (the kernel buffers the rest)
    assert grown < 16 * 1024, f"the worker grew {grown} kB"
    assert data.startswith(b"HTTP/1.1 101")
    assert first_close_code(data.partition(b"\r\n\r\n")[2]) == 4004


async def test_a_client_that_never_finishes_its_upgrade_request_is_cut(
    world: WorldFactory,
) -> None:
    w = await world(CLIENT_HEADER_TIMEOUT=1)
    ticket = await w.ticket("database", "db_echo")
    reader, writer = await asyncio.open_connection("127.0.0.1", w.edge.api_port)
    writer.write(
        f"GET /port-forward/databases/db_echo?ticket={ticket} HTTP/1.1\r\nHost: x\r\n".encode()
    )
    began = time.monotonic()
    async with asyncio.timeout(10):
        answer = await reader.read()
    assert time.monotonic() - began < 4
    assert not answer or answer.startswith(b"HTTP/1.1 408")
    writer.close()
    # the ticket was never taken: still redeemable
    assert await w.redis.exists(f"port_forward_ticket:{ticket}") == 1
    w.secrets_never_logged()


# ---------------------------------------------------------------------------- the ticket's secrecy


def _every_text_in_redis(client: redis.Redis) -> dict[str, str]:
    """Every key of the Redis and what it holds, as text (strings, sets, sorted sets,
    hashes, lists)."""
    found: dict[str, str] = {}
    for raw in client.scan_iter("*"):
        key = raw.decode()
        kind = client.type(raw).decode()
        if kind == "string":
            value: object = client.get(raw)
        elif kind == "set":
            value = sorted(client.smembers(raw))
        elif kind == "zset":
            value = client.zrange(raw, 0, -1, withscores=True)
        elif kind == "hash":
            value = client.hgetall(raw)
        elif kind == "list":
            value = client.lrange(raw, 0, -1)
        else:
            value = kind
        found[key] = repr(value)
    return found


def test_a_bought_ticket_is_nowhere_but_its_own_key_and_the_answer(
    edge_factory: Callable[..., EdgeProcess], admin: str, redis_db: RedisServer
) -> None:
    edge = edge_factory(ADMIN_TOKEN=admin, LOG_LEVEL="DEBUG")
    sold = make_world(edge, admin, redis_db)

    async def main() -> list[str]:
        echo = await Target(_echo).start()
        try:
            sold.target(
                "database",
                {
                    "id": "db_live",
                    "project_id": sold.pid,
                    "name": "live",
                    "engine": "postgres",
                    "host": "127.0.0.1",
                    "port": echo.port,
                    "status": "created",
                },
            )
            body = {"target_type": "database", "target_id": "db_live"}
            await asyncio.sleep(0.5)
            answer = await asyncio.to_thread(sold.buy, "dev", body)
            for _ in range(40):
                if answer.status == 201:
                    break
                await asyncio.sleep(0.1)
                answer = await asyncio.to_thread(sold.buy, "dev", body)
            assert answer.status == 201, answer.raw
            ticket = answer.doc["ticket"]
            texts = _every_text_in_redis(redis_db.client())
            holding = sorted(k for k, v in texts.items() if ticket in k or ticket in v)
            assert holding == [f"port_forward_ticket:{ticket}"]
            assert ticket not in json.dumps(edge.health())
            # requests that carry the ticket and fail before any redemption: their answers
            # and every log line stay free of it
            api = edge.api_port
            path = f"/port-forward/databases/db_live?ticket={ticket}"
            problems = []
            for method, target, headers in (
                ("GET", path, {}),  # 426
                ("GET", path, {"Upgrade": "websocket", "Connection": "Upgrade"}),  # 426
                ("POST", path, {}),  # 405
                ("GET", f"http://127.0.0.1:{api}{path}", {}),  # absolute-form
                ("GET", path + "&x=" + "y" * 9000, {}),  # a request line too long
                ("GET", path, {"Bad Header": "1"}),  # h11 refuses the head
                ("GET", path.replace("db_live", "%ff"), {}),  # a path that does not decode
            ):
                got = await _raw_request(api, method, target, headers)
                if ticket in got:
                    problems.append(f"{method} {target[:40]}: answer has the ticket")
            # the tunnel, for real: the ticket is used up and nowhere any more
            status, _, reader, writer = await upgrade(api, path)
            assert status == 101
            writer.write(client_frame(BINARY, b"ok"))
            async with asyncio.timeout(5):
                assert (await reader.readexactly(4))[2:] == b"ok"
            writer.write(client_frame(CLOSE, struct.pack("!H", 1000)))
            async with asyncio.timeout(5):
                await reader.read()
            writer.close()
            texts = _every_text_in_redis(redis_db.client())
            holding = sorted(k for k, v in texts.items() if ticket in k or ticket in v)
            problems += [f"redis key {k} has the ticket after its use" for k in holding]
            await asyncio.sleep(0.5)
            return problems
        finally:
            echo.close()

    problems = asyncio.run(main())
    edge.stop()
    logs = edge.stdout() + edge.stderr()
    problems += [f"a log line has the ticket: {t[:8]}..." for t in sold.issued if t in logs]
    assert problems == []


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def _raw_request(port: int, method: str, target: str, headers: dict[str, str]) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(head.encode("latin-1") + b"\r\n")
    async with asyncio.timeout(10):
        answer = await reader.read()
    writer.close()
    return answer.decode("latin-1")


async def test_a_tunnel_opened_late_in_a_drain_is_still_closed_with_1001(
    world: WorldFactory,
) -> None:
    """A client whose upgrade request was on its way when the drain began (its head
    arriving in pieces, as a slow link or a slowloris sends it) finishes it after the
    tunnels were told to go away: it must get its 1001 too (or no tunnel at all), not a
    live tunnel that the end of the drain cuts without a word."""
    w = await world(DRAIN_WEBSOCKET_GRACE=0.5, DRAIN_TIMEOUT=8, CLIENT_HEADER_TIMEOUT=10)
    ticket = await w.ticket("database", "db_echo")
    reader, writer = await asyncio.open_connection("127.0.0.1", w.edge.api_port)
    writer.write(f"GET /port-forward/databases/db_echo?ticket={ticket} HTTP/1.1\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.3)
    w.edge.signal(signal.SIGTERM)
    await asyncio.sleep(1.5)  # the grace is over: the tunnels were told to go away
    writer.write(
        (
            f"Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        ).encode()
    )
    began = time.monotonic()
    data = b""
    async with asyncio.timeout(15):
        while more := await reader.read(65536):
            data += more
    took = time.monotonic() - began
    writer.close()
    body = data.partition(b"\r\n\r\n")[2]
    outcome = first_close_code(body) if data.startswith(b"HTTP/1.1 101") else data.split(b"\r\n")[0]
    assert outcome == 1001 or (isinstance(outcome, bytes) and outcome.startswith(b"HTTP/1.1 5")), (
        outcome,
        round(took, 1),
    )
    # this raw client never answers the Close: the edge waits CLOSE_TIMEOUT for it, no more
    assert took < CLOSE_TIMEOUT + 1, f"the client waited {took:.1f} s for the end"


# ---------------------------------------------------------------------------- a node cut off


class Relay:
    """A TCP relay to a Redis, in threads of its own (the test's loop blocks while an edge
    starts), that can be cut: every connection through it closed and new ones refused
    (the node on the other side of a network partition)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.sockets: list[socket.socket] = []
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.listener.getsockname()[1]}/0"

    def _accept(self) -> None:
        while not self.cut_off:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.port))
            self.sockets += [down, up]
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        self.cut_off = True
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.mark.edge_errors(r"redis")
async def test_a_node_cut_off_from_redis_does_not_keep_tunnels_past_their_slots(
    world: WorldFactory, recorder: Recorder, redis_db: RedisServer
) -> None:
    """A node that can no longer reach Redis cannot heartbeat its tunnels' slots nor see a
    revocation. Once their slots have run out (PORT_FORWARD_SLOT_SECONDS: 45 s, here 6 s)
    the other nodes sell them again, so tunnels it keeps beyond that are over the project's
    cap, and a revoked PAT's tunnel lives on for up to PORT_FORWARD_MAX_SESSION_SECONDS."""
    relay = Relay(int(redis_db.url.rsplit(":", 1)[1].split("/")[0]))
    cut_off = await world(
        {"rec": recorder.port}, redis_url=relay.url, PORT_FORWARD_SLOT_SECONDS=SLOT
    )
    text = await cut_off.ticket("database", "db_rec")
    raw = await cut_off.redis.get(f"port_forward_ticket:{text}")
    assert await reserve(cut_off.redis, cut_off.project, json.loads(raw)["session_id"], 5, 70)
    async with ws(cut_off.url("databases", "db_rec", text)) as conn:
        await conn.send(b"x")
        await asyncio.sleep(1.5)  # heartbeated once: the slot lasts SLOT s from here
        assert [bytes(r) for r in recorder.received] == [b"x"]
        relay.cut()
        # the PAT is revoked meanwhile (the admin's write reaches every node but this one)
        doc = json.loads(await cut_off.redis.get(f"pat:{cut_off.pat}"))
        doc["revoked_at"] = "2026-01-01T00:00:00Z"
        await cut_off.redis.set(f"pat:{cut_off.pat}", json.dumps(doc))
        code, took = await _closed_code_within(conn, SLOT + 10)
        slots = await count(cut_off.redis, cut_off.project)
    # the slot ran out (the cap counts nothing for this tunnel) ...
    assert slots == 0
    # ... so the tunnel must not outlive it: closed once nothing was checked for a slot's life
    assert code == 1013, f"the tunnel is still open {took:.0f} s after its node lost Redis"
    assert SLOT - 2 < took < SLOT + 4, took


# ---------------------------------------------------------------------------- the handshake


async def test_header_tricks_on_the_upgrade_negotiate_nothing_more(
    world: WorldFactory, recorder: Recorder
) -> None:
    w = await world({"rec": recorder.port}, API_HOSTNAME="api.edge.test")
    # an extension offered is never taken: a compressed (RSV1) frame is a protocol error
    ticket = await w.ticket("database", "db_rec")
    status, head, reader, writer = await upgrade(
        w.edge.api_port,
        f"/port-forward/databases/db_rec?ticket={ticket}",
        {
            "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
            "Sec-WebSocket-Protocol": "chat, edge-tunnel.v1",
        },
    )
    assert status == 101
    assert b"sec-websocket-extensions" not in head.lower()
    assert b"sec-websocket-protocol: edge-tunnel.v1\r\n" in head.lower()
    frame = bytearray(client_frame(BINARY, b"zzz"))
    frame[0] |= 0x40  # RSV1
    writer.write(bytes(frame))
    data = b""
    async with asyncio.timeout(5):
        while first_close_code(data) is None and (more := await reader.read(65536)):
            data += more
    assert first_close_code(data) == 1002
    writer.close()
    # duplicated or contradictory fields: refused before any ticket is taken
    ticket = await w.ticket("database", "db_rec")
    path = f"/port-forward/databases/db_rec?ticket={ticket}"
    for fields in (
        {"Connection": "keep-alive"},
        {"Upgrade": "h2c"},
        {"Sec-WebSocket-Version": "13, 8"},
        {"Sec-WebSocket-Key": "c2hvcnQ="},
    ):
        assert await refusal(w.edge.api_port, path, fields) in ("HTTP 400", "HTTP 426"), fields
    assert await w.redis.exists(f"port_forward_ticket:{ticket}") == 1
    # the same endpoint through a public listener, on API_HOSTNAME
    reader, writer = await asyncio.open_connection("127.0.0.1", w.edge.http_port)
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: api.edge.test\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
        ).encode()
    )
    async with asyncio.timeout(5):
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.write(client_frame(BINARY, b"public"))
    writer.write(client_frame(CLOSE, struct.pack("!H", 1000)))
    async with asyncio.timeout(5):
        await reader.read()
    writer.close()
    await recorder.wait_ended(1)
    assert bytes(recorder.received[1]) == b"public"
    w.secrets_never_logged()
