"""``POST /port-forward/ticket`` on a real edge with a real Redis, and the keeper cutting
live tunnels when the admin API revokes a PAT or removes a member.

Users, projects, members and PATs are made through the admin API; targets are written to
Redis as an admin would (``app_resource:{id}``, ``database:{id}``) and reach the edge
through its configuration watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client
from edge.tunnels.keeper import REVOKED, SessionKeeper
from edge.tunnels.tickets import TICKET_TTL, Ticket, redeem
from tests.api_client import Answer, assert_error, call
from tests.helpers import EdgeProcess, RedisServer, wait_for

TICKET = "/port-forward/ticket"
PROJECTS = "/api/v1/projects"
EdgeFactory = Callable[..., EdgeProcess]
TICKET_RE = re.compile(r"[A-Za-z0-9]{64}")


@dataclass
class Member:
    uid: str
    tid: str  # the PAT's id
    token: str  # the PAT


@dataclass
class World:
    """Two projects: ``pid`` (an owner, a modifier and a viewer, each with a PAT, and its
    targets) and ``other`` (targets only)."""

    edge: EdgeProcess
    admin: str
    redis: RedisServer
    pid: str = ""
    other: str = ""
    members: dict[str, Member] = field(default_factory=dict)
    issued: list[str] = field(default_factory=list)  # every ticket text seen

    def api(self, method: str, path: str, body: Any = None, port: int | None = None) -> Answer:
        return call(port or self.edge.api_port, method, path, self.admin, body)

    def buy(self, who: str | None, body: Any, *, port: int | None = None, **kw: Any) -> Answer:
        token = self.members[who].token if who is not None else None
        answer = call(port or self.edge.api_port, "POST", TICKET, token, body, **kw)
        if answer.status == 201:
            self.issued.append(answer.doc["ticket"])
        return answer

    def target(self, kind: str, doc: dict[str, Any]) -> None:
        self.redis.client().set(f"{kind}:{doc['id']}", json.dumps(doc))


def _created(answer: Answer) -> Any:
    assert answer.status == 201, (answer.status, answer.raw)
    return answer.doc


def _project(world: World, name: str) -> str:
    return str(_created(world.api("POST", f"{PROJECTS}/", {"name": name}))["id"])


def _member(world: World, pid: str, name: str, role: str) -> Member:
    user = _created(world.api("POST", "/api/v1/users/", {"name": name, "email": f"{name}@x.test"}))
    put = world.api(
        "PUT", f"{PROJECTS}/{pid}/members/{user['id']}", {"role": role, "accepted": True}
    )
    assert put.status in (200, 201), put.raw
    answer = world.api("POST", f"{PROJECTS}/{pid}/tokens", {"user_id": user["id"], "name": "cli"})
    pat = _created(answer)["data"]
    return Member(user["id"], pat["id"], pat["token"])


def _targets(world: World, pid: str, suffix: str) -> None:
    world.target("app", {"id": f"app_{suffix}", "project_id": pid, "name": "shop"})
    world.target(
        "app_resource",
        {
            "id": f"res_{suffix}",
            "project_id": pid,
            "app_id": f"app_{suffix}",
            "name": "web",
            "host": "127.0.0.1",
            "config_port": 8080,
            "config_internal_ports": [9090, 9091],
        },
    )
    for name, status in (("db", "created"), ("new", "creating"), ("bad", "failed")):
        world.target(
            "database",
            {
                "id": f"{name}_{suffix}",
                "project_id": pid,
                "name": name,
                "engine": "postgres",
                "host": "127.0.0.1",
                "status": status,
            },
        )


def make_world(edge: EdgeProcess, admin: str, redis_db: RedisServer) -> World:
    world = World(edge, admin, redis_db)
    world.pid = _project(world, "alpha")
    world.other = _project(world, "beta")
    for name, role in (("owner", "owner"), ("dev", "modifier"), ("viewer", "viewer")):
        world.members[name] = _member(world, world.pid, name, role)
    _targets(world, world.other, "b")
    _targets(world, world.pid, "a")
    # the targets reached the edge's configuration (the last one written, in order): the
    # viewer is refused for its role, which is checked once the target is found
    bad = {"target_type": "database", "target_id": "bad_a"}
    wait_for(lambda: world.buy("viewer", bad).status == 403, timeout=10)
    return world


@pytest.fixture
def world(edge_factory: EdgeFactory, admin: str, redis_db: RedisServer) -> Iterator[World]:
    edge = edge_factory(ADMIN_TOKEN=admin, LOG_LEVEL="DEBUG")
    world = make_world(edge, admin, redis_db)
    yield world
    # no ticket ever reaches a log line: access log (stdout) and logs (stderr), all
    # written out once the edge has stopped
    edge.stop()
    output = edge.stdout() + edge.stderr()
    assert output  # the edge did log (the access log at least)
    leaked = [t for t in world.issued if t in output]
    assert not leaked


def stored(redis_db: RedisServer, ticket: str) -> Ticket:
    """The ticket's record as the edge stored it (read, not taken)."""
    raw = redis_db.client().get(keys.port_forward_ticket(ticket))
    assert raw is not None
    return Ticket(**json.loads(raw))


