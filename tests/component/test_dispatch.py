"""The dispatcher: mounts before routing, per-proxy middleware chains compiled at install.

Requests go through a real ``HttpConnection`` over the component tier's fake transport,
with a real h11 client at the other end; the dispatcher, its compiled table and its chains
are the real ones. Only the ``forward`` kind is served by a handler of the test's
(registered with ``serve_kind``, the seam tunnels will use), which names the proxy it was
given instead of dialling an upstream."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import pytest

from edge.config.schema import ProxyConfig
from edge.config.snapshot import Snapshot, apply
from edge.handlers.forward import Forwarder
from edge.http1.connection import HttpConnection
from edge.http1.exchange import Exchange
from edge.http1.hub import Hub
from edge.routing.checks import ACME_CHALLENGE_PREFIX, standard_pipeline
from edge.routing.dispatch import Dispatcher
from edge.routing.middleware import Phase, Pipeline
from edge.routing.mount import Mount, ordered
from edge.routing.resolution import Middleware, Resolution, Scheme, Step
from edge.routing.table import compile_table
from edge.settings import load_settings
from edge.upstream.pool import UpstreamPool
from tests.component.harness import FakeTransport, H11Peer

UP = "http://127.0.0.1:9"  # never dialled: the forward kind is the test's handler


def proxy(hostname: str, **extra: Any) -> tuple[str, bytes]:
    doc = {"hostname": hostname, "target_url": UP, **extra}
    return f"proxy:{hostname}", json.dumps(doc).encode()


def hostname_route(route_id: str, path: str, to: str, **extra: Any) -> tuple[str, bytes]:
    doc = {
        "route_id": route_id,
        "path_pattern": path,
        "target_type": "hostname",
        "target_value": to,
        **extra,
    }
    return f"route:{route_id}", json.dumps(doc).encode()


def snapshot(*items: tuple[str, bytes]) -> Snapshot:
    snap = apply(Snapshot(), dict(items))
    assert not snap.rejected, snap.rejected
    return snap


def decoded(hostname: str, **extra: Any) -> ProxyConfig:
    found = snapshot(proxy(hostname, **extra)).exact[hostname]
    return found


# ---------------------------------------------------------------------------
# requests through a real connection
# ---------------------------------------------------------------------------


class TlsTransport(FakeTransport):
    """A fake transport of a TLS connection: its session is a real (never handshaken)
    SSLObject, only ever handed to the certificate check."""

    def __init__(self) -> None:
        super().__init__()
        context = ssl.create_default_context()
        self.session = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="e.test")

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.session
        return super().get_extra_info(name, default)


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


def answer(ex: Exchange, text: str) -> None:
    ex.respond(200, text.encode())


def forwarded(ex: Exchange, res: Resolution, /) -> None:
    """The test's forward kind: names the proxy that would give the target."""
    answer(ex, f"forward {res.proxy.hostname}")


