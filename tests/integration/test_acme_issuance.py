"""ACME issuance end to end: a real Pebble validates HTTP-01 against the edge's own HTTP
listener (pebble-challtestsrv resolves every name to 127.0.0.1), the edge writes the
certificate and serves it on its TLS listener."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography import x509

from tests.api_client import call
from tests.helpers import EdgeProcess, free_port, require_tool, wait_for
from tests.pebble import AcmeFront, Pebble

pytestmark = pytest.mark.timeout(120)


class AcmeSite:
    """A Pebble and an edge whose HTTP port is the one Pebble validates on."""

    def __init__(self, pebble: Pebble, edge: EdgeProcess, http_port: int, https_port: int):
        self.pebble = pebble
        self.edge = edge
        self.http_port = http_port
        self.https_port = https_port


def acme_env(directory_url: str, ca_bundle: str, **more: Any) -> dict[str, Any]:
    env: dict[str, Any] = {
        "ACME_DIRECTORY_URL": directory_url,
        "ACME_STAGING_URL": directory_url,
        "ACME_CA_BUNDLE": ca_bundle,
        "ACME_POLL_INITIAL_WAIT": "0.2",
        "ACME_POLL_INTERVAL_SECONDS": "0.3",
        "ACME_RETRY_INITIAL_SECONDS": "1",
        "ADMIN_EMAIL": "ops@example.test",
    }
    env.update(more)
    return env


def served_chain(port: int, name: str) -> list[x509.Certificate]:
    openssl = require_tool("openssl")
    out = subprocess.run(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name, "-showcerts"],
        input=b"",
        capture_output=True,
        timeout=10,
    ).stdout
    return x509.load_pem_x509_certificates(out) if b"BEGIN CERTIFICATE" in out else []


def verify_with_root(port: int, name: str, root: Path) -> str:
    openssl = require_tool("openssl")
    proc = subprocess.run(
        [
            openssl,
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-servername",
            name,
            "-CAfile",
            str(root),
            "-verify_return_error",
            "-verify_hostname",
            name,
        ],
        input=b"",
        capture_output=True,
        timeout=10,
    )
    return proc.stdout.decode() + proc.stderr.decode()


def wait_status(
    rdb: redis.Redis, name: str, wanted: str = "active", timeout: float = 60.0
) -> dict[str, Any]:
    def get() -> dict[str, Any] | None:
        raw = rdb.get(f"cert:status:{name}")
        doc = json.loads(raw) if raw else None
        return doc if doc and doc["status"] == wanted else None

    found = wait_for(get, timeout=timeout, interval=0.1)
    assert isinstance(found, dict)
    return found


def test_single_domain_issued_through_the_api_and_served(
    pebble_factory: Callable[..., Pebble],
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    rdb: redis.Redis,
    tmp_path: Path,
) -> None:
    http_port, https_port = free_port(), free_port()
    pebble = pebble_factory(http_port=http_port)
    edge = edge_factory(
        HTTP_PORT=http_port,
        HTTPS_PORT=https_port,
        ADMIN_TOKEN=admin,
        **acme_env(pebble.directory_url, str(pebble.ca_bundle_path)),
    )
    answer = call(
        edge.api_port,
        "POST",
        "/api/v1/certificates/",
        admin,
        {"cert_name": "site", "domain": "www.example.test"},
    )
    assert answer.status == 202, answer.raw
    doc = wait_status(rdb, "site")
    assert doc["domains"] == ["www.example.test"]
    record = json.loads(rdb.get("cert:site"))
    assert record["status"] == "active"
    assert record["acme_directory_url"] == pebble.directory_url
    root = pebble.write_root(tmp_path / "root.pem")
    assert_served(https_port, "www.example.test", root)


def assert_served(port: int, name: str, root: Path, timeout: float = 10.0) -> None:
    """Wait until the TLS listener serves ``name`` a chain that verifies against ``root``."""

    def verified() -> bool:
        return "Verify return code: 0 (ok)" in verify_with_root(port, name, root)

    if not wait_for(verified, timeout=timeout, interval=0.2):
        raise AssertionError(verify_with_root(port, name, root))
