"""``edge cert create|status|renew`` against a real edge and Redis, as a subprocess.

The CA is a loopback port where nothing listens, so no order can succeed here (issuing for
real against Pebble is tested elsewhere): what is checked is the command line around the
API, its refusals, its output, and ``--wait`` following status documents the test writes
into Redis itself while the command waits.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trustme
from cryptography import x509

from edge.client.certs import EXIT_TIMEOUT
from tests.helpers import ROOT, EdgeProcess, RedisServer, free_port

Done = subprocess.CompletedProcess[str]
CLIENT_ENV = ("API_URL", "TOKEN", "ADMIN_TOKEN", "EDGE_PROFILE", "NO_COLOR", "XDG_CONFIG_HOME")
STAMP = "2030-01-01T00:00:00+00:00"


@pytest.fixture
def ca_url() -> str:
    """An ACME directory on a loopback port nobody listens on: every order fails at once."""
    return f"http://127.0.0.1:{free_port()}/directory"


@pytest.fixture
def edge(edge_factory: Callable[..., EdgeProcess], admin: str, ca_url: str) -> EdgeProcess:
    return edge_factory(ADMIN_TOKEN=admin, ACME_DIRECTORY_URL=ca_url, ACME_STAGING_URL=ca_url)


@pytest.fixture
def env(edge: EdgeProcess, admin: str, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: API_URL and the admin's TOKEN, a config home of its own."""
    found = {k: v for k, v in os.environ.items() if k not in CLIENT_ENV}
    (tmp_path / "home").mkdir()
    found.update(
        PYTHONPATH=str(ROOT),
        HOME=str(tmp_path / "home"),
        XDG_CONFIG_HOME=str(tmp_path / "xdg"),
        API_URL=f"http://127.0.0.1:{edge.api_port}",
        TOKEN=admin,
    )
    return found


