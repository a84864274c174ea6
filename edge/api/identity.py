"""Who an API request acts as, once authenticated (a leaf: no runtime import of edge.api).

* :class:`Identity`: an API token (the admin token or another);
* :class:`PatIdentity`: a user in one project with a role, through a personal access token.

Next, an OAuth access token's subject and scopes will be a third kind here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.api.people.store import PatRecord, Project, User

__all__ = ["Identity", "PatIdentity"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made the request: the token's name, whether it is the admin token, its hash.

    The hash identifies the token in ownership records (it is not the token value).
    """

    name: str
    is_admin: bool
    token_hash: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class PatIdentity:
    """Who a PAT request acts as: the user, in one project, with a role, through a PAT."""

    user: User
    project: Project
    role: str
    pat: PatRecord
