"""Users, projects, memberships and personal access tokens (PATs) in Redis.

Keys (ids are a type letter, ``_`` and 12 base58 characters, ~70 random bits: ``u_`` users,
``p_`` projects, ``t_`` PATs; base58 has no ``:`` so an id never reaches into another key)::

    user:{uid}                    JSON {id, name, email, created_at}
    user:email:{email lowercased} {uid}            one account per e-mail address
    user:{uid}:projects           SET of project ids the user is a member of
    user:ids                      SET of every user id (the listing)
    project:{pid}                 JSON {id, name, created_at}
    project:name:{name}           {pid}            project names are unique
    project:{pid}:members         SET of member user ids
    project:{pid}:member:{uid}    JSON {role, accepted, created_at, updated_at}
    project:ids                   SET of every project id (the listing)
    pat:{tid}                     JSON PatRecord (no token value: an Argon2id PHC hash)
    pat:prefix:{prefix}           SET of PAT ids whose token has this 8-character prefix
    pat:owner:{pid}:{uid}         SET of the PAT ids of one user in one project
    pat_last_used:{tid}           ISO time of the last successful use, EX 300 (flushed into
                                  ``pat:{tid}.last_used_at`` by :mod:`edge.api.people.auth`)

Every write that must be consistent with what it read runs in ``WATCH``/``MULTI``/``EXEC``
(retried when another client wrote a watched key meanwhile); every method is bounded by
the store timeout. Callers map ``RedisError``/``OSError``/``TimeoutError`` to 503.
Stored records are decoded leniently (unknown fields ignored) so that a newer edge can add
fields during a rolling upgrade; a record that does not decode or does not fit its key is
skipped with a warning naming the key only.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
from redis.exceptions import WatchError

from edge.api.redis_store import RedisStore
from edge.api.tokens.store import now_iso
from edge.auth.roles import OWNER, is_role
from edge.auth.secrets import B58_CLASS, BASE58_ALPHABET
from edge.store import keys
from edge.store.scan import as_text
from edge.store.transaction import Txn

__all__ = [
    "LAST_USED_PREFIX",
    "LAST_USED_TTL",
    "MAX_ACTIVE_PATS",
    "Duplicate",
    "LimitReached",
    "Membership",
    "NotMember",
    "PatRecord",
    "PeopleStore",
    "Project",
    "User",
    "iso_utc",
    "new_id",
    "parse_iso",
    "valid_id",
]

log = logging.getLogger("edge.api")

ID_RANDOM = 12
MAX_ACTIVE_PATS = 10  # active (not revoked, not expired) PATs per user and project
LAST_USED_PREFIX = keys.PAT_LAST_USED
LAST_USED_TTL = 300
_BATCH = 500
_ID_RE = {kind: re.compile(rf"\A{kind}_{B58_CLASS}{{{ID_RANDOM}}}\Z") for kind in "upt"}
# an Argon2 PHC string as new_pat() makes it; anything else in token_hash is corrupt
_PHC_RE = re.compile(r"\A\$argon2(?:id|i|d)\$")


def new_id(kind: str) -> str:
    """A fresh id: ``u_`` (user), ``p_`` (project) or ``t_`` (token) + 12 base58."""
    return f"{kind}_" + "".join(secrets.choice(BASE58_ALPHABET) for _ in range(ID_RANDOM))


def valid_id(kind: str, value: str) -> bool:
    """Whether ``value`` has the shape of a ``kind`` id (checked before any Redis call)."""
    return _ID_RE[kind].match(value) is not None


def iso_utc(moment: datetime) -> str:
    """``moment`` in UTC as ISO 8601 with a ``Z`` (microseconds only when there are any)."""
    utc = moment.astimezone(UTC)
    spec = "microseconds" if utc.microsecond else "seconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def parse_iso(value: str) -> datetime:
    """Inverse of :func:`iso_utc` (and of ``now_iso``); raises ValueError."""
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("time without a timezone")
    return parsed


# ---------------------------------------------------------------------------- records


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    email: str
    created_at: str

    def public(self) -> dict[str, str]:
        return {
            "id": self.id,
            "name": self.name,
            "email": self.email,
            "created_at": self.created_at,
        }


class Project(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    created_at: str

    def public(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "created_at": self.created_at}


class Membership(msgspec.Struct, frozen=True, kw_only=True):
    role: str
    accepted: bool
    created_at: str | None = None
    updated_at: str | None = None

    @property
    def active(self) -> bool:
        """Accepted, with a known role: the only memberships that grant anything."""
        return self.accepted and is_role(self.role)

    def public(self, project_id: str, user_id: str) -> dict[str, object]:
        return {
            "project_id": project_id,
            "user_id": user_id,
            "role": self.role,
            "accepted": self.accepted,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class PatRecord(msgspec.Struct, frozen=True, kw_only=True):
    """``pat:{id}``. ``token_hash`` is the Argon2id PHC string of the whole token."""

    id: str
    user_id: str
    project_id: str
    name: str
    token_hash: str
    token_prefix: str
    expires_at: str | None = None
    last_used_at: str | None = None
    created_at: str
    revoked_at: str | None = None

    def expired(self, now: datetime) -> bool:
        if self.expires_at is None:
            return False
        try:
            return parse_iso(self.expires_at) <= now
        except ValueError:
            return True  # an unreadable expiry fails closed

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and not self.expired(now)

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.expired(now) else "active"

    def public(self, now: datetime) -> dict[str, object]:
        """What the API shows: never the hash (nor, of course, the token)."""
        return {
            "id": self.id,
            "user_id": self.user_id,
            "project_id": self.project_id,
            "name": self.name,
            "token_prefix": self.token_prefix,
            "status": self.status(now),
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


_encode = msgspec.json.Encoder().encode
_user_decoder = msgspec.json.Decoder(User)
_project_decoder = msgspec.json.Decoder(Project)
_member_decoder = msgspec.json.Decoder(Membership)
_pat_decoder = msgspec.json.Decoder(PatRecord)


# ---------------------------------------------------------------------------- keys


user_key = keys.user
email_key = keys.user_by_email
user_projects_key = keys.user_projects
USER_IDS = keys.USER_IDS
PROJECT_IDS = keys.PROJECT_IDS
project_key = keys.project
project_name_key = keys.project_by_name
members_key = keys.project_members
member_key = keys.project_member
pat_key = keys.pat
prefix_key = keys.pat_by_prefix
owner_key = keys.pat_owner
last_used_key = keys.pat_last_used


# ---------------------------------------------------------------------------- errors


class Duplicate(Exception):
    """A unique field (``field``) is taken."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field} taken")
        self.field = field


