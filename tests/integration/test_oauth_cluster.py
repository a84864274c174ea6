"""The OAuth server as a cluster runs it: several edges on one Redis, and in front of others.

* a revocation made on one node (``/revoke``, or the admin API) refuses the token on the
  other within a second;
* ``edge oauth rotate-key``: old tokens keep verifying on every node, new ones carry the new
  ``kid``, both keys are published everywhere until the old one retires;
* ``OAUTH_JWT_PRIVATE_KEY_B64``: that key signs and nothing private reaches Redis;
* edges starting together on an empty Redis generate one key between them;
* ``edge oauth routes-setup``: a proxy's host answers the OAuth endpoints, the rest goes to
  its upstream;
* ``/verify`` behind a real nginx ``auth_request``.

Every edge is a real ``edge serve``, the Redis a real redis-server, GitHub the local
stand-in (the one part that cannot be real here).
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import msgspec
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edge.oauth.signing import ACTIVATION_DELAY, RETIRE_MARGIN, StoredKey, thumbprint
from edge.store import keys
from tests.api_client import call
from tests.helpers import (
    ROOT,
    EdgeProcess,
    Upstream,
    free_port,
    proxy_doc,
    require_tool,
    stop_process,
    wait_for,
)
from tests.oauth_helpers import (
    AUTH_HOST,
    Browser,
    OAuthClient,
    OAuthStack,
    Page,
    oauth_stack,
    post_form,
    register_client,
    request,
    request_via,
)

EdgeFactory = Callable[..., EdgeProcess]
OA = "/api/v1/oauth"
PROPAGATION_LIMIT = 1.0  # seconds: a revocation is seen by every node within this


# ---------------------------------------------------------------------------- helpers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def verify_on(node: EdgeProcess, stack: OAuthStack, token: str) -> int:
    """``/verify`` asked of ``node`` (its port, the issuer's Host): the status."""
    page = request_via(node.http_port, "GET", f"{stack.issuer}/verify", headers=bearer(token))
    return page.status


def jwks_kids(node: EdgeProcess, stack: OAuthStack) -> list[str]:
    page = request_via(node.http_port, "GET", f"{stack.issuer}/jwks")
    assert page.status == 200, page.text
    return [k["kid"] for k in page.json()["keys"]]


def time_until_refused(node: EdgeProcess, stack: OAuthStack, token: str, limit: float) -> float:
    """Seconds until ``node`` answers ``/verify`` 401 for ``token``, asked back to back from
    now; fails once ``limit`` is exceeded three times over (the number is then reported)."""
    started = time.monotonic()
    while True:
        status = verify_on(node, stack, token)
        elapsed = time.monotonic() - started
        if status == 401:
            return elapsed
        assert status == 200, status
        assert elapsed < 3 * limit, f"still accepted {elapsed:.2f}s after the revocation"


def kid_of(token: str) -> str:
    kid = jwt.get_unverified_header(token)["kid"]
    assert isinstance(kid, str)
    return kid


def jti_of(token: str) -> str:
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert isinstance(jti, str)
    return jti


def cli(
    port: int, token: str, home: Path, command: str, status: int = 0
) -> subprocess.CompletedProcess[str]:
    """``edge <command>`` against the admin API on ``port``; its completed process."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("API_URL", "TOKEN", "ADMIN_TOKEN", "EDGE_PROFILE", "XDG_CONFIG_HOME")
    }
    env.update(
        PYTHONPATH=str(ROOT),
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / "xdg"),
        API_URL=f"http://127.0.0.1:{port}",
        TOKEN=token,
    )
    done = subprocess.run(
        [sys.executable, "-m", "edge", *shlex.split(command)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=str(home),
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    assert done.returncode == status, (command, done.returncode, done.stdout, done.stderr)
    return done


def stored_keys(rdb: redis.Redis) -> dict[str, StoredKey]:
    raw: dict[bytes, bytes] = rdb.hgetall(keys.OAUTH_KEYS)  # type: ignore[assignment]
    return {k.decode(): msgspec.json.decode(v, type=StoredKey) for k, v in raw.items()}


def stored_values(rdb: redis.Redis, key: bytes) -> list[bytes]:
    """Every member, field and value stored under ``key`` as Redis returns them (DUMP's
    payload may be compressed, so a search in it could miss)."""
    r: Any = rdb  # the sync client's replies: bytes, lists and dicts of bytes
    kind = r.type(key).decode()
    values: list[bytes] = [key]
    if kind == "string":
        values.append(r.get(key) or b"")
    elif kind == "hash":
        for field_name, value in r.hgetall(key).items():
            values += [field_name, value]
    elif kind == "set":
        values += list(r.smembers(key))
    elif kind == "zset":
        values += list(r.zrange(key, 0, -1))
    elif kind == "list":
        values += list(r.lrange(key, 0, -1))
    elif kind == "stream":
        for _id, entry in r.xrange(key):
            for field_name, value in entry.items():
                values += [field_name, value]
    else:
        raise AssertionError(f"{key!r}: unexpected type {kind}")
    return values


# ---------------------------------------------------------------------------- 1. revocation


def test_a_revocation_on_one_node_is_seen_by_the_other_within_a_second(
    edge_factory: EdgeFactory, admin: str
) -> None:
    with oauth_stack(edge_factory, ADMIN_TOKEN=admin) as stack:
        node_a, node_b = stack.edge, stack.node()
        client = register_client(stack.issuer)
        browser = Browser()
        token = stack.tokens(browser, client)["access_token"]
        assert verify_on(node_b, stack, token) == 200
        assert verify_on(node_a, stack, token) == 200

        # /revoke (RFC 7009) on node A, the issuer's own port
        assert client.revoke(token).status == 200
        elapsed = time_until_refused(node_b, stack, token, PROPAGATION_LIMIT)
        print(f"\n/revoke on A -> 401 on B after {elapsed * 1000:.1f} ms")
        assert elapsed < PROPAGATION_LIMIT, elapsed
        assert verify_on(node_a, stack, token) == 401

        # the admin API of node B revokes a token's family; node A refuses it
        answer = stack.tokens(browser, client)
        second = answer["access_token"]
        assert verify_on(node_a, stack, second) == 200
        assert verify_on(node_b, stack, second) == 200
        jti = jti_of(second)
        deleted = call(node_b.api_port, "DELETE", f"{OA}/tokens/{jti}", admin)
        assert deleted.status == 200, deleted.raw
        assert deleted.doc["jti"] == jti and deleted.doc["revoked"] >= 1
        elapsed = time_until_refused(node_a, stack, second, PROPAGATION_LIMIT)
        print(f"admin DELETE on B -> 401 on A after {elapsed * 1000:.1f} ms")
        assert elapsed < PROPAGATION_LIMIT, elapsed
        assert verify_on(node_b, stack, second) == 401
        # the family went with it: its refresh token is refused on node A
        refreshed = client.refresh(answer["refresh_token"])
        assert refreshed.status == 400 and refreshed.json()["error"] == "invalid_grant"


# ---------------------------------------------------------------------------- 2. rotation


LIFETIME = 10  # OAUTH_ACCESS_TOKEN_LIFETIME of the rotation test


def test_key_rotation_keeps_old_tokens_and_publishes_both_keys_on_every_node(
    edge_factory: EdgeFactory, admin: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    with oauth_stack(
        edge_factory, ADMIN_TOKEN=admin, OAUTH_ACCESS_TOKEN_LIFETIME=str(LIFETIME)
    ) as stack:
        node_a, node_b = stack.edge, stack.node()
        client = register_client(stack.issuer)
        browser = Browser()
        old_token = stack.tokens(browser, client)["access_token"]
        old_kid = kid_of(old_token)
        assert jwks_kids(node_a, stack) == jwks_kids(node_b, stack) == [old_kid]

        before = int(time.time())
        rotated = json.loads(
            cli(node_a.api_port, admin, tmp_path, "oauth rotate-key -o json").stdout
        )
        after = int(time.time())
        new_kid = rotated["kid"]
        assert new_kid != old_kid and rotated["published"] == [new_kid, old_kid]
        # the old key retires once the last token it signed has expired (and the margin)
        stored = stored_keys(rdb)
        assert set(stored) == {old_kid, new_kid} and stored[new_kid].retire_at is None
        retire_at = stored[old_kid].retire_at
        assert retire_at is not None
        assert before + LIFETIME + RETIRE_MARGIN <= retire_at <= after + LIFETIME + RETIRE_MARGIN

        # tokens signed before still pass on both nodes
        assert verify_on(node_a, stack, old_token) == 200
        assert verify_on(node_b, stack, old_token) == 200
        # right after the rotation the old key still signs, so the node that did not
        # rotate (and has not read the new key yet) accepts the tokens issued meanwhile
        early = stack.tokens(browser, client)["access_token"]
        assert kid_of(early) == old_kid
        assert verify_on(node_b, stack, early) == 200

        # once every node has had time to read it, new tokens carry the new kid, and
        # pass on the node that did not rotate at once
        def new_token_signed() -> str | None:
            token = stack.tokens(browser, client)["access_token"]
            return token if kid_of(token) == new_kid else None

        new_token = wait_for(new_token_signed, timeout=ACTIVATION_DELAY + 5, interval=0.5)
        assert verify_on(node_a, stack, new_token) == 200
        assert verify_on(node_b, stack, new_token) == 200
        # both kids published by both nodes, the active one first
        wait_for(lambda: jwks_kids(node_a, stack) == [new_kid, old_kid], timeout=5)
        wait_for(lambda: jwks_kids(node_b, stack) == [new_kid, old_kid], timeout=5)
        # a resource server reading node B's JWKS accepts both tokens
        published = request_via(node_b.http_port, "GET", f"{stack.issuer}/jwks").json()["keys"]
        for token in (old_token, new_token):
            key = next(k for k in published if k["kid"] == kid_of(token))
            claims = jwt.decode(
                token,
                jwt.PyJWK(key).key,
                algorithms=["RS256"],
                audience=stack.issuer,
                issuer=stack.issuer,
            )
            assert claims["login"] == "alice"

        # retirement: the old document's retire_at brought to now, as if the lifetime and
        # the margin (70 s here) had passed; every node drops the key, from JWKS and Redis
        # (the retire time itself is checked above and, with a moved clock, in
        # tests/integration/test_oauth_keys.py)
        doc = stored_keys(rdb)[old_kid]
        soon = int(time.time()) + 1
        rdb.hset(
            keys.OAUTH_KEYS,
            old_kid,
            msgspec.json.encode(msgspec.structs.replace(doc, retire_at=soon)),
        )
        wait_for(lambda: jwks_kids(node_a, stack) == [new_kid], timeout=6)
        wait_for(lambda: jwks_kids(node_b, stack) == [new_kid], timeout=6)
        for node in (node_a, node_b):
            assert verify_on(node, stack, old_token) == 401
            assert verify_on(node, stack, new_token) == 200
        wait_for(lambda: set(stored_keys(rdb)) == {new_kid}, timeout=6)  # the next refresh


# ---------------------------------------------------------------------------- 3. env key


def test_the_environment_key_signs_and_never_reaches_redis(
    edge_factory: EdgeFactory, admin: str, rdb: redis.Redis, tmp_path: Path
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    env_key = base64.b64encode(pem).decode()
    kid = thumbprint(private.public_key())
    with oauth_stack(edge_factory, ADMIN_TOKEN=admin, OAUTH_JWT_PRIVATE_KEY_B64=env_key) as stack:
        node_b = stack.node()
        client = register_client(stack.issuer)
        token = stack.tokens(Browser(), client)["access_token"]
        assert kid_of(token) == kid
        claims = jwt.decode(
            token,
            private.public_key(),
            algorithms=["RS256"],
            audience=stack.issuer,
            issuer=stack.issuer,
        )
        assert claims["login"] == "alice"
        # every node signs with that key and publishes it alone
        assert jwks_kids(stack.edge, stack) == jwks_kids(node_b, stack) == [kid]
        assert verify_on(node_b, stack, token) == 200

        # nothing private in Redis: no oauth:keys, and no PEM (nor a line of it) anywhere
        assert not rdb.exists(keys.OAUTH_KEYS)
        body_line = pem.splitlines()[5]
        scanned = 0
        for key in rdb.scan_iter(count=1000):
            for value in stored_values(rdb, key):
                assert b"PRIVATE KEY" not in value, key
                assert body_line not in value, key
                assert env_key[:64].encode() not in value, key
            scanned += 1
        assert scanned > 5  # the client, the token, the session... were looked at

        # rotation refused: the operator rotates this key by changing the setting
        refused = call(stack.edge.api_port, "POST", f"{OA}/keys/rotate", admin)
        assert refused.status == 409, refused.raw
        assert refused.error["code"] == "key_from_environment"
        assert "OAUTH_JWT_PRIVATE_KEY_B64" in refused.error["message"]
        done = cli(stack.edge.api_port, admin, tmp_path, "oauth rotate-key", status=1)
        assert "409 key_from_environment" in done.stderr
        assert jwks_kids(stack.edge, stack) == [kid]
        assert not rdb.exists(keys.OAUTH_KEYS)


# ---------------------------------------------------------------------------- 4. one key


def test_nodes_starting_together_on_an_empty_redis_share_one_generated_key(
    edge_factory: EdgeFactory, rdb: redis.Redis
) -> None:
    assert not rdb.exists(keys.OAUTH_KEYS)
    ports = [free_port(), free_port()]
    issuer = f"http://{AUTH_HOST}:{ports[0]}"
    env = {"AUTH_HOSTNAME": AUTH_HOST, "OAUTH_ISSUER": issuer, "EDGE_WORKERS": "2"}
    nodes = [edge_factory(wait=False, HTTP_PORT=str(port), **env) for port in ports]
    for node, port in zip(nodes, ports, strict=True):
        node.http_port = port
    for node in nodes:
        node.wait_ready()
    stored = stored_keys(rdb)
    assert len(stored) == 1
    (kid,) = stored
    for node in nodes:
        # each worker of each node: its health names the key it signs with...
        active: dict[int, str | None] = {}

        def every_worker_reported(
            node: EdgeProcess = node, active: dict[int, Any] = active
        ) -> bool:
            doc = node.health()
            active[int(doc["worker"])] = doc["oauth"]["keys"]["active_kid"]
            return len(active) == 2

        wait_for(every_worker_reported, timeout=20, interval=0)
        assert active == {0: kid, 1: kid}
        # ...and the JWKS it publishes (request ids start with the worker's own prefix)
        published: dict[str, list[str]] = {}

        def every_worker_published(
            node: EdgeProcess = node, published: dict[str, list[str]] = published
        ) -> bool:
            page: Page = request_via(node.http_port, "GET", f"{issuer}/jwks")
            assert page.status == 200, page.text
            worker = (page.header("x-request-id") or "?")[:8]
            published[worker] = [k["kid"] for k in page.json()["keys"]]
            return len(published) == 2

        wait_for(every_worker_published, timeout=20, interval=0)
        assert list(published.values()) == [[kid], [kid]], published
    # once every worker of both nodes is up: still that one key, generated once
    assert set(stored_keys(rdb)) == {kid}
    generated = sum(n.stderr().count("oauth signing key generated") for n in nodes)
    assert generated == 1


# ---------------------------------------------------------------------------- 5. routes


ROUTE_NAMES = (
    "authorize", "token", "callback", "verify", "register", "jwks", "revoke", "introspect",
    "metadata",
)  # fmt: skip


def test_routes_setup_serves_the_oauth_endpoints_on_a_proxys_host(
    edge_factory: EdgeFactory,
    admin: str,
    rdb: redis.Redis,
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    with oauth_stack(edge_factory, ADMIN_TOKEN=admin) as stack:
        node = stack.edge
        first = cli(node.api_port, admin, tmp_path, "oauth routes-setup")
        assert "9 of 9 OAuth routes created or updated" in first.stdout
        routes = {k: rdb.get(k) for k in rdb.scan_iter(match=keys.ROUTE + "*")}
        assert {keys.route(f"oauth-{name}").encode() for name in ROUTE_NAMES} <= set(routes)
        rdb.set(keys.proxy("app.localhost"), proxy_doc("app.localhost", upstream.url))
        node.wait_generation(lambda h: h["proxies"] >= 1 and h["routes"] >= 9)
        app = f"http://app.localhost:{node.http_port}"

        metadata = request("GET", f"{app}/.well-known/oauth-authorization-server")
        assert metadata.status == 200, metadata.text
        doc = metadata.json()
        assert doc["issuer"] == stack.issuer
        assert doc["token_endpoint"] == f"{stack.issuer}/token"
        jwks = request("GET", f"{app}/jwks")
        assert jwks.status == 200
        assert [k["kid"] for k in jwks.json()["keys"]] == jwks_kids(node, stack)
        client = register_client(stack.issuer)
        anonymous = post_form(f"{app}/token", {"grant_type": "authorization_code"})
        assert anonymous.status == 401, anonymous.text
        assert (anonymous.header("content-type") or "").startswith("application/json")
        assert anonymous.json()["error"] == "invalid_client"
        password = {"grant_type": "password", "username": "x", "client_id": client.client_id}
        bad = post_form(f"{app}/token", password)
        assert bad.status == 400, bad.text
        assert bad.json()["error"] == "unsupported_grant_type"
        # a token from the issuer's host is checked on the proxy's host too
        token = stack.tokens(Browser(), client)["access_token"]
        verified = request("GET", f"{app}/verify", headers=bearer(token))
        assert verified.status == 200 and verified.header("x-auth-user-name") == "alice"
        assert not upstream.requests  # nothing of the above reached the upstream

        # everything else is the proxy's own
        paths = [
            "/",
            "/hello?x=1",
            "/api/jwks",
            "/app/token",
            "/.well-known/other",
            # longer words than the OAuth paths stay the application's
            "/tokens",
            "/registered",
            "/verify-email",
            "/callbacks",
            "/jwks.json",
        ]
        for path in paths:
            page = request("GET", app + path)
            assert page.status == 200, (path, page.text)
            assert page.json()["path"] == path
        assert [r["path"] for r in upstream.requests] == paths

        again = cli(node.api_port, admin, tmp_path, "oauth routes-setup")
        assert again.stdout.endswith("all 9 OAuth routes are in place; nothing changed\n")
        assert {k: rdb.get(k) for k in rdb.scan_iter(match=keys.ROUTE + "*")} == routes


# ---------------------------------------------------------------------------- 6. nginx


NGINX_CONF = """\
worker_processes 1;
{user}
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            auth_request /_auth;
            auth_request_set $user $upstream_http_x_auth_user_name;
            proxy_set_header X-User $user;
            proxy_pass http://127.0.0.1:{upstream};
        }}
        location = /_auth {{
            internal;
            proxy_pass http://127.0.0.1:{edge}/verify;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header Host {auth_host};
        }}
    }}
}}
"""


@contextmanager
def nginx_auth_request(tmp: Path, *, edge_port: int, upstream_port: int) -> Iterator[int]:
    """A real nginx on a free loopback port: ``auth_request`` to the edge's ``/verify`` in
    front of the upstream. Yields its port."""
    binary = require_tool("nginx")
    tmp.mkdir()
    port = free_port()
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            # as root, nginx's workers would run as nobody, who cannot enter the test's
            # temporary directories
            user="user root;" if os.geteuid() == 0 else "",
            tmp=tmp,
            port=port,
            upstream=upstream_port,
            edge=edge_port,
            auth_host=AUTH_HOST,
        )
    )
    log = (tmp / "nginx.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "-p",
            str(tmp),
            "-c",
            str(conf),
            "-e",
            "stderr",
            "-g",
            f"daemon off; pid {tmp}/nginx.pid; error_log stderr;",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited:\n{(tmp / 'nginx.log').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(listening, timeout=10)
        yield port
    finally:
        stop_process(proc, 10)


def test_verify_guards_an_upstream_behind_nginx_auth_request(
    edge_factory: EdgeFactory, upstream: Upstream, tmp_path: Path
) -> None:
    with (
        oauth_stack(edge_factory) as stack,
        nginx_auth_request(
            tmp_path / "nginx", edge_port=stack.edge.http_port, upstream_port=upstream.port
        ) as port,
    ):
        front = f"http://127.0.0.1:{port}"
        client: OAuthClient = register_client(stack.issuer)
        token = stack.tokens(Browser(), client)["access_token"]

        allowed = request("GET", f"{front}/app/data?x=1", headers=bearer(token))
        assert allowed.status == 200, allowed.text
        assert allowed.json()["path"] == "/app/data?x=1"
        seen = dict(upstream.requests[-1]["headers"])
        assert seen["X-User"] == "alice"
        assert len(upstream.requests) == 1

        missing = request("GET", f"{front}/app/data")
        assert missing.status == 401
        challenge = missing.header("www-authenticate") or ""
        assert challenge.startswith("Bearer ") and stack.issuer in challenge, challenge
        garbage = request("GET", f"{front}/app/data", headers=bearer("x.y.z"))
        assert garbage.status == 401
        assert 'error="invalid_token"' in (garbage.header("www-authenticate") or "")

        assert client.revoke(token).status == 200
        wait_for(
            lambda: request("GET", f"{front}/app", headers=bearer(token)).status == 401,
            timeout=PROPAGATION_LIMIT,
        )
        revoked = request("GET", f"{front}/app", headers=bearer(token))
        assert 'error="invalid_token"' in (revoked.header("www-authenticate") or "")
        assert len(upstream.requests) == 1  # nothing refused reached the upstream