class Named:
    """A handler for a mount or the API: answers with its name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, ex: Exchange) -> None:
        answer(ex, self.name)


async def dispatcher(
    *items: tuple[str, bytes],
    api_hostname: str | None = None,
    tls_covers: Callable[[ssl.SSLObject, str], bool] | None = None,
) -> Dispatcher:
    pool = UpstreamPool(asyncio.get_running_loop(), 1, 1.0, 1.0)
    api = Named("api") if api_hostname else None
    found = Dispatcher(Forwarder(pool, 1.0), api, api_hostname, tls_covers=tls_covers)
    found.serve_kind("forward", forwarded)
    if items:
        found.install(snapshot(*items))
    return found


async def request(
    dispatch: Dispatcher,
    host: str,
    target: str = "/",
    method: str = "GET",
    scheme: Scheme = "http",
) -> Answer:
    hub = Hub(load_settings({}), asyncio.get_running_loop())
    hub.access_log._fd = os.open(os.devnull, os.O_WRONLY)
    conn = HttpConnection(hub, dispatch, scheme)
    transport = TlsTransport() if scheme == "https" else FakeTransport()
    conn.connection_made(transport)
    client = H11Peer(h11.CLIENT, transport)
    headers = [("host", host), ("content-length", "0")]
    conn.data_received(
        client.send(h11.Request(method=method, target=target, headers=headers), h11.EndOfMessage())
    )
    head, *rest = client.receive()
    assert isinstance(head, h11.Response), head
    assert isinstance(rest[-1], h11.EndOfMessage), rest
    body = b"".join(event.data for event in rest if isinstance(event, h11.Data))
    conn.connection_lost(None)
    os.close(hub.access_log._fd)
    return Answer(head.status_code, dict(head.headers), body)


# ---------------------------------------------------------------------------
# mounts
# ---------------------------------------------------------------------------


async def test_a_mount_answers_on_every_host_before_routing_and_the_api_hostname() -> None:
    dispatch = await dispatcher(proxy("app.test"), api_hostname="api.test")
    dispatch.mount(Mount("/.well-known/x/", Named("mount")))
    for host in ("app.test", "api.test", "unknown.test"):
        assert (await request(dispatch, host, "/.well-known/x/tok")).body == b"mount"
    # the rest is routed as before
    assert (await request(dispatch, "app.test", "/.well-known/y")).body == b"forward app.test"
    assert (await request(dispatch, "api.test", "/.well-known/")).body == b"api"
    assert (await request(dispatch, "unknown.test", "/")).status == 404


async def test_a_mount_limited_to_a_scheme_or_a_host_leaves_the_others_to_routing() -> None:
    dispatch = await dispatcher(proxy("app.test"), proxy("auth.test"))
    dispatch.mount(Mount("/plain", Named("plain only"), scheme="http"))
    dispatch.mount(Mount("/tls", Named("tls only"), scheme="https"))
    dispatch.mount(Mount("/", Named("issuer"), host="Auth.Test."))
    assert (await request(dispatch, "app.test", "/plain/a")).body == b"plain only"
    assert (await request(dispatch, "app.test", "/plain/a", scheme="https")).body == (
        b"forward app.test"
    )
    assert (await request(dispatch, "app.test", "/tls", scheme="https")).body == b"tls only"
    assert (await request(dispatch, "app.test", "/tls")).body == b"forward app.test"
    # the host, compared without case or a trailing dot, and only that host
    assert (await request(dispatch, "auth.test", "/token")).body == b"issuer"
    assert (await request(dispatch, "AUTH.test.", "/token")).body == b"issuer"
    assert (await request(dispatch, "app.test", "/token")).body == b"forward app.test"


def test_mounts_are_tried_most_specific_first_then_in_registration_order() -> None:
    issuer = Mount("/", Named("issuer"), host="auth.test")
    acme = Mount(ACME_CHALLENGE_PREFIX, Named("acme"), scheme="http")
    acme_here = Mount(ACME_CHALLENGE_PREFIX, Named("acme here"), host="auth.test")
    metrics = Mount("/metrics", Named("metrics"))
    metrics_tls = Mount("/metrics", Named("metrics tls"), scheme="https")
    metrics_again = Mount("/metrics", Named("metrics again"))
    mounts: tuple[Mount, ...] = ()
    for mount in (issuer, metrics, acme, metrics_tls, acme_here, metrics_again):
        mounts = ordered(mounts, mount)
    assert mounts == (acme_here, acme, metrics_tls, metrics, metrics_again, issuer)


async def test_the_longest_prefix_answers_whichever_was_mounted_first() -> None:
    dispatch = await dispatcher(proxy("auth.test"))
    dispatch.mount(Mount("/", Named("issuer"), host="auth.test"))
    dispatch.mount(Mount(ACME_CHALLENGE_PREFIX, Named("acme"), scheme="http"))
    assert (await request(dispatch, "auth.test", ACME_CHALLENGE_PREFIX + "t")).body == b"acme"
    assert (await request(dispatch, "auth.test", "/authorize")).body == b"issuer"
    # over TLS the plain-HTTP-only mount does not apply: the host's mount answers
    tls = await request(dispatch, "auth.test", ACME_CHALLENGE_PREFIX + "t", scheme="https")
    assert tls.body == b"issuer"


def test_a_mount_refuses_a_prefix_without_a_slash_or_an_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="prefix"):
        Mount("metrics", Named("m"))
    with pytest.raises(ValueError, match="scheme"):
        Mount("/m", Named("m"), scheme="ws")  # type: ignore[arg-type]


async def test_acme_challenges_skip_the_https_redirect_with_or_without_a_mount() -> None:
    dispatch = await dispatcher(proxy("secure.test", enable_http=False))
    challenge = ACME_CHALLENGE_PREFIX + "tok"
    # no ACME mount yet: forwarded over plain HTTP, as before
    assert (await request(dispatch, "secure.test", challenge)).body == b"forward secure.test"
    redirected = await request(dispatch, "secure.test", "/page?q=1")
    assert redirected.status == 301
    assert redirected.headers[b"location"] == b"https://secure.test/page?q=1"
    assert (await request(dispatch, "secure.test", "/form", method="POST")).status == 308
    dispatch.mount(Mount(ACME_CHALLENGE_PREFIX, Named("acme"), scheme="http"))
    assert (await request(dispatch, "secure.test", challenge)).body == b"acme"
    assert (await request(dispatch, "no-proxy.test", challenge)).body == b"acme"


# ---------------------------------------------------------------------------
# chains compiled per proxy
# ---------------------------------------------------------------------------


def names(pipeline: Pipeline, found: ProxyConfig) -> dict[str, tuple[str, ...]]:
    chains = pipeline.compile(found)
    return {
        f"{phase.value} {scheme}": chains.names[phase, scheme]
        for phase in Phase
        for scheme in ("http", "https")
        if chains.names[phase, scheme]
    }


def covers_nothing(tls: ssl.SSLObject, host: str) -> bool:
    return False


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, {}),
        (
            {"enabled": False},
            {"site http": ("proxy-disabled",), "site https": ("proxy-disabled",)},
        ),
        ({"enable_http": False}, {"site http": ("scheme",)}),
        ({"enable_https": False}, {"site https": ("scheme",)}),
        # neither: still served over plain HTTP, as it always was
        ({"enable_http": False, "enable_https": False}, {"site https": ("scheme",)}),
        (
            {"auth_enabled": True},
            {"access http": ("fail-closed",), "access https": ("fail-closed",)},
        ),
    ],
)
def test_each_proxy_gets_the_checks_its_config_needs(
    extra: dict[str, Any], expected: dict[str, tuple[str, ...]]
) -> None:
    assert names(standard_pipeline(), decoded("a.test", **extra)) == expected


def test_the_certificate_check_is_in_every_https_chain_when_tls_listens() -> None:
    pipeline = standard_pipeline(covers_nothing)
    assert names(pipeline, decoded("a.test")) == {"site https": ("certificate-cover",)}
    assert names(pipeline, decoded("a.test", enable_https=False, enabled=False)) == {
        "site http": ("proxy-disabled",),
        "site https": ("proxy-disabled", "scheme", "certificate-cover"),
    }


def test_a_protected_proxy_fails_closed_unless_an_authenticating_factory_takes_it() -> None:
    pipeline = standard_pipeline()
    protected = decoded("a.test", auth_enabled=True)
    # a check that does not authenticate is no substitute
    pipeline.register("audit", lambda p, s: passing, phase=Phase.ACCESS)
    assert names(pipeline, protected)["access http"] == ("fail-closed",)
    pipeline.register(
        "forward-auth",
        lambda p, s: passing if p.auth_enabled and s == "https" else None,
        phase=Phase.ACCESS,
        authenticates=True,
    )
    assert names(pipeline, protected) == {
        "access http": ("fail-closed",),  # the factory does not cover plain HTTP
        "access https": ("audit", "forward-auth"),
    }
    assert names(pipeline, decoded("b.test")) == {
        "access http": ("audit",),
        "access https": ("audit",),
    }
    with pytest.raises(ValueError, match="already registered"):
        pipeline.register("audit", lambda p, s: None)
    with pytest.raises(ValueError, match="already registered"):
        pipeline.register("fail-closed", lambda p, s: None)


def passing(ex: Exchange, res: Resolution, proceed: Step, /) -> None:
    proceed(ex, res)


async def test_the_dispatcher_answers_each_check_in_order() -> None:
    dispatch = await dispatcher(
        proxy("off.test", enabled=False, enable_http=False),
        proxy("plain.test", enable_https=False),
        proxy("locked.test", auth_enabled=True),
        proxy("open.test"),
        tls_covers=lambda tls, host: host != "uncovered.test",
    )
    assert (await request(dispatch, "off.test")).status == 404  # before the redirect
    assert (await request(dispatch, "plain.test", scheme="https")).status == 421
    assert (await request(dispatch, "plain.test")).body == b"forward plain.test"
    assert (await request(dispatch, "locked.test")).status == 503
    assert (await request(dispatch, "locked.test", scheme="https")).status == 503
    assert (await request(dispatch, "open.test", scheme="https")).body == b"forward open.test"
    dispatch.install(snapshot(proxy("uncovered.test")))
    assert (await request(dispatch, "uncovered.test", scheme="https")).status == 421
    assert (await request(dispatch, "uncovered.test")).body == b"forward uncovered.test"


class Tagging:
    """A middleware factory for the proxies with an ``x-tag`` custom header: its middleware
    notes each request's host and proxy, then lets it through."""

    def __init__(self) -> None:
        self.made: list[tuple[str, Scheme]] = []
        self.seen: list[str] = []

    def __call__(self, found: ProxyConfig, scheme: Scheme, /) -> Middleware | None:
        if "x-tag" not in found.custom_headers:
            return None
        self.made.append((found.hostname, scheme))
        name = found.hostname

        def note(ex: Exchange, res: Resolution, proceed: Step, /) -> None:
            self.seen.append(f"{name} for {ex.host}")
            proceed(ex, res)

        return note


