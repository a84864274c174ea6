"""What the ACME tests share: an edge's ACME settings for a Pebble, reading the status,
checking what the TLS listener serves."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import redis
from cryptography import x509

from tests.helpers import require_tool, wait_for


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


def assert_served(port: int, name: str, root: Path, timeout: float = 10.0) -> None:
    """Wait until the TLS listener serves ``name`` a chain that verifies against ``root``."""

    def verified() -> bool:
        return "Verify return code: 0 (ok)" in verify_with_root(port, name, root)

    if not wait_for(verified, timeout=timeout, interval=0.2):
        raise AssertionError(verify_with_root(port, name, root))
