"""``edge user|project|pat ...``: users, projects, memberships and personal access tokens.

A project may be named by its id (``p_...``) or its name, a user by id (``u_...``) or
e-mail address: a name is looked up in the list first.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.client.base import Context, Sub, command, group, items
from edge.client.errors import ClientError
from edge.client.http import segment
from edge.client.output import Column

__all__ = ["add_people_parsers", "parse_duration"]

USERS = "/api/v1/users"
PROJECTS = "/api/v1/projects"
_B58 = "[1-9A-HJ-NP-Za-km-z]"
_ID_RE = {kind: re.compile(rf"{kind}_{_B58}{{12}}") for kind in "upt"}
_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

USER_COLUMNS = (
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("EMAIL", "email"),
    Column("CREATED", "created_at"),
)
PROJECT_COLUMNS = (Column("ID", "id"), Column("NAME", "name"), Column("CREATED", "created_at"))
PAT_COLUMNS = (
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("PREFIX", "token_prefix"),
    Column("STATUS", "status", status=True),
    Column("EXPIRES", "expires_at"),
    Column("LAST_USED", "last_used_at"),
    Column("CREATED", "created_at"),
)


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``2w``, ``1d12h``: a positive duration."""
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ClientError(f"invalid duration {text!r}: use e.g. 30d, 12h, 2w, 1d12h", 2)
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ClientError(f"invalid duration {text!r}: must be more than zero", 2)
    return timedelta(seconds=seconds)


def _project_id(ctx: Context, ref: str) -> str:
    if _ID_RE["p"].fullmatch(ref):
        return ref
    found = [
        p for p in items(ctx.api.call("GET", f"{PROJECTS}/"), "projects") if p.get("name") == ref
    ]
    if not found:
        raise ClientError(f"no project named {ref!r} (give its name or its p_... id)")
    return str(found[0]["id"])


def _user_id(ctx: Context, ref: str) -> str:
    if _ID_RE["u"].fullmatch(ref):
        return ref
    wanted = ref.lower()
    users = items(ctx.api.call("GET", f"{USERS}/"), "users")
    found = [u for u in users if str(u.get("email", "")).lower() == wanted]
    if not found:
        raise ClientError(f"no user with the e-mail address {ref!r} (give it or a u_... id)")
    return str(found[0]["id"])


# ---------------------------------------------------------------------------- users


def user_list(ctx: Context) -> int:
    return ctx.list(ctx.api.call("GET", f"{USERS}/"), "users", USER_COLUMNS)


def user_create(ctx: Context) -> int:
    body = {"name": ctx.args.name, "email": ctx.args.email}
    flags = {"name": "--name", "email": "--email"}
    return ctx.show(ctx.api.call("POST", f"{USERS}/", body, flags=flags))


def user_show(ctx: Context) -> int:
    uid = _user_id(ctx, ctx.args.user)
    return ctx.show(ctx.api.call("GET", f"{USERS}/{segment(uid)}"))


# ---------------------------------------------------------------------------- projects


def project_list(ctx: Context) -> int:
    return ctx.list(ctx.api.call("GET", f"{PROJECTS}/"), "projects", PROJECT_COLUMNS)


def project_create(ctx: Context) -> int:
    body = {"name": ctx.args.name}
    return ctx.show(ctx.api.call("POST", f"{PROJECTS}/", body, flags={"name": "NAME"}))


def project_show(ctx: Context) -> int:
    pid = _project_id(ctx, ctx.args.project)
    return ctx.show(ctx.api.call("GET", f"{PROJECTS}/{segment(pid)}"))


def _member_path(ctx: Context) -> str:
    pid = _project_id(ctx, ctx.args.project)
    uid = _user_id(ctx, ctx.args.user)
    return f"{PROJECTS}/{segment(pid)}/members/{segment(uid)}"


def project_member_set(ctx: Context) -> int:
    body = {"role": ctx.args.role, "accepted": ctx.args.accepted}
    flags = {"role": "--role", "accepted": "--accepted"}
    return ctx.show(ctx.api.call("PUT", _member_path(ctx), body, flags=flags))


def project_member_remove(ctx: Context) -> int:
    ctx.api.call("DELETE", _member_path(ctx))
    ctx.out.message(
        f"removed {ctx.args.user} from project {ctx.args.project} (their tokens there revoked)"
    )
    return 0


