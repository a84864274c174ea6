"""The admin API app, in-process: a real ``HttpConnection`` over the component tier's fake
transport hands each request to ``ApiApp`` with every endpoint group (``default_groups``)
on a ``TokenStore`` whose Redis is the test's real redis-server.

What must not reach Redis is checked with the server's own command counter: ``/health`` and
the router's 404/405 are answered inside the connection's read, with no command sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from edge.api.app import ApiApp, default_groups
from edge.api.redis_store import RedisHandle
from edge.api.tokens.store import TokenStore
from edge.auth.secrets import new_admin_token, token_hash
from edge.settings import RedisTarget
from tests.component.harness import Answer, Downstream, quiet_hub
from tests.helpers import RedisServer

TOKENS = "/api/v1/tokens"
CHALLENGE = b'Bearer realm="edge"'


class Api:
    """One worker's API app on the test's Redis, and clients of it."""

    def __init__(self, redis_db: RedisServer) -> None:
        self.redis_db = redis_db
        self.handle = RedisHandle(RedisTarget(redis_db.url))
        self.store = TokenStore(self.handle)
        self.admin = new_admin_token()
        self.status = "ok"
        self.app = ApiApp(self._health, default_groups(self.store))
        self.hub, self.records = quiet_hub()
        self.clients: list[Downstream] = []
        self.counter = redis_db.client()
        self.commands()  # connected now: its handshake is not counted later

    def _health(self) -> dict[str, Any]:
        return {"status": self.status, "checks": {"redis": "not asked"}}

    def client(self) -> Downstream:
        found = Downstream(self.hub, self.app.handle)
        self.clients.append(found)
        return found

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> Answer:
        headers = [] if token is None else [("authorization", f"Bearer {token}")]
        data = b""
        if body is not None:
            headers.append(("content-type", "application/json"))
            data = json.dumps(body).encode()
        return await self.client().request(method, path, headers=headers, body=data)

    def commands(self) -> int:
        """Commands Redis has run, this INFO included."""
        return int(self.counter.info("stats")["total_commands_processed"])

    async def quiet_since(self, before: int) -> None:
        """Nothing was started that could still talk to Redis, and nothing did."""
        assert asyncio.all_tasks() == {asyncio.current_task()}
        await asyncio.sleep(0.02)  # (were one started, time for its command to arrive)
        assert self.commands() == before + 1

    async def close(self) -> None:
        for client in self.clients:
            client.close()
        await self.app.close()
        await self.handle.close()
        self.counter.close()


@pytest.fixture
async def api(redis_db: RedisServer) -> AsyncIterator[Api]:
    found = Api(redis_db)
    assert await found.store.bootstrap_admin(found.admin)
    yield found
    await found.close()


def api_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    """The API's error document: its code, a message, the request id of the header."""
    assert answer.status == status, answer
    assert answer.headers[b"content-type"] == b"application/json"
    assert answer.headers[b"cache-control"] == b"no-store"
    error: dict[str, Any] = answer.json()["error"]
    assert error["code"] == code, error
    assert error["request_id"] == answer.headers[b"x-request-id"].decode()
    assert isinstance(error["message"], str) and error["message"]
    return error


async def test_health_is_answered_inside_the_read_without_redis(api: Api) -> None:
    before = api.commands()
    client = api.client()
    client.send("GET", "/health", headers=[("authorization", "Bearer wrong")])
    got = client.ready()  # no await: no task, no Redis
    assert got is not None and got.status == 200
    assert got.json() == {"status": "ok", "checks": {"redis": "not asked"}}
    # only a drain makes it 503: degraded still serves traffic
    api.status = "draining"
    client.send("GET", "/health")
    drained = client.ready()
    assert drained is not None and drained.status == 503
    await api.quiet_since(before)


