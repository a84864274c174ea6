"""ForwardAuth with the edge's own authorization server, checked in process, and the
protected resource metadata (RFC 9728) of the proxies it guards.

:class:`OwnTokenAuth` is an ``ACCESS`` middleware factory (``authenticates``): it takes
charge of every proxy with ``auth_enabled`` whose ``auth_proxy`` is null or names the
edge's own issuer host. A proxy naming another ForwardAuth service is not taken, so the
pipeline keeps it failing closed (503) until external ForwardAuth is served.

Per request, from memory only (no Redis, no HTTP): the bearer token (the
``Authorization`` header, or ``access_token`` in the query when ``resource_bearer_methods``
lists ``query``) is verified by :class:`~edge.oauth.signing.SigningKeys` (RS256, ``typ``,
``kid``, ``iss``, lifetime), its ``jti`` against the revocations mirrored in memory, its
``aud`` against the proxy's resource URI (or ``auth_allowed_audiences``), its scopes against
``auth_allowed_scopes`` (else ``resource_scopes``), then the allowlists. Outcomes follow
``auth_mode``: ``forward`` (and ``redirect`` for now) answer ``401`` with a challenge
naming the metadata document, ``passthrough`` forwards without identity; a token lacking a
scope is ``403 insufficient_scope`` (step-up), a user outside the allowlists ``403``.

Identity headers (``{auth_header_prefix}User-Id`` ...) are set when ``auth_pass_headers``,
after every client-sent header that could pass for one (any case, ``_`` or ``-``) is
removed, on every request to a guarded proxy.

:class:`ResourceMetadata` is a ``SITE`` middleware answering
``/.well-known/oauth-protected-resource`` (and its path-suffixed form) on those proxies,
without a token, with CORS.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

import msgspec

from edge.config.schema import ProxyConfig
from edge.h11compat import FullItems, fields_of, full_items
from edge.handlers.browser_login import (
    BrowserLogin,
    addressed_host,
    login_cookie,
    session_cookie,
    wants_page,
)
from edge.handlers.oauth.forms import cookie_values, header_value, parse
from edge.http1.exchange import Exchange
from edge.oauth.errors import OAuthError
from edge.oauth.server import AuthorizationServer
from edge.routing.resolution import Middleware, Resolution, Scheme, Step
from edge.upstream.subrequest import Answer, Outcome, Subrequests

__all__ = [
    "PRM_PATH",
    "OwnTokenAuth",
    "ResourceMetadata",
    "admits",
    "resource_uri",
]

PRM_PATH = "/.well-known/oauth-protected-resource"
BACKEND_METADATA_TIMEOUT = 2.0  # seconds the upstream has to serve its own document
BACKEND_METADATA_MAX = 64 * 1024
# the identity fields, after auth_header_prefix, in the order their values are set
IDENTITY = ("User-Id", "User-Name", "Email", "Scopes", "Client-Id")
_json = msgspec.json.Encoder()
_QUOTED = re.compile(r'["\\\x00-\x1f\x7f]')


def resource_uri(ex: Exchange, proxy: ProxyConfig) -> str:
    """``https://`` + the host the client addressed (its port unless 443) + the
    ``resource_endpoint`` path: the ``resource`` the metadata advertises, and the audience a
    token must carry."""
    endpoint = proxy.resource_endpoint or ""
    if "://" in endpoint:
        return endpoint  # given whole by the operator
    return f"https://{addressed_host(ex, 'https')}{endpoint}"


def metadata_url(resource: str) -> str:
    """Where the metadata of ``resource`` is (RFC 9728 section 3.1): the well-known path
    inserted between the resource URI's origin and its path."""
    parts = urllib.parse.urlsplit(resource)
    path = parts.path if parts.path != "/" else ""
    return f"{parts.scheme}://{parts.netloc}{PRM_PATH}{path}"


def _quoted(text: str) -> str:
    return _QUOTED.sub("?", text)


def normalised(name: bytes) -> bytes:
    """A field name as compared for identity look-alikes: any case, ``_`` as ``-``."""
    return name.lower().replace(b"_", b"-")


def _without_cookies(value: bytes, names: tuple[str, ...]) -> bytes:
    """A Cookie field without the cookies ``names`` (the others stay, in order)."""
    prefixes = tuple(name.encode("latin-1") + b"=" for name in names)
    parts = [p.strip() for p in value.split(b";")]
    if not any(p.startswith(prefixes) for p in parts):
        return value
    return b"; ".join(p for p in parts if p and not p.startswith(prefixes))