async def test_a_registered_factory_runs_for_exactly_the_proxies_it_applies_to() -> None:
    tagged = {"custom_headers": {"x-tag": "1"}}
    dispatch = await dispatcher()
    first = snapshot(proxy("a.test", **tagged), proxy("b.test"))
    dispatch.install(first)
    tagging = Tagging()
    dispatch.use("tagging", tagging)
    # compiled once per proxy and scheme, when registered, not per request
    assert sorted(tagging.made) == [("a.test", "http"), ("a.test", "https")]
    for _ in range(3):
        assert (await request(dispatch, "a.test")).body == b"forward a.test"
        assert (await request(dispatch, "b.test")).body == b"forward b.test"
    assert tagging.seen == ["a.test for a.test"] * 3
    assert len(tagging.made) == 2
    # a new snapshot: only the proxies whose config changed are compiled again
    dispatch.install(apply(first, dict([proxy("b.test", **tagged), proxy("c.test")])))
    assert sorted(tagging.made[2:]) == [("b.test", "http"), ("b.test", "https")]
    tagging.seen.clear()
    assert (await request(dispatch, "b.test", scheme="https")).body == b"forward b.test"
    assert tagging.seen == ["b.test for b.test"]


async def test_a_hostname_route_runs_the_access_checks_of_both_hosts() -> None:
    tagged = {"custom_headers": {"x-tag": "1"}}
    dispatch = await dispatcher(
        proxy("front.test", **tagged),
        proxy("back.test", **tagged),
        proxy("open.test"),
        hostname_route("hop", "/hop", "back.test", scope="proxy", proxy_hostnames=["front.test"]),
        hostname_route("hop2", "/hop", "front.test", scope="proxy", proxy_hostnames=["open.test"]),
    )
    site, access = Tagging(), Tagging()
    dispatch.use("site-tag", site)
    dispatch.use("access-tag", access, phase=Phase.ACCESS)
    assert (await request(dispatch, "front.test", "/hop")).body == b"forward back.test"
    # the site's checks are the request's host's only; access checks run for both, the
    # host's first
    assert site.seen == ["front.test for front.test"]
    assert access.seen == ["front.test for front.test", "back.test for front.test"]
    site.seen.clear()
    access.seen.clear()
    assert (await request(dispatch, "open.test", "/hop")).body == b"forward front.test"
    assert site.seen == []
    assert access.seen == ["front.test for open.test"]


