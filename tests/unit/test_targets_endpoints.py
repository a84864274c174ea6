"""The targets' endpoint group: who may call each endpoint, and the role check of the
public listings (with the role table as it is, every member may list: the check is there
for a role that grants nothing)."""

from __future__ import annotations

from typing import Any

import pytest

from edge.api.app import build_router, default_groups
from edge.api.http import Forbidden, MethodNotAllowed, NotFound
from edge.api.identity import PatIdentity
from edge.api.people.auth import PatAuthenticator
from edge.api.people.store import PatRecord, Project, User
from edge.api.redis_store import RedisHandle
from edge.api.request import Endpoint, Scoped
from edge.api.router import Router
from edge.api.targets.public import TargetScope
from edge.api.tokens.auth import TokenAuth
from edge.api.tokens.store import TokenStore
from edge.config.snapshot import Snapshot
from edge.settings import RedisTarget


def router(with_snapshot: bool) -> Router[Endpoint[Any]]:
    # nothing connects: the groups are only built and registered
    store = TokenStore(RedisHandle(RedisTarget("redis://127.0.0.1:1")))
    targets = Snapshot if with_snapshot else None
    return build_router(lambda ex: None, default_groups(store, targets=targets))


def access(endpoint: Endpoint[Any]) -> str:
    auth = endpoint.auth
    assert isinstance(auth, Scoped)
    inner = auth.auth
    if isinstance(inner, TokenAuth):
        return "admin" if inner.admin_only else "token"
    assert getattr(inner, "__self__", None).__class__ is PatAuthenticator
    return "pat"


ADMIN = [
    ("GET", "/api/v1/apps/"),
    ("POST", "/api/v1/apps"),
    ("GET", "/api/v1/apps/web"),
    ("PUT", "/api/v1/apps/web"),
    ("DELETE", "/api/v1/apps/web"),
    ("GET", "/api/v1/apps/web/resources"),
    ("POST", "/api/v1/apps/web/resources/"),
    ("GET", "/api/v1/app-resources"),
    ("GET", "/api/v1/app-resources/pg"),
    ("PUT", "/api/v1/app-resources/pg"),
    ("DELETE", "/api/v1/app-resources/pg"),
    ("GET", "/api/v1/databases/"),
    ("POST", "/api/v1/databases/"),
    ("GET", "/api/v1/databases/db_1"),
    ("PUT", "/api/v1/databases/db_1"),
    ("DELETE", "/api/v1/databases/db_1"),
]
PUBLIC = [
    ("GET", "/public-api/apps"),
    ("GET", "/public-api/apps/web/resources"),
    ("GET", "/public-api/databases"),
]


def test_the_admin_writes_and_members_list() -> None:
    found = router(with_snapshot=True)
    for method, path in ADMIN:
        assert access(found.match(method, path).target) == "admin", (method, path)
    for method, path in PUBLIC:
        endpoint = found.match(method, path).target
        assert access(endpoint) == "pat" and endpoint.envelope, path
    with pytest.raises(MethodNotAllowed):
        found.match("POST", "/api/v1/app-resources/")  # created under their app only
    with pytest.raises(MethodNotAllowed):
        found.match("POST", "/public-api/apps")


def test_without_the_configuration_there_are_no_listings() -> None:
    found = router(with_snapshot=False)
    assert access(found.match("GET", "/api/v1/apps").target) == "admin"
    with pytest.raises(NotFound):
        found.match("GET", "/public-api/apps")


def identity(role: str) -> PatIdentity:
    user = User(id="u_1", name="Ann", email="ann@example.com", created_at="2030-01-01T00:00:00Z")
    project = Project(id="p_1", name="shop", created_at="2030-01-01T00:00:00Z")
    pat = PatRecord(
        id="t_1",
        user_id="u_1",
        project_id="p_1",
        name="laptop",
        token_hash="$argon2id$x",
        token_prefix="abcdefgh",
        created_at="2030-01-01T00:00:00Z",
    )
    return PatIdentity(user, project, role, pat)


@pytest.mark.parametrize("role", ["viewer", "modifier", "maintainer", "owner"])
def test_every_role_lists(role: str) -> None:
    scope = TargetScope(identity(role), Snapshot)
    assert scope.require("apps.read") == scope.require("project.read") == "p_1"


def test_a_role_that_grants_nothing_is_refused() -> None:
    scope = TargetScope(identity("ghost"), Snapshot)
    with pytest.raises(Forbidden) as refused:
        scope.require("apps.read")
    assert refused.value.code == "permission_denied"
    assert "apps.read" in refused.value.public_message
