"""Last good values of rejected keys, shared by every worker through Redis.

A worker keeps serving a key's last good value when a new value is rejected (see
:mod:`edge.config.snapshot`). A worker that never saw that good value (one started after
the bad write: another node, a worker restarted by the supervisor, a slow start) would
otherwise answer 404 where the others serve. So the kept values are written to one hash,
``LAST_GOOD_KEY`` (config key -> value; only keys whose current value is rejected), and a
worker that rejects a value it has no good value for reads it from there.

A field is dropped when its key is deleted or expires, or holds a good value again. A full
resync drops the fields of keys that are gone or valid (a DEL while no edge ran), writes
its own kept values again and adopts those it lacks, so what a race lost is put right
within one resync interval.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from edge.config.snapshot import Snapshot, adopt, apply
from edge.store import keys

log = logging.getLogger("edge.config")

LAST_GOOD_KEY = keys.CONFIG_LAST_GOOD


async def _read(client: aioredis.Redis, keys: Sequence[str]) -> dict[str, bytes]:
    values = await client.hmget(LAST_GOOD_KEY, list(keys))
    return {k: v for k, v in zip(keys, values, strict=True) if isinstance(v, bytes)}


async def _write(
    client: aioredis.Redis, store: Mapping[str, bytes], forget: Collection[str]
) -> None:
    if not store and not forget:
        return
    pipe = client.pipeline(transaction=False)
    if store:
        fields: dict[FieldT, EncodableT] = {k: v for k, v in store.items()}
        pipe.hset(LAST_GOOD_KEY, mapping=fields)
    if forget:
        pipe.hdel(LAST_GOOD_KEY, *forget)
    await pipe.execute()


async def apply_shared(
    client: aioredis.Redis, old: Snapshot, updates: Mapping[str, bytes | None]
) -> Snapshot:
    """``apply(old, updates)``, with the last good values other workers share, and this
    worker's own shared in turn. A Redis error leaves the snapshot as this worker sees it."""
    new = apply(old, updates)
    if new is old:
        return new
    try:
        unserved = [k for k in updates if k in new.rejected and k not in new.kept]
        shared = await _read(client, unserved) if unserved else {}
        if shared:
            new = apply(old, updates, last_good=shared)
        store = {
            k: v
            for k in updates
            if (v := new.kept.get(k)) is not None and old.kept.get(k) != v and shared.get(k) != v
        }
        # deleted, expired, or good again: the shared value goes too
        forget = [k for k in updates if k in old.rejected and k not in new.rejected]
        await _write(client, store, forget)
    except (RedisError, OSError) as exc:
        log.warning("last good values not shared", extra={"fields": {"error": str(exc)}})
    _report(old, new, updates)
    return new


async def settle(client: aioredis.Redis, snapshot: Snapshot) -> Snapshot:
    """At a full resync: adopt the shared values of rejected keys this worker serves none
    for (it read the bad value before another worker shared the good one), share its own
    again, and drop the fields of keys not rejected any more."""
    try:
        fields = await client.hgetall(LAST_GOOD_KEY)
        shared = {
            (k.decode() if isinstance(k, bytes) else str(k)): v
            for k, v in fields.items()
            if isinstance(v, bytes)
        }
        settled = adopt(snapshot, shared)
        # missing ones only: where workers differ (one missed a value), the first one stays
        store = {k: v for k, v in settled.kept.items() if k not in shared}
        await _write(client, store, [k for k in shared if k not in settled.rejected])
    except (RedisError, OSError) as exc:
        log.warning("last good values not shared", extra={"fields": {"error": str(exc)}})
        return snapshot
    return settled


def _report(old: Snapshot, new: Snapshot, updates: Mapping[str, bytes | None]) -> None:
    """Log each newly rejected value, saying whether a last good value still serves."""
    for key, value in updates.items():
        error = new.rejected.get(key)
        if error is None or (key in old.rejected and old.raw.get(key) == value):
            continue  # not rejected, or rejected already
        action = "last good value kept" if key in new.kept else "not served"
        log.warning(
            "config key rejected", extra={"fields": {"key": key, "error": error, "action": action}}
        )
