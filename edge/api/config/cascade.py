"""Deleting what a token owns, in the same transaction that deletes the token.

A token's delete (``TokenStore.delete``) is one ``WATCH``/``MULTI``/``EXEC``. Before
``MULTI`` it awaits :func:`prepare_cascade`, which finds the records whose
``owner_token_hash`` is the token's hash and their companion keys, watching each one
before its final read, and returns the plan. After ``MULTI`` the delete queues the plan's
deletes (:meth:`CascadePlan.queue`). If any of them changes before ``EXEC`` the transaction
fails and runs again from the start, so the token and everything it owns go together or
not at all.

Before anything else :func:`prepare_cascade` sets ``edge:token-deleting:{hash}`` (with a
TTL), an immediate write outside the transaction: from then on no write by that token,
and no write giving it a record, can commit (they watch that key, see
:mod:`edge.api.config.store`), so nothing owned by the token appears after the scan. The
transaction deletes the marker with the rest.

What a token owns, and what goes with each record:

- ``proxy:{hostname}``;
- ``route:{id}``, with ``route:priority:{priority}:{id}`` and ``route:unique:{path}:{priority}``
  (the latter only while it still names this route);
- ``service:external:{name}``, with ``service:url:{name}`` and its ``services:external``
  membership;
- ``cert:{name}``, with every ``cert:domain:{domain}`` naming it;
- ``resource:{uri}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio.client import Pipeline

from edge.api.config.store import (
    DELETING_TTL,
    SERVICES_SET,
    as_text,
    deleting_key,
    loose_doc,
    owner_of,
    route_index,
    route_priority_key,
    route_unique_key,
    service_url_key,
)
from edge.auth.secrets import same_hash
from edge.config.schema import classify_key
from edge.store import keys
from edge.store.scan import mget, scan_values
from edge.store.transaction import Txn

__all__ = ["CascadePlan", "prepare_cascade"]

DELETE_BATCH = 500


@dataclass(slots=True)
class CascadePlan:
    """The keys to delete and the ``services:external`` members to remove."""

    keys: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)

    def queue(self, pipe: Pipeline) -> None:
        """Queue the deletes (after ``MULTI``, in the token's own transaction)."""
        for start in range(0, len(self.keys), DELETE_BATCH):
            pipe.delete(*self.keys[start : start + DELETE_BATCH])
        if self.members:
            pipe.srem(SERVICES_SET, *self.members)


def _kind(kind: str) -> Callable[[str], bool]:
    return lambda key: classify_key(key) == kind


_OWNED: tuple[tuple[str, Callable[[str], bool]], ...] = (
    (keys.PROXY + "*", _kind("proxy")),
    (keys.ROUTE + "*", _kind("route")),  # not the route:unique:/route:priority: index keys
    (keys.SERVICE_EXTERNAL + "*", _kind("service_external")),
    (keys.CERT + "*", _kind("cert")),  # not the cert:domain: keys
    (keys.RESOURCE + "*", lambda key: len(key) > len(keys.RESOURCE)),
)


def _owned(raw: bytes | str | None, owner_hash: str) -> bool:
    owner = owner_of(raw)
    return owner is not None and same_hash(owner, owner_hash)


async def _watched(txn: Txn, keys: Sequence[str]) -> list[bytes | None]:
    """Watch ``keys``, then read them: what is read cannot change unnoticed before EXEC."""
    if not keys:
        return []
    await txn.watch(*keys)
    values = await mget(txn.reader, keys)
    return [values[key] for key in keys]


async def prepare_cascade(txn: Txn, owner_hash: str) -> CascadePlan:
    """Find (and watch) what ``owner_hash`` owns; call it before ``MULTI``.

    ``txn`` is in its watching phase; the caller queues the returned plan after ``MULTI``.
    """
    marker = deleting_key(owner_hash)
    # not watched (our own write would fail our EXEC): it stops the token's writes
    await txn.reader.set(marker, b"1", ex=DELETING_TTL)
    candidates: list[str] = []
    for pattern, wanted in _OWNED:
        found = await scan_values(txn.reader, pattern, wanted)
        candidates.extend(k for k, v in found.items() if _owned(v, owner_hash))
    owned = {
        key: raw
        for key, raw in zip(candidates, await _watched(txn, candidates), strict=True)
        if raw is not None and _owned(raw, owner_hash)
    }
    plan = CascadePlan(keys=list(owned))
    unique: dict[str, str] = {}  # route:unique: key -> the owned route id it should name
    cert_names: set[str] = set()
    for key, raw in owned.items():
        kind = classify_key(key)
        if kind == "route":
            route_id = key[len(keys.ROUTE) :]
            index = route_index(loose_doc(raw))
            if index is not None:
                unique[route_unique_key(*index)] = route_id
                plan.keys.append(route_priority_key(index[1], route_id))
        elif kind == "service_external":
            name = key[len(keys.SERVICE_EXTERNAL) :]
            plan.keys.append(service_url_key(name))
            plan.members.append(name)
        elif kind == "cert":
            cert_names.add(key[len(keys.CERT) :])
    names = list(unique)
    for key, value in zip(names, await _watched(txn, names), strict=True):
        if value is not None and as_text(value) == unique[key]:
            plan.keys.append(key)
    if cert_names:
        domains = await scan_values(txn.reader, keys.CERT_DOMAIN + "*")
        pointing = [k for k, v in domains.items() if as_text(v).strip() in cert_names]
        for key, value in zip(pointing, await _watched(txn, pointing), strict=True):
            if value is not None and as_text(value).strip() in cert_names:
                plan.keys.append(key)
    plan.keys = sorted({*plan.keys, marker})
    plan.members = sorted(set(plan.members))
    return plan