def edge_cli(*args: str, env: dict[str, str]) -> Done:
    done = subprocess.run(
        [sys.executable, "-m", "edge", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=env["HOME"],
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    return done


def refused(done: Done) -> str:
    """The one error line of a command that failed (exit 1, nothing on stdout)."""
    assert (done.returncode, done.stdout) == (1, ""), (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge: "), done.stderr
    return lines[0]


def status_doc(status: str, **fields: Any) -> dict[str, Any]:
    """A ``cert:status:app`` document as the edge writes them."""
    return {
        "cert_name": "app",
        "status": status,
        "domains": ["app.example.com", "www.example.com"],
        "email": "ops@example.com",
        "directory_url": "https://acme.example/directory",
        "staging": False,
        "key_type": "ecdsa",
        "reason": "requested",
        "owner_token_hash": None,
        "requested_at": STAMP,
        "updated_at": STAMP,
        "attempts": 0,
        "error": None,
        "next_try_at": None,
        "expires_at": None,
        "renew_at": None,
        "order_url": None,
        **fields,
    }


def fields(text: str) -> dict[str, str]:
    """The ``label  value`` lines of the table output (labels may hold one space)."""
    found = {}
    for line in text.splitlines():
        label, _, value = line.partition("  ")
        found[label] = value.strip()
    return found


def leaf_expiry_day(chain: Path) -> str:
    """The day the leaf of ``chain`` expires, ``YYYY-MM-DD``."""
    return x509.load_pem_x509_certificate(chain.read_bytes()).not_valid_after_utc.date().isoformat()


def write_status(rdb: redis.Redis, doc: dict[str, Any]) -> None:
    rdb.set(f"cert:status:{doc['cert_name']}", json.dumps(doc))


class Running:
    """``edge ARGS`` in the background, its stdout read line by line as it comes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", *args],
            env=env,
            cwd=env["HOME"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 15.0) -> str:
        line = self.lines.get(timeout=timeout)
        self.seen.append(line)
        return line

    def finish(self, timeout: float = 30.0) -> tuple[int, list[str], str]:
        """The exit status, every stdout line, and stderr."""
        status = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        assert "Traceback" not in err, err
        return status, self.seen, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def background() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str, env: dict[str, str]) -> Running:
        started.append(Running(*args, env=env))
        return started[-1]

    yield start
    for running in started:
        running.kill()


# ---------------------------------------------------------------------------- refusals


def test_the_api_refusals_name_the_field_and_the_argument(
    env: dict[str, str], rdb: redis.Redis
) -> None:
    line = refused(edge_cli("cert", "create", "app", "*.example.com", env=env))
    assert line.startswith("edge: invalid domain (DOMAIN): '*.example.com' is a wildcard name")
    line = refused(edge_cli("cert", "create", "app", "a.example.com", "*.b.example", env=env))
    assert line.startswith("edge: invalid domains (DOMAIN...): '*.b.example' is a wildcard name")
    line = refused(edge_cli("cert", "create", "app", "a.example.com", "a.example.com", env=env))
    assert line == "edge: invalid domains (DOMAIN...): 'a.example.com' is listed twice"
    line = refused(edge_cli("cert", "create", "bad/name", "a.example.com", env=env))
    assert line.startswith("edge: invalid cert_name (NAME): cert_name must be 1-128 characters")
    line = refused(edge_cli("cert", "create", "app", "a.example.com", "--email", "x", env=env))
    assert line.startswith("edge: invalid email (--email): email must be an e-mail address")
    # nothing was written for any of them
    assert rdb.keys("cert*") == [] and rdb.zcard("edge:acme:queue") == 0

    # an order under way for the name: 409, for create and renew alike
    write_status(rdb, status_doc("validating"))
    for args in (("create", "app", "app.example.com"), ("renew", "app")):
        line = refused(edge_cli("cert", *args, "--wait", env=env))
        assert line.startswith("edge: 409 order_in_progress: an order for this certificate is in")
    assert json.loads(rdb.get("cert:status:app") or "null") == status_doc("validating")


def test_unknown_certificates_are_404(env: dict[str, str]) -> None:
    for command in ("status", "renew"):
        line = refused(edge_cli("cert", command, "nothing-here", env=env))
        assert line.startswith("edge: 404 certificate_not_found: no certificate with this name")
    line = refused(edge_cli("cert", "status", "nothing-here", "--wait", env=env))
    assert "404 certificate_not_found" in line


def test_without_a_token_nothing_is_asked(env: dict[str, str]) -> None:
    del env["TOKEN"]
    done = edge_cli("cert", "create", "app", "app.example.com", env=env)
    assert done.returncode == 2 and done.stderr.startswith("edge: no token"), done.stderr
    env["TOKEN"] = "edge_" + "x" * 43
    assert "the token was refused (401)" in refused(edge_cli("cert", "status", "app", env=env))


# ---------------------------------------------------------------------------- --wait


def test_wait_prints_each_state_then_the_failure(
    env: dict[str, str], rdb: redis.Redis, background: Callable[..., Running]
) -> None:
    write_status(rdb, status_doc("pending"))
    waiting = background("cert", "status", "app", "--wait", "--timeout", "60", env=env)
    assert waiting.next_line() == "pending"
    write_status(rdb, status_doc("validating", order_url="https://acme.example/order/1"))
    assert waiting.next_line() == "validating"
    nxt = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 600))
    error = "urn:ietf:params:acme:error:connection: Fetching http://app.example.com/: refused"
    write_status(rdb, status_doc("failed", attempts=1, error=error, next_try_at=nxt))
    status, lines, err = waiting.finish()
    assert status == 1, err
    assert lines == ["pending", "validating", f"failed (next try {nxt})"]
    assert err.splitlines() == [f"edge: app: the order failed: {error}; next try {nxt} (in 9m)"]


def test_wait_ends_active_and_json_prints_the_last_document(
    env: dict[str, str], rdb: redis.Redis, background: Callable[..., Running]
) -> None:
    write_status(rdb, status_doc("issuing"))
    waiting = background("cert", "status", "app", "--wait", "--json", env=env)
    # with --json the progress goes to stderr; stdout is one JSON document at the end
    time.sleep(1.5)
    expires = "2030-04-01T00:00:00+00:00"
    write_status(rdb, status_doc("active", expires_at=expires, renew_at="2030-03-02T00:00:00Z"))
    status, lines, err = waiting.finish()
    assert status == 0, err
    assert json.loads("\n".join(lines)) == status_doc(
        "active", expires_at=expires, renew_at="2030-03-02T00:00:00Z"
    )
    assert err.splitlines() == ["issuing", f"active (expires {expires})"]


def test_wait_gives_up_at_the_timeout_with_its_own_status(
    env: dict[str, str], rdb: redis.Redis
) -> None:
    write_status(rdb, status_doc("validating"))
    started = time.monotonic()
    done = edge_cli("cert", "status", "app", "--wait", "--timeout", "2", env=env)
    assert 2 <= time.monotonic() - started < 15
    assert done.returncode == EXIT_TIMEOUT, done.stderr
    assert done.stdout == "validating\n"
    assert done.stderr == (
        "edge: app: still validating after 2s; the order goes on "
        "(follow it with: edge cert status app --wait)\n"
    )


def test_status_shows_the_document_for_people_and_for_scripts(
    env: dict[str, str], rdb: redis.Redis
) -> None:
    doc = status_doc("failed", attempts=3, error="rate limited", next_try_at="2030-01-01T06:00:00Z")
    write_status(rdb, doc)
    done = edge_cli("cert", "status", "app", env=env)
    assert done.returncode == 0, done.stderr
    shown = fields(done.stdout)
    assert list(shown)[:7] == [
        "name",
        "state",
        "domains",
        "error",
        "next try",
        "expires",
        "renew at",
    ]
    assert shown["state"] == "failed" and shown["error"] == "rate limited"
    assert shown["domains"] == "app.example.com, www.example.com"
    assert shown["next try"].startswith("2030-01-01T06:00:00Z (in ")
    assert shown["expires"] == shown["renew at"] == "-"
    assert (shown["attempts"], shown["key type"], shown["staging"]) == ("3", "ecdsa", "no")
    assert "owner_token_hash" not in done.stdout
    for args in (("--json",), ("-o", "json")):
        as_json = edge_cli("cert", "status", "app", *args, env=env)
        assert json.loads(as_json.stdout) == doc


# ---------------------------------------------------------------------------- real orders


def test_create_then_wait_for_a_ca_that_refuses(
    env: dict[str, str], rdb: redis.Redis, ca_url: str
) -> None:
    done = edge_cli(
        "cert",
        "create",
        "app",
        "app.example.com",
        "www.example.com",
        "--key-type",
        "ecdsa",
        "--email",
        "ops@example.com",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    shown = fields(done.stdout)
    assert (shown["name"], shown["state"], shown["attempts"]) == ("app", "pending", "0")
    assert shown["domains"] == "app.example.com, www.example.com"
    assert (shown["key type"], shown["CA"], shown["email"]) == ("ecdsa", ca_url, "ops@example.com")
    assert done.stdout.splitlines()[-1] == "follow the order with: edge cert status app --wait"

    # the CA cannot be reached: the order fails, with the reason and the next try
    waited = edge_cli("cert", "status", "app", "--wait", "--timeout", "60", env=env)
    assert waited.returncode == 1, (waited.stdout, waited.stderr)
    last = waited.stdout.splitlines()[-1]
    assert last.startswith("failed (next try "), waited.stdout
    assert waited.stderr.startswith("edge: app: the order failed: "), waited.stderr
    assert "; next try " in waited.stderr

    stored = json.loads(rdb.get("cert:status:app") or "null")
    assert stored["status"] == "failed" and stored["key_type"] == "ecdsa"
    assert stored["domains"] == ["app.example.com", "www.example.com"]

    # a failed order may be asked again at once: renew is a new order (202)
    renewed = edge_cli("cert", "renew", "app", "-o", "json", env=env)
    assert renewed.returncode == 0, renewed.stderr
    doc = json.loads(renewed.stdout)
    assert (doc["status"], doc["reason"], doc["attempts"]) == ("pending", "renewal", 0)
    assert renewed.stderr == "follow the order with: edge cert status app --wait\n"


def test_an_imported_certificate_has_a_status_but_no_renewal(
    env: dict[str, str], redis_db: RedisServer, ca: trustme.CA, tmp_path: Path
) -> None:
    leaf = ca.issue_cert("old.example.com")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    imported = edge_cli(
        "cert", "import", "old", "--cert", str(chain), "--key", str(key),
        env={**env, "REDIS_URL": redis_db.url},
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr

    done = edge_cli("cert", "status", "old", env=env)
    assert done.returncode == 0, done.stderr
    shown = fields(done.stdout)
    assert (shown["name"], shown["state"], shown["domains"]) == (
        "old",
        "imported",
        "old.example.com",
    )
    assert shown["expires"].startswith(leaf_expiry_day(chain))
    assert "attempts" not in shown  # a record has no order: its fields are left out

    line = refused(edge_cli("cert", "renew", "old", "--wait", env=env))
    assert line.startswith("edge: 409 not_acme: this certificate was imported, not issued by")
