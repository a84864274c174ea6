"""Port-forward tunnels through a real edge: the WebSocket endpoints on the API port.

Everything is real: the edge as a process, its Redis, the people records (a project, a
member, a PAT, written by the edge's own store, so that what a ticket names exists), the
tunnel targets as configuration keys (``database:{id}``, ``app_resource:{id}``, written
before the edge starts so its first snapshot has them), tickets issued into Redis with the
edge's own ``issue`` (``port_forward_ticket:{ticket}``, TTL), TCP targets on loopback
(an echo, a service that answers once its client shut its write side, one that greets and
hangs up, one that pumps bytes as fast as it can, one that does not read), and as clients
the ``websockets`` library or, where a client must misbehave (never answer a Ping, never
read), a wsproto client on a plain socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import wsproto
import wsproto.events as wse
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from edge.api.people.store import PatRecord, PeopleStore, new_id
from edge.api.tokens.store import now_iso
from edge.settings import RedisTarget
from edge.store.client import RedisHandle
from edge.tunnels.sessions import count, reserve
from edge.tunnels.tickets import TargetType, Ticket, issue, new_session_id, new_ticket
from tests.helpers import EdgeProcess, RedisServer, free_port
from tests.integration.test_streaming import RssSampler, rss_kb

SUBPROTOCOL = Subprotocol("edge-tunnel.v1")
HASH = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
MiB = 1024 * 1024


# ---------------------------------------------------------------------------- targets


class Target:
    """A TCP service on loopback, one ``serve(reader, writer)`` per connection."""

    def __init__(
        self, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    ) -> None:
        self.serve = serve
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> Target:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            with contextlib.suppress(ConnectionError):
                await self.serve(reader, writer)
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads until its client's FIN, then answers with the length and SHA-256 of it all
    (a request/response tool that shuts down its write side first)."""
    digest = hashlib.sha256()
    size = 0
    while data := await reader.read(65536):
        digest.update(data)
        size += len(data)
    writer.write(f"{size} {digest.hexdigest()}".encode())
    await writer.drain()


GREETED: list[bytes] = []  # what clients sent the greeter after its FIN


async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speaks first (before any byte from the client), shuts its write side, then keeps
    what still comes until the client's FIN."""
    writer.write(b"hello\n")
    writer.write_eof()
    await writer.drain()
    GREETED.append(await reader.read())


@dataclass
class Pump:
    """Writes as fast as the connection takes it; ``sent`` counts what it got rid of."""

    sent: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"p" * 65536
        while True:
            writer.write(block)
            await writer.drain()
            self.sent += len(block)


@dataclass
class Sink:
    """Reads nothing until ``reading`` is set, then counts what arrives."""

    reading: asyncio.Event = field(default_factory=asyncio.Event)
    received: int = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.reading.wait()
        while data := await reader.read(65536):
            self.received += len(data)


@contextlib.contextmanager
def stalled_listener() -> Iterator[int]:
    """A port whose accept queue is full: connecting to it neither succeeds nor fails."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = []
    for _ in range(3):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        held.append(s)
    try:
        yield port
    finally:
        for s in held:
            s.close()
        listener.close()


# ---------------------------------------------------------------------------- the world


@dataclass
class World:
    """An edge serving tunnels, its Redis, the project and the targets."""

    edge: EdgeProcess
    redis: Redis
    project: str
    user: str
    pat: str
    ports: dict[str, int]
    tickets: list[str] = field(default_factory=list)

    async def ticket(
        self, target_type: TargetType, target_id: str, port: int = 0, ttl: int = 60
    ) -> str:
        text = await issue(
            self.redis,
            Ticket(
                target_type=target_type,
                target_id=target_id,
                port=port,
                project_id=self.project,
                user_id=self.user,
                pat_id=self.pat,
                session_id=new_session_id(),
                issued_at=time.time(),
            ),
            ttl=ttl,
        )
        self.tickets.append(text)
        return text

    def url(self, kind: str, target_id: str, ticket: str | None, port: int | None = None) -> str:
        query = []
        if ticket is not None:
            query.append(f"ticket={ticket}")
        if port is not None:
            query.append(f"port={port}")
        tail = "?" + "&".join(query) if query else ""
        return f"ws://127.0.0.1:{self.edge.api_port}/port-forward/{kind}/{target_id}{tail}"

    async def database(self, target_id: str) -> str:
        """The URL of a fresh tunnel to ``target_id`` (a database)."""
        return self.url("databases", target_id, await self.ticket("database", target_id))

    async def resource(self, target_id: str, port: int) -> str:
        return self.url(
            "resources", target_id, await self.ticket("resource", target_id, port), port
        )

    def secrets_never_logged(self) -> None:
        logs = self.edge.stdout() + self.edge.stderr()
        for text in self.tickets:
            assert text not in logs


def ws(url: str, *, subprotocol: bool = True, **options: Any) -> Any:
    return connect(
        url,
        subprotocols=[SUBPROTOCOL] if subprotocol else None,
        proxy=None,
        compression=None,
        open_timeout=10,
        close_timeout=5,
        max_size=None,
        **options,
    )


async def close_code(url: str, **options: Any) -> int:
    """Open ``url``, read until the edge closes: the code of its Close frame."""
    async with ws(url, **options) as conn:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(conn.recv(), 15)
    assert info.value.rcvd is not None, info.value  # a Close frame, not a dropped socket
    return info.value.rcvd.code


async def access_lines(edge: EdgeProcess, count: int) -> list[dict[str, Any]]:
    """The access log's tunnel lines, once there are ``count`` (written as tunnels end)."""
    async with asyncio.timeout(5):
        while True:
            lines = [r for r in edge.access_log() if "/port-forward/" in str(r.get("path"))]
            if len(lines) >= count:
                return lines
            await asyncio.sleep(0.05)


