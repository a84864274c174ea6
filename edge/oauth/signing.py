"""The access tokens' signing keys: one shared by every node, issued and verified in memory.

Where the keys live
-------------------
* ``OAUTH_JWT_PRIVATE_KEY_B64`` (base64 of a PEM RSA private key, 2048 bits or more) is the
  production choice: that key signs, its ``kid`` is its RFC 7638 JWK thumbprint, and nothing
  private is written to Redis. It is rotated by changing the setting (and restarting):
  tokens the old key signed stop verifying then, so do it when they may expire, or accept
  that clients refresh once. :meth:`SigningKeys.rotate` refuses in this mode.
* Without it, the keys live in the Redis hash ``oauth:keys`` (field ``kid`` -> a
  :class:`StoredKey` JSON document **holding the private key in PEM**): every node must sign
  with the same key, so whoever can read that hash can mint tokens. Protect Redis
  accordingly (``requirepass``/ACLs, no network exposure), or set the environment key.
  The first node to start finds the hash empty, takes the lease ``OAUTH_KEYS_LEASE`` and
  writes one generated RSA 2048 key in a WATCH transaction that adds a key only while none
  is active; every other node (or worker) starting at the same moment waits for that key,
  so they all end with the same single key.

Rotation (``edge oauth rotate-key``) adds a new active key; the previous one gets
``retire_at = now + access token lifetime + RETIRE_MARGIN`` and stays published and
accepted until then (the last token it signed has expired, leeway included), after which it
is dropped from memory and from the hash. Every node re-reads the hash every
``refresh_interval`` seconds (an HGETALL of a few fields; only new or changed documents are
decoded, PEMs parsed off the event loop), so a rotation made on one node signs everywhere
within seconds.

Verification (RFC 8725, RFC 9068) reads memory only: RS256 only, ``typ`` ``at+jwt``, a known
``kid`` (an unknown one is refused, never fetched), no ``jku``/``x5u``/``jwk``/``x5c``/
``crit`` header, exact issuer, ``exp``/``nbf``/``iat`` with 30 s of leeway, every claim we
issue required, and tokens over 8 KiB refused before they are parsed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import jwt
import msgspec
import redis.asyncio as aioredis
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.types import Options
from jwt.utils import to_base64url_uint
from redis.exceptions import RedisError, WatchError

from edge.errors import EdgeError
from edge.oauth.errors import InvalidToken, ServerError
from edge.store import keys
from edge.store.lease import hold

__all__ = [
    "LEEWAY",
    "MAX_TOKEN_LENGTH",
    "RETIRE_MARGIN",
    "KeyRotationRefused",
    "SigningKeys",
    "StoredKey",
    "thumbprint",
]

log = logging.getLogger("edge.oauth")

LEEWAY = 30  # seconds of clock skew allowed on exp/nbf/iat
RETIRE_MARGIN = 60  # a retired key outlives its last token by this (> LEEWAY: skew between nodes)
MAX_TOKEN_LENGTH = 8192  # our tokens are ~1 KiB; anything this long is refused unparsed
KEY_SIZE = 2048
REFRESH_INTERVAL = 2.0  # seconds between re-reads of oauth:keys
# a rotated-in key signs only this long after it was made: every node has read it by then
ACTIVATION_DELAY = 3 * REFRESH_INTERVAL
VERIFIED_CACHE_SIZE = 10_000  # tokens remembered as verified, per worker (~2 KiB each)
LEASE_TTL = 30.0  # the lease outlives a key generation (~0.1 s) by far
LEASE_WAIT = LEASE_TTL + 15.0  # load()/rotate() wait out a crashed holder's lease
TYP = "at+jwt"
_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 section 2.1
# headers that point the verifier at a key of the sender's choosing (RFC 8725 section 3.10),
# and crit: we implement no extension, so one marked critical must be refused (RFC 7515 4.1.11)
_REFUSED_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "sub", "jti", "client_id"]


class StoredKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``oauth:keys`` field ``kid``: one signing key. ``retire_at`` is None while the key is
    the active one; a rotation sets it to when the last token it signed has expired."""

    kid: str
    private_pem: str  # PKCS#8, unencrypted: every node signs with it
    created_at: int
    retire_at: int | None = None


