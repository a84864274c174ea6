"""``/.well-known/acme-challenge/{token}``: the HTTP-01 answers, on every host.

Mounted for plain HTTP (``HTTP_PORT`` and ``PROXY_PROTOCOL_PORT``) before host routing,
redirects and authentication, so a proxy that redirects to HTTPS, requires a login or does
not exist yet still lets the CA validate. Answers come from Redis
(:mod:`edge.certs.acme.challenges`): whichever node started the order, every node answers.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from edge.certs.acme.challenges import lookup
from edge.errors import EdgeError, Fault, ServiceUnavailable
from edge.http1.exchange import Exchange
from edge.routing.checks import ACME_CHALLENGE_PREFIX

__all__ = ["ACME_CHALLENGE_PREFIX", "ChallengeResponder"]

log = logging.getLogger("edge.acme")

LOOKUP_TIMEOUT = 2.0  # seconds for Redis to answer; the CA retries a failed fetch


class ChallengeNotFound(EdgeError):
    status = 404
    code = "not_found"
    public_message = "no ACME challenge with this token"
    peer_fault = Fault.CLIENT


class ChallengeMethod(EdgeError):
    status = 405
    code = "method_not_allowed"
    public_message = "ACME challenges are fetched with GET or HEAD"
    peer_fault = Fault.CLIENT

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"allow", b"GET, HEAD")]


class ChallengeStoreDown(ServiceUnavailable):
    public_message = "the challenge store is unavailable; try again"


class ChallengeResponder:
    """The mount's handler: one Redis GET per challenge fetch (rare: the CA's only)."""

    def __init__(self, client: aioredis.Redis, timeout: float = LOOKUP_TIMEOUT) -> None:
        self.client = client
        self.timeout = timeout
        self.tasks: set[asyncio.Task[None]] = set()
        self.answered = 0

    def handle(self, ex: Exchange) -> None:
        if ex.method not in (b"GET", b"HEAD"):
            ex.fail(ChallengeMethod(f"{ex.method!r} on an ACME challenge"))
            return
        token = ex.path[len(ACME_CHALLENGE_PREFIX) :]
        task = asyncio.get_running_loop().create_task(self._answer(ex, token))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, ex: Exchange, token: str) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                answer = await lookup(self.client, token)
        except (RedisError, OSError, TimeoutError) as exc:
            if not ex.finished:
                ex.fail(ChallengeStoreDown(f"challenge lookup failed: {type(exc).__name__}"))
            return
        if ex.finished:
            return  # the client went away meanwhile
        if answer is None:
            ex.fail(ChallengeNotFound(f"no challenge {token[:64]!r}"))
            return
        self.answered += 1
        ex.respond(200, answer, content_type=b"text/plain")

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await self.client.aclose()