async def receive_exactly(conn: ClientConnection, size: int) -> bytes:
    got = b""
    while len(got) < size:
        message = await asyncio.wait_for(conn.recv(), 10)
        assert isinstance(message, bytes)
        got += message
    return got


@pytest.fixture
async def targets() -> AsyncIterator[dict[str, Target]]:
    made = {
        "echo": await Target(echo).start(),
        "answer": await Target(answer).start(),
        "greet": await Target(greet).start(),
    }
    yield made
    for target in made.values():
        target.close()


@pytest.fixture
async def people(redis_db: RedisServer) -> AsyncIterator[tuple[str, str, str]]:
    """A project with an accepted member holding a PAT: (project, user, pat) ids."""
    handle = RedisHandle(RedisTarget(redis_db.url))
    store = PeopleStore(handle)
    user = await store.create_user("Dev", "dev@example.com")
    project = await store.create_project("shop")
    await store.put_member(project.id, user.id, "owner", True)
    pat = PatRecord(
        id=new_id("t"),
        user_id=user.id,
        project_id=project.id,
        name="laptop",
        token_hash=HASH,
        token_prefix="abcdefgh",
        created_at=now_iso(),
    )
    await store.create_pat(pat)
    await handle.close()
    yield project.id, user.id, pat.id


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
async def world(
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    targets: dict[str, Target],
    people: tuple[str, str, str],
) -> AsyncIterator[WorldFactory]:
    """``await world(**settings)``: the targets written as configuration, then an edge."""
    clients: list[Redis] = []
    project, user, pat = people

    async def make(extra: dict[str, int] | None = None, **env: Any) -> World:
        ports = {name: t.port for name, t in targets.items()}
        ports["down"] = free_port()  # nothing listens there
        ports.update(extra or {})
        rdb = redis_db.client()
        rdb.set("app:app_1", json.dumps({"id": "app_1", "project_id": project, "name": "shop"}))
        rdb.set(
            "app_resource:res_1",
            json.dumps(
                {
                    "id": "res_1",
                    "project_id": project,
                    "app_id": "app_1",
                    "name": "web",
                    "host": "127.0.0.1",
                    "config_port": ports["echo"],
                    "config_internal_ports": [ports["greet"]],
                }
            ),
        )
        for name, port in ports.items():
            rdb.set(
                f"database:db_{name}",
                json.dumps(
                    {
                        "id": f"db_{name}",
                        "project_id": project,
                        "name": name,
                        "engine": "postgres",
                        "host": "127.0.0.1",
                        "port": port,
                        "status": "created",
                    }
                ),
            )
        rdb.set(
            "database:db_new",
            json.dumps(
                {
                    "id": "db_new",
                    "project_id": project,
                    "name": "new",
                    "engine": "redis",
                    "host": "127.0.0.1",
                    "status": "creating",
                }
            ),
        )
        env.setdefault("CONFIG_RESYNC_INTERVAL", 30)
        edge = edge_factory(**env)
        client = Redis.from_url(redis_db.url)
        clients.append(client)
        return World(edge, client, project, user, pat, ports)

    yield make
    for client in clients:
        await client.aclose()


