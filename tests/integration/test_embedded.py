"""Embedded mode: no REDIS_URL, a private redis-server child with its data in the state dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from edge.settings import ENV_NAMES
from tests.helpers import ROOT, EdgeProcess, Upstream, alive, child_pids, require_tool, wait_for


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # a short path: a unix socket path must fit in 108 bytes
    path = Path(tempfile.mkdtemp(prefix="edge-emb-", dir="/tmp"))
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def named_upstream(name: str) -> Upstream:
    def answer(req: BaseHTTPRequestHandler) -> tuple[int, list[tuple[str, str]], bytes]:
        return 200, [("Content-Type", "text/plain")], f"{name} {req.path}".encode()

    return Upstream(answer)


@pytest.fixture
def upstream_a() -> Iterator[Upstream]:
    server = named_upstream("A")
    yield server
    server.close()


@pytest.fixture
def upstream_b() -> Iterator[Upstream]:
    server = named_upstream("B")
    yield server
    server.close()


def proxy_value(host: str, target: str) -> dict[str, str]:
    return {"hostname": host, "target_url": target}


def write_seed(path: Path, keys: dict[str, object]) -> Path:
    path.write_text(json.dumps({"keys": keys}), encoding="utf-8")
    return path


def fetch(edge: EdgeProcess, host: str, path: str = "/") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{edge.http_port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def redis_children(supervisor: int) -> list[int]:
    return sorted(child_pids(supervisor, lambda argv: b"redis-server" in argv[0]))


def redis_cli(sock: Path, *args: str) -> str:
    cli = require_tool("redis-cli")
    done = subprocess.run(
        [cli, "-s", str(sock), *args], capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout.strip()


def seeded_counts(edge: EdgeProcess) -> list[int]:
    lines = [json.loads(line) for line in edge.stderr().splitlines() if line.startswith("{")]
    return [int(entry["written"]) for entry in lines if entry["message"] == "seeded"]


def start_embedded(
    edge_factory: Callable[..., EdgeProcess], state: Path, seed: Path, **env: str
) -> EdgeProcess:
    require_tool("redis-server")
    return edge_factory("--seed", str(seed), redis_url=None, EDGE_STATE_DIR=str(state), **env)


def test_embedded_redis_serves_seed_and_applies_live_changes(
    edge_factory: Callable[..., EdgeProcess],
    state_dir: Path,
    tmp_path: Path,
    upstream_a: Upstream,
    upstream_b: Upstream,
) -> None:
    seed = write_seed(
        tmp_path / "seed.json", {"proxy:app.test": proxy_value("app.test", upstream_a.url)}
    )
    edge = start_embedded(edge_factory, state_dir, seed)
    assert edge.proc is not None
    sock = state_dir / "redis.sock"
    assert sock.exists()
    children = wait_for(lambda: redis_children(edge.proc.pid))
    assert len(children) == 1
    redis_pid = children[0]
    edge.wait_generation(lambda h: h["proxies"] == 1 and h["redis"]["connected"])
    assert fetch(edge, "app.test", "/x") == (200, "A /x")
    assert redis_cli(sock, "PING") == "PONG"

    # live changes through the socket: a new proxy, then a changed one
    redis_cli(sock, "SET", "proxy:new.test", json.dumps(proxy_value("new.test", upstream_b.url)))
    wait_for(lambda: fetch(edge, "new.test", "/y") == (200, "B /y"), timeout=5)
    redis_cli(sock, "SET", "proxy:app.test", json.dumps(proxy_value("app.test", upstream_b.url)))
    wait_for(lambda: fetch(edge, "app.test", "/z") == (200, "B /z"), timeout=5)
    redis_cli(sock, "DEL", "proxy:new.test")
    wait_for(lambda: fetch(edge, "new.test")[0] == 404, timeout=5)

    # edge check finds the embedded server through the state dir while it runs
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    env.update(PYTHONPATH=str(ROOT), EDGE_STATE_DIR=str(state_dir))
    done = subprocess.run(
        [sys.executable, "-m", "edge", "check"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 config keys checked, 0 problem(s)" in done.stdout

    edge.signal(signal.SIGTERM)
    assert edge.proc.wait(timeout=20) == 0
    assert not alive(redis_pid)
    assert not sock.exists()
    # the data lives in the state dir
    assert any(p.name.startswith("edge.aof") for p in state_dir.rglob("*"))


def test_restart_keeps_data_and_seed_never_overwrites(
    edge_factory: Callable[..., EdgeProcess],
    state_dir: Path,
    tmp_path: Path,
    upstream_a: Upstream,
    upstream_b: Upstream,
) -> None:
    seed = write_seed(
        tmp_path / "seed.json",
        {
            "proxy:app.test": proxy_value("app.test", upstream_a.url),
            "service:url:billing": upstream_a.url,
        },
    )
    first = start_embedded(edge_factory, state_dir, seed)
    assert first.proc is not None
    first.wait_generation(lambda h: h["proxies"] == 1)
    assert fetch(first, "app.test") == (200, "A /")
    sock = state_dir / "redis.sock"
    redis_cli(sock, "SET", "proxy:app.test", json.dumps(proxy_value("app.test", upstream_b.url)))
    redis_cli(sock, "SET", "proxy:kept.test", json.dumps(proxy_value("kept.test", upstream_b.url)))
    redis_cli(sock, "DEL", "service:url:billing")
    wait_for(lambda: fetch(first, "app.test") == (200, "B /"), timeout=5)
    assert first.stop() == 0
    assert seeded_counts(first) == [2]

    second = start_embedded(edge_factory, state_dir, seed)
    assert second.proc is not None
    second.wait_generation(lambda h: h["proxies"] == 2)
    # the edited key survived the restart and the seed did not put the old value back
    assert fetch(second, "app.test", "/again") == (200, "B /again")
    assert fetch(second, "kept.test", "/k") == (200, "B /k")
    # a seeded key deleted since is missing again, so SET NX creates it
    assert redis_cli(sock, "GET", "service:url:billing") == upstream_a.url
    assert seeded_counts(second) == [1]


def test_killed_supervisor_takes_redis_down_and_a_restart_recovers(
    edge_factory: Callable[..., EdgeProcess],
    state_dir: Path,
    tmp_path: Path,
    upstream_a: Upstream,
) -> None:
    seed = write_seed(
        tmp_path / "seed.json", {"proxy:app.test": proxy_value("app.test", upstream_a.url)}
    )
    first = start_embedded(edge_factory, state_dir, seed)
    assert first.proc is not None
    redis_pid = wait_for(lambda: redis_children(first.proc.pid))[0]
    first.proc.kill()
    first.proc.wait(timeout=5)
    wait_for(lambda: not alive(redis_pid), timeout=10)
    second = start_embedded(edge_factory, state_dir, seed)
    second.wait_generation(lambda h: h["proxies"] == 1 and h["redis"]["connected"])
    assert fetch(second, "app.test", "/back") == (200, "A /back")


def test_second_edge_on_the_same_state_dir_is_refused(
    edge_factory: Callable[..., EdgeProcess], state_dir: Path, tmp_path: Path
) -> None:
    seed = write_seed(tmp_path / "seed.json", {})
    first = start_embedded(edge_factory, state_dir, seed)
    assert first.proc is not None
    second = edge_factory(redis_url=None, wait=False, EDGE_STATE_DIR=str(state_dir))
    assert second.proc is not None
    assert second.proc.wait(timeout=20) != 0
    assert "already running" in second.stderr()
    assert "Traceback" not in second.stderr()
    # the first one is unharmed
    assert first.health()["redis"]["connected"]
    assert (state_dir / "redis.sock").exists()


def test_unwritable_state_dir_is_a_clear_error(
    edge_factory: Callable[..., EdgeProcess], tmp_path: Path
) -> None:
    require_tool("redis-server")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    edge = edge_factory(redis_url=None, wait=False, EDGE_STATE_DIR=str(blocker / "state"))
    assert edge.proc is not None
    code = edge.proc.wait(timeout=20)
    assert code != 0
    err = edge.stderr()
    assert "EDGE_STATE_DIR" in err and str(blocker / "state") in err
    assert "Traceback" not in err
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{edge.api_port}/health", timeout=2)
