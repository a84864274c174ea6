"""``edge cert list`` (also ``edge certs list``): one command, one table, two sources.

Where the certificates are read from (``--source`` says it outright):

* ``--env-file FILE``: Redis directly, with the settings of that file;
* ``--api-url``, ``--token`` or ``--profile``, or ``API_URL``, ``TOKEN`` or
  ``EDGE_PROFILE`` in the environment, or a token saved in the config file's profile
  (``edge login``): the admin API, ``GET /api/v1/certificates/``;
* otherwise Redis directly: ``REDIS_URL``, the embedded Redis of ``EDGE_STATE_DIR``, or the
  one edge running on this machine. This is the local operator's way; it works with the
  API down.

Both sources give the same records (``name``, ``domains``, ``expires_at``, ``status``,
``problem``: what the API answers) and so the same table, sorted by name. Reading Redis
costs no redis-py nor asyncio import (:mod:`edge.store.oneshot`), and the certificate
checks (``cryptography``) are imported only when there is a record to check.

No record printed holds private key material: every text read from a record goes through
:func:`edge.certs.described.scrub` with that record's key.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from edge.client.errors import ClientError
from edge.client.options import API_OPTIONS
from edge.client.output import Column, Printer, parse_time
from edge.settings import RedisTarget, SettingsError, environment, load_settings, redact_url

__all__ = [
    "API_VARIABLES",
    "COLUMNS",
    "FIELDS",
    "CliError",
    "api_records",
    "list_source",
    "redis_records",
    "redis_target",
    "run_list",
]

FIELDS = ("name", "domains", "expires_at", "status", "problem")
API_VARIABLES = ("API_URL", "TOKEN", "EDGE_PROFILE")
CERTS = "/api/v1/certificates"
_CERT, _DOMAIN = "cert:", "cert:domain:"


class CliError(Exception):
    """A failure reported as ``edge cert: {message}`` with exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def days_left(not_after: datetime, now: datetime) -> int:
    """Whole days until ``not_after`` (negative once past it), rounded toward zero."""
    return int((not_after - now).total_seconds() / 86400)


def _days(record: Mapping[str, Any]) -> int | None:
    when = parse_time(record.get("expires_at"))
    return None if when is None else days_left(when, datetime.now(UTC))


def _problem(record: Mapping[str, Any]) -> str | None:
    problem = record.get("problem")
    return f"! {problem}" if problem else None


COLUMNS = (
    Column("NAME", "name"),
    Column("DOMAINS", "domains"),
    Column("EXPIRES", "expires_at", relative=False),
    Column("DAYS", _days),
    Column("STATUS", "status", status=True),
    Column("PROBLEM", _problem, status=True),
)


# ---------------------------------------------------------------------------- the source


def _logged_in(env: Mapping[str, str]) -> bool:
    """Whether the config file's profile in use holds a token (``edge login`` saved one)."""
    from edge.client.config import config_path, read_config, select_profile

    doc = read_config(config_path(env))
    name, _ = select_profile(doc, None, env)
    profile = doc.get("profiles", {}).get(name)
    return isinstance(profile, dict) and bool(profile.get("token"))