def slots(redis_db: RedisServer, pid: str) -> list[str]:
    members = redis_db.client().zrange(keys.port_forward_sessions(pid), 0, -1)
    return sorted(m.decode() for m in members)


# ---------------------------------------------------------------------------- purchase


def test_purchase(world: World, redis_db: RedisServer) -> None:
    r = redis_db.client()
    dev = world.members["dev"]
    before = time.time()

    answer = world.buy("dev", {"target_type": "resource", "target_id": "res_a"})
    doc = _created(answer)
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["cache-control"] == "no-store"
    assert set(doc) == {"ticket", "websocket_path", "expires_in"}  # no envelope
    ticket = doc["ticket"]
    assert TICKET_RE.fullmatch(ticket)
    assert doc["expires_in"] == TICKET_TTL == 60
    assert doc["websocket_path"] == f"/port-forward/resources/res_a?ticket={ticket}&port=8080"
    key = f"port_forward_ticket:{ticket}"
    assert 57 <= r.ttl(key) <= 60
    record = stored(redis_db, ticket)
    assert (record.target_type, record.target_id, record.port) == ("resource", "res_a", 8080)
    assert (record.project_id, record.user_id, record.pat_id) == (world.pid, dev.uid, dev.tid)
    assert before - 1 <= record.issued_at <= time.time() + 1
    assert slots(redis_db, world.pid) == [record.session_id]
    # the slot outlives the ticket a little: a tunnel opened in its last second is kept
    score = r.zscore(keys.port_forward_sessions(world.pid), record.session_id)
    assert score is not None and TICKET_TTL < score - float(r.time()[0]) <= TICKET_TTL + 11

    # an internal port, chosen
    doc = _created(
        world.buy("dev", {"target_type": "resource", "target_id": "res_a", "port": 9091})
    )
    query = parse_qs(urlsplit(doc["websocket_path"]).query)
    assert query == {"ticket": [doc["ticket"]], "port": ["9091"]}
    assert stored(redis_db, doc["ticket"]).port == 9091

    # a database: its own port, no port in the path
    for body in (
        {"target_type": "database", "target_id": "db_a"},
        {"target_type": "database", "target_id": "db_a", "port": 5432},
    ):
        doc = _created(world.buy("owner", body))
        assert doc["websocket_path"] == f"/port-forward/databases/db_a?ticket={doc['ticket']}"
        record = stored(redis_db, doc["ticket"])
        assert (record.target_type, record.port) == ("database", 5432)
        assert record.user_id == world.members["owner"].uid

    assert len(slots(redis_db, world.pid)) == 4
    assert len(set(world.issued)) == 4

    # the WebSocket path with its ticket, asked for: whatever the answer, the access log
    # shows the path without the query (the fixture checks no log line has a ticket)
    call(world.edge.api_port, "GET", doc["websocket_path"])
    wait_for(
        lambda: any(
            e.get("path") == "/port-forward/databases/db_a" for e in world.edge.access_log()
        )
    )


