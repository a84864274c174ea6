"""Immutable configuration snapshots, updated key by key.

A snapshot holds every config key's raw value (to tell what changed at resync), the decoded
items, the keys rejected with their error, and a ``Router`` built for it. ``apply()`` makes
a new snapshot from a batch of changed keys: only the changed keys are decoded and only the
maps they belong to are copied; nothing is re-read from Redis.

Keys that differ only in case (``proxy:App.test``, ``proxy:app.test``) name the same host.
The host is served by the first valid one of them, the all-lowercase key first, then the
others in sorted order, so every worker picks the same one whatever order keys arrive in,
and deleting or breaking one of them hands the host over to the other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge.config.redis_source import WrongType
from edge.config.schema import (
    CertDomain,
    ConfigError,
    ExternalService,
    ProxyConfig,
    RouteConfig,
    ServiceURL,
    classify_key,
    decode_item,
)
from edge.routing.router import CompiledRoute, Router, compile_route
from edge.tls.material import CertRecord

log = logging.getLogger("edge.config")


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int = 0
    raw: Mapping[str, bytes] = field(default_factory=dict)
    exact: Mapping[str, ProxyConfig] = field(default_factory=dict)
    wildcards: Mapping[str, ProxyConfig] = field(default_factory=dict)
    routes: Mapping[str, CompiledRoute] = field(default_factory=dict)
    services: Mapping[str, ExternalService] = field(default_factory=dict)
    urls: Mapping[str, str] = field(default_factory=dict)
    rejected: Mapping[str, str] = field(default_factory=dict)
    # cert:{name} (shape-checked; the PEM material is checked where contexts are built)
    certs: Mapping[str, CertRecord] = field(default_factory=dict)
    # cert:domain:{domain} -> certificate name
    cert_domains: Mapping[str, str] = field(default_factory=dict)
    # "proxy:{lowercased suffix}" -> the proxy keys present whose suffix is not lowercase
    proxy_aliases: Mapping[str, frozenset[str]] = field(default_factory=dict)
    router: Router = field(default_factory=lambda: Router({}, {}, {}, {}, {}))

    @property
    def proxy_count(self) -> int:
        return len(self.exact) + len(self.wildcards)

    @property
    def item_count(self) -> int:
        return len(self.raw)


def _proxy_slot(key: str) -> tuple[bool, str]:
    """(is_wildcard, map key) for a ``proxy:{hostname}`` key."""
    host = key[len("proxy:") :].lower()
    if host.startswith("*."):
        return True, host[1:]
    return False, host


def _same(old: bytes | None, new: bytes | None) -> bool:
    """Equal values; a WrongType marker never equals a string value with the same bytes."""
    return old == new and type(old) is type(new)


def apply(snapshot: Snapshot, updates: Mapping[str, bytes | None]) -> Snapshot:
    """A new snapshot with ``updates`` (key -> raw value, None = deleted) applied."""
    changes = {k: v for k, v in updates.items() if not _same(snapshot.raw.get(k), v)}
    if not changes:
        return snapshot
    raw = dict(snapshot.raw)
    rejected = dict(snapshot.rejected)
    maps: dict[str, dict[str, object]] = {}
    aliases: dict[str, frozenset[str]] | None = None
    touched_proxies: set[str] = set()  # lowercased proxy keys whose host must be re-owned
    decoded: dict[str, ProxyConfig] = {}

    def edit(name: str) -> dict[str, object]:
        if name not in maps:
            maps[name] = dict(getattr(snapshot, name))
        return maps[name]

    for key, value in changes.items():
        kind = classify_key(key)
        if kind is None:
            continue
        # drop whatever the key held before
        rejected.pop(key, None)
        if kind == "proxy":
            canonical = key.lower()
            touched_proxies.add(canonical)
            if key != canonical:
                if aliases is None:
                    aliases = dict(snapshot.proxy_aliases)
                names = aliases.get(canonical, frozenset())
                names = names - {key} if value is None else names | {key}
                if names:
                    aliases[canonical] = names
                else:
                    aliases.pop(canonical, None)
        elif kind == "route":
            edit("routes").pop(key[len("route:") :], None)
        elif kind == "service_url":
            edit("urls").pop(key[len("service:url:") :], None)
        elif kind == "cert":
            edit("certs").pop(key[len("cert:") :], None)
        elif kind == "cert_domain":
            edit("cert_domains").pop(key[len("cert:domain:") :].lower(), None)
        else:
            edit("services").pop(key[len("service:external:") :], None)
        if value is None:
            raw.pop(key, None)
            continue
        raw[key] = value
        try:
            if isinstance(value, WrongType):
                raise ConfigError(key, None, f"holds a {value.decode()}, expected a string")
            item = decode_item(key, value)
        except ConfigError as exc:
            rejected[key] = str(exc)
            log.warning("config key rejected", extra={"fields": {"key": key, "error": str(exc)}})
            continue
        if isinstance(item, ProxyConfig):
            decoded[key] = item
        elif isinstance(item, RouteConfig):
            edit("routes")[item.route_id] = compile_route(item)
        elif isinstance(item, ServiceURL):
            edit("urls")[item.name] = item.url
        elif isinstance(item, ExternalService):
            edit("services")[key[len("service:external:") :]] = item
        elif isinstance(item, CertRecord):
            edit("certs")[key[len("cert:") :]] = item
        elif isinstance(item, CertDomain):
            edit("cert_domains")[item.domain] = item.cert_name
    proxy_aliases = snapshot.proxy_aliases if aliases is None else aliases
    for canonical in touched_proxies:
        owner = _proxy_owner(canonical, proxy_aliases, raw, rejected, decoded)
        wildcard, slot = _proxy_slot(canonical)
        target = edit("wildcards" if wildcard else "exact")
        if owner is None:
            target.pop(slot, None)
        else:
            target[slot] = owner
    exact = maps.get("exact", snapshot.exact)
    wildcards = maps.get("wildcards", snapshot.wildcards)
    routes = maps.get("routes", snapshot.routes)
    services = maps.get("services", snapshot.services)
    urls = maps.get("urls", snapshot.urls)
    router = Router(exact, wildcards, routes, services, urls)  # type: ignore[arg-type]
    return Snapshot(
        generation=snapshot.generation + 1,
        raw=raw,
        exact=exact,  # type: ignore[arg-type]
        wildcards=wildcards,  # type: ignore[arg-type]
        routes=routes,  # type: ignore[arg-type]
        services=services,  # type: ignore[arg-type]
        urls=urls,  # type: ignore[arg-type]
        rejected=rejected,
        certs=maps.get("certs", snapshot.certs),  # type: ignore[arg-type]
        cert_domains=maps.get("cert_domains", snapshot.cert_domains),  # type: ignore[arg-type]
        proxy_aliases=proxy_aliases,
        router=router,
    )


def _proxy_owner(
    canonical: str,
    aliases: Mapping[str, frozenset[str]],
    raw: Mapping[str, bytes],
    rejected: Mapping[str, str],
    decoded: Mapping[str, ProxyConfig],
) -> ProxyConfig | None:
    """The document serving the host of ``canonical``: its first valid key, if any."""
    for key in (canonical, *sorted(aliases.get(canonical, ()))):
        value = raw.get(key)
        if value is None or key in rejected:
            continue
        item = decoded.get(key)
        if item is None:
            # accepted by an earlier apply; decoding is deterministic
            try:
                found = decode_item(key, value)
            except ConfigError:
                continue
            if not isinstance(found, ProxyConfig):
                continue
            item = found
        return item
    return None


def resync_updates(snapshot: Snapshot, current: Mapping[str, bytes]) -> dict[str, bytes | None]:
    """The changes that turn ``snapshot`` into the full state ``current`` read from Redis."""
    updates: dict[str, bytes | None] = {
        k: v for k, v in current.items() if not _same(snapshot.raw.get(k), v)
    }
    for key in snapshot.raw:
        if key not in current:
            updates[key] = None
    return updates
