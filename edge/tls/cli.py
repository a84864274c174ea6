"""``edge cert``: import, list, show and delete the certificates stored in Redis.

* ``cert:{name}``          -> the JSON record (:class:`edge.tls.material.CertRecord`)
* ``cert:domain:{domain}`` -> the certificate name serving ``domain``

Material is checked with the same code the workers use before anything is written, and
every write (a record with its domain keys, or their removal) is one ``MULTI``/``EXEC``
transaction guarded by ``WATCH`` on the keys read, so a concurrent edit aborts it cleanly.
Workers pick the change up from Redis by themselves.

No output and no error message of this module contains private key material: the key is
read from its file, checked and written to Redis, never printed (``show --pem`` prints the
certificate chain only), and every message that describes a stored record goes through
:func:`_scrub`, which removes anything that looks like a private key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from redis.exceptions import RedisError, WatchError

from edge.config.schema import ConfigError
from edge.config.watcher import redis_client
from edge.embedded_redis import socket_path, socket_url
from edge.settings import RedisTarget, SettingsError, environment, load_settings, redact_url
from edge.tls.contexts import server_context
from edge.tls.material import (
    CERT_DOMAIN_PREFIX,
    CERT_PREFIX,
    CertInfo,
    CertRecord,
    MaterialError,
    decode_cert,
    san_covers,
    validate_material,
)

__all__ = ["run_cert"]

PROG = "edge cert"
SCAN_COUNT = 1000
FETCH_BATCH = 500
IMPORTED_STATUS = "imported"

# a PEM private key block (any flavour: PKCS#8, RSA, EC, encrypted), possibly cut short;
# also as a repr() shows it, on one line with "\n" escapes
_PEM_KEY_RE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)


# one command's work against a connected client: the exit status
Work = Callable[[aioredis.Redis], Awaitable[int]]


class CliError(Exception):
    """A failure reported as ``edge cert: {message}`` with exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


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
        if args.cert_command == "list":
            return _run(_list(args), args)
        if args.cert_command == "show":
            return _run(_show(args), args)
        if args.cert_command == "delete":
            return _run(_delete(args), args)
        raise CliError(f"unknown command {args.cert_command!r}", 2)  # pragma: no cover
    except CliError as exc:
        print(f"{PROG}: {_scrub(exc.message)}", file=sys.stderr)
        return exc.status


def _redis_target(env_file: str | None) -> RedisTarget:
    try:
        env = environment(env_file)
    except SettingsError as exc:
        raise CliError(str(exc), 2) from None
    try:
        settings = load_settings(env)
    except SettingsError as exc:
        raise CliError(f"invalid setting: {exc}", 2) from None
    if settings.redis_url is not None:
        return settings.redis_target()
    if not socket_path(settings.state_dir).exists():
        raise CliError(
            "REDIS_URL is not set and the embedded redis is not running (no socket at "
            f"{socket_path(settings.state_dir)}); start the edge or set REDIS_URL"
        )
    return settings.redis_target(socket_url(settings.state_dir))


def _run(work: Work, args: argparse.Namespace) -> int:
    """Run ``work(client)`` against the configured Redis; the exit status."""
    redis = _redis_target(args.env_file)
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
# Reading Redis
# ---------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


async def _scan(client: aioredis.Redis, pattern: str) -> list[str]:
    keys: set[str] = set()
    async for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
        keys.add(_text(key))
    return sorted(keys)


async def _mget(client: aioredis.Redis, keys: Sequence[str]) -> dict[str, bytes | None]:
    """Values of ``keys``; None for absent keys and keys that hold another type."""
    result: dict[str, bytes | None] = {}
    for start in range(0, len(keys), FETCH_BATCH):
        batch = list(keys[start : start + FETCH_BATCH])
        values = await client.mget(batch)
        for key, value in zip(batch, values, strict=True):
            result[key] = value.encode("utf-8") if isinstance(value, str) else value
    return result


async def _record_keys(client: aioredis.Redis) -> list[str]:
    """Every ``cert:{name}`` key (not the ``cert:domain:`` keys), sorted."""
    return [k for k in await _scan(client, f"{CERT_PREFIX}*") if _cert_name(k) is not None]


