"""``edge oauth ...``: the OAuth server's admin surface (``/api/v1/oauth``, admin token).

* ``clients [list|show ID|delete ID]``: registered clients; ``delete`` revokes every token
  issued to the client as well.
* ``tokens [list [--client C] [--user U]|show JTI|revoke JTI]``: live access tokens;
  ``revoke`` revokes the token's whole grant family (its refresh tokens included).
* ``sessions [list|show ID|revoke ID]``: signed-in browsers; ``revoke`` signs one out.
* ``rotate-key``, ``status``.
* ``routes-setup [--auth-host HOST]``: the global routes that send the OAuth endpoints'
  paths of every proxy to the auth host (through ``/api/v1/routes``). Each route is created
  when missing and put back when it differs; running it again changes nothing and says so.

``clients``, ``tokens`` and ``sessions`` alone list.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from edge.client.base import Context, Handler, Sub, command, group, items
from edge.client.errors import ClientError, one_line
from edge.client.http import segment
from edge.client.output import Column

__all__ = ["OAUTH_ROUTES", "ROUTE_PRIORITY", "add_oauth_parsers", "wanted_route"]

PATH = "/api/v1/oauth"
ROUTES = "/api/v1/routes"
ROUTE_PRIORITY = 95
# route id -> the path every proxy hands to the auth host (the list, in its order)
OAUTH_ROUTES: tuple[tuple[str, str], ...] = (
    ("oauth-authorize", "/authorize"),
    ("oauth-token", "/token"),
    ("oauth-callback", "/callback"),
    ("oauth-verify", "/verify"),
    ("oauth-register", "/register"),
    ("oauth-jwks", "/jwks"),
    ("oauth-revoke", "/revoke"),
    ("oauth-introspect", "/introspect"),
    ("oauth-metadata", "/.well-known/oauth-authorization-server"),
)
# the fields routes-setup decides; any other (description, created_at...) is left alone
_DECIDED = ("path_pattern", "target_type", "target_value", "priority", "is_regex", "enabled",
            "scope", "proxy_hostnames", "methods")  # fmt: skip

CLIENT_COLUMNS = (
    Column("CLIENT_ID", "client_id"),
    Column("NAME", "client_name"),
    Column("AUTH", "token_endpoint_auth_method"),
    Column("SOURCE", "source"),
    Column("REDIRECT_URIS", "redirect_uris"),
    Column("ISSUED", "client_id_issued_at"),
    Column("EXPIRES", "expires_at"),
)
TOKEN_COLUMNS = (
    Column("JTI", "jti"),
    Column("CLIENT_ID", "client_id"),
    Column("LOGIN", "login"),
    Column("SCOPE", "scope"),
    Column("ISSUED", "issued_at"),
    Column("EXPIRES", "expires_at"),
    Column("REVOKED", "revoked"),
)
SESSION_COLUMNS = (
    Column("ID", "id"),
    Column("LOGIN", "login"),
    Column("GITHUB_ID", "github_id"),
    Column("CREATED", "created_at"),
    Column("EXPIRES", "expires_at"),
    Column("USER_AGENT", "user_agent"),
)
SETUP_COLUMNS = (
    Column("ROUTE", "route_id"),
    Column("PATH", "path_pattern"),
    Column("TARGET", "target_value"),
    Column("ACTION", "action"),
)


def _list(ctx: Context, doc: Any, key: str, columns: tuple[Column, ...]) -> int:
    """The records, then (on stderr) the keys the edge skipped because they are damaged."""
    ctx.list(doc, key, columns)
    damaged = doc.get("damaged") if isinstance(doc, dict) else None
    if isinstance(damaged, list) and damaged:
        names = ", ".join(one_line(str(k)) for k in damaged[:10])
        more = f" and {len(damaged) - 10} more" if len(damaged) > 10 else ""
        print(
            f"edge: {len(damaged)} damaged record(s) skipped (the edge's log says why): "
            f"{names}{more}",
            file=sys.stderr,
        )
    return 0


def _document(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ClientError("unexpected answer from the API: not a JSON object")
    return doc


# ---------------------------------------------------------------------------- clients


def clients_list(ctx: Context) -> int:
    return _list(ctx, ctx.api.call("GET", f"{PATH}/clients"), "clients", CLIENT_COLUMNS)


def clients_show(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", f"{PATH}/clients/{segment(ctx.args.client_id)}"))


def clients_delete(ctx: Context) -> int:
    doc = _document(ctx.api.call("DELETE", f"{PATH}/clients/{segment(ctx.args.client_id)}"))
    name = one_line(ctx.args.client_id)
    revoked = doc.get("revoked", 0)
    if doc.get("deleted"):
        ctx.out.message(f"deleted client {name}; {revoked} token(s) revoked")
    else:
        ctx.out.message(f"client {name} has no stored record; {revoked} token(s) revoked")
    return 0


# ---------------------------------------------------------------------------- tokens


def tokens_list(ctx: Context) -> int:
    query: dict[str, str] = {}
    if ctx.option("client"):
        query["client_id"] = ctx.args.client
    if ctx.option("user"):
        query["user"] = ctx.args.user
    doc = ctx.api.call("GET", f"{PATH}/tokens", query=query or None)
    return _list(ctx, doc, "tokens", TOKEN_COLUMNS)


def tokens_show(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", f"{PATH}/tokens/{segment(ctx.args.jti)}"))


def tokens_revoke(ctx: Context) -> int:
    doc = _document(ctx.api.call("DELETE", f"{PATH}/tokens/{segment(ctx.args.jti)}"))
    ctx.out.message(
        f"revoked token {one_line(ctx.args.jti)} and its grant family "
        f"({doc.get('revoked', 0)} access and refresh token(s))"
    )
    return 0


# ---------------------------------------------------------------------------- sessions


def sessions_list(ctx: Context) -> int:
    return _list(ctx, ctx.api.call("GET", f"{PATH}/sessions"), "sessions", SESSION_COLUMNS)


def sessions_show(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", f"{PATH}/sessions/{segment(ctx.args.session_id)}"))


def sessions_revoke(ctx: Context) -> int:
    ctx.api.call("DELETE", f"{PATH}/sessions/{segment(ctx.args.session_id)}")
    ctx.out.message(f"signed out browser session {one_line(ctx.args.session_id)}")
    return 0


# ---------------------------------------------------------------------------- server


def oauth_status(ctx: Context) -> int:
    return ctx.show(ctx.api.call("GET", f"{PATH}/status"))


def rotate_key(ctx: Context) -> int:
    doc = _document(ctx.api.call("POST", f"{PATH}/keys/rotate"))
    ctx.show(doc)
    ctx.out.message(
        "new signing key in use; the previous one stays published until the last token it "
        "signed has expired"
    )
    return 0


# ---------------------------------------------------------------------------- routes-setup


def path_regex(path: str) -> str:
    """``path`` itself or anything under it (``/register`` and ``/register/{id}``), never
    a longer word: a plain prefix ``/token`` would also take an application's
    ``/tokens`` on every proxy."""
    return "^" + path.replace(".", "\\.") + "(?:/.*)?$"


def wanted_route(route_id: str, path: str, auth_host: str) -> dict[str, Any]:
    """The global route that hands ``path`` (and what is under it) to the auth host."""
    return {
        "route_id": route_id,
        "path_pattern": path_regex(path),
        "target_type": "hostname",
        "target_value": auth_host,
        "priority": ROUTE_PRIORITY,
        "is_regex": True,
        "enabled": True,
        "scope": "global",
        "proxy_hostnames": [],
        "methods": None,
        "description": f"OAuth server: {path} on {auth_host}",
    }


def _differs(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Does the stored route differ from ``wanted`` in a field routes-setup decides? (An
    empty list and null are the same for the list fields.)"""
    for name in _DECIDED:
        have, want = current.get(name), wanted.get(name)
        if name in ("proxy_hostnames", "methods"):
            have, want = list(have or []), list(want or [])
        if have != want:
            return True
    return False


