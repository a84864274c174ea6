"""The authorization server of one worker: its parts, wired from the static settings.

Built by the worker when an issuer is configured (``AUTH_HOSTNAME``, ``BASE_DOMAIN`` or
``OAUTH_ISSUER``). Holds the shared Redis client, the signing keys and revocations every
request reads from memory, and the stores the endpoints (:mod:`edge.handlers.oauth`) use.
Its background jobs (key refresh, revocation follower) are services the worker runs.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from edge.config.addresses import normalize_hostname
from edge.config.schema import ProxyConfig
from edge.oauth.allowlist import login_allowed
from edge.oauth.cimd import CimdFetcher
from edge.oauth.clients import ClientRegistry
from edge.oauth.github import GitHubLogin
from edge.oauth.grants import GrantPolicy, Grants
from edge.oauth.records import ClientRecord, RefreshRecord
from edge.oauth.revocation import RevokedTokens
from edge.oauth.sessions import Sessions
from edge.oauth.signing import SigningKeys
from edge.settings import Settings

__all__ = [
    "FIRST_PARTY_CALLBACK",
    "FIRST_PARTY_CLIENT_ID",
    "AuthorizationServer",
    "OAuthConfig",
]

# the edge as the client of its own server, for proxies in redirect mode: an id no
# registration can produce (theirs start with edge_, or are https URLs)
FIRST_PARTY_CLIENT_ID = "edge"
FIRST_PARTY_CALLBACK = "/_edge/auth/callback"


ProxyLookup = Callable[[str], ProxyConfig | None]


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    """What the endpoints need of the static settings."""

    issuer: str
    auth_hostname: str
    scopes: tuple[str, ...]
    allowed_users: tuple[str, ...]
    session_cookie: str
    session_lifetime: int
    access_lifetime: int

    @property
    def callback_url(self) -> str:
        return f"{self.issuer}/callback"

    @property
    def loopback_issuer(self) -> bool:
        """An http:// issuer (tests, local development): loopback only, by the settings."""
        return urllib.parse.urlsplit(self.issuer).scheme == "http"


