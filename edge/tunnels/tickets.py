"""One-time tunnel tickets: bought with a PAT, redeemed once by the WebSocket endpoint.

A ticket is 64 random characters of ``[A-Za-z0-9]`` (~381 bits): the key
``port_forward_ticket:{ticket}`` holds what it opens (a :class:`Ticket` as JSON) for
:data:`TICKET_TTL` seconds. It is written with ``SET ... NX EX`` and taken with ``GETDEL``,
so whichever node and connection redeems it first gets it, and every other attempt
(a replay, a second connection racing the first) finds nothing: exactly once, on every
node, without a lock.

The ticket travels in the WebSocket URL's query (browsers and most WebSocket clients
cannot set an ``Authorization`` field on the upgrade), which is why it is short-lived,
single-use and never logged: the access log shows paths without their query, and nothing
here puts the ticket text into a log line or an error.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
from typing import Final, Literal

import msgspec
import redis.asyncio as aioredis

from edge.store import keys

__all__ = [
    "PERMISSION_OF",
    "TICKET_LENGTH",
    "TICKET_TTL",
    "TargetType",
    "Ticket",
    "issue",
    "new_session_id",
    "new_ticket",
    "redeem",
    "valid_ticket",
]

log = logging.getLogger("edge.tunnels")

TICKET_TTL: Final = 60  # seconds a ticket stays redeemable ("expires_in" of the answer)
TICKET_LENGTH: Final = 64
_ALPHABET: Final = string.ascii_letters + string.digits
_TICKET_RE: Final = re.compile(rf"\A[A-Za-z0-9]{{{TICKET_LENGTH}}}\Z")
_ISSUE_ATTEMPTS: Final = 3  # a taken ticket text (never seen in practice) draws again

TargetType = Literal["resource", "database"]

#: The project permission a member needs to buy, and to keep, a tunnel to each target type.
PERMISSION_OF: Final[dict[str, str]] = {
    "resource": "resources.port-forward",
    "database": "databases.show-secrets",
}


class Ticket(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a ticket opens, and on whose behalf (the revocation checks read it again)."""

    target_type: TargetType
    target_id: str
    port: int  # the port the tunnel reaches (a resource's chosen port; a database's port)
    project_id: str
    user_id: str
    pat_id: str  # the PAT that bought it: its revocation closes the tunnel
    session_id: str  # the slot reserved in port_forward:sessions:{project_id}
    issued_at: float  # Unix seconds


_encode = msgspec.json.Encoder().encode
_decoder = msgspec.json.Decoder(Ticket)


def new_ticket() -> str:
    """A fresh ticket text: 64 characters of ``[A-Za-z0-9]`` from the OS's CSPRNG."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(TICKET_LENGTH))


def valid_ticket(text: str) -> bool:
    """Whether ``text`` has a ticket's shape (checked before any Redis call)."""
    return _TICKET_RE.match(text) is not None


def new_session_id() -> str:
    """A session slot's id: 22 URL-safe random characters (unique per project in practice)."""
    return secrets.token_urlsafe(16)


async def issue(client: aioredis.Redis, ticket: Ticket, ttl: int = TICKET_TTL) -> str:
    """Store ``ticket`` under a fresh ticket text (``SET NX EX ttl``); the text.

    ``NX`` makes an existing ticket impossible to overwrite; a collision (which 62**64
    possible texts make a theoretical case) draws a new text. Raises ``RedisError`` or
    ``OSError`` when Redis fails.
    """
    value = _encode(ticket)
    for _ in range(_ISSUE_ATTEMPTS):
        text = new_ticket()
        if await client.set(keys.port_forward_ticket(text), value, ex=ttl, nx=True):
            return text
    raise RuntimeError("no free ticket text after several draws")  # a broken random source


async def redeem(client: aioredis.Redis, ticket: str) -> Ticket | None:
    """Take the ticket (``GETDEL``): what it opens, or None.

    None when the text is not a ticket's shape (then no Redis call at all), or when the key
    is missing (never issued, already used, expired) or holds something that does not
    decode (it is deleted all the same). Raises ``RedisError``/``OSError`` when Redis fails.
    """
    if not valid_ticket(ticket):
        return None
    raw = await client.getdel(keys.port_forward_ticket(ticket))
    if raw is None:
        return None
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        # the key's name is the secret: log neither it nor the value
        log.warning("undecodable tunnel ticket discarded", extra={"fields": {"error": str(exc)}})
        return None
