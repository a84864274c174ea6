"""The seam at the end of every exchange: observers hear one record per request.

The JSON access log is the first observer; a request log or metrics sit beside it and see
the very same record. The worker installs them on the ``Hub``; ``HttpConnection`` builds
the record once and hands it on through ``Hub.exchange_done``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from edge.observe.accesslog import AccessRecord


class ExchangeObserver(Protocol):
    """Hears about each finished exchange (answered, failed or aborted by the client).

    Runs inside the connection's callbacks on the request path: it must be synchronous,
    O(1) and never raise; anything slow (a write to Redis, a flush) is buffered here and
    done later by a task or timer the observer owns. The record is shared by every
    observer: read it, never change it.
    """

    def exchange_done(self, record: AccessRecord) -> None: ...


def fan_out(observers: Sequence[ExchangeObserver]) -> Callable[[AccessRecord], None]:
    """One callable that tells each observer in turn, built once when they are installed.

    With one observer (the common case: the access log alone) it is that observer's own
    bound method, so the request path pays exactly one call, as it did before observers.
    """
    if len(observers) == 1:
        return observers[0].exchange_done
    calls = tuple(observer.exchange_done for observer in observers)

    def each(record: AccessRecord) -> None:
        for call in calls:
            call(record)

    return each


# a connection-level event: (kind, client IP, client port, server name, detail), told by
# the listeners (edge.net) through Hub.connection_event
ConnectionEvents = Callable[[str, str, int, str, str], None]
TLS_OK = "tls_handshake_ok"
TLS_FAILED = "tls_handshake_failed"
PROXY_REFUSED = "proxy_header_refused"
# not a connection event: an exchange that switched protocols (Hub.tunnel_opened)
TUNNEL_OPENED = "tunnel_opened"


def _ignore(kind: str, ip: str, port: int, sni: str, detail: str) -> None:
    return None


def events_fan_out(observers: Sequence[object]) -> ConnectionEvents:
    """One callable telling every observer with a ``connection_event`` method (same
    signature as :data:`ConnectionEvents`; sync, O(1), never raises) of each event."""
    calls: tuple[ConnectionEvents, ...] = tuple(
        call for observer in observers if (call := getattr(observer, "connection_event", None))
    )
    if not calls:
        return _ignore
    if len(calls) == 1:
        return calls[0]

    def each(kind: str, ip: str, port: int, sni: str, detail: str) -> None:
        for call in calls:
            call(kind, ip, port, sni, detail)

    return each


def _not_told(record: AccessRecord) -> None:
    return None


def opened_fan_out(observers: Sequence[object]) -> Callable[[AccessRecord], None]:
    """One callable telling every observer with a ``tunnel_opened(record)`` method that an
    exchange switched protocols (101: a WebSocket or a tunnel), whose own record comes
    when it ends, maybe hours later."""
    calls: tuple[Callable[[AccessRecord], None], ...] = tuple(
        call for observer in observers if (call := getattr(observer, "tunnel_opened", None))
    )
    if not calls:
        return _not_told

    def each(record: AccessRecord) -> None:
        for call in calls:
            call(record)

    return each