class AuthorizationServer:
    def __init__(self, settings: Settings, redis: aioredis.Redis, find_proxy: ProxyLookup) -> None:
        issuer = settings.oauth_issuer
        host = settings.auth_hostname or urllib.parse.urlsplit(issuer or "").hostname
        if issuer is None or host is None:
            raise ValueError("no OAuth issuer: set AUTH_HOSTNAME, BASE_DOMAIN or OAUTH_ISSUER")
        self.config = OAuthConfig(
            issuer=issuer,
            auth_hostname=host,
            scopes=settings.oauth_scopes,
            allowed_users=settings.oauth_allowed_github_users,
            session_cookie=settings.oauth_session_cookie,
            session_lifetime=settings.oauth_browser_session_lifetime,
            access_lifetime=settings.oauth_access_token_lifetime,
        )
        self.redis = redis
        self.find_proxy = find_proxy
        self.signing = SigningKeys(
            redis,
            issuer=issuer,
            env_key_b64=settings.oauth_jwt_private_key_b64,
            access_token_lifetime=settings.oauth_access_token_lifetime,
        )
        self.revoked = RevokedTokens(redis)
        self.grants = Grants(
            redis,
            self.signing,
            self.revoked,
            GrantPolicy(
                issuer=issuer,
                access_lifetime=settings.oauth_access_token_lifetime,
                refresh_lifetime=settings.oauth_refresh_token_lifetime,
                code_lifetime=settings.oauth_code_lifetime,
            ),
        )
        self.sessions = Sessions(
            redis,
            login_timeout=settings.oauth_session_timeout,
            session_lifetime=settings.oauth_browser_session_lifetime,
        )
        self.clients = ClientRegistry(
            redis,
            scopes_supported=settings.oauth_scopes,
            client_lifetime=settings.oauth_client_lifetime,
            cimd=CimdFetcher(allow_private=settings.oauth_cimd_allow_private),
        )
        self.github: GitHubLogin | None = None
        if settings.github_client_id and settings.github_client_secret:
            self.github = GitHubLogin(
                client_id=settings.github_client_id,
                client_secret=settings.github_client_secret,
                authorize_url=settings.github_authorize_url,
                token_url=settings.github_token_url,
                api_url=settings.github_api_url,
            )

    def proxies_for(
        self, proxy_hostname: str | None, resources: Sequence[str]
    ) -> list[ProxyConfig]:
        """The proxies whose allowlists apply to a grant: the one named and those whose
        resource URIs were asked for (every one: the token's audience is the resources,
        so naming an open proxy must not let a user past the allowlist of the resource's)."""
        found: list[ProxyConfig] = []
        names = [proxy_hostname] if proxy_hostname else []
        names += [urllib.parse.urlsplit(r).hostname or "" for r in resources]
        for name in names:
            proxy = self.find_proxy(name) if name else None
            if proxy is not None and proxy not in found:
                found.append(proxy)
        return found

    def protects(self, proxy: ProxyConfig) -> bool:
        """Whether this server's tokens guard ``proxy``: ``auth_enabled`` with
        ``auth_proxy`` null or naming the issuer's host (as a host, ``host:port`` or URL)."""
        if not proxy.auth_enabled:
            return False
        if proxy.auth_proxy is None:
            return True
        value = proxy.auth_proxy.strip().lower()
        host = urllib.parse.urlsplit(value if "://" in value else "//" + value).hostname
        issuer = urllib.parse.urlsplit(self.config.issuer).hostname
        return host in (self.config.auth_hostname, issuer)

    def first_party(self, redirect_uri: str) -> ClientRecord | None:
        """The edge itself as the client of a proxy in ``redirect`` mode: its browser
        sign-in comes back to ``{scheme}://{host}/_edge/auth/callback`` on that proxy.
        Never stored; only a protected proxy's own callback URL makes one."""
        try:
            parts = urllib.parse.urlsplit(redirect_uri)
            port = parts.port
            # a DNS name and a port, nothing a browser could read another way (a
            # backslash sends the code to the name before it, userinfo to the one after "@")
            normalize_hostname(parts.hostname or "", allow_wildcard=False)
        except ValueError:
            return None
        schemes = ("https", "http") if self.config.loopback_issuer else ("https",)
        if (
            parts.scheme not in schemes
            or parts.path != FIRST_PARTY_CALLBACK
            or parts.query
            or parts.fragment
            or not parts.hostname
            or parts.netloc != (parts.hostname if port is None else f"{parts.hostname}:{port}")
        ):
            return None
        proxy = self.find_proxy(parts.hostname)
        if proxy is None or proxy.auth_mode != "redirect" or not self.protects(proxy):
            return None
        return ClientRecord(
            client_id=FIRST_PARTY_CLIENT_ID,
            client_name=parts.hostname,
            redirect_uris=(redirect_uri,),
            grant_types=("authorization_code",),
            source="edge",
        )

    def allowed(self, login: str, proxies: Sequence[ProxyConfig]) -> bool:
        """May ``login`` sign in for these proxies (none: the global allowlist)?"""
        everyone = self.config.allowed_users
        if not proxies:
            return login_allowed(login, None, everyone)
        return all(login_allowed(login, p.auth_required_users, everyone) for p in proxies)

    def still_allowed(self, record: RefreshRecord) -> bool:
        """Re-checked at every refresh: a user taken off an allowlist loses the grant
        at the next refresh, not when the refresh token would have expired."""
        proxies = self.proxies_for(record.proxy_hostname, record.resources)
        return self.allowed(record.user.login, proxies)

    async def start(self) -> None:
        """Load (or make) the signing keys, and read the revocations, before the first
        token is asked for or checked (the follower keeps both fresh afterwards)."""
        await self.signing.load()
        await self.revoked.resync()

    def health(self) -> dict[str, object]:
        return {
            "issuer": self.config.issuer,
            "github": self.github is not None,
            "keys": self.signing.health(),
            "revocations": self.revoked.health(),
            "tokens_issued": self.grants.issued,
        }