def list_source(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """``api`` or ``redis``: where ``edge cert list`` reads (see the module's docstring)."""
    chosen: str | None = getattr(args, "source", None)
    api_flags = [f"--{o.replace('_', '-')}" for o in API_OPTIONS if getattr(args, o, None)]
    env_file = getattr(args, "env_file", None)
    if env_file is not None and (chosen == "api" or api_flags):
        given = "--source api" if chosen == "api" else api_flags[0]
        raise CliError(f"--env-file reads Redis directly: it cannot go with {given}", 2)
    if chosen == "redis" and api_flags:
        raise CliError(f"--source redis reads Redis directly: it cannot go with {api_flags[0]}", 2)
    if chosen is not None:
        return chosen
    if env_file is not None:
        return "redis"
    if api_flags or any(env.get(name, "").strip() for name in API_VARIABLES):
        return "api"
    return "api" if _logged_in(env) else "redis"


# ---------------------------------------------------------------------------- Redis


def redis_target(env_file: str | None) -> RedisTarget:
    """The Redis ``edge cert`` works on: ``REDIS_URL``, the embedded one, or the running
    edge's (:func:`edge.config.check.resolve_redis`); :class:`CliError` when none."""
    try:
        env = environment(env_file)
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None
    try:
        settings = load_settings(env)
    except SettingsError as exc:
        raise CliError(f"invalid setting: {exc}", 2) from None
    from edge.config.check import Unresolved, resolve_redis
    from edge.embedded_redis import socket_path

    try:
        settings, url = resolve_redis(settings, env_file)
    except Unresolved as exc:
        raise CliError(str(exc)) from None
    if url is None:
        where = (
            "pass --env-file FILE, the one the edge runs with"
            if env_file is None
            else "set REDIS_URL"
        )
        raise CliError(
            "REDIS_URL is not set and the embedded redis is not running (no socket at "
            f"{socket_path(settings.state_dir)}); start the edge, or {where}"
        )
    return settings.redis_target(url)


def _scrubbed(value: Any, secret: str | None) -> Any:
    from edge.certs.described import scrub

    if isinstance(value, str):
        return scrub(value, secret)
    if isinstance(value, list):
        return [_scrubbed(v, secret) for v in value]
    return value


def redis_records(target: RedisTarget) -> list[dict[str, Any]]:
    """Every ``cert:{name}`` record of ``target``, described as the API describes it."""
    from edge.store.oneshot import OneShotError, open_reader

    try:
        reader = open_reader(target)
        try:
            names = [k for k in reader.scan(f"{_CERT}*") if not k.startswith(_DOMAIN)]
            names = [k for k in names if k != _CERT]
            values = reader.mget(names)
            kinds = reader.types([k for k, v in values.items() if v is None])
        finally:
            reader.close()
    except OneShotError as exc:
        url = target.url
        text = str(exc).replace(url, redact_url(url))
        raise CliError(f"redis at {redact_url(url)}: {text}") from None
    if not names:
        return []
    from edge.certs.described import describe  # the checks: cryptography, msgspec

    records = []
    for key in names:
        raw, kind = values[key], kinds.get(key)
        if kind == "none":  # deleted since the scan
            continue
        item = describe(key, raw, kind)
        record = {
            "name": item.name,
            "domains": list(item.domains),
            "expires_at": item.expires_at,
            "status": item.status,
            "problem": item.problem,
        }
        records.append({k: _scrubbed(v, item.secret) for k, v in record.items()})
    return records


# ---------------------------------------------------------------------------- the API


def api_records(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The records of ``GET /api/v1/certificates/`` (its fields in :data:`FIELDS`)."""
    from edge.client.base import Context, items

    ctx = Context(args)
    found = items(ctx.api.call("GET", f"{CERTS}/"), "certificates")
    return [{name: record.get(name) for name in FIELDS} for record in found]


# ---------------------------------------------------------------------------- the command


def print_records(records: Sequence[Mapping[str, Any]], fmt: str, prog: str) -> None:
    """The table (or ``fmt``) of ``records``, and on stderr how many have problems."""
    if not records and fmt == "table":
        print("no certificates (no cert:* records)")
        return
    Printer(fmt).records(records, COLUMNS)
    bad = sum(1 for record in records if record.get("problem"))
    if bad and fmt == "table":
        print(f"{prog}: {bad} record(s) with problems (marked !)", file=sys.stderr)


def run_list(args: argparse.Namespace) -> int:
    """Run ``edge cert list`` / ``edge certs list``; the exit status."""
    # the messages of each group: "edge cert: ..." (its Redis commands), "edge: ..." (the
    # client commands)
    prog = "edge cert" if args.command == "cert" else "edge"
    fmt = "json" if getattr(args, "json", False) else getattr(args, "format", "table")
    try:
        if list_source(args, os.environ) == "api":
            records = api_records(args)
        else:
            records = redis_records(redis_target(getattr(args, "env_file", None)))
        records.sort(key=lambda record: str(record.get("name")))
        print_records(records, fmt, prog)
        return 0
    except CliError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return exc.status
    except ClientError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return exc.status
    except BrokenPipeError:
        # stdout closed early (``edge cert list | head``): quiet, like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
