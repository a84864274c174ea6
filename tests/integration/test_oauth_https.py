"""The OAuth server on its own HTTPS host: with automatic HTTPS the issuer host gets a
certificate of its own from the CA (a real Pebble validating HTTP-01 on the edge), renewed
like a proxy's, and the metadata is served over HTTPS with the ``https://`` issuer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.acme_helpers import assert_served, wait_status
from tests.helpers import EdgeProcess
from tests.integration.test_acme_auto import https_get, start_site, verifying_context
from tests.pebble import AcmeFront, Pebble

pytestmark = pytest.mark.timeout(120)


def test_the_issuer_host_gets_its_certificate_and_serves_metadata_over_https(
    pebble_factory: Callable[..., Pebble],
    acme_front_factory: Callable[..., AcmeFront],
    edge_factory: Callable[..., EdgeProcess],
    admin: str,
    tmp_path: Path,
) -> None:
    import redis

    site = start_site(
        pebble_factory,
        acme_front_factory,
        edge_factory,
        admin,
        tmp_path,
        AUTO_HTTPS="true",
        BASE_DOMAIN="example.test",  # the issuer: https://auth.example.test
    )
    rdb = redis.Redis.from_url(site.edge.env["REDIS_URL"])
    status = wait_status(rdb, "host-auth-example-test", timeout=30)
    assert status["domains"] == ["auth.example.test"]
    assert status["reason"] == "automatic"
    assert_served(site.https_port, "auth.example.test", site.root)
    code, body = https_get(
        site.https_port,
        "auth.example.test",
        "/.well-known/oauth-authorization-server",
        verifying_context(site.root),
    )
    assert code == 200
    doc = json.loads(body)
    assert doc["issuer"] == "https://auth.example.test"
    assert doc["token_endpoint"] == "https://auth.example.test/token"
    # it is queued for renewal like any certificate the edge ordered
    assert b"host-auth-example-test" in rdb.zrange("edge:acme:queue", 0, -1)
