"""Authorization codes, access tokens and refresh tokens: issued, redeemed, rotated, revoked.

Everything one authorization produces belongs to a **family** (``oauth:family:{id}``, a set
of ``jti:{jti}:{exp}`` and ``refresh:{sha256}`` members): the code's tokens and every
refresh of them. A family is revoked as a whole when

* an authorization code is redeemed a second time (RFC 6749 section 4.1.2: the tokens the
  first redemption issued are revoked) — the code's key is taken with GETDEL in a script
  that leaves a ``oauth:code_used:{sha256}`` marker naming the family, so two nodes can
  never both redeem it and the second learns which family to revoke;
* a refresh token is used a second time (OAuth 2.1 section 4.3.1, reuse detection): each
  refresh record is a hash whose ``uses`` counter a script increments only if the record
  exists, so exactly one caller sees ``1``;
* an admin, ``/revoke`` or the client's deletion asks.

Access tokens are JWTs signed by :class:`~edge.oauth.signing.SigningKeys`; what was issued
is recorded at ``oauth:token:{jti}`` (for listing and introspection, never the token) and a
revoked one's ``jti`` goes to :class:`~edge.oauth.revocation.RevokedTokens`, which every
worker mirrors in memory. Refresh tokens are random and stored only as their SHA-256.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as aioredis

from edge.oauth import pkce
from edge.oauth.errors import InvalidGrant, InvalidScope, InvalidTarget, OAuthError
from edge.oauth.records import (
    AccessTokenRecord,
    AuthorizationRequest,
    ClientRecord,
    CodeGrant,
    GitHubUser,
    RefreshRecord,
    decode,
    digest,
    encode,
    new_secret,
)
from edge.oauth.revocation import RevokedTokens
from edge.oauth.signing import SigningKeys
from edge.store import keys
from edge.store.transaction import Txn, transaction

__all__ = [
    "GrantPolicy",
    "Grants",
    "revoke_client",
    "revoke_family",
    "revoke_user",
]

log = logging.getLogger("edge.oauth")

# GETDEL the code; if it was there, leave the used-marker naming the new family; if it was
# not, say which family an earlier redemption started (if any)
_REDEEM = """
local grant = redis.call('GETDEL', KEYS[1])
if grant then
    redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
    return {1, grant}
end
local family = redis.call('GET', KEYS[2])
if family then
    return {2, family}
end
return {0, false}
"""

# count a use of a refresh token only if it exists (HINCRBY would create a missing one)
_USE_REFRESH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
    return {0, false}
end
local uses = redis.call('HINCRBY', KEYS[1], 'uses', 1)
return {uses, redis.call('HGET', KEYS[1], 'doc')}
"""


# how long a revoked family's tombstone lasts: far longer than any token request in flight
FAMILY_TOMBSTONE_TTL = 86400


@dataclass(frozen=True, slots=True)
class GrantPolicy:
    issuer: str
    access_lifetime: int
    refresh_lifetime: int
    code_lifetime: int


@dataclass(frozen=True, slots=True)
class Issued:
    """A token response (RFC 6749 section 5.1) and what the access token says."""

    access_token: str
    record: AccessTokenRecord
    refresh_token: str | None

    def response(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.record.expires_at - self.record.issued_at,
            "scope": " ".join(self.record.scope),
        }
        if self.refresh_token is not None:
            doc["refresh_token"] = self.refresh_token
        return doc


def _family_member_jti(jti: str, expires_at: int) -> str:
    return f"jti:{jti}:{expires_at}"


def _family_member_refresh(token_hash: str) -> str:
    return f"refresh:{token_hash}"


def _narrowed(
    asked: Sequence[str] | None, granted: tuple[str, ...], error: type[OAuthError]
) -> tuple[str, ...]:
    """``asked`` (a subset of ``granted``) or everything granted when nothing was asked."""
    if not asked:
        return granted
    extra = [item for item in asked if item not in granted]
    if extra:
        raise error(f"asked beyond the grant: {extra[:3]!r}")
    return tuple(dict.fromkeys(asked))


