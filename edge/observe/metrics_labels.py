"""Bounded label values for the metrics: what a client sends never becomes a series.

Every label value of ``edge_*`` comes from a fixed list or from the configuration:

* ``host``: the hostname of the proxy that serves the request's Host (``a.test``, or the
  wildcard pattern ``*.a.test`` for a name under a wildcard proxy), at most
  ``HOST_LABEL_CAP`` of them (the first in sorted order); any other Host, a random one
  included, is ``other``.
* ``method``: the standard methods, anything else ``OTHER``.
* ``status``: the class ``1xx`` .. ``5xx``; ``none`` for an exchange that ended before a
  response (the client went away).
* ``upstream``: an upstream ``host:port`` of the configuration, else ``other``.

Sans-IO: plain maps in, strings out. A memo keeps the request path at one dict lookup for
the hosts actually seen; it is bounded too (``MEMO_MAX``), and emptied when the
configuration changes.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from edge.routing.target import parse_target

__all__ = [
    "HOST_LABEL_CAP",
    "MEMO_MAX",
    "METHODS",
    "OTHER",
    "HostLabels",
    "status_class",
    "upstream_labels",
]

OTHER = "other"
HOST_LABEL_CAP = 200  # distinct host label values, "other" aside
UPSTREAM_LABEL_CAP = 200
MEMO_MAX = 4096  # hosts remembered between configuration changes
METHODS: dict[str, str] = {
    m: m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT")
}
METHOD_OTHER = "OTHER"
STATUS_CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")


def status_class(status: int) -> str:
    """``2xx`` for 200..299 and so on; ``none`` for 0 (no response) or anything odd."""
    if 100 <= status <= 599:
        return STATUS_CLASSES[status // 100]
    return "none"


class HostLabels:
    """Host -> label, from the proxies' hostnames of the configuration.

    ``exact``: the exact hostnames (lowercase); ``wildcards``: the wildcard suffixes as
    the routing table keeps them (``.a.test`` for ``*.a.test``). Matching follows the
    router: the exact name first, then the longest wildcard suffix.
    """

    __slots__ = ("_allowed", "_exact", "_memo", "_wildcards")

    def __init__(
        self,
        exact: Collection[str] = (),
        wildcards: Collection[str] = (),
        cap: int = HOST_LABEL_CAP,
    ) -> None:
        self._exact = frozenset(exact)
        self._wildcards = frozenset(wildcards)
        names = sorted([*self._exact, *("*" + w for w in self._wildcards)])
        self._allowed = frozenset(names[:cap])
        # every exact name to start with: a configured host costs one lookup
        self._memo: dict[str, str] = {n: n for n in self._allowed if not n.startswith("*")}

    @property
    def allowed(self) -> frozenset[str]:
        """Every label value but ``other``."""
        return self._allowed

    @property
    def memo(self) -> dict[str, str]:
        """Host -> label of the hosts seen (and the exact names): the request path reads
        it directly and calls this object only for a host it lacks."""
        return self._memo

    def __call__(self, host: str) -> str:
        label = self._memo.get(host)
        if label is not None:
            return label
        label = self._find(host)
        if len(self._memo) < MEMO_MAX:
            self._memo[host] = label
        return label

    def _find(self, host: str) -> str:
        name: str | None = None
        if host in self._exact:
            name = host
        else:
            dot = host.find(".")
            while dot >= 0:
                if host[dot:] in self._wildcards:
                    name = "*" + host[dot:]
                    break
                dot = host.find(".", dot + 1)
        return name if name is not None and name in self._allowed else OTHER


def upstream_labels(urls: Iterable[str], cap: int = UPSTREAM_LABEL_CAP) -> frozenset[str]:
    """The ``host:port`` of each target URL as the forwarder names its upstream (an IPv6
    address unbracketed), at most
    ``cap`` of them."""
    found: set[str] = set()
    for url in urls:
        try:
            target = parse_target(url)
        except ValueError:
            continue
        if target.host:
            found.add(f"{target.host}:{target.port}")
    return frozenset(sorted(found)[:cap])