class KeyRotationRefused(EdgeError):
    """rotate() while the key comes from the environment: the operator rotates that one."""

    status = 409
    public_message = (
        "the signing key comes from OAUTH_JWT_PRIVATE_KEY_B64: rotate it by changing that setting"
    )


def thumbprint(public: rsa.RSAPublicKey) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url) of an RSA public key."""
    numbers = public.public_numbers()
    members = {
        "e": to_base64url_uint(numbers.e).decode(),
        "kty": "RSA",
        "n": to_base64url_uint(numbers.n).decode(),
    }
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class _Key:
    kid: str
    private: rsa.RSAPrivateKey = field(repr=False)
    public: rsa.RSAPublicKey = field(repr=False)
    jwk: dict[str, str]
    created_at: int
    retire_at: int | None
    pem: str = field(repr=False, default="")  # "" for the environment's key


def _parse_private(pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (TypeError, UnsupportedAlgorithm) as exc:  # encrypted, or not a key we know
        raise ValueError(f"unusable private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    if key.key_size < KEY_SIZE:
        raise ValueError(f"an RSA key of {key.key_size} bits; at least {KEY_SIZE} are needed")
    return key


def _make_key(private: rsa.RSAPrivateKey, *, kid: str | None, created_at: int,
              retire_at: int | None, pem: str) -> _Key:  # fmt: skip
    public = private.public_key()
    kid = kid or thumbprint(public)
    numbers = public.public_numbers()
    jwk = {
        "kty": "RSA",
        "n": to_base64url_uint(numbers.n).decode(),
        "e": to_base64url_uint(numbers.e).decode(),
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
    }
    return _Key(kid, private, public, jwk, created_at, retire_at, pem)


def _from_doc(private: rsa.RSAPrivateKey, doc: StoredKey) -> _Key:
    return _make_key(private, kid=doc.kid, created_at=doc.created_at, retire_at=doc.retire_at,
                     pem=doc.private_pem)  # fmt: skip


def _generate(now: int) -> StoredKey:
    """A new RSA key as its stored document (CPU-bound: run in a thread)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return StoredKey(kid=thumbprint(private.public_key()), private_pem=pem, created_at=now)


@dataclass(frozen=True)
class _KeySet:
    """What sign/verify/jwks read: replaced whole, never changed in place."""

    keys: dict[str, _Key] = field(default_factory=dict)
    active: _Key | None = None
    raw: dict[bytes, bytes] = field(default_factory=dict)  # the hash as last read


def _pick_active(found: dict[str, _Key]) -> _Key | None:
    # one key has retire_at None, unless two rotations raced or a document was edited by
    # hand: the newest then signs, the same choice on every node
    candidates = [k for k in found.values() if k.retire_at is None]
    if not candidates:
        return None
    return max(candidates, key=lambda k: (k.created_at, k.kid))


