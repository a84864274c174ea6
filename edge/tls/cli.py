"""``edge cert``: import, show and delete the certificates stored in Redis (``list``, which
may also read through the API, is :mod:`edge.certs.listing`).

A shell over :mod:`edge.certs.repository`, which holds the keys, the checks and the
transactions: this module parses arguments, reads the PEM files, calls the repository and
prints. Workers pick the change up from Redis by themselves.

No output and no error message of this module contains private key material: the key is
read from its file, checked and written to Redis, never printed (``show --pem`` prints the
certificate chain only), and every message that describes a stored record goes through
:func:`edge.certs.described.scrub`, which removes anything that looks like a private key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge.certs import repository
from edge.certs.described import Described, days_left, scrub
from edge.certs.listing import CliError, redis_target, run_list
from edge.certs.repository import CertRepositoryError, Prepared
from edge.client.options import API_OPTIONS
from edge.config.schema import ConfigError
from edge.settings import redact_url
from edge.store.client import redis_client
from edge.tls.material import MaterialError, san_covers, validate_material

__all__ = ["run_cert"]

PROG = "edge cert"


# one command's work against a connected client: the exit status
Work = Callable[[aioredis.Redis], Awaitable[int]]


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def run_cert(args: argparse.Namespace) -> int:
    """Run ``edge cert ...``; the exit status (0 ok, 1 failure, 2 usage)."""
    try:
        if args.cert_command == "import":
            # check the files before touching Redis: nothing is written unless they pass
            prepared = prepare_import(args)
            return _run(_import(args, prepared), args)
        if args.cert_command == "list":  # edge/cli.py runs it before: one for cert, certs
            return run_list(args)
        given = [f"--{o.replace('_', '-')}" for o in API_OPTIONS if getattr(args, o, None)]
        if given:
            raise CliError(
                f"{given[0]}: 'edge cert {args.cert_command}' works on Redis directly "
                f"(through the API: edge certs {args.cert_command})",
                2,
            )
        if args.cert_command == "show":
            return _run(_show(args), args)
        if args.cert_command == "delete":
            return _run(_delete(args), args)
        raise CliError(f"unknown command {args.cert_command!r}", 2)  # pragma: no cover
    except CliError as exc:
        print(f"{PROG}: {scrub(exc.message)}", file=sys.stderr)
        return exc.status
    except CertRepositoryError as exc:
        print(f"{PROG}: {scrub(_advice(exc))}", file=sys.stderr)
        return 1


def _advice(exc: CertRepositoryError) -> str:
    """The repository's message with what to do about it on this command line."""
    if isinstance(exc, repository.CertExists):
        return f"{exc.message}; use --force to replace it"
    if isinstance(exc, repository.NotACertRecord):
        return f"{exc.message}; delete it first"
    if isinstance(exc, repository.CertConflict):
        return f"{exc.message}, run the command again"
    return exc.message


