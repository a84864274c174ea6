"""The per-project cap on live tunnel sessions, shared by every node through Redis.

``port_forward:sessions:{project_id}`` is a sorted set: session id -> the Unix time (Redis's
clock) until which its slot is held. A slot is

* reserved when a ticket is bought, for a little longer than the ticket lives
  (:func:`reserve`: the cap is checked and the slot taken in one Lua script, so two nodes
  selling the last slot at the same moment cannot both succeed);
* kept by its live tunnel's heartbeats, each pushing it ``SLOT_SECONDS`` ahead
  (:func:`heartbeat`, every ``HEARTBEAT_SECONDS``);
* given back when the tunnel ends (:func:`release`).

A slot whose ticket was never used, or whose node died and stopped heartbeating, simply
runs out: every reservation first drops the members whose time has passed, so they are
freed within ``SLOT_SECONDS`` (well within a minute). Every write also sets the key to
expire just after its latest slot, so an idle project's set disappears on its own.

Times come from Redis (``TIME`` inside the scripts): nodes whose clocks disagree still agree
on which slots have run out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import redis.asyncio as aioredis

from edge.store import keys

__all__ = ["HEARTBEAT_SECONDS", "SLOT_SECONDS", "count", "heartbeat", "release", "reserve"]

SLOT_SECONDS: Final = 45  # a live session's slot lasts this long past its last heartbeat
HEARTBEAT_SECONDS: Final = 15  # three heartbeats per slot: one lost on the way costs nothing

# Shared by the scripts: Redis's clock in seconds, and the key expiring one second after
# its latest slot (PEXPIREAT on the same clock). An empty set has already been deleted.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function expire_after_last(key)
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    if last[2] then
        redis.call('PEXPIREAT', key, math.ceil(tonumber(last[2]) * 1000) + 1000)
    end
end
"""

# KEYS[1] the project's set; ARGV: session id, cap, seconds to hold the slot.
# 1: reserved; 0: the cap is reached.
_RESERVE = (
    _PRELUDE
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
expire_after_last(KEYS[1])
return 1
"""
)

# KEYS: the projects' sets; ARGV: slot seconds, then for each key in order the number of
# its session ids followed by them. Only slots still held are pushed on: one released (or
# run out) meanwhile is not brought back. The first heartbeat may lower a fresh
# reservation's time: a node that dies right after then frees it SLOT_SECONDS later.
# The number of slots that were no longer there.
_HEARTBEAT = (
    _PRELUDE
    + """
local held_until = now + tonumber(ARGV[1])
local i = 2
local missing = 0
for k = 1, #KEYS do
    local n = tonumber(ARGV[i])
    i = i + 1
    for _ = 1, n do
        if redis.call('ZSCORE', KEYS[k], ARGV[i]) then
            redis.call('ZADD', KEYS[k], 'XX', held_until, ARGV[i])
        else
            missing = missing + 1
        end
        i = i + 1
    end
    expire_after_last(KEYS[k])
end
return missing
"""
)

# KEYS[1] the project's set: the slots held now.
_COUNT = (
    _PRELUDE
    + """
return redis.call('ZCOUNT', KEYS[1], now, '+inf')
"""
)


async def reserve(
    client: aioredis.Redis,
    project_id: str,
    session_id: str,
    max_sessions: int,
    hold_seconds: float,
) -> bool:
    """Take a slot for ``session_id`` for ``hold_seconds`` if the project holds fewer than
    ``max_sessions`` (run-out slots dropped first); False when the cap is reached. Taking a
    slot already held is a success that changes nothing."""
    script = client.register_script(_RESERVE)
    key = keys.port_forward_sessions(project_id)
    return bool(await script(keys=[key], args=[session_id, max_sessions, hold_seconds]))


async def heartbeat(
    client: aioredis.Redis, slots: Iterable[tuple[str, str]], seconds: float = SLOT_SECONDS
) -> int:
    """Push each ``(project_id, session_id)`` slot ``seconds`` ahead, in one round trip;
    how many of them were no longer held (released, or run out while Redis was away)."""
    by_project: dict[str, list[str]] = {}
    for project_id, session_id in slots:
        by_project.setdefault(project_id, []).append(session_id)
    if not by_project:
        return 0
    args: list[str | float] = [seconds]
    for sessions in by_project.values():
        args.append(len(sessions))
        args.extend(sessions)
    script = client.register_script(_HEARTBEAT)
    names = [keys.port_forward_sessions(p) for p in by_project]
    return int(await script(keys=names, args=args))


async def release(client: aioredis.Redis, project_id: str, session_id: str) -> None:
    """Give the slot back (nothing happens if it has run out already)."""
    await client.zrem(keys.port_forward_sessions(project_id), session_id)


async def count(client: aioredis.Redis, project_id: str) -> int:
    """The project's slots held now (reserved by a ticket or kept by a live tunnel)."""
    script = client.register_script(_COUNT)
    return int(await script(keys=[keys.port_forward_sessions(project_id)]))
