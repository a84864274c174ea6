"""The ``edge`` command line as a new operator meets it: version, completion, global flags,
``update`` with a flag that turns something off, ``check``, ``reverse-proxy``; each against a
real edge or a real embedded Redis, as a subprocess."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import trustme
from cryptography import x509

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
from tests.integration.test_client_cli import as_json, cli, cli_env, env, home, ok, url

__all__ = ["env", "home"]  # the fixtures, shared with the client tests


def test_update_with_only_a_false_flag_changes_it(api: EdgeProcess, env: dict[str, str]) -> None:
    ok(cli("proxy create app.test --target http://127.0.0.1:1", env=env))
    for flag, field in (
        ("--disable", "enabled"),
        ("--no-http", "enable_http"),
        ("--no-https", "enable_https"),
        ("--no-preserve-host", "preserve_host_header"),
    ):
        if flag == "--no-preserve-host":
            ok(cli("proxy update app.test --preserve-host", env=env))
        doc = as_json(cli(f"proxy update app.test {flag} -o json", env=env))
        assert doc[field] is False, (flag, doc)
    ok(cli("route create r1 --path /a --target-type port --target 9001 --regex", env=env))
    assert as_json(cli("route update r1 --disable -o json", env=env))["enabled"] is False
    assert as_json(cli("route update r1 --no-regex -o json", env=env))["is_regex"] is False
    assert as_json(cli("route update r1 --enable --regex -o json", env=env))["enabled"] is True


def test_global_options_before_the_command_group(api: EdgeProcess, admin: str, home: Path) -> None:
    bare = cli_env(home)  # no API_URL nor TOKEN: only the options say where
    ok(
        cli(
            "proxy create app.test --target http://127.0.0.1:1",
            env={**bare, "API_URL": url(api), "TOKEN": admin},
        )
    )
    before = as_json(cli(f"--api-url {url(api)} --token {admin} -o json proxy list", env=bare))
    after = as_json(cli(f"proxy list --api-url {url(api)} --token {admin} --format json", env=bare))
    assert before == after and [p["hostname"] for p in before] == ["app.test"]
    slow = cli(f"--timeout 0 --api-url {url(api)} proxy list", env=bare)
    assert slow.returncode == 2 and "--timeout" in slow.stderr


def test_service_list_shows_the_url_services_routes_use(
    api: EdgeProcess, env: dict[str, str], rdb: redis.Redis
) -> None:
    rdb.set("service:url:legacy", "http://127.0.0.1:9001")
    rdb.set("service:url:bad", "not a url")
    ok(cli("service create billing --url https://billing.internal:8443", env=env))
    listed = {s["service_name"]: s for s in as_json(cli("service list -o json", env=env))}
    assert set(listed) == {"billing", "legacy"}  # billing's own url key is not listed twice
    assert listed["legacy"]["target_url"] == "http://127.0.0.1:9001"
    assert (listed["legacy"]["service_type"], listed["billing"]["service_type"]) == (
        "url",
        "external",
    )
    table = ok(cli("service list", env=env))
    assert re.search(r"^legacy +http://127\.0\.0\.1:9001 +url", table, re.M), table


# ---------------------------------------------------------------------------- reverse-proxy


def reverse_proxy(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    env = clean_env(REDIS_URL="redis://127.0.0.1:1", EDGE_STATE_DIR="/nonexistent")
    err = (tmp_path / "rp.err").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge", "reverse-proxy", *args],
        env=env,  # REDIS_URL and EDGE_STATE_DIR are for 'edge serve': ignored here
        stdout=subprocess.DEVNULL,
        stderr=err,
        cwd=str(tmp_path),
    )
    err.close()
    return proc


def state_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("edge-rp-*")}


def test_reverse_proxy_serves_one_host_with_nothing_set_up(
    tmp_path: Path, upstream: Upstream
) -> None:
    port = free_port()
    before = state_dirs()
    proc = reverse_proxy(
        tmp_path, "--from", f"app.test:{port}", "--to", upstream.url, "--bind", "127.0.0.1"
    )
    try:
        raw = b"GET /hello HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"

        def status(host: bytes = b"app.test") -> int:
            answer = http_request(port, raw.replace(b"app.test", host), read_until_close=True)
            return int(answer.split(b" ", 2)[1])

        wait_for(lambda: status() == 200, timeout=20)
        assert upstream.requests[-1]["path"] == "/hello"
        assert status(b"other.test") == 404
        assert len(state_dirs() - before) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert state_dirs() - before == set()  # its state directory went with it
    assert "http://app.test:" in (tmp_path / "rp.err").read_text()


def tls_peer(port: int, host: str, cafile: str | None = None) -> x509.Certificate:
    context = ssl.create_default_context(cafile=cafile)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


@pytest.mark.parametrize("imported", [False, True], ids=["self-signed", "imported"])
def test_reverse_proxy_https(
    tmp_path: Path, upstream: Upstream, ca: trustme.CA, imported: bool
) -> None:
    port, http_port = free_port(), free_port()
    args = ["--from", f"app.test:{port}", "--to", upstream.url, "--https", "--bind", "127.0.0.1"]
    args += ["--http-port", str(http_port)]
    cafile = None
    if imported:
        leaf = ca.issue_cert("app.test")
        cert, key = tmp_path / "app.crt", tmp_path / "app.key"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        key.write_bytes(leaf.private_key_pem.bytes())
        args += ["--cert", str(cert), "--key", str(key)]
        cafile = str(tmp_path / "ca.pem")
        ca.cert_pem.write_to_path(cafile)
    proc = reverse_proxy(tmp_path, *args)
    try:
        peer = wait_for(lambda: tls_peer(port, "app.test", cafile), timeout=20)
        names = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "app.test" in names.get_values_for_type(x509.DNSName)
        context = ssl.create_default_context(cafile=cafile)
        if cafile is None:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            with context.wrap_socket(sock, server_hostname="app.test") as tls:
                tls.sendall(b"GET /s HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.1 200 ")
        plain = http_request(http_port, b"GET /s HTTP/1.1\r\nHost: app.test\r\n\r\n")
        assert plain.startswith(b"HTTP/1.1 301 ") and b"https://app.test" in plain
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_reverse_proxy_bad_arguments_exit_2(tmp_path: Path) -> None:
    for args, said in (
        (["--from", "http://a.test", "--to", "x"], "not a URL"),
        (["--from", "a.test:99999", "--to", "127.0.0.1:1"], "1 to 65535"),
        (["--from", "a.test", "--to", "ftp://x"], "--to"),
        (["--from", "a.test", "--to", "127.0.0.1:1", "--cert", "c.pem"], "--https"),
    ):
        done = edge_command("reverse-proxy", *args, env=clean_env(), cwd=tmp_path)
        assert done.returncode == 2 and said in done.stderr, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------- seeds


def write_seed(path: Path, keys: dict[str, object]) -> Path:
    path.write_text(json.dumps({"keys": keys}))
    return path


def test_serve_refuses_a_bad_seed_file_before_writing_anything(
    tmp_path: Path, redis_db: RedisServer, rdb: redis.Redis
) -> None:
    seed = write_seed(
        tmp_path / "seed.json",
        {
            "proxy:good.test": {"hostname": "good.test", "target_url": "http://127.0.0.1:1"},
            "proxy:bad.test": {"hostname": "bad.test", "target_url": "http://x", "colour": 1},
            "route:r": {"route_id": "r", "path_pattern": "/", "target_type": "port"},
        },
    )
    done = edge_command(
        "serve", "--seed", str(seed), env=clean_env(REDIS_URL=redis_db.url), cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr
    assert "2 problems, nothing written" in done.stderr
    assert "proxy:bad.test: " in done.stderr and "route:r: " in done.stderr
    assert rdb.keys("*") == []  # not even the good key
    # without Redis (embedded): refused before the embedded Redis starts
    state = tmp_path / "state"
    env = clean_env(EDGE_STATE_DIR=str(state))
    done = edge_command("serve", "--seed", str(seed), env=env, cwd=tmp_path)
    assert done.returncode == 2 and not state.exists()
    check = edge_command("check", "--seed", str(seed), env=env, cwd=tmp_path)
    assert check.returncode == 1
    assert "error: seed file" in check.stdout and "proxy:bad.test" in check.stdout


def test_seed_replace_overwrites_existing_keys(
    edge_factory: Callable[..., EdgeProcess], tmp_path: Path, rdb: redis.Redis
) -> None:
    rdb.set("proxy:a.test", json.dumps({"hostname": "a.test", "target_url": "http://127.0.0.1:1"}))
    fixed = {"hostname": "a.test", "target_url": "http://127.0.0.1:2"}
    seed = write_seed(tmp_path / "seed.json", {"proxy:a.test": fixed})
    kept = edge_factory("--seed", str(seed))
    assert json.loads(rdb.get("proxy:a.test") or "")["target_url"] == "http://127.0.0.1:1"
    kept.stop()
    edge_factory("--seed", str(seed), "--seed-replace")
    assert json.loads(rdb.get("proxy:a.test") or "") == fixed
    rdb.set("proxy:a.test", json.dumps({"hostname": "a.test", "target_url": "http://127.0.0.1:3"}))
    edge_factory(EDGE_SEED_FILE=str(seed), EDGE_SEED_REPLACE="true")
    assert json.loads(rdb.get("proxy:a.test") or "") == fixed


# ---------------------------------------------------------------------------- check


def test_check_a_running_then_stopped_embedded_redis(tmp_path: Path) -> None:
    state = tmp_path / "state"
    edge = EdgeProcess(None, tmp_path, EDGE_STATE_DIR=str(state))
    env = clean_env(EDGE_STATE_DIR=str(state))
    try:
        edge.start()
        client = redis.Redis(unix_socket_path=str(state / "redis.sock"))
        client.set("proxy:ok.test", proxy_doc("ok.test", "http://127.0.0.1:1"))
        client.set("proxy:bad.test", '{"hostname": "bad.test"}')
        client.close()
        running = edge_command("check", env=env, cwd=tmp_path)
        assert running.returncode == 1 and "error: proxy:bad.test: " in running.stdout
    finally:
        edge.stop()
    assert not (state / "redis.sock").exists()
    files = sorted(p.relative_to(state) for p in state.rglob("*"))
    stopped = edge_command("check", env=env, cwd=tmp_path)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "not running: its data in" in stopped.stdout
    assert "error: proxy:bad.test: " in stopped.stdout and "proxy:ok.test" not in stopped.stdout
    assert "2 config keys checked, 1 problem(s)" in stopped.stdout
    assert sorted(p.relative_to(state) for p in state.rglob("*")) == files  # only read
    never = edge_command("check", env=clean_env(EDGE_STATE_DIR=str(tmp_path / "new")), cwd=tmp_path)
    assert never.returncode == 0 and "never started" in never.stdout


def test_cert_and_check_without_env_file_find_the_running_edge(tmp_path: Path) -> None:
    """Started with an env file that moves the state directory; asked from elsewhere with
    nothing set: the edge's Redis is used, or (other edges run on this machine too) the
    command names this edge's --env-file among those to pass."""
    state = tmp_path / "state"
    env_file = tmp_path / "edge.env"
    env_file.write_text(f"EDGE_STATE_DIR={state}\n")
    edge = EdgeProcess(None, tmp_path)
    edge.start("--env-file", str(env_file))
    assert edge.proc is not None
    pid = edge.proc.pid
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    try:
        client = redis.Redis(unix_socket_path=str(state / "redis.sock"))
        client.set("proxy:ok.test", proxy_doc("ok.test", "http://127.0.0.1:1"))
        client.close()
        for command in (("cert", "list"), ("check",)):
            done = edge_command(*command, env=clean_env(), cwd=elsewhere)
            said = done.stdout + done.stderr
            assert "Traceback" not in said
            if done.returncode == 0:
                assert f"using the redis of the edge running as pid {pid} " in said
                assert f"--env-file {env_file}" in said
            else:  # several edges: each named with the file to pass
                assert "several edges are running" in said, said
                assert f"pid {pid} (edge serve, --env-file {env_file})" in said
        # an explicit --env-file is used as given, never another edge's
        other = tmp_path / "other.env"
        other.write_text(f"EDGE_STATE_DIR={tmp_path / 'other'}\n")
        done = edge_command(
            "cert", "list", "--env-file", str(other), env=clean_env(), cwd=elsewhere
        )
        assert done.returncode == 1 and "or set REDIS_URL" in done.stderr
    finally:
        edge.stop()