# ---------------------------------------------------------------------------- PATs


def _pat_base(ctx: Context) -> tuple[str, str]:
    pid = _project_id(ctx, ctx.args.project)
    uid = _user_id(ctx, ctx.args.user)
    return f"{PROJECTS}/{segment(pid)}/tokens", uid


def pat_list(ctx: Context) -> int:
    path, uid = _pat_base(ctx)
    return ctx.list(ctx.api.call("GET", path, query={"user_id": uid}), None, PAT_COLUMNS)


def pat_create(ctx: Context) -> int:
    expires: str | None = ctx.args.expires
    if ctx.args.expires_in is not None:
        moment = datetime.now(UTC) + parse_duration(ctx.args.expires_in)
        expires = moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    path, uid = _pat_base(ctx)
    body: dict[str, Any] = {"user_id": uid, "name": ctx.args.name, "expires_at": expires}
    flags = {"user_id": "--user", "name": "NAME", "expires_at": "--expires/--expires-in"}
    doc = ctx.api.call("POST", path, body, flags=flags)
    ctx.show(doc)
    print("edge: store the token now: it is shown this once", file=sys.stderr)
    return 0


def pat_revoke(ctx: Context) -> int:
    path, uid = _pat_base(ctx)
    doc = ctx.api.call("DELETE", f"{path}/{segment(ctx.args.token_id)}", query={"user_id": uid})
    return ctx.show(doc)


def pat_me(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", "/public-api/me"))


def _pat_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", required=True, help="project id (p_...) or name")
    parser.add_argument(
        "--user", required=True, help="the user acting (u_... id or e-mail address)"
    )


def add_people_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    users = group(sub, "user", "manage users (/api/v1/users; admin)", common)
    command(users, "list", "list the users", user_list, common)
    create = command(users, "create", "create a user", user_create, common)
    create.add_argument("--name", required=True, help="display name")
    create.add_argument("--email", required=True, help="e-mail address (unique)")
    show = command(users, "show", "show a user and their memberships", user_show, common)
    show.add_argument("user", metavar="USER", help="u_... id or e-mail address")

    projects = group(
        sub, "project", "manage projects and members (/api/v1/projects; admin)", common
    )
    command(projects, "list", "list the projects", project_list, common)
    pcreate = command(projects, "create", "create a project", project_create, common)
    pcreate.add_argument("name", metavar="NAME")
    pshow = command(projects, "show", "show a project and its members", project_show, common)
    pshow.add_argument("project", metavar="PROJECT", help="p_... id or name")
    mset = command(
        projects, "member-set", "add a member or change their role", project_member_set, common
    )
    mset.add_argument("project", metavar="PROJECT", help="p_... id or name")
    mset.add_argument("user", metavar="USER", help="u_... id or e-mail address")
    mset.add_argument(
        "--role", required=True, choices=("owner", "maintainer", "modifier", "viewer")
    )
    mset.add_argument(
        "--accepted",
        action="store_true",
        help="the membership is active now (without it: an invitation, which grants nothing)",
    )
    mremove = command(
        projects,
        "member-remove",
        "remove a member (revokes their tokens in the project)",
        project_member_remove,
        common,
    )
    mremove.add_argument("project", metavar="PROJECT", help="p_... id or name")
    mremove.add_argument("user", metavar="USER", help="u_... id or e-mail address")

    pats = group(sub, "pat", "personal access tokens (admin, acting for a user)", common)
    _pat_options(command(pats, "list", "list a user's tokens in a project", pat_list, common))
    pat_new = command(pats, "create", "create a token; its value is shown once", pat_create, common)
    pat_new.add_argument("name", metavar="NAME")
    _pat_options(pat_new)
    when = pat_new.add_mutually_exclusive_group()
    when.add_argument("--expires", metavar="TIME", help="RFC 3339 time, e.g. 2030-01-01T00:00:00Z")
    when.add_argument("--expires-in", metavar="DURATION", help="e.g. 90d, 12h, 2w")
    command(
        pats,
        "me",
        "who a personal access token is (/public-api/me; call it with --token PAT)",
        pat_me,
        common,
    )
    revoke = command(pats, "revoke", "revoke a token", pat_revoke, common)
    revoke.add_argument("token_id", metavar="TOKEN_ID", help="t_... id")
    _pat_options(revoke)
