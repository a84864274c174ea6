"""Immutable configuration snapshots, updated key by key.

A snapshot holds every config key's raw value (to tell what changed at resync), the decoded
items and the keys rejected with their error. ``apply()`` makes a new snapshot from a batch
of changed keys: only the changed keys are decoded and only the maps they belong to are
copied (an unchanged key keeps its very item object); nothing is re-read from Redis. The
routing table is compiled from a snapshot by ``edge.routing.table`` when it is installed:
config knows nothing of routing.

A rejected value never takes down what works: the key keeps serving its last good value
(as certificates do), and the rejection is reported (log, ``/health``, ``edge check``) until
the key is fixed, or deleted or expired, which forgets both. A key that never held a good
value is not served; a host left without a proxy that way is named in ``unserved`` so that
its 404 can say why.

Keys that differ only in case (``proxy:App.test``, ``proxy:app.test``) name the same host.
The host is served by the first valid one of them, the all-lowercase key first, then the
others in sorted order, so every worker picks the same one whatever order keys arrive in,
and deleting or breaking one of them hands the host over to the other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edge.config.redis_source import WrongType
from edge.config.schema import (
    CertDomain,
    ConfigError,
    ConfigItem,
    ExternalService,
    ProxyConfig,
    RouteConfig,
    ServiceURL,
    classify_key,
    decode_item,
)
from edge.config.targets import AppTarget, DatabaseTarget, ResourceTarget
from edge.store import keys
from edge.tls.material import CertRecord


@dataclass(frozen=True, slots=True)
class Snapshot:
    generation: int = 0
    raw: Mapping[str, bytes] = field(default_factory=dict)
    exact: Mapping[str, ProxyConfig] = field(default_factory=dict)
    wildcards: Mapping[str, ProxyConfig] = field(default_factory=dict)
    routes: Mapping[str, RouteConfig] = field(default_factory=dict)
    services: Mapping[str, ExternalService] = field(default_factory=dict)
    urls: Mapping[str, str] = field(default_factory=dict)
    rejected: Mapping[str, str] = field(default_factory=dict)
    # rejected keys still served by their last good value -> that value
    kept: Mapping[str, bytes] = field(default_factory=dict)
    # host ("a.test", "*.a.test") with no good proxy value -> the rejected key it would use
    unserved: Mapping[str, str] = field(default_factory=dict)
    # cert:{name} (shape-checked; the PEM material is checked where contexts are built)
    certs: Mapping[str, CertRecord] = field(default_factory=dict)
    # cert:domain:{domain} -> certificate name
    cert_domains: Mapping[str, str] = field(default_factory=dict)
    # "proxy:{lowercased suffix}" -> the proxy keys present whose suffix is not lowercase
    proxy_aliases: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # port-forward targets (edge.config.targets), by id: app:{id}, app_resource:{id},
    # database:{id}
    apps: Mapping[str, AppTarget] = field(default_factory=dict)
    app_resources: Mapping[str, ResourceTarget] = field(default_factory=dict)
    databases: Mapping[str, DatabaseTarget] = field(default_factory=dict)

    @property
    def proxy_count(self) -> int:
        return len(self.exact) + len(self.wildcards)

    @property
    def item_count(self) -> int:
        return len(self.raw)


def _proxy_slot(key: str) -> tuple[bool, str]:
    """(is_wildcard, map key) for a ``proxy:{hostname}`` key."""
    host = key[len(keys.PROXY) :].lower()
    if host.startswith("*."):
        return True, host[1:]
    return False, host


# kind -> (snapshot map, how a key names its entry there)
_MAPS: dict[str, tuple[str, Callable[[str], str]]] = {
    "route": ("routes", lambda key: key[len(keys.ROUTE) :]),
    "service_url": ("urls", lambda key: key[len(keys.SERVICE_URL) :]),
    "service_external": ("services", lambda key: key[len(keys.SERVICE_EXTERNAL) :]),
    "cert": ("certs", lambda key: key[len(keys.CERT) :]),
    "cert_domain": ("cert_domains", lambda key: key[len(keys.CERT_DOMAIN) :].lower()),
    "app": ("apps", lambda key: key[len(keys.APP) :]),
    "app_resource": ("app_resources", lambda key: key[len(keys.APP_RESOURCE) :]),
    "database": ("databases", lambda key: key[len(keys.DATABASE) :]),
}


def _same(old: bytes | None, new: bytes | None) -> bool:
    """Equal values; a WrongType marker never equals a string value with the same bytes."""
    return old == new and type(old) is type(new)


def _decode(key: str, value: bytes) -> ConfigItem:
    if isinstance(value, WrongType):
        raise ConfigError(key, None, f"holds a {value.decode()}, expected a string")
    return decode_item(key, value)


def _last_good(snapshot: Snapshot, key: str) -> bytes | None:
    """The value ``key`` serves in ``snapshot``, if any: its kept value or its accepted one."""
    if key in snapshot.rejected:
        return snapshot.kept.get(key)
    return snapshot.raw.get(key)


def apply(
    snapshot: Snapshot,
    updates: Mapping[str, bytes | None],
    last_good: Mapping[str, bytes] | None = None,
) -> Snapshot:
    """A new snapshot with ``updates`` (key -> raw value, None = deleted) applied.

    A rejected key keeps the value it served in ``snapshot``; one that served none there
    takes its value in ``last_good`` (kept by another worker, shared through Redis), if
    that value is valid.
    """
    changes = {k: v for k, v in updates.items() if not _same(snapshot.raw.get(k), v)}
    if not changes:
        return snapshot
    raw = dict(snapshot.raw)
    rejected = dict(snapshot.rejected)
    kept = dict(snapshot.kept)
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
        if value is None:
            # DEL, expiry, or gone at resync: forget the value, good or not
            raw.pop(key, None)
            rejected.pop(key, None)
            kept.pop(key, None)
            if kind != "proxy":
                name, entry = _MAPS[kind]
                edit(name).pop(entry(key), None)
            continue
        raw[key] = value
        try:
            item = _decode(key, value)
        except ConfigError as exc:
            rejected[key] = str(exc)
            good = _last_good(snapshot, key)
            if good is not None:
                kept[key] = good  # its item stays in its map (a proxy's is re-decoded below)
                continue
            kept.pop(key, None)
            shared = (last_good or {}).get(key)
            if shared is None:
                continue
            try:
                item = _decode(key, shared)
            except ConfigError:
                continue  # never served: a bad shared value is no better than none
            kept[key] = shared
        else:
            rejected.pop(key, None)
            kept.pop(key, None)
        if isinstance(item, ProxyConfig):
            decoded[key] = item
        elif isinstance(item, RouteConfig):
            edit("routes")[item.route_id] = item
        elif isinstance(item, ServiceURL):
            edit("urls")[item.name] = item.url
        elif isinstance(item, ExternalService):
            edit("services")[key[len(keys.SERVICE_EXTERNAL) :]] = item
        elif isinstance(item, CertRecord):
            edit("certs")[key[len(keys.CERT) :]] = item
        elif isinstance(item, CertDomain):
            edit("cert_domains")[item.domain] = item.cert_name
        elif isinstance(item, AppTarget):
            edit("apps")[item.id] = item  # the id is the key's (checked)
        elif isinstance(item, ResourceTarget):
            edit("app_resources")[item.id] = item
        elif isinstance(item, DatabaseTarget):
            edit("databases")[item.id] = item
    proxy_aliases = snapshot.proxy_aliases if aliases is None else aliases
    unserved: dict[str, str] | None = None
    for canonical in touched_proxies:
        spellings = (canonical, *sorted(proxy_aliases.get(canonical, ())))
        owner = _proxy_owner(spellings, raw, rejected, kept, decoded)
        wildcard, slot = _proxy_slot(canonical)
        target = edit("wildcards" if wildcard else "exact")
        if unserved is None:
            unserved = dict(snapshot.unserved)
        host = canonical[len(keys.PROXY) :]
        unserved.pop(host, None)
        if owner is not None:
            target[slot] = owner
            continue
        target.pop(slot, None)
        refused = next((k for k in spellings if k in rejected), None)
        if refused is not None:
            unserved[host] = refused
    return Snapshot(
        generation=snapshot.generation + 1,
        raw=raw,
        exact=maps.get("exact", snapshot.exact),  # type: ignore[arg-type]
        wildcards=maps.get("wildcards", snapshot.wildcards),  # type: ignore[arg-type]
        routes=maps.get("routes", snapshot.routes),  # type: ignore[arg-type]
        services=maps.get("services", snapshot.services),  # type: ignore[arg-type]
        urls=maps.get("urls", snapshot.urls),  # type: ignore[arg-type]
        rejected=rejected,
        kept=kept,
        unserved=snapshot.unserved if unserved is None else unserved,
        certs=maps.get("certs", snapshot.certs),  # type: ignore[arg-type]
        cert_domains=maps.get("cert_domains", snapshot.cert_domains),  # type: ignore[arg-type]
        proxy_aliases=proxy_aliases,
        apps=maps.get("apps", snapshot.apps),  # type: ignore[arg-type]
        app_resources=maps.get("app_resources", snapshot.app_resources),  # type: ignore[arg-type]
        databases=maps.get("databases", snapshot.databases),  # type: ignore[arg-type]
    )


def adopt(snapshot: Snapshot, shared: Mapping[str, bytes]) -> Snapshot:
    """Serve the ``shared`` last good values of rejected keys that serve none here."""
    wanted = {
        k: v
        for k, v in shared.items()
        if k in snapshot.rejected and k not in snapshot.kept and _valid(k, v)
    }
    if not wanted:
        return snapshot
    # such a key serves nothing: dropped and read again, it takes the shared value
    dropped = apply(snapshot, dict.fromkeys(wanted))
    return apply(dropped, {k: snapshot.raw[k] for k in wanted}, last_good=wanted)


def _valid(key: str, value: bytes) -> bool:
    try:
        _decode(key, value)
    except ConfigError:
        return False
    return True


def _proxy_owner(
    keys: tuple[str, ...],
    raw: Mapping[str, bytes],
    rejected: Mapping[str, str],
    kept: Mapping[str, bytes],
    decoded: Mapping[str, ProxyConfig],
) -> ProxyConfig | None:
    """The document serving the host of ``keys``: the first one with a good value."""
    for key in keys:
        value = kept.get(key) if key in rejected else raw.get(key)
        if value is None:
            continue
        item = decoded.get(key)
        if item is None:
            # accepted earlier (now, or before its value was rejected); decoding is
            # deterministic
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
