"""``edge login``, ``edge logout`` and ``edge config ...``: the config file's profiles.

None of these prints a token: at most :func:`~edge.client.config.mask` of it.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
from typing import Any

from edge.client.base import Context, Sub, command, group
from edge.client.config import (
    DEFAULT_PROFILE,
    PROFILE_KEYS,
    check_api_url,
    mask,
    read_config,
    resolve,
    write_config,
)
from edge.client.errors import ClientError
from edge.client.http import Api
from edge.client.output import Column

__all__ = ["add_session_parsers", "looks_like_pat"]

# A personal access token is edge_{8 base58}_{33 base58} (edge.auth.pat, not imported here:
# it loads Argon2, which the client never needs); an admin token has no second underscore.
_PAT_SHAPE = re.compile(r"\Aedge_[1-9A-HJ-NP-Za-km-z]{8}_[1-9A-HJ-NP-Za-km-z]{33}\Z")
TOKEN_INFO = "/api/v1/tokens/info"  # who an admin API token is
PAT_ME = "/public-api/me"  # who a personal access token is


def looks_like_pat(token: str) -> bool:
    """Whether ``token`` has the shape of a personal access token."""
    return _PAT_SHAPE.match(token) is not None


def _read_token(value: str) -> str:
    """``-`` reads the token from stdin (first line), keeping it out of shell history."""
    if value != "-":
        return value
    line = sys.stdin.readline().strip()
    if not line:
        raise ClientError("no token on stdin", 2)
    return line


def _check_token(token: str) -> str:
    if not token or any(not c.isprintable() or c.isspace() for c in token):
        raise ClientError("invalid token: empty, or holds spaces or control characters", 2)
    return token


def _profiles(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    profiles = doc.setdefault("profiles", {})
    assert isinstance(profiles, dict)  # read_config checked it
    return profiles


def _profile(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """Profile ``name`` of ``doc``, added if missing; the first profile of a file becomes
    its default (other profiles never change the default: ``edge config use`` does)."""
    profiles = _profiles(doc)
    if not profiles and "default_profile" not in doc and name != DEFAULT_PROFILE:
        doc["default_profile"] = name
    return profiles.setdefault(name, {})


# ---------------------------------------------------------------------------- login, logout


def _whoami(api: Api, token: str) -> str:
    """Ask the edge who ``token`` is, where that kind of token may ask (401: refused).

    A personal access token opens the public API only, so it is checked with
    ``/public-api/me``; an API token (the admin's or another) with ``/api/v1/tokens/info``.
    """
    if looks_like_pat(token):
        me = api.call("GET", PAT_ME)
        if not isinstance(me, dict):
            return "personal access token accepted"
        user, project = me.get("user") or {}, me.get("project") or {}
        return (
            f"as {user.get('email')} in project {project.get('name')!r} ({me.get('role')}) "
            "with a personal access token"
        )
    info = api.call("GET", TOKEN_INFO)
    name = info.get("name") if isinstance(info, dict) else None
    return f"as token {name!r}" if name else "token accepted"


def _admin_token_file(ctx: Context) -> str | None:
    """The admin token an embedded edge on this machine saved (edge/admin_token.py)."""
    from edge.admin_token import AdminTokenError, find_token_file, read_token

    path = find_token_file(ctx.env)
    if path is None:
        return None
    try:
        token = read_token(path)
    except AdminTokenError as exc:
        raise ClientError(str(exc)) from None
    ctx.out.message(f"using the admin token of {path}")
    return token


def login(ctx: Context) -> int:
    base = resolve(
        ctx.env,
        api_url=ctx.option("api_url"),
        token=ctx.option("token"),
        profile=ctx.option("profile"),
        must_exist=False,
    )
    token = base.token
    if ctx.option("token") == "-":
        token = _read_token("-")
    found = None
    if base.token_source not in ("--token", "env TOKEN", "env ADMIN_TOKEN"):
        # a token the user did not name: the local edge's admin token file wins over the
        # profile's (after `edge admin-token rotate`, `edge login` saves the new one)
        found = _admin_token_file(ctx)
        token = found or token
    if token is None:
        if not sys.stdin.isatty():
            raise ClientError("no token: pass --token TOKEN (or --token - to read stdin)", 2)
        try:
            token = getpass.getpass(f"token for {base.api_url}: ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            raise ClientError("no token given", 2) from None
    token = _check_token(token)
    who = "token not checked (--no-verify)"
    if not ctx.args.no_verify:
        api = Api(base.api_url, token, timeout=ctx.option("timeout", 10.0), debug=ctx.debug)
        who = _whoami(api, token)
    doc = read_config(base.config_path, warn=False)
    profile = _profile(doc, base.profile)
    profile["api_url"] = base.api_url
    profile["token"] = token
    write_config(base.config_path, doc)
    ctx.out.message(
        f"logged in to {base.api_url} {who}: saved {mask(token)} in profile "
        f"{base.profile!r} of {base.config_path}"
    )
    return 0


def logout(ctx: Context) -> int:
    base = resolve(ctx.env, profile=ctx.option("profile"))
    doc = read_config(base.config_path, warn=False)
    profile = _profiles(doc).get(base.profile)
    if not profile or "token" not in profile:
        ctx.out.message(f"no token saved in profile {base.profile!r}")
        return 0
    del profile["token"]
    write_config(base.config_path, doc)
    ctx.out.message(f"removed the token of profile {base.profile!r} from {base.config_path}")
    return 0


# ---------------------------------------------------------------------------- config


def config_show(ctx: Context) -> int:
    return ctx.show(ctx.settings.describe(), status_fields=())


def config_path_cmd(ctx: Context) -> int:
    print(resolve(ctx.env, profile=ctx.option("profile"), must_exist=False).config_path)
    return 0


def config_list(ctx: Context) -> int:
    base = resolve(ctx.env, profile=ctx.option("profile"), must_exist=False)
    doc = read_config(base.config_path)
    default = doc.get("default_profile", DEFAULT_PROFILE)
    rows = [
        {
            "profile": name,
            "default": name == default,
            "api_url": profile.get("api_url"),
            "token": mask(profile.get("token")) if profile.get("token") else None,
        }
        for name, profile in sorted(_profiles(doc).items())
    ]
    columns = (
        Column("PROFILE", "profile"),
        Column("DEFAULT", lambda r: "*" if r["default"] else ""),
        Column("API_URL", "api_url"),
        Column("TOKEN", "token"),
    )
    ctx.out.records(rows, columns)
    return 0


def config_set(ctx: Context) -> int:
    key, value = ctx.args.key, ctx.args.value
    base = resolve(ctx.env, profile=ctx.option("profile"), must_exist=False)
    if key == "api_url":
        value = check_api_url(value, "the command line")
        shown = value
    else:
        value = _check_token(_read_token(value))
        shown = mask(value)
    doc = read_config(base.config_path, warn=False)
    _profile(doc, base.profile)[key] = value
    write_config(base.config_path, doc)
    ctx.out.message(f"set {key} = {shown} in profile {base.profile!r} of {base.config_path}")
    return 0


def config_unset(ctx: Context) -> int:
    base = resolve(ctx.env, profile=ctx.option("profile"))
    doc = read_config(base.config_path, warn=False)
    profile = _profiles(doc).get(base.profile, {})
    if ctx.args.key not in profile:
        ctx.out.message(f"{ctx.args.key} is not set in profile {base.profile!r}")
        return 0
    del profile[ctx.args.key]
    write_config(base.config_path, doc)
    ctx.out.message(f"removed {ctx.args.key} from profile {base.profile!r}")
    return 0


def config_use(ctx: Context) -> int:
    base = resolve(ctx.env, profile=ctx.args.name)  # the profile must exist
    doc = read_config(base.config_path, warn=False)
    doc["default_profile"] = base.profile
    write_config(base.config_path, doc)
    ctx.out.message(f"default profile is now {base.profile!r}")
    return 0


def add_session_parsers(sub: Sub, common: argparse.ArgumentParser) -> None:
    log_in = command(
        sub,
        "login",
        "check a token (an API token or a personal access token) against an edge and "
        "save both in a profile of the config file; without --token, TOKEN or ADMIN_TOKEN, "
        "the admin token file of a local embedded edge (EDGE_STATE_DIR, ./.edge-state or "
        "/var/lib/edge) when there is one",
        login,
        common,
    )
    log_in.add_argument(
        "--no-verify", action="store_true", help="save without asking the edge first"
    )
    command(sub, "logout", "remove the token from a profile", logout, common)
    config = group(sub, "config", "the client settings and config file profiles", common)
    command(config, "show", "the settings in effect and where each comes from", config_show, common)
    command(config, "list", "the profiles of the config file", config_list, common)
    command(config, "path", "print where the config file is", config_path_cmd, common)
    setter = command(config, "set", "set api_url or token in a profile", config_set, common)
    setter.add_argument("key", choices=PROFILE_KEYS, metavar="KEY", help="api_url or token")
    setter.add_argument("value", metavar="VALUE", help="the value (token: '-' reads stdin)")
    unset = command(config, "unset", "remove api_url or token from a profile", config_unset, common)
    unset.add_argument("key", choices=PROFILE_KEYS, metavar="KEY")
    use = command(config, "use", "make a profile the default one", config_use, common)
    use.add_argument("name", metavar="PROFILE")
