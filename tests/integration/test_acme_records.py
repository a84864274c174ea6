"""A damaged ACME status document (a hand edit) is reported and dropped, never a crash."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from tests.helpers import EdgeProcess, wait_for


def test_a_damaged_status_is_reported_and_its_order_dropped(
    edge_factory: Callable[..., EdgeProcess], rdb: redis.Redis
) -> None:
    edge = edge_factory()
    rdb.set("cert:status:broken", b'{"cert_name": "broken", "status": "maybe"')
    rdb.zadd("edge:acme:queue", {"broken": time.time()})
    wait_for(lambda: "ACME status document refused" in edge.stderr_path.read_text(), timeout=10)
    wait_for(lambda: rdb.zscore("edge:acme:queue", "broken") is None, timeout=10)
    assert "cert:status:broken" in edge.stderr_path.read_text()
    # the document is left for whoever wrote it to fix (or for DELETE)
    assert rdb.exists("cert:status:broken")
    assert edge.health()["background"]["acme"]["last_error"] is None
