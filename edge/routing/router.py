"""Hand-written router: host first (exact, then most specific wildcard), then path routes.

A ``Router`` is the routing table of one immutable config snapshot, compiled by
:func:`edge.routing.table.compile_table` when the snapshot is installed. Host lookup costs
one dict probe per label of the request host, whatever the number of proxies. Each proxy's
effective route list (global + scoped, filtered by its route_mode, by priority) is
computed on first use and cached for the life of the snapshot, and so is each
``Resolution``: its target, headers, kind and handler, and the middleware chains of its
proxies linked in front of that handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edge.config.pathregex import PathRegex, compile_path_regex
from edge.config.schema import ExternalService, ProxyConfig, RouteConfig
from edge.errors import ServiceUnavailable
from edge.http1.exchange import Exchange
from edge.routing.middleware import Pipeline, ProxyChains, link
from edge.routing.resolution import EncodedHeaders, Kind, Resolution, Step
from edge.routing.target import Target, parse_target
from edge.store import keys

__all__ = ["CompiledRoute", "Resolution", "Router", "compile_route", "evaluation_order"]


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    route: RouteConfig
    prefix: str | None
    regex: PathRegex | None  # RE2: linear in the path length, never backtracks
    methods: frozenset[bytes] | None

    def matches(self, path: str, method: bytes) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.prefix is not None:
            return path.startswith(self.prefix)
        assert self.regex is not None
        return self.regex.matches(path)


class NoHandler(ServiceUnavailable):
    public_message = "this kind of route is not served here"


def _no_handler(ex: Exchange, res: Resolution, /) -> None:
    """A kind nothing was registered for: refused, never forwarded by default."""
    ex.fail(NoHandler(f"no handler for {res.kind} routes"))


def _encode(headers: dict[str, str]) -> EncodedHeaders:
    return tuple((k.lower().encode("ascii"), v.encode("ascii")) for k, v in headers.items())


def _host_only(host_port: str) -> str:
    """``host`` of a validated ``host[:port]`` target value (IPv6 literals in brackets)."""
    if host_port.startswith("["):
        return host_port[: host_port.index("]") + 1]
    return host_port.rsplit(":", 1)[0] if ":" in host_port else host_port


def compile_route(route: RouteConfig) -> CompiledRoute:
    methods = frozenset(m.encode("ascii") for m in route.methods) if route.methods else None
    if route.is_regex:
        return CompiledRoute(route, None, compile_path_regex(route.path_pattern), methods)
    return CompiledRoute(route, route.path_pattern, None, methods)


def evaluation_order(route: RouteConfig) -> tuple[int, int, str]:
    """The sort key of the order routes are tried in: higher ``priority`` first, then the
    longer ``path_pattern`` (the more specific prefix), then ``route_id``. The API lists
    routes in this order too."""
    return (-route.priority, -len(route.path_pattern), route.route_id)


def _order(route: CompiledRoute) -> tuple[int, int, str]:
    return evaluation_order(route.route)


class Router:
    __slots__ = (
        "_by_proxy",
        "_chains",
        "_global",
        "_rejected",
        "_resolved",
        "_scoped",
        "_unserved",
        "compiled",
        "exact",
        "handlers",
        "internal",
        "pipeline",
        "pipeline_version",
        "services",
        "urls",
        "wildcards",
    )

    def __init__(
        self,
        exact: Mapping[str, ProxyConfig],
        wildcards: Mapping[str, ProxyConfig],
        routes: Mapping[str, CompiledRoute],
        services: Mapping[str, ExternalService],
        urls: Mapping[str, str],
        *,
        pipeline: Pipeline,
        handlers: Mapping[Kind, Step],
        internal: Mapping[str, Step] | None = None,
        chains: dict[str, ProxyChains] | None = None,
        rejected: Mapping[str, str] | None = None,
        unserved: Mapping[str, str] | None = None,
    ) -> None:
        self.exact = exact
        self.wildcards = wildcards  # ".example.com" -> proxy of "*.example.com"
        self.compiled = routes  # route_id -> compiled route (reused by the next table)
        self.services = services
        self.urls = urls
        self.pipeline = pipeline
        self.pipeline_version = pipeline.version
        self.handlers = dict(handlers)  # kind -> what answers a request resolved to it
        # hosts the edge answers itself (the OAuth server's): a hostname route to one of
        # them is answered by its handler, never through a proxy of that name
        self.internal = dict(internal or {})
        # proxy hostname -> its compiled chains (every proxy's, made at install; owned)
        self._chains: dict[str, ProxyChains] = {} if chains is None else chains
        self._rejected = rejected or {}  # config key -> why its value was refused
        self._unserved = unserved or {}  # "a.test" / "*.a.test" -> its rejected proxy key
        enabled = [r for r in routes.values() if r.route.enabled]
        self._global = sorted((r for r in enabled if r.route.scope == "global"), key=_order)
        scoped: dict[str, list[CompiledRoute]] = {}
        for r in enabled:
            if r.route.scope == "proxy":
                for host in r.route.proxy_hostnames:
                    scoped.setdefault(host, []).append(r)
        self._scoped = scoped
        self._by_proxy: dict[str, tuple[CompiledRoute, ...]] = {}
        self._resolved: dict[tuple[str, ...], Resolution] = {}

    def compiled_chains(self, proxy: ProxyConfig) -> ProxyChains | None:
        """The chains this table compiled for ``proxy`` itself, if any."""
        chains = self._chains.get(proxy.hostname)
        return chains if chains is not None and chains.proxy is proxy else None

    def chains_for(self, proxy: ProxyConfig) -> ProxyChains:
        """The middleware chains compiled for ``proxy`` (compiled now if it had none)."""
        chains = self.compiled_chains(proxy)
        if chains is None:
            chains = self.pipeline.compile(proxy)
            self._chains[proxy.hostname] = chains
        return chains

    def find_proxy(self, host: str) -> ProxyConfig | None:
        proxy = self.exact.get(host)
        if proxy is not None:
            return proxy
        dot = host.find(".")
        while dot >= 0:
            proxy = self.wildcards.get(host[dot:])
            if proxy is not None:
                return proxy
            dot = host.find(".", dot + 1)
        return None

    def rejected_proxy(self, host: str) -> str | None:
        """For a host with no proxy: the rejected key that would have served it, if any.

        The same order as :meth:`find_proxy` (exact, then the most specific wildcard), so a
        404 names the key the user meant to write.
        """
        if not self._unserved:
            return None
        key = self._unserved.get(host)
        if key is not None:
            return key
        dot = host.find(".")
        while dot >= 0:
            key = self._unserved.get("*" + host[dot:])
            if key is not None:
                return key
            dot = host.find(".", dot + 1)
        return None

    def routes_for(self, proxy: ProxyConfig) -> tuple[CompiledRoute, ...]:
        cached = self._by_proxy.get(proxy.hostname)
        if cached is not None:
            return cached
        if proxy.route_mode == "none":
            result: tuple[CompiledRoute, ...] = ()
        else:
            candidates = self._global + self._scoped.get(proxy.hostname, [])
            if proxy.route_mode == "selective":
                allowed = set(proxy.enabled_routes)
                candidates = [r for r in candidates if r.route.route_id in allowed]
            else:
                denied = set(proxy.disabled_routes)
                candidates = [r for r in candidates if r.route.route_id not in denied]
            result = tuple(sorted(candidates, key=_order))
        self._by_proxy[proxy.hostname] = result
        return result

    def resolve(self, proxy: ProxyConfig, path: str, method: bytes) -> Resolution:
        """The route (if any), target and chain for a request; memoised per snapshot."""
        compiled = self._match(proxy, path, method, hop=False)
        if compiled is None:
            route_id = ""
        elif compiled.route.target_type == "hostname":
            return self._hostname_hop(proxy, compiled.route, path, method)
        else:
            route_id = compiled.route.route_id
        key = (proxy.hostname, route_id)
        found = self._resolved.get(key)
        if found is None or found.proxy is not proxy:
            found = self._resolution(proxy, route_id)
            self._resolved[key] = found
        return found

    def _match(
        self, proxy: ProxyConfig, path: str, method: bytes, hop: bool
    ) -> CompiledRoute | None:
        for compiled in self.routes_for(proxy):
            if compiled.matches(path, method):
                if hop and compiled.route.target_type == "hostname":
                    continue  # one hop only: a hostname route never leads to another
                return compiled
        return None

    def _hostname_hop(
        self, proxy: ProxyConfig, route: RouteConfig, path: str, method: bytes
    ) -> Resolution:
        """A ``hostname`` route: served as if the request had been sent to that host.

        The hostname's proxy gives the target (its own path routes included, hostname routes
        excepted), its custom headers and its access checks, which run after those of the
        host the request came in on; the route stays the one that matched, for the logs. A
        hostname with no enabled proxy has no target (502): the edge never dials the name
        itself.
        """
        name = _host_only(route.target_value)
        own = self.internal.get(name)
        if own is not None:
            return self._internal(proxy, route, name, own)
        inner = self.find_proxy(name)
        if inner is None or not inner.enabled:
            key: tuple[str, ...] = (proxy.hostname, route.route_id, "")
            found = self._resolved.get(key)
            if found is None or found.proxy is not proxy:
                found = self._make(proxy, proxy, route, None, (), (), None)
                self._resolved[key] = found
            return found
        inner_route = self._match(inner, path, method, hop=True)
        inner_id = inner_route.route.route_id if inner_route is not None else ""
        key = (proxy.hostname, route.route_id, inner.hostname, inner_id)
        found = self._resolved.get(key)
        if found is None or found.proxy is not inner:
            found = self._resolution(inner, inner_id, host=proxy, hop=route)
            self._resolved[key] = found
        return found

    def _internal(
        self, proxy: ProxyConfig, route: RouteConfig, name: str, handler: Step
    ) -> Resolution:
        """A hostname route to a host the edge answers itself: that handler, after only
        the site checks of the proxy the request came in on (an HTTPS redirect, say). Its
        access checks do not apply: the OAuth server's endpoints are how a client gets
        past them, so they must stay reachable."""
        key = (proxy.hostname, route.route_id, "@" + name)
        found = self._resolved.get(key)
        if found is None or found.proxy is not proxy:
            chains = self.chains_for(proxy)
            found = Resolution(
                proxy,
                route,
                None,
                (),
                (),
                None,
                "internal",
                handler,
                link(chains.site["http"], handler),
                link(chains.site["https"], handler),
            )
            self._resolved[key] = found
        return found

    def _resolution(
        self,
        proxy: ProxyConfig,
        route_id: str,
        *,
        host: ProxyConfig | None = None,
        hop: RouteConfig | None = None,
    ) -> Resolution:
        """``proxy``'s resolution for ``route_id`` ("" for its own target), reached through
        ``host``'s hostname route ``hop`` when given."""
        headers = (_encode(proxy.custom_headers), _encode(proxy.custom_response_headers))
        if route_id:
            route = next(r.route for r in self.routes_for(proxy) if r.route.route_id == route_id)
            target = self.route_target(route)
            problem = self._rejected_service(route) if target is None else None
        else:
            route, target, problem = None, parse_target(proxy.target_url), None
        if hop is not None:
            route = hop
        return self._make(host or proxy, proxy, route, target, *headers, problem)

    def _make(
        self,
        host: ProxyConfig,
        proxy: ProxyConfig,
        route: RouteConfig | None,
        target: Target | None,
        request_headers: EncodedHeaders,
        response_headers: EncodedHeaders,
        problem: str | None,
    ) -> Resolution:
        """The resolution with its chains linked: ``host``'s site and access middleware,
        then ``proxy``'s access middleware when it is another proxy, then the handler."""
        kind: Kind = "forward"  # every route forwards today; tunnels and internal later
        handler = self.handlers.get(kind, _no_handler)
        outer = self.chains_for(host)
        inner = self.chains_for(proxy) if proxy is not host else None
        http = outer.site["http"] + outer.access["http"]
        https = outer.site["https"] + outer.access["https"]
        if inner is not None:
            http += inner.access["http"]
            https += inner.access["https"]
        return Resolution(
            proxy,
            route,
            target,
            request_headers,
            response_headers,
            problem,
            kind,
            handler,
            link(http, handler),
            link(https, handler),
        )

    def _rejected_service(self, route: RouteConfig) -> str | None:
        """The rejected key of the service a route names but cannot reach, if any."""
        for key in (
            keys.service_url(route.target_value),
            keys.service_external(route.target_value),
        ):
            if key in self._rejected:
                return key
        return None

    def route_target(self, route: RouteConfig) -> Target | None:
        kind = route.target_type
        value = route.target_value
        if kind == "url":
            return parse_target(value)
        if kind == "port":
            return parse_target(f"http://127.0.0.1:{value}")
        if kind == "hostname":
            return None  # resolved through that host's proxy (_hostname_hop), never dialled
        url = self.urls.get(value)
        if url is None:
            service = self.services.get(value)
            if service is None:
                return None
            url = service.target_url
        return parse_target(url)
