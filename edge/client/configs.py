"""``edge proxy|route|service|certs|resource ...``: the configuration endpoints.

``proxy set`` (or ``proxy update``) sends only the fields its flags change, with ``PATCH``:
a change someone else makes to other fields meanwhile is kept. The other ``update``
commands read the record, change what the flags say and send the whole document back with
``PUT`` (fields left out would take their defaults), so a change made by someone else
between the read and the write is overwritten.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from edge.client.base import Context, Sub, add_set_option, command, group, key_values, set_fields
from edge.client.errors import ClientError
from edge.client.http import segment
from edge.client.output import Column
from edge.tls.cli_parser import add_list_parser

__all__ = ["add_config_parsers"]

PROXIES = "/api/v1/proxy/targets"
ROUTES = "/api/v1/routes"
SERVICES = "/api/v1/services/external"
CERTS = "/api/v1/certificates"
RESOURCES = "/api/v1/resources"


def _changes(ctx: Context, doc: dict[str, Any], options: Mapping[str, str]) -> None:
    """Copy each option that was given (not None) to its field of ``doc``."""
    for option, name in options.items():
        value = getattr(ctx.args, option, None)
        if value is not None:
            doc[name] = value


def _unset(ctx: Context, doc: dict[str, Any]) -> None:
    for name in getattr(ctx.args, "unset", None) or ():
        doc.pop(name, None)


def _require_changes(ctx: Context, options: Iterable[str]) -> None:
    # not "falsy": --disable is False and --priority 0 is 0, both changes
    given = [getattr(ctx.args, name, None) for name in (*options, "set", "unset")]
    if all(value is None or value == [] for value in given):
        raise ClientError("nothing to change: give at least one option (see --help)", 2)


def _replace(
    ctx: Context,
    path: str,
    change: Callable[[dict[str, Any]], None],
    flags: Mapping[str, str],
    options: Iterable[str],
) -> int:
    """``GET path``, ``change`` the document, ``PUT`` it back and show the result."""
    _require_changes(ctx, options)
    doc = ctx.api.call("GET", path)
    if not isinstance(doc, dict):
        raise ClientError("unexpected answer from the API: not a JSON object")
    change(doc)
    set_fields(doc, ctx.option("set"))
    _unset(ctx, doc)
    return ctx.show(ctx.api.call("PUT", path, doc, flags=flags))


def _bool_option(parser: argparse.ArgumentParser, name: str, dest: str, help_text: str) -> None:
    parser.add_argument(
        f"--{name}", dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text
    )


def _unset_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unset",
        action="append",
        metavar="FIELD",
        help="put a field back to its default; repeatable",
    )


# ---------------------------------------------------------------------------- proxies

PROXY_COLUMNS = (
    Column("HOSTNAME", "hostname"),
    Column("TARGET", "target_url"),
    Column("ENABLED", "enabled", status=True),
    Column("HTTP", "enable_http"),
    Column("HTTPS", "enable_https"),
    Column("ROUTES", "route_mode"),
    Column("CREATED", "created_at"),
    Column("CREATED_BY", "created_by"),
)
PROXY_FLAGS = {
    "hostname": "HOST",
    "target_url": "--target",
    "enabled": "--enable/--disable",
    "enable_http": "--http/--no-http",
    "enable_https": "--https/--no-https",
    "preserve_host_header": "--preserve-host/--no-preserve-host",
    "custom_headers": "--header",
    "custom_response_headers": "--response-header",
    "cert_name": "--cert-name",
    "cert_email": "--cert-email",
    "acme_directory_url": "--acme-directory-url",
}
_PROXY_OPTIONS = {
    "target": "target_url",
    "enabled": "enabled",
    "http": "enable_http",
    "https": "enable_https",
    "preserve_host": "preserve_host_header",
    "cert_name": "cert_name",
    "cert_email": "cert_email",
    "acme_directory_url": "acme_directory_url",
}

_HEADERS = (
    ("header", "custom_headers", "remove_header"),
    ("response_header", "custom_response_headers", "remove_response_header"),
)
_HEADER_OPTIONS = ("header", "response_header", "remove_header", "remove_response_header")


def _proxy_path(host: str, *rest: str) -> str:
    return "/".join([PROXIES, segment(host), *rest])


def _header_changes(ctx: Context, doc: dict[str, Any]) -> list[str]:
    """Apply ``--header``/``--remove-header`` (and the response ones) to ``doc``'s maps
    (names compare case-insensitively, as in HTTP); the fields changed."""
    changed = []
    for option, name, removing in _HEADERS:
        added = key_values(getattr(ctx.args, option), f"--{option.replace('_', '-')}")
        removed = {n.lower() for n in getattr(ctx.args, removing, None) or ()}
        if not added and not removed:
            continue
        current = doc.get(name)
        if not isinstance(current, dict):
            current = {}
        lowered = {n.lower() for n in added} | removed
        kept = {k: v for k, v in current.items() if k.lower() not in lowered}
        doc[name] = {**kept, **added}
        changed.append(name)
    return changed


def _header_edits(ctx: Context) -> bool:
    return any(getattr(ctx.args, option, None) for option in _HEADER_OPTIONS)


def proxy_list(ctx: Context) -> int:
    return ctx.list(ctx.api.call("GET", f"{PROXIES}/"), "proxies", PROXY_COLUMNS)


def proxy_show(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", _proxy_path(ctx.args.host)))


def proxy_create(ctx: Context) -> int:
    doc: dict[str, Any] = {"hostname": ctx.args.host}
    _changes(ctx, doc, _PROXY_OPTIONS)
    _header_changes(ctx, doc)
    set_fields(doc, ctx.args.set)
    return ctx.show(ctx.api.call("POST", f"{PROXIES}/", doc, flags=PROXY_FLAGS))


def proxy_set(ctx: Context) -> int:
    """``PATCH`` the fields the flags change (``--unset``: null, the field's default)."""
    _require_changes(ctx, [*_PROXY_OPTIONS, *_HEADER_OPTIONS])
    path = _proxy_path(ctx.args.host)
    patch: dict[str, Any] = {}
    _changes(ctx, patch, _PROXY_OPTIONS)
    if _header_edits(ctx):
        # adding or removing one header changes the whole map: read it, send it back
        current = ctx.api.call("GET", path)
        if not isinstance(current, dict):
            raise ClientError("unexpected answer from the API: not a JSON object")
        for name in _header_changes(ctx, current):
            patch[name] = current[name]
    set_fields(patch, ctx.option("set"))
    for name in getattr(ctx.args, "unset", None) or ():
        patch[name] = None
    return ctx.show(ctx.api.call("PATCH", path, patch, flags=PROXY_FLAGS))


def proxy_delete(ctx: Context) -> int:
    ctx.api.call("DELETE", _proxy_path(ctx.args.host))
    ctx.out.message(f"deleted proxy {ctx.args.host}")
    return 0


def _proxy_options(parser: argparse.ArgumentParser, create: bool) -> None:
    parser.add_argument("host", metavar="HOST", help="the host name (a leading * allowed)")
    parser.add_argument(
        "--target", required=create, metavar="URL", help="upstream URL (target_url)"
    )
    parser.add_argument(
        "--enable", dest="enabled", action="store_const", const=True, help="serve it (enabled)"
    )
    parser.add_argument(
        "--disable", dest="enabled", action="store_const", const=False, help="stop serving it"
    )
    _bool_option(parser, "http", "http", "serve over plain HTTP (enable_http)")
    _bool_option(parser, "https", "https", "serve over HTTPS (enable_https)")
    _bool_option(parser, "preserve-host", "preserve_host", "send the client's Host upstream")
    parser.add_argument(
        "--header",
        action="append",
        metavar="NAME=VALUE",
        help="add a header to requests sent upstream (custom_headers); repeatable",
    )
    parser.add_argument(
        "--response-header",
        action="append",
        metavar="NAME=VALUE",
        help="add a header to responses (custom_response_headers); repeatable",
    )
    parser.add_argument("--cert-name", metavar="NAME", help="certificate name recorded")
    parser.add_argument(
        "--cert-email", metavar="EMAIL", help="ACME account e-mail for its certificate"
    )
    parser.add_argument(
        "--acme-directory-url",
        metavar="URL",
        help="ACME directory of the CA to get its certificate from (https://)",
    )
    if not create:
        parser.add_argument("--remove-header", action="append", metavar="NAME")
        parser.add_argument("--remove-response-header", action="append", metavar="NAME")
        _unset_option(parser)
    add_set_option(parser)


# the proxy sub-resources: each replaces its group of fields as a whole.
# (option, argparse dest, field): the field is what the API names in a 400
Option = tuple[str, str, str]
AUTH_OPTIONS: tuple[Option, ...] = (
    ("--auth-proxy", "auth_proxy", "auth_proxy"),
    ("--mode", "mode", "auth_mode"),
    ("--user", "users", "auth_required_users"),
    ("--email", "emails", "auth_required_emails"),
    ("--group", "groups", "auth_required_groups"),
    ("--scope", "scopes", "auth_allowed_scopes"),
    ("--audience", "audiences", "auth_allowed_audiences"),
    ("--exclude", "excluded", "auth_excluded_paths"),
    ("--pass-headers", "pass_headers", "auth_pass_headers"),
    ("--cookie-name", "cookie_name", "auth_cookie_name"),
    ("--header-prefix", "header_prefix", "auth_header_prefix"),
)
ROUTES_OPTIONS: tuple[Option, ...] = (
    ("--mode", "mode", "route_mode"),
    ("--use", "use", "enabled_routes"),
    ("--skip", "skip", "disabled_routes"),
)
MCP_OPTIONS: tuple[Option, ...] = (
    ("--endpoint", "endpoint", "resource_endpoint"),
    ("--scope", "scopes", "resource_scopes"),
    ("--stateful", "stateful", "resource_stateful"),
    ("--version", "versions", "resource_versions"),
)


def _group_show(part: str) -> Callable[[Context], int]:
    def show(ctx: Context) -> int:
        return ctx.show(ctx.api.call("GET", _proxy_path(ctx.args.host, part)))

    return show


def _group_clear(part: str, what: str) -> Callable[[Context], int]:
    def clear(ctx: Context) -> int:
        ctx.api.call("DELETE", _proxy_path(ctx.args.host, part))
        ctx.out.message(f"{what} of {ctx.args.host} back to the defaults")
        return 0

    return clear


def _group_set(
    part: str, method: str, options: tuple[Option, ...], off: Option | None = None
) -> Callable[[Context], int]:
    """Send the group's fields that were given (``off``: a flag that sends ``False``)."""
    flags = {field: flag for flag, _, field in options}
    if off is not None:
        flags[off[2]] = off[0]

    def set_group(ctx: Context) -> int:
        body: dict[str, Any] = {}
        if off is not None and getattr(ctx.args, off[1]):
            body[off[2]] = False
        _changes(ctx, body, {dest: field for _, dest, field in options})
        set_fields(body, ctx.args.set)
        path = _proxy_path(ctx.args.host, part)
        return ctx.show(ctx.api.call(method, path, body, flags=flags))

    return set_group


def _add_proxy_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    proxies = group(sub, "proxy", "manage proxies (/api/v1/proxy/targets)", common)
    command(proxies, "list", "list the proxies", proxy_list, common)
    show = command(proxies, "show", "show one proxy", proxy_show, common)
    show.add_argument("host", metavar="HOST")
    _proxy_options(command(proxies, "create", "create a proxy", proxy_create, common), True)
    _proxy_options(
        command(
            proxies,
            "set",
            "change the given fields of a proxy, the others kept (PATCH)",
            proxy_set,
            common,
            aliases=("update",),
        ),
        False,
    )
    delete = command(proxies, "delete", "delete a proxy", proxy_delete, common)
    delete.add_argument("host", metavar="HOST")

    auth = group(proxies, "auth", "a proxy's authentication fields (auth_*)", common)
    command(auth, "show", "show the auth fields", _group_show("auth"), common).add_argument(
        "host", metavar="HOST"
    )
    auth_set = command(
        auth,
        "set",
        "turn authentication on with these settings (replaces every auth_* field)",
        _group_set("auth", "POST", AUTH_OPTIONS, ("--disabled", "disabled", "auth_enabled")),
        common,
    )
    auth_set.add_argument("host", metavar="HOST")
    auth_set.add_argument("--auth-proxy", metavar="HOST", help="the auth service (auth_proxy)")
    auth_set.add_argument("--mode", choices=("forward", "redirect", "passthrough"))
    for option, dest, what in (
        ("--user", "users", "required user"),
        ("--email", "emails", "required e-mail"),
        ("--group", "groups", "required group"),
        ("--scope", "scopes", "allowed scope"),
        ("--audience", "audiences", "allowed audience"),
        ("--exclude", "excluded", "path without authentication"),
    ):
        auth_set.add_argument(option, dest=dest, action="append", help=f"a {what}; repeatable")
    _bool_option(auth_set, "pass-headers", "pass_headers", "pass the auth headers upstream")
    auth_set.add_argument("--cookie-name", metavar="NAME")
    auth_set.add_argument("--header-prefix", metavar="PREFIX")
    auth_set.add_argument(
        "--disabled", action="store_true", help="store the settings with authentication off"
    )
    add_set_option(auth_set)
    clear = command(
        auth,
        "clear",
        "turn authentication off (auth_* to defaults)",
        _group_clear("auth", "authentication"),
        common,
    )
    clear.add_argument("host", metavar="HOST")

    routes = group(proxies, "routes", "which routes apply to a proxy", common)
    command(
        routes, "show", "show route_mode and the route lists", _group_show("routes"), common
    ).add_argument("host", metavar="HOST")
    routes_set = command(
        routes,
        "set",
        "set route_mode and the route lists (as a whole)",
        _group_set("routes", "PUT", ROUTES_OPTIONS),
        common,
    )
    routes_set.add_argument("host", metavar="HOST")
    routes_set.add_argument("--mode", choices=("all", "selective", "none"), help="route_mode")
    routes_set.add_argument(
        "--use", action="append", metavar="ROUTE_ID", help="enabled_routes (selective mode)"
    )
    routes_set.add_argument(
        "--skip", action="append", metavar="ROUTE_ID", help="disabled_routes (all mode)"
    )
    add_set_option(routes_set)

    mcp = group(proxies, "mcp", "a proxy's protected-resource metadata (resource_*)", common)
    command(mcp, "show", "show the resource_* fields", _group_show("mcp"), common).add_argument(
        "host", metavar="HOST"
    )
    mcp_set = command(
        mcp,
        "set",
        "set the resource_* fields (as a whole)",
        _group_set("mcp", "POST", MCP_OPTIONS),
        common,
    )
    mcp_set.add_argument("host", metavar="HOST")
    mcp_set.add_argument("--endpoint", metavar="PATH_OR_URL")
    mcp_set.add_argument("--scope", dest="scopes", action="append", help="repeatable")
    mcp_set.add_argument("--version", dest="versions", action="append", help="repeatable")
    _bool_option(mcp_set, "stateful", "stateful", "resource_stateful")
    add_set_option(mcp_set)
    mcp_clear = command(
        mcp,
        "clear",
        "put the resource_* fields back to defaults",
        _group_clear("mcp", "the resource metadata"),
        common,
    )
    mcp_clear.add_argument("host", metavar="HOST")


# ---------------------------------------------------------------------------- routes


def _target(record: Mapping[str, Any]) -> str:
    return f"{record.get('target_type')}:{record.get('target_value')}"


def _route_where(record: Mapping[str, Any]) -> str:
    hosts = record.get("proxy_hostnames") or []
    return ",".join(hosts) if record.get("scope") == "proxy" and hosts else "global"


ROUTE_COLUMNS = (
    Column("ID", "route_id"),
    Column("PATH", "path_pattern"),
    Column("TARGET", _target),
    Column("PRIORITY", "priority"),
    Column("METHODS", "methods"),
    Column("SCOPE", _route_where),
    Column("ENABLED", "enabled", status=True),
    Column("CREATED", "created_at"),
)
ROUTE_FLAGS = {
    "route_id": "ID",
    "path_pattern": "--path",
    "target_type": "--target-type",
    "target_value": "--target",
    "priority": "--priority",
    "methods": "--method",
    "is_regex": "--regex",
    "enabled": "--enable/--disable",
    "scope": "--proxy",
    "proxy_hostnames": "--proxy",
    "description": "--description",
}
_ROUTE_OPTIONS = {
    "path": "path_pattern",
    "target_type": "target_type",
    "target": "target_value",
    "priority": "priority",
    "methods": "methods",
    "regex": "is_regex",
    "enabled": "enabled",
    "description": "description",
}


def _route_change(ctx: Context, doc: dict[str, Any]) -> None:
    _changes(ctx, doc, _ROUTE_OPTIONS)
    if ctx.args.proxies:
        doc["scope"] = "proxy"
        doc["proxy_hostnames"] = ctx.args.proxies
    elif getattr(ctx.args, "global_scope", False):
        doc["scope"] = "global"
        doc["proxy_hostnames"] = []


def _route_path(route_id: str) -> str:
    return f"{ROUTES}/{segment(route_id)}"


def route_list(ctx: Context) -> int:
    """The routes in the order the edge tries them (the API's order)."""
    query = {"scope": ctx.args.scope} if ctx.args.scope else None
    return ctx.list(ctx.api.call("GET", f"{ROUTES}/", query=query), "routes", ROUTE_COLUMNS)


def route_show(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", _route_path(ctx.args.route_id)))


def route_create(ctx: Context) -> int:
    doc: dict[str, Any] = {}
    if ctx.args.route_id is not None:  # else the edge generates one (r_...)
        doc["route_id"] = ctx.args.route_id
    _route_change(ctx, doc)
    set_fields(doc, ctx.args.set)
    return ctx.show(ctx.api.call("POST", f"{ROUTES}/", doc, flags=ROUTE_FLAGS))


def route_update(ctx: Context) -> int:
    path = _route_path(ctx.args.route_id)
    options = [*_ROUTE_OPTIONS, "proxies", "global_scope"]
    return _replace(ctx, path, lambda doc: _route_change(ctx, doc), ROUTE_FLAGS, options)


def route_delete(ctx: Context) -> int:
    ctx.api.call("DELETE", _route_path(ctx.args.route_id))
    ctx.out.message(f"deleted route {ctx.args.route_id}")
    return 0


def _route_options(parser: argparse.ArgumentParser, create: bool) -> None:
    if create:
        parser.add_argument(
            "route_id", metavar="ID", nargs="?", help="the route's id (default: generated)"
        )
    else:
        parser.add_argument("route_id", metavar="ID")
    parser.add_argument("--path", required=create, help="path prefix, or a regex with --regex")
    parser.add_argument(
        "--target-type", required=create, choices=("port", "service", "hostname", "url")
    )
    parser.add_argument(
        "--target", required=create, metavar="VALUE", help="port, service, host[:port] or URL"
    )
    parser.add_argument("--priority", type=int, help="higher is tried first (default 50)")
    parser.add_argument(
        "--method", dest="methods", action="append", metavar="METHOD", help="repeatable"
    )
    _bool_option(parser, "regex", "regex", "path is a regular expression (is_regex)")
    parser.add_argument(
        "--enable", dest="enabled", action="store_const", const=True, help="use it (enabled)"
    )
    parser.add_argument(
        "--disable", dest="enabled", action="store_const", const=False, help="ignore it"
    )
    parser.add_argument(
        "--proxy",
        dest="proxies",
        action="append",
        metavar="HOST",
        help="only for this proxy (scope proxy); repeatable",
    )
    if not create:
        parser.add_argument(
            "--global",
            dest="global_scope",
            action="store_true",
            default=None,
            help="apply to every proxy",
        )
        _unset_option(parser)
    parser.add_argument("--description")
    add_set_option(parser)


def _add_route_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    routes = group(sub, "route", "manage routes (/api/v1/routes)", common)
    listing = command(
        routes, "list", "list the routes in the order they are tried", route_list, common
    )
    listing.add_argument(
        "--scope", choices=("global", "proxy"), help="only the global or the proxy-scoped routes"
    )
    command(routes, "show", "show one route", route_show, common).add_argument(
        "route_id", metavar="ID"
    )
    _route_options(command(routes, "create", "create a route", route_create, common), True)
    _route_options(
        command(
            routes, "update", "change a route (read, change, write back)", route_update, common
        ),
        False,
    )
    command(routes, "delete", "delete a route", route_delete, common).add_argument(
        "route_id", metavar="ID"
    )


# ---------------------------------------------------------------------------- services

SERVICE_COLUMNS = (
    Column("NAME", "service_name"),
    Column("URL", "target_url"),
    Column("TYPE", "service_type"),
    Column("ROUTING", "routing_enabled", status=True),
    Column("CREATED", "created_at"),
)
SERVICE_FLAGS = {"service_name": "NAME", "target_url": "--url", "description": "--description"}


def service_list(ctx: Context) -> int:
    return ctx.list(ctx.api.call("GET", SERVICES), "services", SERVICE_COLUMNS)


def service_show(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", f"{SERVICES}/{segment(ctx.args.name)}"))


def service_create(ctx: Context) -> int:
    doc: dict[str, Any] = {"service_name": ctx.args.name, "target_url": ctx.args.url}
    if ctx.args.description is not None:
        doc["description"] = ctx.args.description
    set_fields(doc, ctx.args.set)
    return ctx.show(ctx.api.call("POST", SERVICES, doc, flags=SERVICE_FLAGS))


def service_delete(ctx: Context) -> int:
    ctx.api.call("DELETE", f"{SERVICES}/{segment(ctx.args.name)}")
    ctx.out.message(f"deleted service {ctx.args.name}")
    return 0


def _add_service_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    services = group(sub, "service", "manage external services (/api/v1/services/external)", common)
    command(services, "list", "list the external services", service_list, common)
    command(services, "show", "show one service", service_show, common).add_argument(
        "name", metavar="NAME"
    )
    create = command(services, "create", "create an external service", service_create, common)
    create.add_argument("name", metavar="NAME")
    create.add_argument("--url", required=True, help="upstream URL (target_url)")
    create.add_argument("--description")
    add_set_option(create)
    command(services, "delete", "delete a service", service_delete, common).add_argument(
        "name", metavar="NAME"
    )


# ---------------------------------------------------------------------------- certificates


def cert_list(ctx: Context) -> int:
    """``edge certs list``: the same command as ``edge cert list`` (edge/certs/listing.py)."""
    from edge.certs.listing import run_list

    return run_list(ctx.args)


def cert_show(ctx: Context) -> int:
    doc = ctx.api.call("GET", f"{CERTS}/{segment(ctx.args.name)}")
    return ctx.show(doc, status_fields=("status", "problem", "expired"))


def cert_delete(ctx: Context) -> int:
    ctx.api.call("DELETE", f"{CERTS}/{segment(ctx.args.name)}")
    ctx.out.message(f"deleted certificate {ctx.args.name} and its cert:domain: keys")
    return 0


def _add_cert_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    certs = group(
        sub,
        "certs",
        "certificates through the API (/api/v1/certificates); 'edge cert' works on Redis "
        "directly; 'list' is one command under both names (it reads either)",
        common,
    )
    add_list_parser(certs, common).set_defaults(handler=cert_list)
    command(certs, "show", "show one certificate (never its key)", cert_show, common).add_argument(
        "name", metavar="NAME"
    )
    command(
        certs, "delete", "delete a certificate and its domain keys", cert_delete, common
    ).add_argument("name", metavar="NAME")


# ---------------------------------------------------------------------------- resources

RESOURCE_COLUMNS = (
    Column("URI", "uri"),
    Column("NAME", "name"),
    Column("SCOPES", "scopes"),
    Column("CREATED", "created_at"),
    Column("CREATED_BY", "created_by"),
)
RESOURCE_FLAGS = {
    "uri": "URI",
    "name": "--name",
    "description": "--description",
    "scopes": "--scope",
}


def _resource_path(uri: str) -> str:
    return f"{RESOURCES}/{segment(uri)}"


def _resource_change(ctx: Context, doc: dict[str, Any]) -> None:
    _changes(ctx, doc, {"name": "name", "description": "description", "scopes": "scopes"})


def resource_list(ctx: Context) -> int:
    return ctx.list(ctx.api.call("GET", f"{RESOURCES}/"), "resources", RESOURCE_COLUMNS)


def resource_show(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", _resource_path(ctx.args.uri)))


def resource_create(ctx: Context) -> int:
    doc: dict[str, Any] = {"uri": ctx.args.uri}
    _resource_change(ctx, doc)
    set_fields(doc, ctx.args.set)
    return ctx.show(ctx.api.call("POST", f"{RESOURCES}/", doc, flags=RESOURCE_FLAGS))


def resource_update(ctx: Context) -> int:
    path = _resource_path(ctx.args.uri)
    options = ("name", "description", "scopes")
    return _replace(ctx, path, lambda doc: _resource_change(ctx, doc), RESOURCE_FLAGS, options)


def resource_delete(ctx: Context) -> int:
    ctx.api.call("DELETE", _resource_path(ctx.args.uri))
    ctx.out.message(f"deleted resource {ctx.args.uri}")
    return 0


def _access_token(ctx: Context) -> str:
    """The token to check: ``--access-token``, else (or ``-``) the first line of stdin
    (asked for without echo on a terminal), so it stays out of the shell's history."""
    given = ctx.args.access_token
    if given is not None and given != "-":
        return str(given)
    if ctx.option("token") == "-":
        raise ClientError("--token - and the access token cannot both come from stdin", 2)
    if sys.stdin.isatty():
        try:
            line = getpass.getpass("access token: ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            raise ClientError("no access token given", 2) from None
    else:
        line = sys.stdin.readline()
    token = line.strip()
    if not token:
        raise ClientError("no access token: give --access-token TOKEN or one on stdin", 2)
    return token


def resource_validate_token(ctx: Context) -> int:
    token = _access_token(ctx)
    path = f"{_resource_path(ctx.args.uri)}/validate-token"
    doc = ctx.api.call("POST", path, {"token": token})
    ctx.show(doc)
    if isinstance(doc, dict) and doc.get("valid") is True:
        return 0
    reason = doc.get("error") if isinstance(doc, dict) else None
    raise ClientError(f"the token is not valid for {ctx.args.uri}: {reason or 'unknown'}")


def resource_auto_register(ctx: Context) -> int:
    doc = ctx.api.call("POST", f"{RESOURCES}/auto-register")
    if not isinstance(doc, dict):
        raise ClientError("unexpected answer from the API: not a JSON object")
    ctx.show(doc)
    counts = (len(doc.get("created") or ()), len(doc.get("existing") or ()))
    skipped = len(doc.get("skipped") or ())
    ctx.out.message(f"{counts[0]} created, {counts[1]} already registered, {skipped} skipped")
    return 0


def _resource_options(parser: argparse.ArgumentParser, create: bool) -> None:
    parser.add_argument("uri", metavar="URI", help="https://host[:port][/path]")
    parser.add_argument("--name", required=create, help="a one-line name")
    parser.add_argument("--description")
    parser.add_argument(
        "--scope", dest="scopes", action="append", metavar="SCOPE", help="repeatable"
    )
    if not create:
        _unset_option(parser)
    add_set_option(parser)


def _add_resource_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    resources = group(sub, "resource", "manage protected resources (/api/v1/resources)", common)
    command(resources, "list", "list the protected resources", resource_list, common)
    command(resources, "show", "show one resource", resource_show, common).add_argument(
        "uri", metavar="URI"
    )
    _resource_options(
        command(resources, "create", "create a resource", resource_create, common), True
    )
    _resource_options(
        command(
            resources,
            "update",
            "change a resource (read, change, write back)",
            resource_update,
            common,
        ),
        False,
    )
    command(resources, "delete", "delete a resource", resource_delete, common).add_argument(
        "uri", metavar="URI"
    )
    check = command(
        resources,
        "validate-token",
        "check an access token of the edge's OAuth server for a resource (exit status 1: "
        "not valid)",
        resource_validate_token,
        common,
    )
    check.add_argument("uri", metavar="URI")
    check.add_argument(
        "--access-token",
        metavar="TOKEN",
        help="the token to check (default, or '-': the first line of stdin)",
    )
    command(
        resources,
        "auto-register",
        "create a record for every protected proxy that has none (admin token)",
        resource_auto_register,
        common,
    )


def add_config_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    _add_proxy_parsers(sub, common)
    _add_route_parsers(sub, common)
    _add_service_parsers(sub, common)
    _add_cert_parsers(sub, common)
    _add_resource_parsers(sub, common)