def test_refusals(world: World, redis_db: RedisServer) -> None:
    resource = {"target_type": "resource", "target_id": "res_a"}
    database = {"target_type": "database", "target_id": "db_a"}

    # 401: no token, a malformed one, a forged one, an admin token, a revoked PAT
    for authorization in (None, "Bearer nope", f"Bearer {world.admin}"):
        answer = call(
            world.edge.api_port, "POST", TICKET, None, resource, authorization=authorization
        )
        assert_error(answer, 401, "unauthorized")
        assert answer.headers["www-authenticate"] == 'Bearer realm="edge"'
    owner = world.members["owner"]
    spare = _created(
        world.api("POST", f"{PROJECTS}/{world.pid}/tokens", {"user_id": owner.uid, "name": "spare"})
    )["data"]
    revoked = world.api(
        "DELETE", f"{PROJECTS}/{world.pid}/tokens/{spare['id']}?user_id={owner.uid}"
    )
    assert revoked.status == 200, revoked.raw
    answer = call(world.edge.api_port, "POST", TICKET, spare["token"], resource)
    assert_error(answer, 401, "unauthorized")

    # 404: another project's targets, unknown ids (the same answer)
    for body in (
        {"target_type": "resource", "target_id": "res_b"},
        {"target_type": "database", "target_id": "db_b"},
        {"target_type": "resource", "target_id": "nope"},
        {"target_type": "database", "target_id": "res_a"},  # a resource is not a database
        {"target_type": "resource", "target_id": "db_a"},
    ):
        assert_error(world.buy("dev", body), 404, "target_not_found", "target_id")

    # 403: a viewer has neither resources.port-forward nor databases.show-secrets
    for body in (resource, database):
        answer = world.buy("viewer", body)
        assert_error(answer, 403, "permission_denied")
        assert answer.error["message"] == "your role in this project does not grant " + (
            "resources.port-forward" if body is resource else "databases.show-secrets"
        )

    # 400: a port the resource does not list, another port than the database's
    for body in (
        {**resource, "port": 22},
        {**resource, "port": 8081},
        {**database, "port": 6379},
    ):
        assert_error(world.buy("dev", body), 400, "port_not_allowed", "port")
    # 400: the body is strict
    for body, bad_field in (
        ({**resource, "host": "10.0.0.1"}, "host"),
        ({"target_type": "vm", "target_id": "res_a"}, "target_type"),
        ({"target_type": "resource"}, "target_id"),
        ({**resource, "target_id": ""}, "target_id"),
        ({**resource, "port": 0}, "port"),
        ({**resource, "port": 70000}, "port"),
        ({**resource, "port": "8080"}, "port"),
    ):
        assert_error(world.buy("dev", body), 400, "invalid_body", bad_field)
    assert_error(world.buy("dev", None), 400, "invalid_body")
    assert_error(world.buy("dev", None, raw=b"{not json"), 400, "invalid_json")

    # 409: a database not created (yet, or any more)
    for name in ("new_a", "bad_a"):
        answer = world.buy("dev", {"target_type": "database", "target_id": name})
        assert_error(answer, 409, "database_not_ready")

    # none of these took a session slot nor stored a ticket
    assert slots(redis_db, world.pid) == []
    assert list(redis_db.client().scan_iter("port_forward_ticket:*")) == []


def test_the_sixth_session_is_refused(world: World, redis_db: RedisServer) -> None:
    body = {"target_type": "database", "target_id": "db_a"}
    for _ in range(5):
        _created(world.buy("dev", body))
    answer = world.buy("owner", body)
    assert_error(answer, 429, "too_many_sessions")
    assert answer.headers["retry-after"] == "5"
    assert len(slots(redis_db, world.pid)) == 5
    # a slot given back (a tunnel ended) is bought again
    first = stored(redis_db, world.issued[0])
    redis_db.client().zrem(keys.port_forward_sessions(world.pid), first.session_id)
    _created(world.buy("owner", body))
    assert_error(world.buy("owner", body), 429, "too_many_sessions")


