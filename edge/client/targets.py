"""``edge app|app-resource|database ...``: the port-forward targets (``docs/api.md``).

The admin token creates, changes and deletes them (``/api/v1/apps``, ``/api/v1/app-resources``,
``/api/v1/databases``). With a personal access token (``edge login --token edge_...``) the
``list`` commands show the token's project through the public API (``/public-api/apps``,
``/public-api/apps/{id}/resources``, ``/public-api/databases``): what ``edge forward`` can
reach. (``edge resource`` is another thing: the OAuth protected resources.)

``update`` reads the record, changes what the flags say and sends it back whole with
``PUT``, like the other ``update`` commands.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from typing import Any

from edge.client.base import Context, Sub, add_set_option, command, group, items, set_fields
from edge.client.errors import ClientError
from edge.client.http import segment
from edge.client.output import Column
from edge.client.session import looks_like_pat

__all__ = ["add_target_parsers"]

APPS = "/api/v1/apps"
APP_RESOURCES = "/api/v1/app-resources"
DATABASES = "/api/v1/databases"
PROJECTS = "/api/v1/projects"
PUBLIC_APPS = "/public-api/apps"
PUBLIC_DATABASES = "/public-api/databases"
_PROJECT_ID = re.compile(r"p_[1-9A-HJ-NP-Za-km-z]{12}")

APP_COLUMNS = (
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("PROJECT", "project_id"),
    Column("UPDATED", "updated_at"),
)
RESOURCE_COLUMNS = (
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("APP", "app_id"),
    Column("HOST", "host"),
    Column("PORT", "config_port"),
    Column("INTERNAL_PORTS", "config_internal_ports"),
    Column("PROJECT", "project_id"),
)
DATABASE_COLUMNS = (
    Column("ID", "id"),
    Column("NAME", "name"),
    Column("ENGINE", "engine"),
    Column("HOST", "host"),
    Column("PORT", "port"),
    Column("STATUS", "status", status=True),
    Column("PROJECT", "project_id"),
)
FLAGS = {
    "id": "--id",
    "name": "NAME/--name",
    "project_id": "--project",
    "app_id": "--app",
    "host": "--host",
    "config_port": "--port",
    "config_internal_ports": "--internal-port",
    "engine": "--engine",
    "port": "--port",
    "status": "--status",
}
# option (argparse dest) -> field
_RESOURCE_OPTIONS = {
    "host": "host",
    "port": "config_port",
    "internal_ports": "config_internal_ports",
}
_DATABASE_OPTIONS = {"engine": "engine", "host": "host", "port": "port", "status": "status"}


def _with_pat(ctx: Context) -> bool:
    """Whether the command runs with a personal access token (the public listings)."""
    return looks_like_pat(ctx.settings.token or "")


def _project_id(ctx: Context, ref: str) -> str:
    """A project named by its id (``p_...``) or its name."""
    if _PROJECT_ID.fullmatch(ref):
        return ref
    projects = items(ctx.api.call("GET", f"{PROJECTS}/"), "projects")
    found = [p for p in projects if p.get("name") == ref]
    if not found:
        raise ClientError(f"no project named {ref!r} (give its name or its p_... id)")
    return str(found[0]["id"])


def _changes(ctx: Context, doc: dict[str, Any], options: Mapping[str, str]) -> bool:
    """Copy each option given (not None) to its field of ``doc``; whether one was."""
    changed = False
    for option, name in options.items():
        value = getattr(ctx.args, option, None)
        if value is not None:
            doc[name] = value
            changed = True
    return changed


def _by(filters: Mapping[str, str | None]) -> Callable[[dict[str, Any]], bool]:
    return lambda record: all(v is None or record.get(k) == v for k, v in filters.items())


# ---------------------------------------------------------------------------- commands


def _list(kind: str) -> Callable[[Context], int]:
    """``list`` of apps or databases: the admin's (``--project`` filters) or, with a PAT,
    the token's project's."""
    admin, public, columns = {
        "apps": (APPS, PUBLIC_APPS, APP_COLUMNS),
        "databases": (DATABASES, PUBLIC_DATABASES, DATABASE_COLUMNS),
    }[kind]

    def run(ctx: Context) -> int:
        if _with_pat(ctx):
            if ctx.args.project is not None:
                raise ClientError("--project: a personal access token lists its own project", 2)
            return ctx.list(ctx.api.call("GET", public), None, columns)
        query = None
        if ctx.args.project is not None:
            query = {"project_id": _project_id(ctx, ctx.args.project)}
        return ctx.list(ctx.api.call("GET", f"{admin}/", query=query), kind, columns)

    return run


def resource_list(ctx: Context) -> int:
    app, project = ctx.args.app, ctx.args.project
    if _with_pat(ctx):
        if app is None or project is not None:
            raise ClientError("with a personal access token: give --app (and no --project)", 2)
        path = f"{PUBLIC_APPS}/{segment(app)}/resources"
        return ctx.list(ctx.api.call("GET", path), None, RESOURCE_COLUMNS)
    if app is not None:
        doc = ctx.api.call("GET", f"{APPS}/{segment(app)}/resources")
    else:
        query = None if project is None else {"project_id": _project_id(ctx, project)}
        doc = ctx.api.call("GET", f"{APP_RESOURCES}/", query=query)
    return ctx.list(doc, "resources", RESOURCE_COLUMNS)


def _show(prefix: str) -> Callable[[Context], int]:
    def run(ctx: Context) -> int:
        return ctx.show(ctx.api.call("GET", f"{prefix}/{segment(ctx.args.id)}"))

    return run


def _delete(prefix: str, what: str) -> Callable[[Context], int]:
    def run(ctx: Context) -> int:
        ctx.api.call("DELETE", f"{prefix}/{segment(ctx.args.id)}")
        also = " and its resources" if prefix == APPS else ""
        ctx.out.message(f"deleted {what} {ctx.args.id}{also}")
        return 0

    return run


def _new(ctx: Context, doc: dict[str, Any]) -> dict[str, Any]:
    """The common part of a create: ``--id`` (else the edge draws one) and ``--set``."""
    if ctx.args.id is not None:
        doc["id"] = ctx.args.id
    set_fields(doc, ctx.args.set)
    return doc


def app_create(ctx: Context) -> int:
    doc = _new(ctx, {"name": ctx.args.name, "project_id": _project_id(ctx, ctx.args.project)})
    return ctx.show(ctx.api.call("POST", f"{APPS}/", doc, flags=FLAGS))


def resource_create(ctx: Context) -> int:
    doc: dict[str, Any] = {"name": ctx.args.name}
    _changes(ctx, doc, _RESOURCE_OPTIONS)
    _new(ctx, doc)
    path = f"{APPS}/{segment(ctx.args.app)}/resources"
    return ctx.show(ctx.api.call("POST", path, doc, flags=FLAGS))


def database_create(ctx: Context) -> int:
    doc: dict[str, Any] = {"name": ctx.args.name, "project_id": _project_id(ctx, ctx.args.project)}
    _changes(ctx, doc, _DATABASE_OPTIONS)
    _new(ctx, doc)
    return ctx.show(ctx.api.call("POST", f"{DATABASES}/", doc, flags=FLAGS))


def _update(prefix: str, options: Mapping[str, str]) -> Callable[[Context], int]:
    """``GET``, change what the flags say, ``PUT`` back."""

    def run(ctx: Context) -> int:
        path = f"{prefix}/{segment(ctx.args.id)}"
        doc = ctx.api.call("GET", path)
        if not isinstance(doc, dict):
            raise ClientError("unexpected answer from the API: not a JSON object")
        changed = _changes(ctx, doc, {"name": "name", **options})
        for name in ctx.args.unset or ():
            doc.pop(name, None)
            changed = True
        if ctx.args.set:
            set_fields(doc, ctx.args.set)
            changed = True
        if not changed:
            raise ClientError("nothing to change: give at least one option (see --help)", 2)
        return ctx.show(ctx.api.call("PUT", path, doc, flags=FLAGS))

    return run


# ---------------------------------------------------------------------------- parsers


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: an integer 1-65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: an integer 1-65535")
    return port


def _common_write(parser: argparse.ArgumentParser, create: bool) -> None:
    if create:
        parser.add_argument("name", metavar="NAME", help="a one-line name")
        parser.add_argument("--id", help="the id (default: one drawn by the edge)")
    else:
        parser.add_argument("id", metavar="ID")
        parser.add_argument("--name", help="a one-line name")
        parser.add_argument(
            "--unset", action="append", metavar="FIELD", help="put a field back to its default"
        )
    add_set_option(parser)


def _resource_options(parser: argparse.ArgumentParser, create: bool) -> None:
    _common_write(parser, create)
    if create:
        parser.add_argument("--app", required=True, help="the app's id")
    parser.add_argument("--host", required=create, help="host name or IP address it listens on")
    parser.add_argument(
        "--port", type=_port, required=create, help="its port (config_port), reachable by default"
    )
    parser.add_argument(
        "--internal-port",
        dest="internal_ports",
        type=_port,
        action="append",
        metavar="PORT",
        help="another port a tunnel may reach (config_internal_ports); repeatable, "
        "replaces the list",
    )


def _database_options(parser: argparse.ArgumentParser, create: bool) -> None:
    _common_write(parser, create)
    if create:
        parser.add_argument("--project", required=True, help="project id (p_...) or name")
    parser.add_argument("--engine", required=create, choices=("postgres", "redis"))
    parser.add_argument("--host", required=create, help="host name or IP address")
    parser.add_argument(
        "--port", type=_port, help="default: the engine's (5432 postgres, 6379 redis)"
    )
    parser.add_argument(
        "--status", help="created (ready: tunnels may open), creating, failed... (default created)"
    )


def add_target_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    apps = group(sub, "app", "port-forward targets: apps (/api/v1/apps)", common)
    listing = command(
        apps, "list", "list the apps (with a PAT: its project's)", _list("apps"), common
    )
    listing.add_argument("--project", help="only this project's (id or name)")
    command(apps, "show", "show one app", _show(APPS), common, aliases=("get",)).add_argument(
        "id", metavar="ID"
    )
    create = command(apps, "create", "create an app", app_create, common)
    _common_write(create, True)
    create.add_argument("--project", required=True, help="project id (p_...) or name")
    _common_write(
        command(
            apps, "update", "change an app (read, change, write back)", _update(APPS, {}), common
        ),
        False,
    )
    command(
        apps, "delete", "delete an app and its resources", _delete(APPS, "app"), common
    ).add_argument("id", metavar="ID")

    resources = group(
        sub,
        "app-resource",
        "port-forward targets: apps' TCP services (/api/v1/app-resources)",
        common,
    )
    rlist = command(
        resources,
        "list",
        "list app resources (with a PAT: one app's of its project, --app required)",
        resource_list,
        common,
    )
    rlist.add_argument("--app", help="only this app's")
    rlist.add_argument("--project", help="only this project's (id or name)")
    command(
        resources, "show", "show one app resource", _show(APP_RESOURCES), common, aliases=("get",)
    ).add_argument("id", metavar="ID")
    _resource_options(
        command(resources, "create", "create an app resource", resource_create, common), True
    )
    _resource_options(
        command(
            resources,
            "update",
            "change an app resource (read, change, write back)",
            _update(APP_RESOURCES, _RESOURCE_OPTIONS),
            common,
        ),
        False,
    )
    command(
        resources,
        "delete",
        "delete an app resource",
        _delete(APP_RESOURCES, "app resource"),
        common,
    ).add_argument("id", metavar="ID")

    databases = group(
        sub, "database", "port-forward targets: databases (/api/v1/databases)", common
    )
    dlist = command(
        databases,
        "list",
        "list the databases (with a PAT: its project's)",
        _list("databases"),
        common,
    )
    dlist.add_argument("--project", help="only this project's (id or name)")
    command(
        databases, "show", "show one database", _show(DATABASES), common, aliases=("get",)
    ).add_argument("id", metavar="ID")
    _database_options(
        command(databases, "create", "create a database", database_create, common), True
    )
    _database_options(
        command(
            databases,
            "update",
            "change a database (read, change, write back)",
            _update(DATABASES, _DATABASE_OPTIONS),
            common,
        ),
        False,
    )
    command(
        databases, "delete", "delete a database", _delete(DATABASES, "database"), common
    ).add_argument("id", metavar="ID")
