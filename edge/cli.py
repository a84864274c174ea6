"""The ``edge`` command line: ``serve``, ``check``, ``cert`` (and the internal ``worker``),
and the client commands that call an edge's admin API (:mod:`edge.client`: ``login``,
``config``, ``token``, ``proxy``, ``route``, ``service``, ``certs``, ``resource``, ``user``,
``project``, ``pat``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from edge import __version__
from edge.admin_cli import COMMANDS as ADMIN_COMMANDS
from edge.admin_cli import add_admin_parsers
from edge.settings import Settings, SettingsError, environment, load_settings
from edge.tls.cli_parser import add_cert_parser

if TYPE_CHECKING:
    from edge.env_typos import UnknownSetting

SERVER_COMMANDS = ("serve", "check", "cert", "worker", "reverse-proxy", "version", "completion")
VERSION_WORDS = ("version", "-V", "--version")


def _parser(with_client: bool = True, command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; without the client commands (and their imports) when the
    command is known to be one of the server's."""
    from edge.cli_help import (
        add_completion_parser,
        add_reverse_proxy_parser,
        examples,
        serve_settings_help,
    )
    from edge.client.options import common_options

    common = common_options()
    # before the group too: `edge --api-url URL cert list` (the list may call the API)
    top_level = with_client or command == "cert"
    parser = argparse.ArgumentParser(
        prog="edge",
        usage="%(prog)s [-h] [--version] COMMAND ...",
        description="HTTP edge server",
        parents=[common] if top_level else [],
        epilog=examples("edge"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="edge")
    serve = sub.add_parser(
        "serve",
        help="run the edge (supervisor and workers)",
        description="Run the edge: a supervisor, its workers and (without REDIS_URL) the\n"
        "embedded Redis. Settings come from the environment and --env-file.",
        epilog=serve_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--env-file", help="read settings from this .env file first")
    serve.add_argument("--workers", type=int, help="worker processes (EDGE_WORKERS)")
    serve.add_argument("--seed", help="JSON file of config keys to create if absent")
    serve.add_argument(
        "--seed-replace",
        action="store_true",
        help="write every key of the seed file, replacing the keys that exist",
    )
    check = sub.add_parser(
        "check",
        help="validate the settings, a seed file and the Redis keys",
        description="Validate the settings, the seed file (--seed or EDGE_SEED_FILE) and every\n"
        "config key in Redis (the embedded one, running or stopped, or REDIS_URL).\n"
        "Exits 1 on a problem or when something asked for could not be checked.",
        epilog=examples("check"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--env-file", help="read settings from this .env file first")
    check.add_argument("--seed", help="JSON seed file to validate (default: EDGE_SEED_FILE)")
    add_cert_parser(sub, common)
    add_admin_parsers(sub)
    add_reverse_proxy_parser(sub)
    sub.add_parser("version", help="print the version", description="Print the version.")
    add_completion_parser(sub)
    if with_client:
        from edge.client import add_client_parsers

        add_client_parsers(sub, common)
    return parser


def _worker_parser() -> argparse.ArgumentParser:
    """``edge worker``: internal (the supervisor starts it), so never listed nor suggested."""
    worker = argparse.ArgumentParser(prog="edge worker")
    worker.add_argument("--id", type=int, default=0)
    worker.add_argument("--asyncio", action="store_true", help="default loop instead of uvloop")
    worker.set_defaults(command="worker")
    return worker


def _command_of(argv: list[str]) -> str | None:
    """The command word of ``argv``: its first word that is not an option (nor the value
    of a global option given before the command)."""
    valued = ("--api-url", "--token", "--profile", "-o", "--format", "--timeout")
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in valued:
            skip = True
        elif not word.startswith("-"):
            return word
    return None


def _log_unknown_settings(env_file: str | None) -> None:
    """One warning per variable that looks like a mistyped setting (the supervisor's only:
    workers read the same environment)."""
    import logging

    log = logging.getLogger("edge.settings")
    for unknown in _unknown_settings(env_file):
        fields = {
            "variable": unknown.name,
            "suggestion": unknown.suggestion,
            "source": unknown.source or "environment",
        }
        log.warning(str(unknown), extra={"fields": fields})


def _settings(env: dict[str, str], **overrides: object) -> Settings:
    try:
        return load_settings(env, **overrides)
    except SettingsError as exc:
        print(f"edge: invalid setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _unknown_settings(env_file: str | None) -> list[UnknownSetting]:
    from edge.env_typos import unknown_settings

    return unknown_settings(os.environ, env_file)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in ADMIN_COMMANDS:  # admin-token, redis-cli: edge/admin_cli.py
        from edge.admin_cli import main as admin_main

        return admin_main(argv)
    if argv[:1] == ["worker"]:
        args = _worker_parser().parse_args(argv[1:])
    elif len(argv) == 1 and argv[0] in VERSION_WORDS:
        print(f"edge {__version__}")  # before any parser: nothing else to import
        return 0
    else:
        command = _command_of(argv)
        args = _parser(command not in SERVER_COMMANDS, command).parse_args(argv)
    if getattr(args, "cert_api", False):  # `edge cert create|status|renew`: the admin API
        from edge.client.certs import run_cert_api

        return run_cert_api(args)
    if getattr(args, "cert_list", False):  # `edge cert list` and `edge certs list`: one
        from edge.certs.listing import run_list

        return run_list(args)
    if args.command == "version":
        print(f"edge {__version__}")
        return 0
    if args.command == "completion":
        from edge.cli_help import run_completion

        return run_completion(args, _parser())
    if args.command == "reverse-proxy":
        from edge.reverse_proxy import run

        return run(args, serve)
    if args.command == "cert":
        from edge.tls.cli import run_cert

        return run_cert(args)  # its own settings and messages ("edge cert: ...")
    if args.command not in SERVER_COMMANDS:
        from edge.client import run_client

        return run_client(args)  # settings from flags, API_URL/TOKEN, the config file
    try:
        env = environment(getattr(args, "env_file", None))
    except SettingsError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 2
    if args.command == "worker":
        from edge.observe.accesslog import setup_logging

        settings = _settings(env)
        setup_logging(settings.log_level, worker=args.id, fmt=settings.log_format)
        from edge.worker import run_worker

        return run_worker(
            settings, args.id, use_uvloop=settings.event_loop == "uvloop" and not args.asyncio
        )
    if args.command == "check":
        from edge.config.check import run_check
        from edge.env_typos import inline_comments

        for comment in inline_comments(os.environ, args.env_file):  # may explain an error
            print(f"warning: {comment}")
        settings = _settings(env)
        for unknown in _unknown_settings(args.env_file):
            print(f"warning: {unknown}")
        return run_check(settings, seed_file=args.seed, env_file=args.env_file)
    return serve(
        env, args.env_file, workers=args.workers, seed=args.seed, seed_replace=args.seed_replace
    )


def serve(
    env: dict[str, str],
    env_file: str | None,
    *,
    workers: int | None = None,
    seed: str | None = None,
    seed_replace: bool = False,
) -> int:
    """``edge serve`` with the settings of ``env`` (and the overrides given); its status."""
    from edge.observe.accesslog import setup_logging

    if workers is not None and workers < 1:
        print("edge: invalid setting: --workers must be >= 1", file=sys.stderr)
        return 2
    settings = _settings(
        env, workers=workers, seed_file=seed, seed_replace=True if seed_replace else None
    )
    if settings.seed_file:  # a bad seed file is refused before anything starts
        from edge.config.seed import SeedError, load_seed

        try:
            load_seed(settings.seed_file)
        except SeedError as exc:
            print(f"edge: {exc}", file=sys.stderr)
            return 2
    if seed_replace:
        env["EDGE_SEED_REPLACE"] = "true"
    setup_logging(settings.log_level, fmt=settings.log_format)
    _log_unknown_settings(env_file)
    from edge.embedded_redis import EmbeddedRedisError, SeedError
    from edge.supervisor import Supervisor

    if workers is not None:
        env["EDGE_WORKERS"] = str(workers)
    try:
        return Supervisor(settings, env).run()
    except (EmbeddedRedisError, SeedError) as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 1
