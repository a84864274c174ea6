"""Router: host lookup, route selection and targets, built from real decoded documents."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.config.schema import ProxyConfig
from edge.config.snapshot import Snapshot, apply
from edge.routing.router import Resolution, Router
from edge.routing.table import compile_table
from edge.routing.target import Target

UP = "http://127.0.0.1:8000"


def proxy(hostname: str, target_url: str = UP, **extra: Any) -> tuple[str, bytes]:
    doc = {"hostname": hostname, "target_url": target_url, **extra}
    return f"proxy:{hostname}", json.dumps(doc).encode()


def route(
    route_id: str,
    path: str,
    target_type: str = "port",
    target_value: str = "9000",
    **extra: Any,
) -> tuple[str, bytes]:
    doc = {
        "route_id": route_id,
        "path_pattern": path,
        "target_type": target_type,
        "target_value": target_value,
        **extra,
    }
    return f"route:{route_id}", json.dumps(doc).encode()


def build(*items: tuple[str, bytes]) -> Router:
    snap = apply(Snapshot(), dict(items))
    assert not snap.rejected, snap.rejected
    return compile_table(snap)


def resolve(router: Router, host: str, path: str, method: bytes = b"GET") -> Resolution:
    found = router.find_proxy(host)
    assert found is not None, f"no proxy for {host}"
    return router.resolve(found, path, method)


def route_id(res: Resolution) -> str | None:
    return None if res.route is None else res.route.route_id


def port_of(res: Resolution) -> int:
    assert res.target is not None
    return res.target.port


# ---------------------------------------------------------------------------
# host lookup
# ---------------------------------------------------------------------------


def _hostname(p: ProxyConfig | None) -> str | None:
    return None if p is None else p.hostname


def test_exact_host_beats_wildcard() -> None:
    router = build(proxy("a.example.com"), proxy("*.example.com"))
    assert _hostname(router.find_proxy("a.example.com")) == "a.example.com"
    assert _hostname(router.find_proxy("b.example.com")) == "*.example.com"


def test_most_specific_wildcard_wins() -> None:
    router = build(proxy("*.example.com"), proxy("*.b.example.com"))
    assert _hostname(router.find_proxy("a.b.example.com")) == "*.b.example.com"
    assert _hostname(router.find_proxy("x.y.z.b.example.com")) == "*.b.example.com"
    # b.example.com is one label below example.com, not below b.example.com
    assert _hostname(router.find_proxy("b.example.com")) == "*.example.com"
    assert _hostname(router.find_proxy("a.c.example.com")) == "*.example.com"


def test_wildcard_does_not_match_its_apex_or_other_domains() -> None:
    router = build(proxy("*.example.com"))
    assert router.find_proxy("example.com") is None
    assert router.find_proxy("example.org") is None
    assert router.find_proxy("a.example.com.evil.test") is None
    assert router.find_proxy("aexample.com") is None


def test_unknown_host_is_none() -> None:
    router = build(proxy("app.test"))
    assert router.find_proxy("other.test") is None
    assert router.find_proxy("") is None
    assert build().find_proxy("app.test") is None


def test_mixed_case_key_is_found_by_its_lowercased_host() -> None:
    doc = json.dumps({"hostname": "App.Example.COM", "target_url": UP}).encode()
    router = build(("proxy:App.Example.COM", doc))
    found = router.find_proxy("app.example.com")
    assert found is not None
    assert found.hostname == "app.example.com"


# ---------------------------------------------------------------------------
# candidate routes, scope and order
# ---------------------------------------------------------------------------


def test_global_and_proxy_scoped_routes() -> None:
    router = build(
        proxy("a.test"),
        proxy("b.test"),
        route("g", "/g", target_value="9001"),
        route("s", "/s", target_value="9002", scope="proxy", proxy_hostnames=["a.test"]),
    )
    assert route_id(resolve(router, "a.test", "/g")) == "g"
    assert route_id(resolve(router, "b.test", "/g")) == "g"
    assert route_id(resolve(router, "a.test", "/s/x")) == "s"
    assert port_of(resolve(router, "a.test", "/s/x")) == 9002
    # scoped to a.test only: b.test falls back to its own target_url
    res = resolve(router, "b.test", "/s/x")
    assert res.route is None
    assert res.target is not None and res.target.port == 8000


def test_scoped_route_on_wildcard_proxy_applies_to_matched_hosts() -> None:
    router = build(
        proxy("*.w.test"),
        proxy("exact.w.test"),
        route("s", "/s", scope="proxy", proxy_hostnames=["*.W.test"]),
    )
    assert route_id(resolve(router, "any.w.test", "/s")) == "s"
    # the exact proxy is a different proxy: the wildcard's scoped route does not apply
    assert route_id(resolve(router, "exact.w.test", "/s")) is None


def test_higher_priority_first() -> None:
    router = build(
        proxy("a.test"),
        route("low", "/api", target_value="9001", priority=10),
        route("high", "/api", target_value="9002", priority=100),
        route("longer-but-lower", "/api/v1/deep", target_value="9003", priority=50),
    )
    assert route_id(resolve(router, "a.test", "/api/v1/deep/x")) == "high"
    assert port_of(resolve(router, "a.test", "/api")) == 9002


def test_negative_priority_is_tried_last() -> None:
    router = build(
        proxy("a.test"),
        route("neg", "/", priority=-5),
        route("default", "/x"),
    )
    assert route_id(resolve(router, "a.test", "/x/1")) == "default"
    assert route_id(resolve(router, "a.test", "/y")) == "neg"


def test_priority_tie_goes_to_longer_pattern_then_route_id() -> None:
    router = build(
        proxy("a.test"),
        route("short", "/api", target_value="9001"),
        route("long", "/api/v2", target_value="9002"),
        route("b-same", "/same", target_value="9003"),
        route("a-same", "/same", target_value="9004"),
    )
    assert route_id(resolve(router, "a.test", "/api/v2/users")) == "long"
    assert route_id(resolve(router, "a.test", "/api/v1/users")) == "short"
    assert route_id(resolve(router, "a.test", "/same")) == "a-same"
    assert port_of(resolve(router, "a.test", "/same")) == 9004


def test_prefix_route_is_a_plain_string_prefix() -> None:
    router = build(proxy("a.test"), route("api", "/api"))
    assert route_id(resolve(router, "a.test", "/api")) == "api"
    assert route_id(resolve(router, "a.test", "/api/x")) == "api"
    assert route_id(resolve(router, "a.test", "/apix")) == "api"
    assert route_id(resolve(router, "a.test", "/ap")) is None
    assert route_id(resolve(router, "a.test", "/API")) is None
    # prefix patterns are literal: regex metacharacters have no meaning
    lit = build(proxy("a.test"), route("dot", "/a.b"))
    assert route_id(resolve(lit, "a.test", "/a.b/c")) == "dot"
    assert route_id(resolve(lit, "a.test", "/axb/c")) is None


def test_regex_route() -> None:
    router = build(
        proxy("a.test"),
        route("reports", "^/reports/[0-9]+$", is_regex=True, target_value="9005"),
    )
    assert route_id(resolve(router, "a.test", "/reports/42")) == "reports"
    assert port_of(resolve(router, "a.test", "/reports/42")) == 9005
    assert route_id(resolve(router, "a.test", "/reports/abc")) is None
    assert route_id(resolve(router, "a.test", "/reports/42/x")) is None
    assert route_id(resolve(router, "a.test", "/x/reports/42")) is None


def test_regex_route_matches_from_the_start_of_the_path() -> None:
    router = build(
        proxy("a.test"),
        route("php", r".*\.php", is_regex=True, target_value="9005"),
        route("ci", r"(?i)/Admin/", is_regex=True, target_value="9006"),
        route("uni", "/caf\u00e9/[0-9]+", is_regex=True, target_value="9007"),
    )
    assert route_id(resolve(router, "a.test", "/x/index.php")) == "php"
    assert route_id(resolve(router, "a.test", "/x/index.php/more")) == "php"  # no end anchor
    assert route_id(resolve(router, "a.test", "/x/index.phq")) is None
    assert route_id(resolve(router, "a.test", "/admin/users")) == "ci"
    assert route_id(resolve(router, "a.test", "/x/admin/")) is None  # anchored at the start
    assert route_id(resolve(router, "a.test", "/caf\u00e9/12")) == "uni"
    assert route_id(resolve(router, "a.test", "/cafe/12")) is None


def test_method_filter() -> None:
    router = build(
        proxy("a.test"),
        route("reads", "/data", methods=["get", "HEAD"], target_value="9001", priority=60),
        route("any", "/data", methods=[], target_value="9002"),
    )
    assert route_id(resolve(router, "a.test", "/data", b"GET")) == "reads"
    assert route_id(resolve(router, "a.test", "/data", b"HEAD")) == "reads"
    assert route_id(resolve(router, "a.test", "/data", b"POST")) == "any"
    assert route_id(resolve(router, "a.test", "/data", b"DELETE")) == "any"


def test_route_mode_all_skips_disabled_routes() -> None:
    router = build(
        proxy("a.test", disabled_routes=["one"]),
        proxy("b.test"),
        route("one", "/one"),
        route("two", "/two"),
    )
    assert route_id(resolve(router, "a.test", "/one")) is None
    assert route_id(resolve(router, "a.test", "/two")) == "two"
    assert route_id(resolve(router, "b.test", "/one")) == "one"


def test_route_mode_selective_uses_only_enabled_routes() -> None:
    router = build(
        proxy("a.test", route_mode="selective", enabled_routes=["two", "scoped-b", "ghost"]),
        route("one", "/one"),
        route("two", "/two"),
        route("scoped-b", "/sb", scope="proxy", proxy_hostnames=["b.test"]),
    )
    assert route_id(resolve(router, "a.test", "/one")) is None
    assert route_id(resolve(router, "a.test", "/two")) == "two"
    # listed, but not a candidate: scoped to another proxy
    assert route_id(resolve(router, "a.test", "/sb")) is None


def test_route_mode_selective_with_no_list_uses_no_routes() -> None:
    router = build(proxy("a.test", route_mode="selective"), route("one", "/one"))
    assert route_id(resolve(router, "a.test", "/one")) is None


def test_route_mode_none_ignores_every_route() -> None:
    router = build(
        proxy("a.test", route_mode="none", enabled_routes=["one"]),
        route("one", "/one"),
        route("s", "/s", scope="proxy", proxy_hostnames=["a.test"]),
    )
    assert route_id(resolve(router, "a.test", "/one")) is None
    assert route_id(resolve(router, "a.test", "/s")) is None


def test_disabled_route_is_ignored_even_when_selected() -> None:
    router = build(
        proxy("a.test", route_mode="selective", enabled_routes=["off"]),
        proxy("b.test"),
        route("off", "/off", enabled=False),
    )
    assert route_id(resolve(router, "a.test", "/off")) is None
    assert route_id(resolve(router, "b.test", "/off")) is None


# ---------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------


def _target(res: Resolution) -> Target:
    assert res.target is not None
    return res.target


def test_port_target() -> None:
    router = build(proxy("a.test"), route("p", "/p", "port", "9123"))
    t = _target(resolve(router, "a.test", "/p"))
    assert (t.scheme, t.host, t.port, t.base_path) == ("http", "127.0.0.1", 9123, "")


def test_hostname_target_is_that_hosts_proxy() -> None:
    router = build(
        proxy("a.test"),
        proxy("backend.internal", "https://10.0.0.7:8443/app", custom_headers={"X-B": "1"}),
        proxy("*.wild.test", "http://10.0.0.8:81"),
        route("h", "/h", "hostname", "Backend.Internal:8081"),
        route("w", "/w", "hostname", "x.wild.test"),
        route("gone", "/gone", "hostname", "unknown.test"),
    )
    res = resolve(router, "a.test", "/h")
    t = _target(res)
    assert (t.scheme, t.host, t.port, t.base_path) == ("https", "10.0.0.7", 8443, "/app")
    assert res.proxy.hostname == "backend.internal"  # its headers and auth apply
    assert res.request_headers == ((b"x-b", b"1"),)
    assert route_id(res) == "h"  # logged as the route that matched
    assert _target(resolve(router, "a.test", "/w")).port == 81  # wildcards count
    # the hop happens once: on backend.internal itself the global route is not followed
    res = resolve(router, "backend.internal", "/h")
    assert res.proxy.hostname == "backend.internal"
    assert _target(res).host == "10.0.0.7"
    # no proxy for the name: no target (502), never a connection to the name itself
    assert resolve(router, "a.test", "/gone").target is None


def test_url_target_with_base_path() -> None:
    router = build(proxy("a.test"), route("u", "/docs", "url", "https://docs.internal:8443/site/"))
    t = _target(resolve(router, "a.test", "/docs/x"))
    assert (t.scheme, t.host, t.port, t.base_path) == ("https", "docs.internal", 8443, "/site")


def test_service_targets() -> None:
    external = json.dumps({"service_name": "ext", "target_url": "https://partner.test"}).encode()
    shadowed = json.dumps({"service_name": "both", "target_url": "http://10.0.0.9:1"}).encode()
    router = build(
        proxy("a.test"),
        ("service:url:web", b"  http://10.0.0.5:8000/base \n"),
        ("service:external:ext", external),
        ("service:url:both", b"http://10.0.0.8:2"),
        ("service:external:both", shadowed),
        route("r-url", "/web", "service", "web"),
        route("r-ext", "/ext", "service", "ext"),
        route("r-both", "/both", "service", "both"),
        route("r-none", "/none", "service", "missing"),
    )
    t = _target(resolve(router, "a.test", "/web"))
    assert (t.host, t.port, t.base_path) == ("10.0.0.5", 8000, "/base")
    t = _target(resolve(router, "a.test", "/ext"))
    assert (t.scheme, t.host, t.port) == ("https", "partner.test", 443)
    # service:url:{name} is used before service:external:{name}
    t = _target(resolve(router, "a.test", "/both"))
    assert (t.host, t.port) == ("10.0.0.8", 2)
    res = resolve(router, "a.test", "/none")
    assert route_id(res) == "r-none"
    assert res.target is None


def test_fallback_to_proxy_target_url() -> None:
    router = build(
        proxy("a.test", "http://[::1]:7000/prefix", custom_headers={"X-Env": "prod"}),
        route("other", "/other"),
    )
    res = resolve(router, "a.test", "/anything", b"POST")
    assert res.route is None
    t = _target(res)
    assert (t.host, t.port, t.base_path) == ("::1", 7000, "/prefix")
    assert res.proxy.hostname == "a.test"
    assert res.request_headers == ((b"x-env", b"prod"),)


@pytest.mark.parametrize("host", ["a.test", "x.w.test"])
def test_resolution_is_stable_across_calls(host: str) -> None:
    router = build(proxy("a.test"), proxy("*.w.test"), route("r", "/r", priority=7))
    first = resolve(router, host, "/r")
    second = resolve(router, host, "/r")
    assert route_id(first) == route_id(second) == "r"
    assert first.target == second.target