def _cert_name(key: str) -> str | None:
    if key.startswith(CERT_DOMAIN_PREFIX) or not key.startswith(CERT_PREFIX):
        return None
    return key[len(CERT_PREFIX) :] or None


def _domain(domain_key: str) -> str:
    return domain_key[len(CERT_DOMAIN_PREFIX) :].lower()


def _pointee(value: bytes | None) -> str | None:
    """The certificate name a ``cert:domain:`` value names (None: absent)."""
    return None if value is None else _text(value).strip()


async def _domain_keys_of(client: aioredis.Redis, name: str) -> list[str]:
    """The ``cert:domain:`` keys whose value names certificate ``name``, sorted."""
    keys = await _scan(client, f"{CERT_DOMAIN_PREFIX}*")
    values = await _mget(client, keys)
    return [k for k, v in values.items() if _pointee(v) == name]


async def _type_of(client: aioredis.Redis, key: str) -> str:
    return _text(await client.type(key))


# ---------------------------------------------------------------------------
# Describing records
# ---------------------------------------------------------------------------


def _scrub(text: str, *secrets: str | None) -> str:
    """``text`` without private key material (PEM key blocks, lines of ``secrets``)."""
    text = _PEM_KEY_RE.sub("<private key redacted>", text)
    for secret in secrets:
        for line in (secret or "").splitlines():
            body = line.strip()
            if len(body) >= 8 and not body.startswith("-----"):
                text = text.replace(body, "<redacted>")
    return text


def _domain_text(value: object) -> str:
    """A best-effort ``domains`` entry of a record that did not decode, fit to print."""
    if not isinstance(value, str) or len(value) > 253 or not value.isprintable():
        return "<invalid>"
    return "<invalid>" if any(c.isspace() for c in value) else value


def _days_left(not_after: datetime, now: datetime) -> int:
    """Whole days until ``not_after`` (negative once past it), rounded toward zero."""
    return int((not_after - now).total_seconds() / 86400)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _chain_info(fullchain_pem: str) -> CertInfo | None:
    """What the chain alone says (for a record whose key or domains are at fault)."""
    try:
        chain = x509.load_pem_x509_certificates(fullchain_pem.encode("utf-8"))
    except (ValueError, UnicodeEncodeError):
        return None
    if not chain:  # pragma: no cover - cryptography raises for an empty chain
        return None
    leaf = chain[0]
    try:
        ext = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        san = tuple(n.lower() for n in ext.value.get_values_for_type(x509.DNSName))
    except (x509.ExtensionNotFound, ValueError):
        san = ()
    now = datetime.now(UTC)
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        serial=format(leaf.serial_number, "x"),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        san=san,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        key_type="unknown",
        chain_length=len(chain),
        expired=now > leaf.not_valid_after_utc,
        not_yet_valid=now < leaf.not_valid_before_utc,
    )


@dataclass(slots=True)
class Described:
    """A stored ``cert:{name}`` as far as it could be understood (never its key)."""

    name: str
    key: str
    record: CertRecord | None = None
    info: CertInfo | None = None
    problem: str | None = None
    # best-effort fields of a record that did not decode
    domains: tuple[str, ...] = ()
    status: str | None = None
    expires_at: str | None = None
    fullchain_pem: str | None = None
    # the record's private key, only to scrub it from what is printed about the record
    secret: str | None = field(default=None, repr=False)

    def scrub(self, text: str) -> str:
        return _scrub(text, self.secret)

    @property
    def not_after(self) -> datetime | None:
        if self.info is not None:
            return self.info.not_after
        return _parse_time(self.expires_at)

    def days_left(self, now: datetime) -> int | None:
        not_after = self.not_after
        return None if not_after is None else _days_left(not_after, now)