async def test_a_hostname_route_fails_closed_on_either_protected_host() -> None:
    dispatch = await dispatcher(
        proxy("locked.test", auth_enabled=True),
        proxy("open.test"),
        proxy("guarded.test", auth_enabled=True),
        hostname_route("in", "/in", "locked.test", scope="proxy", proxy_hostnames=["open.test"]),
        hostname_route("out", "/out", "open.test", scope="proxy", proxy_hostnames=["guarded.test"]),
    )
    assert (await request(dispatch, "open.test", "/in")).status == 503
    assert (await request(dispatch, "open.test", "/x")).body == b"forward open.test"
    assert (await request(dispatch, "guarded.test", "/out")).status == 503
    # an authenticating check for locked.test alone: the route in is let through, the
    # route out of guarded.test is still refused (its own host has no check)
    dispatch.use(
        "lock",
        lambda p, s: passing if p.hostname == "locked.test" else None,
        phase=Phase.ACCESS,
        authenticates=True,
    )
    assert (await request(dispatch, "open.test", "/in")).body == b"forward locked.test"
    assert (await request(dispatch, "guarded.test", "/out")).status == 503


# ---------------------------------------------------------------------------
# the table, compiled per snapshot
# ---------------------------------------------------------------------------


def test_a_table_reuses_what_the_previous_one_compiled_of_unchanged_keys() -> None:
    doc = {"route_id": "r", "path_pattern": "^/v[0-9]+/", "is_regex": True}
    doc |= {"target_type": "port", "target_value": "9000"}
    first = snapshot(proxy("a.test"), proxy("b.test"), ("route:r", json.dumps(doc).encode()))
    old = compile_table(first)
    new = compile_table(apply(first, dict([proxy("b.test", enabled=False)])), old)
    assert new.compiled["r"] is old.compiled["r"]
    a = new.find_proxy("a.test")
    b = new.find_proxy("b.test")
    assert a is not None and b is not None and not b.enabled
    assert new.compiled_chains(a) is old.compiled_chains(a)
    assert new.compiled_chains(b) is not None
    assert new.compiled_chains(b) is not old.compiled_chains(old.exact["b.test"])
    # a registration changes every proxy's chains: none is reused
    new.pipeline.register("x", lambda p, s: None)
    newer = compile_table(apply(first, {}), new)
    assert newer.compiled_chains(a) is not new.compiled_chains(a)
    assert newer.compiled["r"] is old.compiled["r"]


async def test_a_resolution_without_middleware_starts_at_its_handler() -> None:
    dispatch = await dispatcher(proxy("a.test"), proxy("b.test", enable_http=False))
    found = dispatch.table.find_proxy("a.test")
    assert found is not None
    res = dispatch.table.resolve(found, "/", b"GET")
    assert res.kind == "forward"
    assert res.handler is res.http is res.https is dispatch.handlers["forward"]
    redirected = dispatch.table.find_proxy("b.test")
    assert redirected is not None
    res = dispatch.table.resolve(redirected, "/", b"GET")
    assert res.https is res.handler and res.http is not res.handler


async def test_a_kind_without_a_handler_is_refused_not_forwarded() -> None:
    dispatch = await dispatcher()
    dispatch.handlers.clear()
    dispatch.install(snapshot(proxy("a.test")))
    assert (await request(dispatch, "a.test")).status == 503
