"""Client ID Metadata Documents (MCP 2025-11-25, draft-ietf-oauth-client-id-metadata-document):
a ``client_id`` that is an https URL names a JSON document describing the client.

Fetching a URL a stranger chose is a server-side request forgery risk, so:

* the URL must be https, with a path other than ``/``, and no fragment, user info or dot
  segments (the draft's rules);
* the host is resolved here and refused if *any* of its addresses is not a public unicast
  one (loopback, private, link-local, multicast, reserved, unspecified, shared): a name
  with one public and one internal address must not be a coin toss. The vetted address
  is the one dialled (``outbound.fetch(connect_to=...)``), so a second DNS answer cannot
  move the connection inward. ``allow_private`` lifts the address check (tests only,
  ``OAUTH_CIMD_ALLOW_PRIVATE``);
* no redirect is followed, the body is capped (``max_bytes``, 16 KiB) and the whole call,
  resolution included, has one deadline (``timeout``, 5 s).

The document's ``client_id`` must equal the URL exactly; its metadata is checked like a
registration's (:mod:`edge.oauth.client_metadata`), except that the client is public:
``token_endpoint_auth_method`` is ``none`` (``private_key_jwt`` is not supported here) and
a document carrying a ``client_secret`` is refused.

Results are cached by URL for what the answer's caching headers allow (``Cache-Control``
``max-age`` less ``Age``, else ``Expires``; ``no-store``/``no-cache``: not kept), at most
``max_ttl`` (24 h), ``default_ttl`` (5 min) when the answer says nothing; failures for
``failure_ttl`` (30 s), so a hostile ``client_id`` costs one fetch per half minute, not one
per request. The cache is LRU-bounded. Concurrent gets of one URL share one fetch, which
runs as its own task: a waiter that gives up (its request was cancelled) does not cancel it
for the others, and the fetch never holds the event loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import logging
import socket
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from edge.oauth.client_metadata import parse_metadata
from edge.oauth.errors import InvalidClient, OAuthError, ServerError
from edge.oauth.outbound import FetchError, fetch
from edge.oauth.records import ClientRecord

__all__ = [
    "MAX_URL_LENGTH",
    "CimdError",
    "CimdFetcher",
    "cache_lifetime",
    "check_client_id_url",
    "public_address",
]

log = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000
_FETCH_FAILED = "client metadata document could not be fetched: "
_REFUSED = "client metadata document refused: "
_DOT_SEGMENTS = frozenset({".", "..", "%2e", "%2e%2e", ".%2e", "%2e."})

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class CimdError(InvalidClient):
    """A ``client_id`` URL whose document cannot be used. The public message says why in
    terms safe to show anyone (never a resolved address or a socket error)."""

    public_message = "client metadata document could not be used"


def _unfetchable(reason: str, detail: str = "") -> CimdError:
    return CimdError(detail or reason, public_message=_FETCH_FAILED + reason)


def _refused(reason: str, detail: str = "") -> CimdError:
    return CimdError(detail or reason, public_message=_REFUSED + reason)


def _shown(url: str) -> str:
    """A URL chosen by a stranger, as it may appear in a log line."""
    return repr(url[:200])


# ---------------------------------------------------------------------- the URL
def check_client_id_url(url: str) -> tuple[str, int]:
    """The host and port of ``url`` if it may be a CIMD ``client_id``; raises CimdError."""
    if len(url) > MAX_URL_LENGTH:
        raise _refused(f"the client_id URL is longer than {MAX_URL_LENGTH} characters")
    if not all(0x21 <= ord(c) <= 0x7E for c in url) or "\\" in url:
        raise _refused("the client_id URL must be printable ASCII without spaces")
    parts = urllib.parse.urlsplit(url)
    # literally: the registry tells a CIMD client_id by this prefix, and the document's
    # client_id must equal the URL character for character anyway
    if not url.startswith("https://"):
        raise _refused("the client_id URL must use https")
    if "#" in url:
        raise _refused("the client_id URL must not contain a fragment")
    if "@" in parts.netloc:
        raise _refused("the client_id URL must not contain user information")
    if not parts.hostname:
        raise _refused("the client_id URL must name a host")
    try:
        port = parts.port or 443
    except ValueError:
        raise _refused("the client_id URL's port is not a number in range") from None
    if parts.path in ("", "/"):
        raise _refused("the client_id URL must have a path")
    if any(segment.lower() in _DOT_SEGMENTS for segment in parts.path.split("/")):
        raise _refused("the client_id URL must not contain . or .. segments")
    return parts.hostname, port


def public_address(ip: IPAddress) -> bool:
    """Is ``ip`` a public unicast address (one a CIMD fetch may connect to)? IPv6 forms
    that embed an IPv4 address (mapped, 6to4, Teredo) are judged by the embedded one."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not public_address(embedded):
            return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_unspecified
    )


