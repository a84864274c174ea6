"""Project roles and what each may do: one table, one question (:func:`has_permission`).

Roles are ordered ``viewer < modifier < maintainer < owner``; every permission names the
least role that holds it, so a higher role always has everything a lower one has:

- ``viewer``: read (``*.read``);
- ``modifier``: read and write (``*.write``), see database secrets and port-forward;
- ``maintainer``: all that and the project's settings;
- ``owner``: everything, including members, other members' tokens and deleting the project.

A role read from Redis that is not one of the four has no permission at all (fail closed).
Asking about a permission that is not in the table is a programming error: ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "OWNER",
    "PERMISSIONS",
    "ROLES",
    "Role",
    "has_permission",
    "is_role",
    "permissions_of",
]

Role = Literal["owner", "maintainer", "modifier", "viewer"]

#: Every role, least privileged first.
ROLES: Final[tuple[Role, ...]] = ("viewer", "modifier", "maintainer", "owner")
#: The role a project always keeps at least one accepted member in.
OWNER: Final[Role] = "owner"
_RANK: Final[dict[str, int]] = {role: rank for rank, role in enumerate(ROLES)}

#: THE table: permission -> the least role that has it.
PERMISSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        # applications
        "apps.read": "viewer",
        "apps.write": "modifier",
        "apps.deploy": "modifier",
        # databases
        "databases.read": "viewer",
        "databases.write": "modifier",
        "databases.show-secrets": "modifier",
        # resources (proxies, routes, services, certificates of the project)
        "resources.read": "viewer",
        "resources.write": "modifier",
        "resources.port-forward": "modifier",
        # people
        "members.read": "viewer",
        "members.manage": "owner",
        # personal access tokens of *other* members (everyone manages their own)
        "tokens.manage": "owner",
        # the project itself
        "project.read": "viewer",
        "project.settings": "maintainer",
        "project.delete": "owner",
    }
)


def is_role(value: object) -> bool:
    """Whether ``value`` is one of the four role names."""
    return isinstance(value, str) and value in _RANK


def has_permission(role: str, permission: str) -> bool:
    """Whether ``role`` grants ``permission``.

    An unknown ``role`` (e.g. a corrupt membership record) grants nothing; an unknown
    ``permission`` raises ``ValueError`` (a typo must not silently deny or allow).
    """
    least = PERMISSIONS.get(permission)
    if least is None:
        raise ValueError(f"unknown permission {permission!r}")
    rank = _RANK.get(role) if isinstance(role, str) else None
    if rank is None:
        return False
    return rank >= _RANK[least]


def permissions_of(role: str) -> frozenset[str]:
    """Every permission ``role`` has (empty for an unknown role)."""
    return frozenset(p for p in PERMISSIONS if has_permission(role, p))
