"""Keeps one worker's live tunnels honest: revocations cut them, heartbeats keep their slots.

A tunnel is authorised once, when its ticket is bought; it may then live for an hour. Every
``CHECK_INTERVAL`` the worker's :class:`SessionKeeper` reads again, in one ``MGET``, what
that authorisation rested on for each live tunnel: the PAT that bought the ticket
(``pat:{id}``: not revoked, not expired), the membership (still accepted, its role still
granting :data:`~edge.tunnels.tickets.PERMISSION_OF` the target type), the user and the
project. A tunnel that no longer passes is closed with 4010. Revoking a PAT or removing a
member is a write to Redis that every node reads within a second, so the user's tunnels
close everywhere within two.

The keeper also sends the heartbeats of its tunnels' session slots
(:func:`edge.tunnels.sessions.heartbeat`): a new tunnel's at the next pass (its ticket's
reservation must not run out before), then every ``HEARTBEAT_SECONDS``. It is the target
of the registry's ``on_closed``: :meth:`SessionKeeper.released` gives the slot back in the
background.

When Redis is unreachable the tunnels keep running for a while (the bytes they carry do
not go through Redis; cutting every tunnel at the first failed read would turn a blip of
the control plane into an outage of the data plane) and the outage is logged once, its
end too. But not for ever: once nothing could be checked for ``UNCHECKED_LIMIT`` (the life
of a slot without heartbeat), the tunnels' slots have run out, so other nodes may sell
them again, and a revocation written meanwhile cannot be seen: the keeper fails closed and
closes every live tunnel with 1013 (try again later). A client reconnects once Redis is
back, with a new ticket, through the checks of a purchase.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from edge.api.people.store import (
    Membership,
    PatRecord,
    decode_member,
    decode_pat,
    decode_project,
    decode_user,
)
from edge.auth.roles import has_permission
from edge.store import keys
from edge.tunnels import sessions
from edge.tunnels.tickets import PERMISSION_OF, Ticket

__all__ = [
    "CHECK_INTERVAL",
    "REVOKED",
    "UNCHECKED",
    "UNCHECKED_LIMIT",
    "SessionKeeper",
    "Tunnel",
    "still_allowed",
]

log = logging.getLogger("edge.tunnels")

CHECK_INTERVAL: Final = 1.0  # seconds between two checks of the live tunnels
CHECK_TIMEOUT: Final = 2.0  # one pass's Redis round trips, all included
RELEASE_TIMEOUT: Final = 5.0  # a slot given back; else it runs out on its own
REVOKED: Final = 4010  # the close code of a tunnel whose ticket no longer holds
UNCHECKED: Final = 1013  # ... of one whose access could not be checked for too long
# no successful check for this long (by default): the tunnels' slots have run out
UNCHECKED_LIMIT: Final = float(sessions.SLOT_SECONDS)


class Tunnel(Protocol):
    """What the keeper needs of a live tunnel (``edge.tunnels.registry.LiveTunnel``)."""

    @property
    def ticket(self) -> Ticket: ...

    def close(self, code: int, reason: str = "") -> None: ...


def still_allowed(
    ticket: Ticket,
    pat: PatRecord | None,
    member: Membership | None,
    project_exists: bool,
    user_exists: bool,
    now: datetime,
) -> bool:
    """Whether what ``ticket`` was bought with still stands (the purchase's checks again)."""
    if pat is None or not pat.active(now):
        return False
    if pat.project_id != ticket.project_id or pat.user_id != ticket.user_id:
        return False
    if not (project_exists and user_exists) or member is None or not member.active:
        return False
    return has_permission(member.role, PERMISSION_OF[ticket.target_type])


class SessionKeeper:
    """One worker's revocation checks and slot heartbeats (a tracked service: :meth:`run`,
    :meth:`health`), and the registry's ``on_closed`` (:meth:`released`)."""

    def __init__(
        self,
        client: Redis,
        live: Callable[[], Sequence[Tunnel]],
        *,
        interval: float = CHECK_INTERVAL,
        heartbeat_every: float | None = None,
        timeout: float = CHECK_TIMEOUT,
        slot_seconds: float = sessions.SLOT_SECONDS,
        unchecked_limit: float | None = None,
    ) -> None:
        """``slot_seconds``: how long a slot outlives its last heartbeat; heartbeats go
        every third of it and, with nothing checked for that long, tunnels close (unless
        ``heartbeat_every`` / ``unchecked_limit`` say otherwise)."""
        self.client = client
        self.live = live
        self.interval = interval
        self.slot_seconds = slot_seconds
        self.heartbeat_every = slot_seconds / 3 if heartbeat_every is None else heartbeat_every
        self.timeout = timeout
        self.unchecked_limit = slot_seconds if unchecked_limit is None else unchecked_limit
        self.unchecked = 0  # tunnels closed because their access could not be checked
        self.watched = 0  # live tunnels at the last pass
        self.revoked = 0  # tunnels closed since start because their access went
        self.heartbeats = 0  # heartbeat round trips sent
        self.lost_slots = 0  # slots found gone by a heartbeat (run out during an outage)
        self.releases_failed = 0
        self._beaten: set[str] = set()  # session ids heartbeated at least once
        self._closing: set[str] = set()  # session ids closed, not yet out of the registry
        self._next_beat = 0.0
        self._failing = False
        self._stopped = False
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        """Check, and heartbeat when due, every ``interval`` until cancelled."""
        loop = asyncio.get_running_loop()
        checked = loop.time()  # the last pass that could read Redis
        self._stopped = False
        while not self._stopped:
            await asyncio.sleep(self.interval)
            try:
                async with asyncio.timeout(self.timeout):
                    await self.sweep()
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                if not self._failing:  # once per outage, not once per second
                    log.warning(
                        "tunnel keeper: redis unavailable; live tunnels kept for now",
                        extra={"fields": {"error": type(exc).__name__, "detail": str(exc)[:200]}},
                    )
                self._failing = True
                if loop.time() - checked >= self.unchecked_limit:
                    self._close_unchecked()
            else:
                checked = loop.time()
                if self._failing:
                    log.info("tunnel keeper: redis reachable again")
                self._failing = False

    def _close_unchecked(self) -> None:
        """Nothing could be checked for ``unchecked_limit``: fail closed (1013)."""
        tunnels = [t for t in self.live() if t.ticket.session_id not in self._closing]
        if not tunnels:
            return
        log.warning(
            "tunnel keeper: access unchecked too long; live tunnels closed",
            extra={"fields": {"tunnels": len(tunnels), "seconds": self.unchecked_limit}},
        )
        for tunnel in tunnels:
            self._closing.add(tunnel.ticket.session_id)
            self.unchecked += 1
            tunnel.close(UNCHECKED, "access cannot be checked")

    async def sweep(self) -> None:
        """One pass: close the tunnels whose access went, heartbeat the others' slots
        (every one when due, else only those never heartbeated)."""
        every = list(self.live())
        self._closing &= {t.ticket.session_id for t in every}  # gone from the registry: forget
        tunnels = [t for t in every if t.ticket.session_id not in self._closing]
        self._beaten &= {t.ticket.session_id for t in tunnels}
        self.watched = len(tunnels)
        if not tunnels:
            return
        kept = await self.check(tunnels)
        now = asyncio.get_running_loop().time()
        due = now >= self._next_beat
        beat = [t.ticket for t in kept if due or t.ticket.session_id not in self._beaten]
        if not beat:
            return
        missing = await sessions.heartbeat(
            self.client, [(t.project_id, t.session_id) for t in beat], self.slot_seconds
        )
        self.heartbeats += 1
        self.lost_slots += missing
        self._beaten.update(t.session_id for t in beat)
        if due:
            self._next_beat = now + self.heartbeat_every

    async def check(self, tunnels: Sequence[Tunnel]) -> list[Tunnel]:
        """Close (4010) the tunnels whose ticket no longer holds; those left."""
        pats = sorted({t.ticket.pat_id for t in tunnels})
        people = sorted({(t.ticket.project_id, t.ticket.user_id) for t in tunnels})
        names = [keys.pat(tid) for tid in pats]
        for pid, uid in people:
            names += [keys.project_member(pid, uid), keys.project(pid), keys.user(uid)]
        values = await self.client.mget(names)
        found = zip(pats, values[: len(pats)], strict=True)
        records = {tid: decode_pat(tid, raw) for tid, raw in found}
        standing: dict[tuple[str, str], tuple[Membership | None, bool, bool]] = {}
        rest = values[len(pats) :]
        for i, (pid, uid) in enumerate(people):
            raw_m, raw_p, raw_u = rest[3 * i : 3 * i + 3]
            standing[pid, uid] = (
                decode_member(pid, uid, raw_m),
                decode_project(pid, raw_p) is not None,
                decode_user(uid, raw_u) is not None,
            )
        now = datetime.now(UTC)
        kept: list[Tunnel] = []
        for tunnel in tunnels:
            ticket = tunnel.ticket
            member, project_exists, user_exists = standing[ticket.project_id, ticket.user_id]
            pat = records[ticket.pat_id]
            if still_allowed(ticket, pat, member, project_exists, user_exists, now):
                kept.append(tunnel)
                continue
            self._closing.add(ticket.session_id)
            self.revoked += 1
            log.info(
                "tunnel closed: access revoked",
                extra={
                    "fields": {
                        "project_id": ticket.project_id,
                        "user_id": ticket.user_id,
                        "token_id": ticket.pat_id,
                        "target": f"{ticket.target_type}/{ticket.target_id}",
                    }
                },
            )
            tunnel.close(REVOKED, "access revoked")
        return kept

    # ------------------------------------------------------------------ slots given back
    def released(self, ticket: Ticket) -> None:
        """A tunnel ended (or its ticket will never open one): give its slot back, in the
        background (never blocks the caller; a failure leaves the slot to run out)."""
        self._beaten.discard(ticket.session_id)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop any more (shutdown): the slot runs out by itself
            return
        task = loop.create_task(self._release(ticket), name="tunnel-slot-release")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, ticket: Ticket) -> None:
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):
                await sessions.release(self.client, ticket.project_id, ticket.session_id)
        except (RedisError, OSError):
            self.releases_failed += 1  # the outage is the loop's to log

    def stop(self) -> None:
        """End :meth:`run` at its next pass, whatever becomes of a cancellation (one that
        lands as a Redis command's own timeout expires can be taken for that timeout)."""
        self._stopped = True

    async def close(self, grace: float = RELEASE_TIMEOUT) -> None:
        """Stop the loop; wait (bounded) for the slots being given back, e.g. after the
        drain closed every tunnel; cancel what is left."""
        self.stop()
        tasks = set(self._tasks)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def health(self) -> dict[str, object]:
        return {
            "tunnels": self.watched,
            "revoked": self.revoked,
            "closed_unchecked": self.unchecked,
            "heartbeats": self.heartbeats,
            "lost_slots": self.lost_slots,
            "releases_pending": len(self._tasks),
            "releases_failed": self.releases_failed,
            "redis": "unavailable" if self._failing else "ok",
        }
