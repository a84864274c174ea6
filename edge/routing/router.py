"""Hand-written router: host first (exact, then most specific wildcard), then path routes.

A ``Router`` is built for one immutable config snapshot. Host lookup costs one dict probe
per label of the request host, whatever the number of proxies. Each proxy's effective
route list (global + scoped, filtered by its route_mode, by priority) is computed on first
use and cached for the life of the snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from edge.config.pathregex import PathRegex, compile_path_regex
from edge.config.schema import ExternalService, ProxyConfig, RouteConfig
from edge.routing.target import Target, parse_target


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


EncodedHeaders = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Resolution:
    proxy: ProxyConfig
    route: RouteConfig | None
    target: Target | None  # None: the route names a service that is not registered
    request_headers: EncodedHeaders  # the proxy's custom_headers, ready for the wire
    response_headers: EncodedHeaders  # its custom_response_headers
    # target None because the service's key holds a rejected value (and never a good one):
    # that key, for the 502 to name
    problem: str | None = None


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
        "_global",
        "_rejected",
        "_resolved",
        "_scoped",
        "_unserved",
        "exact",
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
        rejected: Mapping[str, str] | None = None,
        unserved: Mapping[str, str] | None = None,
    ) -> None:
        self.exact = exact
        self.wildcards = wildcards  # ".example.com" -> proxy of "*.example.com"
        self.services = services
        self.urls = urls
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
        """The route (if any) and target for a request; results are memoised per snapshot."""
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
        excepted), its custom headers and its auth; the route stays the one that matched,
        for the logs. A hostname with no enabled proxy has no target (502): the edge never
        dials the name itself.
        """
        name = _host_only(route.target_value)
        inner = self.find_proxy(name)
        if inner is None or not inner.enabled:
            return Resolution(proxy, route, None, (), ())
        inner_route = self._match(inner, path, method, hop=True)
        inner_id = inner_route.route.route_id if inner_route is not None else ""
        key = (proxy.hostname, route.route_id, inner.hostname, inner_id)
        found = self._resolved.get(key)
        if found is None or found.proxy is not inner:
            found = dataclasses.replace(self._resolution(inner, inner_id), route=route)
            self._resolved[key] = found
        return found

    def _resolution(self, proxy: ProxyConfig, route_id: str) -> Resolution:
        headers = (_encode(proxy.custom_headers), _encode(proxy.custom_response_headers))
        if route_id:
            route = next(r.route for r in self.routes_for(proxy) if r.route.route_id == route_id)
            target = self.route_target(route)
            problem = self._rejected_service(route) if target is None else None
            return Resolution(proxy, route, target, *headers, problem)
        return Resolution(proxy, None, parse_target(proxy.target_url), *headers)

    def _rejected_service(self, route: RouteConfig) -> str | None:
        """The rejected key of the service a route names but cannot reach, if any."""
        for key in (f"service:url:{route.target_value}", f"service:external:{route.target_value}"):
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