async def test_unknown_paths_and_methods_are_refused_before_redis(api: Api) -> None:
    before = api.commands()
    client = api.client()
    client.send("GET", "/api/v1/nothing", headers=[("authorization", f"Bearer {api.admin}")])
    missing = client.ready()
    assert missing is not None
    api_error(missing, 404, "not_found")
    client.send("PATCH", f"{TOKENS}/")
    refused = client.ready()
    assert refused is not None
    api_error(refused, 405, "method_not_allowed")
    assert refused.headers[b"allow"] == b"GET, HEAD, POST"
    # the literal route wins: no token named "info" is ever deleted
    client.send("DELETE", f"{TOKENS}/info")
    literal = client.ready()
    assert literal is not None and literal.status == 405
    assert literal.headers[b"allow"] == b"GET, HEAD"
    await api.quiet_since(before)


async def test_no_token_or_a_wrong_one_is_401_with_the_challenge(api: Api) -> None:
    wrong = new_admin_token()
    messages = set()
    for token in (None, wrong, api.admin + "x", token_hash(api.admin)):
        got = await api.call("GET", f"{TOKENS}/", token)
        messages.add(api_error(got, 401, "unauthorized")["message"])
        assert got.headers[b"www-authenticate"] == CHALLENGE
    assert len(messages) == 1  # never says which check failed
    assert (await api.call("GET", f"{TOKENS}/", api.admin)).status == 200


async def test_a_token_made_by_the_admin_works_and_is_not_the_admin(api: Api) -> None:
    created = await api.call("POST", f"{TOKENS}/", api.admin, {"name": "ci"})
    assert created.status == 201, created
    assert created.headers[b"location"] == f"{TOKENS}/ci".encode()
    doc = created.json()
    token = doc["token"]
    assert (doc["name"], doc["created_by"]) == ("ci", "admin")
    # Redis holds its hash only
    stored = api.redis_db.client().get("token:ci")
    assert stored is not None and token.encode() not in stored
    assert json.loads(stored)["hash"] == token_hash(token)
    info = await api.call("GET", f"{TOKENS}/info", token)
    assert info.status == 200 and info.json()["name"] == "ci"
    # an admin endpoint: the right credentials, not enough
    for method, path in (("GET", f"{TOKENS}/"), ("DELETE", f"{TOKENS}/admin")):
        forbidden = await api.call(method, path, token)
        api_error(forbidden, 403, "forbidden")
        assert b"www-authenticate" not in forbidden.headers
    listed = await api.call("GET", f"{TOKENS}/", api.admin)
    assert [t["name"] for t in listed.json()["tokens"]] == ["admin", "ci"]
    # deleted, it stops working at once
    assert (await api.call("DELETE", f"{TOKENS}/ci", api.admin)).status == 204
    api_error(await api.call("GET", f"{TOKENS}/info", token), 401, "unauthorized")


async def test_public_api_me_answers_in_the_envelope_without_a_pat(api: Api) -> None:
    for token in (None, api.admin):  # an admin token is not a PAT
        got = await api.call("GET", "/public-api/me", token)
        assert got.status == 401, got
        assert got.headers[b"www-authenticate"] == CHALLENGE
        assert got.headers[b"cache-control"] == b"no-store"
        doc = got.json()
        assert set(doc) == {"data", "errors"} and doc["data"] is None
        [error] = doc["errors"]
        assert set(error) == {"code", "message", "field", "request_id"}
        assert (error["code"], error["field"]) == ("unauthorized", None)
        assert error["request_id"] == got.headers[b"x-request-id"].decode()


async def test_an_exception_in_a_handler_is_500_with_the_request_id_and_logged(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await api.call("POST", f"{TOKENS}/", api.admin, {"name": "ci"})).status == 201
    api.redis_db.client().set("token:ci", b'{"name": "ci"')  # cut short: the store raises
    with caplog.at_level(logging.INFO, logger="edge.api"):
        got = await api.call("GET", f"{TOKENS}/ci", api.admin)
    error = api_error(got, 500, "internal_error")
    assert "token:ci" not in error["message"]  # exception text is logged, never sent
    [failed] = [r for r in caplog.records if r.getMessage() == "api handler failed"]
    assert failed.levelno == logging.ERROR and failed.exc_info is not None
    assert failed.__dict__["fields"] == {"request_id": error["request_id"]}
    # the app goes on serving
    assert (await api.call("GET", f"{TOKENS}/", api.admin)).status == 200
    await asyncio.sleep(0)
    assert not api.app.tasks
