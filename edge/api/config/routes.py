"""Admin API over the configuration keys (see ``docs/api.md``, "Configuration").

Any valid token may call these endpoints: the admin token on every record, another token
on the records it owns (``owner_token_hash``), the others being 404 to it. The one
exception: ``POST /api/v1/resources/auto-register`` (every proxy's record) is the admin's.
"""

from __future__ import annotations

from typing import Any

from edge.api.config.acme import AcmeDefaults, add_acme_routes
from edge.api.config.cert import add_cert_routes
from edge.api.config.proxy import add_proxy_routes
from edge.api.config.resource import add_resource_routes
from edge.api.config.routing import add_routing_routes
from edge.api.config.service import add_service_routes
from edge.api.config.store import ConfigScope
from edge.api.identity import Identity
from edge.api.oauth.endpoints import OAuthAdminDeps
from edge.api.request import Endpoint, Scoped
from edge.api.router import Router
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import TokenStore

__all__ = ["ConfigApi"]


class ConfigApi:
    """Proxies, routes, services, certificates and resources: any valid token, each
    handler acting in a :class:`ConfigScope` (the caller, the Redis it reads and writes).
    ``oauth``: the edge's own OAuth server, whose tokens the resources validate."""

    def __init__(
        self,
        tokens: TokenStore,
        acme: AcmeDefaults | None = None,
        oauth: OAuthAdminDeps | None = None,
    ) -> None:
        self.tokens = tokens
        self.acme = acme
        self.oauth = oauth

    def _scope(self, caller: Identity) -> ConfigScope:
        return ConfigScope(caller, self.tokens.redis, self.tokens.timeout)

    def register(self, router: Router[Endpoint[Any]]) -> None:
        token = Scoped(TokenAuth(self.tokens, admin_only=False), self._scope)
        add_proxy_routes(router, token)
        add_routing_routes(router, token)
        add_service_routes(router, token)
        add_cert_routes(router, token)
        if self.acme is not None:
            add_acme_routes(router, token, self.acme)
        admin = Scoped(TokenAuth(self.tokens, admin_only=True), self._scope)
        add_resource_routes(router, token, admin, self.oauth)

    async def close(self) -> None:
        """Nothing of its own to close (the Redis handle is the worker's)."""