def test_two_nodes_sell_five_slots_together(
    edge_factory: EdgeFactory, admin: str, redis_db: RedisServer
) -> None:
    first = edge_factory(ADMIN_TOKEN=admin)
    second = edge_factory(ADMIN_TOKEN=admin)
    world = make_world(first, admin, redis_db)
    wait_for(
        lambda: (
            world.buy(
                "viewer", {"target_type": "resource", "target_id": "res_a"}, port=second.api_port
            ).status
            == 403
        )
    )
    body = {"target_type": "resource", "target_id": "res_a"}
    ports = [first.api_port, second.api_port] * 8
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda p: world.buy("dev", body, port=p), ports))
    statuses = sorted(a.status for a in answers)
    assert statuses == [201] * 5 + [429] * 11, statuses
    assert len(slots(redis_db, world.pid)) == 5


# ---------------------------------------------------------------------------- the keeper


@dataclass
class LiveStandIn:
    """A live tunnel as the registry holds it (its ticket, ``close``)."""

    ticket: Ticket
    closes: list[int] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def close(self, code: int, reason: str = "") -> None:
        self.closes.append(code)
        self.closed.set()


async def _opened(world: World, who: str, body: dict[str, Any]) -> LiveStandIn:
    """A ticket bought from the edge and redeemed as the tunnel endpoint does."""
    doc = _created(await asyncio.to_thread(world.buy, who, body))
    client = redis_client(RedisTarget(world.redis.url))
    try:
        ticket = await redeem(client, doc["ticket"])
    finally:
        await client.aclose()
    assert ticket is not None
    return LiveStandIn(ticket)


async def _closed_within(tunnel: LiveStandIn, seconds: float) -> float:
    began = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tunnel.closed.wait(), seconds + 1)
    return time.monotonic() - began


def test_revoking_the_pat_or_removing_the_member_closes_live_tunnels(world: World) -> None:
    async def main() -> None:
        dev, owner = world.members["dev"], world.members["owner"]
        resource = {"target_type": "resource", "target_id": "res_a"}
        database = {"target_type": "database", "target_id": "db_a"}
        by_pat = await _opened(world, "dev", resource)
        by_member = await _opened(world, "owner", database)
        # dev's second PAT buys ``kept``: revoking the first must spare it
        second = _created(
            await asyncio.to_thread(
                world.api,
                "POST",
                f"{PROJECTS}/{world.pid}/tokens",
                {"user_id": dev.uid, "name": "2"},
            )
        )["data"]
        world.members["dev2"] = Member(dev.uid, second["id"], second["token"])
        kept = await _opened(world, "dev2", database)
        tunnels = [by_pat, by_member, kept]
        client = redis_client(RedisTarget(world.redis.url))
        keeper = SessionKeeper(client, lambda: [t for t in tunnels if not t.closes])
        task = asyncio.create_task(keeper.run())
        try:
            await asyncio.sleep(1.5)
            assert [t.closes for t in tunnels] == [[], [], []]
            # another member made owner, so that the owner can be removed
            put = await asyncio.to_thread(
                world.api,
                "PUT",
                f"{PROJECTS}/{world.pid}/members/{dev.uid}",
                {"role": "owner", "accepted": True},
            )
            assert put.status == 200, put.raw

            revoke = f"{PROJECTS}/{world.pid}/tokens/{dev.tid}?user_id={dev.uid}"
            assert (await asyncio.to_thread(world.api, "DELETE", revoke)).status == 200
            assert await _closed_within(by_pat, 2) < 2.0
            assert by_pat.closes == [REVOKED]

            remove = f"{PROJECTS}/{world.pid}/members/{owner.uid}"
            assert (await asyncio.to_thread(world.api, "DELETE", remove)).status == 204
            assert await _closed_within(by_member, 2) < 2.0
            assert by_member.closes == [REVOKED]

            await asyncio.sleep(1.2)
            assert kept.closes == []
            assert keeper.health()["revoked"] == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()

    asyncio.run(main())
