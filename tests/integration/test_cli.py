"""The command line: ``edge serve`` start-up errors, ``--env-file``, and ``edge check``."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    EdgeProcess,
    RedisServer,
    clean_env,
    edge_command,
    free_port,
    proxy_doc,
    route_doc,
)

SECRET = "hunter2"


def run_edge(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 30.0
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = edge_command(*args, env=env, cwd=cwd, timeout=timeout)
    return done, time.monotonic() - started


def assert_no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr


# ---------------------------------------------------------------- serve start-up errors


def test_serve_rejects_invalid_setting_quickly(tmp_path: Path) -> None:
    done, took = run_edge("serve", env=clean_env(HTTP_PORT="abc"), cwd=tmp_path)
    assert done.returncode != 0
    assert took < 10
    assert "HTTP_PORT" in done.stderr
    assert done.stderr.count("\n") == 1  # one line
    assert_no_traceback(done)


@pytest.mark.parametrize(
    ("name", "value"),
    [("DRAIN_TIMEOUT", "-1"), ("LOG_LEVEL", "chatty"), ("EDGE_WORKERS", "0")],
)
def test_serve_rejects_other_invalid_settings(tmp_path: Path, name: str, value: str) -> None:
    done, _ = run_edge("serve", env=clean_env(**{name: value}), cwd=tmp_path)
    assert done.returncode != 0
    assert name in done.stderr
    assert_no_traceback(done)


def test_invalid_redis_url_error_does_not_print_the_password(tmp_path: Path) -> None:
    env = clean_env(REDIS_URL=f"http://admin:{SECRET}@127.0.0.1:6379/0")
    for command in ("serve", "check"):
        done, _ = run_edge(command, env=env, cwd=tmp_path)
        assert done.returncode != 0
        assert "REDIS_URL" in done.stderr
        assert SECRET not in done.stdout + done.stderr


def test_serve_missing_env_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "edge.env"
    done, took = run_edge("serve", "--env-file", str(missing), env=clean_env(), cwd=tmp_path)
    assert done.returncode != 0
    assert took < 10
    assert str(missing) in done.stderr
    assert "No such file" in done.stderr
    assert_no_traceback(done)


def test_serve_env_file_bad_line_names_the_line(tmp_path: Path) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text("# settings\nLOG_LEVEL=INFO\nnot an assignment\n", encoding="utf-8")
    done, _ = run_edge("serve", "--env-file", str(env_file), env=clean_env(), cwd=tmp_path)
    assert done.returncode != 0
    assert f"{env_file}:3" in done.stderr
    assert_no_traceback(done)


def test_serve_invalid_value_from_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "edge.env"
    env_file.write_text("KEEPALIVE_TIMEOUT=forever\n", encoding="utf-8")
    done, _ = run_edge("serve", "--env-file", str(env_file), env=clean_env(), cwd=tmp_path)
    assert done.returncode != 0
    assert "KEEPALIVE_TIMEOUT" in done.stderr
    assert_no_traceback(done)


@pytest.mark.parametrize("workers", ["0", "-2", "many"])
def test_serve_rejects_bad_workers_option(tmp_path: Path, workers: str) -> None:
    done, took = run_edge("serve", "--workers", workers, env=clean_env(), cwd=tmp_path)
    assert done.returncode != 0
    assert took < 10
    assert "--workers" in done.stderr
    assert_no_traceback(done)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "No such file"),
        ('{"keys": ', "invalid JSON"),
        ('["proxy:a.test"]', "expected a JSON object"),
    ],
)
def test_serve_bad_seed_file_is_a_clear_error(
    tmp_path: Path, redis_db: RedisServer, content: str | None, expected: str
) -> None:
    seed = tmp_path / "seed.json"
    if content is not None:
        seed.write_text(content, encoding="utf-8")
    env = clean_env(REDIS_URL=redis_db.url)
    done, _ = run_edge("serve", "--seed", str(seed), env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert str(seed) in done.stderr and expected in done.stderr
    assert_no_traceback(done)


@pytest.mark.parametrize("taken", ["HTTP_PORT", "API_PORT"])
def test_serve_port_in_use_stops_with_an_error(
    tmp_path: Path, redis_db: RedisServer, taken: str
) -> None:
    with socket.socket() as blocker:  # a listener without SO_REUSEPORT owns the port
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = clean_env(REDIS_URL=redis_db.url, EDGE_WORKERS="2", **{taken: str(port)})
        done, took = run_edge("serve", env=env, cwd=tmp_path)
    assert done.returncode != 0
    assert took < 20
    assert_no_traceback(done)
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    cannot = [r for r in records if r["message"] == "cannot listen"]
    assert cannot and cannot[0]["level"] == "critical"
    assert cannot[0]["address"] == f"127.0.0.1:{port}"
    assert cannot[0]["setting"] == taken
    assert "Address already in use" in cannot[0]["error"]
    assert not any(r["message"] == "worker exited; restarting" for r in records)


def test_serve_reads_env_file_and_real_environment_wins(
    edge_factory: Callable[..., EdgeProcess], tmp_path: Path, redis_db: RedisServer
) -> None:
    file_port = free_port()
    env_file = tmp_path / "edge.env"
    env_file.write_text(
        f"# deployment settings\nexport HTTP_PORT={file_port}\nAPI_HOSTNAME='edge-api.test'\n",
        encoding="utf-8",
    )
    edge = edge_factory("--env-file", str(env_file))
    # HTTP_PORT comes from the real environment (the harness sets it), not the file
    req = urllib.request.Request(
        f"http://127.0.0.1:{edge.http_port}/health", headers={"Host": "edge-api.test"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["status"] in ("ok", "degraded")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{file_port}/health", timeout=2)


# ---------------------------------------------------------------- edge check


def test_check_clean_config_exits_zero(tmp_path: Path, redis_db: RedisServer) -> None:
    client = redis_db.client()
    client.set("proxy:app.test", proxy_doc("app.test", "http://127.0.0.1:8080"))
    client.set("route:api", route_doc("api", "/api", "port", "9000"))
    client.set("service:url:billing", "http://10.0.0.12:8000")
    client.set("unrelated:key", "whatever")
    done, _ = run_edge("check", env=clean_env(REDIS_URL=redis_db.url), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "settings: ok" in done.stdout
    assert "3 config keys checked, 0 problem(s)" in done.stdout
    assert "error" not in done.stdout.lower()


def test_check_reports_one_line_per_problem(tmp_path: Path, redis_db: RedisServer) -> None:
    client = redis_db.client()
    client.set("proxy:good.test", proxy_doc("good.test", "http://127.0.0.1:8080"))
    client.set(
        "proxy:typo.test",
        json.dumps({"hostname": "typo.test", "tagret_url": "http://127.0.0.1:1"}),
    )
    client.set("proxy:ftp.test", proxy_doc("ftp.test", "ftp://files.test"))
    client.set("service:url:broken", "not a url")
    client.rpush("proxy:list.test", "a", "b")
    done, _ = run_edge("check", env=clean_env(REDIS_URL=redis_db.url), cwd=tmp_path)
    assert done.returncode != 0
    assert_no_traceback(done)
    errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 5, done.stdout
    by_key = {line.split()[1].rstrip(":"): line for line in errors}
    assert set(by_key) == {
        "proxy:typo.test",
        "proxy:ftp.test",
        "service:url:broken",
        "proxy:list.test",
    }
    # every problem of a document, one a line: the typo is an unknown field and leaves the
    # required one missing
    assert [line for line in errors if "proxy:typo.test" in line] == [
        "error: proxy:typo.test: field 'tagret_url': unknown field 'tagret_url'",
        "error: proxy:typo.test: field 'target_url': required field is missing",
    ]
    assert "field 'target_url'" in by_key["proxy:ftp.test"]
    assert "ftp://files.test" in by_key["proxy:ftp.test"]
    assert "list" in by_key["proxy:list.test"] and "string" in by_key["proxy:list.test"]
    assert "5 config keys checked, 5 problem(s)" in done.stdout


def test_check_unreachable_redis_is_one_line_without_password(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    for url in (
        f"redis://admin:{SECRET}@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password={SECRET}",
    ):
        done, took = run_edge("check", env=clean_env(REDIS_URL=url), cwd=tmp_path)
        assert done.returncode != 0
        assert took < 20
        assert_no_traceback(done)
        errors = [line for line in done.stdout.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, done.stdout
        assert f"127.0.0.1:{port}" in errors[0]
        assert SECRET not in done.stdout + done.stderr


def test_check_wrong_password_does_not_print_it(tmp_path: Path, redis_db: RedisServer) -> None:
    url = f"redis://nobody:{SECRET}@127.0.0.1:{redis_db.port}/0"
    done, _ = run_edge("check", env=clean_env(REDIS_URL=url), cwd=tmp_path)
    # the test server has no user "nobody": AUTH fails, and that is a check failure
    assert done.returncode != 0
    assert_no_traceback(done)
    assert SECRET not in done.stdout + done.stderr
    assert "***" in done.stdout


def test_check_invalid_setting_exits_nonzero(tmp_path: Path) -> None:
    done, _ = run_edge("check", env=clean_env(MAX_HEADER_COUNT="0"), cwd=tmp_path)
    assert done.returncode != 0
    assert "MAX_HEADER_COUNT" in done.stderr
    assert_no_traceback(done)


def test_check_reads_env_file(tmp_path: Path, redis_db: RedisServer) -> None:
    redis_db.client().set("route:x", "{not json")
    env_file = tmp_path / "edge.env"
    env_file.write_text(f'REDIS_URL="{redis_db.url}"\n', encoding="utf-8")
    done, _ = run_edge("check", "--env-file", str(env_file), env=clean_env(), cwd=tmp_path)
    assert done.returncode != 0
    assert "error: route:x: invalid JSON" in done.stdout
    redis_db.client().delete("route:x")
    done, _ = run_edge("check", "--env-file", str(env_file), env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0, done.stdout
    missing = tmp_path / "missing.env"
    done, _ = run_edge("check", "--env-file", str(missing), env=clean_env(), cwd=tmp_path)
    assert done.returncode != 0
    assert str(missing) in done.stderr


def test_check_embedded_mode_not_running_validates_settings_only(tmp_path: Path) -> None:
    env = clean_env(EDGE_STATE_DIR=str(tmp_path / "state"))
    done, _ = run_edge("check", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded" in done.stdout and "not running" in done.stdout


def test_version_and_usage(tmp_path: Path) -> None:
    done, _ = run_edge("--version", env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("edge ")
    done, _ = run_edge(env=clean_env(), cwd=tmp_path)
    assert done.returncode != 0 and "usage" in done.stderr


def test_help_lists_every_command_but_the_internal_worker(tmp_path: Path) -> None:
    done, _ = run_edge("--help", env=clean_env(), cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: edge [-h] [--version] COMMAND ...")
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("    ")]
    assert listed[:3] == ["serve", "check", "cert"] and "pat" in listed
    assert "worker" not in listed and "SUPPRESS" not in done.stdout
