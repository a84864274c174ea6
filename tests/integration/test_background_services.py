"""The worker's background jobs run as services: /health lists each one under
``background`` with its state, restarts and last error, beside the keys it always had."""

from __future__ import annotations

from collections.abc import Callable

from edge.auth.secrets import new_admin_token
from tests.helpers import EdgeProcess, wait_for


def test_health_lists_the_background_services(
    edge_factory: Callable[..., EdgeProcess],
) -> None:
    edge = edge_factory(ADMIN_TOKEN=new_admin_token(), HTTPS_PORT="0")
    doc = edge.health()
    background = doc["background"]
    assert set(background) == {
        "config-watcher",
        "pat-last-used",
        "admin-token",
        "acme",
        "tunnel-keeper",
        "request-log",
        "metrics",
    }
    for name, service in background.items():
        assert service["state"] == "running", name
        assert service["restarts"] == 0, name
        assert service["last_error"] is None, name
    assert background["pat-last-used"]["flushed"] == 0
    acme = background["acme"]
    assert (acme["orders_running"], acme["issued"], acme["failed"]) == ([], 0, 0)
    assert acme["on_demand"] is None  # ON_DEMAND_TLS is off
    # the keys /health had before are unchanged: "services" still counts config services
    assert isinstance(doc["services"], int)
    assert {"status", "redis", "generation", "proxies", "routes", "tls"} <= set(doc)


def test_background_services_without_admin_token_or_tls(
    edge_factory: Callable[..., EdgeProcess],
) -> None:
    edge = edge_factory()
    wait_for(
        lambda: (
            set(edge.health()["background"])
            == {
                "config-watcher",
                "pat-last-used",
                "acme",
                "tunnel-keeper",
                "request-log",
                "metrics",
            }
        )
    )
