"""Read-then-write on Redis: ``WATCH``/``MULTI``/``EXEC`` with retry, typed.

A write that reads before it writes runs as a transaction body: it gets a :class:`Txn`,
reads through it (each read runs at once, on keys that are watched), may watch more keys,
then calls :meth:`Txn.writes` and queues its writes on what that returns. If another
client changed a watched key before ``EXEC``, Redis refuses the whole transaction and the
body runs again from the start after a short random pause, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, WatchError

__all__ = ["TXN_ATTEMPTS", "TooMuchContention", "Txn", "transaction"]

TXN_ATTEMPTS = 32  # a handful of writers on one key all land; the pauses add up to ~1.5 s at most
_BACKOFF = 0.002  # seconds: the longest pause after the first lost race, doubling after each
_BACKOFF_MAX = 0.05

R = TypeVar("R")


class TooMuchContention(RedisError):
    """A transaction kept losing its WATCH race; treated like an unavailable Redis."""


class Txn:
    """One attempt of a transaction body: reads run at once until :meth:`writes`."""

    __slots__ = ("_pipe",)

    def __init__(self, pipe: Pipeline) -> None:
        self._pipe = pipe

    @property
    def reader(self) -> aioredis.Redis:
        """The watching pipeline, for helpers that read through a client
        (:mod:`edge.store.scan`); only before :meth:`writes`."""
        return self._pipe

    async def watch(self, *keys: str) -> None:
        """Watch more keys: a change to any of them before ``EXEC`` means another try."""
        await self._pipe.watch(*keys)

    async def get(self, key: str) -> bytes | None:
        return _bytes(await self._pipe.get(key))

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return [_bytes(value) for value in await self._pipe.mget(list(keys))]

    async def exists(self, *keys: str) -> int:
        return int(await self._pipe.exists(*keys))

    async def smembers(self, key: str) -> set[bytes]:
        return {_bytes(member) or b"" for member in await self._pipe.smembers(key)}

    def writes(self) -> Pipeline:
        """End the reads: the commands queued on the pipeline returned (``set``,
        ``delete``, ``sadd``...) are sent together as ``MULTI``/``EXEC``."""
        if not self._pipe.explicit_transaction:
            self._pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        return self._pipe

    @property
    def writing(self) -> bool:
        return bool(self._pipe.explicit_transaction)


def _bytes(value: bytes | str | None) -> bytes | None:
    # the clients here never decode responses; a str would only come from another setup
    return value.encode() if isinstance(value, str) else value


async def transaction(
    client: aioredis.Redis,
    keys: Sequence[str],
    body: Callable[[Txn], Awaitable[R]],
    attempts: int = TXN_ATTEMPTS,
) -> R:
    """Run ``body`` with ``keys`` watched; ``EXEC`` what it queued after ``txn.writes()``.

    A body that never calls ``writes()`` writes nothing (its reads are just released). An
    exception from ``body`` abandons the attempt, and nothing is written. Raises
    :class:`TooMuchContention` when every attempt lost its race.
    """
    async with client.pipeline(transaction=True) as pipe:
        txn = Txn(pipe)
        for attempt in range(attempts):
            try:
                await pipe.watch(*keys)
                result = await body(txn)
                if txn.writing:
                    await pipe.execute()
                else:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                return result
            except WatchError:
                await pipe.reset()  # type: ignore[no-untyped-call]
                # a random pause before the next try: writers that lost together to the
                # same winner would otherwise collide again on their very next attempt
                await asyncio.sleep(random.uniform(0, min(_BACKOFF * 2**attempt, _BACKOFF_MAX)))
    raise TooMuchContention(f"{keys[0]}: transaction kept conflicting")