def _run(work: Work, args: argparse.Namespace) -> int:
    """Run ``work(client)`` against the configured Redis; the exit status."""
    redis = redis_target(args.env_file)
    url = redis.url

    async def main() -> int:
        client = redis_client(redis)
        try:
            await client.ping()
            return await work(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except BrokenPipeError:
        # stdout closed early (``edge cert list | head``); redis-py reports its own
        # socket errors as RedisError.  Keep the interpreter's exit flush quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (RedisError, OSError) as exc:
        text = str(exc).replace(url, redact_url(url)) or type(exc).__name__
        raise CliError(f"redis at {redact_url(url)}: {text}") from None


# ---------------------------------------------------------------------------
# Describing records
# ---------------------------------------------------------------------------


def _summary(item: Described, now: datetime) -> dict[str, Any]:
    info = item.info
    not_after = item.not_after
    return {
        "name": item.name,
        "domains": list(item.domains),
        "not_after": info.not_after.isoformat() if info is not None else None,
        "expires_at": item.expires_at,
        "days_left": item.days_left(now),
        "expired": bool(not_after is not None and not_after < now),
        "status": item.status,
        "problem": item.problem,
    }


def _details(item: Described, pointing: list[str], now: datetime) -> dict[str, Any]:
    doc = _summary(item, now)
    info = item.info
    doc.update(
        {
            "key": item.key,
            "subject": info.subject if info else None,
            "issuer": info.issuer if info else None,
            "serial": info.serial if info else None,
            "san": list(info.san) if info else [],
            "not_before": info.not_before.isoformat() if info else None,
            "fingerprint_sha256": info.fingerprint_sha256 if info else None,
            "key_type": info.key_type if info else None,
            "chain_length": info.chain_length if info else None,
            "email": item.record.email if item.record else None,
            "acme_directory_url": item.record.acme_directory_url if item.record else None,
            "domain_keys": pointing,
        }
    )
    return doc


# ---------------------------------------------------------------------------
# import
# ---------------------------------------------------------------------------


def _read_pem(path: str, option: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"{option} {path}: {exc.strerror or type(exc).__name__}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{option} {path}: not a PEM text file") from None


def prepare_import(args: argparse.Namespace) -> Prepared:
    """Read and check the files of ``edge cert import``; the record to write."""
    name: str = args.name
    repository.check_new_name(name)
    listed = [d.strip() for d in (args.domains or "").split(",") if d.strip()]
    if args.domains is not None and not listed:
        raise CliError("--domains lists no domain", 2)
    fullchain_pem = _read_pem(args.cert, "--cert")
    private_key_pem = _read_pem(args.key, "--key")
    if listed:
        domains = listed
    else:
        try:
            # the leaf's SAN; expiry is judged below with the real domain list
            found = validate_material(
                fullchain_pem, private_key_pem, (), allow_expired=True, check_key=True
            )
        except MaterialError as exc:
            raise CliError(_material_message(exc, args)) from None
        domains = list(found.san)
        if not domains:
            raise CliError(
                f"{args.cert}: the certificate has no DNS names in its subjectAltName, "
                "so it cannot serve any domain"
            )
    try:
        return repository.prepare(
            name,
            fullchain_pem,
            private_key_pem,
            domains,
            email=args.email,
            allow_expired=args.allow_expired,
        )
    except ConfigError as exc:
        where = f"{exc.field}: " if exc.field else ""
        raise CliError(scrub(f"invalid record: {where}{exc.message}", private_key_pem)) from None
    except MaterialError as exc:
        raise CliError(scrub(_material_message(exc, args), private_key_pem)) from None


def _material_message(exc: MaterialError, args: argparse.Namespace) -> str:
    where = {"fullchain_pem": f"--cert {args.cert}", "private_key_pem": f"--key {args.key}"}
    prefix = where.get(exc.field, "--domains" if exc.field == "domains" else exc.field)
    message = f"{prefix}: {exc.message}"
    if "has expired" in exc.message:
        message += " (use --allow-expired to import it anyway)"
    return message


def _import(args: argparse.Namespace, prepared: Prepared) -> Work:
    async def work(client: aioredis.Redis) -> int:
        record = prepared.record
        stored = await repository.store(client, prepared, replace=args.force)
        info = prepared.info
        now = datetime.now(UTC)
        verb = "replaced" if stored.replaced else "imported"
        print(f"{verb} {stored.key}")
        print(f"  domains:     {', '.join(record.domains)}")
        print(f"  subject:     {info.subject}")
        print(f"  issuer:      {info.issuer}")
        print(f"  serial:      {info.serial}")
        print(f"  key type:    {info.key_type}")
        print(f"  not_after:   {info.not_after.isoformat()} ({_days_text(info.not_after, now)})")
        print(f"  wrote:       {', '.join([stored.key, *stored.domain_keys])}")
        for domain_key, previous in stored.took_over.items():
            print(f"  took over:   {domain_key} (was {previous})")
        if stored.removed:
            print(f"  removed:     {', '.join(stored.removed)}")
        elif stored.left:
            print(f"  also here:   {', '.join(stored.left)} (left in place)")
        if info.expired:
            print(f"{PROG}: warning: the certificate has expired", file=sys.stderr)
        if info.not_yet_valid:
            print(
                f"{PROG}: warning: the certificate is not valid before "
                f"{info.not_before.isoformat()}",
                file=sys.stderr,
            )
        return 0

    return work


def _days_text(not_after: datetime, now: datetime) -> str:
    days = days_left(not_after, now)
    if not_after < now:
        return f"EXPIRED {-days} days ago" if days else "EXPIRED"
    return f"{days} days left"


# ---------------------------------------------------------------------------
# list, show, delete
# ---------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> Work:
    async def work(client: aioredis.Redis) -> int:
        item = await repository.get(client, args.name)
        pointing = await repository.domain_keys_of(client, item.name)
        now = datetime.now(UTC)
        doc = _details(item, pointing, now)
        if args.json:
            if args.pem:
                doc["fullchain_pem"] = item.fullchain_pem
            print(item.scrub(json.dumps(doc, indent=2)))
            return 0
        info = item.info
        lines: list[tuple[str, str]] = [("name", item.name)]
        if item.problem:
            lines.append(("PROBLEM", item.problem))
        lines.append(("domains", ", ".join(item.domains) or "-"))
        lines.append(("status", item.status or "-"))
        if info is not None:
            lines += [
                ("subject", info.subject),
                ("issuer", info.issuer),
                ("serial", info.serial),
                ("san", ", ".join(info.san) or "-"),
                ("not_before", info.not_before.isoformat()),
                ("not_after", f"{info.not_after.isoformat()} ({_days_text(info.not_after, now)})"),
                ("sha256", info.fingerprint_sha256),
                ("key type", info.key_type),
                ("chain", f"{info.chain_length} certificate(s)"),
            ]
        lines.append(("expires_at", item.expires_at or "-"))
        if item.record is not None and item.record.email:
            lines.append(("email", item.record.email))
        if item.record is not None and item.record.acme_directory_url:
            lines.append(("acme", item.record.acme_directory_url))
        for label, value in lines:
            print(item.scrub(f"{label + ':':<12}{value}"))
        print("domain keys:")
        for domain_key in pointing:
            ignored = info is not None and not san_covers(
                info.san, repository.domain_of(domain_key)
            )
            print(
                f"  {domain_key}{'  (not covered by the certificate: ignored)' if ignored else ''}"
            )
        if not pointing:
            print("  (none)")
        if args.pem and item.fullchain_pem is not None:
            print(item.scrub(item.fullchain_pem).rstrip("\n"))
        return 0

    return work


def _delete(args: argparse.Namespace) -> Work:
    async def work(client: aioredis.Redis) -> int:
        deleted = await repository.delete(client, args.name)
        print(f"deleted {deleted.key}")
        if deleted.removed:
            print(f"  removed: {', '.join(deleted.removed)}")
        return 0

    return work
