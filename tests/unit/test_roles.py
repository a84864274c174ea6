"""The role -> permission table of ``edge.auth.roles``."""

from __future__ import annotations

import itertools

import pytest

from edge.auth.roles import PERMISSIONS, ROLES, has_permission, is_role, permissions_of

ALL = frozenset(PERMISSIONS)
READS = frozenset(p for p in ALL if p.endswith(".read"))
WRITES = frozenset(p for p in ALL if p.endswith((".write", ".deploy")))
OWNER_ONLY = frozenset({"members.manage", "tokens.manage", "project.delete"})
#: What a modifier may do beyond reading and writing: reveal a database's credentials and
#: open a port-forward tunnel to a resource (the seed specification's role table).
MODIFIER_EXTRAS = frozenset({"databases.show-secrets", "resources.port-forward"})


def test_the_four_roles_least_privileged_first() -> None:
    assert ROLES == ("viewer", "modifier", "maintainer", "owner")
    for role in ROLES:
        assert is_role(role)
    for other in ("", "Owner", "admin", "root", None, 3, "owner "):
        assert not is_role(other)


def test_permission_names_are_area_dot_action() -> None:
    assert len(ALL) >= 10
    for permission, least in PERMISSIONS.items():
        area, _, action = permission.partition(".")
        assert area and action and permission == permission.lower()
        assert least in ROLES, permission


def test_the_names_the_api_relies_on_exist() -> None:
    for name in (
        "resources.port-forward",
        "databases.show-secrets",
        "apps.read",
        "apps.write",
        "members.manage",
        "tokens.manage",
    ):
        assert name in PERMISSIONS


def test_owner_has_everything() -> None:
    assert permissions_of("owner") == ALL


def test_maintainer_has_most_but_not_people_nor_deletion() -> None:
    assert permissions_of("maintainer") == ALL - OWNER_ONLY
    assert has_permission("maintainer", "databases.show-secrets")
    assert has_permission("maintainer", "resources.port-forward")
    assert not has_permission("maintainer", "tokens.manage")
    assert not has_permission("maintainer", "members.manage")


def test_modifier_reads_writes_shows_secrets_and_port_forwards() -> None:
    assert permissions_of("modifier") == READS | WRITES | MODIFIER_EXTRAS
    assert has_permission("modifier", "apps.write")
    assert has_permission("modifier", "databases.show-secrets")
    assert has_permission("modifier", "resources.port-forward")
    assert not has_permission("modifier", "project.settings")
    assert not has_permission("modifier", "members.manage")


def test_secrets_and_port_forward_are_for_modifier_and_above_only() -> None:
    for permission in MODIFIER_EXTRAS:
        holders = [role for role in ROLES if has_permission(role, permission)]
        assert holders == ["modifier", "maintainer", "owner"], permission


def test_viewer_only_reads() -> None:
    assert permissions_of("viewer") == READS
    assert has_permission("viewer", "apps.read")
    assert not has_permission("viewer", "apps.write")
    assert not has_permission("viewer", "databases.show-secrets")
    assert not has_permission("viewer", "resources.port-forward")


def test_higher_roles_have_everything_lower_roles_have() -> None:
    for low, high in itertools.pairwise(ROLES):
        assert permissions_of(low) < permissions_of(high), (low, high)


@pytest.mark.parametrize("role", ["", "admin", "Owner", "owner\x00", "superuser"])
def test_unknown_roles_have_nothing(role: str) -> None:
    assert permissions_of(role) == frozenset()
    for permission in ALL:
        assert not has_permission(role, permission)


def test_non_string_role_has_nothing() -> None:
    assert not has_permission(None, "apps.read")  # type: ignore[arg-type]
    assert not has_permission(3, "apps.read")  # type: ignore[arg-type]


@pytest.mark.parametrize("permission", ["", "apps", "apps.READ", "apps.delete", "secrets.read"])
def test_unknown_permissions_are_a_programming_error(permission: str) -> None:
    for role in ROLES:
        with pytest.raises(ValueError, match="unknown permission"):
            has_permission(role, permission)


def test_the_table_cannot_be_changed_at_runtime() -> None:
    with pytest.raises(TypeError):
        PERMISSIONS["apps.read"] = "owner"  # type: ignore[index]