class Grants:
    """The grant store of one worker (shared Redis, the worker's keys and revocations)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        signing: SigningKeys,
        revoked: RevokedTokens,
        policy: GrantPolicy,
    ) -> None:
        self.redis = redis
        self.signing = signing
        self.revoked = revoked
        self.policy = policy
        self._redeem = redis.register_script(_REDEEM)
        self._use_refresh = redis.register_script(_USE_REFRESH)
        self.issued = 0  # access tokens issued by this worker

    # ------------------------------------------------------------------ codes
    async def issue_code(self, request: AuthorizationRequest, user: GitHubUser) -> str:
        code = new_secret()
        grant = CodeGrant(
            client_id=request.client_id,
            redirect_uri=request.redirect_uri,
            redirect_uri_given=request.redirect_uri_given,
            scope=request.scope,
            resources=request.resources,
            proxy_hostname=request.proxy_hostname,
            code_challenge=request.code_challenge,
            user=user,
            issued_at=int(time.time()),
        )
        await self.redis.set(keys.oauth_code(code), encode(grant), ex=self.policy.code_lifetime)
        return code

    async def redeem_code(
        self,
        code: str,
        client: ClientRecord,
        *,
        redirect_uri: str | None,
        code_verifier: str | None,
        resources: Sequence[str],
    ) -> Issued:
        """The ``authorization_code`` grant (OAuth 2.1 section 4.1.3)."""
        if not code or len(code) > 512:
            raise InvalidGrant("no code")
        family_id = new_secret(16)
        used_key = keys.oauth_code_used(digest(code))
        # the marker outlives the code itself: a replay after expiry still revokes
        marker_ttl = self.policy.code_lifetime + self.policy.access_lifetime
        found, value = await self._redeem(
            keys=[keys.oauth_code(code), used_key], args=[family_id, marker_ttl]
        )
        if found == 2:
            revoked = await revoke_family(self.redis, self.revoked, _text(value))
            log.warning(
                "oauth: authorization code used twice; its tokens are revoked",
                extra={"fields": {"client_id": client.client_id, "revoked": revoked}},
            )
            raise InvalidGrant("code reused")
        if found != 1:
            raise InvalidGrant("unknown or expired code")
        try:
            grant = decode(value, CodeGrant)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("oauth: damaged authorization code record")
            raise InvalidGrant("damaged code") from None
        if grant.client_id != client.client_id:
            # RFC 6749 4.1.3: the code was issued to another client; it is spent now
            await revoke_family(self.redis, self.revoked, family_id)
            raise InvalidGrant("code of another client")
        if (redirect_uri is not None or grant.redirect_uri_given) and (
            redirect_uri != grant.redirect_uri
        ):
            raise InvalidGrant("redirect_uri differs from the authorization request's")
        if code_verifier is None or not pkce.verifier_matches(code_verifier, grant.code_challenge):
            raise InvalidGrant("PKCE verification failed")
        audience = self._audience(resources, grant.resources)
        refresh = "refresh_token" in client.grant_types
        return await self._issue(
            family_id,
            client.client_id,
            grant.user,
            grant.scope,
            grant.resources,
            audience,
            refresh=refresh,
            proxy_hostname=grant.proxy_hostname,
        )

    # ------------------------------------------------------------------ refresh
    async def refresh(
        self,
        refresh_token: str,
        client: ClientRecord,
        *,
        scope: Sequence[str] | None,
        resources: Sequence[str],
        still_allowed: Callable[[RefreshRecord], bool] | None = None,
    ) -> Issued:
        """The ``refresh_token`` grant with rotation: a new refresh token every time, and
        the family revoked when an old one comes back, or when ``still_allowed`` says
        the user has been taken off the allowlist since."""
        if not refresh_token or len(refresh_token) > 512:
            raise InvalidGrant("no refresh token")
        # a request refused for what it asks issues nothing, so it must not spend the token
        live = await self.live_refresh(refresh_token)
        if live is not None and live.client_id == client.client_id:
            _narrowed(scope, live.scope, InvalidScope)
            self._audience(resources, live.resources)
        key = keys.oauth_refresh(digest(refresh_token))
        uses, value = await self._use_refresh(keys=[key])
        if not uses:
            raise InvalidGrant("unknown or expired refresh token")
        try:
            record = decode(value, RefreshRecord)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("oauth: damaged refresh token record")
            raise InvalidGrant("damaged refresh token") from None
        if int(uses) > 1:
            revoked = await revoke_family(self.redis, self.revoked, record.family_id)
            log.warning(
                "oauth: refresh token reused; its family is revoked",
                extra={"fields": {"client_id": record.client_id, "revoked": revoked}},
            )
            raise InvalidGrant("refresh token reused")
        if record.client_id != client.client_id:
            raise InvalidGrant("refresh token of another client")
        if record.expires_at <= time.time():
            raise InvalidGrant("refresh token expired")
        if still_allowed is not None and not still_allowed(record):
            await revoke_family(self.redis, self.revoked, record.family_id)
            log.info(
                "oauth: refresh refused: the user is no longer allowed; the grant is revoked",
                extra={"fields": {"client_id": record.client_id, "login": record.user.login}},
            )
            raise InvalidGrant("user no longer allowed")
        narrowed = _narrowed(scope, record.scope, InvalidScope)
        audience = self._audience(resources, record.resources)
        return await self._issue(
            record.family_id,
            client.client_id,
            record.user,
            narrowed,
            record.resources,
            audience,
            refresh=True,
            refresh_scope=record.scope,
            proxy_hostname=record.proxy_hostname,
        )

    # ------------------------------------------------------------------ issuing
    def _audience(self, asked: Sequence[str], granted: tuple[str, ...]) -> tuple[str, ...]:
        """RFC 8707: the token's audience is what the token request names (each one
        authorized), else everything authorized, else the issuer itself."""
        if asked:
            extra = [r for r in asked if r not in granted]
            if extra:
                raise InvalidTarget("resource not authorized for this grant")
            return tuple(dict.fromkeys(asked))
        return granted or (self.policy.issuer,)

    async def _issue(
        self,
        family_id: str,
        client_id: str,
        user: GitHubUser,
        scope: tuple[str, ...],
        resources: tuple[str, ...],
        audience: tuple[str, ...],
        *,
        refresh: bool,
        refresh_scope: tuple[str, ...] | None = None,
        proxy_hostname: str | None = None,
    ) -> Issued:
        now = int(time.time())
        policy = self.policy
        # never starting with "-": an id an operator pastes after `edge oauth tokens show`
        # must not read as an option
        jti = "at_" + new_secret(16)
        expires_at = now + policy.access_lifetime
        claims: dict[str, Any] = {
            "iss": policy.issuer,
            "sub": user.sub,
            "aud": audience[0] if len(audience) == 1 else list(audience),
            "azp": client_id,
            "client_id": client_id,
            "scope": " ".join(scope),
            "iat": now,
            "nbf": now,
            "exp": expires_at,
            "jti": jti,
            "login": user.login,
        }
        if user.email is not None:
            claims["email"] = user.email
        token = self.signing.sign(claims)
        record = AccessTokenRecord(
            jti=jti,
            family_id=family_id,
            client_id=client_id,
            sub=user.sub,
            login=user.login,
            email=user.email,
            scope=scope,
            audience=audience,
            issued_at=now,
            expires_at=expires_at,
        )
        family_key = keys.oauth_family(family_id)
        # written only while the family is not revoked: a revocation (a reused code or
        # refresh token racing this request on another node) sets the tombstone and reads
        # the family in one step, so these tokens either are in what it revokes or are
        # never written
        tombstone = keys.oauth_family_revoked(family_id)
        refresh_token = new_secret() if refresh else None

        async def write(txn: Txn) -> None:
            if await txn.exists(tombstone):
                raise InvalidGrant("grant revoked")
            pipe = txn.writes()
            pipe.set(keys.oauth_token(jti), encode(record), ex=policy.access_lifetime)
            pipe.sadd(family_key, _family_member_jti(jti, expires_at))
            if refresh_token is not None:
                token_hash = digest(refresh_token)
                stored = RefreshRecord(
                    family_id=family_id,
                    client_id=client_id,
                    user=user,
                    scope=refresh_scope if refresh_scope is not None else scope,
                    resources=resources,
                    proxy_hostname=proxy_hostname,
                    issued_at=now,
                    expires_at=now + policy.refresh_lifetime,
                )
                refresh_key = keys.oauth_refresh(token_hash)
                pipe.hset(refresh_key, mapping={"doc": encode(stored), "uses": 0})
                pipe.expire(refresh_key, policy.refresh_lifetime)
                pipe.sadd(family_key, _family_member_refresh(token_hash))
            lifetime = (
                max(policy.refresh_lifetime, policy.access_lifetime)
                if refresh
                else (policy.access_lifetime)
            )
            pipe.expire(family_key, lifetime)
            for index in (keys.oauth_user_tokens(user.sub), keys.oauth_client_tokens(client_id)):
                pipe.sadd(index, family_id)
                pipe.expire(index, max(policy.refresh_lifetime, policy.access_lifetime))

        await transaction(self.redis, [tombstone], write)
        self.issued += 1
        return Issued(token, record, refresh_token)

    # ------------------------------------------------------------------ lookups
    async def access_record(self, jti: str) -> AccessTokenRecord | None:
        value = await self.redis.get(keys.oauth_token(jti))
        if value is None:
            return None
        try:
            return decode(value, AccessTokenRecord)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("oauth: damaged access token record", extra={"fields": {"jti": jti}})
            return None

    async def refresh_record(self, refresh_token: str) -> RefreshRecord | None:
        """A refresh token's record, used or not (None: unknown or damaged)."""
        record, _ = await self._refresh_state(refresh_token)
        return record

    async def live_refresh(self, refresh_token: str) -> RefreshRecord | None:
        """A refresh token that would work now: never used, not expired."""
        record, uses = await self._refresh_state(refresh_token)
        if record is None or uses != 0 or record.expires_at <= time.time():
            return None
        return record

    async def _refresh_state(self, refresh_token: str) -> tuple[RefreshRecord | None, int]:
        if not refresh_token or len(refresh_token) > 512:
            return None, 0
        key = keys.oauth_refresh(digest(refresh_token))
        doc, uses = await self.redis.hmget(key, ["doc", "uses"])
        if doc is None:
            return None, 0
        try:
            return decode(doc, RefreshRecord), int(uses or 0)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
            return None, 0


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


