"""``edge admin-token rotate`` and ``edge redis-cli``: the operator's commands that act on
the Redis of this machine's edge, found from the same settings as ``edge serve``
(``--env-file`` and the environment): ``REDIS_URL``, or the embedded server's socket in the
state directory."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import urllib.parse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.settings import Settings

COMMANDS = ("admin-token", "redis-cli")


def add_admin_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = sub.add_parser(
        "admin-token",
        help="the admin token of an embedded edge",
        description="The admin token an embedded edge (REDIS_URL unset, no ADMIN_TOKEN) "
        "created on its first start, kept in STATE_DIR/admin-token.",
    )
    commands = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    rotate = commands.add_parser(
        "rotate",
        help="replace it: the previous token is refused at once",
        description="Replace the admin token: a new one is stored (its hash) in the edge's "
        "Redis, where the old one stops working at once, then written to "
        "STATE_DIR/admin-token and printed on stdout. Run it as the edge's user.",
    )
    rotate.add_argument("--env-file", help="the settings edge serve uses (EDGE_STATE_DIR)")
    # every word after the command goes to redis-cli, options included
    cli = sub.add_parser(
        "redis-cli",
        help="run redis-cli against this edge's Redis",
        description="edge redis-cli [--env-file FILE] [REDIS-CLI ARGS...]: redis-cli "
        "connected to the Redis the edge uses (the embedded socket, or REDIS_URL with its "
        "password passed in the environment, never on the command line)",
        prefix_chars="+",
        add_help=False,
    )
    cli.add_argument("args", nargs=argparse.REMAINDER)


def main(argv: list[str]) -> int:
    """``edge admin-token ...`` or ``edge redis-cli ...`` (``argv`` starts with the command)."""
    parser = argparse.ArgumentParser(prog="edge")
    add_admin_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run_admin(parser.parse_args(argv))


def run_admin(args: argparse.Namespace) -> int:
    if args.command == "redis-cli":
        return redis_cli(list(args.args))
    return rotate(args.env_file)


def _load(env_file: str | None) -> Settings | None:
    from edge.settings import SettingsError, environment, load_settings

    try:
        return load_settings(environment(env_file))
    except SettingsError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return None


def _fail(message: str, status: int = 1) -> int:
    print(f"edge: {message}", file=sys.stderr)
    return status


# ---------------------------------------------------------------------------- rotate


def rotate(env_file: str | None) -> int:
    from edge.admin_token import AdminTokenError, store, token_path, write_token
    from edge.auth.secrets import new_admin_token
    from edge.embedded_redis import EmbeddedRedis, socket_path, socket_url

    settings = _load(env_file)
    if settings is None:
        return 2
    if settings.admin_token is not None:
        return _fail(
            "ADMIN_TOKEN is set (in the environment or the env file): the edge stores that "
            "value at every start; change it there and restart the edge",
            2,
        )
    if settings.redis_url is not None:
        return _fail(
            "REDIS_URL is set: only an embedded edge keeps its admin token in the state "
            "directory; set ADMIN_TOKEN to a new value and restart the edge",
            2,
        )
    path = token_path(settings.state_dir).resolve()
    if not path.parent.is_dir():
        return _fail(
            f"no state directory {path.parent} (EDGE_STATE_DIR): pass --env-file with the "
            "file edge serve uses",
            2,
        )
    token = new_admin_token()
    sock = socket_path(settings.state_dir).resolve()
    running = EmbeddedRedis._answers(sock)
    try:
        if running:
            # Redis first: once it answers, the old token is refused; the file follows
            store(settings.redis_target(socket_url(settings.state_dir)), token)
        write_token(path, token)
    except AdminTokenError as exc:
        return _fail(f"{exc}; the new token (already in use) is:\n{token}")
    except Exception as exc:
        return _fail(f"cannot store the new admin token in {sock}: {exc}")
    print(token)
    if running:
        print(
            f"edge: admin token replaced; the previous one is refused from now on. Saved in "
            f"{path}: run `edge login` to save it in your profile",
            file=sys.stderr,
        )
    else:
        print(
            f"edge: the edge is not running ({sock} does not answer): the new token, saved "
            f"in {path}, replaces the previous one when it starts",
            file=sys.stderr,
        )
    return 0


# ---------------------------------------------------------------------------- redis-cli


def _split_env_file(words: list[str]) -> tuple[str | None, list[str]]:
    """A leading ``--env-file FILE`` (or ``--env-file=FILE``) is edge's; the rest redis-cli's."""
    if words[:1] == ["--env-file"] and len(words) >= 2:
        return words[1], words[2:]
    if words[:1] and words[0].startswith("--env-file="):
        return words[0].partition("=")[2], words[1:]
    return None, words


def connection_args(
    url: str, username: str | None, password: str | None
) -> tuple[list[str], dict[str, str]]:
    """redis-cli's options for the Redis at ``url`` (as redis-py reads it) and the
    environment it needs: the password goes in ``REDISCLI_AUTH``, never in the arguments
    (which any user can read in the process list)."""
    parts = urllib.parse.urlsplit(url)
    query = {k: v[-1] for k, v in urllib.parse.parse_qs(parts.query).items()}
    user = username or (urllib.parse.unquote(parts.username) if parts.username else None)
    user = user or query.get("username")
    secret = password or (urllib.parse.unquote(parts.password) if parts.password else None)
    secret = secret or query.get("password")
    args: list[str] = []
    if parts.scheme == "unix":
        args += ["-s", urllib.parse.unquote(parts.path)]
        db = query.get("db")
    else:
        args += ["-h", parts.hostname or "localhost", "-p", str(parts.port or 6379)]
        db = parts.path.lstrip("/") or query.get("db")
        if parts.scheme == "rediss":
            args.append("--tls")
    if db and db != "0":
        args += ["-n", db]
    if user:
        args += ["--user", user]
    env = {"REDISCLI_AUTH": secret} if secret else {}
    return args, env


def redis_cli(words: list[str]) -> int:
    from edge.embedded_redis import socket_path, socket_url

    env_file, rest = _split_env_file(words)
    settings = _load(env_file)
    if settings is None:
        return 2
    binary = shutil.which("redis-cli")
    if binary is None:
        return _fail("redis-cli is not on PATH (apt-get install redis-tools)")
    if settings.redis_url is not None:
        url = settings.redis_url
    else:
        sock = socket_path(settings.state_dir).resolve()
        if not sock.exists():
            return _fail(
                f"no embedded Redis socket at {sock} (EDGE_STATE_DIR={settings.state_dir}): "
                "is the edge running? pass --env-file with the file edge serve uses"
            )
        url = socket_url(settings.state_dir)
    args, extra = connection_args(url, settings.redis_username, settings.redis_password)
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    env.update(extra)
    sys.stdout.flush()
    os.execve(binary, [binary, *args, *rest], env)
    return 127  # not reached
