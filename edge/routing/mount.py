"""Mounts: handlers the edge answers itself, before the API hostname and host routing.

ACME HTTP-01 challenges (``/.well-known/acme-challenge/`` over plain HTTP on every host),
the OAuth server on its issuer host, tunnel endpoints, ``/metrics``: each is a ``Mount``
of a path prefix, optionally limited to one scheme and one host.

Order: the most specific mount answers. Mounts are tried longest prefix first; among equal
prefixes one limited to a host before one for every host, then one limited to a scheme
before one for both, then in registration order. So an ACME mount
(``/.well-known/acme-challenge/``) still answers on a host that has a ``/`` mount of its
own (the OAuth server's), whichever was registered first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from edge.http1.exchange import Exchange, Handler

MountScheme: TypeAlias = Literal["any", "http", "https"]


@dataclass(frozen=True, slots=True)
class Mount:
    prefix: str  # the request path starts with it ("/metrics" also takes "/metrics/x")
    handler: Handler
    scheme: MountScheme = "any"
    host: str | None = None  # one exact host (no port, any case); None: every host

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/"):
            raise ValueError(f"a mount's prefix starts with '/': {self.prefix!r}")
        if self.scheme not in ("any", "http", "https"):
            raise ValueError(f"a mount's scheme is 'any', 'http' or 'https': {self.scheme!r}")
        if self.host is not None:
            # compared with the exchange's host, which is lowercase without a trailing dot
            object.__setattr__(self, "host", self.host.lower().rstrip("."))

    def matches(self, ex: Exchange) -> bool:
        return (
            ex.path.startswith(self.prefix)
            and (self.host is None or self.host == ex.host)
            and (self.scheme == "any" or self.scheme == ex.scheme)
        )


def _order(mount: Mount) -> tuple[int, bool, bool]:
    return (-len(mount.prefix), mount.host is None, mount.scheme == "any")


def ordered(mounts: tuple[Mount, ...], added: Mount) -> tuple[Mount, ...]:
    """``mounts`` with ``added`` in its place (the sort is stable: registration order last)."""
    return tuple(sorted((*mounts, added), key=_order))