class SigningKeys:
    """The signing keys of this worker, kept in memory and in step with ``oauth:keys``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        issuer: str,
        env_key_b64: str | None,
        access_token_lifetime: int,
        refresh_interval: float = REFRESH_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.issuer = issuer
        self.access_token_lifetime = access_token_lifetime
        self.refresh_interval = refresh_interval
        self._env_key_b64 = env_key_b64 or None
        self._clock = clock
        # tokens verified under the key set ``_verified_set`` -> (key, claims): see verify
        self._verified: dict[str, tuple[_Key, dict[str, Any]]] = {}
        self._verified_set: _KeySet | None = None
        self._set = _KeySet()
        self._sync = asyncio.Lock()
        self._rejected: dict[str, str] = {}  # kid -> why its document is not used
        self.last_refresh: float | None = None
        self.last_error: str | None = None

    @property
    def source(self) -> str:
        return "env" if self._env_key_b64 is not None else "redis"

    @property
    def active_kid(self) -> str | None:
        active = self._set.active
        return active.kid if active is not None else None

    # ------------------------------------------------------------------ loading
    async def load(self) -> None:
        """The environment's key, else the keys in ``oauth:keys``, else a generated key that
        every node starting now shares (one generates it under the lease, the rest wait)."""
        if self._env_key_b64 is not None:
            pem = base64.b64decode(self._env_key_b64, validate=True)
            private = await asyncio.to_thread(_parse_private, pem)
            key = _make_key(private, kid=None, created_at=int(self._clock()), retire_at=None,
                            pem="")  # fmt: skip
            self._set = _KeySet({key.kid: key}, key)
            self.last_refresh = self._clock()
            log.info("oauth signing key from the environment", extra={"fields": {"kid": key.kid}})
            return
        deadline = time.monotonic() + LEASE_WAIT
        await self.refresh()
        while self._set.active is None:
            async with hold(self.redis, keys.OAUTH_KEYS_LEASE, LEASE_TTL) as acquired:
                if acquired:
                    await self.refresh()
                    if self._set.active is None:
                        fresh = await asyncio.to_thread(_generate, int(self._clock()))
                        if await self._commit(fresh, rotate=False):
                            log.info(
                                "oauth signing key generated", extra={"fields": {"kid": fresh.kid}}
                            )
            await self.refresh()
            if self._set.active is not None:
                break
            if time.monotonic() > deadline:
                raise ServerError("no oauth signing key appeared in time")
            await asyncio.sleep(0.05)

    async def refresh(self) -> None:
        """Re-read ``oauth:keys``: install new or changed keys, drop retired ones (from the
        hash too). Nothing is parsed when the hash is as it was."""
        if self._env_key_b64 is not None:
            return
        async with self._sync:
            raw = cast("dict[bytes, bytes]", await self.redis.hgetall(keys.OAUTH_KEYS))
            now = int(self._clock())
            current = self._set
            if not raw and current.keys:
                # an emptied hash (a Redis that lost its data) must not leave the nodes
                # without a shared key: put ours back unless another node already did
                await self._restore(current, now)
                raw = cast("dict[bytes, bytes]", await self.redis.hgetall(keys.OAUTH_KEYS))
            if raw != current.raw:
                self._set = await self._install(raw, current)
            expired = [k.kid for k in self._set.keys.values() if _retired(k, now)]
            if expired:
                await self.redis.hdel(keys.OAUTH_KEYS, *expired)
                log.info("oauth signing keys retired", extra={"fields": {"kids": expired}})
                kept = {kid: k for kid, k in self._set.keys.items() if kid not in expired}
                raw = {f: v for f, v in self._set.raw.items() if f.decode() not in expired}
                self._set = _KeySet(kept, _pick_active(kept), raw)
            self.last_refresh = self._clock()

    async def _install(self, raw: dict[bytes, bytes], current: _KeySet) -> _KeySet:
        docs: list[StoredKey] = []
        rejected: dict[str, str] = {}
        for name, value in raw.items():
            kid = name.decode("utf-8", "replace")
            try:
                doc = msgspec.json.decode(value, type=StoredKey)
            except msgspec.DecodeError as exc:
                rejected[kid] = str(exc)
                continue
            if doc.kid != kid:
                rejected[kid] = f"the document names kid {doc.kid!r}"
                continue
            docs.append(doc)
        found: dict[str, _Key] = {}
        to_parse: list[StoredKey] = []
        for doc in docs:
            known = current.keys.get(doc.kid)
            if known is not None and known.pem == doc.private_pem:
                found[doc.kid] = _from_doc(known.private, doc)
            else:
                to_parse.append(doc)
        for doc in to_parse:
            try:
                private = await asyncio.to_thread(_parse_private, doc.private_pem.encode())
            except ValueError as exc:
                rejected[doc.kid] = str(exc)
                continue
            found[doc.kid] = _from_doc(private, doc)
        if rejected != self._rejected:
            for kid, why in rejected.items():
                log.warning(
                    "oauth signing key document refused",
                    extra={"fields": {"key": keys.OAUTH_KEYS, "kid": kid, "error": why}},
                )
        self._rejected = rejected
        active = _pick_active(found)
        if active is not None and active.kid != self.active_kid and current.active is not None:
            log.info("oauth signing key changed", extra={"fields": {"kid": active.kid}})
        if active is None and current.active is not None and not found:
            # nothing usable left in Redis: keep signing with what we have rather than stop
            return current
        return _KeySet(found, active, raw)

    async def _restore(self, current: _KeySet, now: int) -> None:
        mapping = {
            k.kid: msgspec.json.encode(
                StoredKey(
                    kid=k.kid, private_pem=k.pem, created_at=k.created_at, retire_at=k.retire_at
                )
            )
            for k in current.keys.values()
            if k.pem and not _retired(k, now)
        }
        if not mapping:
            return
        args: list[str | bytes] = []
        for kid, doc in mapping.items():
            args += [kid, doc]
        if await self.redis.eval(_RESTORE, 1, keys.OAUTH_KEYS, *args):
            log.warning(
                "oauth:keys was empty; wrote back this node's signing keys",
                extra={"fields": {"kids": sorted(mapping)}},
            )

    async def _commit(self, fresh: StoredKey, *, rotate: bool) -> bool:
        """Add ``fresh`` as the active key, retiring the active one (``rotate``), or only
        if no key is active (the first key). A WATCH transaction: a change made meanwhile by
        another node makes it read again. False if a key was active and not ``rotate``."""
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(keys.OAUTH_KEYS)
                    raw = cast("dict[bytes, bytes]", await pipe.hgetall(keys.OAUTH_KEYS))
                    now = int(self._clock())
                    updates: dict[str, bytes] = {}
                    stale: list[str] = []
                    active_found = False
                    for name, value in raw.items():
                        try:
                            doc = msgspec.json.decode(value, type=StoredKey)
                        except msgspec.DecodeError:
                            continue  # left as it is; refresh() reports it
                        if doc.retire_at is None:
                            active_found = True
                            retire_at = now + self.access_token_lifetime + RETIRE_MARGIN
                            updates[name.decode()] = msgspec.json.encode(
                                msgspec.structs.replace(doc, retire_at=retire_at)
                            )
                        elif doc.retire_at <= now:
                            stale.append(name.decode())
                    if active_found and not rotate:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return False
                    updates[fresh.kid] = msgspec.json.encode(fresh)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.hset(keys.OAUTH_KEYS, mapping=updates)  # type: ignore[arg-type]
                    if stale:
                        pipe.hdel(keys.OAUTH_KEYS, *stale)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def rotate(self) -> str:
        """Add a new active key; the old one stays published until its tokens have expired.
        Returns the new kid once this node signs with it."""
        if self._env_key_b64 is not None:
            raise KeyRotationRefused("rotate refused: the key comes from the environment")
        fresh = await asyncio.to_thread(_generate, int(self._clock()))
        deadline = time.monotonic() + LEASE_WAIT
        while True:
            async with hold(self.redis, keys.OAUTH_KEYS_LEASE, LEASE_TTL) as acquired:
                if acquired:
                    await self._commit(fresh, rotate=True)
                    break
            if time.monotonic() > deadline:
                raise ServerError("another node holds the signing keys' lease")
            await asyncio.sleep(0.05)
        log.info(
            "oauth signing key rotated",
            extra={"fields": {"kid": fresh.kid, "previous": self.active_kid}},
        )
        await self.refresh()
        return fresh.kid

    async def run(self) -> None:
        """Refresh every ``refresh_interval`` seconds (a TaskService's loop): a rotation on
        another node reaches this one within that. Failures are recorded, never fatal: the
        keys in memory keep serving."""
        while True:
            await asyncio.sleep(self.refresh_interval)
            try:
                if self._set.active is None:
                    await self.load()
                else:
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError, EdgeError) as exc:
                error = str(exc) or type(exc).__name__
                if error != self.last_error:
                    log.warning(
                        "oauth signing keys not refreshed; the keys in memory keep serving",
                        extra={"fields": {"error": error}},
                    )
                self.last_error = error
            except Exception:
                log.exception("oauth signing keys refresh failed")
                self.last_error = "internal error"
            else:
                self.last_error = None
            raise_if_cancelled()

    # ------------------------------------------------------------------ tokens
    def sign(self, claims: dict[str, Any]) -> str:
        """``claims`` as an RFC 9068 access token, RS256, signed by the active key."""
        key = self._signer()
        if key is None:
            raise ServerError("no oauth signing key loaded")
        return jwt.encode(claims, key.private, algorithm="RS256",
                          headers={"kid": key.kid, "typ": TYP})  # fmt: skip

    def _signer(self) -> _Key | None:
        """The key that signs now: the active one, except for ``ACTIVATION_DELAY`` seconds
        after a rotation, while other nodes may not have read the new key yet (they refuse
        an unknown ``kid`` rather than fetch it): the previous key, still published and
        accepted everywhere until well after the tokens it signs meanwhile expire, signs
        until then. The first key of a cluster signs at once: every node loads it before
        serving."""
        keys_now = self._set
        active = keys_now.active
        now = self._clock()
        if active is None or active.created_at <= now - ACTIVATION_DELAY:
            return active
        previous = [
            k
            for k in keys_now.keys.values()
            if k is not active and k.retire_at is not None and k.retire_at > now + LEEWAY
        ]
        if not previous:
            return active
        return max(previous, key=lambda k: (k.created_at, k.kid))

    def verify(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """The claims of a token we signed, still valid; else :class:`InvalidToken` (whose
        detail says why, never the token). Memory only: safe on every request.

        A token verified once is remembered (its exact text, the key set and key that
        verified it, its claims): the next check of the same token costs a dictionary
        lookup and the time checks, not an RSA verification and a JSON parse (~120 µs).
        The memory is dropped whole when the key set changes (a key removed by hand stops
        verifying at once) and bounded (``VERIFIED_CACHE_SIZE``, oldest first). The
        returned dict is the caller's to keep: a copy."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken(f"token longer than {MAX_TOKEN_LENGTH} characters")
        now = self._clock()
        current = self._set
        if self._verified_set is not current:
            self._verified.clear()
            self._verified_set = current
        hit = self._verified.get(token)
        if hit is not None and not _retired(hit[0], int(now)):
            claims = hit[1]
        else:
            key, claims = self._verify_signed(token, current, now)
            verified = self._verified
            verified[token] = (key, claims)
            if len(verified) > VERIFIED_CACHE_SIZE:
                del verified[next(iter(verified))]
        # the time and audience checks, on every use (PyJWT's rules, with its leeway)
        if claims["exp"] <= now - LEEWAY:
            self._verified.pop(token, None)
            raise InvalidToken("ExpiredSignatureError: the token has expired")
        if audience is not None and not _audience_has(claims.get("aud"), audience):
            raise InvalidToken("InvalidAudienceError: audience does not match")
        return dict(claims)

    def _verify_signed(
        self, token: str, current: _KeySet, now: float
    ) -> tuple[_Key, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from None
        if header.get("alg") != "RS256":
            raise InvalidToken("alg is not RS256")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in _TYPES:
            raise InvalidToken("typ is not at+jwt")
        for name in _REFUSED_HEADERS:
            if name in header:
                raise InvalidToken(f"header {name} refused")
        kid = header.get("kid")
        key = current.keys.get(kid) if isinstance(kid, str) else None
        if key is None or _retired(key, int(now)):
            raise InvalidToken("unknown kid")
        options: Options = {"require": REQUIRED_CLAIMS, "verify_aud": False}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.public,
                algorithms=["RS256"],
                issuer=self.issuer,
                leeway=LEEWAY,
                options=options,
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"{type(exc).__name__}: {exc}") from None
        if not isinstance(claims.get("exp"), int | float):
            raise InvalidToken("exp is not a number")
        return key, claims

    def jwks(self) -> dict[str, Any]:
        """The JWK Set to publish: the active key and the retired ones still accepted."""
        now = int(self._clock())
        current = self._set
        ordered = sorted(
            (k for k in current.keys.values() if not _retired(k, now)),
            key=lambda k: (k is not current.active, -k.created_at, k.kid),
        )
        return {"keys": [dict(k.jwk) for k in ordered]}

    def health(self) -> dict[str, Any]:
        now = int(self._clock())
        return {
            "source": self.source,
            "active_kid": self.active_kid,
            "published": sum(1 for k in self._set.keys.values() if not _retired(k, now)),
            "last_refresh": self.last_refresh,
            "error": self.last_error,
            "rejected": dict(self._rejected),
        }


def _audience_has(aud: object, audience: str) -> bool:
    """PyJWT's audience rule: ``aud`` (a string or a list of strings) names ``audience``."""
    if isinstance(aud, str):
        return aud == audience
    if isinstance(aud, list):
        return audience in aud
    return False


def _retired(key: _Key, now: int) -> bool:
    return key.retire_at is not None and key.retire_at <= now


# write the keys back only into an empty hash: the first node to notice restores them
_RESTORE = """
if redis.call('HLEN', KEYS[1]) == 0 then
    redis.call('HSET', KEYS[1], unpack(ARGV))
    return 1
end
return 0
"""


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled. redis-py can answer a cancel that
    lands mid-read with ConnectionError ("Connection closed by server"), which a loop that
    retries on Redis errors would otherwise take for an outage and carry on: the service
    would then never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
