"""Deleting what a token owns, in the same transaction that deletes the token.

A token's delete (``TokenStore.delete``) is one ``WATCH``/``MULTI``/``EXEC``. Before
``MULTI`` it awaits :func:`prepare_cascade`, which finds the records whose
``owner_token_hash`` is the token's hash and their companion keys, watching each one
before its final read. After ``MULTI``, :func:`edge.api.store.cascade_owned` queues their
deletes (:func:`queue_cascade`). If any of them changes before ``EXEC`` the transaction
fails and runs again from the start, so the token and everything it owns go together or
not at all.

Before anything else :func:`prepare_cascade` sets ``edge:token-deleting:{hash}`` (with a
TTL), an immediate write outside the transaction: from then on no write by that token,
and no write giving it a record, can commit (they watch that key, see
:mod:`edge.api.config_store`), so nothing owned by the token appears after the scan. The
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

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio.client import Pipeline

from edge.api.config_store import (
    DELETING_TTL,
    FETCH_BATCH,
    SERVICES_SET,
    as_text,
    deleting_key,
    loose_doc,
    owner_of,
    route_index,
    route_priority_key,
    route_unique_key,
    scan_values,
    service_url_key,
)
from edge.auth.secrets import same_hash
from edge.config.schema import classify_key

__all__ = ["CascadePlan", "prepare_cascade", "queue_cascade"]

DELETE_BATCH = 500


@dataclass(slots=True)
class CascadePlan:
    """The keys to delete and the ``services:external`` members to remove."""

    keys: list[str] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


# the plan of each pipeline, by owner hash, from prepare_cascade to cascade_owned
_PLANS: weakref.WeakKeyDictionary[Pipeline, dict[str, CascadePlan]] = weakref.WeakKeyDictionary()


def _kind(kind: str) -> Callable[[str], bool]:
    return lambda key: classify_key(key) == kind


_OWNED: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("proxy:*", _kind("proxy")),
    ("route:*", _kind("route")),  # not the route:unique:/route:priority: index keys
    ("service:external:*", _kind("service_external")),
    ("cert:*", _kind("cert")),  # not the cert:domain: keys
    ("resource:*", lambda key: len(key) > len("resource:")),
)


def _owned(raw: bytes | str | None, owner_hash: str) -> bool:
    owner = owner_of(raw)
    return owner is not None and same_hash(owner, owner_hash)


async def _mget(pipe: Pipeline, keys: Sequence[str]) -> list[bytes | str | None]:
    values: list[bytes | str | None] = []
    for start in range(0, len(keys), FETCH_BATCH):
        values.extend(await pipe.mget(list(keys[start : start + FETCH_BATCH])))
    return values


async def _watched(pipe: Pipeline, keys: Sequence[str]) -> list[bytes | str | None]:
    """Watch ``keys``, then read them: what is read cannot change unnoticed before EXEC."""
    if not keys:
        return []
    await pipe.watch(*keys)
    return await _mget(pipe, keys)


async def prepare_cascade(pipe: Pipeline, owner_hash: str) -> CascadePlan:
    """Find (and watch) what ``owner_hash`` owns; call it before ``MULTI``.

    ``pipe`` is in its watching phase. The plan is kept for :func:`queue_cascade` (called
    by ``cascade_owned`` after ``MULTI``) and also returned.
    """
    marker = deleting_key(owner_hash)
    # not watched (our own write would fail our EXEC): it stops the token's writes
    await pipe.set(marker, b"1", ex=DELETING_TTL)
    candidates: list[str] = []
    for pattern, wanted in _OWNED:
        found = await scan_values(pipe, pattern, wanted)
        candidates.extend(k for k, v in found.items() if _owned(v, owner_hash))
    owned = {
        key: raw
        for key, raw in zip(candidates, await _watched(pipe, candidates), strict=True)
        if raw is not None and _owned(raw, owner_hash)
    }
    plan = CascadePlan(keys=list(owned))
    unique: dict[str, str] = {}  # route:unique: key -> the owned route id it should name
    cert_names: set[str] = set()
    for key, raw in owned.items():
        kind = classify_key(key)
        if kind == "route":
            route_id = key[len("route:") :]
            index = route_index(loose_doc(raw))
            if index is not None:
                unique[route_unique_key(*index)] = route_id
                plan.keys.append(route_priority_key(index[1], route_id))
        elif kind == "service_external":
            name = key[len("service:external:") :]
            plan.keys.append(service_url_key(name))
            plan.members.append(name)
        elif kind == "cert":
            cert_names.add(key[len("cert:") :])
    names = list(unique)
    for key, value in zip(names, await _watched(pipe, names), strict=True):
        if value is not None and as_text(value) == unique[key]:
            plan.keys.append(key)
    if cert_names:
        domains = await scan_values(pipe, "cert:domain:*")
        pointing = [k for k, v in domains.items() if as_text(v).strip() in cert_names]
        for key, value in zip(pointing, await _watched(pipe, pointing), strict=True):
            if value is not None and as_text(value).strip() in cert_names:
                plan.keys.append(key)
    plan.keys = sorted({*plan.keys, marker})
    plan.members = sorted(set(plan.members))
    _PLANS.setdefault(pipe, {})[owner_hash] = plan
    return plan


def queue_cascade(pipe: Pipeline, owner_hash: str) -> None:
    """Queue (after ``MULTI``) the deletes :func:`prepare_cascade` planned on ``pipe``.

    Without a plan this raises: deleting a token while leaving what it owns behind is
    never done silently.
    """
    plans = _PLANS.get(pipe)
    plan = plans.pop(owner_hash, None) if plans is not None else None
    if plan is None:
        raise RuntimeError("cascade_owned needs prepare_cascade(pipe, owner_hash) before MULTI")
    for start in range(0, len(plan.keys), DELETE_BATCH):
        pipe.delete(*plan.keys[start : start + DELETE_BATCH])
    if plan.members:
        pipe.srem(SERVICES_SET, *plan.members)
