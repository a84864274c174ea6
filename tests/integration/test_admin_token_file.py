"""The admin token of an embedded edge out of the box: created on the first start, shown
once on the terminal (never in a log), saved 0600 in the state directory, picked up by
``edge login``, replaced by ``edge admin-token rotate``; and ``edge redis-cli``."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.admin_cli import connection_args
from tests.helpers import (
    PtyCapture,
    RedisServer,
    clean_env,
    free_port,
    require_tool,
    stop_process,
    wait_for,
)

TOKEN = re.compile(r"edge_[1-9A-HJ-NP-Za-km-z]{44}")


class Serve:
    """``edge serve`` in embedded mode, its stderr on a pseudo-terminal (``tty=True``) or
    on a file, with no controlling terminal either way."""

    def __init__(self, workdir: Path, state: Path, tty: bool, **env: str) -> None:
        self.api_port = free_port()
        self.env = clean_env(
            API_PORT=str(self.api_port),
            EDGE_STATE_DIR=str(state),
            HTTPS_PORT="0",
            PROXY_PROTOCOL_PORT="0",
            PROXY_PROTOCOL_TLS_PORT="0",
            LOG_FORMAT="json",
            **env,
        )
        self.env.pop("REDIS_URL", None)
        self.out = workdir / f"serve-{self.api_port}.out"
        self.err = workdir / f"serve-{self.api_port}.err"
        self.pty = PtyCapture() if tty else None
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edge", "serve"],
                env=self.env,
                cwd=str(workdir),
                stdout=out,
                stderr=self.pty.follower if self.pty is not None else err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # no controlling terminal: /dev/tty fails
            )
        if self.pty is not None:
            self.pty.start()

    @property
    def terminal(self) -> bytes:
        """What the edge wrote on its terminal (nothing without one)."""
        return self.pty.data if self.pty is not None else b""

    def ready(self) -> Serve:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge exited: {self.terminal!r} {self.err.read_text()}")
            try:
                with urllib.request.urlopen(self.url("/health"), timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(up, timeout=30, interval=0.1)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def status(self, token: str) -> int:
        req = urllib.request.Request(
            self.url("/api/v1/tokens/info"), headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def stop(self) -> None:
        assert stop_process(self.proc, 20) == 0


@pytest.fixture
def state() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="edge-tok-", dir="/tmp"))  # a short socket path
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def edge(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_first_start_shows_the_token_once_and_saves_it_for_login(
    tmp_path: Path, state: Path
) -> None:
    require_tool("redis-server")
    first = Serve(tmp_path, state, tty=True).ready()
    wait_for(lambda: b"edge login" in first.terminal, timeout=10)
    shown = TOKEN.findall(first.terminal.decode())
    assert len(shown) == 1, first.terminal
    token = shown[0]
    path = state / "admin-token"
    assert path.read_text().strip() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    wait_for(lambda: first.status(token) == 200, timeout=10)
    # the JSON log on the same terminal, and the access log, never carry it
    logs = [line for line in first.terminal.decode().splitlines() if line.startswith("{")]
    assert any('"admin token created"' in line for line in logs)
    assert not any(token in line for line in logs)
    first.stop()
    assert token not in first.out.read_text()
    # Redis holds its hash only
    dump = b"".join(p.read_bytes() for p in state.rglob("*.aof*") if p.is_file())
    assert token.encode() not in dump
    assert hashlib.sha256(token.encode()).hexdigest().encode() in dump

    # the next start shows nothing and keeps the token
    second = Serve(tmp_path, state, tty=True).ready()
    wait_for(lambda: b"admin token from the state directory" in second.terminal, timeout=10)
    assert TOKEN.search(second.terminal.decode()) is None
    assert second.status(token) == 200

    # edge login finds it (EDGE_STATE_DIR) and saves it in the profile
    env = clean_env(
        EDGE_STATE_DIR=str(state),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        API_URL=second.url(""),
    )
    done = edge("login", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(path) in done.stdout and "as token 'admin'" in done.stdout
    assert token not in done.stdout + done.stderr
    assert token in (tmp_path / "config" / "edge" / "config.toml").read_text()
    listed = edge("token", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "admin" in listed.stdout, listed.stderr
    second.stop()


def test_no_terminal_no_token_shown_and_rotation_refuses_the_old_one(
    tmp_path: Path, state: Path
) -> None:
    require_tool("redis-server")
    serve = Serve(tmp_path, state, tty=False).ready()
    path = state / "admin-token"
    old = path.read_text().strip()
    wait_for(lambda: serve.status(old) == 200, timeout=10)
    assert old not in serve.err.read_text()
    assert '"shown_on_terminal": false' in serve.err.read_text().replace('":false', '": false')

    env = clean_env(EDGE_STATE_DIR=str(state))
    done = edge("admin-token", "rotate", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    new = done.stdout.strip()
    assert TOKEN.fullmatch(new) and new != old
    assert path.read_text().strip() == new
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert serve.status(old) == 401
    assert serve.status(new) == 200

    # the record gone (a flush): the workers store the token of the file again, the new one
    cli = edge("redis-cli", "DEL", "token:admin", env=env, cwd=tmp_path)
    assert cli.returncode == 0 and cli.stdout.strip() == "1", cli.stderr
    assert serve.status(new) == 401
    wait_for(lambda: serve.status(new) == 200, timeout=15, interval=0.2)
    assert serve.status(old) == 401
    serve.stop()
    assert new not in serve.err.read_text() + serve.out.read_text()


def test_rotate_refuses_when_admin_token_is_set(tmp_path: Path, state: Path) -> None:
    state.mkdir(parents=True)
    env = clean_env(EDGE_STATE_DIR=str(state), ADMIN_TOKEN="x" * 40)
    done = edge("admin-token", "rotate", env=env, cwd=tmp_path)
    assert done.returncode == 2 and "ADMIN_TOKEN is set" in done.stderr
    assert not (state / "admin-token").exists()


def test_with_admin_token_no_file_is_created(tmp_path: Path, state: Path) -> None:
    require_tool("redis-server")
    from edge.auth.secrets import new_admin_token

    admin = new_admin_token()
    serve = Serve(tmp_path, state, tty=True, ADMIN_TOKEN=admin).ready()
    wait_for(lambda: serve.status(admin) == 200, timeout=10)
    assert not (state / "admin-token").exists()
    assert TOKEN.search(serve.terminal.decode()) is None
    serve.stop()


def test_redis_cli_reaches_the_embedded_redis(tmp_path: Path, state: Path) -> None:
    require_tool("redis-cli")
    serve = Serve(tmp_path, state, tty=False).ready()
    env_file = tmp_path / "edge.env"
    env_file.write_text(f"EDGE_STATE_DIR={state}\n")
    env = clean_env()
    done = edge(
        "redis-cli", "--env-file", str(env_file), "SET", "edge-test", "1", env=env, cwd=tmp_path
    )
    assert (done.returncode, done.stdout.strip()) == (0, "OK"), done.stderr
    done = edge(
        "redis-cli",
        "--env-file",
        str(env_file),
        "-n",
        "0",
        "GET",
        "edge-test",
        env=env,
        cwd=tmp_path,
    )
    assert done.stdout.strip() == "1"
    serve.stop()
    done = edge("redis-cli", "--env-file", str(env_file), "PING", env=env, cwd=tmp_path)
    assert done.returncode == 1 and "is the edge running?" in done.stderr


@pytest.mark.parametrize("where", ["REDIS_PASSWORD", "REDIS_URL"])
def test_redis_cli_logs_in_to_redis_url_without_the_password_in_argv(
    tmp_path: Path, where: str
) -> None:
    require_tool("redis-cli")
    password = "s3cret:pass@word"
    server = RedisServer(tmp_path, password=password)
    server.start()
    try:
        quoted = urllib.parse.quote(password, safe="")
        if where == "REDIS_URL":
            env = clean_env(REDIS_URL=f"redis://:{quoted}@127.0.0.1:{server.port}/0")
        else:
            env = clean_env(REDIS_URL=server.url, REDIS_PASSWORD=password)
        done = edge("redis-cli", "SET", "edge-test", "2", env=env, cwd=tmp_path)
        assert (done.returncode, done.stdout.strip()) == (0, "OK"), done.stderr
        assert server.client().get("edge-test") == b"2"
        # while it runs, its command line holds no password
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "redis-cli", "SUBSCRIBE", "edge-test"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: server.client().pubsub_numsub("edge-test")[0][1] == 1, timeout=10)
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            assert argv[0].endswith(b"redis-cli")
            assert not any(password.encode() in a or quoted.encode() in a for a in argv)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    finally:
        server.stop()


def test_connection_args() -> None:
    assert connection_args("unix:///run/edge/redis.sock", None, None) == (
        ["-s", "/run/edge/redis.sock"],
        {},
    )
    assert connection_args("rediss://u:p%40ss@h:6380/2", None, None) == (
        ["-h", "h", "-p", "6380", "--tls", "-n", "2", "--user", "u"],
        {"REDISCLI_AUTH": "p@ss"},
    )
    assert connection_args("redis://h", "alice", "pw") == (
        ["-h", "h", "-p", "6379", "--user", "alice"],
        {"REDISCLI_AUTH": "pw"},
    )