def routes_setup(ctx: Context) -> int:
    host = ctx.option("auth_host")
    if not host:
        status = _document(ctx.api.call("GET", f"{PATH}/status"))
        host = status.get("auth_hostname")
        if not isinstance(host, str) or not host:
            raise ClientError("the edge names no auth host: pass --auth-host HOST")
    existing = {
        str(route.get("route_id")): route
        for route in items(ctx.api.call("GET", f"{ROUTES}/"), "routes")
    }
    flags = {"target_value": "--auth-host"}
    rows: list[dict[str, Any]] = []
    for route_id, path in OAUTH_ROUTES:
        want = wanted_route(route_id, path, host)
        current = existing.get(route_id)
        if current is None:
            ctx.api.call("POST", f"{ROUTES}/", want, flags=flags)
            action = "created"
        elif _differs(current, want):
            # keep what the admin wrote in the description
            body = {**want, "description": current.get("description") or want["description"]}
            ctx.api.call("PUT", f"{ROUTES}/{segment(route_id)}", body, flags=flags)
            action = "updated"
        else:
            action = "unchanged"
        rows.append({**{k: want[k] for k in ("route_id", "path_pattern", "target_value")},
                     "priority": ROUTE_PRIORITY, "action": action})  # fmt: skip
    ctx.out.records(rows, SETUP_COLUMNS)
    changed = [row for row in rows if row["action"] != "unchanged"]
    if changed:
        ctx.out.message(
            f"{len(changed)} of {len(rows)} OAuth routes created or updated (priority "
            f"{ROUTE_PRIORITY}, target hostname {host})"
        )
    else:
        ctx.out.message(f"all {len(rows)} OAuth routes are in place; nothing changed")
    return 0