def without_tokens(value: bytes, names: frozenset[bytes]) -> bytes:
    """A Connection field without the tokens in ``names``: a client must not have the
    edge's own identity fields dropped as hop-by-hop on the way out (Traefik's
    CVE-2024-45410)."""
    tokens = [t.strip() for t in value.split(b",")]
    if not any(normalised(t) in names for t in tokens):
        return value
    return b", ".join(t for t in tokens if t and normalised(t) not in names)


def excluded(path: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``path`` is under one of ``auth_excluded_paths``, segment by segment,
    as the upstream will read it: percent-escapes decoded, and a path with a dot
    segment or a backslash (which an upstream may resolve to somewhere else) never is."""
    decoded = urllib.parse.unquote(path)
    if "\\" in decoded or any(seg in (".", "..") for seg in decoded.split("/")):
        return False
    return any(
        decoded == p or decoded.startswith(p if p.endswith("/") else p + "/") for p in prefixes
    )


def admits(server: AuthorizationServer, proxy: ProxyConfig, claims: dict[str, Any]) -> bool:
    """Whether ``proxy``'s allowlists let the token's user in: ``auth_required_users``
    (null: the server's global list), ``auth_required_emails`` (exact or ``*@domain``),
    ``auth_required_groups``."""
    login = str(claims.get("login", ""))
    if not server.allowed(login, [proxy]):
        return False
    emails = proxy.auth_required_emails
    if emails is not None:
        email = str(claims.get("email") or "").lower()
        domain = email.rpartition("@")[2]
        if not email or not any(
            e.lower() == email or (e.startswith("*@") and e[2:].lower() == domain) for e in emails
        ):
            return False
    # groups: tokens of this server carry none (GitHub teams are not read yet), so a
    # proxy that requires groups lets nobody in rather than everybody
    return not proxy.auth_required_groups


class OwnTokenAuth:
    """The factory; one guard per protected proxy, made when the table is compiled."""

    def __init__(self, server: AuthorizationServer) -> None:
        self.server = server
        # browsers signing in to proxies in redirect mode (its callback is a SITE step)
        self.login = BrowserLogin(server, resource_uri)

    def factory(self, proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
        if not self.server.protects(proxy):
            return None
        return ProxyGuard(self.server, proxy, self.login)


class ProxyGuard:
    """The access check of one protected proxy (shared by its requests: no state)."""

    __slots__ = (
        "excluded",
        "login",
        "names",
        "proxy",
        "required",
        "server",
        "strip",
    )

    def __init__(
        self,
        server: AuthorizationServer,
        proxy: ProxyConfig,
        login: BrowserLogin | None,
    ) -> None:
        self.server = server
        self.proxy = proxy
        self.login = login
        self.excluded = tuple(proxy.auth_excluded_paths or ())
        self.required = tuple(proxy.auth_allowed_scopes or proxy.resource_scopes or ())
        fields = [(proxy.auth_header_prefix + name).encode("latin-1") for name in IDENTITY]
        self.names = tuple((name, name.lower()) for name in fields)
        # client-sent fields that could pass for identity are never forwarded
        self.strip = frozenset(normalised(name) for name in fields)

    def __call__(self, ex: Exchange, res: Resolution, proceed: Step, /) -> None:
        original = ex.headers
        full = full_items(original)
        token, sent, source = self._token(ex, full)
        out = self._cleaned(ex, full, source)
        ex.headers = fields_of(out)
        if self.excluded and excluded(ex.path, self.excluded):
            proceed(ex, res)
            return
        if token is None:
            self._unauthenticated(ex, res, proceed, original, sent=sent)
            return
        try:
            claims = self.server.signing.verify(token)
        except OAuthError:
            self._unauthenticated(ex, res, proceed, original, sent=True)
            return
        jti = claims.get("jti")
        if not isinstance(jti, str) or self.server.revoked.is_revoked(jti):
            self._unauthenticated(ex, res, proceed, original, sent=True)
            return
        audiences = self.proxy.auth_allowed_audiences or (resource_uri(ex, self.proxy),)
        aud = claims.get("aud")
        named = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(a in named for a in audiences):
            self._unauthenticated(ex, res, proceed, original, sent=True)
            return
        # the logs' user and OAuth client (a 403 below is logged with them)
        ex.user = str(claims.get("login") or claims.get("sub") or "")[:128]
        ex.client_id = str(claims.get("client_id") or "")[:128]
        scope = str(claims.get("scope", ""))
        if self.required:
            scopes = scope.split()
            if any(s not in scopes for s in self.required):
                ex.auth = "403"
                self._challenge(ex, 403, "insufficient_scope")
                return
        if not admits(self.server, self.proxy, claims):
            ex.auth = "403"
            ex.respond(
                403,
                b'{"error":"access_denied","error_description":"not allowed on this host"}\n',
                b"application/json",
                [(b"cache-control", b"no-store")],
            )
            return
        if self.proxy.auth_pass_headers:
            values = (
                claims.get("sub", ""),
                claims.get("login", ""),
                claims.get("email") or "",
                " ".join(scope.split()),
                claims.get("client_id", ""),
            )
            for (raw, lower), value in zip(self.names, values, strict=True):
                out.append((raw, lower, header_value(value)))
        # what a revocation or an allowlist change must cut while the exchange lives
        ex.access = (claims, self.proxy)
        ex.auth = "allowed"
        proceed(ex, res)

    def _token(self, ex: Exchange, full: FullItems) -> tuple[str | None, bool, str]:
        """The token, whether any credential was sent at all, and where it was found
        (``header``, ``cookie``, ``query``): a bearer ``Authorization`` first, then the
        session cookie ``auth_cookie_name`` a browser sign-in set, then the query."""
        methods = self.proxy.resource_bearer_methods
        authorization: bytes | None = None
        cookies: list[bytes] = []
        for _, name, value in full:
            if name == b"authorization":
                if authorization is not None:
                    return None, True, ""  # which one would the upstream read? neither
                authorization = value
            elif name == b"cookie":
                cookies.append(value)
        sent = False
        if authorization is not None and ("header" in methods or not methods):
            if authorization[:7].lower() == b"bearer ":
                return authorization[7:].strip().decode("latin-1"), True, "header"
            sent = True  # another scheme (Basic for the upstream, say)
        if cookies:
            sessions = cookie_values(cookies, session_cookie(self.proxy))
            if len(sessions) > 1:
                # one set by a sibling subdomain beside ours (cookie tossing): neither
                return None, True, ""
            if sessions and sessions[0]:
                return sessions[0], True, "cookie"
        query = ex.target.partition(b"?")[2]
        if query and b"access_token=" in query:
            if "query" not in methods:
                return None, True, ""  # refused: a token in a URL ends up in logs and caches
            try:
                token = parse(query.decode("latin-1")).get("access_token")
            except OAuthError:
                return None, True, ""
            return token, True, "query"
        return None, sent, ""

    def _cleaned(self, ex: Exchange, full: FullItems, source: str) -> FullItems:
        """The request's fields for the upstream: none that could pass for identity (any
        case, ``_`` or ``-``, nor named in Connection so as to strip the edge's own), never
        the sign-in cookie, the session cookie unless ``auth_strip_authorization`` is
        false, ``Authorization`` when that is true (null: when the session cookie was the
        credential)."""
        strip = self.proxy.auth_strip_authorization
        drop_authorization = source == "cookie" if strip is None else strip
        names = self.strip
        out: FullItems = []
        for item in full:
            lower = item[1]
            if b"_" in lower:
                lower = lower.replace(b"_", b"-")
            if lower in names or (drop_authorization and lower == b"authorization"):
                continue
            if lower == b"cookie" or lower == b"connection":
                if lower == b"cookie":
                    cookies: tuple[str, ...] = (login_cookie(self.proxy),)
                    if strip is not False:
                        cookies = (session_cookie(self.proxy), *cookies)
                    value = _without_cookies(item[2], cookies)
                else:
                    value = without_tokens(item[2], names)
                if not value:
                    continue
                if value is not item[2]:
                    item = (item[0], item[1], value)
            out.append(item)
        return out

    def _unauthenticated(
        self,
        ex: Exchange,
        res: Resolution,
        proceed: Step,
        original: Sequence[tuple[bytes, bytes]],
        *,
        sent: bool,
    ) -> None:
        mode = self.proxy.auth_mode
        if mode == "passthrough":
            ex.auth = "allowed"
            proceed(ex, res)
            return
        ex.auth = "401"
        if mode == "redirect" and self.login is not None and wants_page(ex):
            ex.headers = original  # the sign-in reads its own cookie; nothing goes upstream
            self.login.start(ex, self.proxy, self.required)  # a browser: sign in first
            return
        self._challenge(ex, 401, "invalid_token" if sent else None)

    def _challenge(self, ex: Exchange, status: int, error: str | None) -> None:
        document = metadata_url(resource_uri(ex, self.proxy))
        params = [
            f'realm="{_quoted(self.server.config.issuer)}"',
            f'resource_metadata="{_quoted(document)}"',
        ]
        if error is not None:
            params.append(f'error="{error}"')
        if self.required:
            params.append(f'scope="{_quoted(" ".join(self.required))}"')
        challenge = ("Bearer " + ", ".join(params)).encode("latin-1")
        body = b'{"error":"' + (error or "unauthorized").encode() + b'"}\n'
        ex.respond(
            status,
            body,
            b"application/json",
            [(b"www-authenticate", challenge), (b"cache-control", b"no-store")],
        )


class ResourceMetadata:
    """``SITE`` middleware: the RFC 9728 document of a protected proxy."""

    def __init__(
        self,
        server: AuthorizationServer,
        subrequests: Subrequests | None = None,
    ) -> None:
        self.server = server
        self.subrequests = subrequests  # None: the upstream's own document is never asked

    def factory(self, proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
        if self.server.protects(proxy):
            return self.answer
        return None

    def answer(self, ex: Exchange, res: Resolution, proceed: Step, /) -> None:
        path = ex.path
        if not (path == PRM_PATH or path.startswith(PRM_PATH + "/")):
            proceed(ex, res)
            return
        proxy = res.proxy
        if ex.method == b"OPTIONS":
            ex.respond(204, b"", headers=_CORS_PREFLIGHT)
            return
        if ex.method not in (b"GET", b"HEAD"):
            ex.respond(405, b"", headers=[(b"allow", b"GET, HEAD, OPTIONS"), *_CORS])
            return
        target = res.target
        if proxy.resource_override_backend or self.subrequests is None or target is None:
            self._own(ex, proxy)
            return

        # resource_override_backend false: an upstream that serves its own document
        # (a JSON object naming its resource) is the authority; else the edge answers
        def done(outcome: Outcome) -> None:
            if ex.finished:
                return
            if isinstance(outcome, Answer) and _is_metadata(outcome):
                ex.respond(
                    200,
                    outcome.body,
                    b"application/json",
                    [(b"cache-control", b"public, max-age=300"), *_CORS],
                )
            else:
                self._own(ex, proxy)

        canonical = metadata_url(resource_uri(ex, proxy))
        canonical_path = urllib.parse.urlsplit(canonical).path
        if path not in (PRM_PATH, canonical_path):
            # only the document's own paths are asked of the upstream, as they are (no
            # query, no dot segments): this runs before any access check
            self._own(ex, proxy)
            return
        wire = path.encode("latin-1")
        if target.base_path:
            wire = target.base_path.encode("ascii") + wire
        headers = [(b"Accept", b"application/json")]
        if proxy.preserve_host_header and ex.host_header:
            headers.append((b"Host", ex.host_header))
        self.subrequests.start(
            target,
            b"GET",
            wire,
            headers,
            time_limit=BACKEND_METADATA_TIMEOUT,
            max_body=BACKEND_METADATA_MAX,
            done=done,
        )

    def _own(self, ex: Exchange, proxy: ProxyConfig) -> None:
        resource = resource_uri(ex, proxy)
        config = self.server.config
        doc: dict[str, Any] = {
            "resource": resource,
            "authorization_servers": [config.issuer],
            "jwks_uri": f"{config.issuer}/jwks",
            "scopes_supported": list(proxy.auth_allowed_scopes or proxy.resource_scopes)
            or list(config.scopes),
            "bearer_methods_supported": [m for m in proxy.resource_bearer_methods if m != "body"]
            or ["header"],
            "resource_documentation": resource.split("/", 3)[0]
            + "//"
            + resource.split("/", 3)[2]
            + proxy.resource_documentation_suffix,
        }
        if proxy.resource_server_info:
            doc["resource_server_info"] = proxy.resource_server_info
        for key, value in proxy.resource_custom_metadata.items():
            doc.setdefault(key, value)
        ex.respond(
            200,
            _json.encode(doc) + b"\n",
            b"application/json",
            [(b"cache-control", b"public, max-age=300"), *_CORS],
        )


def _is_metadata(answer: Answer) -> bool:
    """A 200 JSON object with a ``resource``: a protected resource metadata document."""
    if answer.status != 200:
        return False
    ctype = (answer.header(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/json":
        return False
    try:
        doc = _decode.decode(answer.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("resource"), str)


_decode = msgspec.json.Decoder()
_CORS = [(b"access-control-allow-origin", b"*")]
_CORS_PREFLIGHT = [
    *_CORS,
    (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
    (b"access-control-allow-headers", b"*"),
    (b"access-control-max-age", b"86400"),
]
