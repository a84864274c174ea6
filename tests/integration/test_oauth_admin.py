"""The OAuth server's admin surface: ``/api/v1/oauth`` and ``edge oauth ...``.

Records are written into a real Redis with the records' own ``encode()`` at the keys
:mod:`edge.store.keys` names (as the grant and session code writes them), then listed,
shown, revoked and deleted through the API and the command line (``python -m edge``). The
signing keys and the revocations are the real :class:`SigningKeys` and
:class:`RevokedTokens`.

Each test runs against two servers of the same API:

* ``edge``: a real ``edge serve`` with ``AUTH_HOSTNAME`` set;
* ``in-process``: the API app of a worker (the token and configuration groups and
  :class:`OAuthAdminApi`) on a real loopback listener, in an event loop of its own thread,
  with the signing keys and revocation follower running beside it as a worker runs them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from edge.api.app import ApiApp, default_groups
from edge.api.oauth.endpoints import OAuthAdminApi, OAuthAdminDeps
from edge.api.redis_store import RedisHandle
from edge.api.tokens.store import TokenStore
from edge.client.oauth import path_regex
from edge.config.schema import RouteConfig
from edge.http1.connection import HttpConnection
from edge.oauth.records import (
    AccessTokenRecord,
    BrowserSession,
    ClientRecord,
    GitHubUser,
    RefreshRecord,
    digest,
    encode,
    new_secret,
)
from edge.oauth.revocation import RevokedTokens
from edge.oauth.signing import SigningKeys
from edge.settings import RedisTarget
from edge.store import keys
from edge.store.client import redis_client
from tests.api_client import Answer, assert_error, call
from tests.component.harness import quiet_hub
from tests.helpers import ROOT, EdgeProcess, RedisServer, wait_for

OA = "/api/v1/oauth"
AUTH_HOST = "auth.example.test"
ISSUER = f"https://{AUTH_HOST}"
OCTO = GitHubUser(github_id=583231, login="octocat", email="octocat@example.com")
HUBOT = GitHubUser(github_id=480938, login="hubot")
CLIENT_ENV = ("API_URL", "TOKEN", "ADMIN_TOKEN", "EDGE_PROFILE", "NO_COLOR", "XDG_CONFIG_HOME")
T = TypeVar("T")


class Server(Protocol):
    api_port: int


# ---------------------------------------------------------------------------- servers


class InProcess:
    """A worker's API app with the OAuth admin group on 127.0.0.1, in a thread's loop."""

    def __init__(self, redis_url: str, admin: str, *, enabled: bool) -> None:
        self.redis_url = redis_url
        self.admin = admin
        self.enabled = enabled
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="oauth-admin-api")
        self.thread.start()
        self.tasks: list[asyncio.Task[None]] = []
        self.api_port = self.run(self._start())

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(30)

    async def _start(self) -> int:
        target = RedisTarget(self.redis_url)
        self.handle = RedisHandle(target)
        store = TokenStore(self.handle)
        assert await store.bootstrap_admin(self.admin)
        self.oauth_redis = redis_client(target)
        deps = None
        if self.enabled:
            signing = SigningKeys(
                self.oauth_redis, issuer=ISSUER, env_key_b64=None, access_token_lifetime=1800
            )
            await signing.load()
            revoked = RevokedTokens(self.oauth_redis)
            loop = asyncio.get_running_loop()
            self.tasks = [loop.create_task(signing.run()), loop.create_task(revoked.run())]
            deps = OAuthAdminDeps(signing, revoked, ISSUER, AUTH_HOST)
        # the other groups as a worker has them; this one with the server made here
        others = [g for g in default_groups(store) if not isinstance(g, OAuthAdminApi)]
        groups = [*others, OAuthAdminApi(store, deps)]
        self.app = ApiApp(lambda: {"status": "ok"}, groups)
        hub, _ = quiet_hub()
        self.server = await asyncio.get_running_loop().create_server(
            lambda: HttpConnection(hub, self.app.handle), "127.0.0.1", 0
        )
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.app.close()
        await self.handle.close()
        await self.oauth_redis.aclose()

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


ServerFactory = Callable[..., Server]


@pytest.fixture(params=["edge", "in-process"])
def server_factory(
    request: pytest.FixtureRequest,
    edge_factory: Callable[..., EdgeProcess],
    redis_db: RedisServer,
    admin: str,
) -> Iterator[ServerFactory]:
    """``server_factory(enabled=True)``: an admin API serving ``/api/v1/oauth`` with
    ``admin`` as the admin token (``enabled=False``: no OAuth server configured)."""
    started: list[InProcess] = []

    def make(*, enabled: bool = True) -> Server:
        if request.param == "edge":
            env = {"AUTH_HOSTNAME": AUTH_HOST} if enabled else {}
            return edge_factory(ADMIN_TOKEN=admin, **env)
        found = InProcess(redis_db.url, admin, enabled=enabled)
        started.append(found)
        return found

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def api(server_factory: ServerFactory) -> Server:
    return server_factory()


# ---------------------------------------------------------------------------- records


def put_client(rdb: redis.Redis, client_id: str, **fields: Any) -> ClientRecord:
    now = int(time.time())
    record = ClientRecord(
        client_id=client_id,
        redirect_uris=fields.pop("redirect_uris", ("http://127.0.0.1:33418/callback",)),
        client_id_issued_at=now,
        expires_at=now + 86400,
        **fields,
    )
    rdb.set(keys.oauth_client(client_id), encode(record))
    return record


class Family:
    """One authorization's tokens as the grants write them: access tokens, a refresh
    token, the family set and both indexes."""

    def __init__(
        self, rdb: redis.Redis, client_id: str, user: GitHubUser, *, tokens: int = 1
    ) -> None:
        self.id = new_secret(16)
        self.client_id = client_id
        self.user = user
        now = int(time.time())
        self.jtis: list[str] = []
        family_key = keys.oauth_family(self.id)
        for _ in range(tokens):
            jti = "at_" + new_secret(16)  # as the server draws them: never a leading "-"
            record = AccessTokenRecord(
                jti=jti,
                family_id=self.id,
                client_id=client_id,
                sub=user.sub,
                login=user.login,
                email=user.email,
                scope=("mcp:read", "mcp:write"),
                audience=("https://mcp.example.test/mcp",),
                issued_at=now,
                expires_at=now + 1800,
            )
            rdb.set(keys.oauth_token(jti), encode(record), ex=1800)
            rdb.sadd(family_key, f"jti:{jti}:{now + 1800}")
            self.jtis.append(jti)
        self.refresh_hash = digest(new_secret())
        refresh = RefreshRecord(
            family_id=self.id,
            client_id=client_id,
            user=user,
            scope=("mcp:read", "mcp:write"),
            resources=(),
            issued_at=now,
            expires_at=now + 86400,
        )
        refresh_key = keys.oauth_refresh(self.refresh_hash)
        rdb.hset(refresh_key, mapping={"doc": encode(refresh), "uses": 0})
        rdb.expire(refresh_key, 86400)
        rdb.sadd(family_key, f"refresh:{self.refresh_hash}")
        rdb.expire(family_key, 86400)
        rdb.sadd(keys.oauth_user_tokens(user.sub), self.id)
        rdb.sadd(keys.oauth_client_tokens(client_id), self.id)

    def revoked_in(self, rdb: redis.Redis) -> bool:
        """Every token of the family gone and every jti in the revoked set."""
        gone = not rdb.exists(
            keys.oauth_family(self.id),
            keys.oauth_refresh(self.refresh_hash),
            *(keys.oauth_token(jti) for jti in self.jtis),
        )
        listed = all(rdb.zscore(keys.OAUTH_REVOKED, jti) is not None for jti in self.jtis)
        return gone and listed

    def untouched_in(self, rdb: redis.Redis) -> bool:
        present = rdb.exists(
            keys.oauth_family(self.id),
            keys.oauth_refresh(self.refresh_hash),
            *(keys.oauth_token(jti) for jti in self.jtis),
        )
        none_revoked = all(rdb.zscore(keys.OAUTH_REVOKED, jti) is None for jti in self.jtis)
        return present == 2 + len(self.jtis) and none_revoked


def put_session(rdb: redis.Redis, user: GitHubUser, agent: str = "curl/8") -> str:
    """A signed-in browser; its id (the digest of the cookie)."""
    now = int(time.time())
    session_id = digest(new_secret())
    doc = BrowserSession(user=user, created_at=now, expires_at=now + 3600, user_agent=agent)
    rdb.set(keys.oauth_session(session_id), encode(doc), ex=3600)
    return session_id


def ok(answer: Answer, status: int = 200) -> Any:
    assert answer.status == status, (answer.status, answer.raw)
    assert answer.headers["cache-control"] == "no-store"
    return answer.doc if answer.raw else None


def revoke_as_the_revocation_endpoint_does(redis_url: str, jti: str, expires_at: int) -> None:
    """What ``/revoke`` does to one access token: into the revoked set and the stream."""

    async def revoke() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await RevokedTokens(client).revoke(jti, expires_at)
        finally:
            await client.aclose()

    asyncio.run(revoke())


# ---------------------------------------------------------------------------- access


def test_the_admin_token_alone_and_a_clear_answer_without_an_oauth_server(
    server_factory: ServerFactory, admin: str, rdb: redis.Redis
) -> None:
    disabled = server_factory(enabled=False)
    port = disabled.api_port
    paths = [
        ("GET", f"{OA}/clients"),
        ("GET", f"{OA}/tokens"),
        ("DELETE", f"{OA}/tokens/abc"),
        ("GET", f"{OA}/sessions"),
        ("GET", f"{OA}/status"),
        ("POST", f"{OA}/keys/rotate"),
    ]
    for method, path in paths:
        assert_error(call(port, method, path), 401, "unauthorized")
        answer = call(port, method, path, admin)
        assert_error(answer, 404, "oauth_disabled")
        assert "AUTH_HOSTNAME" in answer.error["message"]
    # another valid token is not enough
    other = call(port, "POST", "/api/v1/tokens/", admin, {"name": "ci"}).doc["token"]
    assert_error(call(port, "GET", f"{OA}/clients", other), 403, "forbidden")
    assert not rdb.exists(keys.OAUTH_KEYS)  # nothing of an OAuth server was made


def test_ids_that_could_address_other_keys_are_404_and_queries_are_checked(
    api: Server, admin: str
) -> None:
    port = api.api_port
    for path, code in (
        (f"{OA}/tokens/%2A", "token_not_found"),
        (f"{OA}/tokens/a:b", "token_not_found"),
        (f"{OA}/tokens/{'a' * 200}", "token_not_found"),
        (f"{OA}/sessions/abc", "session_not_found"),
        (f"{OA}/sessions/{'A' * 64}", "session_not_found"),
        (f"{OA}/clients/a%20b", "client_not_found"),
        (f"{OA}/clients/nobody", "client_not_found"),
        (f"{OA}/clients/nobody/tokens", "client_not_found"),
    ):
        assert_error(call(port, "GET", path, admin), 404, code)
    for query, field in (("bogus=1", "bogus"), ("user=", "user"), ("user=a&user=b", "user")):
        answer = call(port, "GET", f"{OA}/tokens?{query}", admin)
        assert_error(answer, 400, "invalid_query", field=field)
    assert_error(call(port, "PUT", f"{OA}/status", admin), 405, "method_not_allowed")


# ---------------------------------------------------------------------------- clients


def test_clients_are_listed_and_shown_without_secret_digests(
    api: Server, admin: str, rdb: redis.Redis
) -> None:
    secret_hash = digest("s3cret")
    registration_hash = digest("registration")
    put_client(rdb, "pub-1", client_name="Inspector")
    put_client(
        rdb,
        "conf-1",
        client_name="Backend",
        token_endpoint_auth_method="client_secret_basic",
        client_secret_hash=secret_hash,
        registration_access_token_hash=registration_hash,
        scope="mcp:read",
        source="admin",
    )
    rdb.set(keys.oauth_client("broken"), b'{"client_id": "broken", "nonsense": 1}')
    port = api.api_port
    answer = call(port, "GET", f"{OA}/clients", admin)
    listed = ok(answer)
    assert [c["client_id"] for c in listed["clients"]] == ["conf-1", "pub-1"]
    assert listed["damaged"] == [keys.oauth_client("broken")]
    conf = listed["clients"][0]
    assert conf["token_endpoint_auth_method"] == "client_secret_basic"
    assert conf["source"] == "admin" and conf["scope"] == "mcp:read"
    assert conf["expires_at"].endswith("Z") and conf["expired"] is False
    shown = call(port, "GET", f"{OA}/clients/conf-1", admin)
    detail = ok(shown)
    assert detail["confidential"] is True and detail["registration_managed"] is True
    for raw in (answer.raw, shown.raw):
        assert secret_hash.encode() not in raw and registration_hash.encode() not in raw
        assert b"hash" not in raw
    assert_error(call(port, "GET", f"{OA}/clients/broken", admin), 409, "damaged_record")


def test_deleting_a_client_revokes_every_family_it_was_issued(
    api: Server, admin: str, rdb: redis.Redis
) -> None:
    put_client(rdb, "doomed")
    put_client(rdb, "kept")
    first = Family(rdb, "doomed", OCTO, tokens=2)
    second = Family(rdb, "doomed", HUBOT)
    other = Family(rdb, "kept", OCTO)
    port = api.api_port
    tokens = ok(call(port, "GET", f"{OA}/clients/doomed/tokens", admin))["tokens"]
    assert sorted(t["jti"] for t in tokens) == sorted(first.jtis + second.jtis)
    done = ok(call(port, "DELETE", f"{OA}/clients/doomed", admin))
    assert done == {"client_id": "doomed", "deleted": True, "revoked": 5}  # 3 access, 2 refresh
    assert not rdb.exists(keys.oauth_client("doomed"), keys.oauth_client_tokens("doomed"))
    assert first.revoked_in(rdb) and second.revoked_in(rdb)
    assert other.untouched_in(rdb) and rdb.exists(keys.oauth_client("kept"))
    assert_error(call(port, "DELETE", f"{OA}/clients/doomed", admin), 404, "client_not_found")
    # a client known only by its metadata document URL has no record, only tokens
    cimd = "https://app.example.test/oauth/client.json"
    family = Family(rdb, cimd, HUBOT)
    path = f"{OA}/clients/{cimd.replace('/', '%2F').replace(':', '%3A')}"
    assert ok(call(port, "DELETE", path, admin)) == {
        "client_id": cimd,
        "deleted": False,
        "revoked": 2,
    }
    assert family.revoked_in(rdb)


# ---------------------------------------------------------------------------- tokens


def test_tokens_are_listed_filtered_shown_and_revoked_by_family(
    api: Server, admin: str, rdb: redis.Redis
) -> None:
    octo = Family(rdb, "app-a", OCTO, tokens=2)
    hubot = Family(rdb, "app-b", HUBOT)
    rdb.set(keys.oauth_token("damagedjti"), b"not json", ex=600)
    port = api.api_port
    listed = ok(call(port, "GET", f"{OA}/tokens", admin))
    assert sorted(t["jti"] for t in listed["tokens"]) == sorted(octo.jtis + hubot.jtis)
    assert listed["damaged"] == [keys.oauth_token("damagedjti")]
    for query, wanted in (
        ("client_id=app-a", octo.jtis),
        ("user=octocat", octo.jtis),
        (f"user=github:{HUBOT.github_id}", hubot.jtis),
        ("client_id=app-a&user=hubot", []),
    ):
        found = ok(call(port, "GET", f"{OA}/tokens?{query}", admin))["tokens"]
        assert sorted(t["jti"] for t in found) == sorted(wanted), query
    jti = octo.jtis[0]
    one = ok(call(port, "GET", f"{OA}/tokens/{jti}", admin))
    assert one["client_id"] == "app-a" and one["login"] == "octocat"
    assert one["sub"] == f"github:{OCTO.github_id}" and one["scope"] == "mcp:read mcp:write"
    assert one["audience"] == ["https://mcp.example.test/mcp"] and one["revoked"] is False
    assert one["family_id"] == octo.id and one["expires_at"].endswith("Z")
    done = ok(call(port, "DELETE", f"{OA}/tokens/{jti}", admin))
    assert done == {"jti": jti, "family_id": octo.id, "revoked": 3}
    assert octo.revoked_in(rdb) and hubot.untouched_in(rdb)
    for gone in octo.jtis:
        assert_error(call(port, "GET", f"{OA}/tokens/{gone}", admin), 404, "token_not_found")
        assert_error(call(port, "DELETE", f"{OA}/tokens/{gone}", admin), 404, "token_not_found")
    # a damaged record names no family: its jti is revoked until the key would expire
    revoked = ok(call(port, "DELETE", f"{OA}/tokens/damagedjti", admin))
    assert revoked == {"jti": "damagedjti", "family_id": None, "revoked": 1}
    score = rdb.zscore(keys.OAUTH_REVOKED, "damagedjti")
    assert score is not None and time.time() + 500 < score <= time.time() + 601
    assert not rdb.exists(keys.oauth_token("damagedjti"))


def test_a_token_revoked_elsewhere_is_flagged_from_memory(
    api: Server, admin: str, rdb: redis.Redis, redis_db: RedisServer
) -> None:
    family = Family(rdb, "app-a", OCTO)
    jti = family.jtis[0]
    # /revoke on another node: the record stays until it expires, the jti is revoked
    revoke_as_the_revocation_endpoint_does(redis_db.url, jti, int(time.time()) + 1800)
    port = api.api_port

    def flagged() -> bool:
        return bool(ok(call(port, "GET", f"{OA}/tokens/{jti}", admin))["revoked"])

    wait_for(flagged, timeout=5)
    listed = ok(call(port, "GET", f"{OA}/tokens?client_id=app-a", admin))["tokens"]
    assert [t["revoked"] for t in listed] == [True]


# ---------------------------------------------------------------------------- sessions


def test_browser_sessions_are_listed_shown_and_signed_out(
    api: Server, admin: str, rdb: redis.Redis
) -> None:
    octo = put_session(rdb, OCTO, "Mozilla/5.0")
    hubot = put_session(rdb, HUBOT)
    rdb.set(keys.oauth_session("f" * 64), b'{"user": 1}', ex=600)
    port = api.api_port
    listed = ok(call(port, "GET", f"{OA}/sessions", admin))
    assert sorted(s["id"] for s in listed["sessions"]) == sorted([octo, hubot])
    assert listed["damaged"] == [keys.oauth_session("f" * 64)]
    one = ok(call(port, "GET", f"{OA}/sessions/{octo}", admin))
    assert one["login"] == "octocat" and one["github_id"] == OCTO.github_id
    assert one["user_agent"] == "Mozilla/5.0" and one["created_at"].endswith("Z")
    assert ok(call(port, "DELETE", f"{OA}/sessions/{octo}", admin), 204) is None
    assert not rdb.exists(keys.oauth_session(octo)) and rdb.exists(keys.oauth_session(hubot))
    assert_error(call(port, "DELETE", f"{OA}/sessions/{octo}", admin), 404, "session_not_found")
    assert_error(call(port, "GET", f"{OA}/sessions/{octo}", admin), 404, "session_not_found")
    # a damaged session can be removed too
    assert ok(call(port, "DELETE", f"{OA}/sessions/{'f' * 64}", admin), 204) is None


# ---------------------------------------------------------------------------- server


def test_status_counts_and_key_rotation(api: Server, admin: str, rdb: redis.Redis) -> None:
    put_client(rdb, "c1")
    put_client(rdb, "c2")
    family = Family(rdb, "c1", OCTO, tokens=3)
    put_session(rdb, OCTO)
    port = api.api_port
    status = ok(call(port, "GET", f"{OA}/status", admin))
    assert status["issuer"] == ISSUER and status["auth_hostname"] == AUTH_HOST
    assert status["key_source"] == "redis"
    first = status["active_kid"]
    assert isinstance(first, str) and status["published_kids"] == [first]
    assert (status["clients"], status["tokens"], status["sessions"]) == (2, 3, 1)
    assert status["published_keys"] == 1 and status["revoked"] == 0
    assert ok(call(port, "DELETE", f"{OA}/tokens/{family.jtis[0]}", admin))["revoked"] == 4
    rotated = ok(call(port, "POST", f"{OA}/keys/rotate", admin))
    assert rotated["kid"] != first and rotated["published"] == [rotated["kid"], first]
    after = ok(call(port, "GET", f"{OA}/status", admin))
    assert after["active_kid"] == rotated["kid"] and after["published_keys"] == 2
    assert (after["tokens"], after["revoked"]) == (0, 3)
    assert rdb.hlen(keys.OAUTH_KEYS) == 2  # every node reads the new key from here


# ---------------------------------------------------------------------------- the CLI


def cli_env(tmp_path: Path, server: Server, token: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    env.update(
        PYTHONPATH=str(ROOT),
        HOME=str(tmp_path),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        API_URL=f"http://127.0.0.1:{server.api_port}",
        TOKEN=token,
    )
    return env


def edge(command: str, env: dict[str, str], status: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "edge", *shlex.split(command)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=env["HOME"],
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == status, (command, done.returncode, done.stdout, done.stderr)
    return done


def test_cli_lists_shows_revokes_and_deletes(
    api: Server, admin: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, api, admin)
    put_client(rdb, "cli-app", client_name="CLI app")
    family = Family(rdb, "cli-app", OCTO)
    other = Family(rdb, "else", HUBOT)
    session = put_session(rdb, OCTO)
    rdb.set(keys.oauth_client("broken"), b"{")
    table = edge("oauth clients", env)
    header, row = table.stdout.splitlines()
    assert header.split() == [
        "CLIENT_ID", "NAME", "AUTH", "SOURCE", "REDIRECT_URIS", "ISSUED", "EXPIRES"
    ]  # fmt: skip
    assert (
        row.startswith("cli-app ")
        and " CLI app " in row
        and " none " in row
        and "http://127.0.0.1:33418/callback" in row
        and "in 23h" in row
    )
    assert "1 damaged record(s) skipped" in table.stderr and "oauth:client:broken" in table.stderr
    listed = json.loads(edge("oauth clients list -o json", env).stdout)
    assert [c["client_id"] for c in listed] == ["cli-app"]
    shown = json.loads(edge("oauth clients show cli-app -o json", env).stdout)
    assert shown["client_name"] == "CLI app"
    tokens = json.loads(edge("oauth tokens list --user octocat -o json", env).stdout)
    assert [t["jti"] for t in tokens] == family.jtis
    assert json.loads(edge("oauth tokens list --client else -o json", env).stdout)[0]["login"] == (
        "hubot"
    )
    assert "octocat" in edge(f"oauth tokens show {family.jtis[0]}", env).stdout
    revoked = edge(f"oauth tokens revoke {other.jtis[0]}", env)
    assert "(2 access and refresh token(s))" in revoked.stdout and other.revoked_in(rdb)
    sessions = edge("oauth sessions", env).stdout
    assert session in sessions and "octocat" in sessions
    assert "signed out" in edge(f"oauth sessions revoke {session}", env).stdout
    assert not rdb.exists(keys.oauth_session(session))
    deleted = edge("oauth clients delete cli-app", env)
    assert deleted.stdout == "deleted client cli-app; 2 token(s) revoked\n"
    assert family.revoked_in(rdb)
    missing = edge("oauth clients delete cli-app", env, status=1)
    assert missing.stderr.startswith("edge: 404 client_not_found: ")
    status = json.loads(edge("oauth status -o json", env).stdout)
    assert status["auth_hostname"] == AUTH_HOST
    rotated = json.loads(edge("oauth rotate-key -o json", env).stdout)
    assert rotated["kid"] in rotated["published"] and len(rotated["published"]) == 2


def stored_route(rdb: redis.Redis, route_id: str) -> RouteConfig:
    raw = rdb.get(keys.route(route_id))
    assert raw is not None, route_id
    return msgspec.json.decode(raw, type=RouteConfig)


def test_routes_setup_creates_the_routes_once_and_puts_back_a_changed_one(
    api: Server, admin: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    env = cli_env(tmp_path, api, admin)
    paths = {
        "oauth-authorize": "/authorize",
        "oauth-token": "/token",
        "oauth-callback": "/callback",
        "oauth-verify": "/verify",
        "oauth-register": "/register",
        "oauth-jwks": "/jwks",
        "oauth-revoke": "/revoke",
        "oauth-introspect": "/introspect",
        "oauth-metadata": "/.well-known/oauth-authorization-server",
    }
    first = edge("oauth routes-setup", env)
    assert first.stdout.count(" created\n") == 9
    assert "9 of 9 OAuth routes created or updated" in first.stdout
    for route_id, path in paths.items():
        route = stored_route(rdb, route_id)
        # the path itself or below it, never a longer word (/tokens stays the app's)
        assert (route.path_pattern, route.is_regex) == (path_regex(path), True)
        assert (route.target_type, route.target_value) == ("hostname", AUTH_HOST)
        assert (route.priority, route.scope, route.enabled) == (95, "global", True)
    before = {route_id: rdb.get(keys.route(route_id)) for route_id in paths}
    again = edge("oauth routes-setup", env)
    assert again.stdout.count(" unchanged\n") == 9
    assert again.stdout.endswith("all 9 OAuth routes are in place; nothing changed\n")
    assert {route_id: rdb.get(keys.route(route_id)) for route_id in paths} == before
    # someone disabled one and moved another to a different host: both are put back
    port = api.api_port
    for route_id, change in (("oauth-jwks", {"enabled": False}), ("oauth-token", {})):
        doc = call(port, "GET", f"/api/v1/routes/{route_id}", admin).doc
        doc.update(change)
        if route_id == "oauth-token":
            doc["target_value"] = "elsewhere.example.test"
        ok(call(port, "PUT", f"/api/v1/routes/{route_id}", admin, doc))
    fixed = edge("oauth routes-setup -o json", env)
    actions = {row["route_id"]: row["action"] for row in json.loads(fixed.stdout)}
    assert actions.pop("oauth-jwks") == "updated" and actions.pop("oauth-token") == "updated"
    assert set(actions.values()) == {"unchanged"}
    assert stored_route(rdb, "oauth-jwks").enabled
    assert stored_route(rdb, "oauth-token").target_value == AUTH_HOST
    # --auth-host names the host without asking the edge
    moved = edge("oauth routes-setup --auth-host login.example.test", env)
    assert "9 of 9" in moved.stdout
    assert stored_route(rdb, "oauth-metadata").target_value == "login.example.test"
