"""A Redis that needs a login: REDIS_PASSWORD and REDIS_USERNAME reach every client the edge
makes (the workers' config watcher, API store and TLS store, the supervisor's seed,
``edge check``, ``edge cert``), and the password appears in no output."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.auth.secrets import new_admin_token
from tests.helpers import (
    EdgeProcess,
    RedisServer,
    Upstream,
    clean_env,
    edge_command,
    free_port,
    http_request,
    proxy_doc,
    wait_for,
)

PASSWORD = "requirepass-Zq8v"  # the default user's (requirepass)
USER, USER_PASSWORD = "edge-app", "acl-user-Kx3w"  # an ACL user's
LOGINS = {
    "requirepass": {"REDIS_PASSWORD": PASSWORD},
    "acl-user": {"REDIS_USERNAME": USER, "REDIS_PASSWORD": USER_PASSWORD},
}


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("locked-redis"), password=PASSWORD)
    server.start()
    # a user that may do what the edge does (keys, keyspace channels, CONFIG SET)
    server.client().execute_command(
        "ACL", "SETUSER", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"
    )
    yield server
    server.stop()


@pytest.fixture
def locked(locked_server: RedisServer) -> RedisServer:
    """The locked redis, empty; ``locked.url`` has no credentials in it."""
    locked_server.client().flushall()
    return locked_server


def run_edge(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = edge_command(*args, env=env, cwd=cwd)
    assert "Traceback" not in done.stdout + done.stderr
    return done


def assert_no_password(text: str) -> None:
    for secret in (PASSWORD, USER_PASSWORD):
        assert secret not in text


def test_the_server_refuses_a_client_without_the_login(locked: RedisServer, tmp_path: Path) -> None:
    """What the tests below rely on: no login, no config."""
    done = run_edge("check", env=clean_env(REDIS_URL=locked.url), cwd=tmp_path)
    assert done.returncode == 1
    # "NOAUTH Authentication required", or HELLO's "... already authenticated" (RESP3)
    assert "authenticat" in done.stdout.lower(), done.stdout


@pytest.mark.parametrize("login", list(LOGINS))
def test_edge_serves_config_from_a_redis_that_needs_a_login(
    locked: RedisServer, upstream: Upstream, tmp_path: Path, login: str
) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            {"keys": {"proxy:seeded.test": json.loads(proxy_doc("seeded.test", upstream.url))}}
        )
    )
    edge = EdgeProcess(
        locked.url,
        tmp_path,
        LOG_LEVEL="DEBUG",
        CONFIG_RESYNC_INTERVAL=30,
        ADMIN_TOKEN=new_admin_token(),  # stored by the API's own client
        HTTPS_PORT=free_port(),  # the TLS store loads (and stores) the default certificate
        **LOGINS[login],
    )
    try:
        edge.start("--seed", str(seed))  # the supervisor's client writes the seed
        r = locked.client()
        assert r.get("proxy:seeded.test") is not None
        edge.wait_generation(lambda h: h["proxies"] == 1 and h["redis"]["connected"])
        # a change arrives as a keyspace notification on the watcher's logged-in connection
        r.set("proxy:live.test", proxy_doc("live.test", upstream.url))
        edge.wait_generation(lambda h: h["proxies"] == 2)
        for host in ("seeded.test", "live.test"):
            request = f"GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            answer = http_request(edge.http_port, request.encode())
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        wait_for(lambda: r.exists("token:admin", "edge:tls:default") == 2)
        users = {c["user"] for c in r.client_list() if c["id"] != str(r.client_id())}
        assert users == ({USER} if login == "acl-user" else {"default"}), users
    finally:
        edge.stop(timeout=10)
    edge.check_errors()
    output = edge.stdout() + edge.stderr()
    assert '"config applied"' in output
    assert_no_password(output)


@pytest.mark.parametrize("login", list(LOGINS))
def test_check_and_cert_log_in_with_the_settings(
    locked: RedisServer, tmp_path: Path, login: str
) -> None:
    locked.client().set("proxy:app.test", proxy_doc("app.test", "http://127.0.0.1:8080"))
    env = clean_env(REDIS_URL=locked.url, **LOGINS[login])
    done = run_edge("check", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 config keys checked, 0 problem(s)" in done.stdout
    done = run_edge("cert", "list", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no certificates" in done.stdout
    assert_no_password(done.stdout + done.stderr)


def test_credentials_from_an_env_file(locked: RedisServer, tmp_path: Path) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text(f"REDIS_URL={locked.url}\nREDIS_PASSWORD='{PASSWORD}'\n")
    for command in (("check",), ("cert", "list")):
        done = run_edge(*command, "--env-file", str(env_file), env=clean_env(), cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert_no_password(done.stdout + done.stderr)


def test_a_wrong_password_is_an_error_that_does_not_show_it(
    locked: RedisServer, tmp_path: Path
) -> None:
    wrong = "wrong-Pw-7731"
    env = clean_env(REDIS_URL=locked.url, REDIS_USERNAME=USER, REDIS_PASSWORD=wrong)
    done = run_edge("check", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert f"error: redis at {locked.url}:" in done.stdout
    done2 = run_edge("cert", "list", env=env, cwd=tmp_path)
    assert done2.returncode == 1 and done2.stderr.startswith(f"edge cert: redis at {locked.url}")
    for text in (done.stdout + done.stderr, done2.stdout + done2.stderr):
        assert wrong not in text
        assert_no_password(text)


@pytest.mark.parametrize(
    ("url", "extra", "name"),
    [
        ("redis://:{pw}@127.0.0.1:{port}/0", {"REDIS_PASSWORD": PASSWORD}, "REDIS_PASSWORD"),
        (
            "redis://127.0.0.1:{port}/0?password={pw}",
            {"REDIS_PASSWORD": PASSWORD},
            "REDIS_PASSWORD",
        ),
        ("redis://other@127.0.0.1:{port}/0", {"REDIS_USERNAME": USER}, "REDIS_USERNAME"),
    ],
)
def test_credentials_in_both_places_stop_every_command_at_start_up(
    locked: RedisServer, tmp_path: Path, url: str, extra: dict[str, str], name: str
) -> None:
    env = clean_env(REDIS_URL=url.format(pw=PASSWORD, port=locked.port), **extra)
    for command in (("serve",), ("check",), ("cert", "list")):
        done = run_edge(*command, env=env, cwd=tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert name in done.stderr and "REDIS_URL" in done.stderr and "one place" in done.stderr
        assert done.stderr.count("\n") == 1
        assert_no_password(done.stdout + done.stderr)


def test_credentials_without_redis_url_stop_serve(tmp_path: Path) -> None:
    env = clean_env(REDIS_PASSWORD=PASSWORD, EDGE_STATE_DIR=str(tmp_path / "state"))
    done = run_edge("serve", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "REDIS_PASSWORD is set but REDIS_URL is not" in done.stderr
    assert_no_password(done.stdout + done.stderr)
    assert not (tmp_path / "state").exists()  # no embedded redis was started
