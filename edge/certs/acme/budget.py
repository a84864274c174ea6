"""The CA's limits, mirrored in Redis so that no node, restart or new node can exceed them.

Counters in fixed windows (``edge:acme:budget:{kind}:{subject}:{window}``, expiring with
their window), shared by every node. Before an order is placed the budgets are checked and
taken; a budget that is spent defers the order to its window's end instead of letting the
CA refuse it (and count the refusal). The figures are Let's Encrypt's published limits:

* new orders per account: 300 per 3 hours;
* new certificates per registered domain: 50 per 7 days (the registered domain taken as
  the last two labels; a public-suffix list would be exact for names under ``co.uk``);
* failed validations per account and name: 5 per hour.

On-demand TLS has its own cluster-wide budget: ``ON_DEMAND_TLS_MAX_PER_HOUR`` new names.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis

from edge.store import keys

__all__ = [
    "FAILED_VALIDATIONS",
    "ORDERS_PER_ACCOUNT",
    "ORDERS_PER_DOMAIN",
    "Limit",
    "note_failed_validation",
    "registered_domain",
    "take_on_demand",
    "take_order",
]


@dataclass(frozen=True, slots=True)
class Limit:
    kind: str
    count: int
    period: int  # seconds


ORDERS_PER_ACCOUNT = Limit("orders", 300, 3 * 3600)
ORDERS_PER_DOMAIN = Limit("certificates", 50, 7 * 86400)
FAILED_VALIDATIONS = Limit("failed-validations", 5, 3600)
ON_DEMAND_PERIOD = 3600


def registered_domain(name: str) -> str:
    return ".".join(name.split(".")[-2:])


def _key(limit: Limit, subject: str, now: float) -> tuple[str, float]:
    window = int(now // limit.period)
    return keys.acme_budget(limit.kind, subject, window), (window + 1) * limit.period - now


async def take_order(
    client: aioredis.Redis,
    account: str,
    domains: Iterable[str],
    now: float | None = None,
) -> tuple[float, str] | None:
    """Count one order against the budgets; ``(seconds to wait, which limit)`` instead
    when one is spent (nothing counted then)."""
    now = time.time() if now is None else now
    names = list(domains)
    checks = [(ORDERS_PER_ACCOUNT, account)]
    checks += [(ORDERS_PER_DOMAIN, d) for d in sorted({registered_domain(n) for n in names})]
    checks += [(FAILED_VALIDATIONS, f"{account}:{n}") for n in names]
    located = [(limit, subject, *_key(limit, subject, now)) for limit, subject in checks]
    values = await client.mget([key for _, _, key, _ in located])
    for (limit, subject, _key_name, left), value in zip(located, values, strict=True):
        if value is not None and int(value) >= limit.count:
            what = f"{limit.count} {limit.kind.replace('-', ' ')} per {limit.period // 3600} h"
            return left, f"{what} reached for {subject.rpartition(':')[2] or subject}"
    pipe = client.pipeline(transaction=False)
    for limit, _subject, key, _left in located:
        if limit is not FAILED_VALIDATIONS:
            pipe.incr(key)
            pipe.expire(key, limit.period * 2)
    await pipe.execute()
    return None


async def note_failed_validation(
    client: aioredis.Redis, account: str, domains: Iterable[str], now: float | None = None
) -> None:
    now = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for name in domains:
        key, _ = _key(FAILED_VALIDATIONS, f"{account}:{name}", now)
        pipe.incr(key)
        pipe.expire(key, FAILED_VALIDATIONS.period * 2)
    await pipe.execute()


async def take_on_demand(client: aioredis.Redis, limit: int, now: float | None = None) -> bool:
    """Count one on-demand name for the whole cluster; False when this hour's are spent."""
    now = time.time() if now is None else now
    key, _ = _key(Limit("on-demand", limit, ON_DEMAND_PERIOD), "cluster", now)
    pipe = client.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, ON_DEMAND_PERIOD * 2)
    count, _ = await pipe.execute()
    return int(count) <= limit
