"""The routing table of a config snapshot, compiled when the snapshot is installed.

``compile_table(snapshot, previous)`` turns the decoded config into a ``Router``: route
patterns into matchers (RE2 for regexes) and every proxy's middleware chains. Only what
changed is compiled again: ``apply`` keeps the very objects of unchanged keys, so a route
or proxy whose config object is the one ``previous`` was compiled from takes its compiled
form from there (chains only while the pipeline has not changed since).

The table lives here and not in ``edge.config``: config decodes and keeps Redis state and
knows nothing of requests; routing compiles it for them.
"""

from __future__ import annotations

from collections.abc import Mapping

from edge.config.snapshot import Snapshot
from edge.routing.checks import standard_pipeline
from edge.routing.middleware import Pipeline, ProxyChains
from edge.routing.resolution import Kind, Step
from edge.routing.router import CompiledRoute, Router, compile_route


def compile_table(
    snapshot: Snapshot,
    previous: Router | None = None,
    *,
    pipeline: Pipeline | None = None,
    handlers: Mapping[Kind, Step] | None = None,
    internal: Mapping[str, Step] | None = None,
) -> Router:
    """The ``Router`` of ``snapshot``, reusing what ``previous`` compiled of unchanged keys.

    Without a pipeline, today's checks apply (no certificate check); without handlers, no
    kind is served (a table read for its lookups only, as ``edge check`` or a test does).
    """
    if pipeline is None:
        pipeline = previous.pipeline if previous is not None else standard_pipeline()
    if handlers is None:
        handlers = previous.handlers if previous is not None else {}
    if internal is None:
        internal = previous.internal if previous is not None else {}
    before: Mapping[str, CompiledRoute] = previous.compiled if previous is not None else {}
    routes: dict[str, CompiledRoute] = {}
    for route_id, route in snapshot.routes.items():
        old = before.get(route_id)
        routes[route_id] = old if old is not None and old.route is route else compile_route(route)
    chains: dict[str, ProxyChains] = {}
    reuse = (
        previous is not None
        and previous.pipeline is pipeline
        and previous.pipeline_version == pipeline.version
    )
    for proxies in (snapshot.exact, snapshot.wildcards):
        for proxy in proxies.values():
            old_chains = previous.compiled_chains(proxy) if reuse and previous else None
            chains[proxy.hostname] = old_chains or pipeline.compile(proxy)
    return Router(
        snapshot.exact,
        snapshot.wildcards,
        routes,
        snapshot.services,
        snapshot.urls,
        pipeline=pipeline,
        handlers=handlers,
        internal=internal,
        chains=chains,
        rejected=snapshot.rejected,
        unserved=snapshot.unserved,
    )