# ---------------------------------------------------------------------------- bytes


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_bytes_go_both_ways_through_a_resource_and_a_database(
    world: WorldFactory, loop: str
) -> None:
    w = await world(EDGE_LOOP=loop)
    async with ws(await w.resource("res_1", w.ports["echo"])) as conn:
        assert conn.subprotocol == SUBPROTOCOL
        for size in (1, 125, 126, 65536, 300_000, MiB):
            data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            await conn.send(data)
            assert await receive_exactly(conn, size) == data
    async with ws(await w.database("db_echo"), subprotocol=False) as conn:
        assert conn.subprotocol is None
        await conn.send(b"select 1;")
        assert await receive_exactly(conn, 9) == b"select 1;"
    tunnels = await access_lines(w.edge, 2)
    assert [r["status"] for r in tunnels] == [101, 101]
    assert all("?" not in r["path"] for r in tunnels)
    w.secrets_never_logged()


async def test_a_greeting_sent_before_the_101_is_not_lost(world: WorldFactory) -> None:
    w = await world()
    # the greeter writes as soon as the edge connects, before the client got its 101
    async with ws(await w.resource("res_1", w.ports["greet"]), subprotocol=False) as conn:
        assert await receive_exactly(conn, 6) == b"hello\n"
        # without the subprotocol, the target's FIN closes the tunnel (1000)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000


# ---------------------------------------------------------------------------- half-close


async def test_half_close_lets_a_tool_shut_its_write_side_and_read_the_answer(
    world: WorldFactory,
) -> None:
    w = await world()
    body = bytes(range(256)) * 12_000  # ~3 MB, many messages
    async with ws(await w.database("db_answer")) as conn:
        assert conn.subprotocol == SUBPROTOCOL
        for at in range(0, len(body), 65536):
            await conn.send(body[at : at + 65536])
        await conn.send(b"")  # no more bytes this way: the target gets its FIN
        expected = f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()
        assert await receive_exactly(conn, len(expected)) == expected
        assert await asyncio.wait_for(conn.recv(), 5) == b""  # the target's FIN
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000


async def test_half_close_the_other_way_the_client_still_sends(world: WorldFactory) -> None:
    w = await world()
    async with ws(await w.resource("res_1", w.ports["greet"])) as conn:
        assert await receive_exactly(conn, 6) == b"hello\n"
        assert await asyncio.wait_for(conn.recv(), 5) == b""  # the greeter's FIN, passed on
        GREETED.clear()
        await conn.send(b"still ")  # the tunnel is half open: this way still flows
        await conn.send(b"talking")
        await conn.send(b"")  # and now ends too: the greeter gets its FIN, the tunnel closes
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    assert GREETED == [b"still talking"]


# ---------------------------------------------------------------------------- refusals


async def test_every_ticket_problem_closes_4010(world: WorldFactory) -> None:
    w = await world()
    assert await close_code(w.url("databases", "db_echo", None)) == 4010  # none
    assert await close_code(w.url("databases", "db_echo", new_ticket())) == 4010  # unknown
    assert await close_code(w.url("databases", "db_echo", "short")) == 4010  # malformed
    # for another database, or another kind of target: refused, and used up all the same
    other = await w.ticket("database", "db_answer")
    assert await close_code(w.url("databases", "db_echo", other)) == 4010
    assert await close_code(w.url("databases", "db_answer", other)) == 4010
    wrong_kind = await w.ticket("database", "res_1", w.ports["echo"])
    assert await close_code(w.url("resources", "res_1", wrong_kind, w.ports["echo"])) == 4010
    # used: the second redemption finds nothing
    once = await w.ticket("database", "db_echo")
    async with ws(w.url("databases", "db_echo", once)) as conn:
        await conn.send(b"ping")
        assert await receive_exactly(conn, 4) == b"ping"
        assert await close_code(w.url("databases", "db_echo", once)) == 4010
    # expired
    short = await w.ticket("database", "db_echo", ttl=1)
    await asyncio.sleep(1.5)
    assert await close_code(w.url("databases", "db_echo", short)) == 4010
    w.secrets_never_logged()


