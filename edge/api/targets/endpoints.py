"""The port-forward targets' endpoint group: the admin's records and the members' listings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.api.config.store import ConfigScope
from edge.api.identity import Identity
from edge.api.people.auth import PeopleContext
from edge.api.request import Endpoint, Scoped
from edge.api.router import Router
from edge.api.targets.admin import add_admin_routes
from edge.api.targets.public import TargetScope, add_public_routes
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import TokenStore
from edge.config.snapshot import Snapshot

__all__ = ["TargetsApi"]


class TargetsApi:
    """Apps, app resources and databases: written by the admin token
    (:mod:`edge.api.targets.admin`, Redis), listed by a project's members with a PAT
    (:mod:`edge.api.targets.public`) from ``snapshot``, the worker's configuration of the
    moment (``lambda: watcher.snapshot``; None: no listings). ``people``: the worker's PAT
    authenticator, shared with (and closed by) the people endpoints."""

    def __init__(
        self,
        tokens: TokenStore,
        people: PeopleContext,
        snapshot: Callable[[], Snapshot] | None,
    ) -> None:
        self.tokens = tokens
        self.people = people
        self.snapshot = snapshot

    def _scope(self, caller: Identity) -> ConfigScope:
        return ConfigScope(caller, self.tokens.redis, self.tokens.timeout)

    def register(self, router: Router[Endpoint[Any]]) -> None:
        add_admin_routes(router, Scoped(TokenAuth(self.tokens, admin_only=True), self._scope))
        snapshot = self.snapshot
        if snapshot is None:
            return
        pat = Scoped(self.people.auth.authenticate, lambda caller: TargetScope(caller, snapshot))
        add_public_routes(router, pat)

    async def close(self) -> None:
        """Nothing of its own to close (the Redis handle is the worker's, the PAT
        verifier the people endpoints')."""
