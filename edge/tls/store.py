"""A worker's certificates: contexts built off the loop, swapped in when Redis changes.

The config watcher installs snapshots; ``TlsStore.update`` is told of each. Certificates
whose record changed are validated and turned into ``SSLContext`` objects in a thread (an
RSA key check costs milliseconds), then a new immutable ``CertIndex`` replaces the old
one in a single assignment. The SNI callback only ever reads ``self.index``: choosing a
certificate during a handshake never waits on I/O. Connections already established keep
the context they were given.

A new value that is refused, whether as a document (bad JSON, a missing or unknown field:
the config snapshot keeps the last good record) or for its material (PEM that does not
parse, a key that does not match, a domain the certificate does not cover: refused here),
is reported (log, ``/health``, ``edge check``) and skipped; the certificate built from the
previous good value stays in use. Deleting the key removes the certificate.

The default certificate (served for unknown or missing SNI unless ``TLS_STRICT_SNI``) is
self-signed for ``SELF_SIGNED_CN`` and shared through Redis under ``DEFAULT_CERT_KEY``, so
every worker on every node presents the same one: the first to find it missing or stale
generates it under a short lease (:mod:`edge.store.lease`), the others wait for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from edge.config.schema import ConfigError
from edge.config.snapshot import Snapshot
from edge.health import Report, Verdict
from edge.settings import Settings
from edge.store import keys
from edge.store.lease import hold
from edge.tls.contexts import listener_context, server_context
from edge.tls.material import (
    CERT_DOMAIN_PREFIX,
    CERT_PREFIX,
    CertInfo,
    CertRecord,
    MaterialError,
    validate_record,
)
from edge.tls.selfsigned import generate_self_signed
from edge.tls.sni import CertIndex, make_sni_callback, selected_cert

log = logging.getLogger("edge.tls")

DEFAULT_CERT_KEY = keys.TLS_DEFAULT
_DEFAULT_LOCK_KEY = keys.TLS_DEFAULT_LEASE
_LOCK_SECONDS = 60
_RENEW_BEFORE = timedelta(days=7)  # regenerate a default certificate this close to expiry

Built = tuple[CertRecord, ssl.SSLContext, CertInfo]


def build(name: str, record: CertRecord) -> Built:
    """Validate ``cert:{name}`` and make its context (CPU-bound: call it in a thread)."""
    key = keys.cert(name)
    record, info = validate_record(key, record, allow_expired=True)
    try:
        context = server_context(record.fullchain_pem, record.private_key_pem)
    except MaterialError as exc:
        raise ConfigError(key, exc.field, exc.message) from None
    return record, context, info


def _build_many(items: Mapping[str, CertRecord]) -> dict[str, Built | ConfigError]:
    out: dict[str, Built | ConfigError] = {}
    for name, record in items.items():
        try:
            out[name] = build(name, record)
        except ConfigError as exc:
            out[name] = exc
    return out


class TlsStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.index = CertIndex()
        self.default: ssl.SSLContext | None = None
        self.default_info: dict[str, Any] = {}
        # cert name -> why its current record is not served (the previous one may be)
        self.errors: dict[str, str] = {}
        self.generation = 0  # snapshots applied, for tests and /health
        self._built: dict[str, Built] = {}
        self._source: dict[str, CertRecord] = {}  # the snapshot record each was built from
        self._failed: dict[str, CertRecord] = {}  # records refused (not retried until changed)
        self._seen: tuple[object, object] | None = None
        # cert name -> why its document in Redis is refused (the last good one is served)
        self._refused: Mapping[str, str] = {}
        self._pending: Snapshot | None = None
        self._task: asyncio.Task[None] | None = None
        # told each time a new index is in place (on-demand TLS waits on it)
        self.on_index: list[Callable[[], None]] = []
        strict = settings.tls_strict_sni
        self.listener = listener_context(
            make_sni_callback(lambda: self.index, lambda: self.default, lambda: strict)
        )

    # ------------------------------------------------------------------ certificates
    def update(self, snapshot: Snapshot) -> None:
        """Called with every installed snapshot; rebuilds only when certificates changed."""
        # a refused document leaves the snapshot's record (the last good one) unchanged,
        # so nothing is rebuilt; it is reported with the refused material
        self._refused = {
            key[len(CERT_PREFIX) :]: error
            for key, error in snapshot.rejected.items()
            if key.startswith(CERT_PREFIX) and not key.startswith(CERT_DOMAIN_PREFIX)
        }
        seen = (snapshot.certs, snapshot.cert_domains)
        if self._seen is not None and seen[0] is self._seen[0] and seen[1] is self._seen[1]:
            return
        self._seen = seen
        self._pending = snapshot
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._rebuild(), name="tls")

    async def settled(self) -> None:
        """Wait until the certificates of the latest snapshot are in the index."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _rebuild(self) -> None:
        while self._pending is not None:
            snapshot, self._pending = self._pending, None
            certs = snapshot.certs
            for name, record in certs.items():
                if self._source.get(name) == record:
                    # back to the value that is being served: nothing left to report
                    self.errors.pop(name, None)
                    self._failed.pop(name, None)
            # records as they are in the snapshot, built or refused already: skipped
            changed = {
                name: record
                for name, record in certs.items()
                if self._source.get(name) != record and self._failed.get(name) != record
            }
            results = await asyncio.to_thread(_build_many, changed) if changed else {}
            for name, result in results.items():
                if isinstance(result, ConfigError):
                    self.errors[name] = str(result)
                    self._failed[name] = changed[name]
                    kept = "previous certificate kept" if name in self._built else "not served"
                    log.warning(
                        "certificate rejected",
                        extra={"fields": {"cert": name, "error": str(result), "action": kept}},
                    )
                    continue
                self.errors.pop(name, None)
                self._failed.pop(name, None)
                self._source[name] = changed[name]
                self._built[name] = result
                info = result[2]
                fields = {
                    "cert": name,
                    "serial": info.serial,
                    "not_after": info.not_after.isoformat(),
                }
                if info.expired:
                    log.warning("certificate has expired", extra={"fields": fields})
                log.info("certificate loaded", extra={"fields": fields})
            rejected = snapshot.rejected
            for name in [n for n in self._built if n not in certs]:
                problem = rejected.get(keys.cert(name))
                if problem is not None:
                    # the key is still there but its new value was refused (bad JSON, a
                    # missing field...): keep serving the last good certificate
                    if self.errors.get(name) != problem:
                        self.errors[name] = problem
                        fields = {"cert": name, "error": problem, "action": "previous kept"}
                        log.warning("certificate rejected", extra={"fields": fields})
                    continue
                del self._built[name]
                del self._source[name]
                log.info("certificate removed", extra={"fields": {"cert": name}})
            for name in [n for n in self.errors if n not in certs]:
                if keys.cert(name) in rejected and name in self._built:
                    continue
                del self.errors[name]
                self._failed.pop(name, None)
            index = CertIndex(
                {name: (ctx, rec.domains, info) for name, (rec, ctx, info) in self._built.items()},
                dict(snapshot.cert_domains),
            )
            for problem in index.problems:
                log.warning("certificate mapping skipped", extra={"fields": {"problem": problem}})
            self.index = index
            self.generation += 1
            for hook in self.on_index:
                hook()

    # ------------------------------------------------------------------ requests
    def covers(self, tls: ssl.SSLObject, host: str) -> bool:
        """May a request for ``host`` be answered on this TLS connection (else 421)?

        A connection given a configured certificate serves the hosts that certificate
        covers. One given the default certificate (unknown or no SNI) serves hosts that
        have no certificate of their own; a host that has one must be asked for by name.
        """
        chosen = selected_cert(tls)
        if chosen is not None:
            return chosen.covers(host)
        return self.index.select(host) is None

    def health_report(self) -> Report:
        """Degraded while a certificate record does not load."""
        return Report({"tls": self.health()}, Verdict.DEGRADED if self.errors else Verdict.OK)

    def health(self) -> dict[str, Any]:
        return {
            "certificates": len(self.index),
            "hosts": len(self.index.hosts),
            # a refused document is the current value: it says more than the material
            # problem of the record before it
            "rejected": {**self.errors, **self._refused},
            "mapping_problems": list(self.index.problems),
            "default": self.default_info or None,
        }

    # ------------------------------------------------------------------ default certificate
    async def load_default(self, redis: Any) -> None:
        """Fetch the shared default certificate, generating it first if needed."""
        s = self.settings
        for _ in range(int(_LOCK_SECONDS / 0.25) + 40):
            raw = await redis.get(DEFAULT_CERT_KEY)
            usable = self._usable_default(raw)
            if usable is not None:
                self._install_default(*usable)
                return
            async with hold(redis, _DEFAULT_LOCK_KEY, _LOCK_SECONDS) as generating:
                if generating:
                    chain, key = await asyncio.to_thread(
                        generate_self_signed, s.self_signed_cn, s.self_signed_days, s.rsa_key_size
                    )
                    doc = {"cn": s.self_signed_cn, "fullchain_pem": chain, "private_key_pem": key}
                    await redis.set(DEFAULT_CERT_KEY, json.dumps(doc))
                    log.info(
                        "default certificate generated", extra={"fields": {"cn": s.self_signed_cn}}
                    )
            if not generating:
                await asyncio.sleep(0.25)
        raise RuntimeError("the shared default certificate did not appear in Redis")

    def _usable_default(self, raw: bytes | None) -> tuple[ssl.SSLContext, CertInfo] | None:
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
            if doc.get("cn") != self.settings.self_signed_cn:
                return None
            record = CertRecord(
                cert_name="default",
                domains=(self.settings.self_signed_cn,),
                fullchain_pem=doc["fullchain_pem"],
                private_key_pem=doc["private_key_pem"],
            )
            _, context, info = build("default", record)
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
            log.warning(
                "stored default certificate unusable", extra={"fields": {"error": str(exc)}}
            )
            return None
        if info.not_after - datetime.now(UTC) < _RENEW_BEFORE:
            return None
        return context, info

    def _install_default(self, context: ssl.SSLContext, info: CertInfo) -> None:
        self.default = context
        self.default_info = {
            "cn": self.settings.self_signed_cn,
            "serial": info.serial,
            "not_after": info.not_after.isoformat(),
        }
