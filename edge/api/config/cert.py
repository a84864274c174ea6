"""``/api/v1/certificates``: the ``cert:{name}`` records, read and deleted (never the key).

No answer ever contains a private key, the admin's included: documents are built field by
field from what the certificate says, and :func:`_without_key` refuses (500) any answer
in which a line of the record's key would still appear. Problems with the material are
described by :mod:`edge.tls.material`, whose messages never quote the key.

Checking material costs milliseconds per record (an RSA key check), so it runs in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

from edge.api.config.store import (
    ConfigScope,
    as_text,
    can_see,
    cert_key,
    encode,
    fetch_visible,
    loose_doc,
    owner_of,
    read,
    transaction,
    visible_raw,
    visible_values,
)
from edge.api.http import ApiError, NotFound, Response
from edge.api.request import ApiRequest, Authenticator, Endpoint
from edge.api.router import Router
from edge.config.schema import ConfigError, classify_key, decode_item
from edge.store import keys
from edge.store.scan import scan_values
from edge.store.transaction import Txn
from edge.tls.material import CertInfo, CertRecord, validate_record

__all__ = ["PREFIX", "add_cert_routes"]

log = logging.getLogger("edge.api")

PREFIX = "/api/v1/certificates"
DOMAIN_PATTERN = keys.CERT_DOMAIN + "*"


def _not_found() -> NotFound:
    return NotFound(code="certificate_not_found", public_message="no certificate with this name")


def _name(req: ApiRequest[ConfigScope]) -> str:
    name = req.params["name"]
    if classify_key(cert_key(name)) != "cert":
        raise _not_found()  # "domain:..." would address a cert:domain: key
    return name


class Examined:
    """A stored ``cert:{name}`` as far as it could be understood (holds no key)."""

    __slots__ = ("domains", "info", "name", "problem", "record", "secret_lines")

    def __init__(self, name: str) -> None:
        self.name = name
        self.record: CertRecord | None = None
        self.info: CertInfo | None = None
        self.problem: str | None = None
        self.domains: list[str] = []
        # the lines of the record's private key, only to check that no answer shows them
        self.secret_lines: tuple[str, ...] = ()


def _secret_lines(raw: bytes) -> tuple[str, ...]:
    value = loose_doc(raw).get("private_key_pem")
    if not isinstance(value, str):
        return ()
    lines = (line.strip() for line in value.splitlines())
    return tuple(line for line in lines if len(line) >= 8 and not line.startswith("-----"))


def examine(key: str, raw: bytes) -> Examined:
    """Decode and check ``cert:{name}`` (CPU-bound: run it in a thread); never raises."""
    found = Examined(key[len(keys.CERT) :])
    found.secret_lines = _secret_lines(raw)
    loose = loose_doc(raw)
    domains = loose.get("domains")
    if isinstance(domains, list):
        found.domains = [d for d in domains if isinstance(d, str)]
    try:
        record = decode_item(key, raw)
        assert isinstance(record, CertRecord)
        found.record = record
        found.domains = list(record.domains)
        found.record, found.info = validate_record(key, record, allow_expired=True)
    except ConfigError as exc:
        found.problem = f"{exc.field}: {exc.message}" if exc.field else exc.message
    return found


def _summary(item: Examined, raw: bytes) -> dict[str, Any]:
    loose = loose_doc(raw)
    record = item.record
    expires_at = record.expires_at if record is not None else loose.get("expires_at")
    status = record.status if record is not None else loose.get("status")
    return {
        "name": item.name,
        "domains": item.domains,
        "expires_at": expires_at if isinstance(expires_at, str) else None,
        "status": status if isinstance(status, str) else None,
        "problem": item.problem,
    }


def _details(item: Examined, raw: bytes, domain_keys: list[str]) -> dict[str, Any]:
    doc = _summary(item, raw)
    info, record = item.info, item.record
    doc.update(
        {
            "subject": info.subject if info else None,
            "issuer": info.issuer if info else None,
            "serial": info.serial if info else None,
            "san": list(info.san) if info else [],
            "not_before": info.not_before.isoformat() if info else None,
            "not_after": info.not_after.isoformat() if info else None,
            "expired": info.expired if info else None,
            "fingerprint_sha256": info.fingerprint_sha256 if info else None,
            "key_type": info.key_type if info else None,
            "chain_length": info.chain_length if info else None,
            "email": record.email if record else None,
            "acme_directory_url": record.acme_directory_url if record else None,
            "owner_token_hash": record.owner_token_hash if record else None,
            "domain_keys": domain_keys,
        }
    )
    return doc


def _without_key(doc: Any, *items: Examined) -> Any:
    """``doc``, checked to hold no line of any of the records' private keys."""
    text = encode(doc).decode("utf-8", "replace")
    leaked = "PRIVATE KEY" in text or any(
        line in text for item in items for line in item.secret_lines
    )
    if leaked:  # unreachable by construction: never answer rather than answer with a key
        log.error("certificate answer refused: it would contain private key material")
        raise ApiError("private key material in an answer")
    return doc


async def _domain_keys(client: aioredis.Redis, name: str) -> list[str]:
    """The ``cert:domain:`` keys whose value names certificate ``name``."""
    found = await scan_values(client, DOMAIN_PATTERN)
    return sorted(k for k, v in found.items() if as_text(v).strip() == name)


async def list_certificates(req: ApiRequest[ConfigScope]) -> Response:
    found = await visible_values(req.scope, keys.CERT + "*", lambda k: classify_key(k) == "cert")

    def work() -> list[Examined]:
        return [examine(key, raw) for key, raw in found.items()]

    items = await asyncio.to_thread(work)
    certificates = [_summary(item, found[cert_key(item.name)]) for item in items]
    return Response(200, _without_key({"certificates": certificates}, *items))


async def get_certificate(req: ApiRequest[ConfigScope]) -> Response:
    name = _name(req)
    key = cert_key(name)
    client = req.scope.redis.client
    raw = await fetch_visible(req.scope, key, _not_found)
    item = await asyncio.to_thread(examine, key, raw)
    pointing = await read(req.scope, _domain_keys(client, name))
    return Response(200, _without_key(_details(item, raw, pointing), item))


async def delete_certificate(req: ApiRequest[ConfigScope]) -> Response:
    name = _name(req)
    key = cert_key(name)

    status_key = keys.cert_status(name)

    async def write(txn: Txn) -> None:
        # an ACME order in progress has a status and no record yet: deleting cancels it
        raw_status = await txn.get(status_key)
        ordering = raw_status is not None and can_see(req.scope, owner_of(raw_status))
        try:
            await visible_raw(txn.reader, req.scope, key, _not_found)
        except NotFound:
            if not ordering:
                raise
        pointing = await _domain_keys(txn.reader, name)
        if pointing:
            await txn.watch(*pointing)
            # only those still naming it once watched
            values = await txn.mget(pointing)
            pointing = [
                k for k, v in zip(pointing, values, strict=True) if v and as_text(v).strip() == name
            ]
        pipe = txn.writes()
        pipe.delete(key, *pointing)
        pipe.delete(status_key, keys.acme_renewal(name))
        pipe.zrem(keys.ACME_QUEUE, name)

    await transaction(req.scope, [key, status_key], write)
    return Response(204)


def add_cert_routes(router: Router[Endpoint[Any]], token: Authenticator[ConfigScope]) -> None:
    router.add("GET", f"{PREFIX}/", Endpoint(token, list_certificates))
    router.add("GET", f"{PREFIX}/{{name}}", Endpoint(token, get_certificate))
    router.add("DELETE", f"{PREFIX}/{{name}}", Endpoint(token, delete_certificate))
