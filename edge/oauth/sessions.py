"""The browser's side of a login: GitHub round trips, signed-in sessions, consents.

* A login sent to GitHub is ``oauth:state:{state}`` (TTL ``OAUTH_SESSION_TIMEOUT``), taken
  with GETDEL by ``/callback``: a state works once, on whichever node GitHub sends the
  browser back to.
* A signed-in browser holds a random cookie; Redis keeps only its SHA-256
  (``oauth:session:{sha256}``, TTL ``OAUTH_BROWSER_SESSION_LIFETIME``).
* An authorization waiting for the user's approval is ``oauth:request:{id}`` with the
  digest of the form's CSRF token and of the session it was shown to; approving takes it
  with GETDEL.
* An approval is remembered per user and client (``oauth:consent:{sub}:{client_id}``, the
  scopes approved): the MCP specification's confused-deputy rule asks for it the first time
  a client is used through the edge's one GitHub application.
"""

from __future__ import annotations

import logging
import time

import msgspec
import redis.asyncio as aioredis

from edge.oauth.records import (
    AuthorizationRequest,
    BrowserSession,
    ConsentRequest,
    GitHubUser,
    LoginState,
    decode,
    digest,
    encode,
    new_secret,
)
from edge.store import keys

__all__ = ["CONSENT_LIFETIME", "Sessions"]

log = logging.getLogger("edge.oauth")

CONSENT_LIFETIME = 365 * 86400  # an approval is asked again after a year without use


class Sessions:
    def __init__(self, redis: aioredis.Redis, *, login_timeout: int, session_lifetime: int) -> None:
        self.redis = redis
        self.login_timeout = login_timeout
        self.session_lifetime = session_lifetime

    # ------------------------------------------------------------------ GitHub round trip
    async def start_login(self, request: AuthorizationRequest, browser_hash: str) -> str:
        """Park ``request`` for GitHub's answer; ``browser_hash``: the digest of the
        login cookie of the browser that started it (``/callback`` checks it)."""
        state = new_secret()
        doc = encode(LoginState(request=request, browser_hash=browser_hash))
        await self.redis.set(keys.oauth_state(state), doc, ex=self.login_timeout)
        return state

    async def take_login(self, state: str) -> LoginState | None:
        if not state or len(state) > 128:
            return None
        value = await self.redis.getdel(keys.oauth_state(state))
        if value is None:
            return None
        try:
            return decode(value, LoginState)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("oauth: damaged login state record")
            return None

    # ------------------------------------------------------------------ browser sessions
    async def create(self, user: GitHubUser, user_agent: str | None) -> str:
        """A new signed-in session; the cookie value (shown once, stored hashed)."""
        cookie = new_secret()
        now = int(time.time())
        session = BrowserSession(
            user=user,
            created_at=now,
            expires_at=now + self.session_lifetime,
            user_agent=user_agent[:200] if user_agent else None,
        )
        key = keys.oauth_session(digest(cookie))
        await self.redis.set(key, encode(session), ex=self.session_lifetime)
        return cookie

    async def get(self, cookie: str | None) -> tuple[str, BrowserSession] | None:
        """The session of a cookie value, with its digest (its id); None when unknown."""
        if not cookie or len(cookie) > 128:
            return None
        session_hash = digest(cookie)
        value = await self.redis.get(keys.oauth_session(session_hash))
        if value is None:
            return None
        try:
            session = decode(value, BrowserSession)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("oauth: damaged browser session record")
            return None
        if session.expires_at <= time.time():
            return None
        return session_hash, session

    async def end(self, cookie: str) -> None:
        await self.redis.delete(keys.oauth_session(digest(cookie)))

    # ------------------------------------------------------------------ consent
    async def ask_consent(
        self, request: AuthorizationRequest, user: GitHubUser, session_hash: str
    ) -> tuple[str, str]:
        """Park ``request`` for the consent page: (request id, CSRF token)."""
        request_id = new_secret(16)
        csrf = new_secret()
        doc = ConsentRequest(
            request=request, user=user, csrf_hash=digest(csrf), session_hash=session_hash
        )
        await self.redis.set(keys.oauth_request(request_id), encode(doc), ex=self.login_timeout)
        return request_id, csrf

    async def peek_consent(self, request_id: str) -> ConsentRequest | None:
        """The waiting request, left in place (a forged form must not spend it)."""
        return await self._consent(request_id, take=False)

    async def take_consent(self, request_id: str) -> ConsentRequest | None:
        """The waiting request, taken (GETDEL): one approval per request."""
        return await self._consent(request_id, take=True)

    async def _consent(self, request_id: str, *, take: bool) -> ConsentRequest | None:
        if not request_id or len(request_id) > 64:
            return None
        key = keys.oauth_request(request_id)
        value = await (self.redis.getdel(key) if take else self.redis.get(key))
        if value is None:
            return None
        try:
            return decode(value, ConsentRequest)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("oauth: damaged consent request record")
            return None

    async def consented(self, sub: str, client_id: str, scope: tuple[str, ...]) -> bool:
        """Has ``sub`` approved ``client_id`` for every scope in ``scope``?"""
        value = await self.redis.get(keys.oauth_consent(sub, client_id))
        if value is None:
            return False
        try:
            approved = msgspec.json.decode(value, type=list[str])
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False
        return set(scope) <= set(approved)

    async def remember_consent(self, sub: str, client_id: str, scope: tuple[str, ...]) -> None:
        key = keys.oauth_consent(sub, client_id)
        value = await self.redis.get(key)
        approved: set[str] = set()
        if value is not None:
            try:
                approved = set(msgspec.json.decode(value, type=list[str]))
            except (msgspec.ValidationError, msgspec.DecodeError):
                approved = set()
        approved.update(scope)
        doc = msgspec.json.encode(sorted(approved))
        await self.redis.set(key, doc, ex=CONSENT_LIFETIME)
