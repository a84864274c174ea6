"""Admin API over the configuration keys (see ``docs/api.md``, "Configuration").

Any valid token may call these endpoints: the admin token on every record, another token
on the records it owns (``owner_token_hash``), the others being 404 to it.
"""

from __future__ import annotations

from edge.api.config.cert import add_cert_routes
from edge.api.config.proxy import add_proxy_routes
from edge.api.config.resource import add_resource_routes
from edge.api.config.routing import add_routing_routes
from edge.api.config.service import add_service_routes
from edge.api.request import Endpoint
from edge.api.router import Router

__all__ = ["add_config_routes"]


def add_config_routes(router: Router[Endpoint]) -> None:
    """Register the proxy, route, service, certificate and resource endpoints."""
    add_proxy_routes(router)
    add_routing_routes(router)
    add_service_routes(router)
    add_cert_routes(router)
    add_resource_routes(router)