async def test_a_ticket_for_another_target_gives_its_slot_back(world: WorldFactory) -> None:
    """Redeemed for nothing (it names another target): the slot it reserved is free at
    once, not held until it runs out."""
    w = await world()
    text = await w.ticket("database", "db_answer")
    record = await w.redis.get(f"port_forward_ticket:{text}")
    session = json.loads(record)["session_id"]
    assert await reserve(w.redis, w.project, session, 5, 60)
    assert await count(w.redis, w.project) == 1
    assert await close_code(w.url("databases", "db_echo", text)) == 4010
    for _ in range(40):  # the slot is given back in the background: within 2 s
        if not await count(w.redis, w.project):
            break
        await asyncio.sleep(0.05)
    assert await count(w.redis, w.project) == 0


async def test_a_port_that_is_not_the_tickets_closes_4003(world: WorldFactory) -> None:
    w = await world()
    port = w.ports["echo"]
    ticket = await w.ticket("resource", "res_1", port)
    assert await close_code(w.url("resources", "res_1", ticket)) == 4003  # no port
    ticket = await w.ticket("resource", "res_1", port)
    assert await close_code(w.url("resources", "res_1", ticket, port + 1)) == 4003
    # a ticket for a port the resource does not list (e.g. changed since)
    ticket = await w.ticket("resource", "res_1", w.ports["answer"])
    assert await close_code(w.url("resources", "res_1", ticket, w.ports["answer"])) == 4003


async def test_a_database_not_created_closes_4005(world: WorldFactory) -> None:
    w = await world()
    assert await close_code(await w.database("db_new")) == 4005


async def test_an_unreachable_target_closes_4004(world: WorldFactory) -> None:
    with stalled_listener() as stalled:
        w = await world({"stalled": stalled}, PORT_FORWARD_CONNECT_TIMEOUT=1)
        assert await close_code(await w.database("db_down")) == 4004  # refused
        started = time.monotonic()
        assert await close_code(await w.database("db_stalled")) == 4004  # timed out
        assert 0.9 < time.monotonic() - started < 5
    # a target deleted since the ticket was bought
    ticket = await w.ticket("database", "db_gone")
    assert await close_code(w.url("databases", "db_gone", ticket)) == 4004


