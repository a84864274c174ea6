"""ACME issuance end to end: a real Pebble validates HTTP-01 against the edge's own HTTP
listener (pebble-challtestsrv resolves every name to 127.0.0.1), the edge writes the
certificate and serves it on its TLS listener."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.acme_helpers import acme_env, assert_served, wait_status
from tests.api_client import call
from tests.helpers import EdgeProcess, free_port
from tests.pebble import Pebble

pytestmark = pytest.mark.timeout(120)


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