# ---------------------------------------------------------------------------- parsers


def _listing(
    sub: Sub, name: str, help_text: str, default: Handler, common: argparse.ArgumentParser
) -> Sub:
    """A group whose commands are optional: alone, it runs ``default`` (its list)."""
    parser = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
    parser.set_defaults(handler=default)
    commands: Sub = parser.add_subparsers(
        dest=f"oauth_{name}_command", required=False, metavar="COMMAND"
    )
    return commands


def _token_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client", metavar="CLIENT_ID", help="only this client's tokens")
    parser.add_argument("--user", metavar="USER", help="only this GitHub login (or github:ID)")


def add_oauth_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    oauth = group(sub, "oauth", "the OAuth server's clients, tokens and keys (admin)", common)

    clients = _listing(oauth, "clients", "registered OAuth clients", clients_list, common)
    command(clients, "list", "list the clients", clients_list, common)
    show = command(clients, "show", "show one client", clients_show, common)
    show.add_argument("client_id", metavar="ID")
    delete = command(
        clients, "delete", "delete a client and revoke every token issued to it", clients_delete,
        common,
    )  # fmt: skip
    delete.add_argument("client_id", metavar="ID")

    tokens = _listing(oauth, "tokens", "live OAuth access tokens", tokens_list, common)
    _token_filters(command(tokens, "list", "list the live access tokens", tokens_list, common))
    command(tokens, "show", "show one access token", tokens_show, common).add_argument(
        "jti", metavar="JTI"
    )
    command(
        tokens, "revoke", "revoke a token and its grant family (refresh tokens too)",
        tokens_revoke, common,
    ).add_argument("jti", metavar="JTI")  # fmt: skip

    sessions = _listing(oauth, "sessions", "signed-in browser sessions", sessions_list, common)
    command(sessions, "list", "list the browser sessions", sessions_list, common)
    command(sessions, "show", "show one browser session", sessions_show, common).add_argument(
        "session_id", metavar="ID"
    )
    command(
        sessions, "revoke", "sign a browser out", sessions_revoke, common
    ).add_argument("session_id", metavar="ID")  # fmt: skip

    command(oauth, "status", "the OAuth server: issuer, keys, counts", oauth_status, common)
    command(
        oauth, "rotate-key", "sign with a new key (the old one stays published a while)",
        rotate_key, common,
    )  # fmt: skip
    setup = command(
        oauth, "routes-setup", "create the global routes to the auth host (idempotent)",
        routes_setup, common,
    )  # fmt: skip
    setup.add_argument(
        "--auth-host", metavar="HOST", help="the auth host (default: the edge's AUTH_HOSTNAME)"
    )
