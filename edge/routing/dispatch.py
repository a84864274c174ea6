"""From a parsed request to the handler that answers it.

Order: mounts (handlers the edge answers itself, matched on prefix, scheme and host), the
API hostname, then the host router: the request's proxy and route resolve to a
``Resolution`` whose chain for the request's scheme runs (the site's checks, the access
checks of its proxy and of the proxy a hostname route leads to), ending in the handler of
its kind.

The routing table is compiled when a snapshot is installed (``install``, a config watcher
``on_install`` hook), never per request: a request reads ``self.table`` once.
"""

from __future__ import annotations

from edge.config.snapshot import Snapshot
from edge.errors import NoRoute
from edge.handlers.forward import Forwarder
from edge.http1.exchange import Exchange, Handler
from edge.routing.checks import CoverCheck, standard_pipeline
from edge.routing.middleware import MiddlewareFactory, Phase
from edge.routing.mount import Mount, ordered
from edge.routing.resolution import Kind, Resolution, Step
from edge.routing.router import Router
from edge.routing.table import compile_table


class Dispatcher:
    def __init__(
        self,
        forwarder: Forwarder,
        api: Handler | None = None,
        api_hostname: str | None = None,
        tls_covers: CoverCheck | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.api = api
        self.api_hostname = api_hostname.lower().rstrip(".") if api_hostname else None
        # answered before the API hostname and host routing, most specific first
        self.mounts: tuple[Mount, ...] = ()
        # the factories every proxy's chains are compiled from; today's checks first, with
        # the certificate check when TLS listens (``tls_covers``: may this TLS connection's
        # certificate answer for a host?)
        self.middleware = standard_pipeline(tls_covers)
        self.handlers: dict[Kind, Step] = {"forward": forwarder.forward}
        # hosts answered by the edge itself, also through proxies' hostname routes
        self.internal: dict[str, Step] = {}
        self._snapshot = Snapshot()
        self.table: Router = compile_table(
            self._snapshot, pipeline=self.middleware, handlers=self.handlers, internal={}
        )

    # ------------------------------------------------------------------ set-up
    def install(self, snapshot: Snapshot) -> None:
        """Compile the routing table of ``snapshot`` and serve it from the next request."""
        self.table = compile_table(
            snapshot,
            self.table,
            pipeline=self.middleware,
            handlers=self.handlers,
            internal=self.internal,
        )
        self._snapshot = snapshot

    def mount(self, mount: Mount) -> None:
        """Answer requests ``mount`` matches with its handler, before any routing."""
        self.mounts = ordered(self.mounts, mount)

    def serve_host(self, hostname: str, handler: Handler) -> None:
        """``handler`` answers every request for ``hostname`` (before host routing, like
        a mount of ``/``) and those a proxy's ``hostname`` route sends there."""
        name = hostname.lower().rstrip(".")
        self.mount(Mount("/", handler, host=name))

        def answer(ex: Exchange, res: Resolution, /) -> None:
            handler.handle(ex)

        self.internal[name] = answer
        self.install(self._snapshot)

    def use(
        self,
        name: str,
        factory: MiddlewareFactory,
        *,
        phase: Phase = Phase.SITE,
        authenticates: bool = False,
    ) -> None:
        """Register a middleware factory after those already in its phase; the served
        table is compiled again at once, so no request misses it."""
        self.middleware.register(name, factory, phase=phase, authenticates=authenticates)
        self.install(self._snapshot)

    def serve_kind(self, kind: Kind, handler: Step) -> None:
        """``handler`` answers the requests whose route resolves to ``kind``."""
        self.handlers[kind] = handler
        self.install(self._snapshot)  # resolutions carry their handler: made again

    # ------------------------------------------------------------------ requests
    def __call__(self, ex: Exchange) -> None:
        for mount in self.mounts:
            if mount.matches(ex):
                mount.handler.handle(ex)
                return
        if self.api is not None and ex.host == self.api_hostname:
            self.api.handle(ex)
            return
        table = self.table
        proxy = table.find_proxy(ex.host)
        if proxy is None:
            rejected = table.rejected_proxy(ex.host)
            if rejected is not None:
                # the host's only value was refused: say so, and which key to fix
                message = f"the proxy config for this host was rejected ({rejected})"
                ex.fail(NoRoute(f"{rejected} rejected", public_message=message))
                return
            ex.fail(NoRoute(f"no proxy for host {ex.host!r}"))
            return
        res = table.resolve(proxy, ex.path, ex.method)
        if ex.scheme == "http":
            res.http(ex, res)
        else:
            res.https(ex, res)