async def revoke_family(redis: aioredis.Redis, revoked: RevokedTokens, family_id: str) -> int:
    """Revoke every access and refresh token of a family; how many there were."""
    family_key = keys.oauth_family(family_id)
    # the tombstone and the read in one step: a token issue racing this one either
    # committed before (its tokens are among the members) or finds the tombstone
    pipe = redis.pipeline(transaction=True)
    pipe.set(keys.oauth_family_revoked(family_id), 1, ex=FAMILY_TOMBSTONE_TTL)
    pipe.smembers(family_key)
    _, members = await pipe.execute()
    count = 0
    pipe = redis.pipeline(transaction=False)
    revocations: list[tuple[str, int]] = []
    for raw in members:
        member = _text(raw)
        kind, _, rest = member.partition(":")
        if kind == "jti":
            jti, _, expiry = rest.rpartition(":")
            until = int(expiry) if expiry.isdigit() else int(time.time()) + 86400
            revocations.append((jti, until))
            pipe.delete(keys.oauth_token(jti))
        elif kind == "refresh":
            pipe.delete(keys.oauth_refresh(rest))
        count += 1
    pipe.delete(family_key)
    for jti, until in revocations:
        if until > time.time():
            await revoked.revoke(jti, until)
    await pipe.execute()
    return count


async def _revoke_index(redis: aioredis.Redis, revoked: RevokedTokens, index_key: str) -> int:
    families = await redis.smembers(index_key)
    count = 0
    for family in families:
        count += await revoke_family(redis, revoked, _text(family))
    await redis.delete(index_key)
    return count


async def revoke_client(redis: aioredis.Redis, revoked: RevokedTokens, client_id: str) -> int:
    """Revoke every token issued to ``client_id``."""
    return await _revoke_index(redis, revoked, keys.oauth_client_tokens(client_id))


async def revoke_user(redis: aioredis.Redis, revoked: RevokedTokens, sub: str) -> int:
    """Revoke every token issued for user ``sub`` (``github:{id}``)."""
    return await _revoke_index(redis, revoked, keys.oauth_user_tokens(sub))
