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

SERVER_COMMANDS = ("serve", "check", "cert", "worker")


def _parser(with_client: bool = True) -> argparse.ArgumentParser:
    """The whole command line; without the client commands (and their imports) when the
    command is known to be one of the server's: every worker process starts this way."""
    parser = argparse.ArgumentParser(prog="edge", description="HTTP edge server")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the edge (supervisor and workers)")
    serve.add_argument("--env-file", help="read settings from this .env file first")
    serve.add_argument("--workers", type=int, help="worker processes (EDGE_WORKERS)")
    serve.add_argument("--seed", help="JSON file of config keys to create if absent")
    check = sub.add_parser("check", help="validate settings and the config keys in Redis")
    check.add_argument("--env-file", help="read settings from this .env file first")
    add_cert_parser(sub)
    add_admin_parsers(sub)
    if with_client:
        from edge.client import add_client_parsers

        add_client_parsers(sub)
    worker = sub.add_parser("worker")  # internal: no help, so not listed
    worker.add_argument("--id", type=int, default=0)
    worker.add_argument("--asyncio", action="store_true", help="default loop instead of uvloop")
    return parser


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
    args = _parser(with_client=not argv or argv[0] not in SERVER_COMMANDS).parse_args(argv)
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
    from edge.observe.accesslog import setup_logging

    if args.command == "worker":
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
        return run_check(settings)
    if args.workers is not None and args.workers < 1:
        print("edge: invalid setting: --workers must be >= 1", file=sys.stderr)
        return 2
    settings = _settings(env, workers=args.workers, seed_file=args.seed)
    setup_logging(settings.log_level, fmt=settings.log_format)
    _log_unknown_settings(args.env_file)
    from edge.embedded_redis import EmbeddedRedisError, SeedError
    from edge.supervisor import Supervisor

    if args.workers is not None:
        env["EDGE_WORKERS"] = str(args.workers)
    try:
        return Supervisor(settings, env).run()
    except (EmbeddedRedisError, SeedError) as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 1
