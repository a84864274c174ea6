"""The clients the authorization server knows: registered ones (RFC 7591 dynamic
registration, RFC 7592 management, the admin's) in ``oauth:client:{id}``, and those whose
``client_id`` is an https URL, read from their Client ID Metadata Document.

Secrets are returned once, at registration, and stored only as digests: the client
secret of a confidential client and the registration access token that manages the
registration. A registration lives ``client_lifetime`` seconds (0: for ever); its key
carries the same TTL, so an abandoned registration leaves nothing behind.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import redis.asyncio as aioredis

from edge.oauth.client_metadata import ClientMetadata, metadata_members, parse_metadata
from edge.oauth.errors import InvalidClient, InvalidClientMetadata, InvalidToken
from edge.oauth.records import (
    ClientRecord,
    ClientSource,
    decode,
    digest,
    encode,
    matches,
    new_secret,
)
from edge.oauth.redirects import redirect_allowed  # named here by the interface, too
from edge.store import keys
from edge.store.scan import as_text, scan_values

if TYPE_CHECKING:
    from edge.oauth.cimd import CimdFetcher

__all__ = [
    "CLIENT_ID_PREFIX",
    "MAX_CLIENT_ID_LENGTH",
    "ClientRegistry",
    "authenticate",
    "redirect_allowed",
]

log = logging.getLogger(__name__)

CLIENT_ID_PREFIX = "edge_"
# an id longer than any we issue (or a CIMD URL, which has its own limit) is not looked up
MAX_CLIENT_ID_LENGTH = 2000


def _new_client_id() -> str:
    return CLIENT_ID_PREFIX + secrets.token_urlsafe(16)  # 22 characters, 128 bits


def _registration_path(client_id: str) -> str:
    # the HTTP layer puts the issuer in front (RFC 7592 wants an absolute URI)
    return f"/register/{client_id}"


class ClientRegistry:
    """Registered clients in Redis, and CIMD clients through ``cimd`` (None: no CIMD)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        scopes_supported: tuple[str, ...],
        client_lifetime: int,
        cimd: CimdFetcher | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.scopes_supported = scopes_supported
        self.client_lifetime = client_lifetime
        self.cimd = cimd
        self.clock = clock

    # ------------------------------------------------------------------ lookups
    async def get(self, client_id: str) -> ClientRecord | None:
        """The client ``client_id`` names, or None (unknown, expired, damaged).

        An https URL is a Client ID Metadata Document: fetched (or cached) by the CIMD
        fetcher, which raises an OAuthError when the document cannot be used.
        """
        if client_id.startswith("https://"):
            return None if self.cimd is None else await self.cimd.get(client_id)
        if not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH:
            return None
        return await self._stored(client_id)

    async def _stored(self, client_id: str) -> ClientRecord | None:
        key = keys.oauth_client(client_id)
        data = await self.redis.get(key)
        if data is None:
            return None
        record = _decoded(key, data)
        if record is None or self._expired(record):
            return None
        return record

    def _expired(self, record: ClientRecord) -> bool:
        return record.expires_at is not None and record.expires_at <= self.clock()

    async def list_clients(self) -> list[ClientRecord]:
        """Every stored client (SCAN, never blocking Redis), by client_id; damaged
        documents are logged and left out, expired ones kept (their key's TTL removes them
        soon, and the admin may want to see them)."""
        found = await scan_values(self.redis, keys.OAUTH_CLIENT + "*")
        records = (_decoded(key, data) for key, data in sorted(found.items()))
        return [record for record in records if record is not None]

    async def delete_client(self, client_id: str) -> bool:
        """The admin's delete, without the registration token: did it exist?"""
        return bool(await self.redis.delete(keys.oauth_client(client_id)))

    # ------------------------------------------------------------------ RFC 7591
    async def register(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Register a client (RFC 7591 section 3): the section 3.2.1 response, with the
        secrets in clear this once and ``registration_client_uri`` as a path."""
        meta = parse_metadata(metadata, scopes_supported=self.scopes_supported)
        now = int(self.clock())
        secret = new_secret() if meta.token_endpoint_auth_method != "none" else None
        token = new_secret()
        expires_at = now + self.client_lifetime if self.client_lifetime else None
        for _ in range(3):  # 128 random bits never collide; SET NX makes sure of it
            record = _record(
                _new_client_id(),
                meta,
                issued_at=now,
                expires_at=expires_at,
                secret_hash=digest(secret) if secret is not None else None,
                token_hash=digest(token),
            )
            stored = await self.redis.set(
                keys.oauth_client(record.client_id),
                encode(record),
                nx=True,
                ex=self.client_lifetime or None,
            )
            if stored:
                break
        else:  # pragma: no cover (three collisions of 128-bit random ids)
            raise RuntimeError("could not allocate a client_id")
        log.info(
            "oauth client %s registered (%s, %s)",
            record.client_id,
            record.token_endpoint_auth_method,
            (record.client_name or "")[:80],
        )
        return _response(record, secret=secret, token=token)

    # ------------------------------------------------------------------ RFC 7592
    async def _managed(self, client_id: str, registration_token: str) -> ClientRecord:
        """The registration ``registration_token`` manages; RFC 7592 section 2: an
        unknown client and a wrong token are both 401, so ids cannot be probed."""
        record = None
        if not client_id.startswith("https://") and 0 < len(client_id) <= MAX_CLIENT_ID_LENGTH:
            record = await self._stored(client_id)
        stored_hash = record.registration_access_token_hash if record is not None else None
        # the digest is compared even for an unknown client: the same work either way
        if not matches(registration_token, stored_hash or digest(new_secret())) or record is None:
            raise InvalidToken(
                "registration access token refused",
                public_message="the registration access token is invalid or the client is unknown",
            )
        return record

    async def read(self, client_id: str, registration_token: str) -> dict[str, Any]:
        """RFC 7592 section 2.1: the registration as it stands (no secrets: only their
        digests are kept)."""
        return _response(await self._managed(client_id, registration_token))

    async def update(
        self, client_id: str, registration_token: str, metadata: dict[str, Any]
    ) -> dict[str, Any]:
        """RFC 7592 section 2.2: replace the metadata; members left out are dropped.

        ``client_id`` must be in the body and unchanged; a ``client_secret`` in it must be
        the current one. The secret is kept, unless the client moves to or from ``none``:
        a newly confidential client gets a secret (returned this once), a newly public one
        loses it. The registration token, issue time and expiry are kept.
        """
        record = await self._managed(client_id, registration_token)
        if metadata.get("client_id") != client_id:
            raise InvalidClientMetadata(
                "client_id missing or changed",
                public_message="client_id: must be present and equal to the client's",
                field="client_id",
            )
        sent_secret = metadata.get("client_secret")
        if sent_secret is not None and not (
            isinstance(sent_secret, str)
            and record.client_secret_hash is not None
            and matches(sent_secret, record.client_secret_hash)
        ):
            raise InvalidClientMetadata(
                "client_secret differs",
                public_message="client_secret: does not match the client's",
                field="client_secret",
            )
        meta = parse_metadata(metadata, scopes_supported=self.scopes_supported)
        secret: str | None = None
        secret_hash = record.client_secret_hash
        if meta.token_endpoint_auth_method == "none":
            secret_hash = None
        elif secret_hash is None:
            secret = new_secret()
            secret_hash = digest(secret)
        updated = _record(
            record.client_id,
            meta,
            issued_at=record.client_id_issued_at,
            expires_at=record.expires_at,
            secret_hash=secret_hash,
            token_hash=record.registration_access_token_hash,
            source=record.source,
        )
        # XX: a registration deleted meanwhile stays deleted; KEEPTTL: the lifetime runs on
        stored = await self.redis.set(
            keys.oauth_client(client_id), encode(updated), xx=True, keepttl=True
        )
        if not stored:
            raise InvalidToken(
                "deleted meanwhile",
                public_message="the registration access token is invalid or the client is unknown",
            )
        log.info("oauth client %s updated", client_id)
        return _response(updated, secret=secret)

    async def delete(self, client_id: str, registration_token: str) -> None:
        """RFC 7592 section 2.3: the client is gone (its tokens are the caller's business)."""
        await self._managed(client_id, registration_token)
        await self.redis.delete(keys.oauth_client(client_id))
        log.info("oauth client %s deleted by its registration token", client_id)


def _decoded(key: str, data: bytes | str) -> ClientRecord | None:
    try:
        return decode(data, ClientRecord)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.warning("damaged oauth client document %s ignored: %s", as_text(key), exc)
        return None


def _record(
    client_id: str,
    meta: ClientMetadata,
    *,
    issued_at: int,
    expires_at: int | None,
    secret_hash: str | None,
    token_hash: str | None,
    source: ClientSource = "dcr",
) -> ClientRecord:
    return ClientRecord(
        client_id=client_id,
        client_name=meta.client_name,
        redirect_uris=meta.redirect_uris,
        grant_types=meta.grant_types,
        response_types=meta.response_types,
        token_endpoint_auth_method=meta.token_endpoint_auth_method,
        client_secret_hash=secret_hash,
        # the secret is as good as the registration: it ends with it
        client_secret_expires_at=(expires_at or 0) if secret_hash is not None else 0,
        scope=meta.scope,
        client_uri=meta.client_uri,
        logo_uri=meta.logo_uri,
        contacts=meta.contacts,
        software_id=meta.software_id,
        software_version=meta.software_version,
        registration_access_token_hash=token_hash,
        client_id_issued_at=issued_at,
        expires_at=expires_at,
        source=source,
    )


def _response(
    record: ClientRecord, *, secret: str | None = None, token: str | None = None
) -> dict[str, Any]:
    """RFC 7591 section 3.2.1 / RFC 7592 section 3: the client information response."""
    answer: dict[str, Any] = {
        "client_id": record.client_id,
        "client_id_issued_at": record.client_id_issued_at,
    }
    if secret is not None:
        answer["client_secret"] = secret
    if record.confidential:
        answer["client_secret_expires_at"] = record.client_secret_expires_at
    if token is not None:
        answer["registration_access_token"] = token
    answer["registration_client_uri"] = _registration_path(record.client_id)
    answer.update(metadata_members(record))
    return answer


# ---------------------------------------------------------------------- authentication
def authenticate(
    client: ClientRecord, *, basic: tuple[str, str] | None, post_secret: str | None
) -> None:
    """Client authentication at the token, revocation and introspection endpoints (RFC
    6749 section 2.3.1): a confidential client by its registered method only, a public
    client (``none``) by its client_id alone, with no secret of any kind. Raises
    InvalidClient (``basic=True`` when HTTP Basic was tried, for the challenge)."""
    tried_basic = basic is not None
    if not client.confidential:
        if basic is not None or post_secret is not None:
            raise InvalidClient("public client sent a secret", basic=tried_basic)
        return
    method = client.token_endpoint_auth_method
    if method == "client_secret_basic":
        if basic is None or post_secret is not None:
            raise InvalidClient("client_secret_basic expected", basic=True)
        if basic[0] != client.client_id:
            raise InvalidClient("Basic names another client", basic=True)
        secret = basic[1]
    else:
        if post_secret is None or basic is not None:
            raise InvalidClient("client_secret_post expected", basic=tried_basic)
        secret = post_secret
    stored = client.client_secret_hash
    if stored is None or not matches(secret, stored):
        raise InvalidClient("wrong client secret", basic=tried_basic)
    expires = client.client_secret_expires_at
    if expires and expires <= time.time():
        raise InvalidClient("client secret expired", basic=tried_basic)