def describe(key: str, raw: bytes | None, kind: str | None = None) -> Described:
    """Decode and check the value of ``cert:{name}`` without ever raising."""
    name = key[len(CERT_PREFIX) :]
    found = Described(name=name, key=key)
    if raw is None:
        found.problem = f"holds a {kind or 'value of another type'}, expected a string"
        return found
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if isinstance(doc, dict):
        key_pem = doc.get("private_key_pem")
        found.secret = key_pem if isinstance(key_pem, str) else None
        domains = doc.get("domains")
        if isinstance(domains, list):
            found.domains = tuple(_domain_text(d) for d in domains)
        status, expires_at, chain = (doc.get(f) for f in ("status", "expires_at", "fullchain_pem"))
        found.status = status if isinstance(status, str) else None
        found.expires_at = expires_at if isinstance(expires_at, str) else None
        found.fullchain_pem = chain if isinstance(chain, str) else None
    try:
        record = decode_cert(key, raw)
    except ConfigError as exc:
        where = f"{exc.field}: " if exc.field else ""
        found.problem = found.scrub(f"{where}{exc.message}")
        if found.fullchain_pem is not None:
            found.info = _chain_info(found.fullchain_pem)
        return found
    found.record = record
    found.domains = record.domains
    found.status = record.status
    found.expires_at = record.expires_at
    found.fullchain_pem = record.fullchain_pem
    found.secret = record.private_key_pem
    try:
        found.info = validate_material(
            record.fullchain_pem, record.private_key_pem, record.domains, allow_expired=True
        )
    except MaterialError as exc:
        found.problem = found.scrub(f"{exc.field}: {exc.message}")
        found.info = _chain_info(record.fullchain_pem)
    return found


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


@dataclass(frozen=True, slots=True)
class Prepared:
    """A checked record ready to be written (its repr never shows the key)."""

    record: CertRecord  # its own repr redacts the key
    document: str = field(repr=False)  # the JSON to store, key included
    info: CertInfo


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
    key = f"{CERT_PREFIX}{name}"
    if name.startswith("domain:"):
        raise CliError(f"invalid certificate name {name!r}: names starting 'domain:' are reserved")
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
            found = validate_material(fullchain_pem, private_key_pem, (), allow_expired=True)
        except MaterialError as exc:
            raise CliError(_material_message(exc, args)) from None
        domains = list(found.san)
        if not domains:
            raise CliError(
                f"{args.cert}: the certificate has no DNS names in its subjectAltName, "
                "so it cannot serve any domain"
            )
    doc: dict[str, Any] = {
        "cert_name": name,
        "domains": domains,
        "fullchain_pem": fullchain_pem,
        "private_key_pem": private_key_pem,
        "status": IMPORTED_STATUS,
    }
    if args.email is not None:
        doc["email"] = args.email
    try:
        # the shape first (name, domain syntax, email): the same check workers run
        record = decode_cert(key, json.dumps(doc))
        info = validate_material(
            record.fullchain_pem,
            record.private_key_pem,
            record.domains,
            allow_expired=args.allow_expired,
        )
        # and what OpenSSL itself will say when a worker loads it
        server_context(record.fullchain_pem, record.private_key_pem)
    except ConfigError as exc:
        where = f"{exc.field}: " if exc.field else ""
        raise CliError(_scrub(f"invalid record: {where}{exc.message}", private_key_pem)) from None
    except MaterialError as exc:
        raise CliError(_scrub(_material_message(exc, args), private_key_pem)) from None
    doc["domains"] = list(record.domains)
    doc["expires_at"] = info.not_after.isoformat()
    return Prepared(record=record, document=json.dumps(doc), info=info)


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
        name = record.cert_name
        key = f"{CERT_PREFIX}{name}"
        new_keys = [f"{CERT_DOMAIN_PREFIX}{d}" for d in record.domains]
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            kind = await _type_of(pipe, key)
            if kind != "none" and not args.force:
                raise CliError(f"{key} already exists; use --force to replace it")
            if kind not in ("none", "string"):
                raise CliError(f"{key} holds a {kind}, not a certificate record; delete it first")
            pointing = await _domain_keys_of(pipe, name)
            others = [k for k in pointing if _domain(k) not in record.domains]
            read = sorted({*new_keys, *others})
            await pipe.watch(*read)
            current = {k: _pointee(v) for k, v in (await _mget(pipe, read)).items()}
            taken = {k: v for k in new_keys if (v := current[k]) is not None and v != name}
            # the keys of domains no longer listed, still pointing here once watched
            others = [k for k in others if current[k] == name]
            stale = others if kind != "none" else []
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(key, prepared.document)
            for domain_key in new_keys:
                pipe.set(domain_key, name)
            for domain_key in stale:
                pipe.delete(domain_key)
            try:
                await pipe.execute()
            except WatchError:
                raise CliError(
                    f"{key} or its cert:domain: keys changed while importing; nothing was "
                    "written, run the command again"
                ) from None
        info = prepared.info
        now = datetime.now(UTC)
        verb = "replaced" if kind != "none" else "imported"
        print(f"{verb} {key}")
        print(f"  domains:     {', '.join(record.domains)}")
        print(f"  subject:     {info.subject}")
        print(f"  issuer:      {info.issuer}")
        print(f"  serial:      {info.serial}")
        print(f"  key type:    {info.key_type}")
        print(f"  not_after:   {info.not_after.isoformat()} ({_days_text(info.not_after, now)})")
        print(f"  wrote:       {', '.join([key, *new_keys])}")
        for domain_key, previous in sorted(taken.items()):
            print(f"  took over:   {domain_key} (was {previous})")
        if stale:
            print(f"  removed:     {', '.join(stale)}")
        elif others:
            print(f"  also here:   {', '.join(others)} (left in place)")
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
    days = _days_left(not_after, now)
    if not_after < now:
        return f"EXPIRED {-days} days ago" if days else "EXPIRED"
    return f"{days} days left"


