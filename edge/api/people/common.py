"""What the people endpoints (:mod:`edge.api.people.directory`, :mod:`edge.api.people.pats`) share:
body and field types, path and query parameters, and their errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

import msgspec

from edge.api.http import ApiError, Conflict, Forbidden, InvalidBody, NotFound
from edge.api.people.auth import PeopleContext
from edge.api.people.store import valid_id
from edge.api.request import ApiRequest
from edge.auth.secrets import B58_CLASS

__all__ = [
    "DisplayName",
    "PeopleScope",
    "UserId",
    "project_param",
    "query_user",
    "read_json",
]

# 1-100 characters, no control characters (checked for blankness in read_json)
DisplayName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")
]
UserId = Annotated[str, msgspec.Meta(pattern=rf"^u_{B58_CLASS}{{12}}$")]

_RULES = {
    "name": "name must be 1 to 100 characters, not blank, without control characters",
    "email": "email must be an e-mail address",
    "user_id": "user_id must be a user id: 'u_' and 12 base58 characters",
    "expires_at": "expires_at must be an RFC 3339 time with a timezone, in the future, or null",
}
_PROJECT_NAME_RULE = (
    "name must be 1 to 64 characters of a-z, 0-9, '_', '.' and '-', "
    "starting with a letter or a digit"
)

S = TypeVar("S", bound=msgspec.Struct)


class InvalidQuery(ApiError):
    status = 400
    code = "invalid_query"
    public_message = "the query string is not valid"


class NotAMember(ApiError):
    status = 403
    code = "not_a_member"
    public_message = "the user is not an accepted member of this project"


class LastOwnerConflict(Conflict):
    code = "last_owner"
    public_message = "a project keeps at least one accepted owner: make another member owner first"


class TokenLimit(Conflict):
    code = "token_limit_reached"


def user_not_found() -> NotFound:
    return NotFound(code="user_not_found", public_message="no user with this id")


def project_not_found() -> NotFound:
    return NotFound(code="project_not_found", public_message="no project with this id")


def member_not_found() -> NotFound:
    return NotFound(code="member_not_found", public_message="the user is not a member")


def pat_not_found() -> NotFound:
    return NotFound(code="token_not_found", public_message="no such token in this project")


def not_token_owner() -> Forbidden:
    return Forbidden(
        "not the token's owner",
        public_message="only the token's owner or a project owner may revoke it",
    )


async def read_json(req: ApiRequest[Any], kind: type[S], *, project_name: bool = False) -> S:
    """The required JSON body, its field rules said in words instead of regexes."""
    try:
        body = await req.json(kind, required=True)
    except InvalidBody as err:
        msg = err.public_message
        if err.field in _RULES and ("regex" in msg or "length" in msg or "timezone" in msg):
            err.public_message = (
                _PROJECT_NAME_RULE if project_name and err.field == "name" else _RULES[err.field]
            )
        raise
    assert body is not None
    name = getattr(body, "name", None)
    if not project_name and isinstance(name, str) and not name.strip():
        raise InvalidBody("blank name", public_message=_RULES["name"], field="name")
    return body


def user_param(req: ApiRequest[Any]) -> str:
    uid = req.params["user_id"]
    if not valid_id("u", uid):
        raise user_not_found()  # never reaches Redis
    return uid


def project_param(req: ApiRequest[Any]) -> str:
    pid = req.params["project_id"]
    if not valid_id("p", pid):
        raise project_not_found()
    return pid


def query_user(req: ApiRequest[Any]) -> str:
    """The acting user of ``?user_id=...`` (required, once, and nothing else)."""
    _, _, query = req.ex.target.partition(b"?")
    try:
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidQuery("undecodable query") from None
    found: list[str] = []
    for name, value in pairs:
        if name != "user_id":
            raise InvalidQuery(
                "unknown parameter",
                public_message="unknown query parameter (only user_id is accepted)",
                field=name,
            )
        found.append(value)
    if len(found) != 1:
        raise InvalidQuery(
            "user_id missing or repeated",
            public_message="send the acting user once: ?user_id=u_...",
            field="user_id",
        )
    if not valid_id("u", found[0]):
        raise InvalidQuery("bad user_id", public_message=_RULES["user_id"], field="user_id")
    return found[0]


@dataclass(frozen=True, slots=True)
class PeopleScope:
    """What the admin's people endpoints act through (the admin token's own identity
    adds nothing to them)."""

    people: PeopleContext