async def test_not_a_websocket_is_answered_with_the_apis_error_document(
    world: WorldFactory,
) -> None:
    w = await world()

    def get(headers: dict[str, str]) -> tuple[int, dict[str, str], dict[str, Any]]:
        c = http.client.HTTPConnection("127.0.0.1", w.edge.api_port, timeout=5)
        c.request("GET", "/port-forward/databases/db_echo?ticket=x", headers=headers)
        r = c.getresponse()
        doc = json.loads(r.read())
        c.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, doc

    status, headers, doc = get({})
    assert status == 426 and headers["upgrade"] == "websocket"
    assert doc["error"]["code"] == "upgrade_required"
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    status, headers, doc = get({**upgrade, "Sec-WebSocket-Key": "not a key"})
    assert status == 400 and doc["error"]["code"] == "bad_request"
    assert "Sec-WebSocket-Key" in doc["error"]["message"]
    status, headers, doc = get(
        {**upgrade, "Sec-WebSocket-Version": "8", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    )
    assert status == 426 and headers["sec-websocket-version"] == "13"


# ---------------------------------------------------------------------------- limits


async def test_a_message_over_the_cap_closes_1009_and_text_1003(world: WorldFactory) -> None:
    w = await world(PORT_FORWARD_MAX_MESSAGE=65536)
    async with ws(await w.database("db_echo")) as conn:
        await conn.send(b"m" * 65536)  # exactly the cap: fine
        assert await receive_exactly(conn, 65536) == b"m" * 65536
        await conn.send(b"m" * 65537)
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    async with ws(await w.database("db_echo")) as conn:
        await conn.send("text is not bytes")
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1003


async def test_the_session_ends_after_its_time_with_4008(world: WorldFactory) -> None:
    w = await world(PORT_FORWARD_MAX_SESSION_SECONDS=1.5)
    started = time.monotonic()
    async with ws(await w.database("db_echo")) as conn:
        await conn.send(b"still here")
        assert await receive_exactly(conn, 10) == b"still here"
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(conn.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4008
    assert 1.4 < time.monotonic() - started < 4


class RawClient:
    """A wsproto client on a plain socket, which answers nothing and reads only when told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.events: list[wse.Event] = []

    @classmethod
    async def open(cls, url: str, subprotocols: list[str] | None = None) -> RawClient:
        path = url.split("/", 3)[3]
        port = int(url.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        writer.write(
            client.ws.send(
                wse.Request(host="127.0.0.1", target="/" + path, subprotocols=subprotocols or [])
            )
        )
        await client.until(wse.AcceptConnection)
        return client

    async def until(self, kind: type[wse.Event], within: float = 10.0) -> wse.Event:
        async with asyncio.timeout(within):
            while True:
                for event in self.ws.events():
                    self.events.append(event)
                    if isinstance(event, kind):
                        return event
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError(f"closed before {kind.__name__}")
                self.ws.receive_data(data)

    def close(self) -> None:
        self.writer.close()


async def test_a_client_that_never_answers_pings_is_closed_1011(world: WorldFactory) -> None:
    w = await world(PORT_FORWARD_PING_INTERVAL=0.5)
    # a well-behaved client (websockets answers pings itself) stays: 4 intervals and more
    async with ws(await w.database("db_echo"), ping_interval=None) as good:
        silent = await RawClient.open(await w.database("db_echo"))
        started = time.monotonic()
        close = await silent.until(wse.CloseConnection)
        assert isinstance(close, wse.CloseConnection) and close.code == 1011
        assert 0.9 < time.monotonic() - started < 3
        assert any(isinstance(e, wse.Ping) for e in silent.events)
        silent.close()
        await asyncio.sleep(1.0)
        await good.send(b"alive")
        assert await receive_exactly(good, 5) == b"alive"


async def test_a_drain_closes_tunnels_with_1001(world: WorldFactory) -> None:
    w = await world(DRAIN_WEBSOCKET_GRACE=0.5, DRAIN_TIMEOUT=10)
    async with ws(await w.database("db_echo")) as conn:
        await conn.send(b"before")
        assert await receive_exactly(conn, 6) == b"before"
        w.edge.signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(conn.recv(), 8)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert w.edge.proc is not None
    assert await asyncio.to_thread(w.edge.proc.wait, 10) == 0


# ---------------------------------------------------------------------------- backpressure


async def test_a_client_that_does_not_read_holds_the_target_back(world: WorldFactory) -> None:
    pump = Pump()
    target = await Target(pump).start()
    try:
        w = await world({"pump": target.port})
        pid = int(w.edge.health()["pid"])
        client = await RawClient.open(await w.database("db_pump"), [SUBPROTOCOL])
        before = rss_kb(pid)
        with RssSampler(pid) as rss:
            await asyncio.sleep(3)  # the client reads nothing
            stalled_at = pump.sent
            await asyncio.sleep(1)
        # everything in flight fits in the sockets' buffers and the edge's bounded ones
        assert stalled_at < 48 * MiB, stalled_at
        assert pump.sent - stalled_at <= 4 * MiB  # and it stays stalled
        assert rss.peak - before < 40 * 1024, (before, rss.peak)
        # the client reads again: the bytes flow again
        got = 0
        async with asyncio.timeout(10):
            while got < stalled_at + 8 * MiB:
                data = await client.reader.read(MiB)
                assert data
                got += len(data)
        client.close()
    finally:
        target.close()


async def test_a_target_that_does_not_read_holds_the_client_back(world: WorldFactory) -> None:
    sink = Sink()
    target = await Target(sink).start()
    try:
        w = await world({"sink": target.port})
        pid = int(w.edge.health()["pid"])
        client = await RawClient.open(await w.database("db_sink"), [SUBPROTOCOL])
        before = rss_kb(pid)
        frame = client.ws.send(wse.BytesMessage(b"c" * 65536))
        sent = 0

        async def push() -> None:
            nonlocal sent
            while True:
                client.writer.write(frame)
                await client.writer.drain()
                sent += 65536

        pusher = asyncio.create_task(push())
        with RssSampler(pid) as rss:
            await asyncio.sleep(3)
            stalled_at = sent
            await asyncio.sleep(1)
        assert stalled_at < 48 * MiB, stalled_at
        assert sent - stalled_at <= 4 * MiB
        assert rss.peak - before < 40 * 1024, (before, rss.peak)
        sink.reading.set()  # the target reads: the client's bytes flow again
        async with asyncio.timeout(10):
            while sink.received < stalled_at + 8 * MiB:  # noqa: ASYNC110 (a counter)
                await asyncio.sleep(0.05)
        pusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pusher
        client.close()
    finally:
        target.close()