# ---------------------------------------------------------------------- caching headers
def _http_date(value: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def cache_lifetime(
    headers: Mapping[str, str], *, now: float, default_ttl: float, max_ttl: float
) -> float:
    """How long (seconds) an answer with ``headers`` may be reused (RFC 9111 section
    4.2.1, as a private cache: ``private`` does not concern us), within ``max_ttl``;
    ``default_ttl`` when the answer says nothing (section 4.2.2 lets a cache choose);
    0: not at all. ``now``: the wall clock, for ``Expires`` without a ``Date``."""
    directives: dict[str, str] = {}
    for part in headers.get("cache-control", "").split(","):
        name, _, value = part.strip().partition("=")
        if name:
            directives[name.strip().lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return 0.0
    age = 0.0
    try:
        age = max(0.0, float(int(headers.get("age", "0"))))
    except ValueError:
        pass
    if "max-age" in directives:
        try:
            lifetime = float(int(directives["max-age"]))
        except ValueError:
            return 0.0  # section 4.2.1: an invalid max-age makes the answer stale
        return min(max(0.0, lifetime - age), max_ttl)
    if "expires" in headers:
        expires = _http_date(headers["expires"])
        if expires is None:
            return 0.0  # section 5.3: an invalid Expires means "already expired"
        date = _http_date(headers.get("date", "")) or now
        return min(max(0.0, expires - date - age), max_ttl)
    return min(default_ttl, max_ttl)


# ---------------------------------------------------------------------- the fetcher
@dataclass(frozen=True, slots=True)
class _Entry:
    record: ClientRecord | None
    failure: tuple[str, str] | None  # (public message, detail) of a failed fetch
    until: float  # the fetcher's clock

    def result(self) -> ClientRecord:
        if self.record is not None:
            return self.record
        public, detail = self.failure or ("", "")
        # a new exception each time: raising a stored one would grow its traceback
        raise CimdError(detail, public_message=public)


class CimdFetcher:
    """Fetches, checks and caches Client ID Metadata Documents; see the module docstring."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout: float = 5.0,
        max_bytes: int = 16 * 1024,
        cache_size: int = 1000,
        default_ttl: float = 300.0,
        max_ttl: float = 86400.0,
        failure_ttl: float = 30.0,
        max_pending: int = 100,
        ca_file: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow_private = allow_private
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.cache_size = cache_size
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.failure_ttl = failure_ttl
        self.max_pending = max_pending
        self.ca_file = ca_file
        self.clock = clock
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._pending: dict[str, asyncio.Task[ClientRecord]] = {}
        self.fetches = 0  # documents asked for (requests sent or tried)

    async def get(self, url: str) -> ClientRecord:
        """The client ``url`` names; raises CimdError (InvalidClient) when its document
        cannot be used, ServerError when too many documents are being fetched at once."""
        check_client_id_url(url)
        entry = self._cache.get(url)
        if entry is not None:
            if entry.until > self.clock():
                self._cache.move_to_end(url)
                return entry.result()
            del self._cache[url]
        task = self._pending.get(url)
        if task is None:
            if len(self._pending) >= self.max_pending:
                raise ServerError(
                    "too many CIMD fetches",
                    public_message="too many client metadata documents are being fetched; "
                    "try again",
                )
            task = asyncio.create_task(self._load(url), name="cimd-fetch")
            self._pending[url] = task
            task.add_done_callback(functools.partial(self._settled, url))
        # shielded: one waiter's cancellation must not cancel the fetch the others await
        return await asyncio.shield(task)

    def _settled(self, url: str, task: asyncio.Task[ClientRecord]) -> None:
        if self._pending.get(url) is task:
            del self._pending[url]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have gone

    def _remember(self, url: str, entry: _Entry) -> None:
        self._cache[url] = entry
        self._cache.move_to_end(url)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _load(self, url: str) -> ClientRecord:
        try:
            record, ttl = await self._fetch(url)
        except CimdError as err:
            log.info("client metadata document %s unusable: %s", _shown(url), err)
            failure = (err.public_message, str(err))
            self._remember(url, _Entry(None, failure, self.clock() + self.failure_ttl))
            raise
        if ttl > 0:
            self._remember(url, _Entry(record, None, self.clock() + ttl))
        return record

    async def _fetch(self, url: str) -> tuple[ClientRecord, float]:
        host, port = check_client_id_url(url)
        self.fetches += 1
        try:
            async with asyncio.timeout(self.timeout):
                address = await self._vetted_address(host, port)
                answer = await fetch(
                    url,
                    headers=[("Accept", "application/json"), ("User-Agent", "edge-oauth")],
                    timeout=self.timeout,
                    max_bytes=self.max_bytes,
                    connect_to=(address, port),
                    ca_file=self.ca_file,
                )
        except TimeoutError:
            raise _unfetchable(f"no answer within {self.timeout:g} s") from None
        except FetchError as exc:
            reasons = {
                "timeout": f"no answer within {self.timeout:g} s",
                "too_large": f"larger than {self.max_bytes} bytes",
                "connect": "cannot connect to its host",
                "tls": "TLS failed (the certificate must be valid for its host)",
                "protocol": "malformed HTTP answer",
            }
            raise _unfetchable(reasons[exc.kind], exc.message) from None
        except ValueError as exc:
            raise _refused("the client_id URL cannot be fetched", str(exc)) from None
        if 300 <= answer.status < 400:
            raise _unfetchable(f"redirects are not followed (HTTP {answer.status})")
        if answer.status != 200:
            raise _unfetchable(f"HTTP {answer.status}")
        record = self._parse(url, answer.body)
        ttl = cache_lifetime(
            answer.headers, now=time.time(), default_ttl=self.default_ttl, max_ttl=self.max_ttl
        )
        return record, ttl

    async def _vetted_address(self, host: str, port: int) -> str:
        """The address to dial for ``host``: every address it resolves to must be public
        (unless ``allow_private``); the first is used."""
        try:
            literal: IPAddress | None = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            loop = asyncio.get_running_loop()
            try:
                infos = await loop.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
            except (socket.gaierror, UnicodeError) as exc:
                raise _unfetchable("its host name does not resolve", str(exc)) from None
            addresses = []
            for info in infos:
                text = str(info[4][0]).split("%", 1)[0]  # an IPv6 zone is not ours to use
                addresses.append(ipaddress.ip_address(text))
            if not addresses:
                raise _unfetchable("its host name does not resolve")
        if not self.allow_private:
            inward = [ip for ip in addresses if not public_address(ip)]
            if inward:
                raise _refused(
                    "its host resolves to a private, loopback or otherwise non-public address",
                    f"{host} -> {inward[0]}",
                )
        return str(addresses[0])

    def _parse(self, url: str, body: bytes) -> ClientRecord:
        try:
            document: Any = msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError):  # nested too deep: no JSON we read
            raise _refused("the document is not JSON") from None
        if not isinstance(document, dict):
            raise _refused("the document is not a JSON object")
        if document.get("client_id") != url:
            raise _refused("its client_id does not equal the URL it was fetched from")
        if "client_secret" in document or "client_secret_expires_at" in document:
            raise _refused("a metadata document must not carry a client secret")
        if document.get("token_endpoint_auth_method") == "private_key_jwt":
            raise _refused("private_key_jwt is not supported; use token_endpoint_auth_method none")
        try:
            # the words of "scope" are not checked: a document serves many servers, and
            # /authorize checks what is asked against this server's scopes anyway
            meta = parse_metadata(
                document, scopes_supported=None, auth_methods=("none",), default_auth_method="none"
            )
        except OAuthError as err:
            raise _refused(err.public_message) from None
        return ClientRecord(
            client_id=url,
            client_name=meta.client_name,
            redirect_uris=meta.redirect_uris,
            grant_types=meta.grant_types,
            response_types=meta.response_types,
            token_endpoint_auth_method="none",
            scope=meta.scope,
            client_uri=meta.client_uri,
            logo_uri=meta.logo_uri,
            contacts=meta.contacts,
            software_id=meta.software_id,
            software_version=meta.software_version,
            source="cimd",
        )

    def health(self) -> dict[str, Any]:
        return {
            "cached": len(self._cache),
            "pending": len(self._pending),
            "fetches": self.fetches,
        }
