"""External ForwardAuth: a proxy whose ``auth_proxy`` is another service's URL asks that
service about each request before forwarding it (Traefik's ``forwardAuth``, nginx's
``auth_request``, Caddy's ``forward_auth``).

Per request, a ``GET`` to the auth URL on the pooled upstream connections
(:class:`~edge.upstream.subrequest.Subrequests`) with the client's headers and
``X-Forwarded-Method``, ``-Proto``, ``-Host``, ``-Uri``, ``-For`` (Traefik's convention).
Its answer decides:

* ``2xx``: the request goes on, carrying the fields ``auth_response_headers`` names copied
  from the answer (null: the identity fields ``{auth_header_prefix}User-Id``, ``User-Name``,
  ``Email``, ``Scopes``, ``Client-Id``, which the edge's own ``/verify`` answers with).
  Every client-sent field with one of those names, in any case and with ``_`` or ``-``, is
  removed first, whatever the answer.
* anything else: that answer goes back to the client (a 401 with its challenge, a 302 to a
  login page, a 403), body included.
* no answer within ``FORWARD_AUTH_TIMEOUT``, an unreachable service, an answer too large
  or broken: ``503``, never a pass (fail closed).

The request body is not sent to the auth service; the client's body waits, unread, until
the decision (HTTP's flow control holds the client meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edge.config.schema import ProxyConfig
from edge.errors import EdgeError, ServiceUnavailable
from edge.handlers.forward import HOP_BY_HOP
from edge.handlers.forwardauth import IDENTITY, excluded, normalised, without_tokens
from edge.http1.exchange import Exchange
from edge.routing.resolution import Middleware, Resolution, Scheme, Step
from edge.routing.target import Target, parse_target
from edge.upstream.subrequest import Answer, Outcome, Subrequests

__all__ = ["ANSWER_MAX_BYTES", "ExternalAuth", "ExternalAuthUnavailable", "auth_outcome"]

ANSWER_MAX_BYTES = 64 * 1024  # an auth service's answer is a status and a short page
# never sent to the auth service as the client sent them: the edge sets these itself
_REPLACED = frozenset(
    {
        b"host",
        b"x-forwarded-method",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-uri",
        b"x-forwarded-for",
        b"x-forwarded-port",
        b"x-real-ip",
        b"content-length",
        b"expect",
    }
)
# not relayed from a refusal: the edge frames the answer itself
_NOT_RELAYED = HOP_BY_HOP | {b"content-length", b"content-type"}


class ExternalAuthUnavailable(ServiceUnavailable):
    public_message = "the authentication service for this host is unavailable"


def auth_url(value: str) -> str:
    """``auth_proxy`` as a URL: a bare ``host`` or ``host:port`` is plain HTTP at ``/``."""
    return value if "://" in value else f"http://{value}/"


class ExternalAuth:
    """The factory: a check for each proxy whose ``auth_proxy`` is another service.

    ``own`` says which proxies the edge's own authorization server checks (None when the
    edge runs none: then every ``auth_proxy`` is external, and a null one fails closed).
    """

    def __init__(
        self,
        subrequests: Subrequests,
        timeout: float,
        own: Callable[[ProxyConfig], bool] | None = None,
    ) -> None:
        self.subrequests = subrequests
        self.timeout = timeout
        self.own = own

    def takes(self, proxy: ProxyConfig) -> bool:
        if not proxy.auth_enabled or proxy.auth_proxy is None:
            return False
        return self.own is None or not self.own(proxy)

    def factory(self, proxy: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
        if not self.takes(proxy):
            return None
        assert proxy.auth_proxy is not None
        return ExternalCheck(self, proxy, parse_target(auth_url(proxy.auth_proxy)))


class ExternalCheck:
    """The check of one proxy (shared by its requests: no per-request state)."""

    __slots__ = ("auth", "copied", "path", "proxy", "strip", "target")

    def __init__(self, auth: ExternalAuth, proxy: ProxyConfig, target: Target) -> None:
        self.auth = auth
        self.proxy = proxy
        self.target = target
        self.path = target.base_path.encode("ascii") or b"/"
        if proxy.auth_response_headers is not None:
            names: Sequence[str] = proxy.auth_response_headers
        else:
            names = [proxy.auth_header_prefix + name for name in IDENTITY]
        self.copied = tuple(name.encode("latin-1") for name in names)
        self.strip = frozenset(normalised(name) for name in self.copied)

    def __call__(self, ex: Exchange, res: Resolution, proceed: Step, /) -> None:
        # the client may not send what the auth service's answer vouches for, nor have
        # it dropped as hop-by-hop (a Connection token naming it)
        cleaned: list[tuple[bytes, bytes]] = []
        for name, value in ex.headers:
            lower = normalised(name)
            if lower in self.strip:
                continue
            if lower == b"connection":
                value = without_tokens(value, self.strip)
            if value:
                cleaned.append((name, value))
        ex.headers = cleaned
        paths = self.proxy.auth_excluded_paths
        if paths and excluded(ex.path, tuple(paths)):
            proceed(ex, res)
            return

        def done(outcome: Outcome) -> None:
            if ex.finished:
                return  # the client went away meanwhile
            if isinstance(outcome, EdgeError):
                ex.auth = "error"
                ex.fail(ExternalAuthUnavailable(f"{self.target.url}: {outcome}"))
                return
            self._decide(ex, res, proceed, outcome)

        self.auth.subrequests.start(
            self.target,
            b"GET",
            self.path,
            self._headers(ex),
            time_limit=self.auth.timeout,
            max_body=ANSWER_MAX_BYTES,
            done=done,
        )

    def _headers(self, ex: Exchange) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        xff = b""
        for name, value in ex.headers:
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in _REPLACED:
                if lower == b"x-forwarded-for":
                    xff = value if not xff else xff + b", " + value
                continue
            out.append((name, value))
        client = ex.client_ip.encode("latin-1")
        out.append((b"Host", self.target.authority))
        out.append((b"X-Forwarded-Method", ex.method))
        out.append((b"X-Forwarded-Proto", ex.scheme.encode("ascii")))
        if ex.host_header:
            out.append((b"X-Forwarded-Host", ex.host_header))
        out.append((b"X-Forwarded-Uri", ex.target))
        out.append((b"X-Forwarded-For", xff + b", " + client if xff else client))
        out.append((b"X-Forwarded-Port", str(ex.server_port).encode("ascii")))
        out.append((b"X-Real-IP", client))
        return out

    def _decide(self, ex: Exchange, res: Resolution, proceed: Step, answer: Answer) -> None:
        ex.auth = auth_outcome(answer.status)
        if 200 <= answer.status < 300:
            if self.copied:
                wanted = {name.lower(): name for name in self.copied}
                headers = list(ex.headers)
                for name, value in answer.headers:
                    if name in wanted:
                        headers.append((wanted[name], value))
                ex.headers = headers
            proceed(ex, res)
            return
        relayed = [(n, v) for n, v in answer.headers if n not in _NOT_RELAYED]
        ctype = answer.header(b"content-type") or b"text/plain; charset=utf-8"
        ex.respond(answer.status, answer.body, ctype, relayed)


def auth_outcome(status: int) -> str:
    """The metrics' outcome of the auth service's answer: ``allowed`` (2xx), ``401`` (a
    401, or a redirect to sign in), ``403``, else ``error``."""
    if 200 <= status < 300:
        return "allowed"
    if status == 401 or 300 <= status < 400:
        return "401"
    return "403" if status == 403 else "error"