class Missing(Exception):
    """A user or project (``kind``) does not exist."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"no such {kind}")
        self.kind = kind


class NotMember(Exception):
    """The user is not an accepted member of the project."""


class LastOwner(Exception):
    """The change would leave the project without an accepted owner."""


class LimitReached(Exception):
    """The user already has :data:`MAX_ACTIVE_PATS` active PATs in the project."""


# ---------------------------------------------------------------------------- decoding

D = TypeVar("D")


def _decode(decoder: msgspec.json.Decoder[D], key: str, raw: bytes | str | None) -> D | None:
    if raw is None:
        return None
    try:
        return decoder.decode(raw)
    except msgspec.DecodeError as exc:
        log.warning("corrupt record skipped", extra={"fields": {"key": key, "error": str(exc)}})
        return None


def _fits(key: str, ok: bool) -> bool:
    if not ok:
        log.warning("record does not fit its key; skipped", extra={"fields": {"key": key}})
    return ok


def decode_user(uid: str, raw: bytes | str | None) -> User | None:
    key = user_key(uid)
    user = _decode(_user_decoder, key, raw)
    return user if user is not None and _fits(key, user.id == uid) else None


def decode_project(pid: str, raw: bytes | str | None) -> Project | None:
    key = project_key(pid)
    project = _decode(_project_decoder, key, raw)
    return project if project is not None and _fits(key, project.id == pid) else None


def decode_member(pid: str, uid: str, raw: bytes | str | None) -> Membership | None:
    return _decode(_member_decoder, member_key(pid, uid), raw)


def decode_pat(tid: str, raw: bytes | str | None) -> PatRecord | None:
    key = pat_key(tid)
    record = _decode(_pat_decoder, key, raw)
    if record is None:
        return None
    ok = record.id == tid and _PHC_RE.match(record.token_hash) is not None
    return record if _fits(key, ok) else None


def _ids(kind: str, members: Iterable[bytes | str]) -> list[str]:
    """The well-formed ids of a set (anything else in an index set is ignored)."""
    return sorted(t for t in (as_text(m) for m in members) if valid_id(kind, t))


S = TypeVar("S", bound=msgspec.Struct)
R = TypeVar("R")


class PeopleStore(RedisStore):
    """The records above. Every method may raise RedisError/OSError/TimeoutError."""

    async def _mget(self, keys: list[str]) -> list[bytes | str | None]:
        client = self.redis.client
        values: list[bytes | str | None] = []
        for start in range(0, len(keys), _BATCH):
            values.extend(await client.mget(keys[start : start + _BATCH]))
        return values

    async def _indexed(
        self,
        kind: str,
        index: str,
        key_of: Callable[[str], str],
        decode: Callable[[str, bytes | str | None], R | None],
    ) -> list[tuple[str, R]]:
        """The records whose ids (of ``kind``) the set ``index`` lists, by id: each id with
        its record, leaving out a record that is missing or does not decode."""

        async def work() -> list[tuple[str, R]]:
            ids = _ids(kind, await self.redis.client.smembers(index))
            raws = await self._mget([key_of(i) for i in ids])
            found = ((i, decode(i, raw)) for i, raw in zip(ids, raws, strict=True))
            return [(i, record) for i, record in found if record is not None]

        return await self._bounded(work())

    async def _create(
        self,
        kind: str,
        key_of: Callable[[str], str],
        ids: str,
        unique: tuple[str, str],
        make: Callable[[str], S],
    ) -> S:
        """A new record under a fresh id, listed in ``ids``; ``unique`` is the index key that
        must not exist yet (raises :class:`Duplicate` naming its field) and maps to the id."""
        index, field = unique

        async def body(txn: Txn) -> S:
            if await txn.exists(index):
                raise Duplicate(field)
            rid = new_id(kind)
            await txn.watch(key_of(rid))
            if await txn.exists(key_of(rid)):  # 2**-70: just pick another next time
                raise WatchError("id collision")
            record = make(rid)
            pipe = txn.writes()
            pipe.set(key_of(rid), _encode(record))
            pipe.set(index, rid)
            pipe.sadd(ids, rid)
            return record

        return await self._bounded(self._transaction([index], body))

    # ---------------------------------------------------------------- users
    async def create_user(self, name: str, email: str) -> User:
        """A new user; raises :class:`Duplicate` (``email``) if the address is taken."""
        return await self._create(
            "u",
            user_key,
            USER_IDS,
            (email_key(email), "email"),
            lambda uid: User(id=uid, name=name, email=email, created_at=now_iso()),
        )

    async def get_user(self, uid: str) -> User | None:
        raw = await self._bounded(self.redis.client.get(user_key(uid)))
        return decode_user(uid, raw)

    async def list_users(self) -> list[User]:
        found = await self._indexed("u", USER_IDS, user_key, decode_user)
        return [user for _, user in found]

    async def user_memberships(self, uid: str) -> list[tuple[str, Membership]]:
        return await self._indexed(
            "p",
            user_projects_key(uid),
            lambda pid: member_key(pid, uid),
            lambda pid, raw: decode_member(pid, uid, raw),
        )

    # ---------------------------------------------------------------- projects
    async def create_project(self, name: str) -> Project:
        """A new project; raises :class:`Duplicate` (``name``) if the name is taken."""
        return await self._create(
            "p",
            project_key,
            PROJECT_IDS,
            (project_name_key(name), "name"),
            lambda pid: Project(id=pid, name=name, created_at=now_iso()),
        )

    async def get_project(self, pid: str) -> Project | None:
        raw = await self._bounded(self.redis.client.get(project_key(pid)))
        return decode_project(pid, raw)

    async def list_projects(self) -> list[Project]:
        found = await self._indexed("p", PROJECT_IDS, project_key, decode_project)
        return [project for _, project in found]

    async def project_members(self, pid: str) -> list[tuple[str, Membership]]:
        return await self._indexed(
            "u",
            members_key(pid),
            lambda uid: member_key(pid, uid),
            lambda uid, raw: decode_member(pid, uid, raw),
        )

    # ---------------------------------------------------------------- memberships
    async def lookup(
        self, pid: str, uid: str
    ) -> tuple[Project | None, User | None, Membership | None]:
        """Project, user and membership in one round trip."""
        keys = [project_key(pid), user_key(uid), member_key(pid, uid)]
        raw_p, raw_u, raw_m = await self._bounded(self.redis.client.mget(keys))
        return decode_project(pid, raw_p), decode_user(uid, raw_u), decode_member(pid, uid, raw_m)

    @staticmethod
    async def _other_owners(txn: Txn, pid: str, uid: str) -> int:
        """Accepted owners of ``pid`` other than ``uid`` (their records watched too)."""
        others = [o for o in _ids("u", await txn.smembers(members_key(pid))) if o != uid]
        if not others:
            return 0
        keys = [member_key(pid, o) for o in others]
        await txn.watch(*keys)
        raws = await txn.mget(keys)
        found = (decode_member(pid, o, r) for o, r in zip(others, raws, strict=True))
        return sum(1 for m in found if m is not None and m.active and m.role == OWNER)

    async def put_member(
        self, pid: str, uid: str, role: str, accepted: bool
    ) -> tuple[Membership, bool]:
        """Create or replace a membership: (the membership, whether it is new).

        Raises :class:`Missing` (``project`` or ``user``), and :class:`LastOwner` when the
        change would take away the project's last accepted owner.
        """
        key = member_key(pid, uid)

        async def body(txn: Txn) -> tuple[Membership, bool]:
            raw_p, raw_u, raw_m = await txn.mget([project_key(pid), user_key(uid), key])
            if decode_project(pid, raw_p) is None:
                raise Missing("project")
            if decode_user(uid, raw_u) is None:
                raise Missing("user")
            old = decode_member(pid, uid, raw_m)
            was_owner = old is not None and old.active and old.role == OWNER
            if was_owner and not (accepted and role == OWNER):
                if await self._other_owners(txn, pid, uid) == 0:
                    raise LastOwner()
            now = now_iso()
            member = Membership(
                role=role,
                accepted=accepted,
                created_at=old.created_at if old is not None else now,
                updated_at=now,
            )
            pipe = txn.writes()
            pipe.set(key, _encode(member))
            pipe.sadd(members_key(pid), uid)
            pipe.sadd(user_projects_key(uid), pid)
            return member, old is None

        watched = [key, project_key(pid), user_key(uid), members_key(pid)]
        return await self._bounded(self._transaction(watched, body))

    async def delete_member(self, pid: str, uid: str) -> list[str] | None:
        """Remove a membership and revoke the user's active PATs in the project.

        The ids of the PATs revoked, or None if there was no membership. Raises
        :class:`LastOwner` rather than remove the project's last accepted owner.
        """
        key = member_key(pid, uid)
        owned = owner_key(pid, uid)

        async def body(txn: Txn) -> list[str] | None:
            raw = await txn.get(key)
            if raw is None:
                return None
            old = decode_member(pid, uid, raw)
            if old is not None and old.active and old.role == OWNER:
                if await self._other_owners(txn, pid, uid) == 0:
                    raise LastOwner()
            tids = _ids("t", await txn.smembers(owned))
            records: list[PatRecord] = []
            if tids:
                await txn.watch(*(pat_key(t) for t in tids))
                raws = await txn.mget([pat_key(t) for t in tids])
                found = (decode_pat(t, r) for t, r in zip(tids, raws, strict=True))
                records = [r for r in found if r is not None and r.revoked_at is None]
            now = now_iso()
            pipe = txn.writes()
            pipe.delete(key)
            pipe.srem(members_key(pid), uid)
            pipe.srem(user_projects_key(uid), pid)
            for record in records:
                revoked = msgspec.structs.replace(record, revoked_at=now)
                pipe.set(pat_key(record.id), _encode(revoked))
                pipe.srem(prefix_key(record.token_prefix), record.id)
            return [r.id for r in records]

        return await self._bounded(self._transaction([key, owned, members_key(pid)], body))

    # ---------------------------------------------------------------- PATs
    async def create_pat(self, record: PatRecord, limit: int = MAX_ACTIVE_PATS) -> None:
        """Store a new PAT and its indexes.

        In one transaction with the checks: the user is an accepted member (else
        :class:`NotMember`) and has fewer than ``limit`` active PATs in the project (else
        :class:`LimitReached`).
        """
        pid, uid = record.project_id, record.user_id
        mkey, owned = member_key(pid, uid), owner_key(pid, uid)

        async def body(txn: Txn) -> None:
            member = decode_member(pid, uid, await txn.get(mkey))
            if member is None or not member.active:
                raise NotMember()
            tids = _ids("t", await txn.smembers(owned))
            if tids:
                # the records are not watched: a revocation meanwhile only frees a slot,
                # and nothing but this transaction (which watches the set) adds one
                raws = await txn.mget([pat_key(t) for t in tids])
                now = datetime.now(UTC)
                records = (decode_pat(t, r) for t, r in zip(tids, raws, strict=True))
                if sum(1 for r in records if r is not None and r.active(now)) >= limit:
                    raise LimitReached()
            await txn.watch(pat_key(record.id))
            if await txn.exists(pat_key(record.id)):
                raise Duplicate("id")
            pipe = txn.writes()
            pipe.set(pat_key(record.id), _encode(record))
            pipe.sadd(prefix_key(record.token_prefix), record.id)
            pipe.sadd(owned, record.id)

        await self._bounded(self._transaction([mkey, owned], body))

    async def get_pat(self, tid: str) -> PatRecord | None:
        raw = await self._bounded(self.redis.client.get(pat_key(tid)))
        return decode_pat(tid, raw)

    async def list_pats(self, pid: str, uid: str) -> list[PatRecord]:
        """The user's PATs in the project (revoked and expired ones too), oldest first.

        ``last_used_at`` includes uses not flushed into the records yet.
        """

        async def work() -> list[PatRecord]:
            tids = _ids("t", await self.redis.client.smembers(owner_key(pid, uid)))
            raws = await self._mget([pat_key(t) for t in tids])
            pending = await self._mget([last_used_key(t) for t in tids])
            records = []
            for tid, raw, used in zip(tids, raws, pending, strict=True):
                record = decode_pat(tid, raw)
                if record is None:
                    continue
                if used is not None:
                    seen = as_text(used)
                    if record.last_used_at is None or seen > record.last_used_at:
                        record = msgspec.structs.replace(record, last_used_at=seen)
                records.append(record)
            return sorted(records, key=lambda r: (r.created_at, r.id))

        return await self._bounded(work())

    async def revoke_pat(self, tid: str) -> PatRecord | None:
        """Set ``revoked_at`` (kept if already set) and drop the prefix index entry.

        The record as it is now, or None if it does not exist.
        """
        key = pat_key(tid)

        async def body(txn: Txn) -> PatRecord | None:
            record = decode_pat(tid, await txn.get(key))
            if record is None:
                return None
            if record.revoked_at is None:
                record = msgspec.structs.replace(record, revoked_at=now_iso())
            pipe = txn.writes()
            pipe.set(key, _encode(record))
            pipe.srem(prefix_key(record.token_prefix), tid)
            return record

        return await self._bounded(self._transaction([key], body))

    # ---------------------------------------------------------------- authentication
    async def pat_candidates(self, prefix: str, most: int) -> list[PatRecord]:
        """The PAT records indexed under ``prefix`` (at most ``most``), read fresh."""

        async def work() -> list[PatRecord]:
            client = self.redis.client
            tids = _ids("t", await client.smembers(prefix_key(prefix)))
            if len(tids) > most:
                log.warning(
                    "too many PATs share a prefix; checking the first ones",
                    extra={"fields": {"token_prefix": prefix, "count": len(tids)}},
                )
                tids = tids[:most]
            if not tids:
                return []
            raws = await client.mget([pat_key(t) for t in tids])
            found = (decode_pat(t, r) for t, r in zip(tids, raws, strict=True))
            return [r for r in found if r is not None and r.token_prefix == prefix]

        return await self._bounded(work())

    async def touch_pat(self, tid: str, when: str) -> None:
        """Note a successful use (flushed into the record later, by one node)."""
        await self._bounded(self.redis.client.set(last_used_key(tid), when, ex=LAST_USED_TTL))