# ---------------------------------------------------------------------------
# list, show, delete
# ---------------------------------------------------------------------------


async def _describe_keys(client: aioredis.Redis, keys: list[str]) -> list[Described]:
    values = await _mget(client, keys)
    found: list[Described] = []
    for key in keys:
        raw = values.get(key)
        kind = await _type_of(client, key) if raw is None else None
        if kind == "none":  # deleted since the scan
            continue
        found.append(describe(key, raw, kind))
    return found


def _list(args: argparse.Namespace) -> Work:
    async def work(client: aioredis.Redis) -> int:
        items = await _describe_keys(client, await _record_keys(client))
        items.sort(key=lambda item: item.name)
        now = datetime.now(UTC)
        if args.json:
            text = json.dumps([_summary(item, now) for item in items], indent=2)
            print(_scrub(text, *(item.secret for item in items)))
            return 0
        if not items:
            print("no certificates (no cert:* records)")
            return 0
        rows = [("NAME", "DOMAINS", "NOT_AFTER", "DAYS", "STATUS", "PROBLEM")]
        secrets = [None, *(item.secret for item in items)]
        for item in items:
            not_after = item.not_after
            days = item.days_left(now)
            rows.append(
                (
                    item.name,
                    ",".join(item.domains) or "-",
                    not_after.isoformat() if not_after is not None else "-",
                    str(days) if days is not None else "-",
                    item.status or "-",
                    f"! {item.problem}" if item.problem else "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row, secret in zip(rows, secrets, strict=True):
            cells = [cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)]
            print(_scrub("  ".join([*cells, row[5]]).rstrip(), secret))
        bad = sum(1 for item in items if item.problem)
        if bad:
            print(f"{PROG}: {bad} record(s) with problems (marked !)", file=sys.stderr)
        return 0

    return work


def _show(args: argparse.Namespace) -> Work:
    async def work(client: aioredis.Redis) -> int:
        key = f"{CERT_PREFIX}{args.name}"
        if _cert_name(key) is None:
            raise CliError(f"{key} is not a certificate record key")
        items = await _describe_keys(client, [key])
        if not items:
            raise CliError(f"{key} does not exist")
        item = items[0]
        pointing = await _domain_keys_of(client, item.name)
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
            ignored = info is not None and not san_covers(info.san, _domain(domain_key))
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
        name: str = args.name
        key = f"{CERT_PREFIX}{name}"
        if _cert_name(key) is None:
            raise CliError(f"{key} is not a certificate record key")
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            if await _type_of(pipe, key) == "none":
                raise CliError(f"{key} does not exist")
            pointing = await _domain_keys_of(pipe, name)
            if pointing:
                await pipe.watch(*pointing)
                # only those still pointing here once watched
                values = await _mget(pipe, pointing)
                pointing = [k for k, v in values.items() if _pointee(v) == name]
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.delete(key, *pointing)
            try:
                await pipe.execute()
            except WatchError:
                raise CliError(
                    f"{key} or its cert:domain: keys changed while deleting; nothing was "
                    "deleted, run the command again"
                ) from None
        print(f"deleted {key}")
        if pointing:
            print(f"  removed: {', '.join(pointing)}")
        return 0

    return work
